package leaseauth

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Metrics counts token reviews and cache use. A nil *Metrics records
// nothing.
type Metrics struct {
	reviews   *prometheus.CounterVec
	durations prometheus.Histogram
	lookups   *prometheus.CounterVec
}

// NewMetrics builds the collectors; register them with the caller's
// registry.
func NewMetrics() *Metrics {
	const ns = "prometheus_metrics_proxy_hook"
	return &Metrics{
		reviews: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: ns, Name: "lease_api_token_reviews_total",
			Help: "TokenReviews the lease API sent to the API server, by result (ok: the API server answered; error: it could not be asked).",
		}, []string{"result"}),
		durations: prometheus.NewHistogram(prometheus.HistogramOpts{
			Namespace: ns, Name: "lease_api_token_review_duration_seconds",
			Help:    "Duration of the lease API's TokenReviews.",
			Buckets: []float64{.001, .002, .005, .01, .025, .05, .1, .25, .5, 1, 2.5},
		}),
		lookups: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: ns, Name: "lease_api_token_cache_lookups_total",
			Help: "Lookups of the lease API's token cache, by result (hit, miss).",
		}, []string{"result"}),
	}
}

// Describe implements prometheus.Collector.
func (m *Metrics) Describe(ch chan<- *prometheus.Desc) {
	m.reviews.Describe(ch)
	m.durations.Describe(ch)
	m.lookups.Describe(ch)
}

// Collect implements prometheus.Collector.
func (m *Metrics) Collect(ch chan<- prometheus.Metric) {
	m.reviews.Collect(ch)
	m.durations.Collect(ch)
	m.lookups.Collect(ch)
}

func (m *Metrics) reviewed(err error, d time.Duration) {
	if m == nil {
		return
	}
	result := "ok"
	if err != nil {
		result = "error"
	}
	m.reviews.WithLabelValues(result).Inc()
	m.durations.Observe(d.Seconds())
}

func (m *Metrics) cache(result string) {
	if m == nil {
		return
	}
	m.lookups.WithLabelValues(result).Inc()
}

// Reviews is the TokenReviews sent, whatever their result.
func (m *Metrics) Reviews() prometheus.Collector { return m.reviews }
