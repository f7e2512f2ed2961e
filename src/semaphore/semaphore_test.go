package semaphore_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/kaidotio/prometheus-metrics-proxy-hook/src/redistest"
	"github.com/kaidotio/prometheus-metrics-proxy-hook/src/semaphore"
)

// newClient starts real nodes and a client over them.
func newClient(t *testing.T, nodes int, timeout time.Duration) (*semaphore.Client, *redistest.Cluster) {
	t.Helper()
	cluster := redistest.StartT(t, nodes)
	c, err := semaphore.New(semaphore.Config{Addrs: cluster.Addrs(), Password: cluster.Password, NodeTimeout: timeout})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c, cluster
}

func TestAcquireUntilFull(t *testing.T) {
	c, _ := newClient(t, 3, time.Second)
	ctx := context.Background()
	seen := map[int]bool{}
	for i := range 3 {
		l, err := c.Acquire(ctx, "ns/full", 3, time.Minute)
		if err != nil {
			t.Fatalf("acquire %d: %v", i, err)
		}
		if seen[l.Slot] {
			t.Fatalf("slot %d handed out twice", l.Slot)
		}
		seen[l.Slot] = true
	}
	_, err := c.Acquire(ctx, "ns/full", 3, time.Minute)
	var full *semaphore.FullError
	if !errors.As(err, &full) || full.Held != 3 {
		t.Fatalf("fourth acquire: got %v, want a FullError with 3 held", err)
	}
	if got, want := err.Error(), `semaphore "ns/full" is full (3/3 slots held)`; got != want {
		t.Fatalf("message %q, want %q", got, want)
	}
}
