package semaphore

import (
	"context"
	"errors"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Metrics records semaphore operations and Redis node health. Create it with
// NewMetrics, pass it in Config and register it with the caller's registry.
// A nil *Metrics records nothing.
type Metrics struct {
	operations *prometheus.CounterVec
	durations  *prometheus.HistogramVec
	nodeErrors *prometheus.CounterVec
	nodeUp     *prometheus.GaugeVec
}

// NewMetrics builds the collectors; nothing is registered.
func NewMetrics() *Metrics {
	const ns = "prometheus_metrics_proxy_hook"
	return &Metrics{
		operations: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: ns, Name: "semaphore_operations_total",
			Help: "Semaphore operations by operation (acquire, renew, release) and result (ok, full, no_quorum, lost, canceled, error).",
		}, []string{"operation", "result"}),
		durations: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Namespace: ns, Name: "semaphore_operation_duration_seconds",
			Help:    "Duration of semaphore operations, all nodes included.",
			Buckets: []float64{.0002, .0005, .001, .002, .005, .01, .025, .05, .1, .25, .5, 1},
		}, []string{"operation"}),
		nodeErrors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: ns, Name: "redis_node_errors_total",
			Help: "Failed commands per Redis node by reason (timeout, connection, auth, loading, redis_error, protocol).",
		}, []string{"node", "reason"}),
		nodeUp: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Namespace: ns, Name: "redis_node_up",
			Help: "1 when the last command sent to the Redis node succeeded, 0 when it failed.",
		}, []string{"node"}),
	}
}

// Describe implements prometheus.Collector.
func (m *Metrics) Describe(ch chan<- *prometheus.Desc) {
	m.operations.Describe(ch)
	m.durations.Describe(ch)
	m.nodeErrors.Describe(ch)
	m.nodeUp.Describe(ch)
}

// Collect implements prometheus.Collector.
func (m *Metrics) Collect(ch chan<- prometheus.Metric) {
	m.operations.Collect(ch)
	m.durations.Collect(ch)
	m.nodeErrors.Collect(ch)
	m.nodeUp.Collect(ch)
}

func (m *Metrics) initNodes(addrs []string) {
	if m == nil {
		return
	}
	for _, a := range addrs {
		m.nodeUp.WithLabelValues(a)
	}
}

func (m *Metrics) observeNode(addr string, err error) {
	if m == nil {
		return
	}
	if err == nil {
		m.nodeUp.WithLabelValues(addr).Set(1)
		return
	}
	// A script error is an answer: the node is up.
	reason := classify(err)
	if reason == reasonRedis || reason == reasonProtocol {
		m.nodeUp.WithLabelValues(addr).Set(1)
	} else {
		m.nodeUp.WithLabelValues(addr).Set(0)
	}
	m.nodeErrors.WithLabelValues(addr, reason).Inc()
}

func (m *Metrics) observeOp(op string, err error, d time.Duration) {
	if m == nil {
		return
	}
	m.operations.WithLabelValues(op, Result(err)).Inc()
	m.durations.WithLabelValues(op).Observe(d.Seconds())
}

// Result is the metrics label for an operation's outcome.
func Result(err error) string {
	switch {
	case err == nil:
		return "ok"
	case errors.Is(err, ErrFull):
		return "full"
	case errors.Is(err, ErrLeaseLost):
		return "lost"
	case errors.Is(err, ErrNoQuorum):
		return "no_quorum"
	case errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
		return "canceled"
	default:
		return "error"
	}
}
