package semaphore

import (
	"context"
	"fmt"
	"math/rand/v2"
	"time"
)

// Acquire takes a free slot of the semaphore name of the given size, for ttl,
// with a fresh holder id. It answers a *FullError when every slot is held, a
// *NoQuorumError when too few nodes answered, or the context's error.
func (c *Client) Acquire(ctx context.Context, name string, size int, ttl time.Duration) (Lease, error) {
	holder, err := NewHolderID()
	if err != nil {
		return Lease{}, err
	}
	return c.AcquireAs(ctx, name, size, ttl, holder)
}

// AcquireAs is Acquire with the caller's holder id. It is idempotent: when
// the holder already holds a slot on a node, that node answers it (and
// refreshes its TTL) instead of claiming another.
func (c *Client) AcquireAs(ctx context.Context, name string, size int, ttl time.Duration, holder string) (Lease, error) {
	if err := validate(name, size, ttl); err != nil {
		return Lease{}, err
	}
	if !ValidHolderID(holder) {
		return Lease{}, fmt.Errorf("semaphore: holder id %q must be 32 lowercase hex digits", holder)
	}
	began := time.Now()
	start := rand.IntN(size)
	var (
		lease Lease
		err   error
	)
	for attempt := 1; ; attempt++ {
		if attempt == 1 {
			lease, err = c.acquireOnce(ctx, name, size, ttl, holder, start)
		} else {
			lease, err = c.acquireArbitrated(ctx, name, size, ttl, holder, start)
		}
		if err != errSplit {
			break
		}
		if attempt == maxAttempts {
			// The nodes kept disagreeing. Either racing acquirers kept
			// splitting the free slots between them, or every slot is held
			// on a quorum without any node being full on its own (holders
			// on {A,B} and {B,C} for a size of 2): ask the nodes which.
			var free []int
			if free, err = c.quorumFree(ctx, name, size); err != nil {
				break
			}
			if len(free) == 0 {
				err = &FullError{Name: name, Size: size, Held: size}
			} else {
				err = &NoQuorumError{Op: "acquire", Quorum: c.quorum, Nodes: len(c.nodes), Split: true, Attempts: attempt}
			}
			break
		}
		start = rand.IntN(size)
		// A short random pause keeps racing acquirers from colliding again in
		// lockstep; it stays far below the node timeout.
		if err = pause(ctx, time.Duration(rand.Int64N(int64(attempt)*int64(time.Millisecond)))); err != nil {
			err = fmt.Errorf("acquiring a slot of semaphore %q: %w", name, err)
			break
		}
	}
	c.metrics.observeOp("acquire", err, time.Since(began))
	if err != nil {
		return Lease{}, err
	}
	return lease, nil
}

// acquireArbitrated is the retry after racing acquirers split a round: one
// node, the arbiter, picks the slot, and the others are asked to claim that
// very slot. Racing acquirers are serialised by the arbiter, which gives each
// a different slot, so they stop splitting slots between them. It costs two
// round trips instead of one, only under contention. The arbiter is the
// first node that answers, in configuration order, so that every retrying
// acquirer, whatever its attempt, is serialised by the same node.
func (c *Client) acquireArbitrated(ctx context.Context, name string, size int, ttl time.Duration, holder string, start int) (Lease, error) {
	base := c.base(name)
	ttlMS := ttl.Milliseconds()
	m := len(c.nodes)
	began := time.Now()
	var failures []NodeError
	arbiter, slot := -1, -1
	for idx := range m {
		v, err := c.nodes[idx].eval(c.scripts.acquire, base, holder, ttlMS, size, start)
		c.metrics.observeNode(c.nodes[idx].addr, err)
		claimed, err := parseAcquire(v, err, size)
		if err != nil {
			failures = append(failures, NodeError{Node: c.nodes[idx].addr, Err: err})
			if len(failures) > m-c.quorum {
				return Lease{}, &NoQuorumError{Op: "acquire", Quorum: c.quorum, Nodes: m, Failures: failures}
			}
			continue
		}
		if !claimed.ok {
			// The arbiter has no free slot. Whether they are owned or only
			// claimed by racing acquirers, the other nodes' fingerprints
			// tell; reading them claims nothing that could get in the way
			// of the acquirers the arbiter did serve.
			fps, more, err := c.nodeFingerprints(ctx, name, size, idx)
			if err != nil {
				return Lease{}, err
			}
			failures = append(failures, more...)
			if len(failures) > m-c.quorum {
				return Lease{}, &NoQuorumError{Op: "acquire", Quorum: c.quorum, Nodes: m, Failures: failures}
			}
			if heldOnQuorum(append(fps, claimed.fingerprints), size, c.quorum) {
				return Lease{}, &FullError{Name: name, Size: size, Held: size}
			}
			return Lease{}, errSplit
		}
		arbiter, slot = idx, claimed.slot
		break
	}
	if ctx.Err() != nil {
		c.undoClaim(arbiter, base, holder, slot)
		return Lease{}, fmt.Errorf("acquiring a slot of semaphore %q: %w", name, ctx.Err())
	}
	replies := c.fanoutExcept(arbiter, func(n *node) (any, error) {
		return n.eval(c.scripts.claim, base, holder, slot, ttlMS)
	})
	claimedOn := []int{arbiter}
	undoAll := func() {
		for _, i := range claimedOn {
			c.undoClaim(i, base, holder, slot)
		}
	}
	undoLate := func(r reply) {
		if v, ok := r.val.(int64); r.err == nil && ok && v == 1 {
			c.undoClaim(r.node, base, holder, slot)
		}
	}
	for answered := 0; answered < m-1; answered++ {
		select {
		case <-ctx.Done():
			undoAll()
			c.drain(replies, m-1-answered, undoLate)
			return Lease{}, fmt.Errorf("acquiring a slot of semaphore %q: %w", name, ctx.Err())
		case r := <-replies:
			v, ok := r.val.(int64)
			if r.err == nil && !ok {
				r.err = &protocolError{what: "claim", reply: r.val}
			}
			if r.err == nil && v == 1 {
				claimedOn = append(claimedOn, r.node)
			}
		}
		remaining := m - 1 - answered - 1
		switch {
		case len(claimedOn) >= c.quorum:
			if ttl-time.Since(began)-drift(ttl) <= 0 {
				undoAll()
				c.drain(replies, remaining, undoLate)
				return Lease{}, errSplit
			}
			c.drain(replies, remaining, nil)
			return Lease{Name: name, Slot: slot, Holder: holder, Deadline: began.Add(ttl - drift(ttl))}, nil
		case len(claimedOn)+remaining < c.quorum:
			undoAll()
			c.drain(replies, remaining, undoLate)
			return Lease{}, errSplit
		}
	}
	undoAll()
	return Lease{}, errSplit
}

// errSplit is acquireOnce's internal answer for "enough nodes answered, but
// no slot won a quorum": worth another attempt.
var errSplit = &NoQuorumError{Split: true}

// acquireOnce is one parallel round: every node runs the acquire script with
// the same rotation start, and the answer is returned as soon as the outcome
// is decided; late answers are handled in the background.
func (c *Client) acquireOnce(ctx context.Context, name string, size int, ttl time.Duration, holder string, start int) (Lease, error) {
	base := c.base(name)
	ttlMS := ttl.Milliseconds()
	began := time.Now()
	replies := c.fanout(func(n *node) (any, error) {
		return n.eval(c.scripts.acquire, base, holder, ttlMS, size, start)
	})

	m := len(c.nodes)
	claims := make([]int, m) // slot claimed per node, -1 for none
	for i := range claims {
		claims[i] = -1
	}
	var (
		failures        []NodeError
		fingerprints    []string // of the nodes that answered full
		answered        int
		best, bestCount = -1, 0
	)
	undo := func(nodeIdx, slot int) { c.undoClaim(nodeIdx, base, holder, slot) }
	undoLate := func(keep int) func(reply) {
		return func(r reply) {
			if claimed, err := parseAcquire(r.val, r.err, size); err == nil && claimed.ok && claimed.slot != keep {
				undo(r.node, claimed.slot)
			}
		}
	}
	undoAll := func(keep int, wait bool) {
		done := make(chan struct{}, m)
		pending := 0
		for i, slot := range claims {
			if slot >= 0 && slot != keep {
				pending++
				c.background.Add(1)
				go func() {
					defer c.background.Done()
					undo(i, slot)
					done <- struct{}{}
				}()
			}
		}
		if wait {
			for range pending {
				<-done
			}
		}
	}

	for answered < m {
		select {
		case <-ctx.Done():
			undoAll(-1, false)
			c.drain(replies, m-answered, undoLate(-1))
			return Lease{}, fmt.Errorf("acquiring a slot of semaphore %q: %w", name, ctx.Err())
		case r := <-replies:
			answered++
			claimed, err := parseAcquire(r.val, r.err, size)
			switch {
			case err != nil:
				failures = append(failures, NodeError{Node: c.nodes[r.node].addr, Err: err})
			case !claimed.ok:
				fingerprints = append(fingerprints, claimed.fingerprints)
			default:
				claims[r.node] = claimed.slot
				count := 0
				for _, s := range claims {
					if s == claimed.slot {
						count++
					}
				}
				if count > bestCount {
					best, bestCount = claimed.slot, count
				}
			}
		}
		remaining := m - answered
		switch {
		case bestCount >= c.quorum:
			validity := ttl - time.Since(began) - drift(ttl)
			if validity <= 0 {
				undoAll(-1, false)
				c.drain(replies, remaining, undoLate(-1))
				return Lease{}, &NoQuorumError{Op: "acquire", Quorum: c.quorum, Nodes: m,
					Failures: append(failures, NodeError{Node: "all", Err: fmt.Errorf("the quorum answered after the lease's TTL of %s had run out", ttl)})}
			}
			undoAll(best, false)
			c.drain(replies, remaining, undoLate(best))
			return Lease{Name: name, Slot: best, Holder: holder, Deadline: began.Add(ttl - drift(ttl))}, nil
		case len(failures) > m-c.quorum:
			undoAll(-1, false)
			c.drain(replies, remaining, undoLate(-1))
			return Lease{}, &NoQuorumError{Op: "acquire", Quorum: c.quorum, Nodes: m, Failures: failures}
		case bestCount == 0 && heldOnQuorum(fingerprints, size, c.quorum):
			// Every slot is owned by one holder on a quorum: full, whatever
			// the nodes still to answer say.
			c.drain(replies, remaining, undoLate(-1))
			return Lease{}, &FullError{Name: name, Size: size, Held: size}
		case remaining == 0, bestCount > 0 && bestCount+remaining < c.quorum:
			// No outcome can be reached in this round: claims split between
			// racing acquirers, or slots only claimed, not owned. The claims
			// are undone before the caller retries, since the acquire script
			// would otherwise answer them again to the same holder.
			undoAll(-1, true)
			c.drain(replies, remaining, undoLate(-1))
			return Lease{}, errSplit
		}
	}
	// Unreachable: with every node answered one of the cases above holds.
	return Lease{}, errSplit
}

// heldOnQuorum reports whether, for every slot, one holder fingerprint shows
// on at least quorum of the full nodes' answers.
func heldOnQuorum(fingerprints []string, size, quorum int) bool {
	if len(fingerprints) < quorum {
		return false
	}
	for slot := range size {
		lo, hi := slot*fpLen, (slot+1)*fpLen
		owned := false
		for i := 0; i+quorum <= len(fingerprints) && !owned; i++ {
			fp := fingerprints[i][lo:hi]
			n := 0
			for _, other := range fingerprints[i:] {
				if other[lo:hi] == fp {
					n++
				}
			}
			owned = n >= quorum
		}
		if !owned {
			return false
		}
	}
	return true
}

// nodeFingerprints reads the holder fingerprints of every slot on the given
// nodes, without changing anything.
func (c *Client) nodeFingerprints(ctx context.Context, name string, size int, skip int) ([]string, []NodeError, error) {
	base := c.base(name)
	replies := c.fanoutExcept(skip, func(n *node) (any, error) { return n.eval(c.scripts.fingerprints, base, size) })
	asked := len(c.nodes)
	if skip >= 0 {
		asked--
	}
	var (
		fps      []string
		failures []NodeError
	)
	for received := 0; received < asked; received++ {
		select {
		case <-ctx.Done():
			c.drain(replies, asked-received, nil)
			return nil, nil, fmt.Errorf("acquiring a slot of semaphore %q: %w", name, ctx.Err())
		case r := <-replies:
			fp, ok := r.val.([]byte)
			if r.err == nil && (!ok || len(fp) != size*fpLen) {
				r.err = &protocolError{what: "fingerprints", reply: r.val}
			}
			if r.err != nil {
				failures = append(failures, NodeError{Node: c.nodes[r.node].addr, Err: r.err})
				continue
			}
			fps = append(fps, string(fp))
		}
	}
	return fps, failures, nil
}

// quorumFree answers the slots that are free on at least a quorum of nodes.
func (c *Client) quorumFree(ctx context.Context, name string, size int) ([]int, error) {
	fps, failures, err := c.nodeFingerprints(ctx, name, size, -1)
	if err != nil {
		return nil, err
	}
	if len(failures) > len(c.nodes)-c.quorum {
		return nil, &NoQuorumError{Op: "acquire", Quorum: c.quorum, Nodes: len(c.nodes), Failures: failures}
	}
	var free []int
	for slot := range size {
		n := 0
		for _, fp := range fps {
			if fp[slot*fpLen:(slot+1)*fpLen] == freeFingerprint {
				n++
			}
		}
		if n >= c.quorum {
			free = append(free, slot)
		}
	}
	return free, nil
}

// freeFingerprint stands for a free slot in fingerprint answers.
const freeFingerprint = "------"

// undoClaim deletes a claim of this attempt on one node (compare-and-delete);
// a failure leaves the claim to expire with its TTL.
func (c *Client) undoClaim(nodeIdx int, base, holder string, slot int) {
	_, _ = c.nodes[nodeIdx].eval(c.scripts.release, base, holder, slot)
}

// acquireAnswer is one node's answer to the acquire script.
type acquireAnswer struct {
	ok           bool
	slot         int
	fingerprints string
}

func parseAcquire(v any, err error, size int) (acquireAnswer, error) {
	if err != nil {
		return acquireAnswer{}, err
	}
	arr, isArr := v.([]any)
	if !isArr || len(arr) != 2 {
		return acquireAnswer{}, &protocolError{what: "acquire", reply: v}
	}
	switch flag := arr[0].(type) {
	case int64:
		if flag == 1 {
			if slot, ok := arr[1].(int64); ok && slot >= 0 && slot < int64(size) {
				return acquireAnswer{ok: true, slot: int(slot)}, nil
			}
		} else if fps, ok := arr[1].([]byte); ok && len(fps) == size*fpLen {
			return acquireAnswer{fingerprints: string(fps)}, nil
		}
	}
	return acquireAnswer{}, &protocolError{what: "acquire", reply: v}
}

func pause(ctx context.Context, d time.Duration) error {
	if d <= 0 {
		return ctx.Err()
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}
