// Command demo is `make demo` and `make demo-down`: the Helm chart running
// on a real node on this machine (src/testenv/chartnode: kubelet, containerd,
// kube-proxy, CoreDNS, the chart's images built without Docker and served by
// a loopback registry), and a narrated walkthrough of what the webhook and
// the injected sidecar do, through the real kubectl. The node needs Linux
// and root; elsewhere (or with --mode control-plane) the demo falls back to
// a control plane without a node (etcd, kube-apiserver,
// kube-controller-manager), three Redis nodes and the webhook as local
// processes, the chart installed with its webhook configuration pointing at
// the local webhook.
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
	"time"

	"github.com/kaidotio/prometheus-metrics-proxy-hook/src/testenv/kubenode"
)

// The demo's modes.
const (
	modeAuto         = "auto"
	modeNode         = "node"
	modeControlPlane = "control-plane"
)

type config struct {
	dir           stateDir
	root          string
	webhookBinary string
	sidecarBinary string
	// mode is modeNode or modeControlPlane for serve, and may be modeAuto
	// for up.
	mode string
	// nodeOwner names the demo's node in the machine-wide lock
	// (kubenode.DemoOwner unless a test runs the demo).
	nodeOwner string
	// startTimeout bounds the environment's start, a wait for another
	// test's node included.
	startTimeout time.Duration
}

func main() {
	os.Exit(run(os.Args[1:]))
}

func run(args []string) int {
	if len(args) == 0 || (args[0] != "up" && args[0] != "down" && args[0] != "serve") {
		fmt.Fprintln(os.Stderr, "usage: demo up|down|serve [--state-dir DIR] [--root DIR] [--webhook-binary FILE] [--sidecar-binary FILE] [--mode auto|node|control-plane] [--node-owner NAME]")
		return 2
	}
	cmd := args[0]
	fs := flag.NewFlagSet("demo "+cmd, flag.ContinueOnError)
	stateDirFlag := fs.String("state-dir", ".cache/demo", "directory of the demo's pid file, lock, logs and state")
	root := fs.String("root", ".", "the repository's root (chart, hack/crds.sh)")
	webhookBinary := fs.String("webhook-binary", "bin/prometheus-metrics-proxy-hook-webhook", "the webhook binary (make build)")
	sidecarBinary := fs.String("sidecar-binary", "bin/prometheus-metrics-proxy-hook-sidecar", "the sidecar binary the walkthrough starts (make build)")
	mode := fs.String("mode", modeAuto, "node: the chart on a real node (Linux, root); control-plane: a control plane without a node, the webhook and sidecar as local processes; auto: the node where it can run")
	nodeOwner := fs.String("node-owner", kubenode.DemoOwner, "who holds the machine's node, as other programs that want it are told")
	startTimeout := fs.Duration("start-timeout", defaultStartTimeout, "how long the environment may take to start (with --node-owner other than the demo's, waiting for other nodes included)")
	if err := fs.Parse(args[1:]); err != nil {
		return 2
	}
	if *mode != modeAuto && *mode != modeNode && *mode != modeControlPlane {
		fmt.Fprintf(os.Stderr, "demo: --mode is %q; it must be auto, node or control-plane\n", *mode)
		return 2
	}
	cfg := config{mode: *mode, nodeOwner: *nodeOwner, startTimeout: *startTimeout}
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
