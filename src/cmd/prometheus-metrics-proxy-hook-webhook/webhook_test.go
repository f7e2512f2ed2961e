package main

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptrace"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/kaidotio/prometheus-metrics-proxy-hook/src/testenv/redistest"
	"github.com/kaidotio/prometheus-metrics-proxy-hook/src/testenv/webhooktest"
)

const annotated = `{"apiVersion":"v1","kind":"Pod","metadata":{"generateName":"app-","annotations":{` +
	`"prometheus-metrics-proxy-hook.kaidotio.github.io/prometheus-metrics-proxy":"true",` +
	`"prometheus-metrics-proxy-hook.kaidotio.github.io/semaphore-key":"jobs",` +
	`"prometheus-metrics-proxy-hook.kaidotio.github.io/semaphore-size":"2",` +
	`"prometheus.io/port":"8080"}},"spec":{"containers":[{"name":"app","image":"app:1"}]}}`

func review(uid, pod string) []byte {
	return []byte(`{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"uid":"` + uid +
		`","kind":{"group":"","version":"v1","kind":"Pod"},"resource":{"group":"","version":"v1","resource":"pods"},` +
		`"operation":"CREATE","namespace":"ns","object":` + pod + `}}`)
}

type answer struct {
	APIVersion string `json:"apiVersion"`
	Kind       string `json:"kind"`
	Response   struct {
		UID      string   `json:"uid"`
		Allowed  bool     `json:"allowed"`
		Patch    []byte   `json:"patch"`
		Warnings []string `json:"warnings"`
		Status   *struct {
			Code    int    `json:"code"`
			Message string `json:"message"`
		} `json:"status"`
	} `json:"response"`
}

func mutate(t *testing.T, c *http.Client, url string, body []byte) (*answer, error) {
	t.Helper()
	resp, err := c.Post(url, "application/json", bytes.NewReader(body))
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 200 {
		return nil, errors.New(resp.Status + ": " + string(b))
	}
	var a answer
	if err := json.Unmarshal(b, &a); err != nil {
		return nil, err
	}
	return &a, nil
}

func TestWebhookProcess(t *testing.T) {
	redis := redistest.StartT(t, 3)
	// 500 ms per Redis node: the test checks the process's behaviour while
	// the other packages' tests load the same cores, not Redis latency.
	wh := webhooktest.Start(t, webhooktest.Options{Redis: redis.Addrs(), RedisPassword: redis.Password,
		Args: []string{"--redis-timeout=500ms"}})
	c := wh.Client()

	a, err := mutate(t, c, wh.MutateURL(), review("uid-1", annotated))
	if err != nil {
		t.Fatal(err)
	}
	if a.APIVersion != "admission.k8s.io/v1" || a.Kind != "AdmissionReview" || a.Response.UID != "uid-1" || !a.Response.Allowed {
		t.Fatalf("answer %+v", a)
	}
	patch := string(a.Response.Patch)
	for _, want := range []string{`"PMPH_LEASE_URL","value":"` + wh.LeaseURL() + `"`, "BEGIN CERTIFICATE", `"PMPH_LEASE_HOLDER"`} {
		if !strings.Contains(patch, want) {
			t.Fatalf("patch lacks %s: %s", want, patch)
		}
	}

	t.Run("metrics", func(t *testing.T) {
		resp, err := http.Get(wh.MetricsURL())
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		for _, want := range []string{
			`prometheus_metrics_proxy_hook_admission_requests_total{reason="injected",result="allowed"} 1`,
			`prometheus_metrics_proxy_hook_admission_duration_seconds_bucket{path="semaphore"`,
			`prometheus_metrics_proxy_hook_semaphore_operations_total{operation="acquire",result="ok"} 1`,
			`prometheus_metrics_proxy_hook_redis_node_up{node="` + redis.Addrs()[0] + `"} 1`,
			`prometheus_metrics_proxy_hook_certificate_expiry_timestamp_seconds{certificate="serving"}`,
			`prometheus_metrics_proxy_hook_certificate_expiry_timestamp_seconds{certificate="ca"}`,
			`prometheus_metrics_proxy_hook_build_info{goversion="go`,
			"go_goroutines", "process_resident_memory_bytes",
		} {
			if !strings.Contains(string(b), want) {
				t.Errorf("metrics lack %s", want)
			}
		}
		if strings.Contains(string(b), redis.Password) {
			t.Error("metrics hold the Redis password")
		}
	})

	t.Run("probes", func(t *testing.T) {
		for _, u := range []string{wh.HealthzURL(), wh.ReadyzURL()} {
			resp, err := http.Get(u)
			if err != nil || resp.StatusCode != 200 {
				t.Fatalf("%s: %v %v", u, resp, err)
			}
			resp.Body.Close()
		}
	})

	t.Run("lease API is mounted", func(t *testing.T) {
		resp, err := c.Post(wh.LeaseURL()+"/v1/leases/release", "application/json",
			strings.NewReader(`{"namespace":"ns","key":"jobs","slot":0,"holder":"0123456789abcdef0123456789abcdef"}`))
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 || !strings.Contains(string(b), `"released":false`) {
			t.Fatalf("release: %d %s", resp.StatusCode, b)
		}
	})

	t.Run("HTTP errors", func(t *testing.T) {
		cases := []struct {
			name, ct string
			body     []byte
			code     int
		}{
			{"unsupported media type", "text/plain", review("u", annotated), 415},
			{"malformed JSON", "application/json", []byte(`{"request":{`), 400},
			{"no uid", "application/json", []byte(`{"request":{"operation":"CREATE"}}`), 400},
			{"too large", "application/json", bytes.Repeat([]byte(" "), 7<<20+1), 413},
		}
		for _, tc := range cases {
			resp, err := c.Post(wh.MutateURL(), tc.ct, bytes.NewReader(tc.body))
			if err != nil {
				t.Fatalf("%s: %v", tc.name, err)
			}
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != tc.code || len(b) == 0 {
				t.Errorf("%s: got %d %q, want %d with a message", tc.name, resp.StatusCode, b, tc.code)
			}
		}
	})

	t.Run("TLS versions", func(t *testing.T) {
		for _, v := range []uint16{tls.VersionTLS10, tls.VersionTLS11} {
			cfg := wh.Certs.ClientTLS()
			cfg.MinVersion, cfg.MaxVersion = v, v
			if conn, err := tls.Dial("tcp", wh.Addr(), cfg); err == nil {
				conn.Close()
				t.Errorf("TLS version %x was accepted", v)
			}
		}
		for _, v := range []uint16{tls.VersionTLS12, tls.VersionTLS13} {
			cfg := wh.Certs.ClientTLS()
			cfg.MinVersion, cfg.MaxVersion = v, v
			conn, err := tls.Dial("tcp", wh.Addr(), cfg)
			if err != nil {
				t.Errorf("TLS version %x refused: %v", v, err)
				continue
			}
			conn.Close()
		}
	})

	t.Run("HTTP/2 refused by default", func(t *testing.T) {
		if p := negotiated(t, wh); p != "http/1.1" {
			t.Fatalf("negotiated %q, want http/1.1", p)
		}
	})

	if strings.Contains(wh.Logs(), redis.Password) {
		t.Fatal("the log holds the Redis password")
	}
	if code, err := wh.Stop(); err != nil || code != 0 {
		t.Fatalf("stop: exit %d, %v", code, err)
	}
}

func negotiated(t *testing.T, wh *webhooktest.Webhook) string {
	t.Helper()
	cfg := wh.Certs.ClientTLS()
	cfg.NextProtos = []string{"h2", "http/1.1"}
	conn, err := tls.Dial("tcp", wh.Addr(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	return conn.ConnectionState().NegotiatedProtocol
}

func TestHTTP2WithFlag(t *testing.T) {
	redis := redistest.StartT(t, 1)
	wh := webhooktest.Start(t, webhooktest.Options{Redis: redis.Addrs(), RedisPassword: redis.Password, Args: []string{"--enable-http2"}})
	if p := negotiated(t, wh); p != "h2" {
		t.Fatalf("negotiated %q, want h2", p)
	}
	// And the review is served over it.
	c := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: wh.Certs.ClientTLS(), ForceAttemptHTTP2: true}}
	resp, err := c.Post(wh.MutateURL(), "application/json", bytes.NewReader(review("h2", annotated)))
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.ProtoMajor != 2 || resp.StatusCode != 200 || !strings.Contains(string(b), `"uid":"h2","allowed":`) {
		t.Fatalf("HTTP/%d %d %s", resp.ProtoMajor, resp.StatusCode, b)
	}
}

func TestCertificateRotationUnderLoad(t *testing.T) {
	redis := redistest.StartT(t, 1)
	wh := webhooktest.Start(t, webhooktest.Options{Redis: redis.Addrs(), RedisPassword: redis.Password})
	pid := wh.Pid()
	notAnnotated := review("u", `{"metadata":{"name":"p"},"spec":{"containers":[{"name":"a"}]}}`)

	var (
		stop     atomic.Bool
		requests atomic.Int64
		wg       sync.WaitGroup
		mu       sync.Mutex
		failures []error
	)
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			// A new connection per request: every request is a handshake.
			client := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{
				TLSClientConfig: wh.Certs.ClientTLS(), DisableKeepAlives: true}}
			for !stop.Load() {
				if _, err := mutate(t, client, wh.MutateURL(), notAnnotated); err != nil {
					mu.Lock()
					failures = append(failures, err)
					mu.Unlock()
				}
				requests.Add(1)
			}
		}()
	}
	serial := func() string {
		conn, err := tls.Dial("tcp", wh.Addr(), wh.Certs.ClientTLS())
		if err != nil {
			t.Fatalf("handshake: %v", err)
		}
		defer conn.Close()
		return conn.ConnectionState().PeerCertificates[0].SerialNumber.String()
	}
	for range 3 {
		want := wh.Certs.Rotate(t).SerialNumber.String()
		deadline := time.Now().Add(10 * time.Second)
		for serial() != want {
			if time.Now().After(deadline) {
				t.Fatalf("the rotated certificate %s was not served within 10s", want)
			}
		}
	}
	stop.Store(true)
	wg.Wait()
	if len(failures) > 0 {
		t.Fatalf("%d of %d requests failed during rotation, first: %v", len(failures), requests.Load(), failures[0])
	}
	if wh.Pid() != pid {
		t.Fatal("the webhook restarted")
	}
	t.Logf("%d requests, 3 rotations, no failure", requests.Load())
}

func TestSIGTERMFinishesInFlightReviews(t *testing.T) {
	redis := redistest.StartT(t, 3)
	wh := webhooktest.Start(t, webhooktest.Options{Redis: redis.Addrs(), RedisPassword: redis.Password,
		Args: []string{"--redis-timeout=1s", "--log-level=debug"}})
	// Warm the pools while every node answers.
	if _, err := mutate(t, wh.Client(), wh.MutateURL(), review("warm", annotated)); err != nil {
		t.Fatal(err)
	}
	// Two hung nodes: an acquire now takes the full node timeout, then
	// answers "no quorum". That review is in flight when SIGTERM comes.
	for _, n := range redis.Nodes[:2] {
		if err := n.Pause(); err != nil {
			t.Fatal(err)
		}
		defer n.Resume()
	}
	sent := make(chan struct{})
	type result struct {
		a   *answer
		err error
	}
	done := make(chan result, 1)
	go func() {
		trace := &httptrace.ClientTrace{WroteRequest: func(httptrace.WroteRequestInfo) { close(sent) }}
		req, _ := http.NewRequestWithContext(httptrace.WithClientTrace(context.Background(), trace), http.MethodPost,
			wh.MutateURL(), bytes.NewReader(review("in-flight", annotated)))
		req.Header.Set("Content-Type", "application/json")
		resp, err := wh.Client().Do(req)
		if err != nil {
			done <- result{err: err}
			return
		}
		defer resp.Body.Close()
		var a answer
		err = json.NewDecoder(resp.Body).Decode(&a)
		done <- result{a: &a, err: err}
	}()
	<-sent
	// net/http drops a request it reads after shutdown began; in flight
	// means the handler runs, which its debug event says.
	if !wh.WaitLog(`"uid":"in-flight","semaphore":"ns/jobs"`, 10*time.Second) {
		t.Fatalf("the review never reached the handler:\n%s", wh.Logs())
	}
	began := time.Now()
	code, err := wh.Stop()
	if err != nil || code != 0 {
		t.Fatalf("exit %d, %v\n%s", code, err, wh.Logs())
	}
	r := <-done
	if r.err != nil {
		t.Fatalf("the in-flight review failed: %v\n%s", r.err, wh.Logs())
	}
	if r.a.Response.UID != "in-flight" || r.a.Response.Allowed || r.a.Response.Status == nil ||
		!strings.Contains(r.a.Response.Status.Message, "no Redis quorum") {
		t.Fatalf("in-flight answer: %+v", r.a.Response)
	}
	t.Logf("stopped %s after SIGTERM with the review answered", time.Since(began).Round(time.Millisecond))
	// The process is gone: new connections are refused.
	if _, err := tls.Dial("tcp", wh.Addr(), wh.Certs.ClientTLS()); err == nil {
		t.Fatal("the listener is still open")
	}
}

func TestWrongRedisPasswordStopsStartUp(t *testing.T) {
	redis := redistest.StartT(t, 3)
	wh := webhooktest.New(t, webhooktest.Options{Redis: redis.Addrs(), RedisPassword: "not-the-password-0000"})
	err := wh.Start()
	if err == nil {
		t.Fatal("the webhook started with a wrong password")
	}
	if code := wh.ExitCode(); code != 1 {
		t.Fatalf("exit code %d, want 1", code)
	}
	logs := wh.Logs()
	if !strings.Contains(logs, "rejected the password in") || !strings.Contains(logs, "fix the password file or the Redis auth secret") {
		t.Fatalf("no clear message:\n%s", logs)
	}
	if strings.Contains(logs, "not-the-password-0000") || strings.Contains(logs, redis.Password) {
		t.Fatalf("the log holds a password:\n%s", logs)
	}
}

func TestUnreachableRedisDoesNotStopStartUp(t *testing.T) {
	redis := redistest.StartT(t, 3)
	for _, n := range redis.Nodes {
		n.Kill()
	}
	wh := webhooktest.Start(t, webhooktest.Options{Redis: redis.Addrs(), RedisPassword: redis.Password})
	if !strings.Contains(wh.Logs(), "A Redis node is unreachable at start-up") {
		t.Fatalf("log:\n%s", wh.Logs())
	}
	a, err := mutate(t, wh.Client(), wh.MutateURL(), review("u", annotated))
	if err != nil {
		t.Fatal(err)
	}
	if a.Response.Allowed || a.Response.Status.Code != 503 {
		t.Fatalf("answer without Redis: %+v", a.Response)
	}
}

func TestFlagErrors(t *testing.T) {
	required := []string{"--redis-addresses=127.0.0.1:1", "--lease-url=https://pmph.ns.svc:443", "--sidecar-image=img:1"}
	cases := []struct {
		name string
		env  []string
		args []string
		want string
	}{
		{"missing redis", nil, []string{"--lease-url=https://x:443", "--sidecar-image=i"},
			"webhook: missing --redis-addresses (or PMPH_REDIS_ADDRESSES): set it to the comma-separated host:port of the Redis nodes"},
		{"even number of nodes", nil, []string{"--redis-addresses=a:1,b:2", "--lease-url=https://x:443", "--sidecar-image=i"},
			`webhook: invalid --redis-addresses "a:1,b:2": must list an odd number of nodes (got 2)`},
		{"sidecar port", nil, append(required, "--sidecar-port=0"), `webhook: invalid --sidecar-port "0": must be a port number from 1 to 65535`},
		{"redis timeout from env", []string{"PMPH_REDIS_TIMEOUT=abc"}, required, `webhook: invalid PMPH_REDIS_TIMEOUT "abc": must be a Go duration from 1ms to 10s`},
		{"no-quorum policy", nil, append(required, "--no-quorum-policy=maybe"), `webhook: invalid --no-quorum-policy "maybe": must be deny or allow`},
		{"lease url", nil, []string{"--redis-addresses=a:1", "--lease-url=http://x", "--sidecar-image=i"}, `webhook: invalid --lease-url "http://x": must be an https:// URL`},
		{"memory quantity", nil, append(required, "--sidecar-memory-limit=lots"), `webhook: invalid --sidecar-memory-limit "lots": must be a positive Kubernetes quantity`},
		{"pull policy", nil, append(required, "--sidecar-image-pull-policy=Sometimes"), `webhook: invalid --sidecar-image-pull-policy "Sometimes": must be Always, IfNotPresent or Never`},
		{"log level", nil, append(required, "--log-level=loud"), `webhook: invalid --log-level "loud": must be debug, info, warn or error`},
		{"bool", nil, append(required, "--native-sidecar=perhaps"), `webhook: invalid --native-sidecar "perhaps": must be true or false`},
		{"password file", nil, append(required, "--redis-password-file=/nonexistent/pw"), `webhook: invalid --redis-password-file "/nonexistent/pw": cannot be read`},
		{"unknown flag", nil, append(required, "--colour=blue"), "webhook: flag provided but not defined: -colour; run with --help for the list of flags"},
		{"flag wins over env", []string{"PMPH_SIDECAR_PORT=1"}, append(required, "--sidecar-port=70000"), `webhook: invalid --sidecar-port "70000"`},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			code, out := webhooktest.Run(t, 30*time.Second, tc.env, tc.args...)
			if code != 2 {
				t.Fatalf("exit %d, want 2; output:\n%s", code, out)
			}
			if strings.Count(out, "\n") != 1 || !strings.HasPrefix(out, tc.want) {
				t.Fatalf("want one line starting with %q, got:\n%s", tc.want, out)
			}
		})
	}
	code, out := webhooktest.Run(t, 30*time.Second, nil, "--help")
	if code != 0 || !strings.Contains(out, "--redis-addresses (PMPH_REDIS_ADDRESSES") {
		t.Fatalf("--help: exit %d\n%s", code, out)
	}
}

// TestShutdownDelay: after SIGTERM the webhook fails readiness but keeps
// answering reviews for the delay, so that reviews the API server sends
// before the endpoints change still succeed; then it exits 0.
func TestShutdownDelay(t *testing.T) {
	redis := redistest.StartT(t, 1)
	wh := webhooktest.Start(t, webhooktest.Options{Redis: redis.Addrs(), RedisPassword: redis.Password,
		Args: []string{"--shutdown-delay=3s"}})
	if err := wh.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(3 * time.Second)
	for {
		resp, err := http.Get(wh.ReadyzURL())
		if err != nil {
			t.Fatalf("readyz during the delay: %v", err)
		}
		resp.Body.Close()
		if resp.StatusCode == http.StatusServiceUnavailable {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("readiness did not fail after SIGTERM")
		}
	}
	c := wh.Client()
	resp, err := c.Post(wh.MutateURL(), "application/json", bytes.NewReader(review("late", annotated)))
	if err != nil {
		t.Fatalf("a review during the delay failed: %v", err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 || !resp.Close {
		t.Fatalf("during the delay: status %d, Connection: close %v", resp.StatusCode, resp.Close)
	}
	if code, err := wh.Wait(30 * time.Second); err != nil || code != 0 {
		t.Fatalf("exit %d, %v", code, err)
	}
}
