package loadtest

import (
	"slices"
	"sync"
	"time"
)

// Ledger records, per semaphore key, when slots may have been taken and
// given back and when reviews were denied, so that the run can be checked
// against the semaphore's two promises after it ends. Times are offsets
// on the tool's monotonic clock.
//
// The webhook takes a slot while it handles a review, so a slot of an
// admission A exists somewhere inside [A.sent, A.answered] and is held
// until its release is answered. Two bounds follow:
//
//   - certainly held at t: admissions answered by t whose release was not
//     yet sent. If that ever exceeds the size, more pods held a slot at
//     once than the semaphore allows: an over-admission.
//   - possibly held during a denial D: admissions sent before D.answered
//     whose release was not answered before D.sent, and reviews whose
//     outcome the tool never learnt (errors, timeouts), which may hold a
//     slot for as long as the run lasts. If fewer than size slots were
//     possibly held, a slot was free during the whole of D: a denial
//     while a slot was free.
//
// Both bounds are conservative: a denial counted here was wrong whatever
// the order of events inside the webhook, and so was an over-admission.
type Ledger struct {
	mu   sync.Mutex
	keys map[string]*keyLog
}

type keyLog struct {
	size int
	// holds are admissions and unknown outcomes.
	holds   []hold
	unknown int
	denials []span
}

type hold struct {
	sent, answered time.Duration
	// releaseSent and released are when the release was sent and answered;
	// never means the slot was kept (or the outcome is unknown).
	releaseSent, released time.Duration
}

type span struct{ sent, answered time.Duration }

const never = time.Duration(1<<63 - 1)

// NewLedger returns an empty ledger.
func NewLedger() *Ledger { return &Ledger{keys: map[string]*keyLog{}} }

func (l *Ledger) key(k string, size int) *keyLog {
	kl := l.keys[k]
	if kl == nil {
		kl = &keyLog{size: size}
		l.keys[k] = kl
	}
	return kl
}

// HoldID names a hold for Released.
type HoldID struct {
	key string
	i   int
}

// Admitted records an admission (or a review whose outcome is unknown,
// which may hold a slot).
func (l *Ledger) Admitted(key string, size int, sent, answered time.Duration) HoldID {
	l.mu.Lock()
	defer l.mu.Unlock()
	kl := l.key(key, size)
	kl.holds = append(kl.holds, hold{sent: sent, answered: answered, releaseSent: never, released: never})
	return HoldID{key: key, i: len(kl.holds) - 1}
}

// Unknown records a review whose outcome the tool never learnt (a
// transport error, a timeout, an unreadable answer): it may hold a slot
// from sent on, for the rest of the run, but is never certainly held.
func (l *Ledger) Unknown(key string, size int, sent time.Duration) {
	l.mu.Lock()
	defer l.mu.Unlock()
	kl := l.key(key, size)
	kl.holds = append(kl.holds, hold{sent: sent, answered: never, releaseSent: never, released: never})
	kl.unknown++
}

// Released records that the slot of id was given back: the release was
// sent at sent and answered (released) at answered.
func (l *Ledger) Released(id HoldID, sent, answered time.Duration) {
	l.mu.Lock()
	defer l.mu.Unlock()
	h := &l.keys[id.key].holds[id.i]
	h.releaseSent, h.released = sent, answered
}

// ReleaseFailed records a release that was sent but not confirmed: the
// slot is no longer certainly held, and still possibly held.
func (l *Ledger) ReleaseFailed(id HoldID, sent time.Duration) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.keys[id.key].holds[id.i].releaseSent = sent
}

// Denied records a denial for a full semaphore (or any other denial of a
// pod that names a semaphore).
func (l *Ledger) Denied(key string, size int, sent, answered time.Duration) {
	l.mu.Lock()
	defer l.mu.Unlock()
	kl := l.key(key, size)
	kl.denials = append(kl.denials, span{sent: sent, answered: answered})
}

// Verdict is the ledger's check of a run.
type Verdict struct {
	Keys int `json:"keys"`
	// Admitted counts admissions over all keys.
	Admitted int `json:"admitted"`
	// MaxCertainlyHeld is the largest number of slots of one key certainly
	// held at once, and MaxSize that key's size.
	MaxCertainlyHeld int `json:"max_certainly_held"`
	// OverAdmissions is the number of admissions beyond the size, summed
	// over the keys' worst moments.
	OverAdmissions int `json:"over_admissions"`
	// DenialsWhileFree counts denials during which fewer than size slots
	// were possibly held.
	DenialsWhileFree int `json:"denials_while_free"`
	// Unknown counts reviews whose outcome the tool never learnt.
	Unknown int `json:"unknown_outcomes"`
	// Held is, per key, the slots certainly held at the end (admissions
	// whose release was never sent), and MayHold those possibly held
	// (adding unknown outcomes and unconfirmed releases): the nodes must
	// report a number in between.
	Held    map[string]int `json:"-"`
	MayHold map[string]int `json:"-"`
	Sizes   map[string]int `json:"-"`
}

// Check evaluates the ledger.
func (l *Ledger) Check() Verdict {
	l.mu.Lock()
	defer l.mu.Unlock()
	v := Verdict{Keys: len(l.keys), Held: map[string]int{}, MayHold: map[string]int{}, Sizes: map[string]int{}}
	for k, kl := range l.keys {
		v.Admitted += len(kl.holds) - kl.unknown
		v.Unknown += kl.unknown
		held := maxCertainlyHeld(kl.holds)
		v.MaxCertainlyHeld = max(v.MaxCertainlyHeld, held)
		v.OverAdmissions += max(0, held-kl.size)
		v.DenialsWhileFree += denialsWhileFree(kl)
		kept, may := 0, 0
		for _, h := range kl.holds {
			if h.released == never {
				may++
				if h.releaseSent == never && h.answered != never {
					kept++
				}
			}
		}
		v.Held[k], v.MayHold[k], v.Sizes[k] = kept, may, kl.size
	}
	return v
}

// maxCertainlyHeld sweeps +1 at each admission's answer and -1 at each
// release's sending; at equal times the release goes first, so that the
// bound stays a lower one.
func maxCertainlyHeld(holds []hold) int {
	type event struct {
		at    time.Duration
		delta int
	}
	events := make([]event, 0, 2*len(holds))
	for _, h := range holds {
		if h.answered == never {
			continue // unknown outcome: possibly, never certainly held
		}
		events = append(events, event{h.answered, +1})
		if h.releaseSent != never {
			events = append(events, event{h.releaseSent, -1})
		}
	}
	slices.SortFunc(events, func(a, b event) int {
		if a.at != b.at {
			if a.at < b.at {
				return -1
			}
			return 1
		}
		return a.delta - b.delta
	})
	n, best := 0, 0
	for _, e := range events {
		n += e.delta
		best = max(best, n)
	}
	return best
}

// denialsWhileFree counts denials D with fewer than size holds H such that
// H.sent < D.answered and H.released > D.sent. Since H.released > H.sent,
// that count is #{H.sent < D.answered} - #{H.released <= D.sent}.
func denialsWhileFree(kl *keyLog) int {
	if len(kl.denials) == 0 {
		return 0
	}
	sent := make([]time.Duration, len(kl.holds))
	released := make([]time.Duration, len(kl.holds))
	for i, h := range kl.holds {
		sent[i], released[i] = h.sent, h.released
	}
	slices.Sort(sent)
	slices.Sort(released)
	n := 0
	for _, d := range kl.denials {
		before, _ := slices.BinarySearch(sent, d.answered) // #{sent < d.answered}
		gone, found := slices.BinarySearch(released, d.sent)
		for found && gone < len(released) && released[gone] == d.sent {
			gone++ // #{released <= d.sent}
		}
		if before-gone < kl.size {
			n++
		}
	}
	return n
}
