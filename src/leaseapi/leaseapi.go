// Package leaseapi is the wire contract of the HTTP API through which
// sidecars keep and give back their pod's semaphore slot (POST
// /v1/leases/renew, /release and /acquire on the webhook's TLS port), and the
// client sidecars call it with. The server side is package leaseserver; this
// package links no Redis client, so the sidecar stays small. The holder id a
// sidecar presents is its capability: every operation compares it with the
// slot's value on the Redis nodes.
package leaseapi

import (
	"errors"
	"fmt"
	"regexp"
)

// MaxSize is the largest semaphore size, and so slots are 0..MaxSize-1; it
// equals semaphore.MaxSize (a test in leaseserver keeps them equal).
const MaxSize = 1024

// Paths served by Handler.
const (
	RenewPath   = "/v1/leases/renew"
	ReleasePath = "/v1/leases/release"
	AcquirePath = "/v1/leases/acquire"
)

// Lease names a held slot: everything a sidecar knows about its lease.
type Lease struct {
	Namespace string `json:"namespace"`
	Key       string `json:"key"`
	Slot      int    `json:"slot"`
	Holder    string `json:"holder"`
}

// SemaphoreName is the semaphore a pod's lease belongs to: semaphores are
// scoped to the pod's namespace.
func SemaphoreName(namespace, key string) string { return namespace + "/" + key }

// Name is the lease's semaphore name.
func (l Lease) Name() string { return SemaphoreName(l.Namespace, l.Key) }

// AcquireRequest asks for a slot again, with the caller's holder id; Slot is
// ignored.
type AcquireRequest struct {
	Lease
	Size int `json:"size"`
}

// LeaseResponse answers renew and acquire: the lease (acquire may give
// another slot) and how long it now lives.
type LeaseResponse struct {
	Lease
	TTLSeconds float64 `json:"ttlSeconds"`
}

// ReleaseResponse answers release. Released is false when this holder held
// nothing any more (a replayed release, or an expired lease).
type ReleaseResponse struct {
	Released bool `json:"released"`
}

// ErrorResponse is the body of every non-2xx answer.
type ErrorResponse struct {
	Error  string `json:"error"`
	Reason string `json:"reason"`
}

// Reasons in ErrorResponse.
const (
	ReasonBadRequest = "BadRequest"
	ReasonNotFound   = "NotFound"
	ReasonConflict   = "Conflict"
	ReasonFull       = "Full"
	ReasonNoQuorum   = "NoQuorum"
)

var (
	namespaceRE = regexp.MustCompile(`^[a-z0-9]([-a-z0-9]*[a-z0-9])?$`)
	keyRE       = regexp.MustCompile(`^[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$`)
)

// ValidateKey checks a semaphore key: the syntax of a label value, 1 to 63
// characters. The admission webhook applies the same rule to the
// semaphore-key annotation.
func ValidateKey(key string) error {
	if len(key) == 0 || len(key) > 63 || !keyRE.MatchString(key) {
		return errors.New("must be 1 to 63 characters of letters, digits, '-', '_' or '.', starting and ending with a letter or digit")
	}
	return nil
}

// Validate checks every field and names the first bad one.
func (l Lease) Validate() error {
	if len(l.Namespace) == 0 || len(l.Namespace) > 63 || !namespaceRE.MatchString(l.Namespace) {
		return fmt.Errorf("the namespace %q must be a DNS label (1 to 63 lowercase letters, digits or '-')", l.Namespace)
	}
	if err := ValidateKey(l.Key); err != nil {
		return fmt.Errorf("the key %q %w", l.Key, err)
	}
	if l.Slot < 0 || l.Slot >= MaxSize {
		return fmt.Errorf("the slot %d must be from 0 to %d", l.Slot, MaxSize-1)
	}
	if !ValidHolder(l.Holder) {
		return fmt.Errorf("the holder %q must be 32 lowercase hex digits", truncate(l.Holder, 40))
	}
	return nil
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "..."
}

// ValidHolder reports whether s has the shape of a holder id: 32 lowercase
// hex digits.
func ValidHolder(s string) bool {
	if len(s) != 32 {
		return false
	}
	for i := range len(s) {
		if ch := s[i]; (ch < '0' || ch > '9') && (ch < 'a' || ch > 'f') {
			return false
		}
	}
	return true
}

// Validate checks an acquire request's lease and size.
func (r AcquireRequest) Validate() error {
	if err := r.Lease.Validate(); err != nil {
		return err
	}
	if r.Size < 1 || r.Size > MaxSize {
		return fmt.Errorf("the size %d must be from 1 to %d", r.Size, MaxSize)
	}
	return nil
}

// Sentence makes an error a message for users: capitalised, ending with a
// period. The webhook's admission answers use it too.
func Sentence(err error) string {
	s := err.Error()
	if s == "" {
		return s
	}
	if s[0] >= 'a' && s[0] <= 'z' {
		s = string(s[0]-'a'+'A') + s[1:]
	}
	if last := s[len(s)-1]; last != '.' && last != '?' && last != '!' {
		s += "."
	}
	return s
}

// Failure is the ErrorResponse for err, with its message made a sentence.
func Failure(reason string, err error) ErrorResponse {
	return ErrorResponse{Error: Sentence(err), Reason: reason}
}
