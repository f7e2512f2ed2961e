package semaphore

import (
	"context"
	crand "crypto/rand"
	"encoding/hex"
	"fmt"
	"math/rand/v2"
	"sync"
	"time"
)

// Acquire takes a free slot of the semaphore name of the given size, for ttl,
// with a fresh holder id. It answers a *FullError when every slot is held, a
// *NoQuorumError when too few nodes answered, or the context's error.
func (c *Client) Acquire(ctx context.Context, name string, size int, ttl time.Duration) (Lease, error) {
	return c.AcquireAs(ctx, name, size, ttl, NewHolderID())
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
		a.settleSuspects(noSlot)
	} else {
		a.settleSuspects(lease.Slot)
		a.holdRenewAndReleaseUntilSettled()
	}
	c.metrics.observeOp("acquire", err, time.Since(a.began))
	return lease, err
}

// noSlot stands for "no slot": a node that claimed none, an acquisition
// that won none.
const noSlot = -1

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
	// leftRunning tracks the work a won acquisition leaves behind (answers
	// after the decision, undoing and settling claims); startedInBackground
	// counts it. Both are used by the calling goroutine only until it
	// returns.
	leftRunning         sync.WaitGroup
	startedInBackground int
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

// run makes attempts until one decides: the first claims on every node at
// once, the retries go through an arbiter.
func (a *acquisition) run(ctx context.Context) (Lease, error) {
	order := newProbe(a.size)
	for attempt := 1; ; attempt++ {
		var (
			lease Lease
			err   error
		)
		if attempt == 1 {
			lease, err = a.claimOnEveryNode(ctx, order)
		} else {
			lease, err = a.claimThroughArbiter(ctx, order)
		}
		if err != errSplit {
			return lease, err
		}
		if attempt == maxAttempts {
			return Lease{}, a.whyAttemptsSplit(ctx, attempt)
		}
		order = newProbe(a.size)
		if err := a.pauseBeforeRetry(ctx, attempt); err != nil {
			return Lease{}, err
		}
	}
}

// whyAttemptsSplit answers the error of an acquisition whose nodes kept
// disagreeing. Either racing acquirers kept splitting the free slots between
// them, or every slot is held on a quorum without any node being full on its
// own (holders on {A,B} and {B,C} for a size of 2): the nodes tell which.
func (a *acquisition) whyAttemptsSplit(ctx context.Context, attempts int) error {
	free, err := a.c.quorumFree(ctx, a.name, a.size)
	switch {
	case err != nil:
		return err
	case len(free) == 0:
		return a.full()
	default:
		return &NoQuorumError{Op: "acquire", Quorum: a.c.quorum, Nodes: len(a.c.nodes), Split: true, Attempts: attempts}
	}
}

// pauseBeforeRetry waits a short random time, so that racing acquirers do
// not collide again in lockstep; it stays far below the node timeout.
func (a *acquisition) pauseBeforeRetry(ctx context.Context, attempt int) error {
	longest := min(time.Duration(attempt)*time.Millisecond, maxPause)
	if err := pause(ctx, time.Duration(rand.Int64N(int64(longest)))); err != nil {
		return fmt.Errorf("acquiring a slot of semaphore %q: %w", a.name, err)
	}
	return nil
}

// runAcquireScript claims, on one node, the first free slot in order.
func (a *acquisition) runAcquireScript(n *node, order probe) (any, error) {
	return n.eval(a.c.scripts.acquire, a.base, a.withRecord(a.holder, a.ttlMS, a.size, order.start, a.nonce, order.stride)...)
}

// failed records a node's failure once and makes the node a suspect.
func (a *acquisition) failed(nodeIdx int, err error, failures []NodeError) []NodeError {
	a.suspects[nodeIdx] = true
	for _, f := range failures {
		if f.Node == a.c.nodes[nodeIdx].addr {
			return failures
		}
	}
	return append(failures, NodeError{Node: a.c.nodes[nodeIdx].addr, Err: err})
}

func (a *acquisition) tooManyFailed(failures []NodeError) bool {
	return len(failures) > len(a.c.nodes)-a.c.quorum
}

func (a *acquisition) noQuorum(failures []NodeError) error {
	return &NoQuorumError{Op: "acquire", Quorum: a.c.quorum, Nodes: len(a.c.nodes), Failures: failures}
}

func (a *acquisition) full() error {
	return &FullError{Name: a.name, Size: a.size, Held: a.size}
}

func (a *acquisition) cancelled(ctx context.Context) error {
	return fmt.Errorf("acquiring a slot of semaphore %q: %w", a.name, ctx.Err())
}

func (a *acquisition) lease(slot int) Lease {
	return Lease{Name: a.name, Slot: slot, Holder: a.holder, Deadline: a.began.Add(a.ttl - drift(a.ttl))}
}

// validSince reports whether a lease whose round began then still has some
// validity left.
func (a *acquisition) validSince(roundBegan time.Time) bool {
	return a.ttl-time.Since(roundBegan)-drift(a.ttl) > 0
}

// errSplit is the internal answer of a round for "enough nodes answered,
// but no slot won a quorum": worth another attempt.
var errSplit = &NoQuorumError{Split: true}

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
