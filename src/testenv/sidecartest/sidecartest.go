// Package sidecartest runs the real sidecar
// (`prometheus-metrics-proxy-hook-sidecar`) as a process for tests: it starts it with the environment the
// webhook writes, learns the address it listens on from its log, and offers
// what tests assert on: its log events, its exit code and time, its memory.
//
//	sc := sidecartest.Start(t, sidecartest.Options{Env: env})
//	resp, err := http.Get(sc.URL() + "/metrics")
//	_ = sc.Signal(syscall.SIGTERM)
//	code, err := sc.Wait(10 * time.Second)
package sidecartest

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/kaidotio/prometheus-metrics-proxy-hook/src/testenv/gobuild"
)

// ServingMessage is the log event the sidecar writes once it listens; its
// listen_address field is the bound address.
const ServingMessage = "The sidecar is serving."

// Options configures a sidecar process.
type Options struct {
	// Env is added to the environment, "PMPH_X=v" entries as the webhook
	// writes them. PMPH_* variables of the test's own environment are not
	// passed on. PMPH_LISTEN_ADDRESS defaults to 127.0.0.1:0.
	Env []string
	// Args are the command's flags.
	Args []string
	// Binary is the command to run; empty means Binary, the sidecar built
	// once per test binary (with -race under -race).
	Binary string
	// StartTimeout bounds the wait for ServingMessage; zero means 30 s.
	StartTimeout time.Duration
}

// Sidecar is a running sidecar process.
type Sidecar struct {
	t testing.TB

	mu       sync.Mutex
	cmd      *exec.Cmd
	logs     bytes.Buffer
	addr     string
	exited   chan struct{}
	exitCode int
	exitedAt time.Time
}

// Start starts a sidecar and waits until it listens. The process is killed
// when the test ends if it still runs.
func Start(t testing.TB, opts Options) *Sidecar {
	t.Helper()
	s, err := start(t, opts)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func start(t testing.TB, opts Options) (*Sidecar, error) {
	if opts.Binary == "" {
		opts.Binary = Binary(t)
	}
	if opts.StartTimeout == 0 {
		opts.StartTimeout = 30 * time.Second
	}
	env := []string{"PMPH_LISTEN_ADDRESS=127.0.0.1:0"}
	gorace := "atexit_sleep_ms=0"
	for _, e := range os.Environ() {
		switch {
		case strings.HasPrefix(e, "PMPH_"):
		case strings.HasPrefix(e, "GORACE="):
			gorace = strings.TrimPrefix(e, "GORACE=") + " " + gorace
		default:
			env = append(env, e)
		}
	}
	// A binary built with -race sleeps a second before it exits unless
	// told not to; exit times are what the tests measure.
	env = append(env, "GORACE="+gorace)
	cmd := exec.Command(opts.Binary, opts.Args...)
	cmd.Env = append(env, opts.Env...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	stderr, err := cmd.StderrPipe()
	if err != nil {
		return nil, err
	}
	cmd.Stdout = cmd.Stderr
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("starting the sidecar: %w", err)
	}
	s := &Sidecar{t: t, cmd: cmd, exited: make(chan struct{})}
	serving := make(chan struct{})
	logDone := make(chan struct{})
	go s.readLog(stderr, serving, logDone)
	go func() {
		<-logDone // Wait must not run before the pipe is drained.
		err := cmd.Wait()
		code := 0
		var ee *exec.ExitError
		switch {
		case errors.As(err, &ee):
			code = ee.ExitCode()
		case err != nil:
			code = -1
		}
		s.mu.Lock()
		s.exitCode, s.exitedAt = code, time.Now()
		s.mu.Unlock()
		close(s.exited)
	}()
	t.Cleanup(func() {
		if s.Running() {
			s.Kill()
		}
		if t.Failed() {
			t.Logf("sidecar log:\n%s", s.Logs())
		}
	})

	timer := time.NewTimer(opts.StartTimeout)
	defer timer.Stop()
	select {
	case <-serving:
		return s, nil
	case <-s.exited:
		return nil, fmt.Errorf("the sidecar exited with code %d before serving; log:\n%s", s.ExitCode(), s.Logs())
	case <-timer.C:
		s.Kill()
		return nil, fmt.Errorf("the sidecar did not serve within %s; log:\n%s", opts.StartTimeout, s.Logs())
	}
}

func (s *Sidecar) readLog(r io.Reader, serving, done chan struct{}) {
	defer close(done)
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 4<<20)
	announced := false
	for sc.Scan() {
		line := sc.Bytes()
		s.mu.Lock()
		s.logs.Write(line)
		s.logs.WriteByte('\n')
		s.mu.Unlock()
		if announced {
			continue
		}
		var ev struct {
			Message       string `json:"message"`
			ListenAddress string `json:"listen_address"`
		}
		if json.Unmarshal(line, &ev) == nil && ev.Message == ServingMessage {
			s.mu.Lock()
			s.addr = ev.ListenAddress
			s.mu.Unlock()
			announced = true
			close(serving)
		}
	}
	_, _ = io.Copy(io.Discard, r)
}

// Addr is the host:port the sidecar listens on.
func (s *Sidecar) Addr() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.addr
}

// URL is http://Addr.
func (s *Sidecar) URL() string { return "http://" + s.Addr() }

// Pid is the process id (also after the exit).
func (s *Sidecar) Pid() int { return s.cmd.Process.Pid }

// Running reports whether the process is up.
func (s *Sidecar) Running() bool {
	select {
	case <-s.exited:
		return false
	default:
		return true
	}
}

// Signal sends sig to the process.
func (s *Sidecar) Signal(sig syscall.Signal) error {
	if !s.Running() {
		return errors.New("the sidecar is not running")
	}
	return syscall.Kill(s.Pid(), sig)
}

// Kill stops the process with SIGKILL, like the kubelet at the end of the
// grace period, and waits for it.
func (s *Sidecar) Kill() {
	_ = syscall.Kill(-s.Pid(), syscall.SIGKILL)
	<-s.exited
}

// Wait waits for the process to exit, up to timeout, and returns its exit
// code (-1 when a signal killed it).
func (s *Sidecar) Wait(timeout time.Duration) (int, error) {
	timer := time.NewTimer(timeout)
	defer timer.Stop()
	select {
	case <-s.exited:
		return s.ExitCode(), nil
	case <-timer.C:
		return -1, fmt.Errorf("the sidecar did not exit within %s", timeout)
	}
}

// Exited is closed when the process has exited.
func (s *Sidecar) Exited() <-chan struct{} { return s.exited }

// ExitCode is the exit code once exited.
func (s *Sidecar) ExitCode() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.exitCode
}

// ExitedAt is when the exit was seen; zero while running.
func (s *Sidecar) ExitedAt() time.Time {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.exitedAt
}

// Logs is everything the process wrote so far (JSON lines).
func (s *Sidecar) Logs() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.logs.String()
}

// Event is one JSON log line, decoded.
type Event map[string]any

// Message is the event's message.
func (e Event) Message() string { m, _ := e["message"].(string); return m }

// Level is the event's level.
func (e Event) Level() string { l, _ := e["level"].(string); return l }

// Events decodes the log lines so far; lines that are not JSON are left
// out.
func (s *Sidecar) Events() []Event {
	var out []Event
	for line := range strings.SplitSeq(s.Logs(), "\n") {
		var ev Event
		if json.Unmarshal([]byte(line), &ev) == nil {
			out = append(out, ev)
		}
	}
	return out
}

// Find returns the events at level (any level when empty) whose message
// contains substr.
func (s *Sidecar) Find(level, substr string) []Event {
	var out []Event
	for _, ev := range s.Events() {
		if (level == "" || ev.Level() == level) && strings.Contains(ev.Message(), substr) {
			out = append(out, ev)
		}
	}
	return out
}

// WaitLog waits until an event at level (any when empty) whose message
// contains substr was logged, up to timeout, and reports whether it was.
func (s *Sidecar) WaitLog(level, substr string, timeout time.Duration) bool {
	deadline := time.Now().Add(timeout)
	for {
		if len(s.Find(level, substr)) > 0 {
			return true
		}
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// Memory is the process' memory as /proc/<pid>/status reports it, in KiB.
type Memory struct {
	VmRSS, VmHWM, RssAnon, RssFile, RssShmem int64
}

// Memory reads /proc/<pid>/status.
func (s *Sidecar) Memory() (Memory, error) { return ReadMemory(s.Pid()) }

// ReadMemory reads /proc/<pid>/status of any process.
func ReadMemory(pid int) (Memory, error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/status")
	if err != nil {
		return Memory{}, err
	}
	var m Memory
	fields := map[string]*int64{"VmRSS:": &m.VmRSS, "VmHWM:": &m.VmHWM, "RssAnon:": &m.RssAnon, "RssFile:": &m.RssFile, "RssShmem:": &m.RssShmem}
	for line := range strings.SplitSeq(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) >= 2 {
			if p, ok := fields[f[0]]; ok {
				*p, _ = strconv.ParseInt(f[1], 10, 64)
			}
		}
	}
	return m, nil
}

// Binary builds (once per test binary) and returns the path of the
// sidecar command, with -race under -race.
func Binary(t testing.TB) string {
	t.Helper()
	return gobuild.Test(t, gobuild.Sidecar)
}

// ReleaseBinary builds the sidecar command the way `make build` does (no
// race detector, no cgo, stripped), once per test binary, for measurements
// of what runs in a pod.
func ReleaseBinary(t testing.TB) string {
	t.Helper()
	return gobuild.Release(t, gobuild.Sidecar)
}
