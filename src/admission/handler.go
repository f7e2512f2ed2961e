// Package admission is the webhook's /mutate handler: it reads AdmissionReview
// v1 requests for pods, gates annotated pods on their semaphore and answers
// with an RFC 6902 patch that injects the metrics proxy sidecar.
//
// Pods that did not opt in are the common case and take a fast path: the
// review is scanned (and validated) without decoding the pod, and the answer
// is written from a template. Only opted-in pods are decoded, and only into
// the fields the webhook reads.
package admission

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/rs/zerolog"

	"github.com/kaidotio/prometheus-metrics-proxy-hook/src/leaseapi"
	"github.com/kaidotio/prometheus-metrics-proxy-hook/src/semaphore"
)

// MaxBodyBytes bounds a review; the API server limits objects to about
// 3 MiB, and a review can carry an object and its old version.
const MaxBodyBytes = 7 << 20

// NoQuorumPolicy is the answer when the semaphore's Redis nodes have no
// quorum.
type NoQuorumPolicy string

const (
	// NoQuorumDeny denies the pod; its controller retries.
	NoQuorumDeny NoQuorumPolicy = "deny"
	// NoQuorumAllow admits the pod without a slot, with a warning.
	NoQuorumAllow NoQuorumPolicy = "allow"
)

// Review timeouts. The API server sends its own as ?timeout=; the handler
// answers a margin before it, so that the answer arrives while the API
// server still waits for it.
const (
	defaultReviewTimeout = 10 * time.Second
	maxTimeoutMargin     = time.Second
	// releaseTimeout bounds giving back a slot whose answer was not
	// delivered; the slot expires with its startup timeout otherwise.
	releaseTimeout = 2 * time.Second
	// pooledBufferLimit keeps buffers of rare huge reviews from staying
	// in the pool and in the process' memory.
	pooledBufferLimit = 256 << 10
)

// Config wires a Handler.
type Config struct {
	Sidecar Sidecar
	// Semaphore takes the slots of pods that name a semaphore.
	Semaphore *semaphore.Client
	// NoQuorumPolicy is NoQuorumDeny (the default) or NoQuorumAllow.
	NoQuorumPolicy NoQuorumPolicy
	// CA returns the PEM bundle the sidecar trusts for the lease API; it is
	// called per injected pod, so that a rotated bundle is used at once.
	CA     func() []byte
	Logger zerolog.Logger
	// Metrics, when set, counts decisions; register it with the caller's
	// registry.
	Metrics *Metrics
}

// Handler serves /mutate. It is safe for concurrent use.
type Handler struct {
	cfg      Config
	template *template
	buffers  sync.Pool // *[]byte
	// afterDecision, when set by tests, runs after a slot was taken and
	// before the answer is written.
	afterDecision func(context.Context)
}

// NewHandler checks cfg and builds the handler.
func NewHandler(cfg Config) (*Handler, error) {
	t, err := newTemplate(cfg.Sidecar)
	if err != nil {
		return nil, err
	}
	if cfg.Semaphore == nil {
		return nil, errors.New("admission: a semaphore client is required")
	}
	switch cfg.NoQuorumPolicy {
	case "":
		cfg.NoQuorumPolicy = NoQuorumDeny
	case NoQuorumDeny, NoQuorumAllow:
	default:
		return nil, fmt.Errorf("admission: no-quorum policy %q must be %q or %q", cfg.NoQuorumPolicy, NoQuorumDeny, NoQuorumAllow)
	}
	if cfg.CA == nil {
		cfg.CA = func() []byte { return nil }
	}
	return &Handler{cfg: cfg, template: t}, nil
}

func (h *Handler) getBuffer() *[]byte {
	if b, ok := h.buffers.Get().(*[]byte); ok {
		return b
	}
	b := make([]byte, 0, 8<<10)
	return &b
}

func (h *Handler) putBuffer(b *[]byte) {
	if cap(*b) > pooledBufferLimit {
		return
	}
	*b = (*b)[:0]
	h.buffers.Put(b)
}

// ServeHTTP answers one AdmissionReview.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	began := time.Now()
	if r.Method != http.MethodPost {
		w.Header().Set("Allow", http.MethodPost)
		h.httpError(w, r, began, http.StatusMethodNotAllowed, reasonMethodNotAllowed,
			fmt.Sprintf("Method %s is not allowed on %s; the API server sends POST.", r.Method, r.URL.Path))
		return
	}
	if ct := r.Header.Get("Content-Type"); !isJSON(ct) {
		h.httpError(w, r, began, http.StatusUnsupportedMediaType, reasonUnsupportedMediaType,
			fmt.Sprintf("Content type %q is not supported; send application/json.", ct))
		return
	}
	if r.ContentLength > MaxBodyBytes {
		h.httpError(w, r, began, http.StatusRequestEntityTooLarge, reasonTooLarge,
			fmt.Sprintf("The request body of %d bytes exceeds the limit of %d bytes.", r.ContentLength, MaxBodyBytes))
		return
	}
	var d decision
	in := h.getBuffer()
	d.in = in
	// decide may give the buffer back early (see detach); otherwise it
	// goes back here.
	defer h.putInput(&d)
	body, err := readBody(r.Body, *in, r.ContentLength)
	*in = body[:0]
	if err != nil {
		if errors.Is(err, errTooLarge) {
			h.httpError(w, r, began, http.StatusRequestEntityTooLarge, reasonTooLarge,
				fmt.Sprintf("The request body exceeds the limit of %d bytes.", MaxBodyBytes))
			return
		}
		h.httpError(w, r, began, http.StatusBadRequest, reasonBadRequest, fmt.Sprintf("Reading the request body failed: %v.", err))
		return
	}

	var rv review
	if err := parseReview(body, &rv); err != nil {
		h.httpError(w, r, began, http.StatusBadRequest, reasonBadRequest, sentence(err))
		return
	}

	out := h.getBuffer()
	defer h.putBuffer(out)
	h.decide(r, &rv, (*out)[:0], &d)
	*out = d.response[:0]

	if d.lease != nil {
		if h.afterDecision != nil {
			h.afterDecision(r.Context())
		}
		// The slot counts only if the API server gets the answer: a
		// client that left (timeout, connection closed) never will.
		if err := r.Context().Err(); err != nil {
			h.undeliverable(&d, began, fmt.Errorf("the API server stopped waiting: %w", context.Cause(r.Context())))
			return
		}
	}
	hdr := w.Header()
	hdr["Content-Type"] = jsonContentType
	hdr["Content-Length"] = []string{strconv.Itoa(len(d.response))}
	w.WriteHeader(http.StatusOK)
	_, err = w.Write(d.response)
	if d.lease != nil {
		// Flushing now turns a broken connection into an error here, where
		// the slot can still be given back.
		if err == nil {
			// A writer that cannot flush (a wrapper without Unwrap) gives
			// no delivery signal; the slot is then kept, as for any answer
			// written without an error.
			if ferr := http.NewResponseController(w).Flush(); !errors.Is(ferr, http.ErrNotSupported) {
				err = ferr
			}
		}
		if err != nil {
			h.undeliverable(&d, began, fmt.Errorf("writing the answer: %w", err))
			return
		}
	}
	h.finish(&d, began)
}

var jsonContentType = []string{"application/json"}

// undeliverable gives back the slot of an answer that did not reach the API
// server: the pod was never created, so nothing would release it.
func (h *Handler) undeliverable(d *decision, began time.Time, cause error) {
	ctx, cancel := context.WithTimeout(context.Background(), releaseTimeout)
	defer cancel()
	released, err := h.cfg.Semaphore.Release(ctx, *d.lease)
	ev := h.cfg.Logger.Warn()
	if err != nil {
		ev = h.cfg.Logger.Error().AnErr("release_error", err)
	}
	ev.Str("uid", d.rv.uidText()).Bytes("namespace", d.rv.namespace).Str("pod", d.pod).
		Str("semaphore", d.lease.Name).Int("slot", d.lease.Slot).Str("holder_prefix", d.lease.Holder[:8]).
		Bool("released", released).AnErr("error", cause).Dur("duration", time.Since(began)).
		Msg("the answer was not delivered; the slot taken for it was given back")
	h.cfg.Metrics.observe(reasonNotDelivered, d.path, time.Since(began).Seconds())
}

func (h *Handler) finish(d *decision, began time.Time) {
	elapsed := time.Since(began)
	h.cfg.Metrics.observe(d.reason, d.path, elapsed.Seconds())
	var ev *zerolog.Event
	switch {
	case d.path == pathPassthrough && d.message == "":
		ev = h.cfg.Logger.Debug()
	case d.allowed:
		ev = h.cfg.Logger.Info()
	default:
		ev = h.cfg.Logger.Warn()
	}
	if ev == nil {
		return
	}
	decision := "allowed"
	if !d.allowed {
		decision = "denied"
	}
	ev = ev.Str("uid", d.rv.uidText()).Bytes("namespace", d.rv.namespace).Str("decision", decision).Str("reason", d.reason.String())
	if d.path != pathPassthrough {
		ev = ev.Str("pod", d.pod)
	}
	if d.semaphore != "" {
		ev = ev.Str("semaphore", d.semaphore)
	}
	if d.lease != nil {
		// The holder id is a capability: its prefix is enough to correlate.
		ev = ev.Int("slot", d.lease.Slot).Str("holder_prefix", d.lease.Holder[:8])
	}
	if d.message != "" {
		ev = ev.Str("message", d.message)
	}
	if d.dryRun {
		ev = ev.Bool("dry_run", true)
	}
	ev.Dur("duration", elapsed).Msg("admission decision")
}

func (h *Handler) httpError(w http.ResponseWriter, r *http.Request, began time.Time, status int, why reason, msg string) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(status)
	_, _ = io.WriteString(w, msg+"\n")
	h.cfg.Metrics.observe(why, pathPassthrough, time.Since(began).Seconds())
	h.cfg.Logger.Warn().Int("code", status).Str("reason", why.String()).Str("remote", r.RemoteAddr).
		Str("message", msg).Msg("admission request refused")
}

// decision is what decide answered, with what the log and metrics need.
type decision struct {
	response  []byte
	allowed   bool
	reason    reason
	path      path
	message   string
	rv        *review
	pod       string
	semaphore string
	dryRun    bool
	// lease is the slot taken for this answer; it must be given back if
	// the answer is not delivered.
	lease *semaphore.Lease
	// in is the request body's buffer until detach gives it back.
	in *[]byte
}

func (h *Handler) putInput(d *decision) {
	if d.in != nil {
		h.putBuffer(d.in)
		d.in = nil
	}
}

// detach copies what the answer and the log still need of the review (its
// uid and namespace; the pod view holds copies already) out of the request
// body and gives the body's buffer back, so that a review waiting for Redis
// does not hold a buffer as big as its pod: with 64 KiB pods and 32 reviews
// in flight that was 2 MiB of heap, doubled by the garbage collector.
func (h *Handler) detach(d *decision, rv *review) {
	if d.in == nil {
		return
	}
	kept := append(append(rv.kept[:0], rv.uid...), rv.namespace...)
	rv.uid, rv.namespace = kept[:len(rv.uid):len(rv.uid)], kept[len(rv.uid):]
	rv.group, rv.version, rv.kind, rv.subRes, rv.operation, rv.object = nil, nil, nil, nil, nil, nil
	h.putInput(d)
}

// decide answers a parsed review into d. out is the buffer for the response.
func (h *Handler) decide(r *http.Request, rv *review, out []byte, d *decision) {
	d.rv, d.dryRun = rv, rv.dryRun
	pass := func(why reason) {
		d.allowed, d.reason, d.path = true, why, pathPassthrough
		d.response = appendAllowed(out, rv.uid)
	}
	if string(rv.kind) != "Pod" || len(rv.group) != 0 || string(rv.version) != "v1" || len(rv.subRes) != 0 || rv.object == nil {
		pass(reasonNotPod)
		return
	}
	if string(rv.operation) != "CREATE" {
		pass(reasonNotCreate)
		return
	}
	if !rv.objectRead {
		// The object came before kind or operation: read it now.
		rv.opted, rv.podErr = readPod(rv.object, &rv.pod, &rv.gate)
		rv.objectRead = true
	}
	g := &rv.gate
	if g.optIn != "true" {
		if g.hasOptIn && g.optIn != "false" && g.optIn != "" {
			d.allowed, d.reason, d.path = true, reasonNotOptedIn, pathPassthrough
			d.message = fmt.Sprintf(
				"annotation %s is %q, not \"true\": the pod was admitted without the metrics proxy; only the exact value \"true\" opts in",
				AnnotationOptIn, g.optIn)
			d.response = appendResponse(out, rv.uid, &answer{allowed: true, warnings: []string{d.message}})
			return
		}
		pass(reasonNotOptedIn)
		return
	}
	if g.injected == "true" {
		pass(reasonAlreadyInjected)
		return
	}
	if !rv.opted {
		// Unreadable before the gate was known: not a pod.
		pass(reasonNotPod)
		return
	}

	d.path = pathInject
	pod := &rv.pod
	if rv.podErr != nil {
		h.deny(d, rv, out, &denial{code: 400, reason: reasonInvalid, message: fmt.Sprintf("the pod could not be decoded: %v", rv.podErr)})
		return
	}
	d.pod = pod.displayName()
	namespace := string(rv.namespace)
	if namespace == "" {
		h.deny(d, rv, out, &denial{code: 400, reason: reasonInvalid, message: "the admission request names no namespace for the pod"})
		return
	}
	p, den := planFor(pod, h.template.port)
	if den != nil {
		h.deny(d, rv, out, den)
		return
	}

	var env *leaseEnv
	warnings := p.warnings
	d.reason = reasonInjected
	if p.key != "" {
		d.path = pathSemaphore
		d.semaphore = leaseapi.SemaphoreName(namespace, p.key)
		env = &leaseEnv{namespace: namespace, key: p.key, size: p.size, ca: h.cfg.CA()}
		switch {
		case rv.dryRun:
			d.reason = reasonDryRun
			warnings = append(warnings, "dry run: no semaphore slot was taken")
		default:
			h.detach(d, rv)
			h.cfg.Logger.Debug().Str("uid", rv.uidText()).Str("semaphore", d.semaphore).Msg("taking a semaphore slot")
			ctx, cancel := context.WithTimeout(r.Context(), reviewBudget(r.URL.RawQuery))
			lease, err := h.acquire(ctx, d.semaphore, p, pod)
			cancel()
			var full *semaphore.FullError
			switch {
			case err == nil:
				env.lease = &lease
				d.lease = &lease
			case errors.Is(err, context.Canceled):
				// The API server stopped waiting; nobody reads this answer.
				h.deny(d, rv, out, &denial{code: 503, reason: reasonNotDelivered, message: fmt.Sprintf(
					"no slot of semaphore %q was taken: the API server stopped waiting", d.semaphore)})
				return
			case errors.As(err, &full):
				h.deny(d, rv, out, &denial{code: 429, reason: reasonFull, message: full.Error() +
					h.describeHolders(r.Context(), d.semaphore, p.size) + "; the pod will be created when a slot frees up"})
				return
			case h.cfg.NoQuorumPolicy == NoQuorumAllow:
				d.reason = reasonNoQuorumAllowed
				d.message = err.Error()
				warnings = append(warnings, fmt.Sprintf(
					"no slot of semaphore %q could be taken (%s): the pod was admitted without one because the webhook's no-quorum policy is allow; its sidecar takes a slot when Redis recovers",
					d.semaphore, trimSentence(err.Error())))
			default:
				// A split (racing acquirers, nodes that never agreed) is
				// contention rather than an outage: the retry will do.
				when := "Redis recovers"
				var nq *semaphore.NoQuorumError
				if errors.As(err, &nq) && nq.Split {
					when = "its controller retries"
				}
				h.deny(d, rv, out, &denial{code: 503, reason: reasonNoQuorum, message: fmt.Sprintf(
					"no slot of semaphore %q could be taken: %s; the pod will be created when %s",
					d.semaphore, trimSentence(err.Error()), when)})
				return
			}
		}
	}

	// The patch is encoded into the response at once; its buffer goes back
	// to the pool with the review, like the others.
	buf := h.getBuffer()
	patch := h.template.appendPatch((*buf)[:0], pod, p, env, h.cfg.Sidecar.Native)
	d.allowed = true
	d.response = appendResponse(out, rv.uid, &answer{allowed: true, patch: patch, warnings: warnings})
	*buf = patch[:0]
	h.putBuffer(buf)
}

func (h *Handler) deny(d *decision, rv *review, out []byte, den *denial) {
	d.allowed, d.reason, d.message = false, den.reason, den.message
	d.response = appendResponse(out, rv.uid, &answer{code: den.code, statusReason: statusReason(den.code), message: den.message})
}

// reviewBudget is the time the handler may spend on a review: the API
// server's timeout (from ?timeout=5s) less a margin for the answer's trip.
func reviewBudget(rawQuery string) time.Duration {
	timeout := defaultReviewTimeout
	for q := rawQuery; q != ""; {
		var part string
		part, q, _ = strings.Cut(q, "&")
		if v, ok := strings.CutPrefix(part, "timeout="); ok {
			if d, err := time.ParseDuration(v); err == nil && d > 0 {
				timeout = d
			}
		}
	}
	margin := min(timeout/5, maxTimeoutMargin)
	return timeout - margin
}

var errTooLarge = errors.New("request body too large")

// readBody reads the whole body into buf, growing it at most to
// MaxBodyBytes.
func readBody(r io.Reader, buf []byte, length int64) ([]byte, error) {
	if length > 0 && int64(cap(buf)) < length+1 {
		buf = make([]byte, 0, length+1)
	}
	for {
		if len(buf) == cap(buf) {
			if len(buf) > MaxBodyBytes {
				return buf, errTooLarge
			}
			grown := make([]byte, len(buf), min(2*cap(buf)+512, MaxBodyBytes+1))
			copy(grown, buf)
			buf = grown
		}
		n, err := r.Read(buf[len(buf):cap(buf)])
		buf = buf[:len(buf)+n]
		if len(buf) > MaxBodyBytes {
			return buf, errTooLarge
		}
		if err == io.EOF {
			return buf, nil
		}
		if err != nil {
			return buf, err
		}
	}
}

// isJSON accepts application/json with optional parameters, as the API
// server sends it.
func isJSON(ct string) bool {
	rest, ok := cutPrefixFold(ct, "application/json")
	if !ok {
		return false
	}
	rest = strings.TrimLeft(rest, " \t")
	return rest == "" || rest[0] == ';'
}

func cutPrefixFold(s, prefix string) (string, bool) {
	if len(s) < len(prefix) || !strings.EqualFold(s[:len(prefix)], prefix) {
		return s, false
	}
	return s[len(prefix):], true
}

// sentence makes an error a complete sentence for a user-facing message.
func sentence(err error) string {
	msg := err.Error()
	if msg == "" {
		return msg
	}
	msg = strings.ToUpper(msg[:1]) + msg[1:]
	if !strings.HasSuffix(msg, ".") {
		msg += "."
	}
	return msg
}

func trimSentence(s string) string { return strings.TrimSuffix(s, ".") }
