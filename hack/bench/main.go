// Command bench is `make bench`: it starts 3 Redis nodes with the
// production settings, the webhook (release build) with generated
// certificates and the no-op TLS webhook as the floor, runs the Go
// micro-benchmarks and the load scenarios (pmph-loadtest) against the
// webhook and the floor in the same run, reads the webhook's memory after
// each scenario, and writes the figures into docs/performance.md between
// its markers.
//
//	bench run  [flags]   everything, then the report
//	bench env  [flags]   start the environment, print it, wait for Ctrl-C
//	                     (for profiling and trying scenarios by hand)
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"regexp"
	"syscall"
	"time"
)

type options struct {
	root, stateDir, out        string
	webhookBin, sidecarBin     string
	loadtestBin                string
	duration, warmup           time.Duration
	only                       *regexp.Regexp
	micro, lax, sidecar, burst bool
	gogc                       int
	benchtime                  string
}

func main() {
	os.Exit(run(os.Args[1:]))
}

func run(args []string) int {
	if len(args) == 0 || (args[0] != "run" && args[0] != "env") {
		fmt.Fprintln(os.Stderr, "usage: bench run|env [flags]")
		return 2
	}
	fs := flag.NewFlagSet("bench "+args[0], flag.ContinueOnError)
	var o options
	var only string
	fs.StringVar(&o.root, "root", ".", "the repository's root")
	fs.StringVar(&o.stateDir, "state-dir", ".cache/bench", "logs, certificates, Redis data and raw results")
	fs.StringVar(&o.out, "out", "docs/performance.md", "the report; the part between its bench markers is replaced (empty: no report)")
	fs.StringVar(&o.webhookBin, "webhook-binary", "bin/prometheus-metrics-proxy-hook-webhook", "the release build (make build)")
	fs.StringVar(&o.sidecarBin, "sidecar-binary", "bin/prometheus-metrics-proxy-hook-sidecar", "the sidecar's release build (make build), for its size")
	fs.StringVar(&o.loadtestBin, "loadtest-binary", "bin/pmph-loadtest", "the load tool")
	fs.DurationVar(&o.duration, "duration", 10*time.Second, "measured time per load scenario")
	fs.DurationVar(&o.warmup, "warmup", 2*time.Second, "unmeasured warm-up per load scenario")
	fs.StringVar(&only, "only", "", "run only the load scenarios whose name matches this regular expression")
	fs.BoolVar(&o.micro, "micro", true, "run the Go micro-benchmarks")
	fs.BoolVar(&o.sidecar, "sidecar", true, "run the sidecar benchmarks (RSS, proxy overhead)")
	fs.BoolVar(&o.lax, "everysec", true, "also run the semaphore scenarios on Redis with appendfsync everysec (labelled)")
	fs.BoolVar(&o.burst, "burst", true, "run the burst-fill check (a shared key filled without releases)")
	fs.StringVar(&o.benchtime, "benchtime", "1s", "-benchtime of the micro-benchmarks")
	fs.IntVar(&o.gogc, "gogc", 50, "also run the memory-heavy scenarios on a webhook with this GOGC (labelled webhook-gogc<N>; 0: not)")
	if err := fs.Parse(args[1:]); err != nil {
		return 2
	}
	if only != "" {
		re, err := regexp.Compile(only)
		if err != nil {
			fmt.Fprintf(os.Stderr, "bench: --only: %v\n", err)
			return 2
		}
		o.only = re
	}
	for _, p := range []*string{&o.root, &o.stateDir, &o.webhookBin, &o.sidecarBin, &o.loadtestBin} {
		abs, err := filepath.Abs(*p)
		if err != nil {
			fmt.Fprintf(os.Stderr, "bench: %v\n", err)
			return 2
		}
		*p = abs
	}
	if o.out != "" && !filepath.IsAbs(o.out) {
		o.out = filepath.Join(o.root, o.out)
	}
	if err := os.MkdirAll(o.stateDir, 0o700); err != nil {
		fmt.Fprintf(os.Stderr, "bench: %v\n", err)
		return 1
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	var err error
	if args[0] == "env" {
		err = serveEnv(ctx, &o)
	} else {
		err = runAll(ctx, &o)
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "bench: %v\n", err)
		return 1
	}
	return 0
}

func serveEnv(ctx context.Context, o *options) error {
	dir, err := os.MkdirTemp(o.stateDir, "env-")
	if err != nil {
		return err
	}
	e, err := startEnv(dir, o.webhookBin, o.loadtestBin, o.lax, o.gogc)
	if err != nil {
		return err
	}
	defer e.close()
	info := map[string]any{
		"webhook": "https://" + e.webhook.addr + "/mutate", "webhook_pid": e.webhook.pid(),
		"ca_file": filepath.Join(e.certDir, "ca.crt"), "redis": e.redis.Addrs(), "redis_password_file": e.webhook.passwordFile,
		"floor_json": "https://" + e.floors["json"].addr + "/mutate", "floor_none": "https://" + e.floors["none"].addr + "/mutate",
		"dir": dir,
	}
	if e.webhookLax != nil {
		info["webhook_everysec"] = "https://" + e.webhookLax.addr + "/mutate"
		info["redis_everysec"] = e.redisLax.Addrs()
		info["redis_everysec_password_file"] = e.webhookLax.passwordFile
	}
	b, _ := json.MarshalIndent(info, "", "  ")
	fmt.Println(string(b))
	fmt.Fprintln(os.Stderr, "bench: the environment runs until Ctrl-C")
	<-ctx.Done()
	return nil
}
