package admission

import (
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/kaidotio/prometheus-metrics-proxy-hook/src/semaphore"
)

// Sidecar describes the injected container.
type Sidecar struct {
	Image string
	// PullPolicy is Always, IfNotPresent or Never.
	PullPolicy string
	// Port is where the metrics proxy listens; prometheus.io/port is
	// rewritten to it.
	Port int32
	// CPURequest, MemoryRequest, CPULimit and MemoryLimit are Kubernetes
	// quantities in canonical form; empty leaves one out.
	CPURequest, MemoryRequest, CPULimit, MemoryLimit string
	// Native injects a native sidecar: the first init container, with
	// restartPolicy Always (Kubernetes 1.29+).
	Native bool
	// FinalScrapeWait is how long a terminating sidecar waits for one more
	// scrape; the pod's grace period is raised to cover it.
	FinalScrapeWait time.Duration
	// LeaseURL is the lease API base URL the sidecar renews through.
	LeaseURL string
}

// GraceMargin is added to the final scrape wait for the pod's
// terminationGracePeriodSeconds: the sidecar still has to stop and release
// its slot after the last scrape.
const GraceMargin = 10 * time.Second

// defaultGracePeriod is what Kubernetes uses when the pod sets none.
const defaultGracePeriod = 30

func (s *Sidecar) validate() error {
	switch {
	case s.Image == "":
		return errors.New("admission: the sidecar image is required")
	case s.Port < 1 || s.Port > 65535:
		return fmt.Errorf("admission: sidecar port %d must be from 1 to 65535", s.Port)
	case s.PullPolicy != "Always" && s.PullPolicy != "IfNotPresent" && s.PullPolicy != "Never":
		return fmt.Errorf("admission: sidecar image pull policy %q must be Always, IfNotPresent or Never", s.PullPolicy)
	case s.FinalScrapeWait < 0:
		return fmt.Errorf("admission: final scrape wait %s must not be negative", s.FinalScrapeWait)
	}
	return nil
}

// template holds the parts of the sidecar container that never change,
// encoded once: the patch for one pod appends them around its env.
type template struct {
	head []byte // {"name":...,"image":...,"imagePullPolicy":...,"command":[...],"ports":[...],
	tail []byte // ,"resources":...,"securityContext":...}
	port int32
	// gracePeriod is the lowest terminationGracePeriodSeconds a pod keeps.
	gracePeriod      int64
	finalScrapeWait  string
	leaseURL         string
	listenAddressEnv string
}

func newTemplate(s Sidecar) (*template, error) {
	if err := s.validate(); err != nil {
		return nil, err
	}
	t := &template{
		port:             s.Port,
		gracePeriod:      int64((s.FinalScrapeWait + GraceMargin + time.Second - 1) / time.Second),
		finalScrapeWait:  s.FinalScrapeWait.String(),
		leaseURL:         s.LeaseURL,
		listenAddressEnv: ":" + strconv.Itoa(int(s.Port)),
	}
	h := []byte(`{"name":"` + ContainerName + `","image":`)
	h = appendString(h, s.Image)
	h = append(h, `,"imagePullPolicy":`...)
	h = appendString(h, s.PullPolicy)
	h = append(h, `,"command":["`+SidecarCommand+`"],"ports":[{"name":"`+SidecarPortName+`","containerPort":`...)
	h = appendInt(h, int64(s.Port))
	h = append(h, `,"protocol":"TCP"}],`...)
	t.head = h

	tail := []byte(`,"resources":{`)
	tail = appendQuantities(tail, "requests", map[string]string{"cpu": s.CPURequest, "memory": s.MemoryRequest})
	if s.CPULimit != "" || s.MemoryLimit != "" {
		if s.CPURequest != "" || s.MemoryRequest != "" {
			tail = append(tail, ',')
		}
		tail = appendQuantities(tail, "limits", map[string]string{"cpu": s.CPULimit, "memory": s.MemoryLimit})
	}
	tail = append(tail, `},"securityContext":{"runAsNonRoot":true,"runAsUser":65532,"runAsGroup":65532,`+
		`"allowPrivilegeEscalation":false,"readOnlyRootFilesystem":true,`+
		`"capabilities":{"drop":["ALL"]},"seccompProfile":{"type":"RuntimeDefault"}}`...)
	if s.Native {
		tail = append(tail, `,"restartPolicy":"Always"`...)
	}
	tail = append(tail, `,"terminationMessagePolicy":"FallbackToLogsOnError"}`...)
	t.tail = tail
	return t, nil
}

func appendQuantities(b []byte, field string, q map[string]string) []byte {
	if q["cpu"] == "" && q["memory"] == "" {
		return b
	}
	b = append(b, '"')
	b = append(b, field...)
	b = append(b, `":{`...)
	first := true
	for _, name := range []string{"cpu", "memory"} {
		if q[name] == "" {
			continue
		}
		if !first {
			b = append(b, ',')
		}
		first = false
		b = append(b, '"')
		b = append(b, name...)
		b = append(b, `":`...)
		b = appendString(b, q[name])
	}
	return append(b, '}')
}

// leaseEnv is the semaphore part of the sidecar's environment. Slot and
// holder are absent when no slot was taken (dry run, or no quorum under the
// allow policy): the sidecar then takes one itself.
type leaseEnv struct {
	namespace, key string
	size           int
	lease          *semaphore.Lease
	ca             []byte
}

// appendPatch appends the RFC 6902 patch for one pod: the sidecar, the
// webhook's annotations, the rewritten port annotation and the raised grace
// period. Every operation is an "add", which also replaces an existing
// object member.
func (t *template) appendPatch(b []byte, pod *podView, p *plan, lease *leaseEnv, native bool) []byte {
	grace := int64(defaultGracePeriod)
	raiseGrace := false
	if tg := pod.Spec.TerminationGracePeriodSeconds; tg != nil {
		grace = *tg
	}
	if grace < t.gracePeriod {
		grace, raiseGrace = t.gracePeriod, true
	}

	b = append(b, '[')
	// Annotations.
	var slot, holder string
	if lease != nil && lease.lease != nil {
		slot, holder = strconv.Itoa(lease.lease.Slot), lease.lease.Holder
	}
	sidecarPort := strconv.Itoa(int(t.port))
	if pod.Metadata.Annotations == nil {
		b = append(b, `{"op":"add","path":"/metadata/annotations","value":{`...)
		b = appendString(b, AnnotationInjected)
		b = append(b, `:"true",`...)
		b = appendString(b, AnnotationPort)
		b = append(b, ':')
		b = appendString(b, sidecarPort)
		if holder != "" {
			b = append(b, ',')
			b = appendString(b, AnnotationSemaphoreSlot)
			b = append(b, ':')
			b = appendString(b, slot)
			b = append(b, ',')
			b = appendString(b, AnnotationHolder)
			b = append(b, ':')
			b = appendString(b, holder)
		}
		b = append(b, `}},`...)
	} else {
		b = appendAnnotation(b, AnnotationInjected, "true")
		b = appendAnnotation(b, AnnotationPort, sidecarPort)
		if holder != "" {
			b = appendAnnotation(b, AnnotationSemaphoreSlot, slot)
			b = appendAnnotation(b, AnnotationHolder, holder)
		}
	}
	if holder != "" {
		b = appendHolderLabel(b, pod, holder)
	}

	// The container.
	switch {
	case !native:
		b = append(b, `{"op":"add","path":"/spec/containers/-","value":`...)
	case len(pod.Spec.InitContainers) == 0:
		b = append(b, `{"op":"add","path":"/spec/initContainers","value":[`...)
	default:
		// First, so that it runs before the other init containers and
		// is up before the application's containers start.
		b = append(b, `{"op":"add","path":"/spec/initContainers/0","value":`...)
	}
	b = append(b, t.head...)
	b = append(b, `"env":[`...)
	b = appendEnv(b, "PMPH_LISTEN_ADDRESS", t.listenAddressEnv, false)
	up := make([]byte, 0, 32+len(p.path))
	up = append(up, "http://127.0.0.1:"...)
	up = appendInt(up, int64(p.port))
	up = append(up, p.path...)
	b = appendEnv(b, "PMPH_UPSTREAM", string(up), true)
	b = appendEnv(b, "PMPH_GRACE_PERIOD", strconv.FormatInt(grace, 10)+"s", true)
	b = appendEnv(b, "PMPH_FINAL_SCRAPE_WAIT", t.finalScrapeWait, true)
	if lease != nil {
		b = appendEnv(b, "PMPH_LEASE_URL", t.leaseURL, true)
		if len(lease.ca) > 0 {
			b = appendEnv(b, "PMPH_LEASE_CA", string(lease.ca), true)
		}
		b = appendEnv(b, "PMPH_LEASE_NAMESPACE", lease.namespace, true)
		b = appendEnv(b, "PMPH_LEASE_KEY", lease.key, true)
		b = appendEnv(b, "PMPH_LEASE_SIZE", strconv.Itoa(lease.size), true)
		if holder != "" {
			b = appendEnv(b, "PMPH_LEASE_SLOT", slot, true)
			b = appendEnv(b, "PMPH_LEASE_HOLDER", holder, true)
		}
	}
	b = append(b, ']')
	b = append(b, t.tail...)
	if native && len(pod.Spec.InitContainers) == 0 {
		b = append(b, ']')
	}
	b = append(b, '}')

	if raiseGrace {
		b = append(b, `,{"op":"add","path":"/spec/terminationGracePeriodSeconds","value":`...)
		b = appendInt(b, grace)
		b = append(b, '}')
	}
	return append(b, ']')
}

func appendAnnotation(b []byte, key, value string) []byte {
	b = append(b, `{"op":"add","path":`...)
	b = appendPointerString(b, "/metadata/annotations/", key)
	b = append(b, `,"value":`...)
	b = appendString(b, value)
	return append(b, `},`...)
}

func appendEnv(b []byte, name, value string, comma bool) []byte {
	if comma {
		b = append(b, ',')
	}
	b = append(b, `{"name":"`...)
	b = append(b, name...)
	b = append(b, `","value":`...)
	b = appendString(b, value)
	return append(b, '}')
}
