package semaphore_test

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/kaidotio/prometheus-metrics-proxy-hook/src/semaphore"
	"github.com/kaidotio/prometheus-metrics-proxy-hook/src/testenv/redistest"
)

// newClient starts real nodes and a client over them. A generous node
// timeout keeps a busy test machine from turning slowness into failures;
// tests about timeouts pass their own.
func newClient(t *testing.T, nodes int, timeout time.Duration) (*semaphore.Client, *redistest.Cluster) {
	t.Helper()
	cluster := redistest.StartT(t, nodes)
	return clientFor(t, cluster, timeout), cluster
}

func clientFor(t testing.TB, cluster *redistest.Cluster, timeout time.Duration) *semaphore.Client {
	t.Helper()
	c, err := semaphore.New(semaphore.Config{Addrs: cluster.Addrs(), Password: cluster.Password, NodeTimeout: timeout})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c
}

func mustAcquire(t *testing.T, c *semaphore.Client, name string, size int, ttl time.Duration) semaphore.Lease {
	t.Helper()
	l, err := c.Acquire(context.Background(), name, size, ttl)
	if err != nil {
		t.Fatalf("acquire %s/%d: %v", name, size, err)
	}
	return l
}

func wantFull(t *testing.T, err error, name string, held, size int) {
	t.Helper()
	var full *semaphore.FullError
	if !errors.As(err, &full) || !errors.Is(err, semaphore.ErrFull) {
		t.Fatalf("got %v, want a FullError", err)
	}
	want := fmt.Sprintf("semaphore %q is full (%d/%d slots held)", name, held, size)
	if err.Error() != want {
		t.Fatalf("message %q, want %q", err.Error(), want)
	}
}

// waitFor polls cond until it holds or the deadline passes.
func waitFor(t *testing.T, within time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(within)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", within, what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestNew(t *testing.T) {
	cases := []struct {
		name string
		cfg  semaphore.Config
		err  string
	}{
		{"no nodes", semaphore.Config{}, "at least one Redis address is required"},
		{"even", semaphore.Config{Addrs: []string{"a:1", "b:1"}}, "2 Redis addresses given; use an odd number"},
		{"duplicate", semaphore.Config{Addrs: []string{"a:1", "b:1", "a:1"}}, `"a:1" is listed twice`},
		{"empty", semaphore.Config{Addrs: []string{"a:1", "", "c:1"}}, "a Redis address is empty"},
		{"negative timeout", semaphore.Config{Addrs: []string{"a:1"}, NodeTimeout: -1}, "must be positive"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := semaphore.New(tc.cfg)
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Fatalf("got %v, want an error containing %q", err, tc.err)
			}
		})
	}
	c, err := semaphore.New(semaphore.Config{Addrs: []string{"a:1", "b:1", "c:1", "d:1", "e:1"}})
	if err != nil || c.Quorum() != 3 {
		t.Fatalf("5 nodes: quorum %d err %v, want 3", c.Quorum(), err)
	}
}

func TestBadArguments(t *testing.T) {
	c, _ := newClient(t, 1, time.Second)
	ctx := context.Background()
	cases := []struct {
		name string
		run  func() error
		err  string
	}{
		{"empty name", func() error { _, err := c.Acquire(ctx, "", 1, time.Minute); return err }, "name is empty"},
		{"size 0", func() error { _, err := c.Acquire(ctx, "x", 0, time.Minute); return err }, "size 0 must be from 1 to 1024"},
		{"size 1025", func() error { _, err := c.Acquire(ctx, "x", 1025, time.Minute); return err }, "size 1025 must be from 1 to 1024"},
		{"short ttl", func() error { _, err := c.Acquire(ctx, "x", 1, time.Millisecond); return err }, "TTL 1ms must be at least 100ms"},
		{"bad holder", func() error { _, err := c.AcquireAs(ctx, "x", 1, time.Minute, "nope"); return err }, `holder id "nope" must be 32 lowercase hex digits`},
		{"renew bad holder", func() error {
			_, err := c.Renew(ctx, semaphore.Lease{Name: "x", Holder: "ZZ"}, time.Minute)
			return err
		}, "must be 32 lowercase hex digits"},
		{"release bad slot", func() error {
			_, err := c.Release(ctx, semaphore.Lease{Name: "x", Slot: -1, Holder: strings.Repeat("a", 32)})
			return err
		}, "slot -1"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if err := tc.run(); err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Fatalf("got %v, want an error containing %q", err, tc.err)
			}
		})
	}
}

func TestAcquireUntilFullAndRelease(t *testing.T) {
	c, _ := newClient(t, 3, time.Second)
	ctx := context.Background()
	const name = "ns/full"
	var leases []semaphore.Lease
	seen := map[int]bool{}
	for range 3 {
		l := mustAcquire(t, c, name, 3, time.Minute)
		if seen[l.Slot] || l.Slot < 0 || l.Slot >= 3 {
			t.Fatalf("slot %d handed out twice or out of range", l.Slot)
		}
		if !semaphore.ValidHolderID(l.Holder) || !l.Valid(time.Now()) || l.Name != name {
			t.Fatalf("lease %+v is not a valid fresh lease", l)
		}
		seen[l.Slot] = true
		leases = append(leases, l)
	}
	_, err := c.Acquire(ctx, name, 3, time.Minute)
	wantFull(t, err, name, 3, 3)

	st, err := c.Inspect(ctx, name, 3)
	if err != nil || st.Held() != 3 {
		t.Fatalf("inspect: held %d err %v, want 3", st.Held(), err)
	}
	for _, s := range st.Slots {
		// A lease is decided by the first quorum to answer; the last node
		// may still be taking its claim, so only a quorum is certain here.
		on := 0
		for i, h := range s.Holders {
			if h == s.Holder && s.TTLs[i] > 50*time.Second {
				on++
			}
		}
		if s.Holder == "" || on < st.Quorum {
			t.Fatalf("slot %d: holders %q TTLs %v; want one holder on a quorum with the fresh TTL", s.Slot, s.Holders, s.TTLs)
		}
	}

	released, err := c.Release(ctx, leases[1])
	if err != nil || !released {
		t.Fatalf("release: %v %v", released, err)
	}
	released, err = c.Release(ctx, leases[1])
	if err != nil || released {
		t.Fatalf("second release: released=%v err=%v; want an idempotent no-op", released, err)
	}
	l := mustAcquire(t, c, name, 3, time.Minute)
	if l.Slot != leases[1].Slot {
		t.Fatalf("got slot %d, want the freed slot %d", l.Slot, leases[1].Slot)
	}
}

func TestAcquireAsIsIdempotent(t *testing.T) {
	c, _ := newClient(t, 3, time.Second)
	ctx := context.Background()
	holder := semaphore.NewHolderID()
	first, err := c.AcquireAs(ctx, "ns/idem", 5, time.Minute, holder)
	if err != nil {
		t.Fatal(err)
	}
	for range 5 {
		again, err := c.AcquireAs(ctx, "ns/idem", 5, time.Minute, holder)
		if err != nil || again.Slot != first.Slot {
			t.Fatalf("retry: slot %d err %v, want slot %d again", again.Slot, err, first.Slot)
		}
	}
	st, err := c.Inspect(ctx, "ns/idem", 5)
	if err != nil || st.Held() != 1 {
		t.Fatalf("held %d err %v, want exactly 1 slot for one holder", st.Held(), err)
	}
}

func TestRenew(t *testing.T) {
	c, _ := newClient(t, 3, time.Second)
	ctx := context.Background()
	l := mustAcquire(t, c, "ns/renew", 1, 5*time.Minute)
	renewed, err := c.Renew(ctx, l, 2*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if renewed.Slot != l.Slot || renewed.Holder != l.Holder || !renewed.Deadline.Before(l.Deadline) {
		t.Fatalf("renewed %+v from %+v: want the same slot and holder with the new, shorter TTL", renewed, l)
	}
	// Renew returns once a quorum renewed; the last node follows.
	waitFor(t, 5*time.Second, "every node to hold the renewed 2s TTL", func() bool {
		st, err := c.Inspect(ctx, "ns/renew", 1)
		if err != nil {
			t.Fatal(err)
		}
		for _, ttl := range st.Slots[0].TTLs {
			if ttl > 2*time.Second || ttl <= 0 {
				return false
			}
		}
		return true
	})
	// Renewing again and again keeps the slot well past its TTL.
	end := time.Now().Add(5 * time.Second)
	for time.Now().Before(end) {
		if renewed, err = c.Renew(ctx, renewed, 2*time.Second); err != nil {
			t.Fatalf("renewal: %v", err)
		}
		time.Sleep(250 * time.Millisecond) // the holder's work between renewals, not synchronisation
	}
	_, err = c.Acquire(ctx, "ns/renew", 1, time.Minute)
	wantFull(t, err, "ns/renew", 1, 1)
}

func TestExpiredLeaseFreesItsSlotAndIsNotRenewed(t *testing.T) {
	c, _ := newClient(t, 3, time.Second)
	ctx := context.Background()
	l := mustAcquire(t, c, "ns/expire", 1, 200*time.Millisecond)
	waitFor(t, 5*time.Second, "the slot to expire on every node", func() bool {
		st, err := c.Inspect(ctx, "ns/expire", 1)
		return err == nil && st.Slots[0].Holders[0] == "" && st.Slots[0].Holders[1] == "" && st.Slots[0].Holders[2] == ""
	})
	_, err := c.Renew(ctx, l, time.Minute)
	var lost *semaphore.LeaseLostError
	if !errors.As(err, &lost) || lost.Reason != semaphore.LostExpired {
		t.Fatalf("renewing an expired lease: %v, want LeaseLostError(expired)", err)
	}
	// Without a local deadline (as the lease API sees it) the nodes decide:
	// the key is gone, so the lease is not found, and nothing is re-created.
	remote := l
	remote.Deadline = time.Time{}
	_, err = c.Renew(ctx, remote, time.Minute)
	if !errors.As(err, &lost) || lost.Reason != semaphore.LostNotFound {
		t.Fatalf("renewing a lease gone from the nodes: %v, want LeaseLostError(not found)", err)
	}
	st, err := c.Inspect(ctx, "ns/expire", 1)
	if err != nil || st.Held() != 0 {
		t.Fatalf("after a failed renewal: held %d err %v; an expired lease must not be resurrected", st.Held(), err)
	}
	other := mustAcquire(t, c, "ns/expire", 1, time.Minute)
	_, err = c.Renew(ctx, remote, time.Minute)
	if !errors.As(err, &lost) || lost.Reason != semaphore.LostHeldByOther {
		t.Fatalf("renewing a slot another holder took: %v, want LeaseLostError(held by another holder)", err)
	}
	if _, err := c.Renew(ctx, other, time.Minute); err != nil {
		t.Fatalf("the new holder's renewal: %v", err)
	}
}

// TestSizeChange documents what happens when the size annotation changes
// between pods: slots are indexes, so raising the size adds slots at once,
// and lowering it admits nobody new until fewer than the new size of the low
// slots are held; holders of the higher slots keep them until they release.
func TestSizeChange(t *testing.T) {
	c, _ := newClient(t, 3, time.Second)
	ctx := context.Background()
	const name = "ns/resize"
	for range 3 {
		mustAcquire(t, c, name, 3, time.Minute)
	}
	a := mustAcquire(t, c, name, 5, time.Minute)
	b := mustAcquire(t, c, name, 5, time.Minute)
	if a.Slot < 3 || b.Slot < 3 {
		t.Fatalf("raising 3 to 5 gave slots %d and %d, want 3 and 4", a.Slot, b.Slot)
	}
	_, err := c.Acquire(ctx, name, 5, time.Minute)
	wantFull(t, err, name, 5, 5)

	// Back to 3: the holders of slots 3 and 4 releasing frees nothing below 3.
	_, err = c.Acquire(ctx, name, 3, time.Minute)
	wantFull(t, err, name, 3, 3)
	for _, l := range []semaphore.Lease{a, b} {
		if _, err := c.Release(ctx, l); err != nil {
			t.Fatal(err)
		}
	}
	_, err = c.Acquire(ctx, name, 3, time.Minute)
	wantFull(t, err, name, 3, 3)
}

// TestPerNodeCountingCounterExample seeds the state that fools a semaphore
// which counts holders per node: slot 0 held by h1 on A and B, slot 1 held by
// h2 on B and C. A and C each hold one key only, so each has a slot free, yet
// both slots are owned on a quorum. A third acquirer must be refused, and its
// claims on A and C undone.
func TestPerNodeCountingCounterExample(t *testing.T) {
	c, cluster := newClient(t, 3, time.Second)
	ctx := context.Background()
	const name = "ns/counter"
	h1, h2 := strings.Repeat("1", 32), strings.Repeat("2", 32)
	seed := []struct {
		node   int
		slot   int
		holder string
	}{{0, 0, h1}, {1, 0, h1}, {1, 1, h2}, {2, 1, h2}}
	for _, s := range seed {
		if _, err := cluster.Nodes[s.node].Do(ctx, "SET", fmt.Sprintf("pmph:{%s}:%d", name, s.slot), s.holder, "PX", 60000); err != nil {
			t.Fatal(err)
		}
	}
	for range 20 { // every rotation start, several times
		_, err := c.Acquire(ctx, name, 2, time.Minute)
		wantFull(t, err, name, 2, 2)
	}
	st, err := c.Inspect(ctx, name, 2)
	if err != nil {
		t.Fatal(err)
	}
	want := [][]string{{h1, h1, ""}, {"", h2, h2}}
	for slot, s := range st.Slots {
		for node, h := range s.Holders {
			if h != want[slot][node] {
				t.Fatalf("slot %d on node %d holds %q, want %q: a refused acquirer's claim was left behind", slot, node, h, want[slot][node])
			}
		}
	}
}

// TestNeverMoreHoldersThanSize runs two independent clients (like two webhook
// replicas) with many goroutines acquiring, holding and releasing, and checks
// at every acquisition that no more than size holders exist and no slot has
// two holders. A cycle is one attempt: refused ones count too, since a
// refusal that should have been a grant is as much a bug to look for here.
func TestNeverMoreHoldersThanSize(t *testing.T) {
	cluster := redistest.StartT(t, 3)
	clients := []*semaphore.Client{clientFor(t, cluster, time.Second), clientFor(t, cluster, time.Second)}
	cycles := int64(4000)
	if testing.Short() {
		cycles = 1000
	}
	for _, size := range []int{1, 2, 3, 7} {
		t.Run(fmt.Sprintf("size %d", size), func(t *testing.T) {
			name := fmt.Sprintf("ns/safety-%d", size)
			var (
				holders, maxSeen, acquired, denied, split, remaining atomic.Int64
				owners                                               sync.Map // slot -> holder
				wg                                                   sync.WaitGroup
				failures                                             = make(chan string, 64)
			)
			remaining.Store(cycles)
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
			defer cancel()
			for g := range 64 {
				wg.Add(1)
				go func() {
					defer wg.Done()
					c := clients[g%2]
					for remaining.Add(-1) >= 0 && ctx.Err() == nil {
						l, err := c.Acquire(ctx, name, size, 10*time.Second)
						if err != nil {
							if ctx.Err() != nil {
								// The run's time is up on a slow machine: fewer cycles, not a failure.
								return
							}
							if !errors.Is(err, semaphore.ErrFull) && !errors.Is(err, semaphore.ErrNoQuorum) {
								failures <- err.Error()
								return
							}
							denied.Add(1)
							if errors.Is(err, semaphore.ErrNoQuorum) {
								split.Add(1)
							}
							// Back off like a controller retrying a refused pod.
							time.Sleep(time.Duration(rand.IntN(2000)) * time.Microsecond)
							continue
						}
						acquired.Add(1)
						n := holders.Add(1)
						for m := maxSeen.Load(); n > m && !maxSeen.CompareAndSwap(m, n); m = maxSeen.Load() {
						}
						if prev, loaded := owners.LoadOrStore(l.Slot, l.Holder); loaded {
							failures <- fmt.Sprintf("slot %d given to %s while %s holds it", l.Slot, l.Holder, prev)
						}
						// Hold the slot a little, as a pod would, so that holders overlap.
						time.Sleep(time.Duration(rand.IntN(2000)) * time.Microsecond)
						owners.Delete(l.Slot)
						holders.Add(-1)
						if _, err := c.Release(context.WithoutCancel(ctx), l); err != nil {
							failures <- err.Error()
							return
						}
					}
				}()
			}
			wg.Wait()
			close(failures)
			for f := range failures {
				t.Error(f)
			}
			t.Logf("size %d: %d acquired, %d refused (%d of them after the nodes kept disagreeing), at most %d holders at once",
				size, acquired.Load(), denied.Load(), split.Load(), maxSeen.Load())
			if m := maxSeen.Load(); m > int64(size) {
				t.Fatalf("%d holders at once for size %d", m, size)
			}
			if want := int64(min(size, 2)); maxSeen.Load() < want {
				// The checker only means something if holders overlapped.
				t.Fatalf("at most %d holders at once for size %d: the holders never overlapped", maxSeen.Load(), size)
			}
		})
	}
}
