package semaphore

import (
	"context"
	"fmt"
	"time"
)

// Status is what the nodes hold for one semaphore.
type Status struct {
	Name   string
	Size   int
	Quorum int
	Nodes  []string
	Slots  []SlotStatus
	// Failures lists the nodes that did not answer; their columns in
	// SlotStatus are empty.
	Failures []NodeError
}

// SlotStatus is one slot as each node sees it.
type SlotStatus struct {
	Slot int
	// Holders[i] is the holder id on node i, "" when free or unknown.
	Holders []string
	// TTLs[i] is the remaining TTL on node i, 0 when free or unknown.
	TTLs []time.Duration
	// Holder is the holder seen on a quorum of nodes, "" when none: only it
	// owns the slot.
	Holder string
}

// Held counts the slots owned by some holder on a quorum of nodes.
func (s Status) Held() int {
	n := 0
	for _, sl := range s.Slots {
		if sl.Holder != "" {
			n++
		}
	}
	return n
}

// Inspect reads every slot of a semaphore on every node, for status pages
// and tests. It does not change anything.
func (c *Client) Inspect(ctx context.Context, name string, size int) (Status, error) {
	if err := validate(name, size, MinTTL); err != nil {
		return Status{}, err
	}
	base := c.base(name)
	replies := c.fanout(func(n *node) (any, error) { return n.eval(c.scripts.inspect, base, size) })
	st := Status{Name: name, Size: size, Quorum: c.quorum, Nodes: c.Nodes(), Slots: make([]SlotStatus, size)}
	m := len(c.nodes)
	for i := range st.Slots {
		st.Slots[i] = SlotStatus{Slot: i, Holders: make([]string, m), TTLs: make([]time.Duration, m)}
	}
	for answered := 0; answered < m; answered++ {
		select {
		case <-ctx.Done():
			c.drain(replies, m-answered, nil)
			return Status{}, fmt.Errorf("inspecting semaphore %q: %w", name, ctx.Err())
		case r := <-replies:
			arr, ok := r.val.([]any)
			if r.err == nil && (!ok || len(arr) != 2*size) {
				r.err = &protocolError{what: "inspect", reply: r.val}
			}
			if r.err != nil {
				st.Failures = append(st.Failures, NodeError{Node: c.nodes[r.node].addr, Err: r.err})
				continue
			}
			for s := range size {
				holder, _ := arr[2*s].([]byte)
				pttl, _ := arr[2*s+1].(int64)
				if len(holder) > 0 {
					st.Slots[s].Holders[r.node] = string(holder)
					st.Slots[s].TTLs[r.node] = time.Duration(pttl) * time.Millisecond
				}
			}
		}
	}
	if len(st.Failures) > m-c.quorum {
		return st, &NoQuorumError{Op: "inspect", Quorum: c.quorum, Nodes: m, Failures: st.Failures}
	}
	for i := range st.Slots {
		counts := map[string]int{}
		for _, h := range st.Slots[i].Holders {
			if h != "" {
				counts[h]++
				if counts[h] >= c.quorum {
					st.Slots[i].Holder = h
				}
			}
		}
	}
	return st, nil
}
