package semaphore

import (
	"context"
	"errors"
	"sync"
)

// settleSuspects tells every suspect node, in the background, the outcome
// of this acquisition: the slot it won, or noSlot when it failed. The node
// deletes a claim of it for another slot, claims the won slot where it is
// free, and turns a claim that arrives later (a command it queued while
// hung, or one that timed out on its way) into a claim of the won slot or
// nothing.
// Without this, two hung nodes that resume would hold a lease on a quorum
// that nobody has, and a node whose claim timed out would keep a slot that
// nobody releases, each for the whole TTL.
func (a *acquisition) settleSuspects(won int) {
	for i, suspect := range a.suspects {
		if suspect {
			a.background(func() { a.settle(i, won) })
		}
	}
}

// settle tells one node the outcome, on a connection of its own so that
// even a hung node queues it; it waits for the answer or the node timeout.
func (a *acquisition) settle(nodeIdx, won int) {
	_, err := a.c.nodes[nodeIdx].evalQueued(a.c.scripts.settle, a.base, a.withRecord(a.holder, a.nonce, a.ttlMS, won)...)
	a.c.metrics.observeNode(a.c.nodes[nodeIdx].addr, err)
}

// moveToWonSlot deletes a node's claim of another slot and claims the won
// slot there where it is free. Merely undoing the claim would leave the won
// slot free on that node while a quorum owns it, and such holes make the
// node pick, for the next acquirers, slots the other nodes refuse.
func (a *acquisition) moveToWonSlot(nodeIdx, won int) {
	_, err := a.c.nodes[nodeIdx].eval(a.c.scripts.settle, a.base, a.withRecord(a.holder, a.nonce, a.ttlMS, won)...)
	a.c.metrics.observeNode(a.c.nodes[nodeIdx].addr, err)
}

// reconcileLateAnswer returns the handler of an answer to the acquire
// script that arrives after the attempt was decided: the won slot, or noSlot
// when it was lost.
func (a *acquisition) reconcileLateAnswer(won int) func(reply) {
	return func(rep reply) {
		claimed, err := parseAcquire(rep.val, rep.err, a.size)
		switch {
		case err != nil:
			if won != noSlot && !errors.Is(err, errSettledClaim) {
				// The claim may still run on the node after the timeout.
				a.settle(rep.node, won)
			}
		case !claimed.ok || claimed.slot == won:
		case won == noSlot:
			a.undo(rep.node, claimed.slot)
		default:
			a.moveToWonSlot(rep.node, won)
		}
	}
}

func (a *acquisition) undo(nodeIdx, slot int) { a.c.undoClaim(nodeIdx, a.base, a.holder, slot) }

// undoClaim deletes a claim of this attempt on one node (compare-and-delete);
// a failure leaves the claim to expire with its TTL.
func (c *Client) undoClaim(nodeIdx int, base, holder string, slot int) {
	_, _ = c.nodes[nodeIdx].eval(c.scripts.release, base, holder, slot)
}

// background runs f after the call, tracked for Close and, once the
// acquisition won, for Renew and Release.
func (a *acquisition) background(f func()) {
	a.c.background.Add(1)
	a.leftRunning.Add(1)
	a.startedInBackground++
	go func() {
		defer a.c.background.Done()
		defer a.leftRunning.Done()
		f()
	}()
}

// holdRenewAndReleaseUntilSettled keeps a renewal or release of the won
// lease from overtaking the work still on its way to the nodes: a release
// would find nothing to delete on a slow node, and the claim landing after
// it would hold the slot there for the whole TTL.
func (a *acquisition) holdRenewAndReleaseUntilSettled() {
	if a.startedInBackground == 0 {
		return
	}
	done := a.c.claimsInFlight.add(a.base, a.holder)
	go func() {
		a.leftRunning.Wait()
		done()
	}()
}

// claimsInFlight holds, per semaphore and holder, the acquisitions whose
// slowest nodes were still answering when they won. A lease released within
// that moment (a pod rejected right after its admission, a load test) would
// otherwise race the late claim: the release finds nothing on the slow
// node, then the claim lands there and holds the slot for the whole TTL.
type claimsInFlight struct {
	mu      sync.Mutex
	pending map[string][]chan struct{}
}

func newClaimsInFlight() *claimsInFlight {
	return &claimsInFlight{pending: map[string][]chan struct{}{}}
}

// add records one acquisition; done ends it.
func (l *claimsInFlight) add(base, holder string) (done func()) {
	key := base + "\x00" + holder
	ch := make(chan struct{})
	l.mu.Lock()
	l.pending[key] = append(l.pending[key], ch)
	l.mu.Unlock()
	return func() {
		l.mu.Lock()
		rest := l.pending[key][:0]
		for _, other := range l.pending[key] {
			if other != ch {
				rest = append(rest, other)
			}
		}
		if len(rest) == 0 {
			delete(l.pending, key)
		} else {
			l.pending[key] = rest
		}
		l.mu.Unlock()
		close(ch)
	}
}

// wait returns once the holder's claims in flight were handled (each within
// the node timeout), or with the context's error.
func (l *claimsInFlight) wait(ctx context.Context, base, holder string) error {
	key := base + "\x00" + holder
	l.mu.Lock()
	chans := append([]chan struct{}(nil), l.pending[key]...)
	l.mu.Unlock()
	for _, ch := range chans {
		select {
		case <-ch:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	return nil
}
