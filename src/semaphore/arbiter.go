package semaphore

import (
	"context"
	"time"
)

// claimThroughArbiter is the retry after racing acquirers split a round:
// one node, the arbiter, picks the slot, and the others are asked to claim
// that very slot. Racing acquirers are serialised by the arbiter, which
// gives each a different slot, so they stop splitting slots between them.
// It costs two round trips instead of one, only under contention.
func (a *acquisition) claimThroughArbiter(ctx context.Context, order probe) (Lease, error) {
	began := time.Now()
	arbiter, slot, failures, err := a.findArbiter(ctx, order)
	if err != nil {
		return Lease{}, err
	}
	if ctx.Err() != nil {
		a.undo(arbiter, slot)
		return Lease{}, a.cancelled(ctx)
	}
	return a.claimArbitratedSlot(ctx, began, arbiter, slot, failures)
}

// findArbiter asks the nodes one at a time, in configuration order, for a
// free slot: the first that answers one is the arbiter, so that every
// retrying acquirer, whatever its attempt, is serialised by the same node.
// It answers errSplit when no node had a free slot although the semaphore
// is not full.
func (a *acquisition) findArbiter(ctx context.Context, order probe) (arbiter, slot int, failures []NodeError, err error) {
	c := a.c
	checkedFull := false
	for idx, n := range c.nodes {
		v, err := a.runAcquireScript(n, order)
		c.metrics.observeNode(n.addr, err)
		claimed, err := parseAcquire(v, err, a.size)
		switch {
		case err != nil:
			failures = a.failed(idx, err, failures)
			if a.tooManyFailed(failures) {
				return noSlot, noSlot, failures, a.noQuorum(failures)
			}
		case claimed.ok:
			return idx, claimed.slot, failures, nil
		case !checkedFull:
			checkedFull = true
			if failures, err = a.checkFull(ctx, idx, claimed.fingerprints, failures); err != nil {
				return noSlot, noSlot, failures, err
			}
			// Some slot is not owned on a quorum: the next node that has a
			// free slot arbitrates. Every retrying acquirer that finds this
			// node full moves on alike, so they are still serialised by one
			// node.
		}
	}
	return noSlot, noSlot, failures, errSplit
}

// checkFull is asked when a would-be arbiter has no free slot. Whether its
// slots are owned or only claimed (by racing acquirers, or left on this
// node alone by claims that outlived their acquisition), the other nodes'
// fingerprints tell; reading them claims nothing that could get in the way
// of the acquirers the arbiter did serve. It answers a *FullError when
// every slot is owned on a quorum.
func (a *acquisition) checkFull(ctx context.Context, fullNode int, fullFingerprints string, failures []NodeError) ([]NodeError, error) {
	c := a.c
	others, otherFailures, err := c.nodeFingerprints(ctx, a.name, a.size, fullNode)
	if err != nil {
		return failures, err
	}
	for _, f := range otherFailures {
		failures = a.failed(c.indexOf(f.Node), f.Err, failures)
	}
	if a.tooManyFailed(failures) {
		return failures, a.noQuorum(failures)
	}
	if heldOnQuorum(append(others, fullFingerprints), a.size, c.quorum) {
		return failures, a.full()
	}
	return failures, nil
}

// claimArbitratedSlot asks every node but the arbiter to claim the slot the
// arbiter picked.
func (a *acquisition) claimArbitratedSlot(ctx context.Context, began time.Time, arbiter, slot int, failures []NodeError) (Lease, error) {
	c := a.c
	replies := c.fanoutExcept(arbiter, func(n *node) (any, error) {
		return n.eval(c.scripts.claim, a.base, a.withRecord(a.holder, slot, a.ttlMS, a.nonce)...)
	})
	r := a.newRound(began, replies, len(c.nodes)-1)
	r.failures = failures
	r.answered[arbiter] = true
	r.claims[arbiter] = slot
	undoLateClaim := func(rep reply) {
		if claimed, err := parseClaim(rep); err == nil && claimed {
			a.undo(rep.node, slot)
		}
	}
	for r.waiting > 0 {
		rep, ok := r.next(ctx)
		if !ok {
			r.giveUpBeforeRetry(undoLateClaim)
			return Lease{}, a.cancelled(ctx)
		}
		claimed, err := parseClaim(rep)
		switch {
		case err != nil:
			r.fail(rep.node, err)
		case claimed:
			r.claims[rep.node] = slot
		}
		claimedOn := r.claimsOf(slot)
		switch {
		case claimedOn >= c.quorum && a.validSince(r.began):
			return r.win(slot, nil), nil
		case claimedOn >= c.quorum, claimedOn+r.waiting < c.quorum:
			r.giveUpBeforeRetry(undoLateClaim)
			if a.tooManyFailed(r.failures) {
				return Lease{}, a.noQuorum(r.failures)
			}
			return Lease{}, errSplit
		}
	}
	// Unreachable: with every node answered the outcome is decided.
	return Lease{}, errSplit
}

// parseClaim reads one node's answer to the claim script: whether it
// claimed the slot.
func parseClaim(rep reply) (bool, error) {
	if rep.err != nil {
		return false, rep.err
	}
	v, ok := rep.val.(int64)
	if !ok {
		return false, &protocolError{what: "claim", reply: rep.val}
	}
	return v == 1, nil
}
