package reliability

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/kaidotio/prometheus-metrics-proxy-hook/e2e/reliability/holders"
	"github.com/kaidotio/prometheus-metrics-proxy-hook/src/leaseapi"
	"github.com/kaidotio/prometheus-metrics-proxy-hook/src/testenv/sidecartest"
)

// TestKilledSidecarFreesItsSlotWithinTheTTL: the real sidecar keeps its
// pod's lease alive past several TTLs; killed with SIGKILL (no release),
// its slot is free on a quorum within one lease TTL, and the next pod gets
// it.
func TestKilledSidecarFreesItsSlotWithinTheTTL(t *testing.T) {
	e := newEnv(t, envOptions{})
	c := testClient(t, e)
	ctx := context.Background()
	// A long startup lease: only the sidecar's renewals bring the TTL down
	// to the lease TTL, which shows that it renews.
	p := pod{key: "sidecar", size: 1, startupTimeout: time.Hour}
	a, _, err := c.admit(ctx, "sidecar-1", p)
	if err != nil || !a.allowed {
		t.Fatalf("admission: %s %q %v", a.outcome(), a.message, err)
	}
	env, err := sidecarEnv(a.body)
	if err != nil {
		t.Fatal(err)
	}
	sc := sidecartest.Start(t, sidecartest.Options{Env: append(env,
		"PMPH_LISTEN_ADDRESS=127.0.0.1:0", "PMPH_UPSTREAM=http://127.0.0.1:1/metrics")})
	owned := func() (bool, string) {
		st, err := e.status(ctx, p.name(), p.size)
		if err != nil {
			return false, err.Error()
		}
		return st.Slots[a.slot].Holder == a.holder, fmt.Sprintf("holders %q, TTLs %v", st.Slots[a.slot].Holders, st.Slots[a.slot].TTLs)
	}
	waitFor(t, 10*time.Second, "the sidecar's first renewal brings the lease to the lease TTL", func() (bool, string) {
		st, err := e.status(ctx, p.name(), p.size)
		if err != nil {
			return false, err.Error()
		}
		sl := st.Slots[a.slot]
		for i := range sl.Holders {
			if sl.Holders[i] != a.holder || sl.TTLs[i] > leaseTTL {
				return false, fmt.Sprintf("holders %q, TTLs %v", sl.Holders, sl.TTLs)
			}
		}
		return true, ""
	})
	// Three TTLs later the lease is still owned: the sidecar renews.
	renewedFrom := time.Now()
	for time.Since(renewedFrom) < 3*leaseTTL {
		if ok, state := owned(); !ok {
			t.Fatalf("the running sidecar's lease lapsed after %s: %s\n%s", time.Since(renewedFrom), state, sc.Logs())
		}
		time.Sleep(100 * time.Millisecond)
	}
	sc.Kill()
	killed := time.Now()
	// A renewal in flight at the kill may still land: the bound is one TTL
	// from the kill, plus the per-node timeout and Redis' expiry precision.
	bound := leaseTTL + nodeTimeout + 100*time.Millisecond
	for {
		// A check counts from when it began: a slow check on a busy
		// machine does not move the moment the nodes were asked.
		began := time.Now()
		stillOwned, state := owned()
		if !stillOwned {
			t.Logf("slot free %s after SIGKILL (lease TTL %s)", began.Sub(killed).Round(time.Millisecond), leaseTTL)
			break
		}
		if began.Sub(killed) > bound {
			t.Fatalf("the killed sidecar's slot is still owned %s after SIGKILL, beyond the bound %s: %s", began.Sub(killed), bound, state)
		}
		time.Sleep(20 * time.Millisecond)
	}
	next, _, err := c.admit(ctx, "sidecar-2", p)
	if err != nil || !next.allowed {
		t.Fatalf("the next pod: %s %q %v, want allowed", next.outcome(), next.message, err)
	}
}

// TestCheckerCatchesUnsafeRestarts is the interval checker's negative
// control, end to end: a node restarted without its data while another
// was down forgets leases a quorum had, and the checker must report the
// over-admission that follows. Restarted from its append-only file, the
// same node remembers them and the extra pods are told the semaphore is
// full.
func TestCheckerCatchesUnsafeRestarts(t *testing.T) {
	cases := []struct {
		name     string
		wipe     bool
		wantOver bool
	}{
		{"restart from the append-only file", false, false},
		{"restart without data (no persistence, no start delay)", true, true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t, envOptions{})
			c := testClient(t, e)
			ctx := context.Background()
			p := pod{key: "canary", size: 2, startupTimeout: time.Minute}
			rec := holders.NewRecorder(map[string]int{p.name(): p.size})
			admit := func(uid string) admission {
				began := time.Now()
				a, _, err := c.admit(ctx, uid, p)
				if err != nil {
					t.Fatal(err)
				}
				if a.allowed {
					tn := holders.NewTenure(p.name(), a.slot, a.holder)
					tn.Held(time.Now(), began.Add(p.startupTimeout-drift(p.startupTimeout)))
					rec.Add(tn)
				}
				return a
			}
			n0, n2 := e.redis.Nodes[0], e.redis.Nodes[2]
			n2.Kill()
			for i := range p.size {
				if a := admit(fmt.Sprintf("canary-%d", i)); !a.allowed {
					t.Fatalf("admission %d: %s %q", i, a.outcome(), a.message)
				}
			}
			n0.Kill()
			if tc.wipe {
				if err := n0.Wipe(); err != nil {
					t.Fatal(err)
				}
			}
			for _, n := range []interface{ Start() error }{n0, n2} {
				if err := n.Start(); err != nil {
					t.Fatal(err)
				}
			}
			for i := range p.size {
				a := admit(fmt.Sprintf("canary-extra-%d", i))
				if !tc.wantOver && (a.allowed || a.code != 429) {
					t.Fatalf("extra admission %d after a restart from the append-only file: %s %q, want full", i, a.outcome(), a.message)
				}
			}
			violations, err := rec.Check()
			if err != nil {
				t.Fatal(err)
			}
			if got := len(violations) > 0; got != tc.wantOver {
				t.Fatalf("over-admission reported: %v (%v), want %v", got, violations, tc.wantOver)
			}
			for _, v := range violations {
				t.Logf("caught: %s", v)
			}
		})
	}
}

// TestLostLeaseTakenAgainThroughTheLeaseAPI: a sidecar whose lease was
// lost takes a slot again with its own holder id, as docs/sidecar.md
// describes. The webhook cleans up the lost lease in the background after
// the slowest node answered the renewal; that clean-up must not delete the
// lease just taken again, or the next pod gets the same slot while the
// sidecar counts on it.
func TestLostLeaseTakenAgainThroughTheLeaseAPI(t *testing.T) {
	e := newEnv(t, envOptions{})
	c := testClient(t, e)
	ctx := context.Background()
	p := pod{key: "retaken", size: 1, startupTimeout: time.Second}
	rec := holders.NewRecorder(map[string]int{p.name(): p.size})
	a, _, err := c.admit(ctx, "retaken-1", p)
	if err != nil || !a.allowed {
		t.Fatalf("admission: %s %q %v", a.outcome(), a.message, err)
	}
	waitFor(t, 5*time.Second, "the startup lease expired on every node", func() (bool, string) {
		st, err := e.status(ctx, p.name(), p.size)
		if err != nil {
			return false, err.Error()
		}
		return len(leftovers(st)) == 0, fmt.Sprint(leftovers(st))
	})
	// One slow node: the renewal is answered by the other two, its
	// clean-up waits for the slow one.
	heal := under(t, e, pauseNode(1))
	defer heal()
	lease := leaseapi.Lease{Namespace: namespace, Key: p.key, Slot: a.slot, Holder: a.holder}
	lc := c.eps[0].lease
	if _, err := lc.Renew(ctx, lease); !errors.Is(err, leaseapi.ErrNotFound) {
		t.Fatalf("renewing the expired lease: %v, want 404", err)
	}
	sent := time.Now()
	again, ttl, err := lc.Acquire(ctx, lease, p.size)
	if err != nil {
		t.Fatalf("taking a slot again: %v", err)
	}
	tn := holders.NewTenure(p.name(), again.Slot, again.Holder)
	tn.Held(time.Now(), sent.Add(ttl-drift(ttl)))
	rec.Add(tn)
	// Other pods keep asking while the lease taken again is valid.
	for i := 0; time.Now().Before(tn.ValidUntil()); i++ {
		began := time.Now()
		b, _, err := c.admit(ctx, fmt.Sprintf("retaken-other-%d", i), p)
		if err == nil && b.allowed {
			other := holders.NewTenure(p.name(), b.slot, b.holder)
			other.Held(time.Now(), began.Add(p.startupTimeout-drift(p.startupTimeout)))
			rec.Add(other)
		}
		time.Sleep(50 * time.Millisecond)
	}
	violations, err := rec.Check()
	if err != nil {
		t.Fatal(err)
	}
	for _, v := range violations {
		t.Errorf("over-admission: %s", v)
	}
}
