// Package server is the HTTP plumbing of the webhook process: listeners with
// hardened timeouts and TLS settings, liveness and readiness probes, and a
// graceful shutdown that lets in-flight requests finish.
package server

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/rs/zerolog"

	"github.com/kaidotio/prometheus-metrics-proxy-hook/src/logging"
)

// Timeouts bound how long one client may hold a connection.
type Timeouts struct {
	// ReadHeader bounds reading the request line and headers (slowloris).
	ReadHeader time.Duration
	// Read bounds reading a whole request, body included.
	Read time.Duration
	// Write bounds handling a request and writing its answer.
	Write time.Duration
	// Idle bounds a kept-alive connection between requests.
	Idle time.Duration
}

// DefaultTimeouts suit an admission webhook: the API server sends a review
// at once and waits at most 30 s for the answer.
func DefaultTimeouts() Timeouts {
	return Timeouts{ReadHeader: 5 * time.Second, Read: 15 * time.Second, Write: 40 * time.Second, Idle: 120 * time.Second}
}

// maxHeaderBytes is far above what the API server or a sidecar sends.
const maxHeaderBytes = 64 << 10

// TLSConfig is the serving configuration: TLS 1.2 or later, the certificate
// from getCertificate on every handshake (so a reloaded one is used at
// once), and ALPN offering HTTP/2 only when enabled.
func TLSConfig(getCertificate func(*tls.ClientHelloInfo) (*tls.Certificate, error), enableHTTP2 bool) *tls.Config {
	protos := []string{"http/1.1"}
	if enableHTTP2 {
		protos = []string{"h2", "http/1.1"}
	}
	return &tls.Config{
		MinVersion:     tls.VersionTLS12,
		GetCertificate: getCertificate,
		NextProtos:     protos,
	}
}

// Server is one listener and the HTTP server on it.
type Server struct {
	name string
	ln   net.Listener
	srv  *http.Server
	tls  bool
}

// Listen binds addr now, so that a taken port fails start-up, and prepares
// a server for h. With tlsConfig set the server speaks HTTPS; HTTP/2 is on
// only if tlsConfig offers "h2".
func Listen(name, addr string, h http.Handler, tlsConfig *tls.Config, t Timeouts, logger zerolog.Logger) (*Server, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("listening on %s for the %s server: %w", addr, name, err)
	}
	srv := &http.Server{
		Handler:           h,
		ReadHeaderTimeout: t.ReadHeader,
		ReadTimeout:       t.Read,
		WriteTimeout:      t.Write,
		IdleTimeout:       t.Idle,
		MaxHeaderBytes:    maxHeaderBytes,
		// Handshake failures and the like are the clients' problems;
		// they are logged at debug level so that a scanner cannot flood
		// the log.
		ErrorLog: logging.StdLogger(logger.With().Str("server", name).Logger(), zerolog.DebugLevel),
	}
	if tlsConfig != nil {
		srv.TLSConfig = tlsConfig
		if !offersHTTP2(tlsConfig) {
			// A non-nil empty map keeps net/http from enabling HTTP/2
			// on its own (CVE-2023-44487, rapid reset).
			srv.TLSNextProto = map[string]func(*http.Server, *tls.Conn, http.Handler){}
		}
	}
	return &Server{name: name, ln: ln, srv: srv, tls: tlsConfig != nil}, nil
}

func offersHTTP2(c *tls.Config) bool {
	for _, p := range c.NextProtos {
		if p == "h2" {
			return true
		}
	}
	return false
}

// Addr is the bound address (useful with port 0).
func (s *Server) Addr() net.Addr { return s.ln.Addr() }

// Name is the server's name in logs.
func (s *Server) Name() string { return s.name }

func (s *Server) serve() error {
	var err error
	if s.tls {
		err = s.srv.ServeTLS(s.ln, "", "")
	} else {
		err = s.srv.Serve(s.ln)
	}
	if errors.Is(err, http.ErrServerClosed) {
		return nil
	}
	return fmt.Errorf("the %s server on %s stopped: %w", s.name, s.ln.Addr(), err)
}

// Shutdown says how the servers stop once Run's context ends.
type Shutdown struct {
	// Delay keeps serving after the context ended, with readiness failing
	// and keep-alive off, so that endpoints drop the replica and clients
	// (the API server) stop reusing its connections before the listeners
	// close; otherwise reviews sent in that window fail.
	Delay time.Duration
	// Timeout bounds finishing in-flight requests once the listeners are
	// closed; connections still busy after it are closed.
	Timeout time.Duration
	// Before runs first (e.g. to fail readiness).
	Before func()
}

// ListeningMessage is the event Run writes for each server once it listens;
// its server and address fields name the server and the bound address.
const ListeningMessage = "Listening for connections."

// Run serves on every server until ctx ends or one of them fails, then
// shuts all of them down as sd says.
func Run(ctx context.Context, logger zerolog.Logger, sd Shutdown, servers ...*Server) error {
	errs := make(chan error, len(servers))
	for _, s := range servers {
		logger.Info().Str("server", s.name).Str("address", s.Addr().String()).Bool("tls", s.tls).Msg(ListeningMessage)
		go func() { errs <- s.serve() }()
	}
	var failed error
	select {
	case <-ctx.Done():
		logger.Info().Dur("delay", sd.Delay).Dur("timeout", sd.Timeout).
			Msg("Shutting down: readiness fails now, the listeners close after the delay, and in-flight requests finish.")
	case failed = <-errs:
		logger.Error().Err(failed).Msg("A server failed; shutting down the others.")
	}
	if sd.Before != nil {
		sd.Before()
	}
	if failed == nil && sd.Delay > 0 {
		for _, s := range servers {
			s.srv.SetKeepAlivesEnabled(false)
		}
		t := time.NewTimer(sd.Delay)
		select {
		case <-t.C:
		case failed = <-errs:
			t.Stop()
		}
	}
	shutdownTimeout := sd.Timeout
	sctx, cancel := context.WithTimeout(context.Background(), shutdownTimeout)
	defer cancel()
	var wg sync.WaitGroup
	for _, s := range servers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := s.srv.Shutdown(sctx); err != nil {
				logger.Warn().Str("server", s.name).Err(err).Msg("In-flight requests did not finish in time; closing their connections.")
				_ = s.srv.Close()
			}
		}()
	}
	wg.Wait()
	return failed
}

// Probes serves /healthz (the process answers) and /readyz (ready reports
// true). Readiness must not depend on Redis: an outage would take every
// replica out of the Service, and the API server would then fail the pods
// the semaphore's denials would have explained.
type Probes struct {
	ready    func() bool
	stopping atomic.Bool
}

// NewProbes builds the probe handler.
func NewProbes(ready func() bool) *Probes { return &Probes{ready: ready} }

// Stopping makes /readyz fail from now on, so that endpoints drop the
// replica while it finishes its requests.
func (p *Probes) Stopping() { p.stopping.Store(true) }

// ServeHTTP implements http.Handler.
func (p *Probes) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	switch r.URL.Path {
	case "/healthz":
		_, _ = io.WriteString(w, "ok\n")
	case "/readyz":
		switch {
		case p.stopping.Load():
			w.WriteHeader(http.StatusServiceUnavailable)
			_, _ = io.WriteString(w, "shutting down\n")
		case !p.ready():
			w.WriteHeader(http.StatusServiceUnavailable)
			_, _ = io.WriteString(w, "not ready\n")
		default:
			_, _ = io.WriteString(w, "ok\n")
		}
	default:
		http.NotFound(w, r)
	}
}
