package reliability

import (
	"context"
	"fmt"
	"sort"
	"sync"
	"time"
)

// Fault labels. An operation is attributed to the label that was in force
// for all of its duration; one that spans a change is a "transition".
const (
	faultNone       = "none"
	faultTransition = "transition"
	faultNodeKilled = "redis node killed, restarted from AOF"
	faultNodePaused = "redis node paused (SIGSTOP)"
	faultSlowNode   = "redis node slow (+40 ms each way)"
	faultHungLink   = "redis node slower than the timeout (2× it each way)"
	faultDrops      = "redis connections cut and refused"
	faultWebhook    = "webhook process killed (SIGKILL)"
	faultTwoPaused  = "two redis nodes paused"
	faultTwoKilled  = "two redis nodes killed"
	faultVanished   = "sidecar vanished (no release)"
)

// faultOrder is the order of the figures table.
var faultOrder = []string{faultNone, faultNodeKilled, faultNodePaused, faultSlowNode, faultHungLink,
	faultDrops, faultWebhook, faultTwoPaused, faultTwoKilled, faultVanished, faultTransition}

// oneNodeDown are the faults under which a quorum of Redis nodes answers
// (or, for a killed webhook, the other webhook does): every acquisition
// with a free slot must succeed.
var oneNodeDown = map[string]bool{faultNone: true, faultNodeKilled: true, faultNodePaused: true,
	faultSlowNode: true, faultHungLink: true, faultDrops: true, faultWebhook: true}

// faulted is the index, in the webhooks' node list [node0, node1, proxy],
// of the node a one-node fault takes out; -1 for none.
var faulted = map[string]int{faultNodeKilled: 0, faultNodePaused: 1, faultSlowNode: 2, faultHungLink: 2, faultDrops: 2}

// twoNodesDown are the faults under which no quorum answers.
var twoNodesDown = map[string]bool{faultTwoPaused: true, faultTwoKilled: true}

// timeline records which fault label was in force when.
type timeline struct {
	mu    sync.Mutex
	marks []mark
}

type mark struct {
	at    time.Time
	label string
}

func newTimeline() *timeline {
	return &timeline{marks: []mark{{at: time.Now(), label: faultNone}}}
}

func (tl *timeline) set(label string) {
	tl.mu.Lock()
	defer tl.mu.Unlock()
	tl.marks = append(tl.marks, mark{at: time.Now(), label: label})
}

// span is the label in force from from to to, or faultTransition when it
// changed in between.
func (tl *timeline) span(from, to time.Time) string {
	tl.mu.Lock()
	defer tl.mu.Unlock()
	i := sort.Search(len(tl.marks), func(i int) bool { return tl.marks[i].at.After(from) }) - 1
	if i < 0 {
		return faultTransition
	}
	if i+1 < len(tl.marks) && !tl.marks[i+1].at.After(to) {
		return faultTransition
	}
	return tl.marks[i].label
}

// step is one fault of the schedule: inject it, keep it for hold, heal it.
// The label is faultTransition while the fault is injected, set only once
// the fault is in force, and faultTransition again before healing begins,
// so that an operation attributed to a fault (or to none) ran entirely
// while it was (or no fault was) in force.
type step struct {
	label  string
	inject func() error
	hold   time.Duration
	// during runs every tick while the fault is held (e.g. cutting
	// connections again); nil for none.
	during func()
	heal   func() error
	// quiet follows the healing, labelled faultNone.
	quiet time.Duration
}

// schedule is one round of faults: each kind at least twice (repeatedly),
// about a minute in all.
func (e *env) schedule() []step {
	n0, n1 := e.redis.Nodes[0], e.redis.Nodes[1]
	kill := func(idx ...int) func() error {
		return func() error {
			for _, i := range idx {
				e.redis.Nodes[i].Kill()
			}
			return nil
		}
	}
	restart := func(idx ...int) func() error {
		return func() error {
			for _, i := range idx {
				if err := e.redis.Nodes[i].Start(); err != nil {
					return fmt.Errorf("restarting node %d from its append-only file: %w", i, err)
				}
			}
			return nil
		}
	}
	killWebhook := func(i int) func() error {
		return func() error { e.webhooks[i].Kill(); return nil }
	}
	startWebhook := func(i int) func() error {
		return func() error { return e.webhooks[i].Start() }
	}
	var steps []step
	for range 3 {
		steps = append(steps, step{label: faultNodeKilled, inject: kill(0), hold: 2500 * time.Millisecond, heal: restart(0), quiet: 1500 * time.Millisecond})
	}
	for range 2 {
		// Eight times the per-node timeout: every command to the node times
		// out while it is stopped.
		steps = append(steps, step{label: faultNodePaused, inject: n1.Pause, hold: 8 * nodeTimeout, heal: n1.Resume, quiet: 1500 * time.Millisecond})
	}
	refusing := false
	steps = append(steps,
		step{label: faultSlowNode, inject: func() error { e.proxy.SetLatency(40 * time.Millisecond); return nil }, hold: 4 * time.Second,
			heal: func() error { e.proxy.SetLatency(0); return nil }, quiet: time.Second},
		step{label: faultHungLink, inject: func() error { e.proxy.SetLatency(2 * nodeTimeout); return nil }, hold: 3 * time.Second,
			heal: func() error { e.proxy.SetLatency(0); return nil }, quiet: time.Second},
		step{label: faultDrops,
			inject: func() error { e.proxy.CutAll(); return nil }, hold: 4 * time.Second,
			// Every tick cuts what is open and flips refusing new
			// connections: a link that fails in both ways.
			during: func() {
				e.proxy.CutAll()
				refusing = !refusing
				e.proxy.SetRefuse(refusing)
			},
			heal: func() error { refusing = false; e.proxy.SetRefuse(false); return nil }, quiet: time.Second},
	)
	if len(e.webhooks) > 1 {
		for i := range 2 {
			steps = append(steps, step{label: faultWebhook, inject: killWebhook(i), hold: 1500 * time.Millisecond, heal: startWebhook(i), quiet: 1500 * time.Millisecond})
		}
	}
	steps = append(steps,
		step{label: faultTwoPaused, inject: func() error {
			if err := n0.Pause(); err != nil {
				return err
			}
			return n1.Pause()
		}, hold: 8 * nodeTimeout, heal: func() error {
			if err := n0.Resume(); err != nil {
				return err
			}
			return n1.Resume()
		}, quiet: 2 * time.Second},
		step{label: faultTwoKilled, inject: kill(0, 1), hold: 2 * time.Second, heal: restart(0, 1), quiet: 2 * time.Second},
	)
	return steps
}

// run plays the steps in order until ctx ends, recording each injection in
// the timeline and counting it in inject.
func runSchedule(ctx context.Context, tl *timeline, steps []step, injected func(string)) error {
	tick := time.NewTicker(150 * time.Millisecond)
	defer tick.Stop()
	wait := func(d time.Duration, during func()) {
		end := time.NewTimer(d)
		defer end.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-end.C:
				return
			case <-tick.C:
				if during != nil {
					during()
				}
			}
		}
	}
	for _, s := range steps {
		if ctx.Err() != nil {
			return nil
		}
		// An operation that overlaps the injection is a transition.
		tl.set(faultTransition)
		if err := s.inject(); err != nil {
			return fmt.Errorf("injecting %q: %w", s.label, err)
		}
		tl.set(s.label)
		injected(s.label)
		wait(s.hold, s.during)
		tl.set(faultTransition)
		if err := s.heal(); err != nil {
			return fmt.Errorf("healing %q: %w", s.label, err)
		}
		tl.set(faultNone)
		wait(s.quiet, nil)
	}
	return nil
}
