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
	"github.com/kaidotio/prometheus-metrics-proxy-hook/src/sidecar"
	"github.com/kaidotio/prometheus-metrics-proxy-hook/src/sidecar/leasekeeper"
	"github.com/kaidotio/prometheus-metrics-proxy-hook/src/startuppages"
)

// leaseRequestTimeout bounds one call to the lease API; a renewal every
// TTL/3 (10 s by default) leaves room for a retry within the TTL.
const leaseRequestTimeout = 5 * time.Second

// startupPagesDelay is when start-up is over: the sidecar listens and has
// renewed its lease once, the webhook has loaded its certificates and
// checked Redis, all within a second in practice. The pages of the binary
// touched until then are dropped from the resident set (see startuppages);
// what the process needs later is mapped back as it runs.
const startupPagesDelay = 2 * time.Second

func runSidecar(ctx context.Context, args []string, _, stderr io.Writer) int {
	// Every package of the binary, the webhook's too, was initialised
	// before this point; the pages that took are not the sidecar's to keep.
	initPages, initErr := startuppages.Drop()
	cfg, err := sidecar.ParseConfig(args, os.LookupEnv, os.ReadFile, stderr)
	if errors.Is(err, sidecar.ErrHelp) {
		return 0
	}
	if err != nil {
		fmt.Fprintf(stderr, "The sidecar cannot start: %s.\n", err)
		return 2
	}
	logger := newLogger(stderr, cfg.LogFormat, cfg.LogLevel).With().Str("version", buildinfo.Version).Logger()
	logDroppedPages(logger, "initialisation", initPages, initErr)

	var api leasekeeper.API
	if cfg.Lease != nil {
		client, err := leaseapi.NewClient(cfg.Lease.URL, cfg.Lease.CAPEM, leaseRequestTimeout)
		if err != nil {
			fmt.Fprintf(stderr, "The sidecar cannot start: %s.\n", err)
			return 2
		}
		if cfg.Lease.TokenFile != "" {
			client.UseTokenFile(cfg.Lease.TokenFile)
		} else {
			logger.Warn().Msg("No lease API token file was given (PMPH_LEASE_TOKEN_FILE); a lease API that checks tokens refuses every call.")
		}
		api = client
		if len(cfg.Lease.CAPEM) == 0 {
			logger.Warn().Msg("No CA bundle for the lease API was given (PMPH_LEASE_CA or --lease-ca-file); the system's roots are trusted.")
		}
	}
	s, err := sidecar.New(cfg, logger, api)
	if err != nil {
		fmt.Fprintf(stderr, "The sidecar cannot start: %s.\n", err)
		return 2
	}
	ln, err := net.Listen("tcp", cfg.ListenAddress)
	if err != nil {
		logger.Error().Err(err).Str("listen_address", cfg.ListenAddress).Msg("The sidecar cannot listen.")
		return 1
	}

	dropPages := time.AfterFunc(startupPagesDelay, func() {
		maps, err := startuppages.Drop()
		logDroppedPages(logger, "start-up", maps, err)
	})
	defer dropPages.Stop()

	// The signal's name goes into the log, hence a handler of our own next
	// to the one of main, which only cancels.
	signals := make(chan os.Signal, 1)
	signal.Notify(signals, syscall.SIGTERM, syscall.SIGINT)
	defer signal.Stop(signals)
	termCtx, terminate := context.WithCancelCause(context.Background())
	defer terminate(nil)
	go func() {
		select {
		case sig := <-signals:
			terminate(fmt.Errorf("received %s", signalName(sig)))
		case <-ctx.Done():
			// main's handler saw the same signal; ours has it too.
			select {
			case sig := <-signals:
				terminate(fmt.Errorf("received %s", signalName(sig)))
			default:
				terminate(context.Cause(ctx))
			}
		case <-termCtx.Done():
		}
	}()
	if err := s.Run(termCtx, ln); err != nil {
		logger.Error().Err(err).Msg("The sidecar failed.")
		return 1
	}
	return 0
}

func logDroppedPages(logger zerolog.Logger, stage string, maps []startuppages.Mapping, err error) {
	if err != nil {
		logger.Debug().Err(err).Str("stage", stage).Msg("The binary's pages could not be dropped from the resident set.")
		return
	}
	var size uintptr
	for _, m := range maps {
		size += m.End - m.Start
	}
	logger.Debug().Str("stage", stage).Uint64("mapped_kib", uint64(size>>10)).Msg("Dropped the binary's pages from the resident set.")
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

func newLogger(w io.Writer, format string, level zerolog.Level) zerolog.Logger {
	if format == "console" {
		w = zerolog.ConsoleWriter{Out: w, NoColor: true, TimeFormat: time.RFC3339Nano}
	}
	return zerolog.New(w).Level(level).With().Timestamp().Str("component", "sidecar").Logger()
}
