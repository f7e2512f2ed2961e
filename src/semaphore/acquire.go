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
		lease, err = c.acquireOnce(ctx, name, size, ttl, holder, start)
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

// quorumFree answers the slots that are free on at least a quorum of nodes.
func (c *Client) quorumFree(ctx context.Context, name string, size int) ([]int, error) {
	base := c.base(name)
	replies := c.fanout(func(n *node) (any, error) { return n.eval(c.scripts.occupied, base, size) })
	freeOn := make([]int, size)
	var failures []NodeError
	for received := 0; received < len(c.nodes); received++ {
		select {
		case <-ctx.Done():
			c.drain(replies, len(c.nodes)-received, nil)
			return nil, fmt.Errorf("acquiring a slot of semaphore %q: %w", name, ctx.Err())
		case r := <-replies:
			occ, ok := r.val.([]byte)
			if r.err == nil && (!ok || len(occ) != size) {
				r.err = &protocolError{what: "occupied", reply: r.val}
			}
			if r.err != nil {
				failures = append(failures, NodeError{Node: c.nodes[r.node].addr, Err: r.err})
				if len(failures) > len(c.nodes)-c.quorum {
					c.drain(replies, len(c.nodes)-received-1, nil)
					return nil, &NoQuorumError{Op: "acquire", Quorum: c.quorum, Nodes: len(c.nodes), Failures: failures}
				}
				continue
			}
			for i, b := range occ {
				if b == '0' {
					freeOn[i]++
				}
			}
		}
	}
	var free []int
	for slot, n := range freeOn {
		if n >= c.quorum {
			free = append(free, slot)
		}
	}
	return free, nil
}

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
