// Package holders checks the semaphore's promise from the outside: at no
// instant more holders of a semaphore than it has slots, and never two
// holders of one slot. Each client records the windows in which it knows it
// held its slot (a Tenure); Check sweeps all of them.
//
// A window is what the client can prove, never more: it opens when the
// client saw the admission answer or a successful renewal, and closes when
// the lease's validity from that answer runs out (the request's send time
// plus the TTL, less Redlock's drift allowance), or when the client starts
// to release, whichever comes first. A violation among such windows is a
// real over-admission, not an artefact of network delays.
package holders

import (
	"cmp"
	"fmt"
	"maps"
	"slices"
	"strings"
	"sync"
	"time"
)

// Interval is one window [From, To) in which Holder held Slot of Semaphore.
type Interval struct {
	Semaphore string
	Slot      int
	Holder    string
	From, To  time.Time
}

// Kind says what a violation broke.
type Kind string

const (
	// OverSize: more distinct holders of a semaphore than its size.
	OverSize Kind = "more holders than slots"
	// SharedSlot: two holders of the same slot at once.
	SharedSlot Kind = "two holders of one slot"
)

// Violation is one instant at which the promise was broken, with the
// intervals active then.
type Violation struct {
	Kind      Kind
	Semaphore string
	At        time.Time
	Active    []Interval
}

func (v Violation) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s in %q at %s:", v.Kind, v.Semaphore, v.At.Format("15:04:05.000000"))
	for _, iv := range v.Active {
		fmt.Fprintf(&b, " [slot %d holder %.8s %s..%s]", iv.Slot, iv.Holder,
			iv.From.Format("04:05.000000"), iv.To.Format("04:05.000000"))
	}
	return b.String()
}

// Check sweeps the intervals of every semaphore in sizes and returns each
// violation once per excursion (the first instant it happened, until the
// count drops back). Intervals of semaphores missing from sizes are an
// error of the caller and reported as such.
func Check(intervals []Interval, sizes map[string]int) ([]Violation, error) {
	bySem := map[string][]Interval{}
	for _, iv := range intervals {
		if _, ok := sizes[iv.Semaphore]; !ok {
			return nil, fmt.Errorf("holders: interval of semaphore %q, whose size is unknown", iv.Semaphore)
		}
		if !iv.From.Before(iv.To) {
			continue // empty: the client never knew it held the slot
		}
		bySem[iv.Semaphore] = append(bySem[iv.Semaphore], iv)
	}
	var out []Violation
	for _, sem := range slices.Sorted(maps.Keys(bySem)) {
		out = append(out, sweep(sem, sizes[sem], bySem[sem])...)
	}
	return out, nil
}

type event struct {
	at    time.Time
	start bool
	iv    int // index into the semaphore's intervals
}

func sweep(sem string, size int, ivs []Interval) []Violation {
	events := make([]event, 0, 2*len(ivs))
	for i, iv := range ivs {
		events = append(events, event{at: iv.From, start: true, iv: i}, event{at: iv.To, iv: i})
	}
	// Intervals are half-open: at equal times an end comes before a start,
	// so a release and the next holder's admission at the same instant do
	// not overlap.
	slices.SortFunc(events, func(a, b event) int {
		if c := a.at.Compare(b.at); c != 0 {
			return c
		}
		switch {
		case a.start == b.start:
			return cmp.Compare(a.iv, b.iv)
		case a.start:
			return 1
		default:
			return -1
		}
	})
	var (
		out     []Violation
		holders = map[string]int{}         // active intervals per holder
		slots   = map[int]map[string]int{} // active intervals per holder per slot
		active  = map[int]bool{}           // active interval indexes
		over    bool                       // inside an OverSize excursion
		shared  = map[int]bool{}           // slots inside a SharedSlot excursion
	)
	snapshot := func() []Interval {
		idx := slices.Sorted(maps.Keys(active))
		s := make([]Interval, len(idx))
		for i, j := range idx {
			s[i] = ivs[j]
		}
		return s
	}
	for _, e := range events {
		iv := ivs[e.iv]
		if !e.start {
			delete(active, e.iv)
			if holders[iv.Holder]--; holders[iv.Holder] == 0 {
				delete(holders, iv.Holder)
			}
			if slots[iv.Slot][iv.Holder]--; slots[iv.Slot][iv.Holder] == 0 {
				delete(slots[iv.Slot], iv.Holder)
			}
			if len(holders) <= size {
				over = false
			}
			if len(slots[iv.Slot]) <= 1 {
				shared[iv.Slot] = false
			}
			continue
		}
		active[e.iv] = true
		holders[iv.Holder]++
		if slots[iv.Slot] == nil {
			slots[iv.Slot] = map[string]int{}
		}
		slots[iv.Slot][iv.Holder]++
		if len(holders) > size && !over {
			over = true
			out = append(out, Violation{Kind: OverSize, Semaphore: sem, At: e.at, Active: snapshot()})
		}
		if len(slots[iv.Slot]) > 1 && !shared[iv.Slot] {
			shared[iv.Slot] = true
			out = append(out, Violation{Kind: SharedSlot, Semaphore: sem, At: e.at, Active: snapshot()})
		}
	}
	return out
}

// Tenure is one holder's view of its lease, built as the client goes.
// It is not safe for concurrent use: one client owns it.
type Tenure struct {
	semaphore string
	slot      int
	holder    string
	windows   []Interval
	released  bool
}

// NewTenure starts the tenure of a lease the client was just given.
func NewTenure(semaphore string, slot int, holder string) *Tenure {
	return &Tenure{semaphore: semaphore, slot: slot, holder: holder}
}

// Held records an answer that proved the lease held: seen at seen (when the
// answer arrived), valid until validUntil (the request's send time plus the
// TTL, less the drift allowance). Answers seen after a release are ignored.
// For a renewal, Renewing must have been called when it was sent.
func (t *Tenure) Held(seen, validUntil time.Time) {
	if t.released || !seen.Before(validUntil) {
		return
	}
	t.windows = append(t.windows, Interval{Semaphore: t.semaphore, Slot: t.slot, Holder: t.holder, From: seen, To: validUntil})
}

// Renewing records a request that may set the lease's TTL anew, sent at
// sent with the given validity (sent plus the new TTL, less the drift
// allowance). It must be called before the request goes out, whatever
// its answer: a renewal may be applied even when its answer is lost, and
// a renewal can shorten a lease (the startup lease is longer than a running
// pod's), so from then on no earlier answer proves the lease beyond
// validUntil.
func (t *Tenure) Renewing(sent, validUntil time.Time) {
	for i := range t.windows {
		if t.windows[i].To.After(validUntil) {
			t.windows[i].To = later(validUntil, t.windows[i].From)
		}
	}
}

func later(a, b time.Time) time.Time {
	if a.After(b) {
		return a
	}
	return b
}

// Release records that the client started to give the slot back at at:
// from then on it no longer counts on the slot.
func (t *Tenure) Release(at time.Time) {
	if t.released {
		return
	}
	t.released = true
	for i := range t.windows {
		if t.windows[i].To.After(at) {
			t.windows[i].To = at
		}
	}
}

// ValidUntil is the end of the last window: when the slot is free at the
// latest if the holder vanished (zero when it never held it).
func (t *Tenure) ValidUntil() time.Time {
	var last time.Time
	for _, w := range t.windows {
		if w.To.After(last) {
			last = w.To
		}
	}
	return last
}

// Intervals are the tenure's windows, overlapping ones merged.
func (t *Tenure) Intervals() []Interval {
	ws := slices.Clone(t.windows)
	slices.SortFunc(ws, func(a, b Interval) int { return a.From.Compare(b.From) })
	var out []Interval
	for _, w := range ws {
		if !w.From.Before(w.To) {
			continue
		}
		if n := len(out); n > 0 && !w.From.After(out[n-1].To) {
			if w.To.After(out[n-1].To) {
				out[n-1].To = w.To
			}
			continue
		}
		out = append(out, w)
	}
	return out
}

// Recorder collects the intervals of many clients; it is safe for
// concurrent use.
type Recorder struct {
	mu        sync.Mutex
	intervals []Interval
	sizes     map[string]int
}

// NewRecorder checks semaphores of the given sizes.
func NewRecorder(sizes map[string]int) *Recorder {
	return &Recorder{sizes: sizes}
}

// Add records a finished tenure.
func (r *Recorder) Add(t *Tenure) {
	ivs := t.Intervals()
	r.mu.Lock()
	defer r.mu.Unlock()
	r.intervals = append(r.intervals, ivs...)
}

// Len is the number of intervals recorded.
func (r *Recorder) Len() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.intervals)
}

// Check runs Check over everything recorded.
func (r *Recorder) Check() ([]Violation, error) {
	r.mu.Lock()
	ivs := slices.Clone(r.intervals)
	r.mu.Unlock()
	return Check(ivs, r.sizes)
}
