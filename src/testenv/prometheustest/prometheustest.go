// Package prometheustest runs a real Prometheus server for tests: the
// Debian prometheus binary on a free loopback port with a temporary data
// directory and a given configuration, ready when Start returns, stopped
// when the test ends, with helpers for its HTTP API.
package prometheustest

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/kaidotio/prometheus-metrics-proxy-hook/src/testenv/localproc"
)

// Options configures a server.
type Options struct {
	// Config is the content of prometheus.yml; StaticConfig builds the
	// common case.
	Config string
	// Binary is the prometheus to run; empty means prometheus on PATH.
	Binary string
	// ReadyTimeout bounds start-up until /-/ready answers; zero means 60 s.
	ReadyTimeout time.Duration
	// ExtraArgs are appended to the command line, e.g.
	// "--enable-feature=native-histograms".
	ExtraArgs []string
}

// Job is one scrape job of StaticConfig.
type Job struct {
	Name     string
	Interval time.Duration
	// Timeout is the scrape timeout; zero means Interval.
	Timeout     time.Duration
	MetricsPath string // empty means /metrics
	Targets     []string
}

// StaticConfig is a prometheus.yml with one static job per Job.
func StaticConfig(jobs ...Job) string {
	var b strings.Builder
	b.WriteString("scrape_configs:\n")
	for _, j := range jobs {
		timeout := j.Timeout
		if timeout == 0 {
			timeout = j.Interval
		}
		path := j.MetricsPath
		if path == "" {
			path = "/metrics"
		}
		fmt.Fprintf(&b, "  - job_name: %q\n    scrape_interval: %s\n    scrape_timeout: %s\n    metrics_path: %q\n    static_configs:\n      - targets:\n",
			j.Name, promDuration(j.Interval), promDuration(timeout), path)
		for _, t := range j.Targets {
			fmt.Fprintf(&b, "          - %q\n", t)
		}
	}
	return b.String()
}

// promDuration writes d in Prometheus' duration syntax, which has no
// fractions: whole milliseconds.
func promDuration(d time.Duration) string {
	return strconv.FormatInt(d.Milliseconds(), 10) + "ms"
}

// Server is a running prometheus process.
type Server struct {
	// URL is the base URL of the HTTP API, http://127.0.0.1:port.
	URL string
	// Dir holds prometheus.yml, the data directory and prometheus.log.
	Dir string

	client *http.Client
	mu     sync.Mutex
	cmd    *exec.Cmd
	exited chan struct{}
}

// Start starts a server for a test and stops it when the test ends,
// whatever the outcome; it fails the test when prometheus is missing or
// does not become ready.
func Start(t testing.TB, opts Options) *Server {
	t.Helper()
	s, err := start(t.TempDir(), opts)
	if err != nil {
		t.Fatalf("starting prometheus: %v", err)
	}
	t.Cleanup(func() {
		if err := s.Stop(); err != nil {
			t.Errorf("stopping prometheus: %v", err)
		}
	})
	return s
}

func start(dir string, opts Options) (*Server, error) {
	if opts.Binary == "" {
		opts.Binary = "prometheus"
	}
	if opts.ReadyTimeout == 0 {
		opts.ReadyTimeout = 60 * time.Second
	}
	bin, err := exec.LookPath(opts.Binary)
	if err != nil {
		return nil, fmt.Errorf("prometheus was not found on PATH; install the Debian package prometheus (make test does it): %w", err)
	}
	conf := filepath.Join(dir, "prometheus.yml")
	if err := os.WriteFile(conf, []byte(opts.Config), 0o600); err != nil {
		return nil, err
	}
	var lastErr error
	// Another process can take the port between our probe and prometheus'
	// bind; a new port fixes that.
	for range 3 {
		port, err := localproc.FreePort()
		if err != nil {
			return nil, err
		}
		s := &Server{
			URL:    "http://127.0.0.1:" + strconv.Itoa(port),
			Dir:    dir,
			client: &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{Proxy: nil}},
		}
		args := append([]string{
			"--config.file=" + conf,
			"--storage.tsdb.path=" + filepath.Join(dir, "data"),
			"--web.listen-address=127.0.0.1:" + strconv.Itoa(port),
			"--web.enable-lifecycle",
			"--web.console.templates=" + dir,
			"--web.console.libraries=" + dir,
		}, opts.ExtraArgs...)
		if lastErr = s.run(bin, args, opts.ReadyTimeout); lastErr == nil {
			return s, nil
		}
		if !strings.Contains(lastErr.Error(), "address already in use") {
			return nil, lastErr
		}
	}
	return nil, lastErr
}

func (s *Server) run(bin string, args []string, readyTimeout time.Duration) error {
	logFile, err := os.Create(s.logPath())
	if err != nil {
		return err
	}
	defer logFile.Close()
	cmd := exec.Command(bin, args...)
	cmd.Dir = s.Dir
	cmd.Stdout, cmd.Stderr = logFile, logFile
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("starting %s: %w", bin, err)
	}
	exited := make(chan struct{})
	go func() {
		_ = cmd.Wait()
		close(exited)
	}()
	s.mu.Lock()
	s.cmd, s.exited = cmd, exited
	s.mu.Unlock()
	if err := s.waitReady(readyTimeout); err != nil {
		s.kill()
		return err
	}
	return nil
}

func (s *Server) logPath() string { return filepath.Join(s.Dir, "prometheus.log") }

func (s *Server) waitReady(timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	var lastErr error
	for time.Now().Before(deadline) {
		select {
		case <-s.exited:
			return fmt.Errorf("prometheus exited during start-up: %s", s.LogTail(15))
		case <-tick.C:
		}
		resp, err := s.client.Get(s.URL + "/-/ready")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
			err = fmt.Errorf("/-/ready answered %s", resp.Status)
		}
		lastErr = err
	}
	return fmt.Errorf("prometheus at %s was not ready within %s (%v): %s", s.URL, timeout, lastErr, s.LogTail(15))
}

// LogTail is the last n lines of the server's log, joined with " | ".
func (s *Server) LogTail(n int) string { return localproc.LogTail(s.logPath(), n, " | ") }

// Stop shuts the server down with SIGTERM, and SIGKILL after 10 s.
func (s *Server) Stop() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cmd == nil {
		return nil
	}
	_ = syscall.Kill(-s.cmd.Process.Pid, syscall.SIGTERM)
	select {
	case <-s.exited:
	case <-time.After(10 * time.Second):
		_ = syscall.Kill(-s.cmd.Process.Pid, syscall.SIGKILL)
		<-s.exited
		s.cmd = nil
		return errors.New("prometheus ignored SIGTERM for 10s and was killed")
	}
	s.cmd = nil
	return nil
}

func (s *Server) kill() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cmd == nil {
		return
	}
	_ = syscall.Kill(-s.cmd.Process.Pid, syscall.SIGKILL)
	<-s.exited
	s.cmd = nil
}

// Reload replaces prometheus.yml with config and tells the server to load
// it.
func (s *Server) Reload(ctx context.Context, config string) error {
	if err := os.WriteFile(filepath.Join(s.Dir, "prometheus.yml"), []byte(config), 0o600); err != nil {
		return err
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, s.URL+"/-/reload", nil)
	if err != nil {
		return err
	}
	resp, err := s.client.Do(req)
	if err != nil {
		return fmt.Errorf("reloading prometheus: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 4<<10))
		return fmt.Errorf("reloading prometheus: %s: %s", resp.Status, strings.TrimSpace(string(b)))
	}
	return nil
}

// Sample is one element of an instant vector.
type Sample struct {
	Labels map[string]string
	Time   time.Time
	Value  float64
}

// Point is one stored sample of a series.
type Point struct {
	Time  time.Time
	Value float64
}

// Series is one series of a range vector with its samples, oldest first.
type Series struct {
	Labels map[string]string
	Points []Point
}

// Last is the newest point; ok is false for a series without points.
func (s Series) Last() (p Point, ok bool) {
	if len(s.Points) == 0 {
		return Point{}, false
	}
	return s.Points[len(s.Points)-1], true
}

// Query evaluates an instant-vector expression now.
func (s *Server) Query(ctx context.Context, expr string) ([]Sample, error) {
	var data struct {
		ResultType string `json:"resultType"`
		Result     []struct {
			Metric map[string]string `json:"metric"`
			Value  apiPoint          `json:"value"`
		} `json:"result"`
	}
	if err := s.api(ctx, "/api/v1/query", url.Values{"query": {expr}}, &data); err != nil {
		return nil, err
	}
	if data.ResultType != "vector" {
		return nil, fmt.Errorf("query %q gave a %s, not a vector", expr, data.ResultType)
	}
	out := make([]Sample, 0, len(data.Result))
	for _, r := range data.Result {
		out = append(out, Sample{Labels: r.Metric, Time: r.Value.Time, Value: r.Value.Value})
	}
	return out, nil
}

// Samples returns the raw samples stored for selector over the last
// window (a range-vector query such as counter[1m]), stale markers left
// out.
func (s *Server) Samples(ctx context.Context, selector string, window time.Duration) ([]Series, error) {
	expr := selector + "[" + promDuration(window) + "]"
	var data struct {
		ResultType string `json:"resultType"`
		Result     []struct {
			Metric map[string]string `json:"metric"`
			Values []apiPoint        `json:"values"`
		} `json:"result"`
	}
	if err := s.api(ctx, "/api/v1/query", url.Values{"query": {expr}}, &data); err != nil {
		return nil, err
	}
	if data.ResultType != "matrix" {
		return nil, fmt.Errorf("query %q gave a %s, not a matrix", expr, data.ResultType)
	}
	out := make([]Series, 0, len(data.Result))
	for _, r := range data.Result {
		sr := Series{Labels: r.Metric}
		for _, p := range r.Values {
			sr.Points = append(sr.Points, Point(p))
		}
		out = append(out, sr)
	}
	return out, nil
}

// Target is one active scrape target.
type Target struct {
	Job        string
	ScrapeURL  string
	Health     string // "up", "down" or "unknown"
	LastError  string
	LastScrape time.Time
	Labels     map[string]string
}

// Targets lists the active targets.
func (s *Server) Targets(ctx context.Context) ([]Target, error) {
	var data struct {
		ActiveTargets []struct {
			ScrapePool string            `json:"scrapePool"`
			ScrapeURL  string            `json:"scrapeUrl"`
			Health     string            `json:"health"`
			LastError  string            `json:"lastError"`
			LastScrape time.Time         `json:"lastScrape"`
			Labels     map[string]string `json:"labels"`
		} `json:"activeTargets"`
	}
	if err := s.api(ctx, "/api/v1/targets", url.Values{"state": {"active"}}, &data); err != nil {
		return nil, err
	}
	out := make([]Target, 0, len(data.ActiveTargets))
	for _, t := range data.ActiveTargets {
		out = append(out, Target{Job: t.ScrapePool, ScrapeURL: t.ScrapeURL, Health: t.Health,
			LastError: t.LastError, LastScrape: t.LastScrape, Labels: t.Labels})
	}
	return out, nil
}

// Rule is one loaded alerting or recording rule.
type Rule struct {
	// Group and File are the rule group's name and the file it came from.
	Group, File string
	Name        string
	Type        string // "alerting" or "recording"
	// Health is "ok" once evaluated without error, "err" after an error,
	// "unknown" before the first evaluation.
	Health    string
	LastError string
	// State is an alerting rule's "inactive", "pending" or "firing".
	State          string
	LastEvaluation time.Time
}

// Rules lists the loaded rules, group by group.
func (s *Server) Rules(ctx context.Context) ([]Rule, error) {
	var data struct {
		Groups []struct {
			Name  string `json:"name"`
			File  string `json:"file"`
			Rules []struct {
				Name           string    `json:"name"`
				Type           string    `json:"type"`
				Health         string    `json:"health"`
				LastError      string    `json:"lastError"`
				State          string    `json:"state"`
				LastEvaluation time.Time `json:"lastEvaluation"`
			} `json:"rules"`
		} `json:"groups"`
	}
	if err := s.api(ctx, "/api/v1/rules", nil, &data); err != nil {
		return nil, err
	}
	var out []Rule
	for _, g := range data.Groups {
		for _, r := range g.Rules {
			out = append(out, Rule{Group: g.Name, File: g.File, Name: r.Name, Type: r.Type, Health: r.Health,
				LastError: r.LastError, State: r.State, LastEvaluation: r.LastEvaluation})
		}
	}
	return out, nil
}

// WaitFor evaluates expr every 100 ms until cond holds for its result or
// timeout passes; it fails the test on timeout and returns the last result.
func (s *Server) WaitFor(t testing.TB, timeout time.Duration, expr string, cond func([]Sample) bool) []Sample {
	t.Helper()
	deadline := time.Now().Add(timeout)
	var (
		last    []Sample
		lastErr error
	)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		last, lastErr = s.Query(ctx, expr)
		cancel()
		if lastErr == nil && cond(last) {
			return last
		}
		if time.Now().After(deadline) {
			t.Fatalf("prometheus: %q did not reach the expected result within %s; last result %v, error %v", expr, timeout, last, lastErr)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// WaitForTargetsUp waits until every active target of job was scraped
// successfully at least once; it fails the test on timeout.
func (s *Server) WaitForTargetsUp(t testing.TB, timeout time.Duration, job string) {
	t.Helper()
	s.WaitFor(t, timeout, `up{job="`+job+`"}`, func(v []Sample) bool {
		for _, smp := range v {
			if smp.Value != 1 {
				return false
			}
		}
		return len(v) > 0
	})
}

func (s *Server) api(ctx context.Context, path string, params url.Values, data any) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, s.URL+path+"?"+params.Encode(), nil)
	if err != nil {
		return err
	}
	resp, err := s.client.Do(req)
	if err != nil {
		return fmt.Errorf("prometheus API %s: %w", path, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err != nil {
		return fmt.Errorf("prometheus API %s: reading the answer: %w", path, err)
	}
	var env struct {
		Status string          `json:"status"`
		Data   json.RawMessage `json:"data"`
		Error  string          `json:"error"`
	}
	if err := json.Unmarshal(body, &env); err != nil {
		return fmt.Errorf("prometheus API %s answered %s: %s", path, resp.Status, strings.TrimSpace(string(body)))
	}
	if env.Status != "success" {
		return fmt.Errorf("prometheus API %s answered %s: %s", path, resp.Status, env.Error)
	}
	return json.Unmarshal(env.Data, data)
}

// apiPoint is Prometheus' [unix seconds, "value"] pair.
type apiPoint struct {
	Time  time.Time
	Value float64
}

func (p *apiPoint) UnmarshalJSON(b []byte) error {
	var raw [2]json.RawMessage
	if err := json.Unmarshal(b, &raw); err != nil {
		return err
	}
	var ts float64
	if err := json.Unmarshal(raw[0], &ts); err != nil {
		return fmt.Errorf("sample time %s: %w", raw[0], err)
	}
	var v string
	if err := json.Unmarshal(raw[1], &v); err != nil {
		return fmt.Errorf("sample value %s: %w", raw[1], err)
	}
	f, err := strconv.ParseFloat(v, 64)
	if err != nil {
		return fmt.Errorf("sample value %q: %w", v, err)
	}
	ms := int64(ts*1000 + 0.5)
	p.Time, p.Value = time.UnixMilli(ms), f
	return nil
}
