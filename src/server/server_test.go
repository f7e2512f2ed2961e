package server

import (
	"context"
	"crypto/tls"
	"io"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/rs/zerolog"
)

func TestProbes(t *testing.T) {
	ready := false
	p := NewProbes(func() bool { return ready })
	get := func(path string) int {
		rec := httptest.NewRecorder()
		p.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, path, nil))
		return rec.Code
	}
	if get("/healthz") != 200 || get("/readyz") != 503 || get("/other") != 404 {
		t.Fatal("before ready")
	}
	ready = true
	if get("/readyz") != 200 {
		t.Fatal("ready")
	}
	p.Stopping()
	if get("/readyz") != 503 || get("/healthz") != 200 {
		t.Fatal("stopping")
	}
}

func TestTLSConfig(t *testing.T) {
	if c := TLSConfig(nil, false); c.MinVersion != tls.VersionTLS12 || len(c.NextProtos) != 1 || c.NextProtos[0] != "http/1.1" {
		t.Fatalf("%+v", c)
	}
	if c := TLSConfig(nil, true); !offersHTTP2(c) {
		t.Fatalf("%+v", c)
	}
}

func TestRunShutsDownOnContext(t *testing.T) {
	s, err := Listen("plain", "127.0.0.1:0", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.WriteString(w, "hi")
	}), nil, DefaultTimeouts(), zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	stopped := make(chan struct{})
	go func() {
		done <- Run(ctx, zerolog.Nop(), Shutdown{Timeout: time.Second, Before: func() { close(stopped) }}, s)
	}()
	resp, err := http.Get("http://" + s.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	<-stopped
	if _, err := http.Get("http://" + s.Addr().String()); err == nil {
		t.Fatal("still serving")
	}
	if _, err := Listen("taken", s.Addr().String(), nil, nil, DefaultTimeouts(), zerolog.Nop()); err != nil {
		t.Fatalf("the port was not released: %v", err)
	}
}
