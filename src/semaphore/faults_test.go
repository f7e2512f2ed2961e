package semaphore_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/kaidotio/prometheus-metrics-proxy-hook/src/semaphore"
)

func TestOneNodeDown(t *testing.T) {
	c, cluster := newClient(t, 3, time.Second)
	ctx := context.Background()
	cluster.Nodes[1].Kill()
	var leases []semaphore.Lease
	for range 4 {
		leases = append(leases, mustAcquire(t, c, "ns/one-down", 4, time.Minute))
	}
	_, err := c.Acquire(ctx, "ns/one-down", 4, time.Minute)
	wantFull(t, err, "ns/one-down", 4, 4)
	for _, l := range leases {
		if _, err := c.Renew(ctx, l, time.Minute); err != nil {
			t.Fatalf("renew with one node down: %v", err)
		}
		if _, err := c.Release(ctx, l); err != nil {
			t.Fatalf("release with one node down: %v", err)
		}
	}
	mustAcquire(t, c, "ns/one-down", 4, time.Minute)
}

func TestTwoNodesDownIsNoQuorum(t *testing.T) {
	const timeout = 300 * time.Millisecond
	c, cluster := newClient(t, 3, timeout)
	ctx := context.Background()
	l := mustAcquire(t, c, "ns/two-down", 2, time.Minute)
	cluster.Nodes[0].Kill()
	cluster.Nodes[2].Kill()
	checks := []struct {
		name string
		run  func() error
	}{
		{"acquire", func() error { _, err := c.Acquire(ctx, "ns/two-down", 2, time.Minute); return err }},
		{"renew", func() error { _, err := c.Renew(ctx, l, time.Minute); return err }},
		{"release", func() error { _, err := c.Release(ctx, l); return err }},
	}
	for _, check := range checks {
		t.Run(check.name, func(t *testing.T) {
			began := time.Now()
			err := check.run()
			took := time.Since(began)
			var nq *semaphore.NoQuorumError
			if !errors.As(err, &nq) || !errors.Is(err, semaphore.ErrNoQuorum) {
				t.Fatalf("got %v, want a NoQuorumError", err)
			}
			msg := err.Error()
			for _, want := range []string{
				fmt.Sprintf("no Redis quorum for %s: 2 of 3 nodes failed and 2 must answer", check.name),
				cluster.Nodes[0].Addr(), cluster.Nodes[2].Addr(),
			} {
				if !strings.Contains(msg, want) {
					t.Errorf("message %q does not contain %q", msg, want)
				}
			}
			if strings.Contains(msg, cluster.Nodes[1].Addr()) || strings.Contains(msg, cluster.Password) {
				t.Errorf("message %q names the healthy node or the password", msg)
			}
			// Dead nodes refuse connections at once; the bound is the
			// per-node timeout, not a performance target.
			if took > 2*timeout {
				t.Errorf("answered after %s, want within the per-node timeout of %s", took, timeout)
			}
		})
	}
}

func TestHungNode(t *testing.T) {
	const timeout = 300 * time.Millisecond
	c, cluster := newClient(t, 3, timeout)
	ctx := context.Background()
	// Warm the pools so that the hung node's connections exist already:
	// the request is written and the read is what hangs.
	mustAcquire(t, c, "ns/warm", 1, time.Minute)
	if err := cluster.Nodes[0].Pause(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cluster.Nodes[0].Resume() })
	for i := range 3 {
		began := time.Now()
		l, err := c.Acquire(ctx, "ns/hung", 3, time.Minute)
		if err != nil {
			t.Fatalf("acquire %d with a hung node: %v", i, err)
		}
		if took := time.Since(began); took > 2*timeout {
			t.Errorf("acquire %d took %s; the two live nodes decide it, the hung one must not hold it up beyond the %s timeout", i, took, timeout)
		}
		if _, err := c.Renew(ctx, l, time.Minute); err != nil {
			t.Fatalf("renew with a hung node: %v", err)
		}
	}
	_, err := c.Acquire(ctx, "ns/hung", 3, time.Minute)
	wantFull(t, err, "ns/hung", 3, 3)
	if err := cluster.Nodes[0].Resume(); err != nil {
		t.Fatal(err)
	}
	// The node comes back with late claims of the attempts it missed;
	// they were undone or expire, and the semaphore stays full.
	_, err = c.Acquire(ctx, "ns/hung", 3, time.Minute)
	wantFull(t, err, "ns/hung", 3, 3)
}

func TestNodeRestartedFromAppendOnlyFile(t *testing.T) {
	c, cluster := newClient(t, 3, time.Second)
	ctx := context.Background()
	const name = "ns/aof"
	var leases []semaphore.Lease
	for range 3 {
		leases = append(leases, mustAcquire(t, c, name, 3, time.Minute))
	}
	// A crash: SIGKILL, then a restart that reloads the append-only file.
	if err := cluster.Nodes[0].Restart(); err != nil {
		t.Fatal(err)
	}
	cluster.Nodes[1].Kill()
	_, err := c.Acquire(ctx, name, 3, time.Minute)
	wantFull(t, err, name, 3, 3)
	if err := cluster.Nodes[1].Start(); err != nil {
		t.Fatal(err)
	}
	st, err := c.Inspect(ctx, name, 3)
	if err != nil {
		t.Fatal(err)
	}
	// Each lease is owned on a quorum. Not necessarily on every node: a
	// lease is decided by the first quorum to answer, and the last node
	// may have given that slot to the next acquisition's late claim.
	for _, l := range leases {
		if got := st.Slots[l.Slot].Holder; got != l.Holder {
			t.Fatalf("slot %d is owned by %q after the restarts, want %q (nodes hold %q)", l.Slot, got, l.Holder, st.Slots[l.Slot].Holders)
		}
	}
}

// TestNodeLostItsData shows what a node restarted without persistence does
// (the reason for appendfsync always, or a delayed restart): it comes back
// empty, the other two still hold a quorum, and the next renewal re-creates
// the slot there, so a second failure does not lose it.
func TestNodeLostItsData(t *testing.T) {
	c, cluster := newClient(t, 3, time.Second)
	ctx := context.Background()
	const name = "ns/wiped"
	l := mustAcquire(t, c, name, 1, time.Minute)
	cluster.Nodes[2].Kill()
	if err := cluster.Nodes[2].Wipe(); err != nil {
		t.Fatal(err)
	}
	if err := cluster.Nodes[2].Start(); err != nil {
		t.Fatal(err)
	}
	_, err := c.Acquire(ctx, name, 1, time.Minute)
	wantFull(t, err, name, 1, 1)
	// Renew as the holder does, periodically: the refused acquirer's claim
	// on the wiped node is undone in the background, and the renewal after
	// that re-creates the slot there.
	waitFor(t, 10*time.Second, "a renewal to re-create the slot on the wiped node", func() bool {
		if _, err := c.Renew(ctx, l, time.Minute); err != nil {
			t.Fatal(err)
		}
		st, err := c.Inspect(ctx, name, 1)
		return err == nil && st.Slots[0].Holders[2] == l.Holder
	})
	cluster.Nodes[0].Kill()
	_, err = c.Acquire(ctx, name, 1, time.Minute)
	wantFull(t, err, name, 1, 1)
}

func TestWrongPassword(t *testing.T) {
	_, cluster := newClient(t, 3, time.Second)
	c, err := semaphore.New(semaphore.Config{Addrs: cluster.Addrs(), Password: "not-the-password", NodeTimeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	failures := c.Ping(context.Background())
	if len(failures) != 3 {
		t.Fatalf("ping with a wrong password: %v, want 3 failures", failures)
	}
	for _, f := range failures {
		if !errors.Is(f, semaphore.ErrAuth) && f.Reason() != "auth" {
			t.Errorf("%v: reason %q, want auth", f, f.Reason())
		}
	}
	_, err = c.Acquire(context.Background(), "ns/x", 1, time.Minute)
	if !errors.Is(err, semaphore.ErrAuth) || strings.Contains(err.Error(), "not-the-password") || strings.Contains(err.Error(), cluster.Password) {
		t.Fatalf("acquire with a wrong password: %v; want an auth error that does not show any password", err)
	}
}

// TestOneRoundTrip counts the script calls an uncontended Acquire costs on
// each node: exactly one EVALSHA, no EVAL once the script is cached.
func TestOneRoundTrip(t *testing.T) {
	c, cluster := newClient(t, 3, time.Second)
	ctx := context.Background()
	mustAcquire(t, c, "ns/warm-up", 1, time.Minute) // loads the script on every node
	before := make([]int64, 3)
	for i, n := range cluster.Nodes {
		var err error
		if before[i], err = n.CommandCalls(ctx, "evalsha"); err != nil {
			t.Fatal(err)
		}
	}
	const acquisitions = 50
	for i := range acquisitions {
		mustAcquire(t, c, fmt.Sprintf("ns/round-trip-%d", i), 10, time.Minute)
	}
	for i, n := range cluster.Nodes {
		// The background clean-up of a won acquisition sends nothing when
		// every node agreed; wait for it anyway so that it cannot add late.
		after, err := n.CommandCalls(ctx, "evalsha")
		if err != nil {
			t.Fatal(err)
		}
		if got := after - before[i]; got != acquisitions {
			t.Errorf("node %d: %d EVALSHA for %d acquisitions, want exactly one each", i, got, acquisitions)
		}
		if evals, _ := n.CommandCalls(ctx, "eval"); evals != 1 {
			t.Errorf("node %d: %d EVAL, want only the first one that cached the script", i, evals)
		}
	}
}

// TestScriptCacheFlushed: a node restarted forgets its scripts; the client
// falls back to EVAL once and carries on.
func TestScriptCacheFlushed(t *testing.T) {
	c, cluster := newClient(t, 3, time.Second)
	ctx := context.Background()
	mustAcquire(t, c, "ns/flush", 5, time.Minute)
	for _, n := range cluster.Nodes {
		if _, err := n.Do(ctx, "SCRIPT", "FLUSH"); err != nil {
			t.Fatal(err)
		}
	}
	mustAcquire(t, c, "ns/flush", 5, time.Minute)
}

func TestCancelledContext(t *testing.T) {
	c, cluster := newClient(t, 3, time.Second)
	for _, n := range cluster.Nodes {
		if err := n.Pause(); err != nil {
			t.Fatal(err)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	_, err := c.Acquire(ctx, "ns/cancel", 1, time.Minute)
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("got %v, want the context's deadline error", err)
	}
	for _, n := range cluster.Nodes {
		if err := n.Resume(); err != nil {
			t.Fatal(err)
		}
	}
	// The late claims of the cancelled attempt are undone in the background.
	waitFor(t, 10*time.Second, "the cancelled attempt's claims to be undone", func() bool {
		st, err := c.Inspect(context.Background(), "ns/cancel", 1)
		return err == nil && st.Slots[0].Holders[0] == "" && st.Slots[0].Holders[1] == "" && st.Slots[0].Holders[2] == ""
	})
}
