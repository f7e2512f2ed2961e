package leaseserver_test

import (
	"bytes"
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/kaidotio/prometheus-metrics-proxy-hook/src/leaseapi"
	"github.com/kaidotio/prometheus-metrics-proxy-hook/src/leaseserver"
	"github.com/kaidotio/prometheus-metrics-proxy-hook/src/semaphore"
	"github.com/kaidotio/prometheus-metrics-proxy-hook/src/testenv/redistest"
)

// The seeded lease every fuzzed request must leave alone unless it carries
// the seeded holder id.
const (
	fuzzNamespace = "fuzz"
	fuzzKey       = "seeded"
	fuzzSize      = 4
	fuzzHolder    = "5eed5eed5eed5eed5eed5eed5eed5eed"
	seededTTL     = time.Hour
)

var fuzzPaths = []string{leaseapi.RenewPath, leaseapi.ReleasePath, leaseapi.AcquirePath, "/v1/leases/other"}

var fuzzContentTypes = []string{"application/json", "application/json; charset=utf-8", "text/plain", ""}

// FuzzLeaseAPI sends arbitrary bodies to the lease API handler on real
// Redis. Whatever the body: no panic, an answer within a bound, a JSON
// answer with a known status, and the seeded lease neither lost, nor
// shortened, nor joined by another holder in its semaphore, unless the
// body carries the seeded holder id (the capability).
func FuzzLeaseAPI(f *testing.F) {
	cluster := redistest.StartT(f, 3)
	newSem := func(t testing.TB, timeout time.Duration) *semaphore.Client {
		c, err := semaphore.New(semaphore.Config{Addrs: cluster.Addrs(), Password: cluster.Password, NodeTimeout: timeout})
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	// sem observes, with a timeout no busy machine reaches: a node that did
	// not answer would look like a node that lost the lease.
	// The handler has a client of its own, so that the background work a
	// request leaves (the clean-up of a lost lease) can be waited for by
	// closing it.
	sem := newSem(f, 10*time.Second)
	f.Cleanup(func() { _ = sem.Close() })
	var (
		handlerSem *semaphore.Client
		h          http.Handler
	)
	newHandler := func(t testing.TB) {
		if handlerSem != nil {
			_ = handlerSem.Close()
		}
		handlerSem = newSem(t, 500*time.Millisecond)
		h = leaseserver.NewHandler(leaseserver.Config{Semaphore: handlerSem, TTL: 30 * time.Second, Logger: zerolog.Nop()})
	}
	newHandler(f)
	f.Cleanup(func() { _ = handlerSem.Close() })
	name := leaseapi.SemaphoreName(fuzzNamespace, fuzzKey)
	ctx := context.Background()

	// Every write of the harness goes through a client of its own, closed
	// at once: Close waits for the client's background work (claims of a
	// quorum's third node arriving late, undoing them), so that nothing the
	// harness did lands after the next check.
	withClient := func(t testing.TB, fn func(*semaphore.Client) error) {
		c := newSem(t, 10*time.Second)
		err := fn(c)
		_ = c.Close()
		if err != nil {
			t.Fatal(err)
		}
	}
	onNodes := func(t testing.TB, l semaphore.Lease) (count int) {
		st, err := sem.Inspect(ctx, l.Name, l.Slot+1)
		if err == nil && len(st.Failures) > 0 {
			err = st.Failures[0]
		}
		if err != nil {
			t.Fatal(err)
		}
		for _, h := range st.Slots[l.Slot].Holders {
			if h == l.Holder {
				count++
			}
		}
		return count
	}
	releaseFully := func(t testing.TB, l semaphore.Lease) {
		withClient(t, func(c *semaphore.Client) error { _, err := c.Release(ctx, l); return err })
		if n := onNodes(t, l); n != 0 {
			t.Fatalf("the released lease %+v is still on %d nodes", l, n)
		}
	}
	var seeded semaphore.Lease
	var seededAt time.Time
	seed := func(t testing.TB) {
		if seeded.Holder != "" {
			releaseFully(t, seeded)
		}
		// Racing nothing, an acquisition lands on every node but for a
		// rare split of the rotation; the harness wants all three.
		for attempt := 0; ; attempt++ {
			var l semaphore.Lease
			withClient(t, func(c *semaphore.Client) (err error) {
				l, err = c.AcquireAs(ctx, name, fuzzSize, seededTTL, fuzzHolder)
				return err
			})
			seeded, seededAt = l, time.Now()
			if onNodes(t, l) == len(cluster.Nodes) {
				return
			}
			if attempt == 10 {
				t.Fatalf("the seeded lease %+v is not on every node after 10 attempts", l)
			}
			releaseFully(t, l)
		}
	}
	seed(f)

	body := func(path string, slot int, holder string, extra string) []byte {
		b := `{"namespace":"` + fuzzNamespace + `","key":"` + fuzzKey + `","slot":` + itoa(slot) + `,"holder":"` + holder + `"` + extra + `}`
		if path == leaseapi.AcquirePath && extra == "" {
			b = strings.TrimSuffix(b, "}") + `,"size":` + itoa(fuzzSize) + `}`
		}
		return []byte(b)
	}
	other := strings.Repeat("ab", 16)
	for i, path := range fuzzPaths[:3] {
		for _, b := range [][]byte{
			body(path, seeded.Slot, fuzzHolder, ""),                  // the capability itself
			body(path, seeded.Slot, other, ""),                       // wrong holder
			body(path, (seeded.Slot+1)%fuzzSize, fuzzHolder, ""),     // wrong slot
			body(path, seeded.Slot, strings.ToUpper(fuzzHolder), ""), // malformed ids
			body(path, seeded.Slot, fuzzHolder[:31], ""),
			body(path, seeded.Slot, fuzzHolder+"0", ""),
			body(path, seeded.Slot, "\u00e9"+fuzzHolder[2:], ""),
			body(path, seeded.Slot, other, `,"size":1024`),
			body(path, -1, other, ""),
			body(path, 1024, other, ""),
			[]byte(`{"namespace":"fuzz","key":"seeded","slot":"0","holder":"` + other + `"}`),
			[]byte(`{"namespace":"fuzz","key":"seeded","slot":0.5,"holder":"` + other + `"}`),
			[]byte(`{"namespace":"fuzz","key":"seeded","slot":0,"holder":null}`),
			[]byte(`{"NAMESPACE":"fuzz","Key":"seeded","SLOT":0,"Holder":"` + other + `"}`),
			[]byte(`{"namespace":"fuzz","key":"seeded","slot":0,"holder":"` + other + `","holder":"` + other + `"}`),
			[]byte(`[{"namespace":"fuzz"}]`),
			[]byte(`{"namespace":"fuzz"`),
			[]byte(`{}`),
			[]byte(``),
			[]byte(`{"a":` + strings.Repeat("[", 3000) + strings.Repeat("]", 3000) + `}`),
		} {
			f.Add(uint8(i), uint8(0), b)
		}
	}
	f.Add(uint8(3), uint8(0), body(leaseapi.RenewPath, 0, other, ""))
	f.Add(uint8(0), uint8(2), body(leaseapi.RenewPath, 0, other, ""))
	f.Add(uint8(1), uint8(3), body(leaseapi.ReleasePath, 0, other, ""))

	f.Fuzz(func(t *testing.T, pathIdx, ctIdx uint8, payload []byte) {
		path := fuzzPaths[int(pathIdx)%len(fuzzPaths)]
		req := httptest.NewRequest(http.MethodPost, path, bytes.NewReader(payload))
		if ct := fuzzContentTypes[int(ctIdx)%len(fuzzContentTypes)]; ct != "" {
			req.Header.Set("Content-Type", ct)
		}
		rec := httptest.NewRecorder()
		done := make(chan struct{})
		go func() {
			defer close(done)
			h.ServeHTTP(rec, req)
		}()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			t.Fatalf("no answer within 10s to %s %q", path, payload)
		}

		switch rec.Code {
		case http.StatusOK, http.StatusBadRequest, http.StatusNotFound, http.StatusConflict,
			http.StatusRequestEntityTooLarge, http.StatusUnsupportedMediaType, http.StatusServiceUnavailable:
		default:
			t.Fatalf("status %d to %s %q: %s", rec.Code, path, payload, rec.Body.String())
		}
		if rec.Code != http.StatusNotFound || path != "/v1/leases/other" {
			var answer map[string]any
			if err := json.Unmarshal(rec.Body.Bytes(), &answer); err != nil {
				t.Fatalf("answer %q to %s %q is no JSON object: %v", rec.Body.String(), path, payload, err)
			}
			if rec.Code != http.StatusOK {
				msg, _ := answer["error"].(string)
				if !strings.HasSuffix(msg, ".") || answer["reason"] == "" {
					t.Fatalf("error answer %q to %s %q is not a sentence with a reason", rec.Body.String(), path, payload)
				}
			}
		}

		if carriesHolder(payload) {
			// The capability was presented: whatever it did was allowed.
			// Its background work ends before the lease is seeded again
			// with the same holder id, so that the check after the next
			// input judges that input alone (the same holder taking a slot
			// again at once is tested by
			// TestReacquiredLeaseSurvivesTheLostLeaseCleanup in
			// src/semaphore).
			newHandler(t)
			seed(t)
			return
		}
		if rec.Code == http.StatusOK && path == leaseapi.AcquirePath {
			var got leaseapi.LeaseResponse
			if err := json.Unmarshal(rec.Body.Bytes(), &got); err != nil {
				t.Fatal(err)
			}
			// A valid acquire takes a slot: give it back, once the
			// handler's late claims landed, before checking that nothing
			// else changed.
			newHandler(t)
			releaseFully(t, semaphore.Lease{Name: got.Name(), Slot: got.Slot, Holder: got.Holder})
		}
		st, err := sem.Inspect(ctx, name, semaphore.MaxSize)
		if err == nil && len(st.Failures) > 0 {
			err = st.Failures[0]
		}
		if err != nil {
			t.Fatal(err)
		}
		minTTL := seededTTL - time.Since(seededAt) - time.Second
		for _, sl := range st.Slots {
			for node, holder := range sl.Holders {
				switch {
				case sl.Slot == seeded.Slot && holder != fuzzHolder:
					t.Fatalf("after %s %q the seeded lease is gone from node %d (holder %q)", path, payload, node, holder)
				case sl.Slot == seeded.Slot && sl.TTLs[node] < minTTL:
					t.Fatalf("after %s %q the seeded lease's TTL on node %d is %s, was %s", path, payload, node, sl.TTLs[node], seededTTL)
				case sl.Slot != seeded.Slot && holder != "":
					t.Fatalf("after %s %q slot %d is held by %q on node %d", path, payload, sl.Slot, holder, node)
				}
			}
		}
	})
}

// carriesHolder reports whether the body presents the seeded holder id, in
// the raw bytes or in the holder field as encoding/json reads it (escapes,
// any letter case of the member name).
func carriesHolder(payload []byte) bool {
	if bytes.Contains(payload, []byte(fuzzHolder)) {
		return true
	}
	var v struct {
		Holder string `json:"holder"`
	}
	_ = json.NewDecoder(bytes.NewReader(payload)).Decode(&v)
	return v.Holder == fuzzHolder
}

func itoa(n int) string {
	b, _ := json.Marshal(n)
	return string(b)
}
