package semaphore

import (
	"context"
	crand "crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"
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
	return c.acquireAs(ctx, name, size, ttl, holder, nil)
}

func (c *Client) acquireAs(ctx context.Context, name string, size int, ttl time.Duration, holder string, rec *Record) (Lease, error) {
	if err := validate(name, size, ttl); err != nil {
		return Lease{}, err
	}
	if !ValidHolderID(holder) {
		return Lease{}, fmt.Errorf("semaphore: holder id %q must be 32 lowercase hex digits", holder)
	}
	a, err := c.newAcquisition(name, size, ttl, holder)
	if err != nil {
		return Lease{}, err
	}
	a.record = rec.args()
	lease, err := a.run(ctx)
	if err != nil {
		a.settleSuspects(-1)
	} else {
		a.settleSuspects(lease.Slot)
		if a.afterwards > 0 {
			// A renewal or release of this lease must not overtake the work
			// still on its way to the nodes: a release would find nothing
			// to delete on a slow node, and the claim landing after it
			// would hold the slot there for the whole TTL.
			done := c.late.add(a.base, a.holder)
			go func() {
				a.after.Wait()
				done()
			}()
		}
	}
	c.metrics.observeOp("acquire", err, time.Since(a.began))
	return lease, err
}

// acquisition is one AcquireAs call: its attempts share the holder id and a
// nonce that marks their claims, so that its outcome can settle the claims
// it never saw answered.
type acquisition struct {
	c      *Client
	name   string
	base   string
	size   int
	ttl    time.Duration
	ttlMS  int64
	holder string
	nonce  string
	began  time.Time
	// record is the lease record's script arguments, written with every
	// claim of this acquisition.
	record []any
	// suspects are the nodes that may have run a claim of this acquisition
	// without the answer reaching it: an error (a timeout may come after
	// the node ran the script, and a hung node runs what it queued when it
	// resumes) or no answer yet when a round was decided.
	suspects []bool
	// after tracks the work a won acquisition leaves running: late
	// answers, undoing and settling claims. afterwards counts what was
	// started; both are used by the calling goroutine only until it
	// returns.
	after      sync.WaitGroup
	afterwards int
}

func (c *Client) newAcquisition(name string, size int, ttl time.Duration, holder string) (*acquisition, error) {
	var b [8]byte
	if _, err := crand.Read(b[:]); err != nil {
		return nil, fmt.Errorf("semaphore: reading a random nonce: %w", err)
	}
	return &acquisition{
		c: c, name: name, base: c.base(name), size: size, ttl: ttl, ttlMS: ttl.Milliseconds(),
		holder: holder, nonce: hex.EncodeToString(b[:]), began: time.Now(),
		suspects: make([]bool, len(c.nodes)),
	}, nil
}

func (a *acquisition) run(ctx context.Context) (Lease, error) {
	order := newProbe(a.size)
	for attempt := 1; ; attempt++ {
		var (
			lease Lease
			err   error
		)
		if attempt == 1 {
			lease, err = a.parallel(ctx, order)
		} else {
			lease, err = a.arbitrated(ctx, order)
		}
		if err != errSplit {
			return lease, err
		}
		if attempt == maxAttempts {
			// The nodes kept disagreeing. Either racing acquirers kept
			// splitting the free slots between them, or every slot is held
			// on a quorum without any node being full on its own (holders
			// on {A,B} and {B,C} for a size of 2): ask the nodes which.
			free, err := a.c.quorumFree(ctx, a.name, a.size)
			switch {
			case err != nil:
				return Lease{}, err
			case len(free) == 0:
				return Lease{}, &FullError{Name: a.name, Size: a.size, Held: a.size}
			default:
				return Lease{}, &NoQuorumError{Op: "acquire", Quorum: a.c.quorum, Nodes: len(a.c.nodes), Split: true, Attempts: attempt}
			}
		}
		order = newProbe(a.size)
		// A short random pause keeps racing acquirers from colliding again in
		// lockstep; it stays far below the node timeout.
		if err := pause(ctx, time.Duration(rand.Int64N(int64(min(time.Duration(attempt)*time.Millisecond, maxPause))))); err != nil {
			return Lease{}, fmt.Errorf("acquiring a slot of semaphore %q: %w", a.name, err)
		}
	}
}

// settleSuspects tells every suspect node, in the background, the outcome
// of this acquisition: the slot it won, or -1 when it failed. The node
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

// follow moves a node that answered with a claim of another slot onto the
// won one: its claim is deleted and the won slot claimed there where it is
// free. Merely undoing the claim would leave the won slot free on that
// node while a quorum owns it, and such holes make the node pick, for the
// next acquirers, slots the other nodes refuse.
func (a *acquisition) follow(nodeIdx, won int) {
	_, err := a.c.nodes[nodeIdx].eval(a.c.scripts.settle, a.base, a.withRecord(a.holder, a.nonce, a.ttlMS, won)...)
	a.c.metrics.observeNode(a.c.nodes[nodeIdx].addr, err)
}

// background runs f after the call, tracked for Close and, once the
// acquisition won, for Renew and Release.
func (a *acquisition) background(f func()) {
	a.c.background.Add(1)
	a.after.Add(1)
	a.afterwards++
	go func() {
		defer a.c.background.Done()
		defer a.after.Done()
		f()
	}()
}

func (a *acquisition) failed(nodeIdx int, err error, failures []NodeError) []NodeError {
	a.suspects[nodeIdx] = true
	for _, f := range failures {
		if f.Node == a.c.nodes[nodeIdx].addr {
			return failures
		}
	}
	return append(failures, NodeError{Node: a.c.nodes[nodeIdx].addr, Err: err})
}

// pending marks the nodes that have not answered a round that was decided.
func (a *acquisition) pending(answered []bool) {
	for i, ok := range answered {
		if !ok {
			a.suspects[i] = true
		}
	}
}

func (a *acquisition) undo(nodeIdx, slot int) { a.c.undoClaim(nodeIdx, a.base, a.holder, slot) }

func (a *acquisition) lease(slot int) Lease {
	return Lease{Name: a.name, Slot: slot, Holder: a.holder, Deadline: a.began.Add(a.ttl - drift(a.ttl))}
}

func (a *acquisition) valid(roundBegan time.Time) bool {
	return a.ttl-time.Since(roundBegan)-drift(a.ttl) > 0
}

func (a *acquisition) cancelled(ctx context.Context) error {
	return fmt.Errorf("acquiring a slot of semaphore %q: %w", a.name, ctx.Err())
}

// arbitrated is the retry after racing acquirers split a round: one node,
// the arbiter, picks the slot, and the others are asked to claim that very
// slot. Racing acquirers are serialised by the arbiter, which gives each a
// different slot, so they stop splitting slots between them. It costs two
// round trips instead of one, only under contention. The arbiter is the
// first node, in configuration order, that answers with a free slot, so
// that every retrying acquirer, whatever its attempt, is serialised by the
// same node.
func (a *acquisition) arbitrated(ctx context.Context, order probe) (Lease, error) {
	c := a.c
	m := len(c.nodes)
	began := time.Now()
	var (
		failures []NodeError
		fps      []string // every node's fingerprints, read once an arbiter is full
	)
	arbiter, slot := -1, -1
	for idx := range m {
		v, err := c.nodes[idx].eval(c.scripts.acquire, a.base, a.withRecord(a.holder, a.ttlMS, a.size, order.start, a.nonce, order.stride)...)
		c.metrics.observeNode(c.nodes[idx].addr, err)
		claimed, err := parseAcquire(v, err, a.size)
		if err != nil {
			failures = a.failed(idx, err, failures)
			if len(failures) > m-c.quorum {
				return Lease{}, &NoQuorumError{Op: "acquire", Quorum: c.quorum, Nodes: m, Failures: failures}
			}
			continue
		}
		if claimed.ok {
			arbiter, slot = idx, claimed.slot
			break
		}
		if fps != nil {
			continue
		}
		// The arbiter has no free slot. Whether they are owned or only
		// claimed (by racing acquirers, or left on this node alone by
		// claims that outlived their acquisition), the other nodes'
		// fingerprints tell; reading them claims nothing that could get in
		// the way of the acquirers the arbiter did serve.
		more, moreFailures, err := c.nodeFingerprints(ctx, a.name, a.size, idx)
		if err != nil {
			return Lease{}, err
		}
		for _, f := range moreFailures {
			failures = a.failed(c.indexOf(f.Node), f.Err, failures)
		}
		if len(failures) > m-c.quorum {
			return Lease{}, &NoQuorumError{Op: "acquire", Quorum: c.quorum, Nodes: m, Failures: failures}
		}
		fps = append(more, claimed.fingerprints)
		if heldOnQuorum(fps, a.size, c.quorum) {
			return Lease{}, &FullError{Name: a.name, Size: a.size, Held: a.size}
		}
		// Some slot is not owned on a quorum: the next node that has a
		// free slot arbitrates. Every retrying acquirer that finds this
		// node full moves on alike, so they are still serialised by one
		// node.
	}
	if arbiter < 0 {
		return Lease{}, errSplit
	}
	if ctx.Err() != nil {
		a.undo(arbiter, slot)
		return Lease{}, a.cancelled(ctx)
	}
	replies := c.fanoutExcept(arbiter, func(n *node) (any, error) {
		return n.eval(c.scripts.claim, a.base, a.withRecord(a.holder, slot, a.ttlMS, a.nonce)...)
	})
	answered := make([]bool, m)
	answered[arbiter] = true
	claimedOn := []int{arbiter}
	undoAll := func() {
		for _, i := range claimedOn {
			a.undo(i, slot)
		}
	}
	undoLate := func(r reply) {
		if v, ok := r.val.(int64); r.err == nil && ok && v == 1 {
			a.undo(r.node, slot)
		}
	}
	for n := 0; n < m-1; n++ {
		select {
		case <-ctx.Done():
			undoAll()
			a.pending(answered)
			c.drain(replies, m-1-n, undoLate)
			return Lease{}, a.cancelled(ctx)
		case r := <-replies:
			answered[r.node] = true
			v, ok := r.val.(int64)
			if r.err == nil && !ok {
				r.err = &protocolError{what: "claim", reply: r.val}
			}
			switch {
			case r.err != nil:
				failures = a.failed(r.node, r.err, failures)
			case v == 1:
				claimedOn = append(claimedOn, r.node)
			}
		}
		remaining := m - 1 - n - 1
		switch {
		case len(claimedOn) >= c.quorum && a.valid(began):
			if remaining > 0 {
				a.background(func() { c.collect(replies, remaining, nil) })
			}
			return a.lease(slot), nil
		case len(claimedOn) >= c.quorum, len(claimedOn)+remaining < c.quorum:
			undoAll()
			a.pending(answered)
			c.drain(replies, remaining, undoLate)
			if len(failures) > m-c.quorum {
				return Lease{}, &NoQuorumError{Op: "acquire", Quorum: c.quorum, Nodes: m, Failures: failures}
			}
			return Lease{}, errSplit
		}
	}
	undoAll()
	return Lease{}, errSplit
}

// errSplit is the internal answer of a round for "enough nodes answered,
// but no slot won a quorum": worth another attempt.
var errSplit = &NoQuorumError{Split: true}

// parallel is one parallel round: every node runs the acquire script with
// the same probe order, and the answer is returned as soon as the outcome
// is decided; late answers are handled in the background.
func (a *acquisition) parallel(ctx context.Context, order probe) (Lease, error) {
	c := a.c
	began := time.Now()
	replies := c.fanout(func(n *node) (any, error) {
		return n.eval(c.scripts.acquire, a.base, a.withRecord(a.holder, a.ttlMS, a.size, order.start, a.nonce, order.stride)...)
	})

	m := len(c.nodes)
	claims := make([]int, m) // slot claimed per node, -1 for none
	for i := range claims {
		claims[i] = -1
	}
	var (
		answered        = make([]bool, m)
		failures        []NodeError
		fingerprints    []string // of the nodes that answered full
		best, bestCount = -1, 0
	)
	// late handles an answer that came after the round was decided, won
	// (keep is the slot) or lost (keep is -1).
	late := func(keep int) func(reply) {
		return func(r reply) {
			claimed, err := parseAcquire(r.val, r.err, a.size)
			switch {
			case err != nil:
				if keep >= 0 && !errors.Is(err, errSettledClaim) {
					// The claim may still run on the node after the timeout.
					a.settle(r.node, keep)
				}
			case !claimed.ok || claimed.slot == keep:
			case keep < 0:
				a.undo(r.node, claimed.slot)
			default:
				a.follow(r.node, keep)
			}
		}
	}
	// lose ends a round that gave no lease: claims undone (waiting for the
	// nodes when wait is set), nodes that have not answered marked for
	// settling, late claims undone.
	lose := func(remaining int, wait bool) {
		done := make(chan struct{}, m)
		pending := 0
		for i, slot := range claims {
			if slot >= 0 {
				pending++
				c.background.Add(1)
				go func() {
					defer c.background.Done()
					a.undo(i, slot)
					done <- struct{}{}
				}()
			}
		}
		if wait {
			for range pending {
				<-done
			}
		}
		a.pending(answered)
		c.drain(replies, remaining, late(-1))
	}

	for n := range m {
		select {
		case <-ctx.Done():
			lose(m-n, false)
			return Lease{}, a.cancelled(ctx)
		case r := <-replies:
			answered[r.node] = true
			claimed, err := parseAcquire(r.val, r.err, a.size)
			switch {
			case err != nil:
				failures = a.failed(r.node, err, failures)
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
		remaining := m - n - 1
		switch {
		case bestCount >= c.quorum && a.valid(began):
			for i, slot := range claims {
				if slot >= 0 && slot != best {
					a.background(func() { a.follow(i, best) })
				}
			}
			if remaining > 0 {
				a.background(func() { c.collect(replies, remaining, late(best)) })
			}
			return a.lease(best), nil
		case bestCount >= c.quorum:
			lose(remaining, false)
			return Lease{}, &NoQuorumError{Op: "acquire", Quorum: c.quorum, Nodes: m,
				Failures: append(failures, NodeError{Node: "all", Err: fmt.Errorf("the quorum answered after the lease's TTL of %s had run out", a.ttl)})}
		case len(failures) > m-c.quorum:
			lose(remaining, false)
			return Lease{}, &NoQuorumError{Op: "acquire", Quorum: c.quorum, Nodes: m, Failures: failures}
		case heldOnQuorum(fingerprints, a.size, c.quorum):
			// Every slot is owned by one holder on a quorum of the nodes that
			// answered full: full, whatever the others say. A claim on
			// another node (one that lost its data, or that is behind) can
			// only be for a slot owned elsewhere: it is undone.
			lose(remaining, false)
			return Lease{}, &FullError{Name: a.name, Size: a.size, Held: a.size}
		case remaining == 0, bestCount > 0 && bestCount+remaining < c.quorum:
			// No outcome can be reached in this round: claims split between
			// racing acquirers, or slots only claimed, not owned. The claims
			// are undone before the caller retries, since the acquire script
			// would otherwise answer them again to the same holder.
			lose(remaining, true)
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
			if fp == freeFingerprint {
				continue
			}
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
		if flag == 2 {
			return acquireAnswer{}, errSettledClaim
		}
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

// probe is the order in which the acquire script looks for a free slot:
// start, start+stride, start+2*stride... modulo the size. Every node of one
// attempt gets the same order, so that nodes in the same state pick the
// same slot. Each attempt draws its own, so that racing acquirers spread
// over the free slots: with a stride of 1, the free slot after a long run
// of held ones would draw every start that falls in the run, and near
// capacity most acquirers would race for a few slots.
type probe struct{ start, stride int }

func newProbe(size int) probe {
	p := probe{start: rand.IntN(size), stride: 1}
	if size > 2 {
		for {
			if s := 1 + rand.IntN(size-1); gcd(s, size) == 1 {
				p.stride = s
				break
			}
		}
	}
	return p
}

func gcd(a, b int) int {
	for b != 0 {
		a, b = b, a%b
	}
	return a
}

// errSettledClaim is a node's answer to a claim that arrived after its
// acquisition was settled there with another outcome; only late answers
// carry it.
var errSettledClaim = &protocolError{what: "acquire", reply: "a claim of a settled acquisition"}

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
