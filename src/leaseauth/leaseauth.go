// Package leaseauth tells which pod sent a lease API request: it verifies
// the pod's projected ServiceAccount token with a TokenReview
// (authentication.k8s.io/v1, audience the lease API) and reads the pod the
// token is bound to. Answers are cached briefly, keyed by the token's
// SHA-256, so that a sidecar renewing every few seconds costs the API
// server one review per cache period at most. Tokens never leave this
// package except in the TokenReview itself.
package leaseauth

import (
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	authnv1 "k8s.io/api/authentication/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
)

// Extra keys the API server sets on a token bound to a pod.
const (
	ExtraPodName = "authentication.kubernetes.io/pod-name"
	ExtraPodUID  = "authentication.kubernetes.io/pod-uid"
)

const serviceAccountPrefix = "system:serviceaccount:"

// Defaults of Config.
const (
	DefaultCacheTTL         = 30 * time.Second
	DefaultNegativeCacheTTL = 2 * time.Second
	DefaultMaxEntries       = 10000
	DefaultReviewTimeout    = 2 * time.Second
)

// Identity is the pod a valid token is bound to.
type Identity struct {
	Namespace      string
	ServiceAccount string
	PodName        string
	PodUID         string
}

// Causes of an *Error.
const (
	CauseMissing    = "missing-token"
	CauseInvalid    = "invalid-token" // bad signature, expired, wrong audience, revoked
	CauseNotPodTied = "not-pod-bound" // valid, but not a pod's ServiceAccount token
)

// Error is a token the lease API does not accept; Cause is one of the
// Cause* constants, Message a sentence for the caller.
type Error struct {
	Cause   string
	Message string
}

func (e *Error) Error() string { return e.Message }

// ReviewError is a TokenReview that could not be made (the API server is
// unreachable or refused the review): the token's validity is unknown.
type ReviewError struct{ Err error }

func (e *ReviewError) Error() string {
	return fmt.Sprintf("the token could not be verified with a TokenReview: %v", e.Err)
}
func (e *ReviewError) Unwrap() error { return e.Err }

// Config wires a Verifier.
type Config struct {
	Client kubernetes.Interface
	// Audience is the lease API's audience; tokens for any other are
	// refused.
	Audience string
	// CacheTTL bounds how long an accepted token is trusted without a new
	// review (never past the token's own expiry); zero means
	// DefaultCacheTTL, negative turns the cache off.
	CacheTTL time.Duration
	// NegativeCacheTTL is how long a refused token stays refused without a
	// new review; zero means DefaultNegativeCacheTTL.
	NegativeCacheTTL time.Duration
	// MaxEntries bounds the cache; zero means DefaultMaxEntries.
	MaxEntries int
	// ReviewTimeout bounds one TokenReview; zero means DefaultReviewTimeout.
	ReviewTimeout time.Duration
	// Now is the clock; nil means time.Now.
	Now     func() time.Time
	Metrics *Metrics
}

// Verifier verifies tokens; it is safe for concurrent use.
type Verifier struct {
	cfg     Config
	mu      sync.Mutex
	entries map[[sha256.Size]byte]entry
}

type entry struct {
	id      Identity
	err     *Error
	expires time.Time
}

// New builds a Verifier.
func New(cfg Config) (*Verifier, error) {
	if cfg.Client == nil {
		return nil, errors.New("leaseauth: a Kubernetes client is required")
	}
	if cfg.Audience == "" {
		return nil, errors.New("leaseauth: the lease API audience is required")
	}
	if cfg.CacheTTL == 0 {
		cfg.CacheTTL = DefaultCacheTTL
	}
	if cfg.NegativeCacheTTL == 0 {
		cfg.NegativeCacheTTL = DefaultNegativeCacheTTL
	}
	if cfg.MaxEntries <= 0 {
		cfg.MaxEntries = DefaultMaxEntries
	}
	if cfg.ReviewTimeout <= 0 {
		cfg.ReviewTimeout = DefaultReviewTimeout
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	return &Verifier{cfg: cfg, entries: map[[sha256.Size]byte]entry{}}, nil
}

// Verify returns the pod token is bound to. The error is an *Error for a
// token that is refused, a *ReviewError when the API server could not say.
func (v *Verifier) Verify(ctx context.Context, token string) (Identity, error) {
	if token == "" {
		return Identity{}, &Error{Cause: CauseMissing, Message: "the request carries no bearer token; the sidecar sends its pod's projected ServiceAccount token in the Authorization header"}
	}
	key := sha256.Sum256([]byte(token))
	now := v.cfg.Now()
	if e, ok := v.cached(key, now); ok {
		v.cfg.Metrics.cache("hit")
		if e.err != nil {
			return Identity{}, e.err
		}
		return e.id, nil
	}
	v.cfg.Metrics.cache("miss")
	id, err := v.review(ctx, token)
	var refused *Error
	switch {
	case err == nil:
		v.store(key, entry{id: id, expires: v.positiveExpiry(token, now)}, now)
	case errors.As(err, &refused):
		v.store(key, entry{err: refused, expires: now.Add(v.cfg.NegativeCacheTTL)}, now)
	}
	return id, err
}

func (v *Verifier) cached(key [sha256.Size]byte, now time.Time) (entry, bool) {
	if v.cfg.CacheTTL < 0 {
		return entry{}, false
	}
	v.mu.Lock()
	defer v.mu.Unlock()
	e, ok := v.entries[key]
	if !ok || !now.Before(e.expires) {
		return entry{}, false
	}
	return e, true
}

func (v *Verifier) store(key [sha256.Size]byte, e entry, now time.Time) {
	if v.cfg.CacheTTL < 0 || !now.Before(e.expires) {
		return
	}
	v.mu.Lock()
	defer v.mu.Unlock()
	if len(v.entries) >= v.cfg.MaxEntries {
		v.evict(now)
	}
	v.entries[key] = e
}

// evict drops expired entries, and when none had expired an arbitrary
// tenth of the cache: a flood of distinct tokens costs reviews, never
// memory.
func (v *Verifier) evict(now time.Time) {
	for k, e := range v.entries {
		if !now.Before(e.expires) {
			delete(v.entries, k)
		}
	}
	drop := len(v.entries) - v.cfg.MaxEntries*9/10
	for k := range v.entries {
		if drop <= 0 {
			break
		}
		delete(v.entries, k)
		drop--
	}
}

// positiveExpiry is when an accepted token must be reviewed again: after
// CacheTTL, and never after the token itself expires.
func (v *Verifier) positiveExpiry(token string, now time.Time) time.Time {
	until := now.Add(v.cfg.CacheTTL)
	if exp, ok := expiry(token); ok && exp.Before(until) {
		return exp
	}
	return until
}

// expiry reads the exp claim of a JWT without checking its signature: the
// token was just verified by the API server, and the claim only shortens
// how long the answer is cached.
func expiry(token string) (time.Time, bool) {
	parts := strings.Split(token, ".")
	if len(parts) != 3 {
		return time.Time{}, false
	}
	payload, err := base64.RawURLEncoding.DecodeString(parts[1])
	if err != nil {
		return time.Time{}, false
	}
	var claims struct {
		Exp int64 `json:"exp"`
	}
	if json.Unmarshal(payload, &claims) != nil || claims.Exp == 0 {
		return time.Time{}, false
	}
	return time.Unix(claims.Exp, 0), true
}

func (v *Verifier) review(ctx context.Context, token string) (Identity, error) {
	ctx, cancel := context.WithTimeout(ctx, v.cfg.ReviewTimeout)
	defer cancel()
	began := v.cfg.Now()
	tr, err := v.cfg.Client.AuthenticationV1().TokenReviews().Create(ctx, &authnv1.TokenReview{
		Spec: authnv1.TokenReviewSpec{Token: token, Audiences: []string{v.cfg.Audience}},
	}, metav1.CreateOptions{})
	v.cfg.Metrics.reviewed(err, v.cfg.Now().Sub(began))
	if err != nil {
		return Identity{}, &ReviewError{Err: err}
	}
	return v.identity(tr.Status)
}

func (v *Verifier) identity(st authnv1.TokenReviewStatus) (Identity, error) {
	if !st.Authenticated {
		msg := "the API server does not accept the bearer token for the audience " + v.cfg.Audience
		if st.Error != "" {
			msg += " (" + st.Error + ")"
		}
		return Identity{}, &Error{Cause: CauseInvalid, Message: msg + "; it may be expired, for another audience, or of a deleted pod"}
	}
	if !contains(st.Audiences, v.cfg.Audience) {
		return Identity{}, &Error{Cause: CauseInvalid, Message: fmt.Sprintf("the bearer token is not meant for the audience %s", v.cfg.Audience)}
	}
	ns, sa, ok := strings.Cut(strings.TrimPrefix(st.User.Username, serviceAccountPrefix), ":")
	name, uid := first(st.User.Extra[ExtraPodName]), first(st.User.Extra[ExtraPodUID])
	if !strings.HasPrefix(st.User.Username, serviceAccountPrefix) || !ok || name == "" || uid == "" {
		return Identity{}, &Error{Cause: CauseNotPodTied, Message: fmt.Sprintf("the bearer token of %q is not bound to a pod; the lease API accepts only the projected ServiceAccount token the webhook injects into the sidecar", st.User.Username)}
	}
	return Identity{Namespace: ns, ServiceAccount: sa, PodName: name, PodUID: uid}, nil
}

func first(vs authnv1.ExtraValue) string {
	if len(vs) == 0 {
		return ""
	}
	return vs[0]
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}
