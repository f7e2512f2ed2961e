package semaphore_test

// Reproductions of faults found by the fault-injection tests
// (e2e/reliability), reduced to one client and three nodes.

import (
	"context"
	"errors"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/kaidotio/prometheus-metrics-proxy-hook/src/semaphore"
	"github.com/kaidotio/prometheus-metrics-proxy-hook/src/testenv/redistest"
)

// With node 0 down, the first attempt splits (node 1 answers full, node 2
// claims a slot), and the arbitrated retry asks node 0 twice: once as the
// arbiter candidate and once for fingerprints. Its one failure must count
// once: one failed node out of three leaves a quorum.
func TestNoQuorumCountsEachFailedNodeOnce(t *testing.T) {
	c, cluster := newClient(t, 3, time.Second)
	ctx := context.Background()
	const name = "ns/counted-once"
	a, b := strings.Repeat("a", 32), strings.Repeat("b", 32)
	seed := []struct {
		node       int
		key, value string
	}{
		{1, "pmph:{" + name + "}:0", a}, {1, "pmph:{" + name + "}:1", b},
		{2, "pmph:{" + name + "}:0", a},
	}
	for _, s := range seed {
		if _, err := cluster.Nodes[s.node].Do(ctx, "SET", s.key, s.value, "PX", 60000); err != nil {
			t.Fatal(err)
		}
	}
	cluster.Nodes[0].Kill()
	_, err := c.Acquire(ctx, name, 2, time.Minute)
	var nq *semaphore.NoQuorumError
	if !errors.As(err, &nq) {
		return // full, or any answer that is not a no-quorum one, is fine here
	}
	seen := map[string]bool{}
	for _, f := range nq.Failures {
		if seen[f.Node] {
			t.Fatalf("node %s is counted twice among the failures: %v", f.Node, err)
		}
		seen[f.Node] = true
	}
	if len(nq.Failures) > 1 && !nq.Split {
		t.Fatalf("%d failures with one node down: %v", len(nq.Failures), err)
	}
}

// A hung node keeps the commands sent to it before the client timed out
// and runs them when it resumes. An acquisition that failed for want of a
// quorum while two nodes hung must not leave its claim owned on a quorum
// once they resume: no pod has that lease, and its slot is lost to
// everyone for the whole TTL (a pod's startup timeout: 5 minutes by
// default).
func TestNoGhostLeaseAfterHungNodesResume(t *testing.T) {
	c, cluster := newClient(t, 3, 200*time.Millisecond)
	ctx := context.Background()
	const name = "ns/ghost"
	// Warm: the nodes know the scripts and the pools hold idle
	// connections, as in production.
	l := mustAcquire(t, c, name, 2, time.Minute)
	if _, err := c.Release(ctx, l); err != nil {
		t.Fatal(err)
	}
	for _, n := range cluster.Nodes[:2] {
		if err := n.Pause(); err != nil {
			t.Fatal(err)
		}
	}
	_, err := c.Acquire(ctx, name, 2, time.Minute)
	for _, n := range cluster.Nodes[:2] {
		if err := n.Resume(); err != nil {
			t.Fatal(err)
		}
	}
	if !errors.Is(err, semaphore.ErrNoQuorum) {
		t.Fatalf("acquire with two hung nodes: %v, want no quorum", err)
	}
	// The resumed nodes run what they queued, and the cancels and undos sent
	// in the background follow within moments: until then the claims may
	// briefly show on two nodes. A ghost lease would stay for the whole TTL
	// (a minute here): the slot must come free and then stay free.
	held := func() int {
		st, err := c.Inspect(ctx, name, 2)
		if err != nil {
			t.Fatal(err)
		}
		return st.Held()
	}
	waitFor(t, 5*time.Second, "every claim of the failed acquisition to be cancelled", func() bool { return held() == 0 })
	deadline := time.Now().Add(time.Second)
	for time.Now().Before(deadline) {
		if n := held(); n > 0 {
			t.Fatalf("%d slot(s) owned on a quorum after the acquisition failed and its claims were cancelled", n)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// A renewal that finds the lease gone answers at once and deletes what is
// left of it in the background, after the slowest node's answer to the
// renewal. A holder that takes a slot again with its own id meanwhile (the
// sidecar does, through the lease API, when its lease was lost) must keep
// it: the late delete compares the holder and the slot, which match the
// new lease, and removes it from a quorum while the holder counts on it
// for a whole TTL. Another acquirer then gets the same slot.
func TestReacquiredLeaseSurvivesTheLostLeaseCleanup(t *testing.T) {
	c, cluster := newClient(t, 3, 200*time.Millisecond)
	ctx := context.Background()
	const name = "ns/reacquired"
	holder := semaphore.NewHolderID()
	// A lease that expires on every node, as a sidecar's startup lease
	// does when its pod starts late.
	if _, err := c.AcquireAs(ctx, name, 1, 300*time.Millisecond, holder); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 5*time.Second, "the lease expired on every node", func() bool {
		st, err := c.Inspect(ctx, name, 1)
		return err == nil && st.Slots[0].Holders[0] == "" && st.Slots[0].Holders[1] == "" && st.Slots[0].Holders[2] == ""
	})
	// One slow node: the renewal is decided by the other two, its clean-up
	// waits for the slow one.
	if err := cluster.Nodes[2].Pause(); err != nil {
		t.Fatal(err)
	}
	defer cluster.Nodes[2].Resume()
	remote := semaphore.Lease{Name: name, Slot: 0, Holder: holder}
	if _, err := c.Renew(ctx, remote, time.Minute); !errors.Is(err, semaphore.ErrLeaseLost) {
		t.Fatalf("renewing the expired lease: %v, want lost", err)
	}
	again, err := c.AcquireAs(ctx, name, 1, time.Minute, holder)
	if err != nil {
		t.Fatalf("taking the slot again with the same holder id: %v", err)
	}
	// The clean-up runs once the slow node's answer timed out; give it
	// well over that, then the new lease must still be owned.
	deadline := time.Now().Add(time.Second)
	for time.Now().Before(deadline) {
		st, err := c.Inspect(ctx, name, 1)
		if err != nil && !errors.Is(err, semaphore.ErrNoQuorum) {
			t.Fatal(err)
		}
		if err == nil && st.Slots[0].Holder != holder {
			other, err := c.Acquire(ctx, name, 1, time.Minute)
			t.Fatalf("the lease taken again at %s (valid until %s) is no longer owned: nodes hold %q; another acquirer now gets slot %d (err %v)",
				"slot 0", again.Deadline.Format("15:04:05.000"), st.Slots[0].Holders, other.Slot, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// A node that hangs while an acquisition wins on the other two runs the
// claim it queued when it resumes, in its own state: it may pick another
// slot than the one won. Nobody would release that slot (the lease names
// the won one), and it would stay taken on that node for the whole TTL.
func TestTimedOutClaimFollowsTheWonSlot(t *testing.T) {
	cluster := redistest.StartT(t, 3)
	metrics := semaphore.NewMetrics()
	reg := prometheus.NewRegistry()
	reg.MustRegister(metrics)
	c, err := semaphore.New(semaphore.Config{Addrs: cluster.Addrs(), Password: cluster.Password, NodeTimeout: 200 * time.Millisecond, Metrics: metrics})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	ctx := context.Background()
	const name, size = "ns/late-claim", 4
	// Warm: the nodes know the scripts and the pools hold idle connections.
	if _, err := c.Release(ctx, mustAcquire(t, c, name, size, time.Minute)); err != nil {
		t.Fatal(err)
	}
	// Only slot 0 is free on nodes 0 and 1; the lagging node 2 has only
	// slot 3 free.
	key := func(suffix string) string { return "pmph:{" + name + "}:" + suffix }
	for node, slots := range [][]int{{1, 2, 3}, {1, 2, 3}, {0, 1, 2}} {
		for _, slot := range slots {
			if _, err := cluster.Nodes[node].Do(ctx, "SET", key(strconv.Itoa(slot)), strings.Repeat("f", 32), "PX", 60000); err != nil {
				t.Fatal(err)
			}
		}
	}
	if err := cluster.Nodes[2].Pause(); err != nil {
		t.Fatal(err)
	}
	l, err := c.Acquire(ctx, name, size, time.Minute)
	if err != nil || l.Slot != 0 {
		_ = cluster.Nodes[2].Resume()
		t.Fatalf("acquire with one node hung: slot %d, %v; want slot 0", l.Slot, err)
	}
	// The claim sent to the hung node times out after the acquisition won.
	waitFor(t, 5*time.Second, "the hung node's claim to time out", func() bool {
		return nodeUp(t, reg, cluster.Nodes[2].Addr()) == 0
	})
	if err := cluster.Nodes[2].Resume(); err != nil {
		t.Fatal(err)
	}
	// The resumed node runs the queued claim and learns the outcome, in
	// either order: it must not keep slot 3 for this holder.
	holdsSlot3 := func() bool {
		v, err := cluster.Nodes[2].Do(ctx, "GET", key("3"))
		if err != nil {
			t.Fatal(err)
		}
		h, _ := v.([]byte)
		return string(h) == l.Holder
	}
	waitFor(t, 5*time.Second, "the resumed node to run the claim or learn the outcome", func() bool {
		v, err := cluster.Nodes[2].Do(ctx, "KEYS", key("c:*"))
		marks, _ := v.([]any)
		return err == nil && len(marks) == 1 || holdsSlot3()
	})
	for deadline := time.Now().Add(time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		if holdsSlot3() {
			t.Fatalf("the resumed node holds slot 3 for the lease of slot %d, and nobody will release it", l.Slot)
		}
	}
}

// nodeUp reads the client's redis_node_up gauge for one node.
func nodeUp(t *testing.T, reg *prometheus.Registry, addr string) float64 {
	t.Helper()
	families, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range families {
		if !strings.HasSuffix(f.GetName(), "redis_node_up") {
			continue
		}
		for _, m := range f.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "node" && l.GetValue() == addr {
					return m.GetGauge().GetValue()
				}
			}
		}
	}
	t.Fatalf("no redis_node_up for %s", addr)
	return 0
}
