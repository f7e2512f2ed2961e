package admission

import (
	"strconv"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
)

// AnnotationScrapeInterval declares the longest scrape interval of the
// Prometheus servers that scrape the pod; it overrides the webhook's
// --scrape-interval for the pod's grace period and final-scrape wait.
const AnnotationScrapeInterval = Prefix + "scrape-interval"

// Scrape interval bounds: a second is the shortest interval anyone
// configures; ten minutes keeps the grace period a pod gets in reach (a
// longer interval also outlives Prometheus' 5-minute staleness window).
const (
	DefaultScrapeInterval = time.Minute
	MinScrapeInterval     = time.Second
	MaxScrapeInterval     = 10 * time.Minute
)

// GraceMargin is what the sidecar needs after one scrape interval past the
// app's exit, as the grace period formula counts it: 5 s of slack for the
// scrape (sidecar.FinalScrapeMargin), up to 3 s to give the slot back and
// 2 s before the kubelet's SIGKILL.
const GraceMargin = 10 * time.Second

// defaultGracePeriod is what Kubernetes uses when the pod sets none.
const defaultGracePeriod = 30

// Startup probe of the injected sidecar. It fails until the pod holds a
// slot of its semaphore; a native sidecar's startup probe holds the app's
// containers back until it passes. The wait for a slot is unbounded by
// design (a pod waits for a slot like a queued job): periodSeconds 1 and
// the largest failureThreshold keep the kubelet from ever restarting the
// sidecar for it (2^31-1 s, 68 years).
const (
	StartedPath           = "/-/started"
	TerminatingPath       = "/-/terminating"
	startupProbeFailures  = 1<<31 - 1
	startupProbePeriodSec = 1
)

// scrapeIntervalFor is the pod's declared scrape interval: its annotation
// when set and valid, else the webhook's default.
func scrapeIntervalFor(ann map[string]string, def time.Duration) (time.Duration, *denial) {
	raw, ok := ann[AnnotationScrapeInterval]
	if !ok {
		return def, nil
	}
	d, err := time.ParseDuration(raw)
	if err != nil || d < MinScrapeInterval || d > MaxScrapeInterval {
		return 0, invalid("annotation %s %q must be a Go duration from %s to %s, such as 15s or 1m, the longest scrape interval of the Prometheus servers that scrape the pod",
			AnnotationScrapeInterval, raw, shortDuration(MinScrapeInterval), shortDuration(MaxScrapeInterval))
	}
	return d, nil
}

// gracePeriodFor is the pod's terminationGracePeriodSeconds after
// injection: its own (Kubernetes' 30 s when unset), which is what its app
// has to drain, plus one scrape interval and GraceMargin for the sidecar,
// which waits after the app for the final scrape. It only ever raises the
// pod's own value.
func gracePeriodFor(own *int64, scrapeInterval time.Duration) int64 {
	g := int64(defaultGracePeriod)
	if own != nil {
		g = *own
	}
	extra := int64((scrapeInterval + GraceMargin + time.Second - 1) / time.Second)
	return g + extra
}

// startupProbe is the sidecar container's startup probe.
func startupProbe() *corev1.Probe {
	return &corev1.Probe{
		ProbeHandler: corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{
			Path: StartedPath, Port: intstr.FromString(SidecarPortName),
		}},
		PeriodSeconds:    startupProbePeriodSec,
		FailureThreshold: startupProbeFailures,
	}
}

// preStopHook is the preStop hook given to app containers of a pod with a
// native sidecar: the kubelet calls the sidecar just before it signals the
// app, so that the sidecar fetches the app's metrics while the app drains
// (it gets its own signal only after the app exited).
func preStopHook(port int32) *corev1.LifecycleHandler {
	return &corev1.LifecycleHandler{HTTPGet: &corev1.HTTPGetAction{
		Path: TerminatingPath, Port: intstr.FromInt32(port),
	}}
}

// preStopOps add the preStop hook to every app container without one of
// its own; a container with its own preStop hook keeps it (the sidecar then
// serves the state of the last fetch or scrape before the app stopped).
func preStopOps(containers []containerPorts, port int32) []patchOperation {
	hook := preStopHook(port)
	var ops []patchOperation
	for i, c := range containers {
		container := "/spec/containers/" + strconv.Itoa(i)
		switch {
		case c.Lifecycle != nil && c.Lifecycle.PreStop != nil:
		case c.Lifecycle != nil:
			ops = append(ops, patchOperation{Op: "add", Path: container + "/lifecycle/preStop", Value: hook})
		default:
			ops = append(ops, patchOperation{Op: "add", Path: container + "/lifecycle", Value: corev1.Lifecycle{PreStop: hook}})
		}
	}
	return ops
}
