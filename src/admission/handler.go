// Package admission is the webhook's /mutate handler: it decodes
// AdmissionReview v1 requests for pods, takes a semaphore slot for the pods
// that name one and answers with an RFC 6902 patch that injects the metrics
// proxy sidecar.
package admission

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"sync"
	"time"

	"github.com/rs/zerolog"

	"github.com/kaidotio/prometheus-metrics-proxy-hook/src/leaseapi"
	"github.com/kaidotio/prometheus-metrics-proxy-hook/src/semaphore"
)

// NoQuorumPolicy is the answer when the semaphore's Redis nodes have no
// quorum.
type NoQuorumPolicy string

const (
	// NoQuorumDeny denies the pod; its controller retries.
	NoQuorumDeny NoQuorumPolicy = "deny"
	// NoQuorumAllow admits the pod without a slot, with a warning.
	NoQuorumAllow NoQuorumPolicy = "allow"
)

// releaseTimeout bounds giving back a slot whose answer was not delivered;
// the slot expires with its startup timeout otherwise.
const releaseTimeout = 2 * time.Second

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
	cfg       Config
	injection *injection
	bodies    sync.Pool // *[]byte
	// afterDecision, when set by tests, runs after a slot was taken and
	// before the answer is written.
	afterDecision func(context.Context)
}

// NewHandler checks cfg and builds the handler.
func NewHandler(cfg Config) (*Handler, error) {
	in, err := newInjection(cfg.Sidecar)
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
	return &Handler{cfg: cfg, injection: in}, nil
}

// ServeHTTP answers one AdmissionReview.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	began := time.Now()
	body, ok := h.readReview(w, r, began)
	if !ok {
		return
	}
	req, err := decodeReview(*body)
	// The decoded review holds copies: the body's buffer goes back before
	// a slot is waited for.
	h.putBody(body)
	if err != nil {
		h.httpError(w, r, began, http.StatusBadRequest, reasonBadRequest, leaseapi.Sentence(err))
		return
	}
	d, err := h.decide(r, req)
	var out []byte
	if err == nil {
		out, err = encodeReview(d.uid, &d.answer)
	}
	if err != nil {
		h.undeliverable(d, began, err)
		http.Error(w, "The answer could not be encoded.", http.StatusInternalServerError)
		return
	}
	if err := h.deliver(w, r, d, out); err != nil {
		h.undeliverable(d, began, err)
		return
	}
	h.logDecision(d, began)
}

var jsonContentType = []string{"application/json"}

// deliver writes the answer. With a slot taken for it, it reports whether
// the API server can have received it: the slot counts only then.
func (h *Handler) deliver(w http.ResponseWriter, r *http.Request, d *decision, out []byte) error {
	if d.lease != nil {
		if h.afterDecision != nil {
			h.afterDecision(r.Context())
		}
		// A client that left (timeout, connection closed) never reads it.
		if err := r.Context().Err(); err != nil {
			return fmt.Errorf("the API server stopped waiting: %w", context.Cause(r.Context()))
		}
	}
	hdr := w.Header()
	hdr["Content-Type"] = jsonContentType
	hdr["Content-Length"] = []string{strconv.Itoa(len(out))}
	w.WriteHeader(http.StatusOK)
	_, err := w.Write(out)
	if d.lease == nil {
		return nil
	}
	if err != nil {
		return fmt.Errorf("writing the answer: %w", err)
	}
	// Flushing now turns a broken connection into an error here, where
	// the slot can still be given back. A writer that cannot flush (a
	// wrapper without Unwrap) gives no delivery signal; the slot is then
	// kept, as for any answer written without an error.
	if err := http.NewResponseController(w).Flush(); err != nil && !errors.Is(err, http.ErrNotSupported) {
		return fmt.Errorf("writing the answer: %w", err)
	}
	return nil
}

// undeliverable gives back the slot of an answer that did not reach the API
// server: the pod was never created, so nothing would release it.
func (h *Handler) undeliverable(d *decision, began time.Time, cause error) {
	h.cfg.Metrics.observe(reasonNotDelivered, d.route, time.Since(began).Seconds())
	if d.lease == nil {
		h.cfg.Logger.Error().Str("uid", string(d.uid)).Str("namespace", d.namespace).Str("pod", d.pod).
			AnErr("error", cause).Msg("the answer could not be delivered")
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), releaseTimeout)
	defer cancel()
	released, err := h.cfg.Semaphore.Release(ctx, *d.lease)
	ev := h.cfg.Logger.Warn()
	if err != nil {
		ev = h.cfg.Logger.Error().AnErr("release_error", err)
	}
	ev.Str("uid", string(d.uid)).Str("namespace", d.namespace).Str("pod", d.pod).
		Str("semaphore", d.lease.Name).Int("slot", d.lease.Slot).Str("holder_prefix", d.lease.Holder[:8]).
		Bool("released", released).AnErr("error", cause).Dur("duration", time.Since(began)).
		Msg("the answer was not delivered; the slot taken for it was given back")
}
