package admission

import (
	"io"
	"net/http"
	"time"

	"github.com/rs/zerolog"
)

// logDecision counts and logs a delivered decision: one event per review,
// at debug level for the reviews passed without a word.
func (h *Handler) logDecision(d *decision, began time.Time) {
	elapsed := time.Since(began)
	h.cfg.Metrics.observe(d.reason, d.route, elapsed.Seconds())
	var ev *zerolog.Event
	switch {
	case d.route == routePassthrough && d.message == "":
		ev = h.cfg.Logger.Debug()
	case d.allowed():
		ev = h.cfg.Logger.Info()
	default:
		ev = h.cfg.Logger.Warn()
	}
	if ev == nil {
		return
	}
	outcome := "allowed"
	if !d.allowed() {
		outcome = "denied"
	}
	ev = ev.Str("uid", string(d.uid)).Str("namespace", d.namespace).Str("decision", outcome).Str("reason", d.reason.String())
	if d.route != routePassthrough {
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

// httpError refuses a request that is not a review the handler can read.
func (h *Handler) httpError(w http.ResponseWriter, r *http.Request, began time.Time, status int, why reason, msg string) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(status)
	_, _ = io.WriteString(w, msg+"\n")
	h.cfg.Metrics.observe(why, routePassthrough, time.Since(began).Seconds())
	h.cfg.Logger.Warn().Int("code", status).Str("reason", why.String()).Str("remote", r.RemoteAddr).
		Str("message", msg).Msg("admission request refused")
}
