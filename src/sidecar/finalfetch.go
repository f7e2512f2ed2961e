package sidecar

import (
	"context"
	"errors"
	"sync"
	"syscall"
	"time"

	"github.com/rs/zerolog"

	"github.com/kaidotio/prometheus-metrics-proxy-hook/src/sidecar/metricsproxy"
)

// stopAfterFailures is how many fetches in a row must fail, when the app
// does not refuse the connection outright, before it counts as stopped:
// one 503 or one slow answer while draining is not an exit.
const stopAfterFailures = 3

// finalFetcher fetches the app's metrics at a short interval from the start
// of the termination until the app stops answering, so that the last good
// body is the app's state at most one interval before it stopped.
type finalFetcher struct {
	proxy    *metricsproxy.Proxy
	interval time.Duration
	log      zerolog.Logger

	startOnce sync.Once
	cancel    context.CancelFunc
	done      chan struct{}
	gone      chan struct{} // closed when the app stopped answering

	mu     sync.Mutex
	at     time.Time // when the app was seen stopped
	lastOK time.Time // the last successful fetch
}

func newFinalFetcher(p *metricsproxy.Proxy, interval time.Duration, logger zerolog.Logger) *finalFetcher {
	return &finalFetcher{proxy: p, interval: interval, log: logger, done: make(chan struct{}), gone: make(chan struct{})}
}

// start begins fetching; it is safe to call more than once.
func (f *finalFetcher) start() {
	f.startOnce.Do(func() {
		ctx, cancel := context.WithCancel(context.Background())
		f.cancel = cancel
		go func() {
			defer close(f.done)
			f.run(ctx)
		}()
	})
}

// stop ends the fetches and waits for the one under way.
func (f *finalFetcher) stop() {
	f.start()
	f.cancel()
	<-f.done
}

// stopped is closed once the app stopped answering.
func (f *finalFetcher) stopped() <-chan struct{} { return f.gone }

// stoppedAt is when the app was seen stopped and when it last answered.
func (f *finalFetcher) stoppedAt() (at, lastOK time.Time) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.at, f.lastOK
}

func (f *finalFetcher) run(ctx context.Context) {
	ticker := time.NewTicker(f.interval)
	defer ticker.Stop()
	failures := 0
	for {
		began := time.Now()
		n, err := f.proxy.Refresh(ctx)
		if ctx.Err() != nil {
			return
		}
		switch {
		case n > 0, errors.Is(err, metricsproxy.ErrNotKept):
			f.mu.Lock()
			f.lastOK = began
			f.mu.Unlock()
			failures = 0
		case err != nil:
			failures++
			if errors.Is(err, syscall.ECONNREFUSED) || failures >= stopAfterFailures {
				f.mu.Lock()
				f.at = time.Now()
				f.mu.Unlock()
				f.log.Debug().Err(err).Int("failures", failures).Msg("The app no longer answers the fetches of its metrics.")
				close(f.gone)
				return
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-ticker.C:
		}
	}
}
