package semaphore

import (
	"context"
	"fmt"
	"sync"
	"time"
)

// round is one fan-out of claims to the nodes: it records each node's
// answer as it arrives, until the caller has decided the outcome.
type round struct {
	a       *acquisition
	replies chan reply
	began   time.Time
	// waiting counts the replies still to come.
	waiting  int
	answered []bool
	// claims holds the slot each node claimed, noSlot for none.
	claims   []int
	failures []NodeError
	// fullFingerprints are the answers of the nodes that had no free slot.
	fullFingerprints []string
}

func (a *acquisition) newRound(began time.Time, replies chan reply, asked int) *round {
	m := len(a.c.nodes)
	r := &round{a: a, replies: replies, began: began, waiting: asked, answered: make([]bool, m), claims: make([]int, m)}
	for i := range r.claims {
		r.claims[i] = noSlot
	}
	return r
}

// next waits for the next reply; false means the context ended first.
func (r *round) next(ctx context.Context) (reply, bool) {
	select {
	case <-ctx.Done():
		return reply{}, false
	case rep := <-r.replies:
		r.waiting--
		r.answered[rep.node] = true
		return rep, true
	}
}

func (r *round) fail(nodeIdx int, err error) { r.failures = r.a.failed(nodeIdx, err, r.failures) }

// claimsOf counts the nodes that claimed slot.
func (r *round) claimsOf(slot int) int {
	n := 0
	for _, s := range r.claims {
		if s == slot {
			n++
		}
	}
	return n
}

// suspectUnanswered makes every node that has not answered a suspect: it
// may still run the claim.
func (r *round) suspectUnanswered() {
	for i, ok := range r.answered {
		if !ok {
			r.a.suspects[i] = true
		}
	}
}

// giveUp ends a round that won no lease: its claims are undone in the
// background, the nodes that have not answered become suspects and their
// answers go to lateAnswer.
func (r *round) giveUp(lateAnswer func(reply)) {
	r.undoClaims()
	r.handOffUnanswered(lateAnswer)
}

// giveUpBeforeRetry is giveUp that returns once the claims are undone: the
// acquire script would otherwise answer them again to the same holder.
func (r *round) giveUpBeforeRetry(lateAnswer func(reply)) {
	r.undoClaims().Wait()
	r.handOffUnanswered(lateAnswer)
}

func (r *round) undoClaims() *sync.WaitGroup {
	c := r.a.c
	var undone sync.WaitGroup
	for i, slot := range r.claims {
		if slot == noSlot {
			continue
		}
		undone.Add(1)
		c.background.Add(1)
		go func() {
			defer c.background.Done()
			defer undone.Done()
			r.a.undo(i, slot)
		}()
	}
	return &undone
}

func (r *round) handOffUnanswered(lateAnswer func(reply)) {
	r.suspectUnanswered()
	r.a.c.drain(r.replies, r.waiting, lateAnswer)
}

// errUndecided is the answer of a round's outcome while it needs more
// replies.
var errUndecided = &NoQuorumError{}

// claimOnEveryNode is the first attempt: every node runs the acquire script
// with the same probe order, and the answer is returned as soon as the
// outcome is decided; later answers are handled in the background.
func (a *acquisition) claimOnEveryNode(ctx context.Context, order probe) (Lease, error) {
	began := time.Now()
	replies := a.c.fanout(func(n *node) (any, error) { return a.runAcquireScript(n, order) })
	r := a.newRound(began, replies, len(a.c.nodes))
	best, bestCount := noSlot, 0
	for r.waiting > 0 {
		rep, ok := r.next(ctx)
		if !ok {
			r.giveUp(a.reconcileLateAnswer(noSlot))
			return Lease{}, a.cancelled(ctx)
		}
		if slot := r.recordAcquireAnswer(rep); slot != noSlot {
			if n := r.claimsOf(slot); n > bestCount {
				best, bestCount = slot, n
			}
		}
		if lease, err := r.outcomeOfEveryNode(best, bestCount); err != errUndecided {
			return lease, err
		}
	}
	// Unreachable: with every node answered the outcome is decided.
	return Lease{}, errSplit
}

// recordAcquireAnswer records one node's answer to the acquire script and
// returns the slot it claimed, noSlot for none.
func (r *round) recordAcquireAnswer(rep reply) int {
	claimed, err := parseAcquire(rep.val, rep.err, r.a.size)
	switch {
	case err != nil:
		r.fail(rep.node, err)
	case !claimed.ok:
		r.fullFingerprints = append(r.fullFingerprints, claimed.fingerprints)
	default:
		r.claims[rep.node] = claimed.slot
		return claimed.slot
	}
	return noSlot
}

// outcomeOfEveryNode decides the first attempt once it can be decided, from
// the slot claimed on the most nodes; errUndecided asks for more replies.
func (r *round) outcomeOfEveryNode(best, bestCount int) (Lease, error) {
	a, quorum := r.a, r.a.c.quorum
	switch {
	case bestCount >= quorum && a.validSince(r.began):
		return r.win(best, a.reconcileLateAnswer(best)), nil
	case bestCount >= quorum:
		r.giveUp(a.reconcileLateAnswer(noSlot))
		return Lease{}, a.noQuorum(append(r.failures, NodeError{Node: "all", Err: fmt.Errorf("the quorum answered after the lease's TTL of %s had run out", a.ttl)}))
	case a.tooManyFailed(r.failures):
		r.giveUp(a.reconcileLateAnswer(noSlot))
		return Lease{}, a.noQuorum(r.failures)
	case heldOnQuorum(r.fullFingerprints, a.size, quorum):
		// Every slot is owned by one holder on a quorum of the nodes that
		// answered full: full, whatever the others say. A claim on
		// another node (one that lost its data, or that is behind) can
		// only be for a slot owned elsewhere: it is undone.
		r.giveUp(a.reconcileLateAnswer(noSlot))
		return Lease{}, a.full()
	case r.waiting == 0, bestCount > 0 && bestCount+r.waiting < quorum:
		// No outcome can be reached in this round: claims split between
		// racing acquirers, or slots only claimed, not owned.
		r.giveUpBeforeRetry(a.reconcileLateAnswer(noSlot))
		return Lease{}, errSplit
	}
	return Lease{}, errUndecided
}

// win moves the nodes that claimed another slot onto the won one and hands
// the replies still to come to lateAnswer in the background.
func (r *round) win(won int, lateAnswer func(reply)) Lease {
	a := r.a
	for i, slot := range r.claims {
		if slot != noSlot && slot != won {
			a.background(func() { a.moveToWonSlot(i, won) })
		}
	}
	if r.waiting > 0 {
		waiting := r.waiting
		a.background(func() { a.c.collect(r.replies, waiting, lateAnswer) })
	}
	return a.lease(won)
}
