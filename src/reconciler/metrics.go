package reconciler

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Metrics are the reconciler's; a nil *Metrics records nothing.
type Metrics struct {
	releases   *prometheus.CounterVec
	releaseAge *prometheus.HistogramVec
	sweeps     *prometheus.CounterVec
	leader     prometheus.Gauge
}

// NewMetrics builds the collectors; register the result.
func NewMetrics() *Metrics {
	const ns = "prometheus_metrics_proxy_hook"
	m := &Metrics{
		releases: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: ns, Name: "reconciler_releases_total",
			Help: "Leases the reconciler released because no pod held them, by cause: no_pod (none appeared within the window), pod_deleted, pod_terminal.",
		}, []string{"cause"}),
		releaseAge: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Namespace: ns, Name: "reconciler_release_age_seconds",
			Help:    "Time from the admission that took a lease to its release by the reconciler, by cause.",
			Buckets: []float64{1, 2, 5, 10, 20, 30, 60, 90, 120, 180, 300, 600},
		}, []string{"cause"}),
		sweeps: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: ns, Name: "reconciler_sweeps_total",
			Help: "Comparisons of the leases in Redis with the pods, by result (ok, error).",
		}, []string{"result"}),
		leader: prometheus.NewGauge(prometheus.GaugeOpts{
			Namespace: ns, Name: "reconciler_leader",
			Help: "1 while this replica leads the reconciler.",
		}),
	}
	for _, c := range []cause{causeNoPod, causePodDeleted, causePodTerminal} {
		m.releases.WithLabelValues(string(c))
	}
	m.sweeps.WithLabelValues("ok")
	m.sweeps.WithLabelValues("error")
	return m
}

// Describe implements prometheus.Collector.
func (m *Metrics) Describe(ch chan<- *prometheus.Desc) {
	m.releases.Describe(ch)
	m.releaseAge.Describe(ch)
	m.sweeps.Describe(ch)
	m.leader.Describe(ch)
}

// Collect implements prometheus.Collector.
func (m *Metrics) Collect(ch chan<- prometheus.Metric) {
	m.releases.Collect(ch)
	m.releaseAge.Collect(ch)
	m.sweeps.Collect(ch)
	m.leader.Collect(ch)
}

func (m *Metrics) released(why cause, age time.Duration) {
	if m == nil {
		return
	}
	m.releases.WithLabelValues(string(why)).Inc()
	m.releaseAge.WithLabelValues(string(why)).Observe(age.Seconds())
}

func (m *Metrics) sweep(ok bool) {
	if m == nil {
		return
	}
	result := "ok"
	if !ok {
		result = "error"
	}
	m.sweeps.WithLabelValues(result).Inc()
}

func (m *Metrics) setLeader(on bool) {
	if m == nil {
		return
	}
	v := 0.0
	if on {
		v = 1
	}
	m.leader.Set(v)
}
