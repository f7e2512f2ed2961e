// Package countingapp is the app of the final-scrape tests: an HTTP server
// exposing a counter (client_golang's handler: text, OpenMetrics, protobuf,
// gzip) that moves every tick, and that on SIGTERM keeps counting and
// answering for a drain period before it exits, like a real app draining.
// It prints JSON lines on stdout: its address when it listens, and at exit
// its final counter value and the largest value it exposed. The final value
// is the reference the last sample Prometheus stores is compared with.
//
// Process tests re-execute their own test binary as the app (MaybeRun in
// TestMain, Start in the test); node tests run the command in
// src/testenv/cmd/countingapp in a container and read the same lines from
// the container's log (ParseLine).
package countingapp

import (
	"bufio"
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
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Environment variables of the app.
const (
	EnvRun    = "COUNTINGAPP_RUN"    // set: the test binary runs as the app
	EnvListen = "COUNTINGAPP_LISTEN" // listen address; default 127.0.0.1:0
	EnvTick   = "COUNTINGAPP_TICK"   // counter increment period; 0: never moves
	EnvDrain  = "COUNTINGAPP_DRAIN"  // how long it keeps counting and serving after SIGTERM
	EnvBytes  = "COUNTINGAPP_BYTES"  // pad the exposition to about this size
)

// CounterName is the counter's metric name.
const CounterName = "app_ticks_total"

// Line is one JSON line the app prints.
type Line struct {
	Addr string `json:"addr,omitempty"`
	// Final is the counter's value when the app stopped serving and
	// counting, just before it exits.
	Final *float64 `json:"final,omitempty"`
	// LastExposed is the largest counter value the app served.
	LastExposed *float64 `json:"lastExposed,omitempty"`
}

// ParseLine decodes one line of the app's output; ok is false for other
// lines.
func ParseLine(b []byte) (Line, bool) {
	var l Line
	if json.Unmarshal(b, &l) != nil || (l.Addr == "" && l.Final == nil) {
		return Line{}, false
	}
	return l, true
}

// MaybeRun runs the app and exits when the process was started as one
// (EnvRun set); call it first in TestMain.
func MaybeRun() {
	if os.Getenv(EnvRun) != "" {
		os.Exit(Main(os.Stdout, os.Stderr))
	}
}

// Main runs the app with the settings of its environment variables until
// it has drained after SIGTERM, and returns the exit code.
func Main(stdout, stderr io.Writer) int {
	tick, _ := time.ParseDuration(os.Getenv(EnvTick))
	drain, _ := time.ParseDuration(os.Getenv(EnvDrain))
	padBytes, _ := strconv.Atoi(os.Getenv(EnvBytes))
	listen := os.Getenv(EnvListen)
	if listen == "" {
		listen = "127.0.0.1:0"
	}

	var mu sync.Mutex // counting and exposing do not interleave
	var value, lastExposed float64
	reg := prometheus.NewRegistry()
	reg.MustRegister(prometheus.NewCounterFunc(prometheus.CounterOpts{Name: CounterName, Help: "Ticks of the test app."},
		func() float64 {
			mu.Lock()
			defer mu.Unlock()
			lastExposed = max(lastExposed, value)
			return value
		}))
	if padBytes > 0 {
		pad := prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "app_padding", Help: "Padding."}, []string{"series", "text"})
		reg.MustRegister(pad)
		filler := strings.Repeat("x", 64)
		for i := range padBytes / 100 {
			pad.WithLabelValues(strconv.Itoa(i), filler).Set(float64(i))
		}
	}
	ln, err := net.Listen("tcp", listen)
	if err != nil {
		fmt.Fprintln(stderr, err)
		return 1
	}
	srv := &http.Server{Handler: promhttp.HandlerFor(reg, promhttp.HandlerOpts{EnableOpenMetrics: true})}
	go func() { _ = srv.Serve(ln) }()
	out := json.NewEncoder(stdout)
	_ = out.Encode(Line{Addr: ln.Addr().String()})

	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGTERM)
	var ticks <-chan time.Time
	if tick > 0 {
		t := time.NewTicker(tick)
		defer t.Stop()
		ticks = t.C
	}
	count := func() { mu.Lock(); value++; mu.Unlock() }
	for signalled := false; !signalled; {
		select {
		case <-ticks:
			count()
		case <-sigs:
			signalled = true
		}
	}
	end := time.After(drain)
	for done := false; !done; {
		select {
		case <-ticks:
			count()
		case <-end:
			done = true
		}
	}
	_ = srv.Close()
	mu.Lock()
	final, exposed := value, lastExposed
	mu.Unlock()
	_ = out.Encode(Line{Final: &final, LastExposed: &exposed})
	return 0
}

// Options configures an app process.
type Options struct {
	Tick, Drain time.Duration
	PadBytes    int
}

// App is a running app process.
type App struct {
	cmd    *exec.Cmd
	addr   string
	exited chan struct{}

	mu                 sync.Mutex
	final, lastExposed float64
	reported           bool
	exitedAt           time.Time
}

// Start re-executes the test binary as the app (its TestMain must call
// MaybeRun) and waits until it listens; it is killed when the test ends.
func Start(t testing.TB, o Options) *App {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	// A test binary built with -race sleeps a second before it exits
	// unless told not to; exit times are what the tests compare.
	cmd.Env = append(os.Environ(), "GORACE=atexit_sleep_ms=0", EnvRun+"=1", EnvTick+"="+o.Tick.String(), EnvDrain+"="+o.Drain.String(),
		EnvBytes+"="+strconv.Itoa(o.PadBytes))
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	cmd.Stderr = os.Stderr
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	a := &App{cmd: cmd, exited: make(chan struct{})}
	listening := make(chan struct{})
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			l, ok := ParseLine(sc.Bytes())
			switch {
			case !ok:
			case l.Addr != "":
				a.addr = l.Addr
				close(listening)
			case l.Final != nil:
				a.mu.Lock()
				a.final, a.lastExposed, a.reported = *l.Final, *l.LastExposed, true
				a.mu.Unlock()
			}
		}
		_ = cmd.Wait()
		a.mu.Lock()
		a.exitedAt = time.Now()
		a.mu.Unlock()
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

// URL is the app's metrics URL.
func (a *App) URL() string { return "http://" + a.addr + "/metrics" }

// Pid is the app's process id.
func (a *App) Pid() int { return a.cmd.Process.Pid }

// Signal sends sig to the app.
func (a *App) Signal(sig syscall.Signal) error { return syscall.Kill(a.cmd.Process.Pid, sig) }

// Exited is closed once the app has exited.
func (a *App) Exited() <-chan struct{} { return a.exited }

// Wait waits for the app to exit and returns its final counter value and
// the largest value it exposed.
func (a *App) Wait(t testing.TB, timeout time.Duration) (final, lastExposed float64) {
	t.Helper()
	select {
	case <-a.exited:
	case <-time.After(timeout):
		t.Fatalf("the app did not exit within %s", timeout)
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if !a.reported {
		t.Fatal("the app exited without reporting its final value")
	}
	return a.final, a.lastExposed
}

// ExitedAt is when the app's exit was seen.
func (a *App) ExitedAt() time.Time {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.exitedAt
}
