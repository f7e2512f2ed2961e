// Command pmph-metrics-app is the app the lifecycle tests run in a pod: it
// serves a counter on /metrics that grows by one every -interval, keeps
// counting and serving for -drain after SIGTERM (a pod that finishes its work
// while terminating), and logs the counter's final value as it exits, so a
// test can compare it with the last value Prometheus scraped.
package main

import (
	"context"
	"flag"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/rs/zerolog"
)

// config is the command line.
type config struct {
	listen   string
	interval time.Duration
	drain    time.Duration
}

func main() {
	var cfg config
	flag.StringVar(&cfg.listen, "listen", ":8080", "Address to serve /metrics on.")
	flag.DurationVar(&cfg.interval, "interval", time.Second, "How often the counter grows by one.")
	flag.DurationVar(&cfg.drain, "drain", 5*time.Second, "How long the app keeps counting and serving after SIGTERM.")
	flag.Parse()
	log := zerolog.New(os.Stderr).With().Timestamp().Logger()
	if cfg.interval <= 0 || cfg.drain < 0 {
		log.Error().Dur("interval", cfg.interval).Dur("drain", cfg.drain).Msg("The interval must be positive and the drain time must not be negative.")
		os.Exit(2)
	}
	if err := run(cfg, log); err != nil {
		log.Error().Err(err).Msg("The metrics app failed.")
		os.Exit(1)
	}
}

func run(cfg config, log zerolog.Logger) error {
	ticks := prometheus.NewCounter(prometheus.CounterOpts{
		Name: "pmph_metrics_app_ticks_total",
		Help: "Ticks since the app started; grows by one every interval until the app exits.",
	})
	reg := prometheus.NewRegistry()
	reg.MustRegister(ticks)
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	ln, err := net.Listen("tcp", cfg.listen)
	if err != nil {
		return err
	}
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()
	log.Info().Str("listen", ln.Addr().String()).Dur("interval", cfg.interval).Dur("drain", cfg.drain).Msg("Serving the counter on /metrics.")

	terminated, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	c := counter{ticks: ticks, ticker: time.NewTicker(cfg.interval), served: served}
	defer c.ticker.Stop()
	if err := c.countUntil(terminated.Done()); err != nil {
		return err
	}
	log.Info().Dur("drain", cfg.drain).Float64("value", c.value).Msg("SIGTERM: still counting and serving until the drain time is over.")
	drained, cancelDrain := context.WithTimeout(context.Background(), cfg.drain)
	defer cancelDrain()
	if err := c.countUntil(drained.Done()); err != nil {
		return err
	}
	log.Info().Float64("final_value", c.value).Msg("Exiting with the counter's final value.")
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	return srv.Shutdown(ctx)
}

// counter grows the metric on every tick; value mirrors it for the logs.
type counter struct {
	ticks  prometheus.Counter
	ticker *time.Ticker
	served <-chan error
	value  float64
}

// countUntil counts until done fires, or returns the server's error if it
// stops serving first.
func (c *counter) countUntil(done <-chan struct{}) error {
	for {
		select {
		case <-c.ticker.C:
			c.ticks.Inc()
			c.value++
		case <-done:
			return nil
		case err := <-c.served:
			return fmt.Errorf("serving /metrics: %w", err)
		}
	}
}
