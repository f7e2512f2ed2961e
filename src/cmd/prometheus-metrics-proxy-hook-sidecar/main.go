// Command prometheus-metrics-proxy-hook-sidecar is the process the webhook
// injects into every opted-in pod: it proxies the pod's metrics, keeps its
// final scrape and its semaphore lease. It links only what the sidecar
// needs (TestSidecarDependencies pins the list).
// `prometheus-metrics-proxy-hook-sidecar version` prints the version.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/rs/zerolog"

	"github.com/kaidotio/prometheus-metrics-proxy-hook/src/buildinfo"
	"github.com/kaidotio/prometheus-metrics-proxy-hook/src/leaseapi"
	"github.com/kaidotio/prometheus-metrics-proxy-hook/src/logging"
	"github.com/kaidotio/prometheus-metrics-proxy-hook/src/sidecar"
	"github.com/kaidotio/prometheus-metrics-proxy-hook/src/sidecar/leasekeeper"
	"github.com/kaidotio/prometheus-metrics-proxy-hook/src/startuppages"
)

// leaseRequestTimeout bounds one call to the lease API; a renewal every
// TTL/3 (10 s by default) leaves room for a retry within the TTL.
const leaseRequestTimeout = 5 * time.Second

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

// run serves until SIGTERM or SIGINT. Exit codes: 0 after a clean shutdown,
// --help or version, 2 for an invalid flag or environment variable, 1 for
// any other failure.
func run(args []string, stdout, stderr io.Writer) int {
	if buildinfo.VersionRequested(args) {
		fmt.Fprintln(stdout, buildinfo.String())
		return 0
	}
	// The Go runtime and every linked package's init have run; the pages
	// they touched are not the sidecar's to keep.
	initPages, initErr := startuppages.Drop()
	cfg, err := sidecar.ParseConfig(args, os.LookupEnv, os.ReadFile, stderr)
	if errors.Is(err, sidecar.ErrHelp) {
		return 0
	}
	if err != nil {
		fmt.Fprintf(stderr, "The sidecar cannot start: %s.\n", err)
		return 2
	}
	logger := logging.New(stderr, cfg.LogFormat, cfg.LogLevel).With().
		Str("component", "sidecar").Str("version", buildinfo.Version).Logger()
	startuppages.Log(logger, "initialisation", initPages, initErr)
	s, err := newSidecar(cfg, logger)
	if err != nil {
		fmt.Fprintf(stderr, "The sidecar cannot start: %s.\n", err)
		return 2
	}
	ln, err := net.Listen("tcp", cfg.ListenAddress)
	if err != nil {
		logger.Error().Err(err).Str("listen_address", cfg.ListenAddress).Msg("The sidecar cannot listen.")
		return 1
	}
	// What the sidecar needs after start-up is mapped back as it runs.
	defer startuppages.DropAfterStartUp(logger)()
	ctx, stop := terminationContext()
	defer stop()
	if err := s.Run(ctx, ln); err != nil {
		logger.Error().Err(err).Msg("The sidecar failed.")
		return 1
	}
	return 0
}

// newSidecar builds the sidecar with its lease API client when the pod has
// a lease.
func newSidecar(cfg sidecar.Config, logger zerolog.Logger) (*sidecar.Sidecar, error) {
	var api leasekeeper.API
	if cfg.Lease != nil {
		client, err := leaseapi.NewClient(cfg.Lease.URL, cfg.Lease.CAPEM, leaseRequestTimeout)
		if err != nil {
			return nil, err
		}
		api = client
		if len(cfg.Lease.CAPEM) == 0 {
			logger.Warn().Msg("No CA bundle for the lease API was given (PMPH_LEASE_CA or --lease-ca-file); the system's roots are trusted.")
		}
	}
	return sidecar.New(cfg, logger, api)
}

// terminationContext ends with the first SIGTERM or SIGINT; its cause names
// the signal, which the sidecar logs.
func terminationContext() (context.Context, func()) {
	signals := make(chan os.Signal, 1)
	signal.Notify(signals, syscall.SIGTERM, syscall.SIGINT)
	ctx, terminate := context.WithCancelCause(context.Background())
	go func() {
		select {
		case sig := <-signals:
			terminate(fmt.Errorf("received %s", signalName(sig)))
		case <-ctx.Done():
		}
	}()
	return ctx, func() {
		signal.Stop(signals)
		terminate(nil)
	}
}

func signalName(sig os.Signal) string {
	switch sig {
	case syscall.SIGTERM:
		return "SIGTERM"
	case syscall.SIGINT:
		return "SIGINT"
	}
	return sig.String()
}
