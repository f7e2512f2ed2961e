// Package sidecar is the process injected into every opted-in pod: it
// proxies the app's metrics, holds the app back until the pod holds a slot
// of its semaphore (the start gate), keeps the pod's lease, and at
// termination serves the app's state from as close to its exit as it can
// until every Prometheus server that scrapes the pod has taken it, before
// it gives the slot back and exits.
package sidecar

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/rs/zerolog"

	"github.com/kaidotio/prometheus-metrics-proxy-hook/src/logging"
	"github.com/kaidotio/prometheus-metrics-proxy-hook/src/sidecar/leasekeeper"
	"github.com/kaidotio/prometheus-metrics-proxy-hook/src/sidecar/metricsproxy"
)

// The sidecar's own paths; they are never proxied.
const (
	// MetricsPath serves the sidecar's own metrics.
	MetricsPath = "/-/metrics"
	// StartedPath is the startup probe: 200 once the pod holds a slot of
	// its semaphore (at once without one), 503 until then.
	StartedPath = "/-/started"
	// TerminatingPath is the app containers' preStop hook: the kubelet
	// calls it just before it signals the app, which starts the
	// termination sequence while the app still answers.
	TerminatingPath = "/-/terminating"
)

// Sidecar is one configured sidecar; Run it once.
type Sidecar struct {
	cfg     Config
	log     zerolog.Logger
	proxy   *metricsproxy.Proxy
	keeper  *leasekeeper.Keeper // nil without a lease
	handler http.Handler

	termOnce  sync.Once
	termBegan time.Time     // set before termStart is closed
	termCause string        // set before termStart is closed
	termStart chan struct{} // closed when the termination begins
	fetcher   *finalFetcher
}

// New builds a sidecar. api reaches the lease API; it is required when
// cfg.Lease is set and unused otherwise.
func New(cfg Config, logger zerolog.Logger, api leasekeeper.API) (*Sidecar, error) {
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	proxyMetrics := metricsproxy.NewMetrics()
	reg.MustRegister(proxyMetrics)
	proxy, err := metricsproxy.New(metricsproxy.Config{
		Upstream: cfg.Upstream, Timeout: cfg.UpstreamTimeout, CacheMaxBytes: cfg.CacheMaxBytes,
		Logger: logger, Metrics: proxyMetrics,
	})
	if err != nil {
		return nil, err
	}
	s := &Sidecar{cfg: cfg, log: logger, proxy: proxy, termStart: make(chan struct{})}
	s.fetcher = newFinalFetcher(proxy, cfg.FinalFetchInterval, logger)
	if cfg.Lease != nil {
		if api == nil {
			return nil, errors.New("sidecar: a lease is configured but no lease API client was given")
		}
		keeperMetrics := leasekeeper.NewMetrics()
		reg.MustRegister(keeperMetrics)
		s.keeper, err = leasekeeper.New(leasekeeper.Config{
			API: api, Lease: cfg.Lease.Lease, Size: cfg.Lease.Size, WithoutSlot: cfg.Lease.WithoutSlot,
			Interval: cfg.Lease.RenewInterval, Gated: cfg.Native, Logger: logger, Metrics: keeperMetrics,
		})
		if err != nil {
			return nil, err
		}
	}
	own := promhttp.HandlerFor(reg, promhttp.HandlerOpts{})
	// No ServeMux: it would clean and redirect paths the app may want as
	// they are.
	s.handler = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case MetricsPath:
			own.ServeHTTP(w, r)
		case StartedPath:
			s.serveStarted(w)
		case TerminatingPath:
			s.beginTermination("the preStop hook of an app container")
			w.WriteHeader(http.StatusOK)
			fmt.Fprintln(w, "The sidecar started its termination sequence.")
		default:
			proxy.ServeHTTP(w, r)
		}
	})
	return s, nil
}

// serveStarted answers the startup probe: a native sidecar's startup probe
// holds the app containers back until it passes.
func (s *Sidecar) serveStarted(w http.ResponseWriter) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	if s.Started() {
		fmt.Fprintln(w, "The pod holds a slot of its semaphore.")
		return
	}
	w.WriteHeader(http.StatusServiceUnavailable)
	fmt.Fprintln(w, "The pod does not hold a slot of its semaphore yet; the sidecar is taking one and waits while the semaphore is full.")
}

// Started reports whether the start gate is open: the pod holds a slot of
// its semaphore, or it has none.
func (s *Sidecar) Started() bool {
	if s.keeper == nil {
		return true
	}
	select {
	case <-s.keeper.Started():
		return true
	default:
		return false
	}
}

// beginTermination starts the termination sequence's clock and the fetches
// of the app's metrics, once, on the first of the preStop hook and the
// signal.
func (s *Sidecar) beginTermination(cause string) {
	s.termOnce.Do(func() {
		s.termBegan, s.termCause = time.Now(), cause
		s.proxy.StartFinal()
		s.fetcher.start()
		close(s.termStart)
		s.log.Info().Str("cause", cause).Dur("fetch_interval", s.cfg.FinalFetchInterval).
			Msg("The termination began: fetching the app's metrics at a short interval until it stops answering, then serving the last state fetched.")
	})
}

// Handler serves MetricsPath itself and proxies everything else to the app.
func (s *Sidecar) Handler() http.Handler { return s.handler }

// Timing of the termination sequence. The pod is killed at the grace
// period, counted from the start of the termination, so the sidecar plans to
// be done a margin before it; the last part of what is left is kept for
// giving the slot back. After the app stopped, it waits up to one scrape
// interval plus FinalScrapeMargin for the final scrapes. The webhook's grace
// period formula adds the sum of the three margins (admission.GraceMargin).
const (
	maxExitMargin     = 2 * time.Second
	maxReleaseShare   = 3 * time.Second
	maxShutdown       = time.Second
	FinalScrapeMargin = 5 * time.Second
)

// Plan is the termination sequence's budget, as durations from its start.
type Plan struct {
	// WaitUntil bounds the wait for the app to stop and for the final
	// scrapes: stopping and releasing still fit before ExitWithin.
	WaitUntil time.Duration
	// ExitWithin is when the sidecar is done at the latest: the grace
	// period minus a margin (2 s, or a fifth of a short grace period).
	ExitWithin time.Duration
}

// PlanTermination computes the budget for a grace period.
func PlanTermination(grace time.Duration) Plan {
	margin := min(maxExitMargin, grace/5)
	exitWithin := grace - margin
	reserve := min(maxReleaseShare, exitWithin/3)
	return Plan{WaitUntil: max(0, exitWithin-reserve), ExitWithin: exitWithin}
}

// Run serves on ln until ctx is done (the termination signal; its cause is
// logged), then runs the termination sequence (see terminate). It returns
// nil after a termination, also when giving the slot back failed (the slot
// then frees itself by TTL and the error is logged): a sidecar that exits
// with an error would fail Jobs for no fault of theirs.
func (s *Sidecar) Run(ctx context.Context, ln net.Listener) error {
	srv := &http.Server{
		Handler:           s.handler,
		ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout:       2 * time.Minute,
		MaxHeaderBytes:    64 << 10,
		ErrorLog:          logging.StdLogger(s.log, zerolog.WarnLevel),
	}
	serveErr := make(chan error, 1)
	go func() { serveErr <- srv.Serve(ln) }()

	keeperCtx, stopKeeper := context.WithCancel(context.Background())
	defer stopKeeper()
	keeperDone := make(chan struct{})
	ev := s.log.Info().Str("listen_address", ln.Addr().String()).Str("upstream", s.cfg.Upstream.Redacted()).
		Dur("grace_period", s.cfg.GracePeriod).Dur("scrape_interval", s.cfg.ScrapeInterval).Bool("native", s.cfg.Native)
	if s.keeper != nil {
		l, held := s.keeper.Lease()
		ev = ev.Str("namespace", l.Namespace).Str("key", l.Key).Int("size", s.cfg.Lease.Size)
		if held {
			ev = ev.Int("slot", l.Slot)
		}
		go func() {
			defer close(keeperDone)
			s.keeper.Run(keeperCtx)
		}()
	} else {
		close(keeperDone)
	}
	ev.Bool("lease", s.keeper != nil).Msg("The sidecar is serving.")

	select {
	case <-ctx.Done():
	case err := <-serveErr:
		// The listener broke: nothing can be scraped any more, so end as
		// on a signal but without waiting for a scrape.
		s.log.Error().Err(err).Msg("The sidecar stopped serving unexpectedly; giving the slot back and exiting.")
		stopKeeper()
		<-keeperDone
		s.release(time.Now().Add(PlanTermination(s.cfg.GracePeriod).ExitWithin))
		return fmt.Errorf("serving on %s: %w", ln.Addr(), err)
	}
	return s.terminate(context.Cause(ctx), srv, serveErr, stopKeeper, keeperDone)
}

// terminate runs the termination sequence after the signal. The clock runs
// from the start of the termination: the preStop hook when it came first
// (a native sidecar gets its signal only after the app exited), else the
// signal. It waits for the app to stop answering (at once in a native
// sidecar), then, unless the pod was never scraped, for every scraper seen
// within the last scrape interval to take the final state, up to one scrape
// interval plus FinalScrapeMargin; then it stops serving, gives the slot
// back and returns.
func (s *Sidecar) terminate(cause error, srv *http.Server, serveErr <-chan error, stopKeeper func(), keeperDone <-chan struct{}) error {
	s.beginTermination(causeText(cause))
	signalled := time.Now()
	began := s.termBegan
	plan := PlanTermination(s.cfg.GracePeriod)
	exitBy, waitUntil := began.Add(plan.ExitWithin), began.Add(plan.WaitUntil)
	scrapedBefore := s.proxy.ScrapesArrived()
	s.log.Info().Str("cause", causeText(cause)).Str("termination_began_with", s.termCause).
		Dur("since_termination_began", signalled.Sub(began)).Uint64("scrapes_before", scrapedBefore).
		Time("wait_until", waitUntil).Time("exit_by", exitBy).
		Msg("Termination signal received: waiting for the app to stop answering, then for the final scrapes of its last state.")

	stoppedAt, ok := s.waitAppStopped(waitUntil, serveErr)
	if ok && scrapedBefore > 0 {
		s.waitFinalScrapes(stoppedAt, waitUntil, serveErr)
	} else if ok {
		s.log.Info().Msg("No scrape arrived before the termination signal, so the sidecar does not wait for a final one.")
	}
	s.fetcher.stop()

	shutdownCtx, cancel := context.WithTimeout(context.Background(), min(maxShutdown, max(0, time.Until(exitBy))/2))
	if err := srv.Shutdown(shutdownCtx); err != nil {
		_ = srv.Close()
	}
	cancel()
	s.log.Info().Msg("Stopped serving.")

	stopKeeper()
	<-keeperDone
	s.release(exitBy)
	s.log.Info().Dur("duration", time.Since(began)).Msg("Exiting.")
	return nil
}

// waitAppStopped waits until the app stopped answering, up to until; ok is
// false when the wait ended otherwise (the app still answers at the
// deadline, or the listener broke).
func (s *Sidecar) waitAppStopped(until time.Time, serveErr <-chan error) (stoppedAt time.Time, ok bool) {
	timer := time.NewTimer(time.Until(until))
	defer timer.Stop()
	select {
	case <-s.fetcher.stopped():
		at, lastOK := s.fetcher.stoppedAt()
		ev := s.log.Info().Time("stopped_at", at)
		if !lastOK.IsZero() {
			ev = ev.Dur("last_fetch_before_stop", at.Sub(lastOK))
		}
		ev.Msg("The app stopped answering; scrapes get the last state fetched from now on.")
		return at, true
	case <-timer.C:
		s.log.Error().Msg("The app still answered at the end of the wait bound: the slot is given back while the app may still run. Raise the pod's terminationGracePeriodSeconds, or make the app exit sooner after SIGTERM.")
	case err := <-serveErr:
		s.log.Error().Err(err).Msg("The sidecar stopped serving while waiting for the app to stop.")
	}
	return time.Time{}, false
}

// waitFinalScrapes waits until every scraper seen within a scrape interval
// (plus the margin) before the app stopped has been answered with the last
// state, up to one scrape interval plus the margin after the stop, and at
// most until.
func (s *Sidecar) waitFinalScrapes(stoppedAt, until time.Time, serveErr <-chan error) {
	window := s.cfg.ScrapeInterval + FinalScrapeMargin
	since := stoppedAt.Add(-window)
	deadline := stoppedAt.Add(window)
	if until.Before(deadline) {
		deadline = until
	}
	timer := time.NewTimer(time.Until(deadline))
	defer timer.Stop()
	for {
		pending := s.proxy.Pending(since)
		if len(pending) == 0 {
			s.log.Info().Dur("waited", time.Since(stoppedAt)).Msg("The final scrape was answered: every scraper got the app's last state.")
			return
		}
		select {
		case <-s.proxy.Answered():
		case <-timer.C:
			s.log.Warn().Strs("pending", s.proxy.Pending(since)).Dur("waited", time.Since(stoppedAt)).
				Msg("Not every scraper took the app's last state within the wait bound; their samples since their last scrape are not stored. Check that Prometheus keeps terminating pods as targets and that the pod's scrape interval is declared (scrape-interval annotation).")
			return
		case err := <-serveErr:
			s.log.Error().Err(err).Msg("The sidecar stopped serving while waiting for the final scrape.")
			return
		}
	}
}

// release gives the slot back, retrying until exitBy.
func (s *Sidecar) release(exitBy time.Time) {
	if s.keeper == nil {
		return
	}
	ctx, cancel := context.WithDeadline(context.Background(), exitBy)
	defer cancel()
	if err := s.keeper.Release(ctx); err != nil {
		s.log.Error().Err(err).Msg("The semaphore slot could not be given back before the grace period ran out; it frees itself when its lease TTL runs out.")
	}
}

func causeText(err error) string {
	if err == nil {
		return "unknown"
	}
	return err.Error()
}
