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
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"
	"golang.org/x/time/rate"

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
	// Auth verifies the bearer token of every request and Pods finds the
	// token's pod (see authorize.go). A nil Auth checks nothing: only for
	// a webhook run without Kubernetes (--lease-api-auth=disabled).
	Auth Authenticator
	Pods PodGetter
	// Legacy, when set, lets renewals and releases without a token through
	// for leases granted before tokens were checked.
	Legacy LegacyLeases
	// PodRate and PodBurst limit each pod's requests; zero means
	// DefaultPodRate and DefaultPodBurst, a negative PodRate no limit.
	PodRate  rate.Limit
	PodBurst int
}

// NewHandler serves leaseapi.RenewPath, leaseapi.ReleasePath and leaseapi.AcquirePath.
func NewHandler(cfg Config) http.Handler {
	if cfg.Timeout <= 0 {
		cfg.Timeout = 2 * time.Second
	}
	if cfg.Auth != nil && cfg.Pods == nil {
		panic("leaseserver: Config.Auth needs Config.Pods")
	}
	h := &handler{cfg: cfg, limits: newPodLimits(cfg.PodRate, cfg.PodBurst, time.Now)}
	mux := http.NewServeMux()
	mux.HandleFunc(leaseapi.RenewPath, h.serve("renew", h.renew))
	mux.HandleFunc(leaseapi.ReleasePath, h.serve("release", h.release))
	mux.HandleFunc(leaseapi.AcquirePath, h.serve("acquire", h.acquire))
	return mux
}

type handler struct {
	cfg    Config
	limits *podLimits
}

// request is what an operation reads: the body and the bearer token.
type request struct {
	body  []byte
	token string
}

// answer is what an operation decided: a status, a body, and for the log a
// reason when it is not a success.
type answer struct {
	status int
	body   any
	reason string
	// cause is set on a refusal by authorize.
	cause string
}

func fail(status int, reason string, err error) answer {
	return answer{status: status, reason: reason, body: leaseapi.Failure(reason, err)}
}

// operation is one lease API call: it decodes and checks the request,
// authorizes its caller, and asks the semaphore.
type operation func(context.Context, request) (answer, leaseapi.Lease, caller)

func (h *handler) serve(op string, do operation) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		began := time.Now()
		a, lease, who := h.decide(r, do)
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
		h.cfg.Metrics.reject(op, a.cause)
		if who.legacy && a.status < 400 {
			h.cfg.Metrics.legacyAccepted(op)
		}
		h.log(op, a, lease, who, time.Since(began))
	}
}

func (h *handler) log(op string, a answer, lease leaseapi.Lease, who caller, took time.Duration) {
	ev := h.cfg.Logger.Info()
	if a.status >= 500 {
		ev = h.cfg.Logger.Error()
	} else if a.status >= 400 {
		ev = h.cfg.Logger.Warn()
	}
	ev = ev.Str("operation", op).Int("code", a.status).Str("namespace", lease.Namespace).
		Str("key", lease.Key).Int("slot", lease.Slot).Str("reason", a.reason)
	if a.cause != "" {
		ev = ev.Str("cause", a.cause)
	}
	if who.pod.PodName != "" {
		ev = ev.Str("pod", who.pod.Namespace+"/"+who.pod.PodName).Str("pod_uid", who.pod.PodUID)
	}
	if who.legacy {
		ev = ev.Bool("legacy_holder_auth", true)
	}
	// Holder ids stay out of the info log: the legacy transition still
	// accepts one alone. A prefix at debug level correlates.
	if h.cfg.Logger.GetLevel() <= zerolog.DebugLevel {
		ev = ev.Str("holder_prefix", prefix(lease.Holder, 8))
	}
	ev.Dur("duration", took).Msg("Answered a lease request.")
}

func (h *handler) decide(r *http.Request, do operation) (answer, leaseapi.Lease, caller) {
	if r.Method != http.MethodPost {
		return fail(http.StatusMethodNotAllowed, leaseapi.ReasonBadRequest, fmt.Errorf("method %s is not allowed; use POST", r.Method)), leaseapi.Lease{}, caller{}
	}
	if mt, _, err := mime.ParseMediaType(r.Header.Get("Content-Type")); err != nil || mt != "application/json" {
		return fail(http.StatusUnsupportedMediaType, leaseapi.ReasonBadRequest, fmt.Errorf("content type %q is not supported; send application/json", r.Header.Get("Content-Type"))), leaseapi.Lease{}, caller{}
	}
	body, err := io.ReadAll(http.MaxBytesReader(nil, r.Body, maxBody))
	if err != nil {
		var tooBig *http.MaxBytesError
		if errors.As(err, &tooBig) {
			return fail(http.StatusRequestEntityTooLarge, leaseapi.ReasonBadRequest, fmt.Errorf("the request body exceeds %d bytes", maxBody)), leaseapi.Lease{}, caller{}
		}
		return fail(http.StatusBadRequest, leaseapi.ReasonBadRequest, fmt.Errorf("reading the request body: %w", err)), leaseapi.Lease{}, caller{}
	}
	ctx, cancel := context.WithTimeout(r.Context(), h.cfg.Timeout)
	defer cancel()
	return do(ctx, request{body: body, token: bearer(r.Header.Get("Authorization"))})
}

// bearer is the token of an "Authorization: Bearer" header, "" for none.
func bearer(header string) string {
	scheme, token, ok := strings.Cut(header, " ")
	if !ok || !strings.EqualFold(scheme, "Bearer") {
		return ""
	}
	return strings.TrimSpace(token)
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

func (h *handler) renew(ctx context.Context, req request) (answer, leaseapi.Lease, caller) {
	var l leaseapi.Lease
	if err := decode(req.body, &l); err != nil {
		return fail(http.StatusBadRequest, leaseapi.ReasonBadRequest, err), l, caller{}
	}
	if err := l.Validate(); err != nil {
		return fail(http.StatusBadRequest, leaseapi.ReasonBadRequest, err), l, caller{}
	}
	no, who := h.authorize(ctx, "renew", req.token, l, 0)
	if no != nil {
		return *no, l, who
	}
	if _, err := h.cfg.Semaphore.Renew(ctx, semaphore.Lease{Name: l.Name(), Slot: l.Slot, Holder: l.Holder}, h.cfg.TTL); err != nil {
		return semaphoreFailure(err), l, who
	}
	return answer{status: http.StatusOK, body: leaseapi.LeaseResponse{Lease: l, TTLSeconds: h.cfg.TTL.Seconds()}}, l, who
}

func (h *handler) release(ctx context.Context, req request) (answer, leaseapi.Lease, caller) {
	var l leaseapi.Lease
	if err := decode(req.body, &l); err != nil {
		return fail(http.StatusBadRequest, leaseapi.ReasonBadRequest, err), l, caller{}
	}
	if err := l.Validate(); err != nil {
		return fail(http.StatusBadRequest, leaseapi.ReasonBadRequest, err), l, caller{}
	}
	no, who := h.authorize(ctx, "release", req.token, l, 0)
	if no != nil {
		return *no, l, who
	}
	released, err := h.cfg.Semaphore.Release(ctx, semaphore.Lease{Name: l.Name(), Slot: l.Slot, Holder: l.Holder})
	if err != nil {
		return semaphoreFailure(err), l, who
	}
	return answer{status: http.StatusOK, body: leaseapi.ReleaseResponse{Released: released}}, l, who
}

func (h *handler) acquire(ctx context.Context, req request) (answer, leaseapi.Lease, caller) {
	var ar leaseapi.AcquireRequest
	if err := decode(req.body, &ar); err != nil {
		return fail(http.StatusBadRequest, leaseapi.ReasonBadRequest, err), ar.Lease, caller{}
	}
	l := ar.Lease
	if err := ar.Validate(); err != nil {
		return fail(http.StatusBadRequest, leaseapi.ReasonBadRequest, err), l, caller{}
	}
	no, who := h.authorize(ctx, "acquire", req.token, l, ar.Size)
	if no != nil {
		return *no, l, who
	}
	got, err := h.takeAgain(ctx, l, ar.Size, who)
	if err != nil {
		return semaphoreFailure(err), l, who
	}
	l.Slot = got.Slot
	return answer{status: http.StatusOK, body: leaseapi.LeaseResponse{Lease: l, TTLSeconds: h.cfg.TTL.Seconds()}}, l, who
}

// takeAgain takes a slot for the caller's holder. A pod the token named
// gets a lease record, so that its lease is never mistaken for one granted
// before records (and tokens) existed, which the holder id alone may renew.
func (h *handler) takeAgain(ctx context.Context, l leaseapi.Lease, size int, who caller) (semaphore.Lease, error) {
	if who.pod.PodName == "" {
		return h.cfg.Semaphore.AcquireAs(ctx, l.Name(), size, h.cfg.TTL, l.Holder)
	}
	rec := semaphore.Record{Granted: time.Now(), Pod: who.pod.PodName, UID: who.pod.PodUID}
	return h.cfg.Semaphore.AcquireWithRecord(ctx, l.Name(), size, h.cfg.TTL, l.Holder, rec)
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
	requests   *prometheus.CounterVec
	durations  *prometheus.HistogramVec
	rejections *prometheus.CounterVec
	legacy     *prometheus.CounterVec
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
		rejections: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: ns, Name: "lease_api_rejections_total",
			Help: "Lease API requests refused before the semaphore was asked, by operation and cause (missing-token, invalid-token, not-pod-bound, rate-limited, other-namespace, pod-not-found, pod-replaced, not-opted-in, other-semaphore, other-size, other-holder, no-holder).",
		}, []string{"operation", "cause"}),
		legacy: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: ns, Name: "lease_api_legacy_requests_total",
			Help: "Renewals and releases accepted without a token, for leases granted by a release before lease API tokens. It falls to zero once those pods are gone.",
		}, []string{"operation"}),
	}
}

// Describe implements prometheus.Collector.
func (m *Metrics) Describe(ch chan<- *prometheus.Desc) {
	m.requests.Describe(ch)
	m.durations.Describe(ch)
	m.rejections.Describe(ch)
	m.legacy.Describe(ch)
}

// Collect implements prometheus.Collector.
func (m *Metrics) Collect(ch chan<- prometheus.Metric) {
	m.requests.Collect(ch)
	m.durations.Collect(ch)
	m.rejections.Collect(ch)
	m.legacy.Collect(ch)
}

func (m *Metrics) observe(op string, status int, d time.Duration) {
	if m == nil {
		return
	}
	m.requests.WithLabelValues(op, strconv.Itoa(status)).Inc()
	m.durations.WithLabelValues(op).Observe(d.Seconds())
}

func (m *Metrics) reject(op, cause string) {
	if m == nil || cause == "" {
		return
	}
	m.rejections.WithLabelValues(op, cause).Inc()
}

func (m *Metrics) legacyAccepted(op string) {
	if m == nil {
		return
	}
	m.legacy.WithLabelValues(op).Inc()
}

func prefix(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n]
}
