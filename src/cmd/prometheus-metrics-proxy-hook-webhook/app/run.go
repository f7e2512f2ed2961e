// Package app is the webhook process: its flags (Config) and the wiring
// that Run serves from them: the admission handler and the lease API on the
// TLS listener, metrics and probes on their own listeners, the certificate
// watcher and the Redis semaphore.
package app

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/rs/zerolog"

	"github.com/kaidotio/prometheus-metrics-proxy-hook/src/admission"
	"github.com/kaidotio/prometheus-metrics-proxy-hook/src/buildinfo"
	"github.com/kaidotio/prometheus-metrics-proxy-hook/src/certwatch"
	"github.com/kaidotio/prometheus-metrics-proxy-hook/src/leaseserver"
	"github.com/kaidotio/prometheus-metrics-proxy-hook/src/logging"
	"github.com/kaidotio/prometheus-metrics-proxy-hook/src/semaphore"
	"github.com/kaidotio/prometheus-metrics-proxy-hook/src/server"
)

// Paths on the TLS listener.
const (
	MutatePath    = "/mutate"
	leaseAPIPaths = "/v1/leases/"
)

// pingTimeout bounds the start-up check of the Redis nodes.
const pingTimeout = 3 * time.Second

// StartupError is a failure before serving: a wrong Redis password, a port
// in use. Run has logged it.
type StartupError struct{ Err error }

func (e *StartupError) Error() string { return e.Err.Error() }
func (e *StartupError) Unwrap() error { return e.Err }

// Run serves until ctx ends, then shuts down gracefully. It logs what goes
// wrong; a nil error means a clean shutdown.
func Run(ctx context.Context, c *Config, logger zerolog.Logger) error {
	logger.Info().Str("version", buildinfo.Version).Str("revision", buildinfo.Revision).
		Strs("redis", c.RedisAddresses).Str("cert_dir", c.CertDir).Bool("http2", c.EnableHTTP2).
		Bool("native_sidecar", c.Sidecar.Native).Str("no_quorum_policy", string(c.NoQuorumPolicy)).
		Msg("Starting the webhook.")
	fail := func(err error) error {
		logger.Error().Err(err).Msg("The webhook cannot start.")
		return &StartupError{Err: err}
	}

	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Namespace: "prometheus_metrics_proxy_hook", Name: "build_info",
		Help:        "Always 1; the labels say which build runs.",
		ConstLabels: prometheus.Labels{"version": buildinfo.Version, "revision": buildinfo.Revision, "goversion": buildinfo.GoVersion()},
	}, func() float64 { return 1 }))

	semMetrics := semaphore.NewMetrics()
	reg.MustRegister(semMetrics)
	sem, err := semaphore.New(semaphore.Config{
		Addrs: c.RedisAddresses, Password: c.RedisPassword, NodeTimeout: c.RedisTimeout, Metrics: semMetrics,
	})
	if err != nil {
		return fail(err)
	}
	defer sem.Close()
	if err := checkRedis(ctx, sem, c, logger); err != nil {
		return fail(err)
	}

	kube, err := NewKube(c, sem, reg, logger)
	if err != nil {
		return fail(err)
	}
	kubeCtx, stopKube := context.WithCancel(context.Background())
	kubeDone := make(chan struct{})
	go func() {
		defer close(kubeDone)
		kube.Run(kubeCtx, logger)
	}()
	defer func() {
		stopKube()
		<-kubeDone
	}()

	certs := certwatch.New(certwatch.Options{Dir: c.CertDir, Logger: logger.With().Str("component", "certwatch").Logger()})
	reg.MustRegister(certs)
	watchCtx, stopWatch := context.WithCancel(context.Background())
	defer stopWatch()
	go certs.Run(watchCtx)

	admMetrics := admission.NewMetrics()
	reg.MustRegister(admMetrics)
	mutate, err := admission.NewHandler(admission.Config{
		Sidecar: c.Sidecar, Semaphore: sem, NoQuorumPolicy: c.NoQuorumPolicy, CA: certs.CA,
		Logger: logger.With().Str("component", "admission").Logger(), Metrics: admMetrics,
	})
	if err != nil {
		return fail(err)
	}
	leaseMetrics := leaseserver.NewMetrics()
	reg.MustRegister(leaseMetrics)
	leaseCfg := leaseserver.Config{
		Semaphore: sem, TTL: c.LeaseTTL, Logger: logger.With().Str("component", "leaseapi").Logger(), Metrics: leaseMetrics,
	}
	if err := leaseAuth(c, &leaseCfg, kube, sem, reg, logger); err != nil {
		return fail(err)
	}
	leases := leaseserver.NewHandler(leaseCfg)

	probes := server.NewProbes(certs.Ready)
	timeouts := server.DefaultTimeouts()
	tlsSrv, err := server.Listen("webhook", c.ListenAddress, tlsMux(mutate, leases),
		server.TLSConfig(certs.GetCertificate, c.EnableHTTP2), timeouts, logger)
	if err != nil {
		return fail(err)
	}
	metricsSrv, err := server.Listen("metrics", c.MetricsAddress,
		metricsMux(promhttp.HandlerFor(reg, promhttp.HandlerOpts{ErrorLog: logging.StdLogger(logger, zerolog.ErrorLevel)})), nil, timeouts, logger)
	if err != nil {
		return fail(err)
	}
	probeSrv, err := server.Listen("probes", c.ProbeAddress, probes, nil, timeouts, logger)
	if err != nil {
		return fail(err)
	}
	err = server.Run(ctx, logger, server.Shutdown{Delay: c.ShutdownDelay, Timeout: c.ShutdownTimeout, Before: probes.Stopping},
		tlsSrv, metricsSrv, probeSrv)
	if err != nil {
		logger.Error().Err(err).Msg("The webhook stopped after a failure.")
		return err
	}
	logger.Info().Msg("The webhook stopped.")
	return nil
}

// tlsMux routes the TLS listener by hand: two prefixes do not need a
// ServeMux, and the admission path stays a string comparison.
func tlsMux(mutate, leases http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch {
		case r.URL.Path == MutatePath:
			mutate.ServeHTTP(w, r)
		case strings.HasPrefix(r.URL.Path, leaseAPIPaths):
			leases.ServeHTTP(w, r)
		default:
			http.Error(w, fmt.Sprintf("Nothing is served at %s; the webhook serves %s and %s*.", r.URL.Path, MutatePath, leaseAPIPaths), http.StatusNotFound)
		}
	})
}

func metricsMux(metrics http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/metrics" {
			http.NotFound(w, r)
			return
		}
		metrics.ServeHTTP(w, r)
	})
}

// checkRedis pings the nodes. A rejected password is a configuration error
// that stops start-up; unreachable nodes are only logged, because a Redis
// outage must not keep the webhook from serving (denials explain it, and
// pods that name no semaphore do not need Redis at all).
func checkRedis(ctx context.Context, sem *semaphore.Client, c *Config, logger zerolog.Logger) error {
	pctx, cancel := context.WithTimeout(ctx, pingTimeout)
	defer cancel()
	failures := sem.Ping(pctx)
	var auth []string
	for _, f := range failures {
		if errors.Is(f.Err, semaphore.ErrAuth) || f.Reason() == "auth" {
			auth = append(auth, f.Node)
			continue
		}
		logger.Warn().Str("node", f.Node).Str("reason", f.Reason()).Err(f.Err).
			Msg("A Redis node is unreachable at start-up; serving anyway, since semaphores work while a quorum answers.")
	}
	if len(auth) > 0 {
		src := "no password (--redis-password-file is not set)"
		if c.RedisPasswordFile != "" {
			src = "the password in " + c.RedisPasswordFile
		}
		return fmt.Errorf("Redis node(s) %s rejected %s; fix the password file or the Redis auth secret", strings.Join(auth, ", "), src)
	}
	if len(failures) == 0 {
		logger.Info().Int("nodes", len(c.RedisAddresses)).Int("quorum", sem.Quorum()).Msg("Every Redis node answered.")
	}
	return nil
}
