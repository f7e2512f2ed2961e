// Package leasekeeper keeps a pod's semaphore lease alive through the
// webhook's lease API while the pod runs, takes a slot again when the lease
// was lost, and gives the slot back on termination. It also holds the pod's
// start gate: Started is closed once the lease API confirmed that the pod
// holds a slot, which is what the sidecar's startup probe waits for.
package leasekeeper

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"
	"time"

	"github.com/rs/zerolog"

	"github.com/kaidotio/prometheus-metrics-proxy-hook/src/leaseapi"
)

// API is the part of the lease API the keeper calls; *leaseapi.Client
// implements it.
type API interface {
	Renew(ctx context.Context, l leaseapi.Lease) (time.Duration, error)
	Acquire(ctx context.Context, l leaseapi.Lease, size int) (leaseapi.Lease, time.Duration, error)
	Release(ctx context.Context, l leaseapi.Lease) (bool, error)
}

const (
	// defaultInterval paces attempts while no TTL is known yet (the first
	// renewal has not succeeded) and no interval was configured.
	defaultInterval = 10 * time.Second
	// minBackoff and maxBackoff bound the wait between retries of a
	// transient failure; maxBackoff is further capped by the interval so
	// that a short TTL still gets several tries before it runs out.
	minBackoff = 100 * time.Millisecond
	maxBackoff = 5 * time.Second
)

// Config configures a Keeper.
type Config struct {
	API API
	// Lease is the lease the webhook took at admission (the startup
	// lease); its holder id is also used to take a slot again.
	Lease leaseapi.Lease
	// Size is the semaphore's size, needed to take a slot again.
	Size int
	// WithoutSlot is set when the pod was admitted without a slot (no Redis
	// quorum at admission, and the webhook's policy allows that): Run takes
	// one first, with Lease's holder id.
	WithoutSlot bool
	// Interval is the time between renewals; zero means a third of the TTL
	// the lease API answers.
	Interval time.Duration
	// Gated is set when the app starts only once Started is closed (a
	// native sidecar's startup probe holds it back): until then a pod
	// without a slot is waiting, not running over the limit.
	Gated   bool
	Logger  zerolog.Logger
	Metrics *Metrics
}

// Keeper renews one lease. Run it once; call Release after Run returned.
type Keeper struct {
	api      API
	size     int
	interval time.Duration
	gated    bool
	log      zerolog.Logger
	metrics  *Metrics
	started  chan struct{}

	mu    sync.Mutex
	lease leaseapi.Lease
	held  bool
	ttl   time.Duration
}

// New checks cfg and builds a Keeper.
func New(cfg Config) (*Keeper, error) {
	if cfg.API == nil {
		return nil, errors.New("leasekeeper: no lease API client given")
	}
	if err := cfg.Lease.Validate(); err != nil {
		return nil, fmt.Errorf("leasekeeper: %w", err)
	}
	if cfg.Size < 1 || cfg.Lease.Slot >= cfg.Size {
		return nil, fmt.Errorf("leasekeeper: slot %d does not fit a semaphore of size %d", cfg.Lease.Slot, cfg.Size)
	}
	if cfg.Interval < 0 {
		return nil, fmt.Errorf("leasekeeper: renew interval %s must not be negative", cfg.Interval)
	}
	return &Keeper{
		api:      cfg.API,
		size:     cfg.Size,
		interval: cfg.Interval,
		gated:    cfg.Gated,
		started:  make(chan struct{}),
		log: cfg.Logger.With().Str("namespace", cfg.Lease.Namespace).Str("key", cfg.Lease.Key).
			Int("size", cfg.Size).Logger(),
		metrics: cfg.Metrics,
		lease:   cfg.Lease,
		held:    !cfg.WithoutSlot,
	}, nil
}

// Started is closed once the lease API confirmed a slot for this pod: the
// first successful renewal of the admission-time lease, or the first slot
// taken again when that lease had lapsed. It stays closed afterwards; a
// lease lost later does not stop an app that already runs.
func (k *Keeper) Started() <-chan struct{} { return k.started }

func (k *Keeper) hasStarted() bool {
	select {
	case <-k.started:
		return true
	default:
		return false
	}
}

// confirm records that the pod holds a slot, opening the start gate.
func (k *Keeper) confirm(slot int, ttl time.Duration) {
	if k.hasStarted() {
		return
	}
	close(k.started)
	k.log.Info().Int("slot", slot).Dur("ttl", ttl).Msg("The pod holds a slot of its semaphore: the start gate is open.")
}

// runsWithoutSlot reports whether the app runs while the pod holds no slot:
// after the start gate opened, or always when the app is not gated.
func (k *Keeper) runsWithoutSlot() bool { return !k.gated || k.hasStarted() }

// Lease is the lease now held; held is false while the pod runs without a
// slot.
func (k *Keeper) Lease() (l leaseapi.Lease, held bool) {
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.lease, k.held
}

// Run renews the lease until ctx is done: at once (which turns the long
// startup lease into a running pod's lease), then every interval with
// jitter. Transient failures are retried with backoff; a lost lease is
// reported once, then Run takes a slot again with the same holder id, every
// interval until it gets one.
func (k *Keeper) Run(ctx context.Context) {
	timer := time.NewTimer(0)
	defer timer.Stop()
	var (
		failures    int  // consecutive transient failures
		renewedOnce bool // a renewal succeeded since the lease was taken
		lastOK      = time.Now()
	)
	if _, held := k.Lease(); !held {
		k.log.Warn().Msg("The pod was admitted without a semaphore slot (the webhook had no Redis quorum); taking one now.")
		k.metrics.setOverLimit(k.runsWithoutSlot())
	}
	for {
		select {
		case <-ctx.Done():
			return
		case <-timer.C:
		}
		lease, held := k.Lease()
		var wait time.Duration
		if held {
			ttl, err := k.api.Renew(ctx, lease)
			switch {
			case ctx.Err() != nil:
				return
			case err == nil:
				k.setTTL(ttl)
				k.metrics.observe("renew", "ok")
				ev := k.log.Debug()
				if !renewedOnce || failures > 0 {
					ev = k.log.Info()
				}
				ev.Int("slot", lease.Slot).Dur("ttl", ttl).Int("failed_attempts", failures).
					Msg("Renewed the semaphore lease.")
				renewedOnce, failures, lastOK = true, 0, time.Now()
				k.confirm(lease.Slot, ttl)
				wait = jitter(k.intervalFor(ttl))
			case errors.Is(err, leaseapi.ErrNotFound), errors.Is(err, leaseapi.ErrConflict):
				k.metrics.observe("renew", "lost")
				k.lost(lease, err, renewedOnce)
				failures, renewedOnce = 0, false
				wait = 0
			case leaseapi.Retryable(err):
				k.metrics.observe("renew", "retry")
				failures++
				wait = k.backoff(failures)
				k.log.Warn().Err(err).Int("slot", lease.Slot).Int("attempt", failures).
					Dur("since_last_renewal", time.Since(lastOK)).Dur("retry_in", wait).
					Msg("Renewing the semaphore lease failed; retrying.")
			default:
				k.metrics.observe("renew", "error")
				wait = jitter(k.intervalFor(0))
				k.log.Error().Err(err).Int("slot", lease.Slot).Dur("retry_in", wait).
					Msg("The lease API refused to renew the lease; this is not expected to pass on its own, retrying at the renewal interval.")
			}
		} else {
			got, ttl, err := k.api.Acquire(ctx, lease, k.size)
			if ctx.Err() != nil {
				return
			}
			wait = k.acquired(got, ttl, err, &failures)
			if err == nil {
				renewedOnce, lastOK = true, time.Now()
			}
		}
		timer.Reset(wait)
	}
}

// acquired handles the answer to taking a slot again and returns the wait
// before the next call. While the semaphore is full the keeper waits and
// retries with backoff, never giving up: a gated pod waits at its start gate
// as long as that takes, like a pod waiting in a queue.
func (k *Keeper) acquired(got leaseapi.Lease, ttl time.Duration, err error, failures *int) time.Duration {
	switch {
	case err == nil:
		k.metrics.observe("acquire", "ok")
		k.metrics.setOverLimit(false)
		k.mu.Lock()
		k.lease, k.held, k.ttl = got, true, ttl
		k.mu.Unlock()
		msg := "Took a slot of the semaphore; the pod is within the limit again."
		if !k.hasStarted() {
			msg = "Took a slot of the semaphore."
		}
		k.log.Warn().Int("slot", got.Slot).Dur("ttl", ttl).Int("failed_attempts", *failures).Msg(msg)
		*failures = 0
		k.confirm(got.Slot, ttl)
		return jitter(k.intervalFor(ttl))
	case errors.Is(err, leaseapi.ErrFull):
		k.metrics.observe("acquire", "full")
		over := k.runsWithoutSlot()
		defer k.metrics.setOverLimit(over)
		*failures++
		wait := k.backoff(*failures)
		ev := k.log.Debug()
		if *failures == 1 {
			ev = k.log.Warn()
			if over {
				ev = k.log.Error()
			}
		}
		msg := "No slot of the semaphore is free: the app is held back (the sidecar's startup probe fails) until one frees up; retrying."
		if over {
			msg = "No slot of the semaphore is free: this pod runs over the limit (gauge prometheus_metrics_proxy_hook_sidecar_over_limit is 1) until one frees up; retrying."
		}
		ev.Err(err).Int("attempt", *failures).Dur("retry_in", wait).Msg(msg)
		return wait
	case leaseapi.Retryable(err):
		k.metrics.observe("acquire", "retry")
		k.metrics.setOverLimit(k.runsWithoutSlot())
		*failures++
		wait := k.backoff(*failures)
		k.log.Warn().Err(err).Int("attempt", *failures).Dur("retry_in", wait).
			Msg("Taking a slot of the semaphore failed; the pod holds no slot until it succeeds. Retrying.")
		return wait
	default:
		k.metrics.observe("acquire", "error")
		k.metrics.setOverLimit(k.runsWithoutSlot())
		*failures++
		wait := jitter(k.intervalFor(0))
		k.log.Error().Err(err).Int("attempt", *failures).Dur("retry_in", wait).
			Msg("The lease API refused to give a slot; the pod holds no slot. Retrying at the renewal interval.")
		return wait
	}
}

// lost reports, once per loss, that the lease is gone and what that means.
func (k *Keeper) lost(l leaseapi.Lease, err error, renewedOnce bool) {
	k.mu.Lock()
	k.held = false
	k.mu.Unlock()
	// The gauge follows the log event, so that whoever sees it finds the
	// reason logged.
	defer k.metrics.setOverLimit(k.runsWithoutSlot())
	how := "it expired or was released"
	if errors.Is(err, leaseapi.ErrConflict) {
		how = "it expired, and another holder owns the slot now"
	}
	when := "The semaphore lease was lost (renewals did not reach a Redis quorum within its TTL, or Redis lost it)"
	if !renewedOnce {
		when = "The startup lease was gone at the first renewal (the pod started after its semaphore-startup-timeout: long Pending, slow image pull)"
	}
	k.log.Error().Err(err).Int("slot", l.Slot).
		Msg(when + ": " + how + "; taking a slot of the semaphore again with the same holder id.")
}

func (k *Keeper) setTTL(ttl time.Duration) {
	k.mu.Lock()
	k.ttl = ttl
	k.mu.Unlock()
}

// intervalFor is the time between renewals: the configured one, else a
// third of the TTL (of the last answer when ttl is zero), so that two
// renewals can fail before the lease runs out.
func (k *Keeper) intervalFor(ttl time.Duration) time.Duration {
	if k.interval > 0 {
		return k.interval
	}
	if ttl <= 0 {
		k.mu.Lock()
		ttl = k.ttl
		k.mu.Unlock()
	}
	if ttl <= 0 {
		return defaultInterval
	}
	return ttl / 3
}

// backoff is the wait before retry number n (from 1): doubling from
// minBackoff, capped by maxBackoff and by the interval, with jitter.
func (k *Keeper) backoff(n int) time.Duration {
	limit := min(maxBackoff, k.intervalFor(0))
	d := minBackoff
	for i := 1; i < n && d < limit; i++ {
		d *= 2
	}
	d = min(d, limit)
	// Half fixed, half random: retries of many sidecars after a webhook
	// outage do not arrive together.
	return d/2 + rand.N(d/2+1)
}

// jitter spreads renewals over 80-100% of d, never later than d, so that
// sidecars started together do not renew together.
func jitter(d time.Duration) time.Duration {
	return d - rand.N(d/5+1)
}

// Release gives the slot back, retrying transient failures with backoff
// until ctx is done. Call it after Run returned. Without a slot (the pod ran
// over the limit) there is nothing to release.
func (k *Keeper) Release(ctx context.Context) error {
	lease, held := k.Lease()
	if !held {
		k.log.Info().Msg("No slot is held (the pod ran over the limit), so there is nothing to release.")
		return nil
	}
	began := time.Now()
	var lastErr error
	for attempt := 1; ; attempt++ {
		released, err := k.api.Release(ctx, lease)
		if err == nil {
			k.metrics.observe("release", "ok")
			if released {
				k.log.Info().Int("slot", lease.Slot).Int("attempts", attempt).Dur("duration", time.Since(began)).
					Msg("Released the semaphore slot.")
			} else {
				k.log.Info().Int("slot", lease.Slot).Int("attempts", attempt).Dur("duration", time.Since(began)).
					Msg("The semaphore slot was no longer held by this pod (it had expired or was released already); nothing to release.")
			}
			return nil
		}
		lastErr = err
		if ctx.Err() != nil {
			break
		}
		if !leaseapi.Retryable(err) {
			k.metrics.observe("release", "error")
			return fmt.Errorf("releasing slot %d of semaphore %q: %w", lease.Slot, lease.Name(), err)
		}
		k.metrics.observe("release", "retry")
		wait := k.backoff(attempt)
		k.log.Warn().Err(err).Int("slot", lease.Slot).Int("attempt", attempt).Dur("retry_in", wait).
			Msg("Releasing the semaphore slot failed; retrying until the termination deadline.")
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
		case <-t.C:
		}
		if ctx.Err() != nil {
			break
		}
	}
	k.metrics.observe("release", "error")
	return fmt.Errorf("releasing slot %d of semaphore %q: gave up at the termination deadline, the slot frees itself when its TTL runs out: %w",
		lease.Slot, lease.Name(), lastErr)
}
