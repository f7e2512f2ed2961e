// Package sidecar is the process injected into every opted-in pod: it
// proxies the app's metrics, keeps the pod's semaphore lease, and on the
// termination signal makes sure one more scrape gets the app's final
// metrics before it gives the slot back and exits.
package sidecar

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/rs/zerolog"

	"github.com/kaidotio/prometheus-metrics-proxy-hook/src/logging"
	"github.com/kaidotio/prometheus-metrics-proxy-hook/src/sidecar/leasekeeper"
	"github.com/kaidotio/prometheus-metrics-proxy-hook/src/sidecar/metricsproxy"
)

// MetricsPath serves the sidecar's own metrics; it is never proxied.
const MetricsPath = "/-/metrics"

// Sidecar is one configured sidecar; Run it once.
type Sidecar struct {
	cfg     Config
	log     zerolog.Logger
	proxy   *metricsproxy.Proxy
	keeper  *leasekeeper.Keeper // nil without a lease
	handler http.Handler
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
	s := &Sidecar{cfg: cfg, log: logger, proxy: proxy}
	if cfg.Lease != nil {
		if api == nil {
			return nil, errors.New("sidecar: a lease is configured but no lease API client was given")
		}
		keeperMetrics := leasekeeper.NewMetrics()
		reg.MustRegister(keeperMetrics)
		s.keeper, err = leasekeeper.New(leasekeeper.Config{
			API: api, Lease: cfg.Lease.Lease, Size: cfg.Lease.Size, WithoutSlot: cfg.Lease.WithoutSlot,
			Interval: cfg.Lease.RenewInterval, Logger: logger, Metrics: keeperMetrics,
		})
		if err != nil {
			return nil, err
		}
	}
	own := promhttp.HandlerFor(reg, promhttp.HandlerOpts{})
	// No ServeMux: it would clean and redirect paths the app may want as
	// they are.
	s.handler = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == MetricsPath {
			own.ServeHTTP(w, r)
			return
		}
		proxy.ServeHTTP(w, r)
	})
	return s, nil
}

// Handler serves MetricsPath itself and proxies everything else to the app.
func (s *Sidecar) Handler() http.Handler { return s.handler }

// Timing of the termination sequence, from the signal on. The pod is killed
// at the grace period, so the sidecar plans to be done a margin before it;
// the last part of what is left is kept for giving the slot back.
const (
	maxExitMargin   = 2 * time.Second
	maxReleaseShare = 3 * time.Second
	maxShutdown     = time.Second
)

// Plan is the termination sequence's budget, as durations from the signal.
type Plan struct {
	// WaitFor bounds the wait for a scrape: the final-scrape wait, cut so
	// that stopping and releasing still fit before ExitWithin.
	WaitFor time.Duration
	// ExitWithin is when the sidecar is done at the latest: the grace
	// period minus a margin (2 s, or a fifth of a short grace period).
	ExitWithin time.Duration
}

// PlanTermination computes the budget for a grace period and a final-scrape
// wait.
func PlanTermination(grace, finalScrapeWait time.Duration) Plan {
	margin := min(maxExitMargin, grace/5)
	exitWithin := grace - margin
	reserve := min(maxReleaseShare, exitWithin/3)
	return Plan{WaitFor: max(0, min(finalScrapeWait, exitWithin-reserve)), ExitWithin: exitWithin}
}

// Run serves on ln until ctx is done (the termination signal; its cause is
// logged), then runs the termination sequence: fetch the app's metrics once
// more, wait for one scrape that arrives from then on (unless the pod was
// never scraped), stop serving, give the slot back, return. It returns nil
// after a termination, also when giving the slot back failed (the slot then
// frees itself by TTL and the error is logged): a sidecar that exits with an
// error would fail Jobs for no fault of theirs.
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
		Dur("grace_period", s.cfg.GracePeriod).Dur("final_scrape_wait", s.cfg.FinalScrapeWait)
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
		s.release(time.Now().Add(PlanTermination(s.cfg.GracePeriod, 0).ExitWithin))
		return fmt.Errorf("serving on %s: %w", ln.Addr(), err)
	}
	return s.terminate(context.Cause(ctx), srv, serveErr, stopKeeper, keeperDone)
}

func (s *Sidecar) terminate(cause error, srv *http.Server, serveErr <-chan error, stopKeeper func(), keeperDone <-chan struct{}) error {
	began := time.Now()
	plan := PlanTermination(s.cfg.GracePeriod, s.cfg.FinalScrapeWait)
	exitBy := began.Add(plan.ExitWithin)
	s.proxy.StartFinal()
	scrapedBefore := s.proxy.ScrapesArrived()
	s.log.Info().Str("cause", causeText(cause)).Uint64("scrapes_before", scrapedBefore).
		Dur("wait_bound", plan.WaitFor).Dur("exit_within", plan.ExitWithin).
		Msg("Termination signal received: fetching the app's metrics once more and serving the last good body once the app stops answering.")

	// The fetch runs alongside the wait: a scrape arriving meanwhile is
	// answered live while the app still answers.
	refreshCtx, cancelRefresh := context.WithDeadline(context.Background(), began.Add(plan.WaitFor))
	refreshDone := make(chan struct{})
	go func() {
		defer close(refreshDone)
		n, err := s.proxy.Refresh(refreshCtx)
		switch {
		case err != nil:
			s.log.Warn().Err(err).Int("refreshed", n).
				Msg("Fetching the app's metrics at termination failed; the final scrape gets the last good body from before the signal.")
		case n > 0:
			s.log.Info().Int("refreshed", n).Dur("duration", time.Since(began)).
				Msg("Fetched the app's metrics at termination; they are kept as the last good body.")
		}
	}()

	if scrapedBefore == 0 {
		s.log.Info().Msg("No scrape arrived before the termination signal, so the sidecar does not wait for a final one.")
	} else {
		timer := time.NewTimer(time.Until(began.Add(plan.WaitFor)))
		select {
		case <-s.proxy.FinalScrape():
			s.log.Info().Dur("waited", time.Since(began)).Msg("The final scrape was answered.")
		case <-timer.C:
			s.log.Warn().Dur("waited", time.Since(began)).
				Msg("No scrape arrived within the wait bound after the termination signal; the samples since the last scrape are not stored. Check that Prometheus keeps terminating pods as targets and that the scrape interval is below the final-scrape wait.")
		case err := <-serveErr:
			s.log.Error().Err(err).Msg("The sidecar stopped serving while waiting for the final scrape.")
		}
		timer.Stop()
	}
	cancelRefresh()
	<-refreshDone

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
