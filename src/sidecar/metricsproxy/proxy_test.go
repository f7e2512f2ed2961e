package metricsproxy_test

import (
	"bytes"
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/rs/zerolog"

	"github.com/kaidotio/prometheus-metrics-proxy-hook/src/sidecar/metricsproxy"
)

// app is a real HTTP server standing for the app: client_golang's promhttp
// handler over a registry of fixed metrics, so that two scrapes give the same
// bytes, plus switches for failures.
type app struct {
	srv      *httptest.Server
	counter  prometheus.Counter
	status   atomic.Int32 // non-zero: answer with this status instead
	mu       sync.Mutex
	lastReq  *http.Request
	requests atomic.Int64
}

func newApp(t *testing.T) *app {
	t.Helper()
	reg := prometheus.NewRegistry()
	a := &app{counter: prometheus.NewCounter(prometheus.CounterOpts{Name: "app_ticks_total", Help: "Ticks."})}
	reg.MustRegister(a.counter)
	hist := prometheus.NewHistogram(prometheus.HistogramOpts{Name: "app_latency_seconds", Help: "Latency.", Buckets: prometheus.DefBuckets})
	reg.MustRegister(hist)
	for i := range 100 {
		hist.Observe(float64(i) / 100)
	}
	metrics := promhttp.HandlerFor(reg, promhttp.HandlerOpts{EnableOpenMetrics: true})
	a.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		a.requests.Add(1)
		a.mu.Lock()
		a.lastReq = r.Clone(context.Background())
		a.mu.Unlock()
		if s := a.status.Load(); s != 0 {
			http.Error(w, "failing on purpose", int(s))
			return
		}
		switch r.URL.Path {
		case "/metrics":
			metrics.ServeHTTP(w, r)
		case "/echo":
			w.Header().Set("X-Echo-Query", r.URL.RawQuery)
			w.Header().Set("X-Echo-Method", r.Method)
			w.WriteHeader(http.StatusTeapot)
			_, _ = io.Copy(w, r.Body)
		case "/hang":
			<-r.Context().Done()
		default:
			http.NotFound(w, r)
		}
	}))
	t.Cleanup(a.srv.Close)
	return a
}

func (a *app) last() *http.Request {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.lastReq
}

type proxyOpts struct {
	timeout  time.Duration
	maxBytes int64
}

func newProxy(t *testing.T, upstream string, o proxyOpts) (*metricsproxy.Proxy, *httptest.Server) {
	t.Helper()
	u, err := url.Parse(upstream)
	if err != nil {
		t.Fatal(err)
	}
	if o.timeout == 0 {
		o.timeout = 5 * time.Second
	}
	if o.maxBytes == 0 {
		o.maxBytes = 1 << 20
	}
	p, err := metricsproxy.New(metricsproxy.Config{
		Upstream: u, Timeout: o.timeout, CacheMaxBytes: o.maxBytes,
		Logger: zerolog.New(zerolog.NewTestWriter(t)), Metrics: metricsproxy.NewMetrics(),
	})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(p)
	t.Cleanup(srv.Close)
	return p, srv
}

// client never adds or removes Accept-Encoding, so that what the test sets
// is what goes over the wire.
func client() *http.Client {
	return &http.Client{Transport: &http.Transport{DisableCompression: true}, Timeout: 10 * time.Second}
}

type answer struct {
	status  int
	header  http.Header
	body    []byte
	elapsed time.Duration
}

func get(t *testing.T, rawURL string, header map[string]string) answer {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, rawURL, nil)
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range header {
		req.Header.Set(k, v)
	}
	began := time.Now()
	resp, err := client().Do(req)
	if err != nil {
		t.Fatalf("GET %s: %v", rawURL, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("reading %s: %v", rawURL, err)
	}
	return answer{status: resp.StatusCode, header: resp.Header, body: b, elapsed: time.Since(began)}
}

// TestProxyPassesNegotiationThrough compares the bytes of a direct scrape with
// those of a scrape through the proxy for every format and encoding
// client_golang offers.
func TestProxyPassesNegotiationThrough(t *testing.T) {
	a := newApp(t)
	_, proxy := newProxy(t, a.srv.URL+"/metrics", proxyOpts{})
	const (
		prom   = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1"
		text   = "text/plain;version=0.0.4"
		proto  = "application/vnd.google.protobuf;proto=io.prometheus.client.MetricFamily;encoding=delimited"
		native = "application/vnd.google.protobuf;proto=io.prometheus.client.MetricFamily;encoding=delimited;q=0.7,text/plain;version=0.0.4;q=0.3"
	)
	tests := []struct {
		name, accept, encoding string
		wantType, wantEncoding string
	}{
		{"text", text, "", "text/plain", ""},
		{"text gzip", text, "gzip", "text/plain", "gzip"},
		{"OpenMetrics", prom, "", "application/openmetrics-text", ""},
		{"OpenMetrics gzip", prom, "gzip", "application/openmetrics-text", "gzip"},
		{"protobuf", proto, "", "application/vnd.google.protobuf", ""},
		{"protobuf gzip", native, "gzip", "application/vnd.google.protobuf", "gzip"},
		{"no Accept", "", "", "text/plain", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := map[string]string{"Accept": tt.accept, "Accept-Encoding": tt.encoding}
			direct := get(t, a.srv.URL+"/metrics", h)
			via := get(t, proxy.URL+"/metrics", h)
			if direct.status != http.StatusOK || via.status != http.StatusOK {
				t.Fatalf("status direct %d, through the proxy %d", direct.status, via.status)
			}
			if !bytes.Equal(direct.body, via.body) {
				t.Errorf("the proxy changed the body: %d bytes direct, %d through the proxy", len(direct.body), len(via.body))
			}
			for _, k := range []string{"Content-Type", "Content-Encoding", "Content-Length"} {
				if direct.header.Get(k) != via.header.Get(k) {
					t.Errorf("%s: direct %q, through the proxy %q", k, direct.header.Get(k), via.header.Get(k))
				}
			}
			if ct := via.header.Get("Content-Type"); !strings.HasPrefix(ct, tt.wantType) {
				t.Errorf("Content-Type %q, want %s", ct, tt.wantType)
			}
			if ce := via.header.Get("Content-Encoding"); ce != tt.wantEncoding {
				t.Errorf("Content-Encoding %q, want %q", ce, tt.wantEncoding)
			}
		})
	}
}

func TestProxyForwardsAnyPath(t *testing.T) {
	a := newApp(t)
	_, proxy := newProxy(t, a.srv.URL+"/metrics", proxyOpts{})
	req, _ := http.NewRequest(http.MethodPost, proxy.URL+"/echo?a=1&b=%2F", strings.NewReader("payload"))
	req.Header.Set("X-Custom", "kept")
	req.Header.Set("Connection", "X-Hop")
	req.Header.Set("X-Hop", "dropped")
	resp, err := client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusTeapot || string(b) != "payload" {
		t.Errorf("got %d %q, want 418 %q", resp.StatusCode, b, "payload")
	}
	if got := resp.Header.Get("X-Echo-Query"); got != "a=1&b=%2F" {
		t.Errorf("query reached the app as %q", got)
	}
	if got := resp.Header.Get("X-Echo-Method"); got != http.MethodPost {
		t.Errorf("method reached the app as %q", got)
	}
	last := a.last()
	if last.Header.Get("X-Custom") != "kept" {
		t.Error("a request header was not forwarded")
	}
	if last.Header.Get("X-Hop") != "" {
		t.Error("a header named in Connection was forwarded")
	}
	if ua := last.Header.Get("User-Agent"); ua != "Go-http-client/1.1" {
		t.Errorf("User-Agent reached the app as %q, want the client's own", ua)
	}
}

func TestProxyFailuresBeforeAndDuringTermination(t *testing.T) {
	tests := []struct {
		name       string
		final      bool
		fail       func(a *app)
		wantStatus int
		wantCached bool
	}{
		{"app down before termination", false, func(a *app) { a.srv.Close() }, http.StatusBadGateway, false},
		{"app 503 before termination", false, func(a *app) { a.status.Store(503) }, http.StatusServiceUnavailable, false},
		{"app down during termination", true, func(a *app) { a.srv.Close() }, http.StatusOK, true},
		{"app 503 during termination", true, func(a *app) { a.status.Store(503) }, http.StatusOK, true},
		{"app 404 during termination passes through", true, func(a *app) { a.status.Store(404) }, http.StatusNotFound, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			a := newApp(t)
			a.counter.Add(41)
			p, proxy := newProxy(t, a.srv.URL+"/metrics", proxyOpts{})
			h := map[string]string{"Accept": "text/plain", "Accept-Encoding": "gzip"}
			good := get(t, proxy.URL+"/metrics", h)
			if good.status != http.StatusOK {
				t.Fatalf("first scrape answered %d", good.status)
			}
			// The body is kept once the answer is flushed, which the
			// client can see a moment before.
			waitFor(t, func() bool { return p.ScrapesServed() == 1 }, "the first scrape was not counted")
			a.counter.Inc()
			tt.fail(a)
			if tt.final {
				p.StartFinal()
			}
			got := get(t, proxy.URL+"/metrics", h)
			if got.status != tt.wantStatus {
				t.Fatalf("status %d, want %d (body %q)", got.status, tt.wantStatus, got.body)
			}
			cached := got.header.Get(metricsproxy.SourceHeader) == "last-good"
			if cached != tt.wantCached {
				t.Fatalf("served from the last good body: %v, want %v", cached, tt.wantCached)
			}
			if cached {
				if !bytes.Equal(got.body, good.body) || got.header.Get("Content-Encoding") != "gzip" {
					t.Error("the last good body differs from the last good scrape")
				}
				waitFor(t, func() bool { return p.ScrapesServed() == 2 }, "the scrape served from the last good body was not counted")
			}
		})
	}
}

// scrapeFrom is a scrape of the metrics path from a scraper at ip, served
// by the proxy directly so that the scraper's address is ip.
func scrapeFrom(t *testing.T, p *metricsproxy.Proxy, ip string) *httptest.ResponseRecorder {
	t.Helper()
	r := httptest.NewRequest(http.MethodGet, "/metrics", nil)
	r.RemoteAddr = ip + ":40000"
	r.Header.Set("Accept", "text/plain")
	w := httptest.NewRecorder()
	p.ServeHTTP(w, r)
	if w.Code != http.StatusOK {
		t.Fatalf("scrape from %s answered %d", ip, w.Code)
	}
	return w
}

func TestProxyPendingScrapers(t *testing.T) {
	const a1, a2, gone = "10.0.0.1", "10.0.0.2", "10.0.0.3"
	tests := []struct {
		name string
		// after both scrapers scraped the running app and the app's state
		// was fetched once more and it stopped: who scrapes, in order,
		// and who is pending after each scrape.
		scrapes     []string
		wantPending [][]string
	}{
		{"nobody scraped yet", nil, nil},
		{"one of an HA pair", []string{a1}, [][]string{{a2}}},
		{"both of an HA pair", []string{a1, a2}, [][]string{{a2}, {}}},
		{"the same one twice", []string{a2, a2}, [][]string{{a1}, {a1}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			a := newApp(t)
			p, _ := newProxy(t, a.srv.URL+"/metrics", proxyOpts{})
			scrapeFrom(t, p, gone)
			since := time.Now()
			scrapeFrom(t, p, a1)
			scrapeFrom(t, p, a2)
			// a2's answer is a newer state than a1's.
			if got, want := p.Pending(since), []string{a1}; !slices.Equal(got, want) {
				t.Fatalf("pending %v after two live scrapes, want %v", got, want)
			}
			// The fetch at termination keeps a newer state; then the app
			// stops answering.
			a.counter.Add(5)
			if n, err := p.Refresh(context.Background()); n != 1 || err != nil {
				t.Fatalf("Refresh = %d, %v", n, err)
			}
			a.srv.Close()
			p.StartFinal()
			select { // the cue of the scrapes before
			case <-p.Answered():
			default:
			}
			if got, want := p.Pending(since), []string{a1, a2}; !slices.Equal(got, want) {
				t.Fatalf("pending %v after the final fetch, want %v (the scraper from before since is not waited for)", got, want)
			}
			for i, ip := range tt.scrapes {
				w := scrapeFrom(t, p, ip)
				if w.Header().Get(metricsproxy.SourceHeader) != "last-good" || !strings.Contains(w.Body.String(), "app_ticks_total 5") {
					t.Fatalf("scrape from %s got %q, want the last state fetched", ip, w.Body.String())
				}
				select {
				case <-p.Answered():
				default:
					t.Error("Answered did not signal the scrape")
				}
				if got := p.Pending(since); !slices.Equal(got, tt.wantPending[i]) && !(len(got) == 0 && len(tt.wantPending[i]) == 0) {
					t.Errorf("after the scrape from %s pending %v, want %v", ip, got, tt.wantPending[i])
				}
			}
		})
	}
}

func waitFor(t *testing.T, cond func() bool, msg string) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal(msg)
		}
		time.Sleep(time.Millisecond)
	}
}

func waitClosed(t *testing.T, ch <-chan struct{}, msg string) {
	t.Helper()
	select {
	case <-ch:
	case <-time.After(5 * time.Second):
		t.Fatal(msg)
	}
}

func TestProxyTimeout(t *testing.T) {
	tests := []struct {
		name          string
		timeout       time.Duration
		scrapeTimeout string
		wantBelow     time.Duration
	}{
		{"configured timeout", 300 * time.Millisecond, "", 3 * time.Second},
		{"Prometheus' lower scrape timeout", 10 * time.Second, "0.3", 3 * time.Second},
		{"Prometheus' higher scrape timeout keeps ours", 300 * time.Millisecond, "60", 3 * time.Second},
		{"garbage header ignored", 300 * time.Millisecond, "soon", 3 * time.Second},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			a := newApp(t)
			_, proxy := newProxy(t, a.srv.URL+"/metrics", proxyOpts{timeout: tt.timeout})
			h := map[string]string{}
			if tt.scrapeTimeout != "" {
				h[metricsproxy.ScrapeTimeoutHeader] = tt.scrapeTimeout
			}
			got := get(t, proxy.URL+"/hang", h)
			if got.status != http.StatusGatewayTimeout {
				t.Errorf("status %d, want 504", got.status)
			}
			if got.elapsed > tt.wantBelow {
				t.Errorf("answered after %s, want below %s", got.elapsed, tt.wantBelow)
			}
		})
	}
}

func TestProxyBodyAboveCapIsStreamedNotCached(t *testing.T) {
	big := bytes.Repeat([]byte("metric_with_a_long_name 1\n"), 4000) // ~100 KiB
	upstream := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Query().Get("chunked") == "" {
			w.Header().Set("Content-Length", strconv.Itoa(len(big)))
		}
		_, _ = w.Write(big)
	}))
	t.Cleanup(upstream.Close)
	for _, query := range []string{"", "?chunked=1"} {
		t.Run("query "+query, func(t *testing.T) {
			p, proxy := newProxy(t, upstream.URL+"/metrics", proxyOpts{maxBytes: 10 << 10})
			got := get(t, proxy.URL+"/metrics"+query, nil)
			if !bytes.Equal(got.body, big) {
				t.Fatalf("got %d bytes, want the %d bytes of the app", len(got.body), len(big))
			}
			if n, _ := p.Refresh(context.Background()); n != 0 {
				t.Errorf("Refresh refreshed %d variants; nothing should have been cached", n)
			}
		})
	}
}

func TestProxyAbortsABodyBrokenMidway(t *testing.T) {
	upstream := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Length", "1000")
		_, _ = w.Write([]byte("half_a_metric 1\n"))
		_ = http.NewResponseController(w).Flush()
		panic(http.ErrAbortHandler)
	}))
	t.Cleanup(upstream.Close)
	p, proxy := newProxy(t, upstream.URL+"/metrics", proxyOpts{})
	resp, err := client().Get(proxy.URL + "/metrics")
	if err == nil {
		_, err = io.ReadAll(resp.Body)
		resp.Body.Close()
	}
	if err == nil {
		t.Fatal("a body broken at the app reached the client as a complete answer")
	}
	if p.ScrapesServed() != 0 {
		t.Error("a broken answer counted as a served scrape")
	}
}

func TestProxyRefresh(t *testing.T) {
	a := newApp(t)
	p, proxy := newProxy(t, a.srv.URL+"/metrics", proxyOpts{})
	text := map[string]string{"Accept": "text/plain"}
	gzipped := map[string]string{"Accept": "text/plain", "Accept-Encoding": "gzip"}
	get(t, proxy.URL+"/metrics", text)
	get(t, proxy.URL+"/metrics", gzipped)
	waitFor(t, func() bool { return p.ScrapesServed() == 2 }, "the two scrapes were not counted")
	a.counter.Add(1000)
	before := a.requests.Load()
	n, err := p.Refresh(context.Background())
	if err != nil || n != 2 {
		t.Fatalf("Refresh = %d, %v; want 2 variants refreshed", n, err)
	}
	if got := a.requests.Load() - before; got != 2 {
		t.Errorf("Refresh made %d requests to the app, want 2", got)
	}
	wantText := get(t, a.srv.URL+"/metrics", text).body
	wantGzip := get(t, a.srv.URL+"/metrics", gzipped).body
	a.srv.Close()
	p.StartFinal()
	if got := get(t, proxy.URL+"/metrics", text); !bytes.Equal(got.body, wantText) {
		t.Errorf("after Refresh the text body is\n%s\nwant\n%s", got.body, wantText)
	}
	if got := get(t, proxy.URL+"/metrics", gzipped); !bytes.Equal(got.body, wantGzip) {
		t.Error("after Refresh the gzip body is not the app's latest")
	}
	// The app is gone now: a second Refresh fails and keeps the bodies.
	if n, err := p.Refresh(context.Background()); n != 0 || err == nil {
		t.Errorf("Refresh with the app gone = %d, %v; want 0 and an error", n, err)
	}
	if got := get(t, proxy.URL+"/metrics", text); !bytes.Equal(got.body, wantText) {
		t.Error("a failed Refresh lost the last good body")
	}
}

func TestNewRejectsBadConfig(t *testing.T) {
	good, _ := url.Parse("http://127.0.0.1:8080/metrics")
	noHost, _ := url.Parse("/metrics")
	ftp, _ := url.Parse("ftp://127.0.0.1/metrics")
	tests := []struct {
		name string
		cfg  metricsproxy.Config
	}{
		{"no upstream", metricsproxy.Config{Timeout: time.Second}},
		{"no host", metricsproxy.Config{Upstream: noHost, Timeout: time.Second}},
		{"bad scheme", metricsproxy.Config{Upstream: ftp, Timeout: time.Second}},
		{"zero timeout", metricsproxy.Config{Upstream: good}},
		{"negative cache", metricsproxy.Config{Upstream: good, Timeout: time.Second, CacheMaxBytes: -1}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := metricsproxy.New(tt.cfg); err == nil {
				t.Error("New accepted a bad config")
			}
		})
	}
}

// BenchmarkScrape compares a scrape of a 1 MiB exposition through the proxy
// with a direct one; the difference is the proxy's cost per scrape.
func BenchmarkScrape(b *testing.B) {
	exposition := bytes.Repeat([]byte("http_requests_total{code=\"200\",handler=\"/api/v1/query\",method=\"get\"} 12345\n"), (1<<20)/80)
	upstream := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain; version=0.0.4")
		w.Header().Set("Content-Length", strconv.Itoa(len(exposition)))
		_, _ = w.Write(exposition)
	}))
	b.Cleanup(upstream.Close)
	u, _ := url.Parse(upstream.URL + "/metrics")
	p, err := metricsproxy.New(metricsproxy.Config{Upstream: u, Timeout: 5 * time.Second, CacheMaxBytes: 16 << 20, Logger: zerolog.Nop()})
	if err != nil {
		b.Fatal(err)
	}
	proxy := httptest.NewServer(p)
	b.Cleanup(proxy.Close)
	c := client()
	scrape := func(b *testing.B, target string) {
		buf := make([]byte, 64<<10)
		b.SetBytes(int64(len(exposition)))
		b.ReportAllocs()
		for b.Loop() {
			resp, err := c.Get(target)
			if err != nil {
				b.Fatal(err)
			}
			n, err := io.CopyBuffer(io.Discard, struct{ io.Reader }{resp.Body}, buf)
			resp.Body.Close()
			if err != nil || n != int64(len(exposition)) {
				b.Fatalf("read %d bytes: %v", n, err)
			}
		}
	}
	b.Run("direct", func(b *testing.B) { scrape(b, upstream.URL+"/metrics") })
	b.Run("proxied", func(b *testing.B) { scrape(b, proxy.URL+"/metrics") })
}

// TestProxyCountsAScrapeWhenItArrives: a scrape under way when the pod is
// told to stop shows that Prometheus scrapes this pod; the sidecar then
// waits for a final scrape, so the scrape must count before it is answered.
func TestProxyCountsAScrapeWhenItArrives(t *testing.T) {
	a := newApp(t)
	p, proxy := newProxy(t, a.srv.URL+"/hang", proxyOpts{timeout: 2 * time.Second})
	done := make(chan int, 1)
	go func() {
		resp, err := client().Get(proxy.URL + "/hang")
		if err != nil {
			done <- 0
			return
		}
		resp.Body.Close()
		done <- resp.StatusCode
	}()
	deadline := time.Now().Add(5 * time.Second)
	for p.ScrapesArrived() == 0 {
		if time.Now().After(deadline) {
			t.Fatal("the scrape under way was not counted as arrived")
		}
		time.Sleep(5 * time.Millisecond)
	}
	if n := p.ScrapesServed(); n != 0 {
		t.Fatalf("%d scrapes served while the only one is still waiting for the app", n)
	}
	if status := <-done; status != http.StatusGatewayTimeout {
		t.Fatalf("status %d, want 504 from the hanging app", status)
	}
	if n := p.ScrapesArrived(); n != 1 {
		t.Fatalf("%d scrapes arrived, want 1", n)
	}
}
