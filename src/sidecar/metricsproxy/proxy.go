package metricsproxy

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/rs/zerolog"
)

// ScrapeTimeoutHeader is the header in which Prometheus sends its scrape
// timeout in seconds.
const ScrapeTimeoutHeader = "X-Prometheus-Scrape-Timeout-Seconds"

// SourceHeader marks a response served from the last good body.
const SourceHeader = "X-Metrics-Proxy-Source"

// ErrNotKept is wrapped by Refresh's errors for an answer the app gave but
// the proxy could not keep (larger than the cache cap): the app still
// answers.
var ErrNotKept = errors.New("the answer was not kept")

// copyChunk is the read size when streaming a body that is not cached.
const copyChunk = 32 << 10

// Config configures a Proxy.
type Config struct {
	// Upstream is the app's metrics endpoint, e.g. http://127.0.0.1:8080/metrics.
	// Requests keep their own path and query and go to Upstream's host;
	// Upstream's path is the metrics path, whose answers are cached.
	Upstream *url.URL
	// Timeout bounds one request to the app. A lower scrape timeout sent
	// by Prometheus lowers it further.
	Timeout time.Duration
	// CacheMaxBytes caps the bytes of last good bodies kept. A body larger
	// than that is streamed but not cached.
	CacheMaxBytes int64
	// Transport reaches the app; nil means NewTransport().
	Transport http.RoundTripper
	// Logger receives one event per decision.
	Logger zerolog.Logger
	// Metrics records what was served; nil records nothing.
	Metrics *Metrics
}

// Proxy is an http.Handler that forwards every request to the app and keeps
// the last good answer of the metrics path. After StartFinal it answers
// scrapes the app fails with that body. It remembers, per scraper (the
// client's IP address), when it last scraped and which stored body it was
// answered with, so that the sidecar can tell when every scraper has got
// the app's final state (Pending).
type Proxy struct {
	upstream    *url.URL
	metricsPath string
	timeout     time.Duration
	maxBytes    int64
	transport   http.RoundTripper
	log         zerolog.Logger
	metrics     *Metrics
	cache       *cache
	copyBufs    sync.Pool

	terminating atomic.Bool
	arrived     atomic.Uint64
	served      atomic.Uint64
	scrapers    scrapers
	answered    chan struct{} // pulsed after every scrape answered in full
}

// New checks cfg and builds a Proxy.
func New(cfg Config) (*Proxy, error) {
	if cfg.Upstream == nil || cfg.Upstream.Host == "" {
		return nil, errors.New("metricsproxy: the upstream URL needs a host")
	}
	if cfg.Upstream.Scheme != "http" && cfg.Upstream.Scheme != "https" {
		return nil, fmt.Errorf("metricsproxy: upstream URL scheme %q must be http or https", cfg.Upstream.Scheme)
	}
	if cfg.Timeout <= 0 {
		return nil, fmt.Errorf("metricsproxy: upstream timeout %s must be positive", cfg.Timeout)
	}
	if cfg.CacheMaxBytes < 0 {
		return nil, fmt.Errorf("metricsproxy: cache size %d must not be negative", cfg.CacheMaxBytes)
	}
	if cfg.Transport == nil {
		cfg.Transport = NewTransport()
	}
	path := cfg.Upstream.Path
	if path == "" {
		path = "/"
	}
	p := &Proxy{
		upstream:    &url.URL{Scheme: cfg.Upstream.Scheme, Host: cfg.Upstream.Host, User: cfg.Upstream.User},
		metricsPath: path,
		timeout:     cfg.Timeout,
		maxBytes:    cfg.CacheMaxBytes,
		transport:   cfg.Transport,
		log:         cfg.Logger,
		metrics:     cfg.Metrics,
		cache:       newCache(cfg.CacheMaxBytes),
		answered:    make(chan struct{}, 1),
	}
	p.copyBufs.New = func() any { b := make([]byte, copyChunk); return &b }
	return p, nil
}

// NewTransport returns the transport used to reach the app: no
// environment proxy (the app is on loopback), no transparent decompression
// (the app's encoding is passed through as it is), HTTP/1.1 keep-alive.
func NewTransport() *http.Transport {
	return &http.Transport{
		Proxy:                 nil,
		DialContext:           (&net.Dialer{Timeout: 5 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
		DisableCompression:    true,
		ForceAttemptHTTP2:     false,
		MaxIdleConns:          4,
		MaxIdleConnsPerHost:   4,
		IdleConnTimeout:       90 * time.Second,
		ExpectContinueTimeout: time.Second,
	}
}

// MetricsPath is the path whose answers are cached and counted as scrapes.
func (p *Proxy) MetricsPath() string { return p.metricsPath }

// StartFinal switches the proxy to its termination mode: from now on a
// scrape the app does not answer (connection refused, timeout, 5xx) gets the
// last good body.
func (p *Proxy) StartFinal() { p.terminating.Store(true) }

// Answered receives a value after a scrape was answered in full (values are
// dropped while one is pending): a cue to look at Pending again.
func (p *Proxy) Answered() <-chan struct{} { return p.answered }

// Pending lists the scrapers that scraped since the given time and whose
// last answer is not the body now kept for the way they ask: once the app
// has stopped answering, those that have not got its final state yet.
func (p *Proxy) Pending(since time.Time) []string {
	return p.scrapers.pending(since, p.cache.storedAt)
}

// ScrapesServed counts the scrapes of the metrics path answered in full.
func (p *Proxy) ScrapesServed() uint64 { return p.served.Load() }

// ScrapesArrived counts the scrapes of the metrics path received, answered
// or not yet: one under way when the pod is told to stop means Prometheus
// scrapes this pod, so a final scrape is worth waiting for.
func (p *Proxy) ScrapesArrived() uint64 { return p.arrived.Load() }

// ServeHTTP implements http.Handler.
func (p *Proxy) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	scrape := r.URL.Path == p.metricsPath && (r.Method == http.MethodGet || r.Method == http.MethodHead)
	if scrape {
		p.arrived.Add(1)
		p.scrapers.arrived(scraperOf(r), time.Now())
	}
	v := variant{query: r.URL.RawQuery, accept: r.Header.Get("Accept"), acceptEncoding: r.Header.Get("Accept-Encoding")}

	ctx, cancel := context.WithTimeout(r.Context(), p.timeoutFor(r.Header))
	defer cancel()
	resp, err := p.transport.RoundTrip(p.outgoing(ctx, r))
	if err != nil && r.Context().Err() != nil {
		// Prometheus gave up; nobody reads an answer.
		return
	}
	reason := failureReason(resp, err)
	if reason != "" {
		p.metrics.upstreamError(reason)
	}
	if reason != "" && scrape && p.terminating.Load() {
		if b := p.cache.get(v); b != nil {
			if resp != nil {
				resp.Body.Close()
			}
			p.serveLastGood(w, r, b, v, upstreamFailure(resp, err))
			return
		}
		p.log.Warn().Str("reason", reason).Err(upstreamFailure(resp, err)).
			Msg("The app did not answer a scrape during termination and no last good body matches the scrape's Accept headers; the scrape fails.")
	}
	if err != nil {
		p.badGateway(w, r, err)
		return
	}
	defer resp.Body.Close()
	p.stream(w, r, resp, scrape, v)
}

// timeoutFor is the upstream timeout for one request: the configured one,
// or 90% of Prometheus' scrape timeout when that is lower, so that during
// termination there is time left to send the last good body instead.
func (p *Proxy) timeoutFor(h http.Header) time.Duration {
	d := p.timeout
	if s := h.Get(ScrapeTimeoutHeader); s != "" {
		secs, err := strconv.ParseFloat(s, 64)
		if err == nil && secs > 0 && !math.IsInf(secs, 0) {
			if st := time.Duration(secs * 0.9 * float64(time.Second)); st > 0 && st < d {
				d = st
			}
		}
	}
	return d
}

// outgoing is r aimed at the app: same method, path, query, headers and
// body, minus hop-by-hop headers.
func (p *Proxy) outgoing(ctx context.Context, r *http.Request) *http.Request {
	u := *p.upstream
	u.Path, u.RawPath, u.RawQuery = r.URL.Path, r.URL.RawPath, r.URL.RawQuery
	h := r.Header.Clone()
	if h == nil {
		h = http.Header{}
	}
	removeHopByHop(h)
	if _, ok := h["User-Agent"]; !ok {
		// An empty value keeps the transport from adding its own.
		h["User-Agent"] = []string{""}
	}
	var body io.ReadCloser
	if r.ContentLength != 0 && r.Body != nil {
		body = r.Body
	}
	out := &http.Request{
		Method:        r.Method,
		URL:           &u,
		Proto:         "HTTP/1.1",
		ProtoMajor:    1,
		ProtoMinor:    1,
		Header:        h,
		Body:          body,
		ContentLength: r.ContentLength,
		Host:          u.Host,
	}
	return out.WithContext(ctx)
}

// stream copies the app's answer to the client as it arrives. For a scrape
// answered with 200 the body is read straight into the buffer that becomes
// the cached copy, so it is held once, not twice.
func (p *Proxy) stream(w http.ResponseWriter, r *http.Request, resp *http.Response, scrape bool, v variant) {
	copyHeader(w.Header(), resp.Header)
	if resp.ContentLength >= 0 && r.Method != http.MethodHead {
		w.Header().Set("Content-Length", strconv.FormatInt(resp.ContentLength, 10))
	}
	w.WriteHeader(resp.StatusCode)
	if r.Method == http.MethodHead {
		return
	}

	cacheable := scrape && r.Method == http.MethodGet && resp.StatusCode == http.StatusOK && p.maxBytes > 0
	var cand []byte
	if cacheable {
		hint := resp.ContentLength
		if hint < 0 {
			hint = int64(p.cache.sizeHint(v))
		}
		if hint > p.maxBytes {
			cacheable = false
			p.log.Warn().Int64("bytes", hint).Int64("cache_max_bytes", p.maxBytes).
				Msg("The app's metrics body is larger than the cache cap; it is passed through but not kept for the final scrape.")
		} else {
			cand = p.cache.buffer(int(hint) + 1)
		}
	}
	bufp := p.copyBufs.Get().(*[]byte)
	defer p.copyBufs.Put(bufp)
	for {
		chunk := *bufp
		if cacheable {
			if len(cand) == cap(cand) {
				cand = slices.Grow(cand, copyChunk)
			}
			chunk = cand[len(cand):cap(cand)]
		}
		n, rerr := resp.Body.Read(chunk)
		if n > 0 {
			if _, werr := w.Write(chunk[:n]); werr != nil {
				p.cache.recycle(cand)
				p.log.Debug().Err(werr).Str("path", r.URL.Path).Msg("The client went away while the app's answer was being sent.")
				return
			}
			if cacheable {
				cand = cand[:len(cand)+n]
				if int64(len(cand)) > p.maxBytes {
					cacheable = false
					p.cache.recycle(cand)
					cand = nil
					p.log.Warn().Int64("cache_max_bytes", p.maxBytes).
						Msg("The app's metrics body is larger than the cache cap; it is passed through but not kept for the final scrape.")
				}
			}
		}
		if rerr == io.EOF {
			break
		}
		if rerr != nil {
			p.cache.recycle(cand)
			reason := "body"
			if errors.Is(rerr, context.DeadlineExceeded) {
				reason = "timeout"
			}
			p.metrics.upstreamError(reason)
			p.log.Warn().Err(rerr).Str("path", r.URL.Path).
				Msg("The app's answer broke off in the middle of the body; the response is aborted so that the client does not take it as complete.")
			panic(http.ErrAbortHandler)
		}
	}
	if err := http.NewResponseController(w).Flush(); err != nil {
		p.cache.recycle(cand)
		return
	}
	var storedAt time.Time
	if cacheable {
		storedAt = p.store(v, resp.Header, cand)
	}
	if scrape && resp.StatusCode/100 == 2 {
		p.scraped(r, "app", v, storedAt)
	}
}

// store keeps data as the last good body of v and returns its time stamp,
// zero when it was not kept.
func (p *Proxy) store(v variant, h http.Header, data []byte) time.Time {
	b := &body{
		variant:         v,
		contentType:     h.Get("Content-Type"),
		contentEncoding: h.Get("Content-Encoding"),
		data:            data,
		storedAt:        time.Now(),
	}
	if !p.cache.put(b) {
		return time.Time{}
	}
	bytes, _ := p.cache.size()
	p.metrics.cached(bytes)
	return b.storedAt
}

func (p *Proxy) serveLastGood(w http.ResponseWriter, r *http.Request, b *body, v variant, cause error) {
	defer p.cache.release(b)
	h := w.Header()
	h.Set("Content-Type", b.contentType)
	if b.contentEncoding != "" {
		h.Set("Content-Encoding", b.contentEncoding)
	}
	h.Set("Content-Length", strconv.Itoa(len(b.data)))
	h.Set(SourceHeader, "last-good")
	w.WriteHeader(http.StatusOK)
	if r.Method == http.MethodHead {
		return
	}
	if _, err := w.Write(b.data); err != nil {
		return
	}
	if err := http.NewResponseController(w).Flush(); err != nil {
		return
	}
	p.log.Info().Err(cause).Dur("age", time.Since(b.storedAt)).Int("bytes", len(b.data)).
		Str("scraper", scraperOf(r)).
		Msg("Answered a scrape with the last good body because the app did not answer.")
	// The scraper asked as v; the body may be another variant's that
	// satisfies it, which is what it will get again.
	p.scraped(r, "last_good", v, b.storedAt)
}

func (p *Proxy) scraped(r *http.Request, source string, v variant, storedAt time.Time) {
	p.served.Add(1)
	p.metrics.scraped(source)
	p.scrapers.answered(scraperOf(r), v, storedAt)
	select {
	case p.answered <- struct{}{}:
	default:
	}
}

func (p *Proxy) badGateway(w http.ResponseWriter, r *http.Request, err error) {
	status := http.StatusBadGateway
	if errors.Is(err, context.DeadlineExceeded) {
		status = http.StatusGatewayTimeout
	}
	p.log.Warn().Err(err).Str("path", r.URL.Path).Int("status", status).Msg("The app did not answer a proxied request.")
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.WriteHeader(status)
	fmt.Fprintf(w, "The metrics proxy could not reach the app at %s: %v.\n", p.upstream.Host, err)
}

// Refresh fetches the metrics path once for every way it was scraped so far,
// in parallel, and keeps each good answer as the last good body. It is the
// fetch made at once on the termination signal, while the app most likely
// still answers. It returns how many variants were refreshed and the errors
// of the others.
//
// Before the first scrape it fetches the metrics path as a plain GET, so
// that whether the app still answers is known either way.
func (p *Proxy) Refresh(ctx context.Context) (int, error) {
	vs := p.cache.variants()
	if len(vs) == 0 {
		vs = []variant{{}}
	}
	errs := make([]error, len(vs))
	var wg sync.WaitGroup
	for i, v := range vs {
		wg.Go(func() { errs[i] = p.fetch(ctx, v) })
	}
	wg.Wait()
	ok := 0
	for _, err := range errs {
		if err == nil {
			ok++
		}
	}
	return ok, errors.Join(errs...)
}

func (p *Proxy) fetch(ctx context.Context, v variant) error {
	ctx, cancel := context.WithTimeout(ctx, p.timeout)
	defer cancel()
	u := *p.upstream
	u.Path, u.RawQuery = p.metricsPath, v.query
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u.String(), nil)
	if err != nil {
		return fmt.Errorf("building the request for %s: %w", p.metricsPath, err)
	}
	if v.accept != "" {
		req.Header.Set("Accept", v.accept)
	}
	if v.acceptEncoding != "" {
		req.Header.Set("Accept-Encoding", v.acceptEncoding)
	}
	req.Header.Set("User-Agent", "prometheus-metrics-proxy-hook-sidecar")
	req.Header.Set(ScrapeTimeoutHeader, strconv.FormatFloat(p.timeout.Seconds(), 'f', -1, 64))
	resp, err := p.transport.RoundTrip(req)
	if err != nil {
		return fmt.Errorf("fetching %s: %w", u.Redacted(), err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("fetching %s: the app answered %s", u.Redacted(), resp.Status)
	}
	hint := resp.ContentLength
	if hint < 0 {
		hint = int64(p.cache.sizeHint(v))
	}
	if hint > p.maxBytes {
		return fmt.Errorf("fetching %s: the body of %d bytes is larger than the cache cap of %d bytes: %w", u.Redacted(), hint, p.maxBytes, ErrNotKept)
	}
	buf := p.cache.buffer(int(hint) + 1)
	for {
		if len(buf) == cap(buf) {
			buf = slices.Grow(buf, copyChunk)
		}
		n, rerr := resp.Body.Read(buf[len(buf):cap(buf)])
		buf = buf[:len(buf)+n]
		if int64(len(buf)) > p.maxBytes {
			p.cache.recycle(buf)
			return fmt.Errorf("fetching %s: the body is larger than the cache cap of %d bytes: %w", u.Redacted(), p.maxBytes, ErrNotKept)
		}
		if rerr == io.EOF {
			break
		}
		if rerr != nil {
			p.cache.recycle(buf)
			return fmt.Errorf("reading the body of %s: %w", u.Redacted(), rerr)
		}
	}
	if p.store(v, resp.Header, buf).IsZero() {
		return fmt.Errorf("fetching %s: %w", u.Redacted(), ErrNotKept)
	}
	return nil
}

// failureReason classifies an answer of the app that does not count as a
// good one; "" for a good answer.
func failureReason(resp *http.Response, err error) string {
	switch {
	case err == nil && resp.StatusCode >= 500:
		return "status"
	case err == nil:
		return ""
	case errors.Is(err, context.DeadlineExceeded):
		return "timeout"
	default:
		return "connection"
	}
}

func upstreamFailure(resp *http.Response, err error) error {
	if err != nil {
		return err
	}
	return fmt.Errorf("the app answered %s", resp.Status)
}

// hopByHop are the headers that describe one connection, not the message
// (RFC 9110 7.6.1); a proxy does not forward them.
var hopByHop = []string{
	"Connection", "Keep-Alive", "Proxy-Connection", "Proxy-Authenticate",
	"Proxy-Authorization", "Te", "Trailer", "Transfer-Encoding", "Upgrade",
}

func removeHopByHop(h http.Header) {
	for _, f := range h.Values("Connection") {
		for name := range strings.SplitSeq(f, ",") {
			if name = strings.TrimSpace(name); name != "" {
				h.Del(name)
			}
		}
	}
	for _, name := range hopByHop {
		h.Del(name)
	}
}

func copyHeader(dst, src http.Header) {
	for k, vs := range src {
		dst[k] = append(dst[k][:0:0], vs...)
	}
	removeHopByHop(dst)
}
