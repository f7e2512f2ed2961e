package reliability

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"
)

// fault is one way of taking nodes out, with its cure.
type fault struct {
	name   string
	inject func(e *env) error
	heal   func(e *env) error
}

func killNode(i int) fault {
	return fault{name: fmt.Sprintf("node %d killed", i),
		inject: func(e *env) error { e.redis.Nodes[i].Kill(); return nil },
		heal:   func(e *env) error { return e.redis.Nodes[i].Start() }}
}

func pauseNode(i int) fault {
	return fault{name: fmt.Sprintf("node %d paused", i),
		inject: func(e *env) error { return e.redis.Nodes[i].Pause() },
		heal:   func(e *env) error { return e.redis.Nodes[i].Resume() }}
}

// hungLink delays node 2's traffic beyond the per-node timeout.
var hungLink = fault{name: "node 2 behind a link slower than the timeout",
	inject: func(e *env) error { e.proxy.SetLatency(2 * nodeTimeout); return nil },
	heal:   func(e *env) error { e.proxy.SetLatency(0); return nil }}

// refusedLink resets node 2's connections, open and new.
var refusedLink = fault{name: "node 2 refusing connections",
	inject: func(e *env) error { e.proxy.SetRefuse(true); e.proxy.CutAll(); return nil },
	heal:   func(e *env) error { e.proxy.SetRefuse(false); return nil }}

func both(a, b fault) fault {
	return fault{name: a.name + " and " + b.name,
		inject: func(e *env) error {
			if err := a.inject(e); err != nil {
				return err
			}
			return b.inject(e)
		},
		heal: func(e *env) error {
			if err := a.heal(e); err != nil {
				return err
			}
			return b.heal(e)
		}}
}

// under injects f for the rest of the test or until the returned heal.
func under(t *testing.T, e *env, f fault) (heal func()) {
	t.Helper()
	if err := f.inject(e); err != nil {
		t.Fatalf("injecting %s: %v", f.name, err)
	}
	var once sync.Once
	heal = func() {
		once.Do(func() {
			if err := f.heal(e); err != nil {
				t.Errorf("healing %s: %v", f.name, err)
			}
		})
	}
	t.Cleanup(heal)
	return heal
}

// TestOneNodeDownAdmitsWhileSlotsAreFree: with any one node out, every
// admission that finds a free slot is allowed, alone or racing for the
// last slots, and the next one is told the semaphore is full.
func TestOneNodeDownAdmitsWhileSlotsAreFree(t *testing.T) {
	e := newEnv(t, envOptions{})
	c := testClient(t, e)
	const size = 6
	for i, f := range []fault{killNode(0), pauseNode(1), hungLink, refusedLink} {
		t.Run(f.name, func(t *testing.T) {
			p := pod{key: fmt.Sprintf("one-down-%d", i), size: size, startupTimeout: time.Minute}
			heal := under(t, e, f)
			defer heal()
			ctx := context.Background()
			// Half the slots one after another, the other half at once.
			for n := range size / 2 {
				a, _, err := c.admit(ctx, fmt.Sprintf("one-down-%d-%d", i, n), p)
				if err != nil || !a.allowed {
					t.Fatalf("admission %d of %d: %s %q (%v), want allowed", n+1, size, a.outcome(), a.message, err)
				}
			}
			var wg sync.WaitGroup
			answers := make([]admission, size-size/2)
			errs := make([]error, len(answers))
			for n := range answers {
				wg.Add(1)
				go func() {
					defer wg.Done()
					answers[n], _, errs[n] = c.admit(ctx, fmt.Sprintf("one-down-%d-racing-%d", i, n), p)
				}()
			}
			wg.Wait()
			slots := map[int]bool{}
			for n, a := range answers {
				if errs[n] != nil || !a.allowed {
					t.Errorf("racing admission %d for the last %d free slots: %s %q (%v), want allowed", n, len(answers), a.outcome(), a.message, errs[n])
					continue
				}
				slots[a.slot] = true
			}
			if len(slots) != len(answers) && !t.Failed() {
				t.Errorf("racing admissions got slots %v, want %d different ones", slots, len(answers))
			}
			a, _, err := c.admit(ctx, fmt.Sprintf("one-down-%d-full", i), p)
			// The holders are named when Redis lists them in time.
			want := fmt.Sprintf("semaphore %q is full (%d/%d slots held)", p.name(), size, size)
			if err != nil || a.allowed || a.code != 429 || !strings.HasPrefix(a.message, want) || !strings.HasSuffix(a.message, "; the pod will be created when a slot frees up") {
				t.Fatalf("admission beyond the size: %s %d %q (%v), want 429 %q", a.outcome(), a.code, a.message, err, want)
			}
		})
	}
}

// TestTwoNodesDownDeniesWithinTheTimeout: with two nodes out, every
// admission is denied with the no-quorum message, naming the failed nodes,
// within the per-node timeout plus HTTP overhead.
func TestTwoNodesDownDeniesWithinTheTimeout(t *testing.T) {
	e := newEnv(t, envOptions{})
	c := testClient(t, e)
	cases := []struct {
		f fault
		// hung nodes make every answer wait for the timeout; dead ones
		// answer at once.
		hung bool
	}{
		{both(pauseNode(0), pauseNode(1)), true},
		{both(killNode(0), killNode(1)), false},
		{both(killNode(0), hungLink), true},
		{both(pauseNode(1), refusedLink), true},
	}
	for i, tc := range cases {
		t.Run(tc.f.name, func(t *testing.T) {
			p := pod{key: fmt.Sprintf("two-down-%d", i), size: 3, startupTimeout: time.Minute}
			// Warm the connection pools so that the first answer is not a
			// dial's.
			if a, _, err := c.admit(context.Background(), fmt.Sprintf("two-down-%d-warm", i), pod{key: "warm", size: 1024, startupTimeout: time.Second}); err != nil || !a.allowed {
				t.Fatalf("warm-up: %s %q %v", a.outcome(), a.message, err)
			}
			heal := under(t, e, tc.f)
			defer heal()
			var slowest time.Duration
			for n := range 5 {
				began := time.Now()
				a, _, err := c.admit(context.Background(), fmt.Sprintf("two-down-%d-%d", i, n), p)
				took := time.Since(began)
				slowest = max(slowest, took)
				if err != nil || a.allowed || a.code != 503 || !strings.Contains(a.message, "no Redis quorum for acquire: 2 of 3 nodes failed and 2 must answer") ||
					!strings.HasSuffix(a.message, "the pod will be created when Redis recovers") {
					t.Fatalf("admission %d: %s %d %q (%v), want the 503 no-quorum denial", n, a.outcome(), a.code, a.message, err)
				}
				if took > noQuorumBound {
					t.Errorf("admission %d: the no-quorum answer took %s, above the bound %s", n, took, noQuorumBound)
				}
				if tc.hung && took < nodeTimeout {
					t.Errorf("admission %d: answered in %s with hung nodes, before the per-node timeout %s: what waited?", n, took, nodeTimeout)
				}
			}
			t.Logf("slowest no-quorum answer: %s (per-node timeout %s)", slowest.Round(time.Millisecond), nodeTimeout)
		})
	}
}

// TestNoGhostLeaseAfterHungNodesResume: admissions denied while two nodes
// hang must not leave a slot owned once the nodes resume. A hung node
// still holds the commands the webhook sent it before timing out; when it
// resumes it runs them, and a claim that lands on both resumed nodes is a
// lease on a quorum that no pod has.
func TestNoGhostLeaseAfterHungNodesResume(t *testing.T) {
	e := newEnv(t, envOptions{})
	c := testClient(t, e)
	p := pod{key: "ghost", size: 4, startupTimeout: time.Minute}
	ctx := context.Background()
	// As in production, the nodes know the scripts and the webhook has
	// idle connections to them: the commands sent to the hung nodes are
	// EVALSHAs they will run, not NOSCRIPT errors or dials.
	for n := range 4 {
		if a, _, err := c.admit(ctx, fmt.Sprintf("ghost-warm-%d", n), pod{key: "warm", size: 1024, startupTimeout: time.Second}); err != nil || !a.allowed {
			t.Fatalf("warm-up: %s %q %v", a.outcome(), a.message, err)
		}
	}
	heal := under(t, e, both(pauseNode(0), pauseNode(1)))
	for n := range 4 {
		a, _, err := c.admit(ctx, fmt.Sprintf("ghost-%d", n), p)
		if err != nil || a.allowed || a.code != 503 {
			t.Fatalf("admission %d with two hung nodes: %s %q (%v), want a 503 denial", n, a.outcome(), a.message, err)
		}
	}
	heal()
	// The resumed nodes run what they had queued within moments; watch for
	// a second.
	deadline := time.Now().Add(time.Second)
	for time.Now().Before(deadline) {
		st, err := e.status(ctx, p.name(), p.size)
		if err != nil {
			t.Fatal(err)
		}
		if st.Held() > 0 {
			t.Fatalf("%d slot(s) owned on a quorum after every admission was denied, for the whole startup timeout (%s): %s",
				st.Held(), p.startupTimeout, strings.Join(leftovers(st), "; "))
		}
		time.Sleep(50 * time.Millisecond)
	}
}
