package admission

import "github.com/prometheus/client_golang/prometheus"

// reason classifies a decision for metrics and logs. Each reason belongs to
// one result.
type reason uint8

const (
	reasonNotPod reason = iota
	reasonNotCreate
	reasonNotOptedIn
	reasonAlreadyInjected
	reasonInjected
	reasonDryRun
	reasonNoQuorumAllowed
	reasonInvalid
	reasonNoPort
	reasonConflict
	reasonFull
	reasonNoQuorum
	reasonBadRequest
	reasonTooLarge
	reasonUnsupportedMediaType
	reasonMethodNotAllowed
	reasonNotDelivered
	numReasons
)

var reasonLabels = [numReasons]struct{ result, label string }{
	reasonNotPod:               {"allowed", "not_pod"},
	reasonNotCreate:            {"allowed", "not_create"},
	reasonNotOptedIn:           {"allowed", "not_opted_in"},
	reasonAlreadyInjected:      {"allowed", "already_injected"},
	reasonInjected:             {"allowed", "injected"},
	reasonDryRun:               {"allowed", "dry_run"},
	reasonNoQuorumAllowed:      {"allowed", "no_quorum_allowed"},
	reasonInvalid:              {"denied", "invalid_annotation"},
	reasonNoPort:               {"denied", "no_metrics_port"},
	reasonConflict:             {"denied", "conflict"},
	reasonFull:                 {"denied", "semaphore_full"},
	reasonNoQuorum:             {"denied", "no_quorum"},
	reasonBadRequest:           {"error", "bad_request"},
	reasonTooLarge:             {"error", "too_large"},
	reasonUnsupportedMediaType: {"error", "unsupported_media_type"},
	reasonMethodNotAllowed:     {"error", "method_not_allowed"},
	reasonNotDelivered:         {"error", "not_delivered"},
}

func (r reason) String() string { return reasonLabels[r].label }
func (r reason) result() string { return reasonLabels[r].result }

// route is the way a review went through the handler, the duration
// histogram's "path" label: passed unchanged, injected, or injected with a
// semaphore slot asked for.
type route uint8

const (
	routePassthrough route = iota
	routeInject
	routeSemaphore
	numRoutes
)

var routeLabels = [numRoutes]string{"passthrough", "inject", "semaphore"}

// Metrics counts admission decisions and times them. Create it with
// NewMetrics and register it with the caller's registry; a nil *Metrics
// records nothing.
type Metrics struct {
	requests  *prometheus.CounterVec
	durations *prometheus.HistogramVec
	// Resolved once: a label lookup per review costs a hash and a lock.
	byReason [numReasons]prometheus.Counter
	byRoute  [numRoutes]prometheus.Observer
}

// NewMetrics builds the collectors; nothing is registered.
func NewMetrics() *Metrics {
	const ns = "prometheus_metrics_proxy_hook"
	m := &Metrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: ns, Name: "admission_requests_total",
			Help: "Admission reviews by result (allowed, denied, error) and reason.",
		}, []string{"result", "reason"}),
		durations: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Namespace: ns, Name: "admission_duration_seconds",
			Help:    "Time from reading an admission review to writing its answer, by path (passthrough, inject, semaphore).",
			Buckets: []float64{.00005, .0001, .00025, .0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5},
		}, []string{"path"}),
	}
	for r := range numReasons {
		m.byReason[r] = m.requests.WithLabelValues(r.result(), r.String())
	}
	for rt := range numRoutes {
		m.byRoute[rt] = m.durations.WithLabelValues(routeLabels[rt])
	}
	return m
}

// Describe implements prometheus.Collector.
func (m *Metrics) Describe(ch chan<- *prometheus.Desc) {
	m.requests.Describe(ch)
	m.durations.Describe(ch)
}

// Collect implements prometheus.Collector.
func (m *Metrics) Collect(ch chan<- prometheus.Metric) {
	m.requests.Collect(ch)
	m.durations.Collect(ch)
}

func (m *Metrics) observe(r reason, rt route, seconds float64) {
	if m == nil {
		return
	}
	m.byReason[r].Inc()
	m.byRoute[rt].Observe(seconds)
}
