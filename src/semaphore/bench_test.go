package semaphore_test

import (
	"context"
	"errors"
	"runtime"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/kaidotio/prometheus-metrics-proxy-hook/src/semaphore"
	"github.com/kaidotio/prometheus-metrics-proxy-hook/src/testenv/redistest"
)

// BenchmarkAcquireRelease measures one Acquire and its Release on 3 local
// nodes: each is one parallel round trip.
func BenchmarkAcquireRelease(b *testing.B) {
	cluster := redistest.StartT(b, 3)
	c := clientFor(b, cluster, time.Second)
	ctx := context.Background()

	b.Run("uncontended", func(b *testing.B) {
		b.ReportAllocs()
		for i := 0; b.Loop(); i++ {
			l, err := c.Acquire(ctx, "bench/u"+strconv.Itoa(i%1024), 4, time.Minute)
			if err != nil {
				b.Fatal(err)
			}
			if _, err := c.Release(ctx, l); err != nil {
				b.Fatal(err)
			}
		}
	})
	// 32 concurrent clients on one key of size 1000, as a fanned-out Job
	// admitted by one webhook replica.
	b.Run("32 clients one key", func(b *testing.B) {
		b.ReportAllocs()
		var refused atomic.Int64
		b.SetParallelism(max(1, 32/runtime.GOMAXPROCS(0)))
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				l, err := c.Acquire(ctx, "bench/shared", 1000, time.Minute)
				if errors.Is(err, semaphore.ErrFull) || errors.Is(err, semaphore.ErrNoQuorum) {
					refused.Add(1)
					continue
				}
				if err != nil {
					b.Fatal(err)
				}
				if _, err := c.Release(ctx, l); err != nil {
					b.Fatal(err)
				}
			}
		})
		b.ReportMetric(float64(refused.Load()), "refused")
	})
}
