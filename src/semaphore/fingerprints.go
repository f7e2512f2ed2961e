package semaphore

import (
	"context"
	"fmt"
)

// freeFingerprint stands for a free slot in fingerprint answers.
const freeFingerprint = "------"

// heldOnQuorum reports whether, for every slot, one holder fingerprint shows
// on at least quorum of the full nodes' answers.
func heldOnQuorum(fingerprints []string, size, quorum int) bool {
	if len(fingerprints) < quorum {
		return false
	}
	for slot := range size {
		if !slotHeldOnQuorum(fingerprints, slot, quorum) {
			return false
		}
	}
	return true
}

func slotHeldOnQuorum(fingerprints []string, slot, quorum int) bool {
	lo, hi := slot*fpLen, (slot+1)*fpLen
	for i := 0; i+quorum <= len(fingerprints); i++ {
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
		if n >= quorum {
			return true
		}
	}
	return false
}

// nodeFingerprints reads the holder fingerprints of every slot on every
// node but skip, without changing anything.
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

// acquireAnswer is one node's answer to the acquire script: the slot it
// claimed (ok), or the fingerprints of every slot's holder when it had none
// free.
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

// errSettledClaim is a node's answer to a claim that arrived after its
// acquisition was settled there with another outcome; only answers that
// arrive after the decision carry it.
var errSettledClaim = &protocolError{what: "acquire", reply: "a claim of a settled acquisition"}
