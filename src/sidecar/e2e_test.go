package sidecar_test

// End-to-end tests of the sidecar as it runs in a pod: the real binary, in
// front of an app process exposing a moving counter, scraped by a real
// Prometheus every second, keeping a lease through the real webhook process
// on three real Redis nodes. The lease comes from an admission review sent
// to the webhook, so the sidecar runs with exactly the environment the
// webhook injects.

import (
	"bufio"
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/kaidotio/prometheus-metrics-proxy-hook/src/semaphore"
	"github.com/kaidotio/prometheus-metrics-proxy-hook/src/sidecar"
	"github.com/kaidotio/prometheus-metrics-proxy-hook/src/testenv/prometheustest"
	"github.com/kaidotio/prometheus-metrics-proxy-hook/src/testenv/redistest"
	"github.com/kaidotio/prometheus-metrics-proxy-hook/src/testenv/sidecartest"
	"github.com/kaidotio/prometheus-metrics-proxy-hook/src/testenv/webhooktest"
)

// The test binary doubles as the app: re-executed with appEnv set it serves
// a counter instead of running tests.
const (
	appEnv       = "SIDECAR_E2E_APP"
	appTickEnv   = "SIDECAR_E2E_APP_TICK"   // counter increment period; 0: never moves
	appLingerEnv = "SIDECAR_E2E_APP_LINGER" // how long it keeps serving after SIGTERM
	appBytesEnv  = "SIDECAR_E2E_APP_BYTES"  // pad the exposition to about this size
	counterName  = "app_ticks_total"
)

func TestMain(m *testing.M) {
	if os.Getenv(appEnv) != "" {
		os.Exit(runApp())
	}
	os.Exit(m.Run())
}

// runApp serves client_golang's promhttp handler (text, OpenMetrics and
// protobuf, gzip) with a counter that moves every tick. It prints its
// address, and at exit the last counter value it exposed, as JSON lines.
func runApp() int {
	tick, _ := time.ParseDuration(os.Getenv(appTickEnv))
	linger, _ := time.ParseDuration(os.Getenv(appLingerEnv))
	padBytes, _ := strconv.Atoi(os.Getenv(appBytesEnv))

	var value, lastExposed atomic.Int64
	reg := prometheus.NewRegistry()
	reg.MustRegister(prometheus.NewCounterFunc(prometheus.CounterOpts{Name: counterName, Help: "Ticks of the test app."},
		func() float64 {
			v := value.Load()
			// The counter only grows, so the largest value collected is
			// the last one exposed.
			for {
				old := lastExposed.Load()
				if v <= old || lastExposed.CompareAndSwap(old, v) {
					break
				}
			}
			return float64(v)
		}))
	if padBytes > 0 {
		pad := prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "app_padding", Help: "Padding."}, []string{"series", "text"})
		reg.MustRegister(pad)
		filler := strings.Repeat("x", 64)
		for i := range padBytes / 100 {
			pad.WithLabelValues(strconv.Itoa(i), filler).Set(float64(i))
		}
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	srv := &http.Server{Handler: promhttp.HandlerFor(reg, promhttp.HandlerOpts{EnableOpenMetrics: true})}
	go func() { _ = srv.Serve(ln) }()
	out := json.NewEncoder(os.Stdout)
	_ = out.Encode(map[string]any{"addr": ln.Addr().String()})

	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGTERM)
	var ticks <-chan time.Time
	if tick > 0 {
		t := time.NewTicker(tick)
		defer t.Stop()
		ticks = t.C
	}
	for {
		select {
		case <-ticks:
			value.Add(1)
			continue
		case <-sigs:
		}
		break
	}
	// Like a real app draining: it still answers for a moment, and its
	// counter keeps moving until it exits.
	end := time.After(linger)
	for done := false; !done; {
		select {
		case <-ticks:
			value.Add(1)
		case <-end:
			done = true
		}
	}
	_ = srv.Close()
	_ = out.Encode(map[string]any{"lastExposed": lastExposed.Load()})
	return 0
}

// app is a running app process.
type app struct {
	cmd         *exec.Cmd
	addr        string
	exited      chan struct{}
	lastExposed float64
}

type appOpts struct {
	tick, linger time.Duration
	padBytes     int
}

func startApp(t testing.TB, o appOpts) *app {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), appEnv+"=1", appTickEnv+"="+o.tick.String(), appLingerEnv+"="+o.linger.String(),
		appBytesEnv+"="+strconv.Itoa(o.padBytes))
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	cmd.Stderr = os.Stderr
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	a := &app{cmd: cmd, exited: make(chan struct{})}
	listening := make(chan struct{})
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			var msg struct {
				Addr        string   `json:"addr"`
				LastExposed *float64 `json:"lastExposed"`
			}
			if json.Unmarshal(sc.Bytes(), &msg) != nil {
				continue
			}
			if msg.Addr != "" {
				a.addr = msg.Addr
				close(listening)
			}
			if msg.LastExposed != nil {
				a.lastExposed = *msg.LastExposed
			}
		}
		_ = cmd.Wait()
		close(a.exited)
	}()
	t.Cleanup(func() {
		_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		<-a.exited
	})
	select {
	case <-listening:
	case <-a.exited:
		t.Fatal("the app exited before listening")
	case <-time.After(30 * time.Second):
		t.Fatal("the app did not listen within 30s")
	}
	return a
}

func (a *app) url() string { return "http://" + a.addr + "/metrics" }

// wait waits for the app to exit and returns the last counter value it
// exposed.
func (a *app) wait(t *testing.T, timeout time.Duration) float64 {
	t.Helper()
	select {
	case <-a.exited:
		return a.lastExposed
	case <-time.After(timeout):
		t.Fatalf("the app did not exit within %s", timeout)
		return 0
	}
}

// fixture is the webhook process on three Redis nodes, with a semaphore
// client of its own to look at the slots.
type fixture struct {
	redis *redistest.Cluster
	sem   *semaphore.Client
	wh    *webhooktest.Webhook
}

func newFixture(t testing.TB, leaseTTL time.Duration) *fixture {
	t.Helper()
	redis := redistest.StartT(t, 3)
	sem, err := semaphore.New(semaphore.Config{Addrs: redis.Addrs(), Password: redis.Password, NodeTimeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = sem.Close() })
	wh := webhooktest.Start(t, webhooktest.Options{
		Redis: redis.Addrs(), RedisPassword: redis.Password,
		// The default 50ms per-node timeout suits a quiet loopback; tests
		// under -race on a shared machine need slack.
		Args: []string{"--lease-ttl=" + leaseTTL.String(), "--redis-timeout=1s"},
	})
	return &fixture{redis: redis, sem: sem, wh: wh}
}

const testNamespace = "team-a"

// admit sends the review of an opted-in pod with a semaphore to the
// webhook, as the API server does, and returns the environment of the
// sidecar container the webhook injected.
func (f *fixture) admit(t testing.TB, key string, size int) map[string]string {
	t.Helper()
	pod := map[string]any{
		"apiVersion": "v1", "kind": "Pod",
		"metadata": map[string]any{
			"generateName": "app-",
			"annotations": map[string]string{
				"prometheus-metrics-proxy-hook.kaidotio.github.io/prometheus-metrics-proxy": "true",
				"prometheus-metrics-proxy-hook.kaidotio.github.io/semaphore-key":            key,
				"prometheus-metrics-proxy-hook.kaidotio.github.io/semaphore-size":           strconv.Itoa(size),
				"prometheus.io/port": "8080",
			},
		},
		"spec": map[string]any{"containers": []map[string]any{{"name": "app", "image": "example.org/app:1"}}},
	}
	review := map[string]any{
		"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
		"request": map[string]any{
			"uid":  fmt.Sprintf("00000000-0000-4000-8000-%012d", time.Now().UnixNano()%1e12),
			"kind": map[string]string{"group": "", "version": "v1", "kind": "Pod"}, "resource": map[string]string{"group": "", "version": "v1", "resource": "pods"},
			"operation": "CREATE", "namespace": testNamespace, "object": pod, "dryRun": false,
		},
	}
	body, _ := json.Marshal(review)
	resp, err := f.wh.Client().Post(f.wh.MutateURL(), "application/json", bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var out struct {
		Response struct {
			Allowed bool   `json:"allowed"`
			Patch   string `json:"patch"`
			Status  *struct {
				Message string `json:"message"`
			} `json:"status"`
		} `json:"response"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&out); err != nil {
		t.Fatal(err)
	}
	if !out.Response.Allowed {
		t.Fatalf("the webhook denied the pod: %+v", out.Response.Status)
	}
	patch, err := base64.StdEncoding.DecodeString(out.Response.Patch)
	if err != nil {
		t.Fatal(err)
	}
	var ops []struct {
		Op    string          `json:"op"`
		Path  string          `json:"path"`
		Value json.RawMessage `json:"value"`
	}
	if err := json.Unmarshal(patch, &ops); err != nil {
		t.Fatal(err)
	}
	for _, op := range ops {
		var c struct {
			Name string `json:"name"`
			Env  []struct{ Name, Value string }
		}
		if op.Path != "/spec/containers/-" || json.Unmarshal(op.Value, &c) != nil || c.Name != "prometheus-metrics-proxy" {
			continue
		}
		env := map[string]string{}
		for _, e := range c.Env {
			env[e.Name] = e.Value
		}
		return env
	}
	t.Fatalf("no sidecar container in the patch %s", patch)
	return nil
}

// holder is the holder of a slot on a quorum of nodes ("" when free) and
// whether any node still has it.
func (f *fixture) holder(t *testing.T, env map[string]string) (quorum string, anyNode bool) {
	t.Helper()
	size, _ := strconv.Atoi(env["PMPH_LEASE_SIZE"])
	slot, _ := strconv.Atoi(env["PMPH_LEASE_SLOT"])
	st, err := f.sem.Inspect(context.Background(), testNamespace+"/"+env["PMPH_LEASE_KEY"], size)
	if err != nil {
		t.Fatal(err)
	}
	for _, h := range st.Slots[slot].Holders {
		anyNode = anyNode || h != ""
	}
	return st.Slots[slot].Holder, anyNode
}

// sidecarEnv is the injected environment pointed at the app, with a short
// grace period.
func sidecarEnv(injected map[string]string, upstream string, grace, wait time.Duration) []string {
	var env []string
	for k, v := range injected {
		env = append(env, k+"="+v)
	}
	return append(env, "PMPH_LISTEN_ADDRESS=127.0.0.1:0", "PMPH_UPSTREAM="+upstream,
		"PMPH_GRACE_PERIOD="+grace.String(), "PMPH_FINAL_SCRAPE_WAIT="+wait.String())
}

func startPrometheus(t *testing.T, target string) *prometheustest.Server {
	t.Helper()
	return prometheustest.Start(t, prometheustest.Options{Config: prometheustest.StaticConfig(prometheustest.Job{
		Name: "app", Interval: time.Second, Targets: []string{target},
	})})
}

// lastSample is the newest stored sample of the app's counter.
func lastSample(t *testing.T, p *prometheustest.Server) (prometheustest.Point, bool) {
	t.Helper()
	series, err := p.Samples(context.Background(), counterName+`{job="app"}`, 10*time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	if len(series) != 1 {
		return prometheustest.Point{}, false
	}
	return series[0].Last()
}

// waitScraped waits until Prometheus stored n samples of the counter
// through the sidecar.
func waitScraped(t *testing.T, p *prometheustest.Server, n int) {
	t.Helper()
	p.WaitFor(t, 30*time.Second, `count_over_time(`+counterName+`{job="app"}[10m])`, func(v []prometheustest.Sample) bool {
		return len(v) == 1 && v[0].Value >= float64(n)
	})
}

const (
	grace = 10 * time.Second
	wait  = 5 * time.Second
)

func TestTerminationStoresTheLastValueAndFreesTheSlot(t *testing.T) {
	f := newFixture(t, 30*time.Second)
	injected := f.admit(t, "final", 2)
	a := startApp(t, appOpts{tick: 10 * time.Millisecond, linger: 300 * time.Millisecond})
	sc := sidecartest.Start(t, sidecartest.Options{Env: sidecarEnv(injected, a.url(), grace, wait)})
	p := startPrometheus(t, sc.Addr())
	waitScraped(t, p, 3)
	if h, _ := f.holder(t, injected); h != injected["PMPH_LEASE_HOLDER"] {
		t.Fatalf("slot held by %q before termination, want the sidecar's %q", h, injected["PMPH_LEASE_HOLDER"])
	}

	// The kubelet signals every container of the pod at once.
	signalled := time.Now()
	_ = syscall.Kill(a.cmd.Process.Pid, syscall.SIGTERM)
	_ = sc.Signal(syscall.SIGTERM)
	code, err := sc.Wait(grace)
	if err != nil {
		t.Fatal(err)
	}
	took := sc.ExitedAt().Sub(signalled)
	lastExposed := a.wait(t, 10*time.Second)
	t.Logf("sidecar exited %s after SIGTERM; the app's last exposed value was %v", took, lastExposed)
	if code != 0 {
		t.Errorf("exit code %d, want 0", code)
	}
	if bound := sidecar.PlanTermination(grace, wait).ExitWithin; took > bound {
		t.Errorf("the sidecar exited %s after SIGTERM, beyond its bound of %s", took, bound)
	}

	// The newest stored sample is the app's last value, scraped after the
	// signal.
	got, ok := lastSample(t, p)
	if !ok || got.Value != lastExposed {
		t.Errorf("the last stored sample is %+v, want the app's last exposed value %v", got, lastExposed)
	}
	if got.Time.Before(signalled.Add(-100 * time.Millisecond)) {
		t.Errorf("the last stored sample is from %s, before the signal at %s", got.Time, signalled)
	}
	if h, anyNode := f.holder(t, injected); h != "" || anyNode {
		t.Errorf("the slot is still held after the exit (quorum holder %q, on some node: %v)", h, anyNode)
	}
	for _, msg := range []string{"Termination signal received", "The final scrape was answered.", "Stopped serving.", "Released the semaphore slot.", "Exiting."} {
		if len(sc.Find("info", msg)) != 1 {
			t.Errorf("the log lacks %q", msg)
		}
	}
}

func TestAppGoneBeforeTerminationGetsTheLastGoodBody(t *testing.T) {
	f := newFixture(t, 30*time.Second)
	injected := f.admit(t, "gone", 1)
	a := startApp(t, appOpts{tick: 10 * time.Millisecond})
	sc := sidecartest.Start(t, sidecartest.Options{Env: sidecarEnv(injected, a.url(), grace, wait)})
	p := startPrometheus(t, sc.Addr())
	waitScraped(t, p, 3)

	// The app has gone (it crashed, or it exits faster than the sidecar
	// gets its signal).
	_ = syscall.Kill(a.cmd.Process.Pid, syscall.SIGTERM)
	lastExposed := a.wait(t, 10*time.Second)
	signalled := time.Now()
	_ = sc.Signal(syscall.SIGTERM)
	code, err := sc.Wait(grace)
	if err != nil || code != 0 {
		t.Fatalf("exit %d, %v", code, err)
	}
	got, ok := lastSample(t, p)
	if !ok || got.Value != lastExposed || got.Time.Before(signalled.Add(-100*time.Millisecond)) {
		t.Errorf("the last stored sample is %+v, want the app's last value %v scraped after the signal at %s", got, lastExposed, signalled)
	}
	if len(sc.Find("info", "Answered a scrape with the last good body")) == 0 {
		t.Error("the log does not say the final scrape got the last good body")
	}
	if len(sc.Find("warn", "Fetching the app's metrics at termination failed")) != 1 {
		t.Error("the failed fetch at termination was not logged")
	}
	if h, anyNode := f.holder(t, injected); h != "" || anyNode {
		t.Errorf("the slot is still held after the exit (%q, %v)", h, anyNode)
	}
}

func TestNeverScrapedExitsPromptly(t *testing.T) {
	f := newFixture(t, 30*time.Second)
	injected := f.admit(t, "unseen", 1)
	a := startApp(t, appOpts{tick: 10 * time.Millisecond})
	sc := sidecartest.Start(t, sidecartest.Options{Env: sidecarEnv(injected, a.url(), grace, wait)})
	// The lease is renewed at once at start; wait for it, so that the exit
	// is not raced against the first renewal.
	if !sc.WaitLog("info", "Renewed the semaphore lease.", 10*time.Second) {
		t.Fatal("the first renewal was not logged")
	}
	signalled := time.Now()
	_ = sc.Signal(syscall.SIGTERM)
	code, err := sc.Wait(grace)
	if err != nil || code != 0 {
		t.Fatalf("exit %d, %v", code, err)
	}
	if took := sc.ExitedAt().Sub(signalled); took > time.Second {
		t.Errorf("a sidecar that was never scraped took %s to exit", took)
	}
	if len(sc.Find("info", "No scrape arrived before the termination signal")) != 1 {
		t.Error("the log does not say why it did not wait")
	}
	if h, anyNode := f.holder(t, injected); h != "" || anyNode {
		t.Errorf("the slot is still held after the exit (%q, %v)", h, anyNode)
	}
}

func TestLeaseAPIDownAtTermination(t *testing.T) {
	const ttl = 3 * time.Second
	f := newFixture(t, ttl)
	injected := f.admit(t, "down", 1)
	a := startApp(t, appOpts{tick: 10 * time.Millisecond})
	const shortGrace = 4 * time.Second
	sc := sidecartest.Start(t, sidecartest.Options{Env: sidecarEnv(injected, a.url(), shortGrace, wait)})
	p := startPrometheus(t, sc.Addr())
	waitScraped(t, p, 2)
	if !sc.WaitLog("info", "Renewed the semaphore lease.", 10*time.Second) {
		t.Fatal("the first renewal was not logged")
	}

	if code, err := f.wh.Stop(); err != nil || code != 0 {
		t.Fatalf("stopping the webhook: exit %d, %v", code, err)
	}
	if h, _ := f.holder(t, injected); h != injected["PMPH_LEASE_HOLDER"] {
		t.Fatalf("the slot is not held when the signal is sent (%q)", h)
	}
	signalled := time.Now()
	_ = syscall.Kill(a.cmd.Process.Pid, syscall.SIGTERM)
	_ = sc.Signal(syscall.SIGTERM)
	code, err := sc.Wait(shortGrace)
	if err != nil {
		t.Fatal(err)
	}
	took := sc.ExitedAt().Sub(signalled)
	t.Logf("sidecar exited %s after SIGTERM with the lease API down", took)
	if code != 0 {
		t.Errorf("exit code %d, want 0", code)
	}
	// It gives up releasing at its bound; the process exit follows.
	if bound := sidecar.PlanTermination(shortGrace, wait).ExitWithin; took > bound+500*time.Millisecond || took >= shortGrace {
		t.Errorf("the sidecar exited %s after SIGTERM, beyond its bound of %s (grace period %s)", took, bound, shortGrace)
	}
	if len(sc.Find("error", "could not be given back")) != 1 {
		t.Error("the failed release was not logged as an error")
	}
	// Nobody released it: the slot frees itself when the lease's TTL runs
	// out, at most a TTL after the last renewal.
	deadline := time.Now().Add(ttl + time.Second)
	for {
		h, anyNode := f.holder(t, injected)
		if h == "" && !anyNode {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the slot is still held %s after the sidecar exited", time.Since(sc.ExitedAt()))
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Logf("the slot was free %s after the sidecar exited", time.Since(sc.ExitedAt()))
}

func TestRenewalKeepsTheSlotAcrossWebhookRestarts(t *testing.T) {
	const ttl = 2 * time.Second
	f := newFixture(t, ttl)
	injected := f.admit(t, "renew", 3)
	a := startApp(t, appOpts{tick: 10 * time.Millisecond})
	env := append(sidecarEnv(injected, a.url(), grace, wait), "PMPH_LOG_LEVEL=debug")
	sc := sidecartest.Start(t, sidecartest.Options{Env: env})
	if !sc.WaitLog("info", "Renewed the semaphore lease.", 10*time.Second) {
		t.Fatal("the first renewal was not logged")
	}
	holder := injected["PMPH_LEASE_HOLDER"]
	checkHeld := func(d time.Duration) {
		t.Helper()
		for until := time.Now().Add(d); time.Now().Before(until); {
			if h, _ := f.holder(t, injected); h != holder {
				t.Fatalf("the slot is held by %q, want %q", h, holder)
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
	checkHeld(2 * ttl)
	// Any replica serves the lease API: a restarted one too.
	if code, err := f.wh.Stop(); err != nil || code != 0 {
		t.Fatalf("stopping the webhook: exit %d, %v", code, err)
	}
	if err := f.wh.Start(); err != nil {
		t.Fatal(err)
	}
	checkHeld(2 * ttl)
	renewals := len(sc.Find("", "Renewed the semaphore lease."))
	// With TTL 2s the sidecar renews every 0.53-0.67s: 4 TTLs hold at least 10.
	if renewals < 10 {
		t.Errorf("%d renewals logged over 4 TTLs, want at least 10", renewals)
	}
	if n := len(sc.Find("error", "")); n != 0 {
		t.Errorf("%d errors logged while the webhook restarted", n)
	}
	_ = sc.Signal(syscall.SIGTERM)
	if code, err := sc.Wait(grace); err != nil || code != 0 {
		t.Fatalf("exit %d, %v", code, err)
	}
	if h, anyNode := f.holder(t, injected); h != "" || anyNode {
		t.Errorf("the slot is still held after the exit (%q, %v)", h, anyNode)
	}
}

func TestOverLimitIsExposed(t *testing.T) {
	f := newFixture(t, 30*time.Second)
	late := f.admit(t, "full", 1)
	// The pod stayed Pending past its startup timeout: its lease expired,
	// and another pod got the only slot.
	lateLease := semaphore.Lease{Name: testNamespace + "/full", Slot: 0, Holder: late["PMPH_LEASE_HOLDER"]}
	if _, err := f.sem.Release(context.Background(), lateLease); err != nil {
		t.Fatal(err)
	}
	other := f.admit(t, "full", 1)

	a := startApp(t, appOpts{tick: 10 * time.Millisecond})
	env := append(sidecarEnv(late, a.url(), grace, wait), "PMPH_RENEW_INTERVAL=300ms")
	sc := sidecartest.Start(t, sidecartest.Options{Env: env})
	overLimit := func() string {
		t.Helper()
		resp, err := http.Get(sc.URL() + sidecar.MetricsPath)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		for line := range strings.SplitSeq(string(b), "\n") {
			if v, ok := strings.CutPrefix(line, "prometheus_metrics_proxy_hook_sidecar_over_limit "); ok {
				return v
			}
		}
		return ""
	}
	waitFor(t, 10*time.Second, "over_limit 1", func() bool { return overLimit() == "1" })
	if len(sc.Find("error", "The startup lease was gone")) != 1 || len(sc.Find("error", "runs over the limit")) != 1 {
		t.Error("the lost lease and the over-limit state were not each logged once as errors")
	}
	// The other pod ends: the late one takes the slot.
	otherLease := semaphore.Lease{Name: testNamespace + "/full", Slot: 0, Holder: other["PMPH_LEASE_HOLDER"]}
	if _, err := f.sem.Release(context.Background(), otherLease); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "over_limit 0", func() bool { return overLimit() == "0" })
	if h, _ := f.holder(t, late); h != late["PMPH_LEASE_HOLDER"] {
		t.Errorf("the slot is held by %q, want the late pod's %q", h, late["PMPH_LEASE_HOLDER"])
	}
}

// TestProxyPassesFormatsThroughUnchanged scrapes the app directly and
// through the sidecar process with every format and encoding client_golang
// serves, and compares the bytes.
func TestProxyPassesFormatsThroughUnchanged(t *testing.T) {
	a := startApp(t, appOpts{padBytes: 64 << 10})
	sc := sidecartest.Start(t, sidecartest.Options{Env: []string{"PMPH_UPSTREAM=" + a.url()}})
	client := &http.Client{Transport: &http.Transport{DisableCompression: true}, Timeout: 10 * time.Second}
	scrape := func(url, accept, encoding string) (http.Header, []byte) {
		t.Helper()
		req, _ := http.NewRequest(http.MethodGet, url, nil)
		req.Header.Set("Accept", accept)
		if encoding != "" {
			req.Header.Set("Accept-Encoding", encoding)
		}
		resp, err := client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		if err != nil {
			t.Fatal(err)
		}
		return resp.Header, b
	}
	tests := []struct{ name, accept, wantType string }{
		{"text", "text/plain;version=0.0.4", "text/plain"},
		{"OpenMetrics", "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5", "application/openmetrics-text"},
		{"protobuf", "application/vnd.google.protobuf;proto=io.prometheus.client.MetricFamily;encoding=delimited", "application/vnd.google.protobuf"},
	}
	for _, tt := range tests {
		for _, enc := range []string{"", "gzip"} {
			t.Run(tt.name+" "+enc, func(t *testing.T) {
				dh, direct := scrape(a.url(), tt.accept, enc)
				ph, proxied := scrape(sc.URL()+"/metrics", tt.accept, enc)
				if !bytes.Equal(direct, proxied) {
					t.Errorf("%d bytes direct, %d through the sidecar, and they differ", len(direct), len(proxied))
				}
				if !strings.HasPrefix(ph.Get("Content-Type"), tt.wantType) || ph.Get("Content-Type") != dh.Get("Content-Type") {
					t.Errorf("Content-Type %q through the sidecar, %q direct", ph.Get("Content-Type"), dh.Get("Content-Type"))
				}
				if ph.Get("Content-Encoding") != enc || dh.Get("Content-Encoding") != enc {
					t.Errorf("Content-Encoding %q through the sidecar, %q direct, want %q", ph.Get("Content-Encoding"), dh.Get("Content-Encoding"), enc)
				}
			})
		}
	}
}

func TestInvalidConfigurationStopsStartUp(t *testing.T) {
	cmd := exec.Command(sidecartest.Binary(t))
	cmd.Env = append(os.Environ(), "PMPH_UPSTREAM_TIMEOUT=8")
	out, err := cmd.CombinedOutput()
	ee, ok := err.(*exec.ExitError)
	if !ok || ee.ExitCode() != 2 {
		t.Fatalf("exit %v, want code 2", err)
	}
	want := "The sidecar cannot start: PMPH_UPSTREAM_TIMEOUT \"8\" must be a Go duration such as 30s or 5m.\n"
	if string(out) != want {
		t.Errorf("output\n%q\nwant\n%q", out, want)
	}
}

func waitFor(t *testing.T, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", timeout, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
