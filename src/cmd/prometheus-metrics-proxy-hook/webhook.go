package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/kaidotio/prometheus-metrics-proxy-hook/src/startuppages"
	"github.com/kaidotio/prometheus-metrics-proxy-hook/src/webhook"
)

// runWebhook parses the webhook's flags and serves until ctx ends (SIGTERM
// or SIGINT). Exit codes: 0 after a clean shutdown or --help, 2 for an
// invalid flag or environment variable, 1 for any other failure.
func runWebhook(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	cfg, err := webhook.ParseConfig(args, os.Getenv, stdout)
	if errors.Is(err, webhook.ErrHelp) {
		return 0
	}
	if err != nil {
		fmt.Fprintf(stderr, "webhook: %v\n", err)
		return 2
	}
	logs := webhook.NewLogWriter(stderr)
	defer logs.Close()
	logger := webhook.NewLogger(logs, cfg.LogFormat, cfg.LogLevel)
	// Start-up (flags, certificates, Redis, listeners) is over well within
	// startupPagesDelay; its pages need not stay in the resident set.
	dropPages := time.AfterFunc(startupPagesDelay, func() {
		maps, err := startuppages.Drop()
		logDroppedPages(logger, "start-up", maps, err)
	})
	defer dropPages.Stop()
	if err := webhook.Run(ctx, cfg, logger); err != nil {
		return 1
	}
	return 0
}
