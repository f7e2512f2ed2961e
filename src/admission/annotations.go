package admission

import (
	"fmt"
	"strconv"
	"time"

	"k8s.io/apimachinery/pkg/util/validation"

	"github.com/kaidotio/prometheus-metrics-proxy-hook/src/leaseapi"
	"github.com/kaidotio/prometheus-metrics-proxy-hook/src/semaphore"
)

// Prefix is the prefix of every annotation the webhook reads or writes.
const Prefix = "prometheus-metrics-proxy-hook.kaidotio.github.io/"

// Annotations read and written by the webhook.
const (
	AnnotationOptIn          = Prefix + "prometheus-metrics-proxy"
	AnnotationSemaphoreKey   = Prefix + "semaphore-key"
	AnnotationSemaphoreSize  = Prefix + "semaphore-size"
	AnnotationStartupTimeout = Prefix + "semaphore-startup-timeout"
	AnnotationInjected       = Prefix + "injected"
	AnnotationSemaphoreSlot  = Prefix + "semaphore-slot"
	AnnotationHolder         = Prefix + "semaphore-holder"
	AnnotationPort           = "prometheus.io/port"
	AnnotationPath           = "prometheus.io/path"
)

// ContainerName is the injected sidecar's name; SidecarPortName its port's.
const (
	ContainerName   = "prometheus-metrics-proxy"
	SidecarPortName = "metrics-proxy"
	// SidecarCommand is the injected container's command: the sidecar
	// binary, installed there by the Dockerfile next to the webhook's.
	SidecarCommand = "/usr/local/bin/prometheus-metrics-proxy-hook-sidecar"
	// MetricsPortName is the container port name used when prometheus.io/port
	// is absent.
	MetricsPortName = "metrics"
)

// Startup timeout bounds. Below a second no pod can start in time; above an
// hour a pod that never starts keeps a slot from everyone for too long.
const (
	DefaultStartupTimeout = 5 * time.Minute
	MinStartupTimeout     = time.Second
	MaxStartupTimeout     = time.Hour
	defaultMetricsPath    = "/metrics"
	maxPathLength         = 1024
)

// plan is what the annotations ask for, validated, and what the patch
// needs of the pod, so that the pod itself is not kept while a slot is
// taken.
type plan struct {
	metricsPort    int32
	metricsPath    string
	semaphoreKey   string // empty: no semaphore
	semaphoreSize  int
	startupTimeout time.Duration
	scrapeInterval time.Duration
	warnings       []string

	hasAnnotations bool
	// hasLabels tells whether the holder label goes into an existing map.
	hasLabels bool
	// record is what Redis keeps about the slot taken for the pod.
	record         semaphore.Record
	initContainers int
	// hasVolumes: spec.volumes is an array (perhaps empty), so the token
	// volume is appended to it rather than creating it.
	hasVolumes bool
	// gracePeriod is the pod's terminationGracePeriodSeconds, or the
	// default Kubernetes applies when it sets none.
	gracePeriod int64
	// containers is what the preStop hooks of a native sidecar's pod
	// need of the app containers.
	containers []containerPorts
}

func invalid(format string, args ...any) *denial {
	return &denial{code: 400, reason: reasonInvalid, message: fmt.Sprintf(format, args...)}
}

// planFor validates the pod's annotations and containers against the
// sidecar's port.
func planFor(pod *podObject, sidecarPort int32, defaultScrapeInterval time.Duration) (*plan, *denial) {
	p := &plan{
		metricsPath: defaultMetricsPath, startupTimeout: DefaultStartupTimeout,
		hasAnnotations: pod.Annotations != nil, initContainers: len(pod.Spec.InitContainers), gracePeriod: defaultGracePeriod,
		containers: pod.Spec.Containers, hasVolumes: pod.Spec.Volumes != nil,
		hasLabels: pod.Labels != nil, record: leaseRecord(pod),
	}
	if tg := pod.Spec.TerminationGracePeriodSeconds; tg != nil {
		p.gracePeriod = *tg
	}
	if d := checkContainers(pod); d != nil {
		return nil, d
	}
	if d := p.metricsEndpoint(pod, sidecarPort); d != nil {
		return nil, d
	}
	if d := p.semaphoreRequest(pod.Annotations); d != nil {
		return nil, d
	}
	interval, d := scrapeIntervalFor(pod.Annotations, defaultScrapeInterval)
	if d != nil {
		return nil, d
	}
	p.scrapeInterval = interval
	return p, nil
}

// checkContainers refuses a pod the sidecar cannot be added to.
func checkContainers(pod *podObject) *denial {
	if len(pod.Spec.Containers) == 0 {
		// Validation, which runs after admission, would refuse the pod
		// anyway; a patch could not even add the sidecar to it.
		return invalid("the pod has no containers; it needs at least one before the metrics proxy can be injected")
	}
	for _, list := range []struct {
		what       string
		containers []containerPorts
	}{{"container", pod.Spec.Containers}, {"init container", pod.Spec.InitContainers}} {
		for _, c := range list.containers {
			if c.Name == ContainerName {
				return &denial{code: 400, reason: reasonConflict, message: fmt.Sprintf(
					"%s %q already exists but the pod has no annotation %s: \"true\"; rename the container, the webhook injects one of that name",
					list.what, ContainerName, AnnotationInjected)}
			}
		}
	}
	return nil
}

// metricsEndpoint reads the port and the path the sidecar proxies to.
func (p *plan) metricsEndpoint(pod *podObject, sidecarPort int32) *denial {
	ann := pod.Annotations
	if raw, ok := ann[AnnotationPort]; ok {
		port, d := parsePort(raw, pod)
		if d != nil {
			return d
		}
		p.metricsPort = port
	} else {
		port, found := namedPort(pod, MetricsPortName)
		if !found {
			return &denial{code: 400, reason: reasonNoPort, message: fmt.Sprintf(
				"annotation %s is absent and no container port is named %q; set %s to the port of the application's metrics endpoint",
				AnnotationPort, MetricsPortName, AnnotationPort)}
		}
		p.metricsPort = port
		p.warnings = append(p.warnings, fmt.Sprintf(
			"annotation %s is absent: the metrics port %d was found by its name %q", AnnotationPort, port, MetricsPortName))
	}
	if p.metricsPort == sidecarPort {
		return &denial{code: 400, reason: reasonConflict, message: fmt.Sprintf(
			"annotation %s %q is the port of the injected metrics proxy (%d); the application must serve its metrics on another port",
			AnnotationPort, ann[AnnotationPort], sidecarPort)}
	}
	if d := portClash(pod, sidecarPort); d != nil {
		return d
	}
	if raw, ok := ann[AnnotationPath]; ok {
		if !validPath(raw) {
			return invalid("annotation %s %q must be a URL path that starts with \"/\", at most %d characters without spaces or control characters",
				AnnotationPath, raw, maxPathLength)
		}
		p.metricsPath = raw
	}
	return nil
}

// semaphoreRequest reads the semaphore the pod names, its size and the
// startup timeout of its slot.
func (p *plan) semaphoreRequest(ann map[string]string) *denial {
	key, hasKey := ann[AnnotationSemaphoreKey]
	rawSize, hasSize := ann[AnnotationSemaphoreSize]
	rawTimeout, hasTimeout := ann[AnnotationStartupTimeout]
	if hasKey {
		if err := leaseapi.ValidateKey(key); err != nil {
			return invalid("annotation %s %q %v", AnnotationSemaphoreKey, key, err)
		}
		if !hasSize {
			return invalid("annotation %s is required with %s %q; set it to the number of slots, an integer from 1 to %d",
				AnnotationSemaphoreSize, AnnotationSemaphoreKey, key, semaphore.MaxSize)
		}
	}
	if hasSize {
		size, err := strconv.Atoi(rawSize)
		// Digits only: Atoi also takes "+3", which reads like a relative
		// change the annotation does not support.
		if err != nil || !digits(rawSize) || size < 1 || size > semaphore.MaxSize {
			return invalid("annotation %s %q must be an integer from 1 to %d", AnnotationSemaphoreSize, rawSize, semaphore.MaxSize)
		}
		if !hasKey {
			return invalid("annotation %s %q is set but annotation %s is missing; name the semaphore or remove the size",
				AnnotationSemaphoreSize, rawSize, AnnotationSemaphoreKey)
		}
		p.semaphoreKey, p.semaphoreSize = key, size
	}
	if hasTimeout {
		d, err := time.ParseDuration(rawTimeout)
		if err != nil || d < MinStartupTimeout || d > MaxStartupTimeout {
			return invalid("annotation %s %q must be a Go duration from %s to %s, e.g. 5m",
				AnnotationStartupTimeout, rawTimeout, shortDuration(MinStartupTimeout), shortDuration(MaxStartupTimeout))
		}
		p.startupTimeout = d
		if !hasKey {
			p.warnings = append(p.warnings, fmt.Sprintf("annotation %s has no effect without %s", AnnotationStartupTimeout, AnnotationSemaphoreKey))
		}
	}
	return nil
}

func digits(s string) bool {
	for i := range len(s) {
		if s[i] < '0' || s[i] > '9' {
			return false
		}
	}
	return s != ""
}

// parsePort accepts a port number or the name of a container port.
func parsePort(raw string, pod *podObject) (int32, *denial) {
	if raw != "" && raw[0] >= '0' && raw[0] <= '9' {
		n, err := strconv.Atoi(raw)
		if err != nil || len(validation.IsValidPortNum(n)) != 0 {
			return 0, invalid("annotation %s %q must be a port number from 1 to 65535 or the name of a container port", AnnotationPort, raw)
		}
		return int32(n), nil
	}
	if len(validation.IsValidPortName(raw)) != 0 {
		return 0, invalid("annotation %s %q must be a port number from 1 to 65535 or the name of a container port", AnnotationPort, raw)
	}
	port, ok := namedPort(pod, raw)
	if !ok {
		return 0, &denial{code: 400, reason: reasonNoPort, message: fmt.Sprintf(
			"annotation %s %q names no container port; use a port number or the name of a container port", AnnotationPort, raw)}
	}
	return port, nil
}

func namedPort(pod *podObject, name string) (int32, bool) {
	for _, list := range [][]containerPorts{pod.Spec.Containers, pod.Spec.InitContainers} {
		for _, c := range list {
			for _, port := range c.Ports {
				if port.Name == name && port.ContainerPort > 0 {
					return port.ContainerPort, true
				}
			}
		}
	}
	return 0, false
}

// portClash refuses pods whose containers declare the sidecar's port: every
// container of a pod shares one network namespace (and with hostNetwork,
// the node's), so two of them cannot listen on it.
func portClash(pod *podObject, sidecarPort int32) *denial {
	for _, list := range [][]containerPorts{pod.Spec.Containers, pod.Spec.InitContainers} {
		for _, c := range list {
			for _, port := range c.Ports {
				if port.ContainerPort == sidecarPort || (pod.Spec.HostNetwork && port.HostPort == sidecarPort) {
					where := "the pod's network namespace"
					if pod.Spec.HostNetwork {
						where = "the node's network (hostNetwork: true)"
					}
					return &denial{code: 400, reason: reasonConflict, message: fmt.Sprintf(
						"container %q declares port %d, which the injected metrics proxy listens on in %s; move the container's port",
						c.Name, sidecarPort, where)}
				}
			}
		}
	}
	return nil
}

func validPath(s string) bool {
	if len(s) == 0 || s[0] != '/' || len(s) > maxPathLength {
		return false
	}
	for i := 0; i < len(s); i++ {
		if c := s[i]; c <= ' ' || c == 0x7f {
			return false
		}
	}
	return true
}

// shortDuration prints 1s and 1h rather than Go's 1h0m0s.
func shortDuration(d time.Duration) string {
	switch {
	case d%time.Hour == 0:
		return strconv.FormatInt(int64(d/time.Hour), 10) + "h"
	case d%time.Minute == 0:
		return strconv.FormatInt(int64(d/time.Minute), 10) + "m"
	case d%time.Second == 0:
		return strconv.FormatInt(int64(d/time.Second), 10) + "s"
	}
	return d.String()
}
