// Command prometheus-metrics-proxy-hook-webhook serves the mutating
// admission webhook and the lease API the injected sidecars renew their
// semaphore slots through. `prometheus-metrics-proxy-hook-webhook version`
// prints the version.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"

	"github.com/rs/zerolog"

	"github.com/kaidotio/prometheus-metrics-proxy-hook/src/buildinfo"
	"github.com/kaidotio/prometheus-metrics-proxy-hook/src/cmd/prometheus-metrics-proxy-hook-webhook/app"
	"github.com/kaidotio/prometheus-metrics-proxy-hook/src/logging"
	"github.com/kaidotio/prometheus-metrics-proxy-hook/src/startuppages"
)

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
	cfg, err := app.ParseConfig(args, os.Getenv, stdout)
	if errors.Is(err, app.ErrHelp) {
		return 0
	}
	if err != nil {
		fmt.Fprintf(stderr, "webhook: %v\n", err)
		return 2
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	logs := app.NewLogWriter(stderr)
	defer logs.Close()
	level, _ := zerolog.ParseLevel(cfg.LogLevel)
	logger := logging.New(logs, cfg.LogFormat, level)
	defer startuppages.DropAfterStartUp(logger)()
	if err := app.Run(ctx, cfg, logger); err != nil {
		return 1
	}
	return 0
}
