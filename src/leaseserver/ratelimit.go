package leaseserver

import (
	"sync"
	"time"

	"golang.org/x/time/rate"
)

// Defaults of the per-pod rate limit. A sidecar renews every TTL/3 and
// retries a failed call after a second or more; a burst covers a restart
// that re-acquires and renews at once.
const (
	DefaultPodRate  = rate.Limit(2)
	DefaultPodBurst = 20
	// maxLimitedPods bounds the limiter map; idle pods are forgotten first.
	maxLimitedPods = 50000
	limiterIdle    = 2 * time.Minute
)

// podLimits is a token bucket per pod uid. A nil *podLimits allows all.
type podLimits struct {
	every rate.Limit
	burst int
	now   func() time.Time

	mu   sync.Mutex
	pods map[string]*podLimit
}

type podLimit struct {
	bucket *rate.Limiter
	seen   time.Time
}

func newPodLimits(every rate.Limit, burst int, now func() time.Time) *podLimits {
	if every < 0 {
		return nil
	}
	if every == 0 {
		every = DefaultPodRate
	}
	if burst <= 0 {
		burst = DefaultPodBurst
	}
	return &podLimits{every: every, burst: burst, now: now, pods: map[string]*podLimit{}}
}

func (l *podLimits) allow(uid string) bool {
	if l == nil {
		return true
	}
	now := l.now()
	l.mu.Lock()
	defer l.mu.Unlock()
	p, ok := l.pods[uid]
	if !ok {
		if len(l.pods) >= maxLimitedPods {
			l.forget(now)
		}
		p = &podLimit{bucket: rate.NewLimiter(l.every, l.burst)}
		l.pods[uid] = p
	}
	p.seen = now
	return p.bucket.AllowN(now, 1)
}

// forget drops the buckets of pods idle for a while (a full bucket and a
// new one are the same), and, when every pod is busy, an arbitrary tenth.
func (l *podLimits) forget(now time.Time) {
	for uid, p := range l.pods {
		if now.Sub(p.seen) > limiterIdle {
			delete(l.pods, uid)
		}
	}
	drop := len(l.pods) - maxLimitedPods*9/10
	for uid := range l.pods {
		if drop <= 0 {
			return
		}
		delete(l.pods, uid)
		drop--
	}
}
