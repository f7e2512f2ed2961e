package leaseserver

import (
	"context"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
)

// maxCachedPods bounds PodCache; a full cache is emptied of expired pods,
// then of an arbitrary tenth.
const maxCachedPods = 50000

// PodCache keeps the pods another PodGetter found for a short time, so
// that a sidecar renewing every few seconds costs the API server one GET
// per TTL, not one per call. Errors are not kept.
type PodCache struct {
	next PodGetter
	ttl  time.Duration
	now  func() time.Time

	mu   sync.Mutex
	pods map[string]cachedPod
}

type cachedPod struct {
	pod     *corev1.Pod
	expires time.Time
}

// NewPodCache caches next's pods for ttl.
func NewPodCache(next PodGetter, ttl time.Duration) *PodCache {
	return &PodCache{next: next, ttl: ttl, now: time.Now, pods: map[string]cachedPod{}}
}

// Pod implements PodGetter.
func (c *PodCache) Pod(ctx context.Context, namespace, name string) (*corev1.Pod, error) {
	key := namespace + "/" + name
	now := c.now()
	c.mu.Lock()
	p, ok := c.pods[key]
	c.mu.Unlock()
	if ok && now.Before(p.expires) {
		return p.pod, nil
	}
	pod, err := c.next.Pod(ctx, namespace, name)
	if err != nil {
		return nil, err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.pods) >= maxCachedPods {
		c.evict(now)
	}
	c.pods[key] = cachedPod{pod: pod, expires: now.Add(c.ttl)}
	return pod, nil
}

func (c *PodCache) evict(now time.Time) {
	for k, p := range c.pods {
		if !now.Before(p.expires) {
			delete(c.pods, k)
		}
	}
	drop := len(c.pods) - maxCachedPods*9/10
	for k := range c.pods {
		if drop <= 0 {
			return
		}
		delete(c.pods, k)
		drop--
	}
}
