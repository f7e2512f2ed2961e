// Command prometheus-metrics-proxy-hook is one binary with one subcommand per
// role: the admission webhook, the sidecar injected into user pods, and tools.
package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"

	"github.com/kaidotio/prometheus-metrics-proxy-hook/src/buildinfo"
)

// subcommand runs one role. It owns flag parsing for its args and returns the
// process exit code.
type subcommand struct {
	summary string
	run     func(ctx context.Context, args []string, stdout, stderr io.Writer) int
}

func subcommands() map[string]subcommand {
	return map[string]subcommand{
		"webhook": {summary: "serve the mutating admission webhook and the lease API", run: runWebhook},
		"sidecar": {summary: "proxy the pod's metrics, keep its final scrape and its semaphore lease", run: runSidecar},
		"version": {summary: "print the version and exit", run: runVersion},
	}
}

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

func run(args []string, stdout, stderr io.Writer) int {
	cmds := subcommands()
	if len(args) == 0 || args[0] == "-h" || args[0] == "--help" || args[0] == "help" {
		usage(stderr, cmds)
		if len(args) == 0 {
			return 2
		}
		return 0
	}
	cmd, ok := cmds[args[0]]
	if !ok {
		fmt.Fprintf(stderr, "Unknown subcommand %q; run %s --help for the list.\n", args[0], os.Args[0])
		return 2
	}
	// Subcommands that need signals (SIGTERM handling in webhook and sidecar)
	// install their own handlers; this context is for the rest.
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	return cmd.run(ctx, args[1:], stdout, stderr)
}

func usage(w io.Writer, cmds map[string]subcommand) {
	fmt.Fprintln(w, "Usage: prometheus-metrics-proxy-hook <subcommand> [flags]")
	fmt.Fprintln(w)
	for _, name := range []string{"webhook", "sidecar", "loadtest", "version"} {
		if c, ok := cmds[name]; ok {
			fmt.Fprintf(w, "  %-10s %s\n", name, c.summary)
		}
	}
}

func runVersion(_ context.Context, _ []string, stdout, _ io.Writer) int {
	fmt.Fprintln(stdout, buildinfo.String())
	return 0
}
