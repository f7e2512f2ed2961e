// Package loadtest drives an admission webhook the way the kube-apiserver
// does: AdmissionReview v1 requests over HTTPS (HTTP/1.1, a keep-alive
// pool, ?timeout= on the URL), in an open loop at a rate or a closed loop at
// a concurrency, with pods built from a template. It checks every answer,
// and for semaphore pods that the semaphore never held more slots than its
// size nor denied a pod while a slot was free. The result is one JSON line.
package loadtest

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptrace"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// Modes.
const (
	ModeOpen   = "open"   // requests at a fixed rate, whatever the latency
	ModeClosed = "closed" // a fixed number of requests in flight
)

// Config is one run.
type Config struct {
	// URL is the webhook's https://host:port/mutate; a timeout query is
	// added when missing, as the API server sends it.
	URL string
	// CAPEM is the bundle that signs the webhook's certificate.
	CAPEM []byte
	Mode  string
	// Rate is the open loop's requests per second.
	Rate float64
	// Concurrency is the closed loop's requests in flight.
	Concurrency int
	// Duration and Count bound the measured part of the run; the first
	// reached ends it. Zero means no bound (one of them is required).
	Duration time.Duration
	Count    int
	// Warmup runs the same load first, unmeasured (connections, caches,
	// Lua scripts loaded on the nodes). Its answers are still checked.
	Warmup time.Duration
	// Timeout is the API server's timeout for the webhook.
	Timeout time.Duration
	// MaxInFlight bounds the open loop's requests in flight; past it the
	// schedule slips, and the latency from the scheduled time shows it.
	MaxInFlight int

	Body   *Template
	Vars   Vars
	Expect Expect

	// Release gives admitted slots back through the lease API, as pods
	// that terminate do.
	Release ReleasePolicy
	// LeaseURL is the lease API's base URL; empty means the URL's origin.
	LeaseURL string
	// Redis, when set, is read before and after the run (commands per
	// admission) and the semaphores are inspected on it at the end.
	Redis *RedisConfig
	// InspectMax bounds how many semaphores are inspected at the end.
	InspectMax int

	// Log receives a few examples of failed requests.
	Log io.Writer
}

// ReleasePolicy says when an admitted pod's slot is given back. A slot is
// released once it has been held for After, or earlier when more than
// Above slots of its semaphore are held (oldest first). Zero values turn
// the rule off; with both off nothing is released.
type ReleasePolicy struct {
	After time.Duration
	Above int
	// Concurrency bounds the releases in flight; zero means 32.
	Concurrency int
}

func (p ReleasePolicy) enabled() bool { return p.After > 0 || p.Above > 0 }

// Result is the run's one JSON line.
type Result struct {
	Label       string  `json:"label,omitempty"`
	Target      string  `json:"target"`
	Mode        string  `json:"mode"`
	Rate        float64 `json:"rate,omitempty"`
	Concurrency int     `json:"concurrency,omitempty"`
	PodBytes    int     `json:"pod_bytes"`
	ReviewBytes int     `json:"review_bytes"`
	Semaphore   string  `json:"semaphore,omitempty"`
	Size        int     `json:"size,omitempty"`

	Requests       int     `json:"requests"`
	WarmupRequests int     `json:"warmup_requests"`
	Measured       int     `json:"measured"`
	Seconds        float64 `json:"seconds"`
	Throughput     float64 `json:"throughput_per_s"`
	Allowed        int     `json:"allowed"`
	Patched        int     `json:"patched"`
	Denied         int     `json:"denied"`
	// DeniedBy counts denials by status code.
	DeniedBy map[string]int `json:"denied_by,omitempty"`
	// Errors are requests without an answer (transport, HTTP status);
	// Invalid answers break the AdmissionReview contract; Unexpected ones
	// are well formed but not what the run expects.
	Errors     int `json:"errors"`
	Invalid    int `json:"invalid"`
	Unexpected int `json:"unexpected"`

	// Latency is measured from the request's send (the moment it had a
	// connection) to the end of the answer; LatencyScheduled, in the open
	// loop, from the moment the schedule said to send it.
	Latency          Latency  `json:"latency_ms"`
	LatencyScheduled *Latency `json:"latency_from_scheduled_ms,omitempty"`

	SemaphoreCheck *SemaphoreCheck `json:"semaphore_check,omitempty"`
	Redis          *RedisDelta     `json:"redis,omitempty"`

	// ToolCPUSeconds is the CPU the load tool itself used (user+system),
	// which the machine could not give to the webhook.
	ToolCPUSeconds float64 `json:"tool_cpu_s"`
	// OK is false when any request failed or a check did.
	OK bool `json:"ok"`
}

// SemaphoreCheck is the run's check of the semaphore's promises.
type SemaphoreCheck struct {
	Verdict
	Released        int `json:"released"`
	ReleaseErrors   int `json:"release_errors"`
	ReleaseNotHeld  int `json:"release_not_held"`
	Inspected       int `json:"inspected"`
	InspectMismatch int `json:"inspect_mismatches"`
	InspectOverSize int `json:"inspect_over_size"`
	InspectErrors   int `json:"inspect_errors"`
}

// Run runs the load and checks it.
func Run(ctx context.Context, cfg Config) (*Result, error) {
	r, err := newRunner(cfg)
	if err != nil {
		return nil, err
	}
	defer r.client.CloseIdleConnections()
	return r.run(ctx)
}

type runner struct {
	cfg       Config
	url       string
	client    *http.Client
	semaphore bool
	ledger    *Ledger
	releaser  *releaser
	t0        time.Time
	measureAt time.Duration

	seq      atomic.Uint64
	measured atomic.Int64
	mu       sync.Mutex
	res      Result
	lat      []time.Duration
	latSched []time.Duration
	lastEnd  time.Duration
	examples int
}

// maxExamples bounds the failures written to the log.
const maxExamples = 5

func newRunner(cfg Config) (*runner, error) {
	switch {
	case cfg.Mode == ModeOpen && cfg.Rate <= 0:
		return nil, errors.New("loadtest: the open loop needs a rate above 0")
	case cfg.Mode == ModeClosed && cfg.Concurrency <= 0:
		return nil, errors.New("loadtest: the closed loop needs a concurrency above 0")
	case cfg.Mode != ModeOpen && cfg.Mode != ModeClosed:
		return nil, fmt.Errorf("loadtest: mode %q must be open or closed", cfg.Mode)
	case cfg.Duration <= 0 && cfg.Count <= 0:
		return nil, errors.New("loadtest: set a duration or a count")
	case cfg.Body == nil:
		return nil, errors.New("loadtest: no body template")
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = 5 * time.Second
	}
	if cfg.MaxInFlight <= 0 {
		cfg.MaxInFlight = 4096
	}
	if cfg.Expect == "" {
		cfg.Expect = ExpectAny
	}
	if cfg.Log == nil {
		cfg.Log = io.Discard
	}
	u, err := url.Parse(cfg.URL)
	if err != nil || u.Scheme != "https" || u.Host == "" {
		return nil, fmt.Errorf("loadtest: URL %q must be https://host:port/path", cfg.URL)
	}
	if !u.Query().Has("timeout") {
		q := u.Query()
		q.Set("timeout", cfg.Timeout.String())
		u.RawQuery = q.Encode()
	}
	tlsCfg := &tls.Config{MinVersion: tls.VersionTLS12}
	if len(cfg.CAPEM) > 0 {
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(cfg.CAPEM) {
			return nil, errors.New("loadtest: the CA bundle holds no PEM certificate")
		}
		tlsCfg.RootCAs = pool
	}
	conns := cfg.Concurrency
	if cfg.Mode == ModeOpen {
		conns = 0 // the API server opens what the load needs
	}
	transport := &http.Transport{
		TLSClientConfig:     tlsCfg,
		MaxIdleConnsPerHost: max(cfg.Concurrency, 100),
		MaxConnsPerHost:     conns,
		IdleConnTimeout:     90 * time.Second,
		DisableCompression:  true,
		// HTTP/1.1 only, as the webhook serves it by default.
		ForceAttemptHTTP2: false,
		TLSNextProto:      map[string]func(string, *tls.Conn) http.RoundTripper{},
	}
	r := &runner{
		cfg:       cfg,
		url:       u.String(),
		client:    &http.Client{Transport: transport},
		semaphore: cfg.Vars.KeyMode != KeyNone,
		ledger:    NewLedger(),
	}
	if r.semaphore && cfg.Release.enabled() {
		leaseURL := cfg.LeaseURL
		if leaseURL == "" {
			leaseURL = u.Scheme + "://" + u.Host
		}
		r.releaser = newReleaser(cfg.Release, r.client, strings.TrimSuffix(leaseURL, "/"), r.ledger, r.since)
	}
	return r, nil
}

func (r *runner) since() time.Duration { return time.Since(r.t0) }

func (r *runner) run(ctx context.Context) (*Result, error) {
	var before map[string]int64
	if r.cfg.Redis != nil {
		var err error
		if before, err = r.cfg.Redis.scriptCalls(ctx); err != nil {
			return nil, err
		}
	}
	sample := r.cfg.Vars
	pod := r.cfg.Body.Append(nil, &sample)
	r.res = Result{
		Target: r.url, Mode: r.cfg.Mode, ReviewBytes: len(pod),
		Semaphore: string(r.cfg.Vars.KeyMode), DeniedBy: map[string]int{},
	}
	if r.cfg.Mode == ModeOpen {
		r.res.Rate = r.cfg.Rate
		r.latSched = make([]time.Duration, 0, 1024)
	} else {
		r.res.Concurrency = r.cfg.Concurrency
	}
	if r.semaphore {
		r.res.Size = r.cfg.Vars.Size
	}
	var ru0 syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru0)

	r.t0 = time.Now()
	r.measureAt = r.cfg.Warmup
	end := time.Duration(0)
	if r.cfg.Duration > 0 {
		end = r.measureAt + r.cfg.Duration
	}
	if r.releaser != nil {
		r.releaser.start()
	}
	if r.cfg.Mode == ModeOpen {
		r.openLoop(ctx, end)
	} else {
		r.closedLoop(ctx, end)
	}
	if r.releaser != nil {
		r.releaser.stop()
	}
	var ru1 syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru1)
	r.res.ToolCPUSeconds = round3(cpuSeconds(ru1) - cpuSeconds(ru0))

	res := &r.res
	if len(res.DeniedBy) == 0 {
		res.DeniedBy = nil
	}
	res.Measured = len(r.lat)
	if res.Measured > 0 && r.lastEnd > r.measureAt {
		res.Seconds = round3((r.lastEnd - r.measureAt).Seconds())
		res.Throughput = round3(float64(res.Measured) / res.Seconds)
	}
	res.Latency = Summarize(r.lat)
	if r.latSched != nil {
		s := Summarize(r.latSched)
		res.LatencyScheduled = &s
	}
	// Read the nodes' counters before inspecting, which runs scripts too.
	var after map[string]int64
	if r.cfg.Redis != nil {
		var err error
		if after, err = r.cfg.Redis.scriptCalls(ctx); err != nil {
			return nil, err
		}
	}
	ok := res.Errors == 0 && res.Invalid == 0 && res.Unexpected == 0
	if r.semaphore {
		chk := &SemaphoreCheck{Verdict: r.ledger.Check()}
		if r.releaser != nil {
			chk.Released, chk.ReleaseErrors, chk.ReleaseNotHeld = r.releaser.counts()
		}
		if r.cfg.Redis != nil {
			r.inspect(ctx, chk)
		}
		res.SemaphoreCheck = chk
		ok = ok && chk.OverAdmissions == 0 && chk.DenialsWhileFree == 0 && chk.InspectMismatch == 0 &&
			chk.InspectOverSize == 0 && chk.InspectErrors == 0 && chk.ReleaseErrors == 0 && chk.ReleaseNotHeld == 0
	}
	if r.cfg.Redis != nil {
		res.Redis = newRedisDelta(before, after, res, r.semaphore)
	}
	res.OK = ok
	return res, nil
}

func cpuSeconds(ru syscall.Rusage) float64 {
	return float64(ru.Utime.Sec+ru.Stime.Sec) + float64(ru.Utime.Usec+ru.Stime.Usec)/1e6
}

func round3(f float64) float64 { return float64(int64(f*1000+0.5)) / 1000 }

// closedLoop keeps Concurrency requests in flight until the end.
func (r *runner) closedLoop(ctx context.Context, end time.Duration) {
	var wg sync.WaitGroup
	for range r.cfg.Concurrency {
		wg.Add(1)
		go func() {
			defer wg.Done()
			w := newWorker()
			for ctx.Err() == nil {
				now := r.since()
				if end > 0 && now >= end {
					return
				}
				if now >= r.measureAt && r.cfg.Count > 0 && r.measured.Add(1) > int64(r.cfg.Count) {
					return
				}
				r.do(ctx, w, r.seq.Add(1)-1, -1)
			}
		}()
	}
	wg.Wait()
}

// openLoop sends requests at their scheduled times, each on its own
// goroutine, so that a slow answer never delays the next request.
func (r *runner) openLoop(ctx context.Context, end time.Duration) {
	interval := time.Duration(float64(time.Second) / r.cfg.Rate)
	slots := make(chan struct{}, r.cfg.MaxInFlight)
	workers := sync.Pool{New: func() any { return newWorker() }}
	var wg sync.WaitGroup
	timer := time.NewTimer(0)
	defer timer.Stop()
	for i := int64(0); ctx.Err() == nil; i++ {
		at := time.Duration(i) * interval
		if end > 0 && at >= end {
			break
		}
		if at >= r.measureAt && r.cfg.Count > 0 && r.measured.Add(1) > int64(r.cfg.Count) {
			break
		}
		if wait := at - r.since(); wait > 0 {
			timer.Reset(wait)
			select {
			case <-timer.C:
			case <-ctx.Done():
			}
		}
		slots <- struct{}{}
		wg.Add(1)
		go func() {
			defer wg.Done()
			w := workers.Get().(*worker)
			r.do(ctx, w, uint64(i), at)
			workers.Put(w)
			<-slots
		}()
	}
	wg.Wait()
}

// worker holds one request's buffers, reused from request to request.
type worker struct {
	body, answer, patch []byte
	vars                Vars
	gotConn             time.Time
	trace               *httptrace.ClientTrace
}

func newWorker() *worker {
	w := &worker{body: make([]byte, 0, 8<<10), answer: make([]byte, 0, 16<<10)}
	w.trace = &httptrace.ClientTrace{GotConn: func(httptrace.GotConnInfo) { w.gotConn = time.Now() }}
	return w
}

// do sends review seq and records it. scheduled is the open loop's
// schedule offset, -1 in the closed loop.
func (r *runner) do(ctx context.Context, w *worker, seq uint64, scheduled time.Duration) {
	w.vars = r.cfg.Vars
	w.vars.Seq = seq
	w.body = r.cfg.Body.Append(w.body[:0], &w.vars)
	rctx, cancel := context.WithTimeout(httptrace.WithClientTrace(ctx, w.trace), r.cfg.Timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(rctx, http.MethodPost, r.url, bytes.NewReader(w.body))
	if err != nil {
		r.fail(&w.vars, "error", fmt.Errorf("building the request: %w", err))
		return
	}
	req.Header["Content-Type"] = jsonType
	req.Header["Accept"] = jsonType
	w.gotConn = time.Time{}
	began := time.Now()
	resp, err := r.client.Do(req)
	var status int
	if err == nil {
		status = resp.StatusCode
		w.answer, err = readAll(resp.Body, w.answer[:0])
		resp.Body.Close()
	}
	ended := time.Now()
	sent := began
	if !w.gotConn.IsZero() {
		sent = w.gotConn
	}
	sentAt, endAt := sent.Sub(r.t0), ended.Sub(r.t0)
	key := ""
	if r.semaphore {
		key = w.vars.Key()
	}

	var a Answer
	kind := "ok"
	switch {
	case err != nil:
		kind = "error"
		err = fmt.Errorf("request: %w", err)
	case status != http.StatusOK:
		kind = "error"
		err = fmt.Errorf("HTTP %d: %s", status, truncate(w.answer, 200))
	default:
		if a, err = parseAnswer(w.answer, UID(&w.vars), r.semaphore, &w.patch); err != nil {
			kind = "invalid"
		} else if err = r.cfg.Expect.Check(a, r.semaphore); err != nil {
			kind = "unexpected"
		}
	}

	if r.semaphore {
		switch {
		case kind == "error" || kind == "invalid":
			r.ledger.Unknown(key, r.cfg.Vars.Size, sentAt)
		case a.Allowed && a.Slot >= 0:
			id := r.ledger.Admitted(key, r.cfg.Vars.Size, sentAt, endAt)
			if r.releaser != nil {
				r.releaser.add(id, leaseFor(&w.vars, key, a), endAt)
			}
		case !a.Allowed:
			r.ledger.Denied(key, r.cfg.Vars.Size, sentAt, endAt)
		}
	}

	r.mu.Lock()
	defer r.mu.Unlock()
	r.res.Requests++
	measured := sentAt >= r.measureAt
	if scheduled >= 0 {
		measured = scheduled >= r.measureAt
	}
	if !measured {
		r.res.WarmupRequests++
	}
	switch kind {
	case "error":
		r.res.Errors++
	case "invalid":
		r.res.Invalid++
	case "unexpected":
		r.res.Unexpected++
	}
	if kind == "ok" || kind == "unexpected" {
		if a.Allowed {
			r.res.Allowed++
			if a.Patched {
				r.res.Patched++
			}
		} else {
			r.res.Denied++
			r.res.DeniedBy[fmt.Sprint(a.Code)]++
		}
	}
	if err != nil && r.examples < maxExamples {
		r.examples++
		fmt.Fprintf(r.cfg.Log, "loadtest: review %d (%s): %v\n", seq, kind, err)
	}
	if measured {
		r.lat = append(r.lat, ended.Sub(sent))
		if scheduled >= 0 {
			r.latSched = append(r.latSched, endAt-scheduled)
		}
		r.lastEnd = max(r.lastEnd, endAt)
	}
}

func (r *runner) fail(v *Vars, kind string, err error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.res.Requests++
	r.res.Errors++
	if r.examples < maxExamples {
		r.examples++
		fmt.Fprintf(r.cfg.Log, "loadtest: review %d (%s): %v\n", v.Seq, kind, err)
	}
}

var jsonType = []string{"application/json"}

func truncate(b []byte, n int) string {
	if len(b) > n {
		return string(b[:n]) + "..."
	}
	return string(b)
}

// readAll reads a body into buf, growing it as needed.
func readAll(r io.Reader, buf []byte) ([]byte, error) {
	for {
		if len(buf) == cap(buf) {
			buf = append(buf, 0)[:len(buf)]
		}
		n, err := r.Read(buf[len(buf):cap(buf)])
		buf = buf[:len(buf)+n]
		if err == io.EOF {
			return buf, nil
		}
		if err != nil {
			return buf, err
		}
	}
}
