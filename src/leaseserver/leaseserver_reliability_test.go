package leaseserver_test

// Bad inputs of the catalogue in docs/reliability.md that the lease API's
// own tests do not cover: every malformed holder id, a holder acting on
// another slot or semaphore, and releases and renewals replayed after the
// slot changed hands.

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/kaidotio/prometheus-metrics-proxy-hook/src/leaseapi"
)

// holding is the set of nodes that hold a lease now. An acquisition
// returns once a quorum holds it; the last node may hold it later, or never
// (it answered another slot to a racing acquisition first).
func (e *env) holding(t *testing.T, l leaseapi.Lease, size int) map[int]bool {
	t.Helper()
	st, err := e.sem.Inspect(context.Background(), l.Name(), size)
	if err != nil {
		t.Fatal(err)
	}
	out := map[int]bool{}
	for i, h := range st.Slots[l.Slot].Holders {
		if h == l.Holder {
			out[i] = true
		}
	}
	if len(out) < st.Quorum {
		t.Fatalf("the lease %+v is held on %d nodes only, fewer than a quorum", l, len(out))
	}
	return out
}

// untouched checks that a lease is still held on every node that held it
// before (held), owned on a quorum, with at least minTTL left everywhere.
func (e *env) untouched(t *testing.T, l leaseapi.Lease, size int, held map[int]bool, minTTL time.Duration) {
	t.Helper()
	st, err := e.sem.Inspect(context.Background(), l.Name(), size)
	if err != nil {
		t.Fatal(err)
	}
	sl := st.Slots[l.Slot]
	if sl.Holder != l.Holder {
		t.Fatalf("slot %d is owned by %q, want %q", l.Slot, sl.Holder, l.Holder)
	}
	for i, h := range sl.Holders {
		if held[i] && (h != l.Holder || sl.TTLs[i] < minTTL) {
			t.Fatalf("slot %d on node %d: holder %q TTL %s; want %q with at least %s", l.Slot, i, h, sl.TTLs[i], l.Holder, minTTL)
		}
	}
}

func TestMalformedHolderIDs(t *testing.T) {
	e := newEnv(t)
	victim := e.acquire(t, "team-a", "ids", 1)
	held := e.holding(t, victim, 1)
	raw := func(holder string) string {
		return `{"namespace":"team-a","key":"ids","slot":0,"holder":` + holder + `}`
	}
	quoted := func(s string) string { b, _ := json.Marshal(s); return string(b) }
	cases := []struct {
		name string
		body string
	}{
		{"upper case", raw(quoted(strings.ToUpper(victim.Holder)))},
		{"31 digits", raw(quoted(victim.Holder[:31]))},
		{"33 digits", raw(quoted(victim.Holder + "0"))},
		{"not hex", raw(quoted("g" + victim.Holder[1:]))},
		{"0x prefix", raw(quoted("0x" + victim.Holder[2:]))},
		{"spaces around", raw(quoted(" " + victim.Holder + " "))},
		{"non-ASCII digit", raw(quoted("٣" + victim.Holder[2:]))},
		{"NUL inside", raw(quoted(victim.Holder[:16] + "\x00" + victim.Holder[17:]))},
		{"empty", raw(`""`)},
		{"null", raw(`null`)},
		{"a number", raw(`12345678901234567890123456789012`)},
		{"an array", raw(`["` + victim.Holder + `"]`)},
		{"absent", `{"namespace":"team-a","key":"ids","slot":0}`},
	}
	for _, tc := range cases {
		for _, path := range []string{leaseapi.RenewPath, leaseapi.ReleasePath, leaseapi.AcquirePath} {
			t.Run(tc.name+path, func(t *testing.T) {
				body := tc.body
				if path == leaseapi.AcquirePath {
					body = strings.TrimSuffix(body, "}") + `,"size":1}`
				}
				resp, err := e.srv.Client().Post(e.srv.URL+path, "application/json", strings.NewReader(body))
				if err != nil {
					t.Fatal(err)
				}
				answer, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				var er leaseapi.ErrorResponse
				if resp.StatusCode != http.StatusBadRequest || json.Unmarshal(answer, &er) != nil || er.Reason != leaseapi.ReasonBadRequest {
					t.Fatalf("%s: %d %s, want 400 BadRequest", body, resp.StatusCode, answer)
				}
				e.untouched(t, victim, 1, held, 4*time.Minute)
			})
		}
	}
}

// TestHolderCannotActOnAnotherSlot: a holder id is a capability for its
// own slot of its own semaphore, nothing else.
func TestHolderCannotActOnAnotherSlot(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	victim := e.acquire(t, "team-a", "slots", 2)
	attacker := e.acquire(t, "team-a", "slots", 2)
	if victim.Slot == attacker.Slot {
		t.Fatal("two leases on one slot")
	}
	victimHeld, attackerHeld := e.holding(t, victim, 2), e.holding(t, attacker, 2)
	at := func(edit func(*leaseapi.Lease)) leaseapi.Lease {
		l := victim
		l.Holder = attacker.Holder
		edit(&l)
		return l
	}
	cases := []struct {
		name string
		call func() error
		want error // nil: 200 with nothing released
	}{
		{"renew the other slot", func() error { _, err := e.client.Renew(ctx, at(func(*leaseapi.Lease) {})); return err }, leaseapi.ErrConflict},
		{"release the other slot", func() error {
			if released, err := e.client.Release(ctx, at(func(*leaseapi.Lease) {})); err != nil || released {
				return errors.Join(err, errors.New("released"))
			}
			return nil
		}, nil},
		{"renew a free slot", func() error {
			_, err := e.client.Renew(ctx, at(func(l *leaseapi.Lease) { l.Slot = 7 }))
			return err
		}, leaseapi.ErrNotFound},
		{"renew the same slot of another key", func() error {
			_, err := e.client.Renew(ctx, at(func(l *leaseapi.Lease) { l.Key = "other"; l.Holder = victim.Holder }))
			return err
		}, leaseapi.ErrNotFound},
		{"release the same slot in another namespace", func() error {
			if released, err := e.client.Release(ctx, at(func(l *leaseapi.Lease) { l.Namespace = "team-b"; l.Holder = victim.Holder })); err != nil || released {
				return errors.Join(err, errors.New("released"))
			}
			return nil
		}, nil},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if err := tc.call(); (tc.want == nil && err != nil) || (tc.want != nil && !errors.Is(err, tc.want)) {
				t.Fatalf("got %v, want %v", err, tc.want)
			}
			e.untouched(t, victim, 2, victimHeld, 4*time.Minute)
			e.untouched(t, attacker, 2, attackerHeld, 4*time.Minute)
		})
	}
}

// TestReplaysAfterTheSlotChangedHands: a release or renewal replayed by the
// previous holder (a retried request, a sidecar restarted from old
// configuration) never touches the slot's new holder.
func TestReplaysAfterTheSlotChangedHands(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	old := e.acquire(t, "team-a", "replay", 1)
	if released, err := e.client.Release(ctx, old); err != nil || !released {
		t.Fatalf("release: %v %v", released, err)
	}
	current := e.acquire(t, "team-a", "replay", 1)
	if current.Slot != old.Slot {
		t.Fatalf("the new lease is on slot %d, the old one was on %d", current.Slot, old.Slot)
	}
	held := e.holding(t, current, 1)
	for i := range 3 {
		if released, err := e.client.Release(ctx, old); err != nil || released {
			t.Fatalf("replayed release %d: released=%v err=%v, want nothing released", i, released, err)
		}
		if _, err := e.client.Renew(ctx, old); !errors.Is(err, leaseapi.ErrConflict) {
			t.Fatalf("replayed renewal %d: %v, want 409 Conflict", i, err)
		}
		e.untouched(t, current, 1, held, 4*time.Minute)
	}
}
