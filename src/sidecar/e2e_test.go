package sidecar_test

// End-to-end tests of the sidecar as it runs in a pod: the real binary, in
// front of an app process exposing a moving counter, scraped by a real
// Prometheus every second, keeping a lease through the real webhook process
// on three real Redis nodes. The lease comes from an admission review sent
// to the webhook, so the sidecar runs with exactly the environment the
// webhook injects.

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/kaidotio/prometheus-metrics-proxy-hook/src/semaphore"
	"github.com/kaidotio/prometheus-metrics-proxy-hook/src/sidecar"
	"github.com/kaidotio/prometheus-metrics-proxy-hook/src/testenv/countingapp"
	"github.com/kaidotio/prometheus-metrics-proxy-hook/src/testenv/prometheustest"
	"github.com/kaidotio/prometheus-metrics-proxy-hook/src/testenv/redistest"
	"github.com/kaidotio/prometheus-metrics-proxy-hook/src/testenv/sidecartest"
	"github.com/kaidotio/prometheus-metrics-proxy-hook/src/testenv/webhooktest"
)

func TestMain(m *testing.M) {
	countingapp.MaybeRun()
	os.Exit(m.Run())
}

const counterName = countingapp.CounterName

type appOpts = countingapp.Options

func startApp(t testing.TB, o appOpts) *countingapp.App { return countingapp.Start(t, o) }

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
		value := op.Value
		if op.Path == "/spec/initContainers" {
			// A native sidecar into a pod without init containers: the
			// value is the array.
			var list []json.RawMessage
			if json.Unmarshal(value, &list) != nil || len(list) != 1 {
				continue
			}
			value = list[0]
		}
		isSidecarPath := op.Path == "/spec/containers/-" || op.Path == "/spec/initContainers" || op.Path == "/spec/initContainers/0"
		if !isSidecarPath || json.Unmarshal(value, &c) != nil || c.Name != "prometheus-metrics-proxy" {
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
// grace period, Prometheus' 1 s test interval, and a fetch interval short
// against the app's tick.
func sidecarEnv(injected map[string]string, upstream string, grace time.Duration, native bool) []string {
	var env []string
	for k, v := range injected {
		env = append(env, k+"="+v)
	}
	// No kubelet writes the projected token here, and the webhook runs
	// without Kubernetes (--lease-api-auth=disabled); src/leaseserver tests
	// the token checks against the real API server.
	return append(env, "PMPH_LISTEN_ADDRESS=127.0.0.1:0", "PMPH_UPSTREAM="+upstream,
		"PMPH_GRACE_PERIOD="+grace.String(), "PMPH_SCRAPE_INTERVAL="+scrapeInterval.String(),
		"PMPH_FINAL_FETCH_INTERVAL="+fetchInterval.String(), "PMPH_NATIVE_SIDECAR="+strconv.FormatBool(native),
		"PMPH_LEASE_TOKEN_FILE=")
}

func startPrometheus(t *testing.T, target string) *prometheustest.Server {
	t.Helper()
	return prometheustest.Start(t, prometheustest.Options{Config: prometheustest.StaticConfig(prometheustest.Job{
		Name: "app", Interval: scrapeInterval, Targets: []string{target},
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
	grace          = 10 * time.Second
	scrapeInterval = time.Second
	fetchInterval  = 200 * time.Millisecond
	appTick        = 50 * time.Millisecond
)

// terminatePod does what the kubelet does to the pod's containers, per the
// Kubernetes documentation (pod lifecycle, "Termination of Pods"; sidecar
// containers): with a native sidecar it runs the app container's preStop
// hook (the webhook injects one that calls the sidecar), signals the app,
// and signals the sidecar only once the app has exited; with a regular
// container it signals both at once. It returns when the termination began.
func terminatePod(t *testing.T, a *countingapp.App, sc *sidecartest.Sidecar, native bool) time.Time {
	t.Helper()
	began := time.Now()
	if !native {
		_ = a.Signal(syscall.SIGTERM)
		_ = sc.Signal(syscall.SIGTERM)
		return began
	}
	resp, err := http.Get(sc.URL() + sidecar.TerminatingPath)
	if err != nil {
		t.Fatalf("the preStop hook failed: %v", err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("the preStop hook answered %s", resp.Status)
	}
	_ = a.Signal(syscall.SIGTERM)
	go func() {
		<-a.Exited()
		_ = sc.Signal(syscall.SIGTERM)
	}()
	return began
}

// TestFinalScrapeHasTheAppsStateAtExit is the final-scrape guarantee,
// measured: an app that keeps counting while it drains after SIGTERM, a
// real Prometheus scraping it through the sidecar, and the last sample
// Prometheus stores compared with the value the app logged at its exit.
func TestFinalScrapeHasTheAppsStateAtExit(t *testing.T) {
	for _, native := range []bool{true, false} {
		t.Run(map[bool]string{true: "native", false: "regular"}[native], func(t *testing.T) {
			f := newFixture(t, 30*time.Second)
			injected := f.admit(t, "final", 2)
			a := startApp(t, appOpts{Tick: appTick, Drain: 2 * time.Second})
			sc := sidecartest.Start(t, sidecartest.Options{Env: sidecarEnv(injected, a.URL(), grace, native)})
			p := startPrometheus(t, sc.Addr())
			waitScraped(t, p, 3)
			if h, _ := f.holder(t, injected); h != injected["PMPH_LEASE_HOLDER"] {
				t.Fatalf("slot held by %q before termination, want the sidecar's %q", h, injected["PMPH_LEASE_HOLDER"])
			}

			freed := f.watchFreed(t, injected)
			began := terminatePod(t, a, sc, native)
			final, lastExposed := a.Wait(t, grace)
			code, err := sc.Wait(grace)
			if err != nil {
				t.Fatal(err)
			}
			if code != 0 {
				t.Errorf("exit code %d, want 0", code)
			}
			took := sc.ExitedAt().Sub(began)
			if bound := sidecar.PlanTermination(grace).ExitWithin; took > bound {
				t.Errorf("the sidecar exited %s after the termination began, beyond its bound of %s", took, bound)
			}
			// The slot goes back only after the app has exited (seen from
			// Redis; the app's exit is seen a moment after it closed its
			// listener).
			if at := <-freed; at.Before(a.ExitedAt().Add(-50 * time.Millisecond)) {
				t.Errorf("the slot was free at %s, before the app exited at %s", at, a.ExitedAt())
			} else {
				t.Logf("the slot was free %s after the app exited", at.Sub(a.ExitedAt()))
			}

			got, ok := lastSample(t, p)
			if !ok {
				t.Fatal("no sample stored")
			}
			// What the docs promise: the last sample is the app's state
			// fetched at most one fetch interval before it stopped
			// answering; the app counts once per tick. (The app may have
			// collected a larger value for an answer its exit cut off.)
			missed := final - got.Value
			t.Logf("app final value %v, last exposed %v, last stored sample %v (missed %v ticks of %s); sidecar exited %s after the termination began",
				final, lastExposed, got.Value, missed, appTick, took)
			if got.Value > lastExposed {
				t.Errorf("the last stored sample %v is beyond the largest value the app exposed, %v", got.Value, lastExposed)
			}
			// One fetch interval of ticks, one for the tick under way, and
			// two for the fetch's own time on a loaded machine.
			if maxMissed := float64(fetchInterval/appTick) + 3; missed < 0 || missed > maxMissed {
				t.Errorf("the last stored sample %v is %v ticks short of the app's final value %v, want at most %v (one fetch interval and the fetch's own time)", got.Value, missed, final, maxMissed)
			}
			if h, anyNode := f.holder(t, injected); h != "" || anyNode {
				t.Errorf("the slot is still held after the exit (quorum holder %q, on some node: %v)", h, anyNode)
			}
			for _, msg := range []string{"The termination began", "Termination signal received", "The app stopped answering",
				"The final scrape was answered", "Stopped serving.", "Released the semaphore slot.", "Exiting."} {
				if len(sc.Find("info", msg)) != 1 {
					t.Errorf("the log lacks %q", msg)
				}
			}
		})
	}
}

// watchFreed polls the pod's slot in Redis and sends the time it was first
// seen free on no node.
func (f *fixture) watchFreed(t *testing.T, env map[string]string) <-chan time.Time {
	t.Helper()
	size, _ := strconv.Atoi(env["PMPH_LEASE_SIZE"])
	slot, _ := strconv.Atoi(env["PMPH_LEASE_SLOT"])
	name := testNamespace + "/" + env["PMPH_LEASE_KEY"]
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	t.Cleanup(cancel)
	out := make(chan time.Time, 1)
	go func() {
		defer close(out)
		for ctx.Err() == nil {
			st, err := f.sem.Inspect(ctx, name, size)
			if err == nil && st.Slots[slot].Holder == "" && !slices.ContainsFunc(st.Slots[slot].Holders, func(h string) bool { return h != "" }) {
				out <- time.Now()
				return
			}
			time.Sleep(10 * time.Millisecond)
		}
	}()
	return out
}

func TestAppGoneBeforeTerminationGetsTheLastGoodBody(t *testing.T) {
	f := newFixture(t, 30*time.Second)
	injected := f.admit(t, "gone", 1)
	a := startApp(t, appOpts{Tick: appTick})
	sc := sidecartest.Start(t, sidecartest.Options{Env: sidecarEnv(injected, a.URL(), grace, true)})
	p := startPrometheus(t, sc.Addr())
	waitScraped(t, p, 3)

	// The app has gone without the preStop hook (it crashed, or the pod
	// has a preStop hook of its own): the last scrape before is all there is.
	_ = a.Signal(syscall.SIGTERM)
	final, _ := a.Wait(t, 10*time.Second)
	_ = sc.Signal(syscall.SIGTERM)
	code, err := sc.Wait(grace)
	if err != nil || code != 0 {
		t.Fatalf("exit %d, %v", code, err)
	}
	// What the docs promise without the hook: the app's state at the last
	// scrape or fetch before it stopped, up to one scrape interval old.
	got, ok := lastSample(t, p)
	missed := final - got.Value
	t.Logf("app final value %v, last stored sample %v (missed %v ticks of %s)", final, got.Value, missed, appTick)
	if maxMissed := float64(scrapeInterval/appTick) + 1; !ok || missed < 0 || missed > maxMissed {
		t.Errorf("the last stored sample is %+v, want at most %v ticks short of the app's final value %v", got, maxMissed, final)
	}
	if len(sc.Find("info", "The final scrape was answered")) != 1 {
		t.Error("the log does not say the final scrape was answered")
	}
	if h, anyNode := f.holder(t, injected); h != "" || anyNode {
		t.Errorf("the slot is still held after the exit (%q, %v)", h, anyNode)
	}
}

func TestNeverScrapedExitsOnceTheAppStopped(t *testing.T) {
	f := newFixture(t, 30*time.Second)
	injected := f.admit(t, "unseen", 1)
	a := startApp(t, appOpts{Tick: appTick, Drain: time.Second})
	sc := sidecartest.Start(t, sidecartest.Options{Env: sidecarEnv(injected, a.URL(), grace, false)})
	// The lease is renewed at once at start; wait for it, so that the exit
	// is not raced against the first renewal.
	if !sc.WaitLog("info", "Renewed the semaphore lease.", 10*time.Second) {
		t.Fatal("the first renewal was not logged")
	}
	terminatePod(t, a, sc, false)
	a.Wait(t, grace)
	code, err := sc.Wait(grace)
	if err != nil || code != 0 {
		t.Fatalf("exit %d, %v", code, err)
	}
	// Regular mode: the sidecar holds the slot while the app drains, and
	// then does not wait for a scrape that will not come.
	if sc.ExitedAt().Before(a.ExitedAt()) {
		t.Errorf("the sidecar exited at %s, before the app at %s", sc.ExitedAt(), a.ExitedAt())
	}
	if took := sc.ExitedAt().Sub(a.ExitedAt()); took > time.Second {
		t.Errorf("a sidecar that was never scraped took %s to exit after the app", took)
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
	a := startApp(t, appOpts{Tick: appTick})
	const shortGrace = 4 * time.Second
	sc := sidecartest.Start(t, sidecartest.Options{Env: sidecarEnv(injected, a.URL(), shortGrace, false)})
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
	signalled := terminatePod(t, a, sc, false)
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
	if bound := sidecar.PlanTermination(shortGrace).ExitWithin; took > bound+500*time.Millisecond || took >= shortGrace {
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
	// The TTL covers a restart of the race-built webhook on a loaded
	// machine (certificates, Redis ping, listeners), which took over 5 s.
	const ttl = 15 * time.Second
	f := newFixture(t, ttl)
	injected := f.admit(t, "renew", 3)
	a := startApp(t, appOpts{Tick: appTick})
	env := append(sidecarEnv(injected, a.URL(), grace, true), "PMPH_LOG_LEVEL=debug")
	sc := sidecartest.Start(t, sidecartest.Options{Env: env})
	if !sc.WaitLog("info", "Renewed the semaphore lease.", 10*time.Second) {
		t.Fatal("the first renewal was not logged")
	}
	holder := injected["PMPH_LEASE_HOLDER"]
	// Any replica serves the lease API: a restarted one too.
	stopped := time.Now()
	before := len(sc.Find("", "Renewed the semaphore lease."))
	if code, err := f.wh.Stop(); err != nil || code != 0 {
		t.Fatalf("stopping the webhook: exit %d, %v", code, err)
	}
	if err := f.wh.Start(); err != nil {
		t.Fatal(err)
	}
	// The last renewal before the stop holds the slot for at most a TTL:
	// held a third of a TTL beyond that, the slot was renewed after the
	// restart.
	for time.Now().Before(stopped.Add(ttl + ttl/3)) {
		if h, _ := f.holder(t, injected); h != holder {
			t.Fatalf("%s after the stop the slot is held by %q, want %q", time.Since(stopped).Round(time.Millisecond), h, holder)
		}
		time.Sleep(100 * time.Millisecond)
	}
	if after := len(sc.Find("", "Renewed the semaphore lease.")); after <= before {
		t.Errorf("no renewal logged after the restart (%d before, %d after)", before, after)
	}
	if n := len(sc.Find("error", "")); n != 0 {
		t.Errorf("%d errors logged while the webhook restarted", n)
	}
	terminatePod(t, a, sc, true)
	if code, err := sc.Wait(grace); err != nil || code != 0 {
		t.Fatalf("exit %d, %v", code, err)
	}
	if h, anyNode := f.holder(t, injected); h != "" || anyNode {
		t.Errorf("the slot is still held after the exit (%q, %v)", h, anyNode)
	}
}

// probeStarted is the kubelet's startup probe: true on 200, false on 503.
func probeStarted(t *testing.T, sc *sidecartest.Sidecar) bool {
	t.Helper()
	resp, err := http.Get(sc.URL() + sidecar.StartedPath)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	switch resp.StatusCode {
	case http.StatusOK:
		return true
	case http.StatusServiceUnavailable:
		return false
	}
	t.Fatalf("the startup probe answered %s", resp.Status)
	return false
}

// overLimit reads the sidecar's over-limit gauge.
func overLimit(t *testing.T, sc *sidecartest.Sidecar) string {
	t.Helper()
	return ownMetric(t, sc, "prometheus_metrics_proxy_hook_sidecar_over_limit")
}

// ownMetric is the value of one series of the sidecar's own metrics, ""
// when it is not exposed.
func ownMetric(t *testing.T, sc *sidecartest.Sidecar, series string) string {
	t.Helper()
	resp, err := http.Get(sc.URL() + sidecar.MetricsPath)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	for line := range strings.SplitSeq(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, series+" "); ok {
			return v
		}
	}
	return ""
}

// TestStartGateTakesALapsedLeaseAgain: the pod stayed Pending past its
// startup timeout, its admission-time lease lapsed; the startup probe
// passes only once the sidecar took a slot again with the same holder id.
func TestStartGateTakesALapsedLeaseAgain(t *testing.T) {
	f := newFixture(t, 30*time.Second)
	injected := f.admit(t, "lapsed", 2)
	holder := injected["PMPH_LEASE_HOLDER"]
	lapsed := semaphore.Lease{Name: testNamespace + "/lapsed", Slot: 0, Holder: holder}
	lapsed.Slot, _ = strconv.Atoi(injected["PMPH_LEASE_SLOT"])
	if _, err := f.sem.Release(context.Background(), lapsed); err != nil {
		t.Fatal(err)
	}
	a := startApp(t, appOpts{Tick: appTick})
	sc := sidecartest.Start(t, sidecartest.Options{Env: sidecarEnv(injected, a.URL(), grace, true)})
	waitFor(t, 10*time.Second, "the startup probe to pass", func() bool { return probeStarted(t, sc) })
	// The gate opened, so a quorum holds a slot for this holder now.
	st, err := f.sem.Inspect(context.Background(), testNamespace+"/lapsed", 2)
	if err != nil {
		t.Fatal(err)
	}
	held := 0
	for _, s := range st.Slots {
		if s.Holder == holder {
			held++
		}
	}
	if held != 1 {
		t.Errorf("%d slots held by the pod's holder %s once the startup probe passed, want 1", held, holder)
	}
	if len(sc.Find("error", "The startup lease was gone at the first renewal")) != 1 || len(sc.Find("warn", "Took a slot of the semaphore.")) != 1 {
		t.Errorf("the lapsed lease and the slot taken again were not logged; log:\n%s", sc.Logs())
	}
	if v := overLimit(t, sc); v != "0" {
		t.Errorf("over_limit = %s, want 0", v)
	}
}

// TestStartGateWaitsWhileFull: the lease lapsed and another pod took the
// only slot. A native sidecar's startup probe keeps failing (the app is
// held back; the pod is not over the limit) and passes once the slot
// frees up. A regular container cannot hold the app back: its pod runs over
// the limit meanwhile, and the gauge says so.
func TestStartGateWaitsWhileFull(t *testing.T) {
	for _, native := range []bool{true, false} {
		t.Run(map[bool]string{true: "native", false: "regular"}[native], func(t *testing.T) {
			f := newFixture(t, 30*time.Second)
			late := f.admit(t, "full", 1)
			lateLease := semaphore.Lease{Name: testNamespace + "/full", Slot: 0, Holder: late["PMPH_LEASE_HOLDER"]}
			if _, err := f.sem.Release(context.Background(), lateLease); err != nil {
				t.Fatal(err)
			}
			other := f.admit(t, "full", 1)

			a := startApp(t, appOpts{Tick: appTick})
			sc := sidecartest.Start(t, sidecartest.Options{Env: sidecarEnv(late, a.URL(), grace, native)})
			if !sc.WaitLog("", "No slot of the semaphore is free", 10*time.Second) {
				t.Fatal("the full semaphore was not logged")
			}
			wantGauge := map[bool]string{true: "0", false: "1"}[native]
			// Several full answers in a row, with backoff: the probe fails
			// throughout and the sidecar keeps running.
			waitFor(t, 20*time.Second, "three full answers", func() bool {
				n, _ := strconv.Atoi(ownMetric(t, sc, `prometheus_metrics_proxy_hook_sidecar_lease_operations_total{operation="acquire",result="full"}`))
				return n >= 3
			})
			if probeStarted(t, sc) {
				t.Fatal("the startup probe passed while the semaphore is full")
			}
			if v := overLimit(t, sc); v != wantGauge {
				t.Errorf("over_limit = %s while waiting, want %s", v, wantGauge)
			}
			if !sc.Running() {
				t.Fatal("the sidecar exited while waiting for a slot")
			}

			otherLease := semaphore.Lease{Name: testNamespace + "/full", Slot: 0, Holder: other["PMPH_LEASE_HOLDER"]}
			if _, err := f.sem.Release(context.Background(), otherLease); err != nil {
				t.Fatal(err)
			}
			waitFor(t, 10*time.Second, "the startup probe to pass", func() bool { return probeStarted(t, sc) })
			if h, _ := f.holder(t, late); h != late["PMPH_LEASE_HOLDER"] {
				t.Errorf("the slot is held by %q, want the late pod's %q", h, late["PMPH_LEASE_HOLDER"])
			}
			if v := overLimit(t, sc); v != "0" {
				t.Errorf("over_limit = %s with the slot taken, want 0", v)
			}
		})
	}
}

// TestProxyPassesFormatsThroughUnchanged scrapes the app directly and
// through the sidecar process with every format and encoding client_golang
// serves, and compares the bytes.
func TestProxyPassesFormatsThroughUnchanged(t *testing.T) {
	a := startApp(t, appOpts{PadBytes: 64 << 10})
	sc := sidecartest.Start(t, sidecartest.Options{Env: []string{"PMPH_UPSTREAM=" + a.URL()}})
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
				dh, direct := scrape(a.URL(), tt.accept, enc)
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
