package semaphore

import (
	"context"
	"fmt"
	"time"
)

// Renew extends the lease to ttl from now. It counts only when a quorum of
// nodes still holds the lease and answers before the lease's validity ran
// out; then it also re-creates the slot on nodes that lost it where the slot
// is free there (a node restarted without its data). Otherwise it answers a
// *LeaseLostError and releases whatever is left: an expired lease is never
// resurrected. Too few answers give a *NoQuorumError, which is worth a retry.
func (c *Client) Renew(ctx context.Context, lease Lease, ttl time.Duration) (Lease, error) {
	began := time.Now()
	renewed, err := c.renew(ctx, lease, ttl, began)
	c.metrics.observeOp("renew", err, time.Since(began))
	return renewed, err
}

func (c *Client) renew(ctx context.Context, lease Lease, ttl time.Duration, began time.Time) (Lease, error) {
	if err := validate(lease.Name, lease.Slot+1, ttl); err != nil {
		return Lease{}, err
	}
	if !ValidHolderID(lease.Holder) {
		return Lease{}, fmt.Errorf("semaphore: holder id %q must be 32 lowercase hex digits", lease.Holder)
	}
	base := c.base(lease.Name)
	// A claim of the acquisition still on its way to a slow node would
	// land after the renewal and set the old TTL there again.
	if err := c.claimsInFlight.wait(ctx, base, lease.Holder); err != nil {
		return Lease{}, fmt.Errorf("renewing slot %d of semaphore %q: %w", lease.Slot, lease.Name, err)
	}
	if !lease.Deadline.IsZero() && !began.Before(lease.Deadline) {
		// The keys may outlive the validity by the drift allowance; they
		// are this holder's and nobody may count on them any more.
		c.releaseNow(base, lease)
		return Lease{}, &LeaseLostError{Lease: lease, Reason: LostExpired}
	}
	replies := c.fanout(func(n *node) (any, error) {
		return n.eval(c.scripts.renew, base, lease.Holder, lease.Slot, ttl.Milliseconds())
	})
	var tally renewTally
	for tally.answered < len(c.nodes) {
		select {
		case <-ctx.Done():
			c.drain(replies, len(c.nodes)-tally.answered, nil)
			return Lease{}, fmt.Errorf("renewing slot %d of semaphore %q: %w", lease.Slot, lease.Name, ctx.Err())
		case r := <-replies:
			tally.add(c.nodes[r.node].addr, r)
		}
		if next, decided, err := c.renewVerdict(base, lease, ttl, began, &tally, replies); decided {
			return next, err
		}
	}
	return Lease{}, &NoQuorumError{Op: "renew", Quorum: c.quorum, Nodes: len(c.nodes), Failures: tally.failures}
}

// renewTally counts the nodes' answers to one renewal.
type renewTally struct {
	renewed, missing, other, answered int
	// lost are the nodes that no longer have the key.
	lost     []int
	failures []NodeError
}

func (t *renewTally) add(addr string, r reply) {
	t.answered++
	v, ok := r.val.(int64)
	if r.err == nil && !ok {
		r.err = &protocolError{what: "renew", reply: r.val}
	}
	switch {
	case r.err != nil:
		t.failures = append(t.failures, NodeError{Node: addr, Err: r.err})
	case v == 1:
		t.renewed++
	case v == 0:
		t.missing++
		t.lost = append(t.lost, r.node)
	default:
		t.other++
	}
}

// renewVerdict decides a renewal as soon as the answers so far allow it:
// renewed by a quorum in time, lost, or short of a quorum. The answers
// still under way are drained (and lost slots repaired) once it decided.
func (c *Client) renewVerdict(base string, lease Lease, ttl time.Duration, began time.Time, t *renewTally, replies chan reply) (next Lease, decided bool, err error) {
	m := len(c.nodes)
	remaining := m - t.answered
	switch {
	case t.renewed >= c.quorum:
		now := time.Now()
		if (!lease.Deadline.IsZero() && !now.Before(lease.Deadline)) || !now.Before(began.Add(ttl-drift(ttl))) {
			c.drain(replies, remaining, nil)
			c.releaseNow(base, lease)
			return Lease{}, true, &LeaseLostError{Lease: lease, Reason: LostExpired}
		}
		next = Lease{Name: lease.Name, Slot: lease.Slot, Holder: lease.Holder, Deadline: began.Add(ttl - drift(ttl))}
		c.repair(base, next, t.lost)
		c.drain(replies, remaining, func(r reply) {
			if v, ok := r.val.(int64); r.err == nil && ok && v == 0 {
				c.repair(base, next, []int{r.node})
			}
		})
		return next, true, nil
	case t.missing+t.other > m-c.quorum:
		c.drain(replies, remaining, nil)
		c.releaseNow(base, lease)
		reason := LostNotFound
		if t.other >= c.quorum {
			reason = LostHeldByOther
		}
		return Lease{}, true, &LeaseLostError{Lease: lease, Reason: reason}
	case t.renewed+remaining < c.quorum:
		// Failed nodes might still hold the lease: not known to be lost,
		// so the caller should retry while its validity lasts.
		c.drain(replies, remaining, nil)
		return Lease{}, true, &NoQuorumError{Op: "renew", Quorum: c.quorum, Nodes: m, Failures: t.failures}
	}
	return Lease{}, false, nil
}

// repair re-creates a valid lease's slot on nodes that lost it, for the rest
// of its validity, where the slot is free.
func (c *Client) repair(base string, lease Lease, nodes []int) {
	for _, i := range nodes {
		c.background.Add(1)
		go func() {
			defer c.background.Done()
			ms := time.Until(lease.Deadline).Milliseconds()
			if ms <= 0 {
				return
			}
			_, _ = c.nodes[i].eval(c.scripts.repair, base, lease.Holder, lease.Slot, ms)
		}()
	}
}

// releaseNow deletes a lost lease's keys everywhere (compare-and-delete) and
// waits for the nodes, each bounded by the node timeout. It does not return
// before that on purpose: the holder may take a slot again with the same id
// right after (the sidecar does), and a delete still under way could take
// the new lease from a quorum. A slow node that runs the delete later can
// only take it from itself.
func (c *Client) releaseNow(base string, lease Lease) {
	done := c.fanout(func(n *node) (any, error) {
		return n.eval(c.scripts.release, base, lease.Holder, lease.Slot)
	})
	for range c.nodes {
		<-done
	}
}

// Release deletes the lease on every node (compare-and-delete). It is
// idempotent: released is false when no node held this holder's slot. It
// returns once a quorum answered; a *NoQuorumError means the release may be
// incomplete and is worth a retry (the rest expires with the TTL).
func (c *Client) Release(ctx context.Context, lease Lease) (released bool, err error) {
	began := time.Now()
	released, err = c.release(ctx, lease)
	c.metrics.observeOp("release", err, time.Since(began))
	return released, err
}

func (c *Client) release(ctx context.Context, lease Lease) (bool, error) {
	if lease.Name == "" || lease.Slot < 0 || lease.Slot >= MaxSize {
		return false, fmt.Errorf("semaphore: lease %q slot %d is not a lease of this package", lease.Name, lease.Slot)
	}
	if !ValidHolderID(lease.Holder) {
		return false, fmt.Errorf("semaphore: holder id %q must be 32 lowercase hex digits", lease.Holder)
	}
	base := c.base(lease.Name)
	if err := c.claimsInFlight.wait(ctx, base, lease.Holder); err != nil {
		return false, fmt.Errorf("releasing slot %d of semaphore %q: %w", lease.Slot, lease.Name, err)
	}
	replies := c.fanout(func(n *node) (any, error) {
		return n.eval(c.scripts.release, base, lease.Holder, lease.Slot)
	})
	m := len(c.nodes)
	var (
		failures []NodeError
		released bool
		ok       int
	)
	for answered := 0; answered < m; answered++ {
		select {
		case <-ctx.Done():
			c.drain(replies, m-answered, nil)
			return released, fmt.Errorf("releasing slot %d of semaphore %q: %w", lease.Slot, lease.Name, ctx.Err())
		case r := <-replies:
			v, isInt := r.val.(int64)
			if r.err == nil && !isInt {
				r.err = &protocolError{what: "release", reply: r.val}
			}
			if r.err != nil {
				failures = append(failures, NodeError{Node: c.nodes[r.node].addr, Err: r.err})
				if len(failures) > m-c.quorum {
					c.drain(replies, m-answered-1, nil)
					return released, &NoQuorumError{Op: "release", Quorum: c.quorum, Nodes: m, Failures: failures}
				}
				continue
			}
			ok++
			released = released || v == 1
			if ok >= c.quorum {
				c.drain(replies, m-answered-1, nil)
				return released, nil
			}
		}
	}
	return released, &NoQuorumError{Op: "release", Quorum: c.quorum, Nodes: m, Failures: failures}
}
