// Package leaseserver serves the lease API (see package leaseapi for the wire
// contract) on the webhook's TLS port, over the semaphore. Only the webhook
// talks to Redis.
package leaseserver

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http"
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"

	"github.com/kaidotio/prometheus-metrics-proxy-hook/src/leaseapi"
	"github.com/kaidotio/prometheus-metrics-proxy-hook/src/semaphore"
)

// maxBody bounds a request body; a valid one is about 150 bytes.
const maxBody = 4 << 10

// Config wires a Handler.
type Config struct {
	Semaphore *semaphore.Client
	// TTL is the lease of a running pod; renew and acquire extend to it.
	TTL time.Duration
	// Timeout bounds the semaphore work of one request; zero means 2 s.
	Timeout time.Duration
	Logger  zerolog.Logger
	// Metrics, when set, counts requests; register it with the caller's
	// registry.
	Metrics *Metrics
}

// NewHandler serves leaseapi.RenewPath, leaseapi.ReleasePath and leaseapi.AcquirePath.
func NewHandler(cfg Config) http.Handler {
	if cfg.Timeout <= 0 {
		cfg.Timeout = 2 * time.Second
	}
	h := &handler{cfg: cfg}
	mux := http.NewServeMux()
	mux.HandleFunc(leaseapi.RenewPath, h.serve("renew", h.renew))
	mux.HandleFunc(leaseapi.ReleasePath, h.serve("release", h.release))
	mux.HandleFunc(leaseapi.AcquirePath, h.serve("acquire", h.acquire))
	return mux
}

type handler struct{ cfg Config }

// answer is what an operation decided: a status, a body, and for the log a
// reason when it is not a success.
type answer struct {
	status int
	body   any
	reason string
}

func fail(status int, reason string, err error) answer {
	return answer{status: status, reason: reason, body: leaseapi.Failure(reason, err)}
}

func (h *handler) serve(op string, do func(context.Context, []byte) (answer, leaseapi.Lease)) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		began := time.Now()
		a, lease := h.decide(r, do)
		if a.status == http.StatusServiceUnavailable {
			w.Header().Set("Retry-After", "1")
		}
		if a.status == http.StatusMethodNotAllowed {
			w.Header().Set("Allow", http.MethodPost)
		}
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(a.status)
		_ = json.NewEncoder(w).Encode(a.body)
		h.cfg.Metrics.observe(op, a.status, time.Since(began))
		ev := h.cfg.Logger.Info()
		if a.status >= 500 {
			ev = h.cfg.Logger.Error()
		} else if a.status >= 400 {
			ev = h.cfg.Logger.Warn()
		}
		ev.Str("operation", op).Int("code", a.status).Str("namespace", lease.Namespace).
			Str("key", lease.Key).Int("slot", lease.Slot).
			// The holder id is a capability: a prefix is enough to correlate.
			Str("holder_prefix", prefix(lease.Holder, 8)).
			Str("reason", a.reason).Dur("duration", time.Since(began)).Msg("Answered a lease request.")
	}
}

func (h *handler) decide(r *http.Request, do func(context.Context, []byte) (answer, leaseapi.Lease)) (answer, leaseapi.Lease) {
	if r.Method != http.MethodPost {
		return fail(http.StatusMethodNotAllowed, leaseapi.ReasonBadRequest, fmt.Errorf("method %s is not allowed; use POST", r.Method)), leaseapi.Lease{}
	}
	if mt, _, err := mime.ParseMediaType(r.Header.Get("Content-Type")); err != nil || mt != "application/json" {
		return fail(http.StatusUnsupportedMediaType, leaseapi.ReasonBadRequest, fmt.Errorf("content type %q is not supported; send application/json", r.Header.Get("Content-Type"))), leaseapi.Lease{}
	}
	body, err := io.ReadAll(http.MaxBytesReader(nil, r.Body, maxBody))
	if err != nil {
		var tooBig *http.MaxBytesError
		if errors.As(err, &tooBig) {
			return fail(http.StatusRequestEntityTooLarge, leaseapi.ReasonBadRequest, fmt.Errorf("the request body exceeds %d bytes", maxBody)), leaseapi.Lease{}
		}
		return fail(http.StatusBadRequest, leaseapi.ReasonBadRequest, fmt.Errorf("reading the request body: %w", err)), leaseapi.Lease{}
	}
	ctx, cancel := context.WithTimeout(r.Context(), h.cfg.Timeout)
	defer cancel()
	return do(ctx, body)
}

func decode(body []byte, into any) error {
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	if err := dec.Decode(into); err != nil {
		return fmt.Errorf("the request body is not a valid lease request: %w", err)
	}
	if dec.More() {
		return errors.New("the request body has data after the JSON object")
	}
	return nil
}

func (h *handler) renew(ctx context.Context, body []byte) (answer, leaseapi.Lease) {
	var l leaseapi.Lease
	if err := decode(body, &l); err != nil {
		return fail(http.StatusBadRequest, leaseapi.ReasonBadRequest, err), l
	}
	if err := l.Validate(); err != nil {
		return fail(http.StatusBadRequest, leaseapi.ReasonBadRequest, err), l
	}
	_, err := h.cfg.Semaphore.Renew(ctx, semaphore.Lease{Name: l.Name(), Slot: l.Slot, Holder: l.Holder}, h.cfg.TTL)
	if err != nil {
		return semaphoreFailure(err), l
	}
	return answer{status: http.StatusOK, body: leaseapi.LeaseResponse{Lease: l, TTLSeconds: h.cfg.TTL.Seconds()}}, l
}

func (h *handler) release(ctx context.Context, body []byte) (answer, leaseapi.Lease) {
	var l leaseapi.Lease
	if err := decode(body, &l); err != nil {
		return fail(http.StatusBadRequest, leaseapi.ReasonBadRequest, err), l
	}
	if err := l.Validate(); err != nil {
		return fail(http.StatusBadRequest, leaseapi.ReasonBadRequest, err), l
	}
	released, err := h.cfg.Semaphore.Release(ctx, semaphore.Lease{Name: l.Name(), Slot: l.Slot, Holder: l.Holder})
	if err != nil {
		return semaphoreFailure(err), l
	}
	return answer{status: http.StatusOK, body: leaseapi.ReleaseResponse{Released: released}}, l
}

func (h *handler) acquire(ctx context.Context, body []byte) (answer, leaseapi.Lease) {
	var req leaseapi.AcquireRequest
	if err := decode(body, &req); err != nil {
		return fail(http.StatusBadRequest, leaseapi.ReasonBadRequest, err), req.Lease
	}
	l := req.Lease
	if err := req.Validate(); err != nil {
		return fail(http.StatusBadRequest, leaseapi.ReasonBadRequest, err), l
	}
	got, err := h.cfg.Semaphore.AcquireAs(ctx, l.Name(), req.Size, h.cfg.TTL, l.Holder)
	if err != nil {
		return semaphoreFailure(err), l
	}
	l.Slot = got.Slot
	return answer{status: http.StatusOK, body: leaseapi.LeaseResponse{Lease: l, TTLSeconds: h.cfg.TTL.Seconds()}}, l
}

// semaphoreFailure maps the semaphore's typed errors to statuses a client
// can act on: 404 and 409 are final for this lease, 503 is worth a retry.
func semaphoreFailure(err error) answer {
	var lost *semaphore.LeaseLostError
	switch {
	case errors.As(err, &lost) && lost.Reason == semaphore.LostHeldByOther:
		return fail(http.StatusConflict, leaseapi.ReasonConflict, err)
	case errors.As(err, &lost):
		return fail(http.StatusNotFound, leaseapi.ReasonNotFound, err)
	case errors.Is(err, semaphore.ErrFull):
		return fail(http.StatusConflict, leaseapi.ReasonFull, fmt.Errorf("%w; this pod runs over the limit until a slot frees up", err))
	case errors.Is(err, semaphore.ErrNoQuorum), errors.Is(err, context.DeadlineExceeded), errors.Is(err, context.Canceled):
		return fail(http.StatusServiceUnavailable, leaseapi.ReasonNoQuorum, err)
	default:
		return fail(http.StatusInternalServerError, leaseapi.ReasonNoQuorum, err)
	}
}

// Metrics counts lease API requests. A nil *Metrics records nothing.
type Metrics struct {
	requests  *prometheus.CounterVec
	durations *prometheus.HistogramVec
}

// NewMetrics builds the collectors; register them with the caller's
// registry.
func NewMetrics() *Metrics {
	const ns = "prometheus_metrics_proxy_hook"
	return &Metrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: ns, Name: "lease_api_requests_total",
			Help: "Lease API requests by operation (renew, release, acquire) and HTTP status code. acquire with 409 means a sidecar whose lease expired found no free slot: its pod runs over the limit.",
		}, []string{"operation", "code"}),
		durations: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Namespace: ns, Name: "lease_api_request_duration_seconds",
			Help:    "Duration of lease API requests.",
			Buckets: []float64{.0005, .001, .002, .005, .01, .025, .05, .1, .25, .5, 1, 2.5},
		}, []string{"operation"}),
	}
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

func (m *Metrics) observe(op string, status int, d time.Duration) {
	if m == nil {
		return
	}
	m.requests.WithLabelValues(op, strconv.Itoa(status)).Inc()
	m.durations.WithLabelValues(op).Observe(d.Seconds())
}

func prefix(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n]
}
