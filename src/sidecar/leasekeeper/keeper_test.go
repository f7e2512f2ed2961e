package leasekeeper_test

import (
	"bytes"
	"context"
	"encoding/json"
	"encoding/pem"
	"net"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"

	"github.com/kaidotio/prometheus-metrics-proxy-hook/src/leaseapi"
	"github.com/kaidotio/prometheus-metrics-proxy-hook/src/leaseserver"
	"github.com/kaidotio/prometheus-metrics-proxy-hook/src/semaphore"
	"github.com/kaidotio/prometheus-metrics-proxy-hook/src/sidecar/leasekeeper"
	"github.com/kaidotio/prometheus-metrics-proxy-hook/src/testenv/redistest"
)

// env is the real lease API (leaseserver.NewHandler over HTTPS) on three real
// Redis nodes, with a client trusting its certificate.
type env struct {
	cluster *redistest.Cluster
	sem     *semaphore.Client
	ttl     time.Duration
	srv     *httptest.Server
	addr    string
	client  *leaseapi.Client
}

func newEnv(t *testing.T, ttl time.Duration) *env {
	t.Helper()
	e := &env{cluster: redistest.StartT(t, 3), ttl: ttl}
	sem, err := semaphore.New(semaphore.Config{Addrs: e.cluster.Addrs(), Password: e.cluster.Password, NodeTimeout: 500 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = sem.Close() })
	e.sem = sem
	e.start(t, "127.0.0.1:0")
	e.addr = e.srv.Listener.Addr().String()
	ca := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: e.srv.Certificate().Raw})
	e.client, err = leaseapi.NewClient(e.srv.URL, ca, 2*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	return e
}

func (e *env) start(t *testing.T, addr string) {
	t.Helper()
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatalf("listening on %s: %v", addr, err)
	}
	srv := httptest.NewUnstartedServer(leaseserver.NewHandler(leaseserver.Config{Semaphore: e.sem, TTL: e.ttl, Logger: zerolog.Nop()}))
	srv.Listener.Close()
	srv.Listener = ln
	if e.srv != nil {
		// Same certificate, so that the client's CA bundle still holds.
		srv.TLS = e.srv.TLS
	}
	srv.StartTLS()
	t.Cleanup(srv.Close)
	e.srv = srv
}

// restart stops the lease API and starts it again on the same address, as a
// webhook replica that restarted.
func (e *env) restart(t *testing.T) {
	t.Helper()
	e.srv.Close()
	e.start(t, e.addr)
}

// take acquires a slot directly on the semaphore, as the webhook does at
// admission.
func (e *env) take(t *testing.T, key string, size int, ttl time.Duration) leaseapi.Lease {
	t.Helper()
	l, err := e.sem.Acquire(context.Background(), leaseapi.SemaphoreName("team", key), size, ttl)
	if err != nil {
		t.Fatalf("taking a slot of %s: %v", key, err)
	}
	return leaseapi.Lease{Namespace: "team", Key: key, Slot: l.Slot, Holder: l.Holder}
}

// holder is the holder of a slot on a quorum of nodes, "" when free.
func (e *env) holder(t *testing.T, key string, size, slot int) string {
	t.Helper()
	st, err := e.sem.Inspect(context.Background(), leaseapi.SemaphoreName("team", key), size)
	if err != nil {
		t.Fatalf("inspecting %s: %v", key, err)
	}
	return st.Slots[slot].Holder
}

// logs collects the keeper's JSON log lines.
type logs struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (l *logs) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.Write(p)
}

// count is the number of events at level (any when empty) whose message
// contains msg.
func (l *logs) count(level, msg string) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	n := 0
	for line := range strings.SplitSeq(l.buf.String(), "\n") {
		var ev struct{ Level, Message string }
		if json.Unmarshal([]byte(line), &ev) == nil && (level == "" || ev.Level == level) && strings.Contains(ev.Message, msg) {
			n++
		}
	}
	return n
}

type keeper struct {
	*leasekeeper.Keeper
	metrics *leasekeeper.Metrics
	logs    *logs
	stop    func()
}

func startKeeper(t *testing.T, api leasekeeper.API, l leaseapi.Lease, size int, interval time.Duration) *keeper {
	t.Helper()
	return startGatedKeeper(t, api, l, size, interval, false)
}

func startGatedKeeper(t *testing.T, api leasekeeper.API, l leaseapi.Lease, size int, interval time.Duration, gated bool) *keeper {
	t.Helper()
	k := &keeper{metrics: leasekeeper.NewMetrics(), logs: &logs{}}
	var err error
	k.Keeper, err = leasekeeper.New(leasekeeper.Config{
		API: api, Lease: l, Size: size, Metrics: k.metrics, Interval: interval, Gated: gated,
		Logger: zerolog.New(zerolog.MultiLevelWriter(k.logs, zerolog.NewTestWriter(t))).Level(zerolog.DebugLevel),
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		k.Run(ctx)
	}()
	var once sync.Once
	k.stop = func() {
		once.Do(func() {
			cancel()
			<-done
		})
	}
	t.Cleanup(k.stop)
	return k
}

func (k *keeper) overLimit(t *testing.T) float64 {
	t.Helper()
	reg := prometheus.NewRegistry()
	reg.MustRegister(k.metrics)
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == "prometheus_metrics_proxy_hook_sidecar_over_limit" {
			return mf.GetMetric()[0].GetGauge().GetValue()
		}
	}
	t.Fatal("the over_limit gauge is not exposed")
	return 0
}

// waitFor polls cond until it holds or the deadline passes.
func waitFor(t *testing.T, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", timeout, what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestRenewalKeepsTheSlotPastSeveralTTLs also checks that the first renewal
// turns the long startup lease into the short running lease, and that
// renewal goes on across a restart of the lease API.
func TestRenewalKeepsTheSlotPastSeveralTTLs(t *testing.T) {
	const ttl = time.Second
	e := newEnv(t, ttl)
	l := e.take(t, "renew", 2, 10*time.Minute)
	k := startKeeper(t, e.client, l, 2, 0)

	waitFor(t, 5*time.Second, "the first renewal", func() bool { return k.logs.count("info", "Renewed the semaphore lease.") == 1 })
	st, err := e.sem.Inspect(context.Background(), l.Name(), 2)
	if err != nil {
		t.Fatal(err)
	}
	for i, d := range st.Slots[l.Slot].TTLs {
		if d > ttl {
			t.Errorf("node %d: TTL %s after the first renewal, want at most the running lease's %s", i, d, ttl)
		}
	}

	// The slot stays held over 4 TTLs, across a restart of the API.
	checkHeld := func(d time.Duration) {
		until := time.Now().Add(d)
		for time.Now().Before(until) {
			if h := e.holder(t, "renew", 2, l.Slot); h != l.Holder {
				t.Fatalf("slot %d held by %q, want %q", l.Slot, h, l.Holder)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	checkHeld(2 * ttl)
	e.restart(t)
	checkHeld(2 * ttl)
	if n := k.logs.count("error", ""); n != 0 {
		t.Errorf("%d errors logged while renewing", n)
	}

	k.stop()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := k.Release(ctx); err != nil {
		t.Fatal(err)
	}
	if h := e.holder(t, "renew", 2, l.Slot); h != "" {
		t.Errorf("slot %d still held by %q after Release", l.Slot, h)
	}
	if k.logs.count("info", "Released the semaphore slot.") != 1 {
		t.Error("the release was not logged")
	}
}

func TestLostStartupLeaseTakesASlotAgain(t *testing.T) {
	e := newEnv(t, time.Second)
	l := e.take(t, "late", 3, semaphore.MinTTL)
	waitFor(t, 5*time.Second, "the startup lease to expire", func() bool { return e.holder(t, "late", 3, l.Slot) == "" })

	k := startKeeper(t, e.client, l, 3, 0)
	waitFor(t, 5*time.Second, "a slot taken again", func() bool {
		got, held := k.Lease()
		return held && e.holder(t, "late", 3, got.Slot) == l.Holder
	})
	if n := k.logs.count("error", "The startup lease was gone at the first renewal"); n != 1 {
		t.Errorf("the lost startup lease was logged %d times as an error, want once", n)
	}
	if v := k.overLimit(t); v != 0 {
		t.Errorf("over_limit = %v with a slot held again, want 0", v)
	}
}

func TestOverLimitUntilASlotFrees(t *testing.T) {
	e := newEnv(t, time.Second)
	l := e.take(t, "full", 1, semaphore.MinTTL)
	waitFor(t, 5*time.Second, "the startup lease to expire", func() bool { return e.holder(t, "full", 1, 0) == "" })
	other := e.take(t, "full", 1, time.Minute)

	k := startKeeper(t, e.client, l, 1, 300*time.Millisecond)
	// The gauge is 1 from the loss on; the full semaphore is logged once
	// the first acquisition is refused.
	waitFor(t, 5*time.Second, "over_limit = 1 and a full answer", func() bool {
		return k.overLimit(t) == 1 && k.logs.count("", "No slot of the semaphore is free") > 0
	})
	if n := k.logs.count("error", "this pod runs over the limit"); n != 1 {
		t.Errorf("running over the limit was logged %d times as an error, want once", n)
	}
	if _, held := k.Lease(); held {
		t.Error("Lease reports a slot while over the limit")
	}

	// Releasing while over the limit has nothing to do.
	if _, err := e.sem.Release(context.Background(), semaphore.Lease{Name: other.Name(), Slot: other.Slot, Holder: other.Holder}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 5*time.Second, "the slot taken once free", func() bool { return e.holder(t, "full", 1, 0) == l.Holder })
	waitFor(t, 5*time.Second, "over_limit = 0", func() bool { return k.overLimit(t) == 0 })
}

func started(k *keeper) bool {
	select {
	case <-k.Started():
		return true
	default:
		return false
	}
}

// TestStartGate: Started opens only once the lease API confirmed a slot;
// while the semaphore is full a gated pod waits (not over the limit), an
// ungated one runs over the limit.
func TestStartGate(t *testing.T) {
	tests := []struct {
		name      string
		gated     bool
		full      bool
		wantGauge float64 // while waiting
	}{
		{"held lease opens at the first renewal", true, false, 0},
		{"gated pod waits while full", true, true, 0},
		{"ungated pod runs over the limit while full", false, true, 1},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := newEnv(t, time.Second)
			key := "gate" + strconv.Itoa(i)
			// A second, not the shortest TTL: a loaded machine answers
			// within it.
			l := e.take(t, key, 1, time.Second)
			var other leaseapi.Lease
			if tt.full {
				waitFor(t, 5*time.Second, "the startup lease to expire", func() bool { return e.holder(t, key, 1, 0) == "" })
				other = e.take(t, key, 1, time.Minute)
			}
			k := startGatedKeeper(t, e.client, l, 1, 200*time.Millisecond, tt.gated)
			if !tt.full {
				waitFor(t, 5*time.Second, "the gate to open", func() bool { return started(k) })
				return
			}
			waitFor(t, 5*time.Second, "the gauge while waiting", func() bool {
				return k.overLimit(t) == tt.wantGauge && k.logs.count("", "No slot of the semaphore is free") > 0
			})
			if started(k) {
				t.Fatal("the gate opened while the semaphore is full")
			}
			if _, err := e.sem.Release(context.Background(), semaphore.Lease{Name: other.Name(), Slot: other.Slot, Holder: other.Holder}); err != nil {
				t.Fatal(err)
			}
			waitFor(t, 5*time.Second, "the gate to open once the slot is free", func() bool { return started(k) })
			if h := e.holder(t, key, 1, 0); h != l.Holder {
				t.Errorf("slot held by %q, want the pod's own holder %q", h, l.Holder)
			}
			if v := k.overLimit(t); v != 0 {
				t.Errorf("over_limit = %v with the slot taken, want 0", v)
			}
		})
	}
}

func TestConflictIsTreatedAsLost(t *testing.T) {
	e := newEnv(t, time.Second)
	l := e.take(t, "stolen", 2, semaphore.MinTTL)
	waitFor(t, 5*time.Second, "the startup lease to expire", func() bool { return e.holder(t, "stolen", 2, l.Slot) == "" })
	// Another pod takes the very slot the sidecar was given: take both,
	// give back the other one.
	for _, taken := range []leaseapi.Lease{e.take(t, "stolen", 2, time.Minute), e.take(t, "stolen", 2, time.Minute)} {
		if taken.Slot != l.Slot {
			if _, err := e.sem.Release(context.Background(), semaphore.Lease{Name: taken.Name(), Slot: taken.Slot, Holder: taken.Holder}); err != nil {
				t.Fatal(err)
			}
		}
	}
	k := startKeeper(t, e.client, l, 2, 0)
	waitFor(t, 5*time.Second, "a slot taken again", func() bool {
		got, held := k.Lease()
		return held && got.Slot != l.Slot && e.holder(t, "stolen", 2, got.Slot) == l.Holder
	})
	if n := k.logs.count("error", "another holder owns the slot"); n != 1 {
		t.Errorf("the conflict was logged %d times as an error, want once", n)
	}
}

func TestTransientFailuresAreRetried(t *testing.T) {
	e := newEnv(t, time.Second)
	l := e.take(t, "flaky", 1, time.Minute)
	k := startKeeper(t, e.client, l, 1, 0)
	waitFor(t, 5*time.Second, "the first renewal", func() bool { return k.logs.count("info", "Renewed the semaphore lease.") == 1 })

	// Two of three nodes down: no quorum, the API answers 503.
	e.cluster.Nodes[1].Kill()
	e.cluster.Nodes[2].Kill()
	waitFor(t, 5*time.Second, "a failed renewal", func() bool { return k.logs.count("warn", "Renewing the semaphore lease failed") >= 1 })
	if err := e.cluster.Nodes[1].Start(); err != nil {
		t.Fatal(err)
	}
	if err := e.cluster.Nodes[2].Start(); err != nil {
		t.Fatal(err)
	}
	// The nodes kept the lease in their append-only files; if it expired
	// meanwhile the keeper takes the slot again. Either way it ends held.
	waitFor(t, 5*time.Second, "renewal after the outage", func() bool {
		return k.logs.count("info", "Renewed the semaphore lease.") >= 2 || k.logs.count("warn", "Took a slot of the semaphore") == 1
	})
	waitFor(t, 5*time.Second, "the slot held", func() bool {
		got, held := k.Lease()
		return held && e.holder(t, "flaky", 1, got.Slot) == l.Holder
	})
}

func TestReleaseGivesUpAtTheDeadline(t *testing.T) {
	e := newEnv(t, time.Second)
	l := e.take(t, "down", 1, time.Minute)
	k := startKeeper(t, e.client, l, 1, 0)
	waitFor(t, 5*time.Second, "the first renewal", func() bool { return k.logs.count("info", "Renewed the semaphore lease.") == 1 })
	k.stop()
	e.srv.Close()

	ctx, cancel := context.WithTimeout(context.Background(), 700*time.Millisecond)
	defer cancel()
	began := time.Now()
	err := k.Release(ctx)
	if err == nil {
		t.Fatal("Release succeeded with the lease API down")
	}
	if !strings.Contains(err.Error(), "frees itself") {
		t.Errorf("the error does not say what happens to the slot: %v", err)
	}
	if d := time.Since(began); d > 2*time.Second {
		t.Errorf("Release took %s with a 700ms deadline", d)
	}
	if k.logs.count("warn", "Releasing the semaphore slot failed") == 0 {
		t.Error("no retry was logged")
	}
	// The slot frees itself by TTL.
	waitFor(t, 3*time.Second, "the slot to free itself by TTL", func() bool { return e.holder(t, "down", 1, 0) == "" })
}

func TestNewRejectsBadConfig(t *testing.T) {
	good := leaseapi.Lease{Namespace: "team", Key: "k", Slot: 0, Holder: strings.Repeat("a", 32)}
	api := (*leaseapi.Client)(nil)
	tests := []struct {
		name string
		cfg  leasekeeper.Config
	}{
		{"no API", leasekeeper.Config{Lease: good, Size: 1}},
		{"bad holder", leasekeeper.Config{API: api, Lease: leaseapi.Lease{Namespace: "team", Key: "k", Holder: "x"}, Size: 1}},
		{"slot beyond size", leasekeeper.Config{API: api, Lease: leaseapi.Lease{Namespace: "team", Key: "k", Slot: 2, Holder: good.Holder}, Size: 2}},
		{"zero size", leasekeeper.Config{API: api, Lease: good}},
		{"negative interval", leasekeeper.Config{API: api, Lease: good, Size: 1, Interval: -time.Second}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := leasekeeper.New(tt.cfg); err == nil {
				t.Error("New accepted a bad config")
			}
		})
	}
}
