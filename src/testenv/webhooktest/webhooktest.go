// Package webhooktest runs the real webhook binary as a process for tests:
// it builds the command once per test binary, writes a CA and a serving
// certificate into a directory laid out like a Kubernetes secret volume,
// starts `prometheus-metrics-proxy-hook-webhook` on loopback ports and
// waits until it is ready. Sidecar, end-to-end, benchmark and
// fault-injection tests use it; nothing in it is specific to one of them.
//
//	certs := webhooktest.NewCertDir(t)
//	redis := redistest.StartT(t, 3)
//	wh := webhooktest.Start(t, webhooktest.Options{Redis: redis.Addrs(), RedisPassword: redis.Password, Certs: certs})
//	resp, err := wh.Client().Post(wh.MutateURL(), "application/json", body)
package webhooktest

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/kaidotio/prometheus-metrics-proxy-hook/src/server"
	"github.com/kaidotio/prometheus-metrics-proxy-hook/src/testenv/gobuild"
	"github.com/kaidotio/prometheus-metrics-proxy-hook/src/testenv/localproc"
)

// Bounds of the process' life cycle.
const (
	// DefaultReadyTimeout bounds the wait for /readyz after start.
	DefaultReadyTimeout = 30 * time.Second
	// StopGrace is how long Stop waits after SIGTERM before SIGKILL.
	StopGrace = 30 * time.Second
)

// Binary builds (once per test binary) and returns the path of the webhook
// command, with -race under -race.
func Binary(t testing.TB) string {
	t.Helper()
	return gobuild.Test(t, gobuild.Webhook)
}

// Options configures a webhook process.
type Options struct {
	// Redis are the node addresses (--redis-addresses); required.
	Redis []string
	// RedisPassword is written to a file passed as --redis-password-file;
	// empty passes no password file.
	RedisPassword string
	// RedisPasswordFile is passed as --redis-password-file as it is, for
	// tests that manage the file themselves; it wins over RedisPassword.
	RedisPasswordFile string
	// Binary runs this webhook binary instead of the one built for the
	// test binary (e.g. a release build, for memory figures).
	Binary string
	// Certs is the certificate directory; nil creates one.
	Certs *CertDir
	// SidecarImage defaults to "prometheus-metrics-proxy-hook:test".
	SidecarImage string
	// LeaseURL defaults to the webhook's own base URL.
	LeaseURL string
	// Args are extra flags, appended last (so they override the ones
	// above, e.g. "--no-quorum-policy=allow" or "--listen-address=...").
	Args []string
	// Env is added to the process' environment (PMPH_* variables).
	Env []string
	// ReadyTimeout bounds the wait for /readyz; zero means
	// DefaultReadyTimeout.
	ReadyTimeout time.Duration
}

// Webhook is a running webhook process.
type Webhook struct {
	t    testing.TB
	opts Options
	bin  string
	dir  string
	// Certs is the certificate directory the process reads.
	Certs *CertDir

	mu      sync.Mutex
	cmd     *exec.Cmd
	exited  chan struct{}
	exit    int
	logs    *bytes.Buffer
	addrs   addresses
	chosen  string // the TLS address of the first start
	logDone chan struct{}
}

type addresses struct{ webhook, metrics, probes string }

// Start starts a webhook process, waits until /readyz answers 200 and
// stops it when the test ends. It fails the test if the process does not
// become ready.
func Start(t testing.TB, opts Options) *Webhook {
	t.Helper()
	w := New(t, opts)
	if err := w.Start(); err != nil {
		t.Fatal(err)
	}
	return w
}

// New prepares a process without starting it (for tests that expect it to
// fail: call Start and inspect the error, Logs and ExitCode).
func New(t testing.TB, opts Options) *Webhook {
	t.Helper()
	if opts.Certs == nil {
		opts.Certs = NewCertDir(t)
	}
	if opts.SidecarImage == "" {
		opts.SidecarImage = "prometheus-metrics-proxy-hook:test"
	}
	if opts.ReadyTimeout == 0 {
		opts.ReadyTimeout = DefaultReadyTimeout
	}
	bin := opts.Binary
	if bin == "" {
		bin = Binary(t)
	}
	w := &Webhook{t: t, opts: opts, bin: bin, dir: t.TempDir(), Certs: opts.Certs, logs: &bytes.Buffer{},
		chosen: "127.0.0.1:" + strconv.Itoa(FreePort(t))}
	t.Cleanup(func() {
		if w.Running() {
			if code, err := w.Stop(); err != nil || code != 0 {
				t.Errorf("the webhook did not stop cleanly (exit %d, %v); log:\n%s", code, err, w.Logs())
			}
		}
	})
	return w
}

// Start starts the process (again, after Stop or Kill: on the same ports)
// and waits for /readyz. On failure the process is gone and the error
// carries its log.
func (w *Webhook) Start() error {
	for attempt := 1; ; attempt++ {
		err := w.start()
		// The port chosen for a first start can be taken by another
		// process in the meantime; a new one fixes that.
		if err == nil || attempt == 3 || w.Addr() != "" || !strings.Contains(err.Error(), "address already in use") {
			return err
		}
		w.chosen = "127.0.0.1:" + strconv.Itoa(FreePort(w.t))
	}
}

func (w *Webhook) start() error {
	w.mu.Lock()
	if w.cmd != nil {
		w.mu.Unlock()
		return errors.New("the webhook is already running")
	}
	args, err := w.args()
	if err != nil {
		w.mu.Unlock()
		return err
	}
	cmd := exec.Command(w.bin, args...)
	cmd.Env = append(os.Environ(), w.opts.Env...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	stderr, err := cmd.StderrPipe()
	if err != nil {
		w.mu.Unlock()
		return err
	}
	cmd.Stdout = cmd.Stderr
	if err := cmd.Start(); err != nil {
		w.mu.Unlock()
		return fmt.Errorf("starting %s: %w", w.bin, err)
	}
	listening := make(chan struct{})
	w.cmd, w.exited, w.logDone = cmd, make(chan struct{}), make(chan struct{})
	exited, logDone := w.exited, w.logDone
	w.mu.Unlock()

	go w.readLog(stderr, listening, logDone)
	go func() {
		<-logDone // Wait must not run before the pipe is drained.
		err := cmd.Wait()
		code := 0
		if err != nil {
			code = -1
			var ee *exec.ExitError
			if errors.As(err, &ee) {
				code = ee.ExitCode()
			}
		}
		w.mu.Lock()
		w.exit = code
		w.cmd = nil
		w.mu.Unlock()
		close(exited)
	}()

	deadline := time.NewTimer(w.opts.ReadyTimeout)
	defer deadline.Stop()
	select {
	case <-listening:
	case <-exited:
		return fmt.Errorf("the webhook exited with code %d before listening; log:\n%s", w.ExitCode(), w.Logs())
	case <-deadline.C:
		w.Kill()
		return fmt.Errorf("the webhook did not listen within %s; log:\n%s", w.opts.ReadyTimeout, w.Logs())
	}
	client := &http.Client{Timeout: time.Second}
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for {
		resp, err := client.Get(w.ReadyzURL())
		if err == nil {
			_, _ = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
		}
		select {
		case <-tick.C:
		case <-exited:
			return fmt.Errorf("the webhook exited with code %d before it was ready; log:\n%s", w.ExitCode(), w.Logs())
		case <-deadline.C:
			w.Kill()
			return fmt.Errorf("the webhook was not ready within %s; log:\n%s", w.opts.ReadyTimeout, w.Logs())
		}
	}
}

func (w *Webhook) args() ([]string, error) {
	// The TLS port is chosen before the start, so that the lease URL the
	// webhook writes into sidecars is right from the first review.
	webhookAddr, metricsAddr, probeAddr := w.chosen, "127.0.0.1:0", "127.0.0.1:0"
	if w.addrs.webhook != "" {
		// A restart keeps its ports, as a restarted pod keeps its Service.
		webhookAddr, metricsAddr, probeAddr = w.addrs.webhook, w.addrs.metrics, w.addrs.probes
	}
	args := []string{
		"--listen-address=" + webhookAddr,
		"--metrics-address=" + metricsAddr,
		"--probe-address=" + probeAddr,
		"--cert-dir=" + w.Certs.Dir,
		"--redis-addresses=" + strings.Join(w.opts.Redis, ","),
		"--sidecar-image=" + w.opts.SidecarImage,
		"--shutdown-timeout=10s",
		// Tests stop at once; Options.Args can set a delay back.
		"--shutdown-delay=0s",
	}
	switch {
	case w.opts.RedisPasswordFile != "":
		args = append(args, "--redis-password-file="+w.opts.RedisPasswordFile)
	case w.opts.RedisPassword != "":
		f := filepath.Join(w.dir, "redis-password")
		if err := os.WriteFile(f, []byte(w.opts.RedisPassword+"\n"), 0o600); err != nil {
			return nil, err
		}
		args = append(args, "--redis-password-file="+f)
	}
	leaseURL := w.opts.LeaseURL
	if leaseURL == "" {
		leaseURL = "https://" + webhookAddr
	}
	args = append(args, "--lease-url="+leaseURL)
	return append(args, w.opts.Args...), nil
}

// readLog copies the process' output into the log buffer and learns the
// bound addresses from the server.ListeningMessage events.
func (w *Webhook) readLog(r io.Reader, listening chan struct{}, done chan struct{}) {
	defer close(done)
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 4<<20)
	seen := 0
	for sc.Scan() {
		line := sc.Bytes()
		w.mu.Lock()
		w.logs.Write(line)
		w.logs.WriteByte('\n')
		w.mu.Unlock()
		var ev struct {
			Message, Server, Address string
		}
		if json.Unmarshal(line, &ev) != nil || ev.Message != server.ListeningMessage {
			continue
		}
		w.mu.Lock()
		switch ev.Server {
		case "webhook":
			w.addrs.webhook = ev.Address
		case "metrics":
			w.addrs.metrics = ev.Address
		case "probes":
			w.addrs.probes = ev.Address
		}
		w.mu.Unlock()
		if seen++; seen == 3 {
			close(listening)
		}
	}
	_, _ = io.Copy(io.Discard, r)
}

// Logs is everything the process wrote so far (JSON lines), over all its
// starts.
func (w *Webhook) Logs() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.logs.String()
}

// WaitLog waits until the log holds substr, for at most timeout; it reports
// whether it did.
func (w *Webhook) WaitLog(substr string, timeout time.Duration) bool {
	deadline := time.Now().Add(timeout)
	for {
		if strings.Contains(w.Logs(), substr) {
			return true
		}
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// Addr is the TLS listener's host:port.
func (w *Webhook) Addr() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.addrs.webhook
}

// BaseURL is https://host:port of the TLS listener; LeaseURL is the same,
// the base the lease API client takes.
func (w *Webhook) BaseURL() string  { return "https://" + w.Addr() }
func (w *Webhook) LeaseURL() string { return w.BaseURL() }

// MutateURL is the admission endpoint, with the timeout the API server adds.
func (w *Webhook) MutateURL() string { return w.BaseURL() + "/mutate?timeout=5s" }

// MetricsURL is the Prometheus endpoint.
func (w *Webhook) MetricsURL() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return "http://" + w.addrs.metrics + "/metrics"
}

// HealthzURL and ReadyzURL are the probes.
func (w *Webhook) HealthzURL() string { return w.probeURL("/healthz") }
func (w *Webhook) ReadyzURL() string  { return w.probeURL("/readyz") }

func (w *Webhook) probeURL(p string) string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return "http://" + w.addrs.probes + p
}

// CAPEM is the CA bundle that signs the serving certificate.
func (w *Webhook) CAPEM() []byte { return w.Certs.CA.PEM }

// Client is an HTTPS client that trusts the CA and speaks HTTP/1.1 with
// keep-alive, like the API server.
func (w *Webhook) Client() *http.Client {
	return &http.Client{
		Timeout: 30 * time.Second,
		Transport: &http.Transport{
			TLSClientConfig:     w.Certs.ClientTLS(),
			MaxIdleConnsPerHost: 64,
			ForceAttemptHTTP2:   false,
		},
	}
}

// Pid is the process id, 0 when not running.
func (w *Webhook) Pid() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.cmd == nil {
		return 0
	}
	return w.cmd.Process.Pid
}

// Running reports whether the process is up.
func (w *Webhook) Running() bool { return w.Pid() != 0 }

// Signal sends sig to the process (e.g. SIGSTOP for a hung webhook).
func (w *Webhook) Signal(sig syscall.Signal) error {
	pid := w.Pid()
	if pid == 0 {
		return errors.New("the webhook is not running")
	}
	return syscall.Kill(pid, sig)
}

// Stop sends SIGTERM and waits for the exit, up to StopGrace, then kills the
// process. It returns the exit code.
func (w *Webhook) Stop() (int, error) {
	w.mu.Lock()
	cmd, exited := w.cmd, w.exited
	w.mu.Unlock()
	if cmd == nil {
		return w.ExitCode(), nil
	}
	_ = syscall.Kill(cmd.Process.Pid, syscall.SIGCONT)
	if err := syscall.Kill(cmd.Process.Pid, syscall.SIGTERM); err != nil {
		return -1, err
	}
	select {
	case <-exited:
		return w.ExitCode(), nil
	case <-time.After(StopGrace):
		w.Kill()
		return w.ExitCode(), fmt.Errorf("the webhook ignored SIGTERM for %s and was killed", StopGrace)
	}
}

// Kill stops the process with SIGKILL, like a crash, and waits for it.
func (w *Webhook) Kill() {
	w.mu.Lock()
	cmd, exited := w.cmd, w.exited
	w.mu.Unlock()
	if cmd == nil {
		return
	}
	_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
	<-exited
}

// Wait waits for the process to exit on its own, up to timeout, and returns
// its exit code.
func (w *Webhook) Wait(timeout time.Duration) (int, error) {
	w.mu.Lock()
	exited := w.exited
	w.mu.Unlock()
	if exited == nil {
		return 0, errors.New("the webhook was never started")
	}
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	select {
	case <-exited:
		return w.ExitCode(), nil
	case <-ctx.Done():
		return -1, fmt.Errorf("the webhook did not exit within %s", timeout)
	}
}

// ExitCode is the code of the last exit (-1 when killed by a signal).
func (w *Webhook) ExitCode() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.exit
}

// Restart stops the process (SIGTERM) and starts it again on the same ports.
func (w *Webhook) Restart() error {
	if _, err := w.Stop(); err != nil {
		return err
	}
	return w.Start()
}

// Run runs the webhook command with args to completion (for flag errors),
// bounded by timeout, and returns its exit code and combined output.
func Run(t testing.TB, timeout time.Duration, env []string, args ...string) (int, string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, Binary(t), args...)
	cmd.Env = append(os.Environ(), env...)
	out, err := cmd.CombinedOutput()
	var ee *exec.ExitError
	switch {
	case err == nil:
		return 0, string(out)
	case errors.As(err, &ee):
		return ee.ExitCode(), string(out)
	}
	t.Fatalf("running the webhook: %v", err)
	return -1, ""
}

// FreePort returns a loopback port that was free a moment ago.
func FreePort(t testing.TB) int {
	t.Helper()
	port, err := localproc.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	return port
}
