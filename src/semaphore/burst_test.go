package semaphore_test

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/kaidotio/prometheus-metrics-proxy-hook/src/semaphore"
	"github.com/kaidotio/prometheus-metrics-proxy-hook/src/testenv/redistest"
)

// TestBurstFillsTheSemaphore is a Job fanning out: more pods than slots are
// admitted at the same instant through two webhook replicas. Exactly size of
// them must get a slot: fewer means a pod was refused while a slot was free,
// which racing Redlock acquirers are prone to (they split a free slot between
// them); the arbitrated retry is what prevents it.
func TestBurstFillsTheSemaphore(t *testing.T) {
	cluster := redistest.StartT(t, 3)
	clients := []*semaphore.Client{clientFor(t, cluster, time.Second), clientFor(t, cluster, time.Second)}
	for _, tc := range []struct{ size, burst int }{{1, 32}, {5, 20}, {10, 64}, {100, 150}} {
		t.Run(fmt.Sprintf("%d pods for %d slots", tc.burst, tc.size), func(t *testing.T) {
			for trial := range 10 {
				name := fmt.Sprintf("ns/burst-%d-%d", tc.size, trial)
				var admitted, refusedFull, refusedSplit atomic.Int64
				var wg sync.WaitGroup
				start := make(chan struct{})
				for g := range tc.burst {
					wg.Add(1)
					go func() {
						defer wg.Done()
						<-start
						_, err := clients[g%2].Acquire(context.Background(), name, tc.size, time.Minute)
						switch {
						case err == nil:
							admitted.Add(1)
						case errors.Is(err, semaphore.ErrFull):
							refusedFull.Add(1)
						case errors.Is(err, semaphore.ErrNoQuorum):
							refusedSplit.Add(1)
						default:
							t.Error(err)
						}
					}()
				}
				close(start)
				wg.Wait()
				if admitted.Load() != int64(tc.size) {
					t.Fatalf("trial %d: %d admitted for %d slots (%d refused as full, %d as contended)",
						trial, admitted.Load(), tc.size, refusedFull.Load(), refusedSplit.Load())
				}
			}
		})
	}
}
