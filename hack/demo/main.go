// Command demo is `make demo` and `make demo-down`: a local control plane
// (etcd, kube-apiserver, kube-controller-manager), three Redis nodes and the
// webhook with generated certificates, the Helm chart installed into it with
// its webhook configuration pointing at the local webhook, and a narrated
// walkthrough of what the webhook does, through the real kubectl.
//
//	demo up    start the environment in the background (or reuse the running
//	           one) and walk through the scenarios
//	demo down  stop everything the demo started
//	demo serve the background process itself (started by up)
//
// The environment outlives `make demo`, so it runs in a daemon of its own:
// a new session (no terminal, so Ctrl-C in the demo's terminal does not
// reach it), its pid, lock, log and state in the state directory
// (.cache/demo). Everything it starts is in a process group of its own and
// is killed by the kernel if the daemon dies, so no process outlives it.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"
)

type config struct {
	dir           stateDir
	root          string
	webhookBinary string
	sidecarBinary string
}

func main() {
	os.Exit(run(os.Args[1:]))
}

func run(args []string) int {
	if len(args) == 0 || (args[0] != "up" && args[0] != "down" && args[0] != "serve") {
		fmt.Fprintln(os.Stderr, "usage: demo up|down|serve [--state-dir DIR] [--root DIR] [--webhook-binary FILE] [--sidecar-binary FILE]")
		return 2
	}
	cmd := args[0]
	fs := flag.NewFlagSet("demo "+cmd, flag.ContinueOnError)
	stateDirFlag := fs.String("state-dir", ".cache/demo", "directory of the demo's pid file, lock, logs and state")
	root := fs.String("root", ".", "the repository's root (chart, hack/crds.sh)")
	webhookBinary := fs.String("webhook-binary", "bin/prometheus-metrics-proxy-hook-webhook", "the webhook binary (make build)")
	sidecarBinary := fs.String("sidecar-binary", "bin/prometheus-metrics-proxy-hook-sidecar", "the sidecar binary the walkthrough starts (make build)")
	if err := fs.Parse(args[1:]); err != nil {
		return 2
	}
	var cfg config
	for _, p := range []struct {
		in  string
		out *string
	}{{*stateDirFlag, (*string)(&cfg.dir)}, {*root, &cfg.root}, {*webhookBinary, &cfg.webhookBinary}, {*sidecarBinary, &cfg.sidecarBinary}} {
		abs, err := filepath.Abs(p.in)
		if err != nil {
			fmt.Fprintf(os.Stderr, "demo: %v\n", err)
			return 2
		}
		*p.out = abs
	}

	switch cmd {
	case "serve":
		// SIGINT too: a daemon started by hand in a terminal stops on Ctrl-C.
		ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
		defer stop()
		// No terminal to hang up, but a stray SIGHUP must not kill the
		// daemon without its clean-up.
		signal.Ignore(syscall.SIGHUP)
		return serve(ctx, cfg)
	case "down":
		return down(cfg)
	default:
		ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
		defer stop()
		return up(ctx, cfg)
	}
}
