package faultproxy_test

import (
	"bufio"
	"errors"
	"io"
	"net"
	"runtime"
	"testing"
	"time"

	"github.com/kaidotio/prometheus-metrics-proxy-hook/src/testenv/faultproxy"
)

// echo serves line echo on a free loopback port until the test ends.
func echo(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	t.Cleanup(func() {
		ln.Close()
		<-done
	})
	go func() {
		defer close(done)
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				_, _ = io.Copy(c, c)
			}()
		}
	}()
	return ln.Addr().String()
}

func start(t *testing.T, target string) *faultproxy.Proxy {
	t.Helper()
	p, err := faultproxy.Start(target)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = p.Close() })
	return p
}

// roundTrip sends one line and reads it back, with a deadline.
func roundTrip(c net.Conn, r *bufio.Reader, line string) (time.Duration, error) {
	began := time.Now()
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.WriteString(c, line+"\n"); err != nil {
		return 0, err
	}
	got, err := r.ReadString('\n')
	if err != nil {
		return 0, err
	}
	if got != line+"\n" {
		return 0, errors.New("echo answered " + got)
	}
	return time.Since(began), nil
}

func TestForwardsAndDelays(t *testing.T) {
	cases := []struct {
		name    string
		latency time.Duration
	}{
		{"no latency", 0},
		{"20ms each way", 20 * time.Millisecond},
		{"100ms each way", 100 * time.Millisecond},
	}
	p := start(t, echo(t))
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			p.SetLatency(tc.latency)
			c, err := net.Dial("tcp", p.Addr())
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			r := bufio.NewReader(c)
			for i := range 3 {
				rtt, err := roundTrip(c, r, "ping")
				if err != nil {
					t.Fatalf("round trip %d: %v", i, err)
				}
				// Both directions are delayed: a round trip takes at least
				// twice the latency.
				if rtt < 2*tc.latency {
					t.Fatalf("round trip %d took %s, want at least %s", i, rtt, 2*tc.latency)
				}
			}
		})
	}
}

func TestLatencyKeepsOrderAndThroughput(t *testing.T) {
	p := start(t, echo(t))
	p.SetLatency(50 * time.Millisecond)
	c, err := net.Dial("tcp", p.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	// Many writes in a row are delayed together, not one after another: the
	// link is slow, not narrow.
	const lines = 200
	began := time.Now()
	go func() {
		for i := range lines {
			_, _ = io.WriteString(c, string(rune('a'+i%26))+"\n")
		}
	}()
	r := bufio.NewReader(c)
	for i := range lines {
		got, err := r.ReadString('\n')
		if err != nil {
			t.Fatalf("line %d: %v", i, err)
		}
		if want := string(rune('a'+i%26)) + "\n"; got != want {
			t.Fatalf("line %d is %q, want %q: order lost", i, got, want)
		}
	}
	if took := time.Since(began); took > 5*time.Second {
		t.Fatalf("%d lines took %s: the latency was applied per chunk in sequence", lines, took)
	}
}

func TestCutAllResetsOpenConnections(t *testing.T) {
	p := start(t, echo(t))
	var conns []net.Conn
	for range 3 {
		c, err := net.Dial("tcp", p.Addr())
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		if _, err := roundTrip(c, bufio.NewReader(c), "up"); err != nil {
			t.Fatal(err)
		}
		conns = append(conns, c)
	}
	if n := p.CutAll(); n != 3 {
		t.Fatalf("CutAll cut %d connections, want 3", n)
	}
	for i, c := range conns {
		_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
		_, err := c.Read(make([]byte, 1))
		var ne net.Error
		if err == nil || (errors.As(err, &ne) && ne.Timeout()) {
			t.Fatalf("connection %d still open after CutAll: %v", i, err)
		}
	}
	waitFor(t, func() bool { return p.Active() == 0 }, "no active connection after CutAll")
	// New connections are forwarded again.
	c, err := net.Dial("tcp", p.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := roundTrip(c, bufio.NewReader(c), "again"); err != nil {
		t.Fatalf("after CutAll: %v", err)
	}
	if s := p.Stats(); s.Cut != 3 || s.Accepted != 4 {
		t.Fatalf("stats %+v, want 3 cut and 4 accepted", s)
	}
}

func TestRefuseAndUnreachableTarget(t *testing.T) {
	cases := []struct {
		name   string
		target func(t *testing.T) string
		refuse bool
	}{
		{"refusing", echo, true},
		// Port 1 (tcpmux) is never served on a test machine; a port freed
		// by a closed listener could be the proxy's own a moment later.
		{"target down", func(*testing.T) string { return "127.0.0.1:1" }, false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			p := start(t, tc.target(t))
			p.SetRefuse(tc.refuse)
			// On loopback the reset can come before connect returns.
			if c, err := net.Dial("tcp", p.Addr()); err == nil {
				defer c.Close()
				if _, err := roundTrip(c, bufio.NewReader(c), "x"); err == nil {
					t.Fatal("a refused connection answered")
				}
			}
			waitFor(t, func() bool { return p.Stats().Refused == 1 }, "one refused connection counted")
		})
	}
}

func TestCloseStopsEveryGoroutine(t *testing.T) {
	target := echo(t)
	before := runtime.NumGoroutine()
	p, err := faultproxy.Start(target)
	if err != nil {
		t.Fatal(err)
	}
	p.SetLatency(10 * time.Millisecond)
	for range 5 {
		c, err := net.Dial("tcp", p.Addr())
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		if _, err := roundTrip(c, bufio.NewReader(c), "busy"); err != nil {
			t.Fatal(err)
		}
	}
	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
	// The echo server's own goroutines end once the proxy's side closed.
	waitFor(t, func() bool { return runtime.NumGoroutine() <= before }, "goroutines back to the count before Start")
	if _, err := net.Dial("tcp", p.Addr()); err == nil {
		t.Fatal("the proxy still accepts after Close")
	}
}

func waitFor(t *testing.T, cond func() bool, what string) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for: %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}
