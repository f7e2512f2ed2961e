package metricsproxy

import "github.com/prometheus/client_golang/prometheus"

// Metrics records what the proxy served. Create it with NewMetrics, pass it
// in Config and register it with the caller's registry. A nil *Metrics
// records nothing.
type Metrics struct {
	scrapes        *prometheus.CounterVec
	upstreamErrors *prometheus.CounterVec
	lastGoodBytes  prometheus.Gauge
}

// NewMetrics builds the collectors; nothing is registered.
func NewMetrics() *Metrics {
	const ns = "prometheus_metrics_proxy_hook"
	return &Metrics{
		scrapes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: ns, Name: "sidecar_scrapes_total",
			Help: "Scrapes of the metrics path answered in full, by source: app (live) or last_good (the cached body, after the termination signal).",
		}, []string{"source"}),
		upstreamErrors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: ns, Name: "sidecar_upstream_errors_total",
			Help: "Requests to the app that failed, by reason: timeout, connection, status (5xx) or body (broken mid-body).",
		}, []string{"reason"}),
		lastGoodBytes: prometheus.NewGauge(prometheus.GaugeOpts{
			Namespace: ns, Name: "sidecar_last_good_bytes",
			Help: "Bytes of the last good metrics bodies kept for the final scrape.",
		}),
	}
}

// Describe implements prometheus.Collector.
func (m *Metrics) Describe(ch chan<- *prometheus.Desc) {
	m.scrapes.Describe(ch)
	m.upstreamErrors.Describe(ch)
	m.lastGoodBytes.Describe(ch)
}

// Collect implements prometheus.Collector.
func (m *Metrics) Collect(ch chan<- prometheus.Metric) {
	m.scrapes.Collect(ch)
	m.upstreamErrors.Collect(ch)
	m.lastGoodBytes.Collect(ch)
}

func (m *Metrics) scraped(source string) {
	if m != nil {
		m.scrapes.WithLabelValues(source).Inc()
	}
}

func (m *Metrics) upstreamError(reason string) {
	if m != nil {
		m.upstreamErrors.WithLabelValues(reason).Inc()
	}
}

func (m *Metrics) cached(bytes int64) {
	if m != nil {
		m.lastGoodBytes.Set(float64(bytes))
	}
}
