package admission

import (
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/util/validation"
)

// Sidecar describes the injected container.
type Sidecar struct {
	Image      string
	PullPolicy corev1.PullPolicy
	// Command and Args start the sidecar in Image.
	Command, Args []string
	// Port is where the metrics proxy listens; prometheus.io/port is
	// rewritten to it.
	Port int32
	// Resources are the sidecar's requests and limits.
	Resources corev1.ResourceRequirements
	// Native injects a native sidecar: the first init container, with
	// restartPolicy Always (Kubernetes 1.29+).
	Native bool
	// ScrapeInterval is the default of the pod's declared scrape interval
	// (annotation scrape-interval): the sidecar waits up to that after the
	// app stopped, and the grace period grows by it (gracePeriodFor).
	ScrapeInterval time.Duration
	// LeaseURL is the lease API base URL the sidecar renews through.
	LeaseURL string
}

// sidecarUser runs the sidecar: the distroless image's nonroot user.
const sidecarUser = 65532

func (s *Sidecar) validate() error {
	switch {
	case s.Image == "":
		return errors.New("admission: the sidecar image is required")
	case len(s.Command) == 0 && len(s.Args) == 0:
		return errors.New("admission: the sidecar's command or arguments are required")
	case len(validation.IsValidPortNum(int(s.Port))) != 0:
		return fmt.Errorf("admission: sidecar port %d must be from 1 to 65535", s.Port)
	case s.PullPolicy != corev1.PullAlways && s.PullPolicy != corev1.PullIfNotPresent && s.PullPolicy != corev1.PullNever:
		return fmt.Errorf("admission: sidecar image pull policy %q must be Always, IfNotPresent or Never", s.PullPolicy)
	case s.ScrapeInterval < MinScrapeInterval || s.ScrapeInterval > MaxScrapeInterval:
		return fmt.Errorf("admission: scrape interval %s must be from %s to %s", s.ScrapeInterval, shortDuration(MinScrapeInterval), shortDuration(MaxScrapeInterval))
	}
	return nil
}

// injection is what every patch shares, built once: the sidecar container
// without its per-pod environment, and the settings the environment and
// the grace period come from.
type injection struct {
	// containerJSON is the sidecar container, encoded once without its
	// environment; sidecarJSON adds a pod's.
	containerJSON    []byte
	native           bool
	port             int32
	scrapeInterval   time.Duration
	leaseURL         string
	listenAddressEnv string
}

func newInjection(s Sidecar) (*injection, error) {
	if err := s.validate(); err != nil {
		return nil, err
	}
	container, err := json.Marshal(sidecarContainer(s))
	if err != nil {
		return nil, fmt.Errorf("admission: encoding the sidecar container: %w", err)
	}
	return &injection{
		containerJSON:    container,
		native:           s.Native,
		port:             s.Port,
		scrapeInterval:   s.ScrapeInterval,
		leaseURL:         s.LeaseURL,
		listenAddressEnv: ":" + strconv.Itoa(int(s.Port)),
	}, nil
}

// sidecarContainer is the injected container, restricted as the Pod
// Security Standards' restricted profile asks.
func sidecarContainer(s Sidecar) corev1.Container {
	c := corev1.Container{
		Name:            ContainerName,
		Image:           s.Image,
		ImagePullPolicy: s.PullPolicy,
		Command:         s.Command,
		Args:            s.Args,
		Ports: []corev1.ContainerPort{{
			Name: SidecarPortName, ContainerPort: s.Port, Protocol: corev1.ProtocolTCP,
		}},
		Resources:    s.Resources,
		StartupProbe: startupProbe(),
		SecurityContext: &corev1.SecurityContext{
			RunAsNonRoot:             pointerTo(true),
			RunAsUser:                pointerTo[int64](sidecarUser),
			RunAsGroup:               pointerTo[int64](sidecarUser),
			AllowPrivilegeEscalation: pointerTo(false),
			ReadOnlyRootFilesystem:   pointerTo(true),
			Capabilities:             &corev1.Capabilities{Drop: []corev1.Capability{"ALL"}},
			SeccompProfile:           &corev1.SeccompProfile{Type: corev1.SeccompProfileTypeRuntimeDefault},
		},
		TerminationMessagePolicy: corev1.TerminationMessageFallbackToLogsOnError,
	}
	if s.Native {
		c.RestartPolicy = pointerTo(corev1.ContainerRestartPolicyAlways)
	}
	return c
}

func pointerTo[T any](v T) *T { return &v }
