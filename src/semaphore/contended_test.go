package semaphore_test

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/kaidotio/prometheus-metrics-proxy-hook/src/redistest"
	"github.com/kaidotio/prometheus-metrics-proxy-hook/src/semaphore"
)

// TestContendedNearCapacity keeps as many acquisitions in flight as there
// are free slots, on a semaphore of 1000 (the load test's shared key):
// every acquisition that is refused must be refused because the semaphore
// is full at that moment, never because racing claims kept splitting. With
// 32 in flight for 30 free slots and every holder releasing at once, a
// refusal as full is possible but rare; a refusal as contended (the nodes
// never agreed) is a bug.
func TestContendedNearCapacity(t *testing.T) {
	cluster := redistest.StartT(t, 3)
	clients := []*semaphore.Client{clientFor(t, cluster, time.Second), clientFor(t, cluster, time.Second)}
	ctx := context.Background()
	const name, size = "ns/near-capacity", 1000
	for range 970 {
		mustAcquire(t, clients[0], name, size, 10*time.Minute)
	}
	var ok, full, split atomic.Int64
	var wg sync.WaitGroup
	end := time.Now().Add(3 * time.Second)
	for g := range 32 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c := clients[g%2]
			for time.Now().Before(end) {
				l, err := c.Acquire(ctx, name, size, time.Minute)
				switch {
				case err == nil:
					ok.Add(1)
					_, _ = c.Release(ctx, l)
				case errors.Is(err, semaphore.ErrFull):
					full.Add(1)
				case errors.Is(err, semaphore.ErrNoQuorum):
					split.Add(1)
				default:
					t.Error(err)
					return
				}
			}
		}()
	}
	wg.Wait()
	t.Logf("%d acquired, %d refused as full, %d refused as contended", ok.Load(), full.Load(), split.Load())
	if split.Load() > 0 {
		t.Fatalf("%d acquisitions refused because the nodes never agreed, with free slots", split.Load())
	}
	if ok.Load() == 0 {
		t.Fatal("nothing was acquired")
	}
}
