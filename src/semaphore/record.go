package semaphore

import (
	"context"
	"fmt"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/gomodule/redigo/redis"
)

// Record is what Redis keeps about a lease besides its slot: enough for the
// reconciler to tell, after any restart, whether the lease's pod exists and
// for how long the lease has been held. It lives and dies with the lease.
type Record struct {
	// Granted is when the webhook admitted the pod.
	Granted time.Time
	// Pod is the pod's name, or its generateName followed by "*" when the
	// API server had not chosen the name yet.
	Pod string
	// Owner is "Kind/name" of the pod's controller, empty when none;
	// OwnerAPIVersion and OwnerUID complete the reference for an Event.
	Owner           string
	OwnerAPIVersion string
	OwnerUID        string
	// UID is the pod's uid once known; admission does not know it.
	UID string
}

// args are the record's script arguments; a nil record writes nothing and
// only gives an existing record the claim's TTL.
func (r *Record) args() []any {
	if r == nil {
		return []any{"", "", "", "", ""}
	}
	return []any{strconv.FormatInt(r.Granted.UnixMilli(), 10), r.Pod, r.Owner, r.OwnerAPIVersion, r.OwnerUID}
}

// withRecord appends the acquisition's record arguments to a script's.
func (a *acquisition) withRecord(args ...any) []any {
	record := a.record
	if record == nil {
		record = (*Record)(nil).args()
	}
	return append(args, record...)
}

// parseRecord reads an HGETALL answer; nil when the hash is empty.
func parseRecord(v any) *Record {
	fields, err := redis.StringMap(v, nil)
	if err != nil || len(fields) == 0 {
		return nil
	}
	r := &Record{Pod: fields["pod"], Owner: fields["owner"], OwnerAPIVersion: fields["owner_api"],
		OwnerUID: fields["owner_uid"], UID: fields["uid"]}
	if ms, err := strconv.ParseInt(fields["granted"], 10, 64); err == nil {
		r.Granted = time.UnixMilli(ms)
	}
	return r
}

// AcquireWithRecord is AcquireAs that also writes the lease record on every
// node that claims the slot, in the same script as the claim.
func (c *Client) AcquireWithRecord(ctx context.Context, name string, size int, ttl time.Duration, holder string, rec Record) (Lease, error) {
	return c.acquireAs(ctx, name, size, ttl, holder, &rec)
}

// HeldLease is a lease as the nodes hold it, with its record.
type HeldLease struct {
	Name   string
	Slot   int
	Holder string
	// Nodes is how many nodes hold the holder's id in the slot; the lease
	// owns the slot when Held (a quorum of them).
	Nodes int
	Held  bool
	// TTL is the longest remaining TTL among those nodes.
	TTL time.Duration
	// Record is nil for a lease granted by a release before records
	// existed: nothing may release it but its holder.
	Record *Record
}

// Lease is the lease to renew or release.
func (h HeldLease) Lease() Lease { return Lease{Name: h.Name, Slot: h.Slot, Holder: h.Holder} }

// Leases lists the slots of a semaphore that a holder owns on a quorum of
// nodes, with each holder's record, in slot order.
func (c *Client) Leases(ctx context.Context, name string, size int) ([]HeldLease, error) {
	if err := validate(name, size, MinTTL); err != nil {
		return nil, err
	}
	base := c.base(name)
	answers, err := c.everyNode(ctx, "leases", func(n *node) (any, error) { return n.eval(c.scripts.leases, base, size) })
	if err != nil {
		return nil, fmt.Errorf("listing the leases of semaphore %q: %w", name, err)
	}
	tally := newLeaseTally(name)
	for _, answer := range answers {
		slots, _ := answer.([]any)
		for slot, entry := range slots {
			e, _ := entry.([]any)
			if len(e) != 3 {
				continue
			}
			holder, _ := redis.String(e[0], nil)
			pttl, _ := e[1].(int64)
			tally.add(holder, slot, pttl, e[2])
		}
	}
	var out []HeldLease
	for _, l := range tally.leases(c.quorum) {
		if l.Held {
			out = append(out, l)
		}
	}
	return out, nil
}

// RecordedLeases lists every lease that has a record, on every semaphore:
// it finds the records with SCAN on every node (nothing keeps a list of
// semaphores), then asks every node which slot each holder claims there.
// Leases claimed on fewer nodes than a quorum are included (Held false): a
// failed acquisition's leftovers are worth releasing too.
func (c *Client) RecordedLeases(ctx context.Context) ([]HeldLease, error) {
	pattern := globEscape(c.prefix) + ":{*}:record:*"
	answers, err := c.everyNode(ctx, "scan", func(n *node) (any, error) { return n.scan(ctx, pattern) })
	if err != nil {
		return nil, fmt.Errorf("listing the lease records: %w", err)
	}
	holders := map[string]map[string]bool{}
	for _, answer := range answers {
		keys, _ := answer.([]string)
		for _, k := range keys {
			name, holder, ok := c.parseRecordKey(k)
			if !ok {
				continue
			}
			if holders[name] == nil {
				holders[name] = map[string]bool{}
			}
			holders[name][holder] = true
		}
	}
	names := make([]string, 0, len(holders))
	for name := range holders {
		names = append(names, name)
	}
	sort.Strings(names)
	var out []HeldLease
	for _, name := range names {
		leases, err := c.holderLeases(ctx, name, sortedKeys(holders[name]))
		if err != nil {
			return out, err
		}
		out = append(out, leases...)
	}
	return out, nil
}

// holdersPerCall bounds the holders one script call reads.
const holdersPerCall = 256

func (c *Client) holderLeases(ctx context.Context, name string, holders []string) ([]HeldLease, error) {
	base := c.base(name)
	tally := newLeaseTally(name)
	for len(holders) > 0 {
		batch := holders[:min(holdersPerCall, len(holders))]
		holders = holders[len(batch):]
		args := make([]any, len(batch))
		for i, h := range batch {
			args[i] = h
		}
		answers, err := c.everyNode(ctx, "holders", func(n *node) (any, error) { return n.eval(c.scripts.holders, base, args...) })
		if err != nil {
			return nil, fmt.Errorf("reading the leases of semaphore %q: %w", name, err)
		}
		for _, answer := range answers {
			entries, _ := answer.([]any)
			for i, entry := range entries {
				e, _ := entry.([]any)
				if len(e) != 3 || i >= len(batch) {
					continue
				}
				slot, _ := e[0].(int64)
				pttl, _ := e[1].(int64)
				if slot < 0 {
					tally.add(batch[i], -1, 0, e[2])
					continue
				}
				tally.add(batch[i], int(slot), pttl, e[2])
			}
		}
	}
	var out []HeldLease
	for _, l := range tally.leases(c.quorum) {
		if l.Nodes > 0 && l.Record != nil {
			out = append(out, l)
		}
	}
	return out, nil
}

// everyNode runs op on every node and returns the answers of those that
// answered, or a *NoQuorumError when fewer than a quorum did.
func (c *Client) everyNode(ctx context.Context, op string, f func(*node) (any, error)) ([]any, error) {
	replies := c.fanout(f)
	m := len(c.nodes)
	var (
		answers  []any
		failures []NodeError
	)
	for received := 0; received < m; received++ {
		select {
		case <-ctx.Done():
			c.drain(replies, m-received, nil)
			return nil, ctx.Err()
		case r := <-replies:
			if r.err != nil {
				failures = append(failures, NodeError{Node: c.nodes[r.node].addr, Err: r.err})
				continue
			}
			answers = append(answers, r.val)
		}
	}
	if len(answers) < c.quorum {
		return nil, &NoQuorumError{Op: op, Quorum: c.quorum, Nodes: m, Failures: failures}
	}
	return answers, nil
}

// leaseTally counts, per holder and slot, the nodes that hold a lease.
type leaseTally struct {
	name    string
	order   []string
	holders map[string]*heldCount
}

type heldCount struct {
	slots  map[int]int
	ttl    map[int]time.Duration
	record *Record
}

func newLeaseTally(name string) *leaseTally {
	return &leaseTally{name: name, holders: map[string]*heldCount{}}
}

func (t *leaseTally) add(holder string, slot int, pttl int64, record any) {
	if holder == "" {
		return
	}
	h := t.holders[holder]
	if h == nil {
		h = &heldCount{slots: map[int]int{}, ttl: map[int]time.Duration{}}
		t.holders[holder] = h
		t.order = append(t.order, holder)
	}
	if h.record == nil {
		h.record = parseRecord(record)
	}
	if slot < 0 {
		return
	}
	h.slots[slot]++
	h.ttl[slot] = max(h.ttl[slot], time.Duration(pttl)*time.Millisecond)
}

// leases answers, per holder, the slot most nodes hold it in, sorted by
// semaphore and slot.
func (t *leaseTally) leases(quorum int) []HeldLease {
	out := make([]HeldLease, 0, len(t.order))
	for _, holder := range t.order {
		h := t.holders[holder]
		best, count := -1, 0
		for slot, n := range h.slots {
			if n > count || (n == count && slot < best) {
				best, count = slot, n
			}
		}
		out = append(out, HeldLease{Name: t.name, Slot: best, Holder: holder, Nodes: count,
			Held: count >= quorum, TTL: h.ttl[best], Record: h.record})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Slot < out[j].Slot })
	return out
}

// parseRecordKey splits "<prefix>:{<name>}:record:<holder>".
func (c *Client) parseRecordKey(key string) (name, holder string, ok bool) {
	rest, found := strings.CutPrefix(key, c.prefix+":{")
	if !found {
		return "", "", false
	}
	i := strings.LastIndex(rest, "}:record:")
	if i <= 0 {
		return "", "", false
	}
	name, holder = rest[:i], rest[i+len("}:record:"):]
	return name, holder, ValidHolderID(holder)
}

func globEscape(s string) string {
	var b strings.Builder
	for _, r := range s {
		if strings.ContainsRune(`*?[]\{}`, r) {
			b.WriteByte('\\')
		}
		b.WriteRune(r)
	}
	return b.String()
}

func sortedKeys(m map[string]bool) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// scanBatch is the COUNT hint of each SCAN step.
const scanBatch = 1000

// scan answers every key matching pattern, each SCAN step bounded by the
// node timeout and the whole walk by ctx.
func (n *node) scan(ctx context.Context, pattern string) (any, error) {
	var keys []string
	cursor := "0"
	for {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		v, err := n.command("SCAN", cursor, "MATCH", pattern, "COUNT", scanBatch)
		if err != nil {
			return nil, err
		}
		parts, err := redis.Values(v, nil)
		if err != nil || len(parts) != 2 {
			return nil, &protocolError{what: "scan", reply: v}
		}
		cursor, err = redis.String(parts[0], nil)
		if err != nil {
			return nil, &protocolError{what: "scan", reply: v}
		}
		batch, err := redis.Strings(parts[1], nil)
		if err != nil {
			return nil, &protocolError{what: "scan", reply: v}
		}
		keys = append(keys, batch...)
		if cursor == "0" {
			return keys, nil
		}
	}
}

// command runs one plain command within the node timeout.
func (n *node) command(name string, args ...any) (any, error) {
	ctx, cancel := context.WithTimeout(context.Background(), n.timeout)
	defer cancel()
	conn, err := n.pool.Load().GetContext(ctx)
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	v, err := redis.DoWithTimeout(conn, n.timeout, name, args...)
	if brokenConn(err) {
		n.renewPool()
	}
	return v, err
}
