package reliability

import (
	"bytes"
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/kaidotio/prometheus-metrics-proxy-hook/src/leaseapi"
)

// The webhook's server timeouts (src/server DefaultTimeouts): headers (and
// the TLS handshake) within 5 s, the whole request within 15 s.
const (
	readHeaderTimeout = 5 * time.Second
	readTimeout       = 15 * time.Second
	// cutMargin covers scheduling on a loaded machine.
	cutMargin = 5 * time.Second
)

// slowClient is a connection that sends a little, slowly, and notices when
// the server drops it.
type slowClient struct {
	conn    net.Conn
	began   time.Time
	stopped chan struct{}
	closed  chan time.Time
}

// dialSlow connects (with TLS unless raw) and watches for the server
// closing the connection.
func dialSlow(t *testing.T, addr string, cfg *tls.Config, raw bool) *slowClient {
	t.Helper()
	var conn net.Conn
	var err error
	if raw {
		conn, err = net.Dial("tcp", addr)
	} else {
		conn, err = tls.Dial("tcp", addr, cfg)
	}
	if err != nil {
		t.Fatal(err)
	}
	c := &slowClient{conn: conn, began: time.Now(), stopped: make(chan struct{}), closed: make(chan time.Time, 1)}
	t.Cleanup(func() {
		close(c.stopped)
		conn.Close()
	})
	go func() {
		// Whatever the server answers, the connection ends when it closes.
		_, _ = io.Copy(io.Discard, conn)
		c.closed <- time.Now()
	}()
	return c
}

// dribble writes data one byte per interval until stopped or cut off.
func (c *slowClient) dribble(data []byte, every time.Duration) {
	go func() {
		tick := time.NewTicker(every)
		defer tick.Stop()
		for i := 0; ; i = (i + 1) % len(data) {
			select {
			case <-c.stopped:
				return
			case <-tick.C:
			}
			if _, err := c.conn.Write(data[i : i+1]); err != nil {
				return
			}
		}
	}()
}

// cutWithin waits for the server to close the connection and returns after
// how long, failing the test past the bound.
func (c *slowClient) cutWithin(t *testing.T, bound time.Duration) time.Duration {
	t.Helper()
	select {
	case at := <-c.closed:
		return at.Sub(c.began)
	case <-time.After(bound):
		t.Fatalf("the server still holds the connection after %s", bound)
		return 0
	}
}

// TestSlowClientsCannotHoldConnections: a client that dribbles its TLS
// handshake, headers or body is cut by the server's timeouts, and many of
// them at once do not keep the webhook from answering others.
func TestSlowClientsCannotHoldConnections(t *testing.T) {
	e := newEnv(t, envOptions{})
	wh := e.webhooks[0]
	addr := wh.Addr()
	headers := []byte("POST /mutate?timeout=5s HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n")
	cases := []struct {
		name   string
		raw    bool
		start  []byte // sent at once
		drip   []byte // then one byte per 200 ms, forever
		lo, hi time.Duration
	}{
		{"silent before the TLS handshake", true, nil, nil, readHeaderTimeout - time.Second, readHeaderTimeout + cutMargin},
		// A TLS handshake record announcing 512 bytes, which never come.
		{"TLS handshake dribbled", true, []byte{0x16, 0x03, 0x01, 0x02, 0x00}, []byte{0x00}, readHeaderTimeout - time.Second, readHeaderTimeout + cutMargin},
		{"headers dribbled byte by byte", false, headers, []byte("X-Slow: aaaaaaaaaaaaaaaa\r\n"), readHeaderTimeout - time.Second, readHeaderTimeout + cutMargin},
		{"request line never finished", false, []byte("POST /mutate"), []byte("a"), readHeaderTimeout - time.Second, readHeaderTimeout + cutMargin},
		{"body dribbled byte by byte", false, append(append([]byte{}, headers...), "Content-Length: 100000\r\n\r\n{"...), []byte(" "), readTimeout - time.Second, readTimeout + cutMargin},
		{"lease API body dribbled", false, []byte("POST /v1/leases/renew HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 4000\r\n\r\n{"), []byte(" "), readTimeout - time.Second, readTimeout + cutMargin},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			c := dialSlow(t, addr, wh.Certs.ClientTLS(), tc.raw)
			if len(tc.start) > 0 {
				if _, err := c.conn.Write(tc.start); err != nil {
					t.Fatal(err)
				}
			}
			if len(tc.drip) > 0 {
				c.dribble(tc.drip, 200*time.Millisecond)
			}
			took := c.cutWithin(t, tc.hi)
			if took < tc.lo {
				t.Fatalf("cut after %s, before the %s the timeout allows: something else closed it", took, tc.lo)
			}
			t.Logf("cut after %s", took.Round(100*time.Millisecond))
		})
	}
	t.Run("fifty slow clients at once", func(t *testing.T) {
		t.Parallel()
		var slow []*slowClient
		for range 50 {
			c := dialSlow(t, addr, wh.Certs.ClientTLS(), false)
			if _, err := c.conn.Write(headers); err != nil {
				t.Fatal(err)
			}
			c.dribble([]byte("X-Slow: a\r\n"), 100*time.Millisecond)
			slow = append(slow, c)
		}
		// Meanwhile, a review is answered at once.
		cl := testClient(t, e)
		began := time.Now()
		a, _, err := cl.admit(context.Background(), "among-slow-clients", pod{key: "slow", size: 1024, startupTimeout: time.Second})
		if err != nil || !a.allowed {
			t.Fatalf("review among slow clients: %s %q %v", a.outcome(), a.message, err)
		}
		// Held up by the slow clients, it would wait for their 5 s timeout.
		if took := time.Since(began); took > 4*time.Second {
			t.Errorf("the review took %s among 50 slow clients", took)
		}
		for i, c := range slow {
			if took := c.cutWithin(t, readHeaderTimeout+cutMargin); took < readHeaderTimeout-time.Second {
				t.Errorf("slow client %d cut after %s", i, took)
			}
		}
	})
}

// TestRequestBodiesAreBounded: bodies above the limits are refused, also
// without a Content-Length (chunked), through the real listener.
func TestRequestBodiesAreBounded(t *testing.T) {
	e := newEnv(t, envOptions{})
	wh := e.webhooks[0]
	client := wh.Client()
	const admissionLimit, leaseLimit = 7 << 20, 4 << 10
	cases := []struct {
		name    string
		path    string
		size    int
		chunked bool
		want    int
	}{
		{"review at the limit", "/mutate?timeout=5s", admissionLimit, false, http.StatusOK},
		{"review above the limit, announced", "/mutate?timeout=5s", admissionLimit + 1, false, http.StatusRequestEntityTooLarge},
		{"review above the limit, chunked", "/mutate?timeout=5s", 8 << 20, true, http.StatusRequestEntityTooLarge},
		{"lease call above the limit, announced", leaseapi.RenewPath, leaseLimit + 1, false, http.StatusRequestEntityTooLarge},
		{"lease call above the limit, chunked", leaseapi.ReleasePath, 64 << 10, true, http.StatusRequestEntityTooLarge},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			// A valid document padded with spaces up to the size: only the
			// size can make it fail.
			doc := []byte(`{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"uid":"big","kind":{"group":"","version":"v1","kind":"Pod"},"operation":"CREATE","namespace":"n","object":{"metadata":{"name":"p"}}}}`)
			if strings.HasPrefix(tc.path, "/v1/") {
				doc = []byte(`{"namespace":"n","key":"k","slot":0,"holder":"0123456789abcdef0123456789abcdef"}`)
			}
			body := append(bytes.Repeat([]byte(" "), tc.size-len(doc)), doc...)
			var r io.Reader = bytes.NewReader(body)
			if tc.chunked {
				r = io.MultiReader(r) // hides the length: the request goes chunked
			}
			req, err := http.NewRequest(http.MethodPost, wh.BaseURL()+tc.path, r)
			if err != nil {
				t.Fatal(err)
			}
			req.Header.Set("Content-Type", "application/json")
			resp, err := client.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			answer, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != tc.want {
				t.Fatalf("%d bytes: %d %q, want %d", tc.size, resp.StatusCode, truncate(answer), tc.want)
			}
		})
	}
}

func truncate(b []byte) string {
	if len(b) > 300 {
		return string(b[:300]) + "..."
	}
	return string(b)
}

// TestLeaseAPINeverActsOnAnotherSlot: the holder of one slot can neither
// renew nor release another, in any semaphore; the other slot keeps its
// holder and its TTL.
func TestLeaseAPINeverActsOnAnotherSlot(t *testing.T) {
	e := newEnv(t, envOptions{})
	c := testClient(t, e)
	ctx := context.Background()
	p := pod{key: "two-slots", size: 2, startupTimeout: time.Hour}
	var leases [2]leaseapi.Lease
	for i := range leases {
		a, _, err := c.admit(ctx, fmt.Sprintf("two-slots-%d", i), p)
		if err != nil || !a.allowed {
			t.Fatalf("admission %d: %s %q %v", i, a.outcome(), a.message, err)
		}
		leases[a.slot] = leaseapi.Lease{Namespace: namespace, Key: p.key, Slot: a.slot, Holder: a.holder}
	}
	victim, attacker := leases[0], leases[1]
	seeded := time.Now()
	// An admission returns once a quorum holds the lease; the last node may
	// never hold it (it answered a racing acquisition first). Untouched
	// means: on every node that held it, still held, with its TTL.
	st, err := e.status(ctx, p.name(), p.size)
	if err != nil {
		t.Fatal(err)
	}
	victimHeld := map[int]bool{}
	for node, h := range st.Slots[victim.Slot].Holders {
		victimHeld[node] = h == victim.Holder
	}
	lc := c.eps[0].lease
	with := func(edit func(*leaseapi.Lease)) leaseapi.Lease {
		l := victim
		l.Holder = attacker.Holder
		edit(&l)
		return l
	}
	cases := []struct {
		name string
		call func() error
		want string // leaseOutcome, or "released false"
	}{
		{"renew slot 0 with slot 1's holder", func() error { _, err := lc.Renew(ctx, with(func(*leaseapi.Lease) {})); return err }, "conflict"},
		{"release slot 0 with slot 1's holder", func() error {
			released, err := lc.Release(ctx, with(func(*leaseapi.Lease) {}))
			if err == nil && released {
				return fmt.Errorf("released")
			}
			return err
		}, "ok"},
		{"renew a free slot with slot 1's holder", func() error {
			_, err := lc.Renew(ctx, with(func(l *leaseapi.Lease) { l.Slot = 1023 }))
			return err
		}, "lost"},
		{"renew slot 0 of another namespace", func() error {
			_, err := lc.Renew(ctx, with(func(l *leaseapi.Lease) { l.Namespace = "elsewhere"; l.Holder = victim.Holder }))
			return err
		}, "lost"},
		{"acquire with slot 1's holder", func() error {
			got, _, err := lc.Acquire(ctx, with(func(*leaseapi.Lease) {}), p.size)
			if err == nil && got.Slot != attacker.Slot {
				return fmt.Errorf("acquire answered slot %d, not the holder's own slot %d", got.Slot, attacker.Slot)
			}
			return err
		}, "ok"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if got := leaseOutcome(tc.call()); got != tc.want {
				t.Fatalf("got %s, want %s", got, tc.want)
			}
			st, err := e.status(ctx, p.name(), p.size)
			if err != nil {
				t.Fatal(err)
			}
			minTTL := p.startupTimeout - time.Since(seeded) - time.Second
			if st.Slots[victim.Slot].Holder != victim.Holder {
				t.Fatalf("slot %d is owned by %q, want %.8s", victim.Slot, st.Slots[victim.Slot].Holder, victim.Holder)
			}
			for node, h := range st.Slots[victim.Slot].Holders {
				if victimHeld[node] && (h != victim.Holder || st.Slots[victim.Slot].TTLs[node] < minTTL) {
					t.Fatalf("slot %d on node %d: holder %.8s TTL %s, want %.8s with its startup TTL untouched",
						victim.Slot, node, h, st.Slots[victim.Slot].TTLs[node], victim.Holder)
				}
			}
			if st.Slots[attacker.Slot].Holder != attacker.Holder {
				t.Fatalf("slot %d lost its own holder: %q", attacker.Slot, st.Slots[attacker.Slot].Holders)
			}
		})
	}
}
