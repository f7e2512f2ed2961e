package admission

import (
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"
)

// MaxBodyBytes bounds a review; the API server limits objects to about
// 3 MiB, and a review can carry an object and its old version.
const MaxBodyBytes = 7 << 20

// Review timeouts. The API server sends its own as ?timeout=; the handler
// answers a margin before it, so that the answer arrives while the API
// server still waits for it.
const (
	defaultReviewTimeout = 10 * time.Second
	maxTimeoutMargin     = time.Second
)

// pooledBodyLimit keeps the buffers of rare huge reviews out of the pool
// and out of the process' memory.
const pooledBodyLimit = 256 << 10

// readReview checks the request's method, content type and size and reads
// its body into a pooled buffer, which the caller gives back with putBody.
// When it answers false it has written the HTTP error.
func (h *Handler) readReview(w http.ResponseWriter, r *http.Request, began time.Time) (*[]byte, bool) {
	if r.Method != http.MethodPost {
		w.Header().Set("Allow", http.MethodPost)
		h.httpError(w, r, began, http.StatusMethodNotAllowed, reasonMethodNotAllowed,
			fmt.Sprintf("Method %s is not allowed on %s; the API server sends POST.", r.Method, r.URL.Path))
		return nil, false
	}
	if ct := r.Header.Get("Content-Type"); !isJSON(ct) {
		h.httpError(w, r, began, http.StatusUnsupportedMediaType, reasonUnsupportedMediaType,
			fmt.Sprintf("Content type %q is not supported; send application/json.", ct))
		return nil, false
	}
	if r.ContentLength > MaxBodyBytes {
		h.httpError(w, r, began, http.StatusRequestEntityTooLarge, reasonTooLarge,
			fmt.Sprintf("The request body of %d bytes exceeds the limit of %d bytes.", r.ContentLength, MaxBodyBytes))
		return nil, false
	}
	buf := h.getBody()
	body, err := readBody(r.Body, *buf, r.ContentLength)
	*buf = body
	switch {
	case errors.Is(err, errTooLarge):
		h.putBody(buf)
		h.httpError(w, r, began, http.StatusRequestEntityTooLarge, reasonTooLarge,
			fmt.Sprintf("The request body exceeds the limit of %d bytes.", MaxBodyBytes))
		return nil, false
	case err != nil:
		h.putBody(buf)
		h.httpError(w, r, began, http.StatusBadRequest, reasonBadRequest, fmt.Sprintf("Reading the request body failed: %v.", err))
		return nil, false
	}
	return buf, true
}

func (h *Handler) getBody() *[]byte {
	if b, ok := h.bodies.Get().(*[]byte); ok {
		return b
	}
	b := make([]byte, 0, 8<<10)
	return &b
}

func (h *Handler) putBody(b *[]byte) {
	if cap(*b) > pooledBodyLimit {
		return
	}
	*b = (*b)[:0]
	h.bodies.Put(b)
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

func trimSentence(s string) string { return strings.TrimSuffix(s, ".") }
