package leasekeeper

import "github.com/prometheus/client_golang/prometheus"

// Metrics exposes the lease's state. Create it with NewMetrics, pass it in
// Config and register it with the caller's registry. A nil *Metrics records
// nothing.
type Metrics struct {
	overLimit  prometheus.Gauge
	operations *prometheus.CounterVec
}

// NewMetrics builds the collectors; nothing is registered.
func NewMetrics() *Metrics {
	const ns = "prometheus_metrics_proxy_hook"
	return &Metrics{
		overLimit: prometheus.NewGauge(prometheus.GaugeOpts{
			Namespace: ns, Name: "sidecar_over_limit",
			Help: "1 while the pod runs without a slot of its semaphore: its lease was lost and taking a slot again failed (the semaphore is full, or the lease API did not answer).",
		}),
		operations: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: ns, Name: "sidecar_lease_operations_total",
			Help: "Lease API calls by operation (renew, acquire, release) and result (ok, lost, full, retry, error).",
		}, []string{"operation", "result"}),
	}
}

// Describe implements prometheus.Collector.
func (m *Metrics) Describe(ch chan<- *prometheus.Desc) {
	m.overLimit.Describe(ch)
	m.operations.Describe(ch)
}

// Collect implements prometheus.Collector.
func (m *Metrics) Collect(ch chan<- prometheus.Metric) {
	m.overLimit.Collect(ch)
	m.operations.Collect(ch)
}

func (m *Metrics) setOverLimit(over bool) {
	if m == nil {
		return
	}
	v := 0.0
	if over {
		v = 1
	}
	m.overLimit.Set(v)
}

func (m *Metrics) observe(op, result string) {
	if m != nil {
		m.operations.WithLabelValues(op, result).Inc()
	}
}
