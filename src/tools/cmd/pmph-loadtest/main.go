// Command pmph-loadtest drives an admission webhook like the kube-apiserver
// does and checks every answer (`run`), and serves the no-op TLS webhook the
// figures are compared with (`floor`). It is a command of its own, so that
// the product binary stays small.
//
//	pmph-loadtest floor --cert-dir DIR --listen 127.0.0.1:9444
//	pmph-loadtest run --url https://127.0.0.1:9443/mutate --ca-file DIR/ca.crt \
//	    --mode closed --concurrency 32 --duration 10s --annotated --semaphore unique
package main

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"runtime/pprof"
	"strings"
	"syscall"
	"time"

	"github.com/kaidotio/prometheus-metrics-proxy-hook/src/tools/loadtest"
)

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

func run(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprintln(stderr, "Usage: pmph-loadtest run|floor [flags]; pmph-loadtest <subcommand> -h for the flags.")
		return 2
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	switch args[0] {
	case "run":
		return runLoad(ctx, args[1:], stdout, stderr)
	case "floor":
		return runFloor(ctx, args[1:], stdout, stderr)
	}
	fmt.Fprintf(stderr, "Unknown subcommand %q: use run or floor.\n", args[0])
	return 2
}

type loadFlags struct {
	url, caFile, mode, label, runID                    string
	rate                                               float64
	concurrency, count, maxInFlight                    int
	duration, warmup, timeout                          time.Duration
	annotated, dryRun                                  bool
	semaphore, key, startupTimeout, namespace, podFile string
	size, podBytes                                     int
	expect                                             string
	releaseAfter                                       time.Duration
	releaseAbove, releaseConcurrency                   int
	leaseURL, redisAddrs, redisPasswordFile            string
	inspectMax                                         int
	cpuProfile                                         string
}

func parseLoadFlags(args []string, stderr io.Writer) (*loadFlags, error) {
	f := &loadFlags{}
	fs := flag.NewFlagSet("pmph-loadtest run", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.StringVar(&f.url, "url", "", "the webhook's https://host:port/mutate (required)")
	fs.StringVar(&f.caFile, "ca-file", "", "CA bundle that signs the webhook's certificate (required)")
	fs.StringVar(&f.mode, "mode", loadtest.ModeClosed, "closed (a fixed concurrency) or open (a fixed rate)")
	fs.Float64Var(&f.rate, "rate", 500, "open loop: requests per second")
	fs.IntVar(&f.concurrency, "concurrency", 32, "closed loop: requests in flight")
	fs.DurationVar(&f.duration, "duration", 10*time.Second, "measured duration (0: until --count)")
	fs.IntVar(&f.count, "count", 0, "measured requests (0: until --duration)")
	fs.DurationVar(&f.warmup, "warmup", time.Second, "unmeasured load before the measurement")
	fs.DurationVar(&f.timeout, "timeout", 5*time.Second, "the API server's webhook timeout (?timeout= and the client's deadline)")
	fs.IntVar(&f.maxInFlight, "max-in-flight", 4096, "open loop: bound on requests in flight")
	fs.BoolVar(&f.annotated, "annotated", false, "opt the pods in")
	fs.BoolVar(&f.dryRun, "dry-run", false, "send dry-run reviews")
	fs.StringVar(&f.semaphore, "semaphore", "none", "none, unique (a fresh key per pod) or shared (one key for all)")
	fs.IntVar(&f.size, "size", 10, "semaphore size")
	fs.StringVar(&f.key, "key", "", "the shared semaphore key (default shared-<run id>)")
	fs.StringVar(&f.startupTimeout, "startup-timeout", "", "semaphore-startup-timeout annotation (default: the webhook's)")
	fs.StringVar(&f.namespace, "namespace", "load", "the pods' namespace")
	fs.StringVar(&f.podFile, "pod-file", "", "pod template (JSON with ${uid} ${seq} ${name} ${namespace} ${key} ${size}) instead of the built-in pod")
	fs.IntVar(&f.podBytes, "pod-bytes", 2048, "pad the pod with environment variables to this many bytes of JSON")
	fs.StringVar(&f.expect, "expect", "", "allowed, patched, patched-or-full or any (default: from the pod)")
	fs.DurationVar(&f.releaseAfter, "release-after", 0, "release each admitted slot after holding it this long (0: not by time)")
	fs.IntVar(&f.releaseAbove, "release-above", 0, "release the oldest slot when more than this many are held (0: not by count)")
	fs.IntVar(&f.releaseConcurrency, "release-concurrency", 32, "releases in flight at most")
	fs.StringVar(&f.leaseURL, "lease-url", "", "lease API base URL for releases (default: the URL's origin)")
	fs.StringVar(&f.redisAddrs, "redis-addresses", "", "the webhook's Redis nodes: count commands per admission and read the semaphores back")
	fs.StringVar(&f.redisPasswordFile, "redis-password-file", "", "file holding the Redis password")
	fs.IntVar(&f.inspectMax, "inspect-max", 2000, "inspect at most this many semaphores at the end (an even sample)")
	fs.StringVar(&f.label, "label", "", "copied into the result")
	fs.StringVar(&f.runID, "run-id", "", "tells runs apart in uids and keys (default: random)")
	fs.StringVar(&f.cpuProfile, "cpuprofile", "", "write the load tool's own CPU profile to this file")
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	if fs.NArg() > 0 {
		return nil, fmt.Errorf("unexpected arguments %q", fs.Args())
	}
	if f.url == "" || f.caFile == "" {
		return nil, errors.New("--url and --ca-file are required")
	}
	return f, nil
}

func (f *loadFlags) config() (loadtest.Config, error) {
	ca, err := os.ReadFile(f.caFile)
	if err != nil {
		return loadtest.Config{}, fmt.Errorf("reading --ca-file: %w", err)
	}
	if f.runID == "" {
		var b [4]byte
		_, _ = rand.Read(b[:])
		f.runID = hex.EncodeToString(b[:])
	}
	vars := loadtest.Vars{Run: f.runID, Namespace: f.namespace, Size: f.size}
	switch f.semaphore {
	case "none":
	case "unique":
		vars.KeyMode = loadtest.KeyUnique
	case "shared":
		vars.KeyMode = loadtest.KeyShared
		vars.SharedKey = f.key
		if vars.SharedKey == "" {
			vars.SharedKey = "shared-" + f.runID
		}
	default:
		return loadtest.Config{}, fmt.Errorf("--semaphore %q must be none, unique or shared", f.semaphore)
	}
	var pod map[string]any
	if f.podFile != "" {
		raw, err := os.ReadFile(f.podFile)
		if err != nil {
			return loadtest.Config{}, fmt.Errorf("reading --pod-file: %w", err)
		}
		if err := json.Unmarshal(raw, &pod); err != nil {
			return loadtest.Config{}, fmt.Errorf("--pod-file %s is not a JSON object: %w", f.podFile, err)
		}
	} else {
		pod = loadtest.Pod(loadtest.PodOptions{Annotated: f.annotated, KeyMode: vars.KeyMode, StartupTimeout: f.startupTimeout})
	}
	podJSON, err := loadtest.Pad(pod, f.podBytes, &vars)
	if err != nil {
		return loadtest.Config{}, err
	}
	tmpl, err := loadtest.Compile(loadtest.Review(podJSON, f.dryRun))
	if err != nil {
		return loadtest.Config{}, err
	}
	expect := loadtest.ExpectAllowed
	switch {
	case f.expect != "":
		if expect, err = loadtest.ParseExpect(f.expect); err != nil {
			return loadtest.Config{}, err
		}
	case vars.KeyMode == loadtest.KeyShared:
		expect = loadtest.ExpectPatchedOrFull
	case f.annotated:
		expect = loadtest.ExpectPatched
	}
	cfg := loadtest.Config{
		URL: f.url, CAPEM: ca, Mode: f.mode, Rate: f.rate, Concurrency: f.concurrency,
		Duration: f.duration, Count: f.count, Warmup: f.warmup, Timeout: f.timeout, MaxInFlight: f.maxInFlight,
		Body: tmpl, Vars: vars, Expect: expect,
		Release:  loadtest.ReleasePolicy{After: f.releaseAfter, Above: f.releaseAbove, Concurrency: f.releaseConcurrency},
		LeaseURL: f.leaseURL, InspectMax: f.inspectMax,
	}
	if f.redisAddrs != "" {
		rc := &loadtest.RedisConfig{Addrs: strings.Split(f.redisAddrs, ",")}
		if f.redisPasswordFile != "" {
			pw, err := os.ReadFile(f.redisPasswordFile)
			if err != nil {
				return loadtest.Config{}, fmt.Errorf("reading --redis-password-file: %w", err)
			}
			rc.Password = strings.TrimSpace(string(pw))
		}
		cfg.Redis = rc
	}
	return cfg, nil
}

// runLoad exits 0 when every answer and check passed, 1 when one failed,
// 2 for bad flags.
func runLoad(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	f, err := parseLoadFlags(args, stderr)
	if errors.Is(err, flag.ErrHelp) {
		return 0
	}
	if err != nil {
		fmt.Fprintf(stderr, "pmph-loadtest run: %v\n", err)
		return 2
	}
	cfg, err := f.config()
	if err != nil {
		fmt.Fprintf(stderr, "pmph-loadtest run: %v\n", err)
		return 2
	}
	cfg.Log = stderr
	if f.cpuProfile != "" {
		pf, err := os.Create(f.cpuProfile)
		if err != nil {
			fmt.Fprintf(stderr, "pmph-loadtest run: %v\n", err)
			return 2
		}
		defer pf.Close()
		if err := pprof.StartCPUProfile(pf); err != nil {
			fmt.Fprintf(stderr, "pmph-loadtest run: %v\n", err)
			return 2
		}
		defer pprof.StopCPUProfile()
	}
	res, err := loadtest.Run(ctx, cfg)
	if err != nil {
		fmt.Fprintf(stderr, "pmph-loadtest run: %v\n", err)
		return 1
	}
	res.Label = f.label
	res.PodBytes = podBytes(cfg)
	line, err := json.Marshal(res)
	if err != nil {
		fmt.Fprintf(stderr, "pmph-loadtest run: %v\n", err)
		return 1
	}
	fmt.Fprintln(stdout, string(line))
	if !res.OK {
		return 1
	}
	return 0
}

// podBytes is the size of the first request's pod, as sent.
func podBytes(cfg loadtest.Config) int {
	v := cfg.Vars
	review := cfg.Body.Append(nil, &v)
	var r struct {
		Request struct {
			Object json.RawMessage `json:"object"`
		} `json:"request"`
	}
	if json.Unmarshal(review, &r) != nil {
		return 0
	}
	return len(r.Request.Object)
}

// runFloor serves the no-op webhook until SIGTERM; it prints one JSON line
// with the bound address once it listens.
func runFloor(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("pmph-loadtest floor", flag.ContinueOnError)
	fs.SetOutput(stderr)
	listen := fs.String("listen", "127.0.0.1:0", "address to listen on")
	certDir := fs.String("cert-dir", "", "directory with tls.crt and tls.key (required)")
	decode := fs.String("decode", string(loadtest.FloorJSON), "json (decode the review with encoding/json) or none (find the uid only)")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	if *certDir == "" || (*decode != string(loadtest.FloorJSON) && *decode != string(loadtest.FloorNone)) {
		fmt.Fprintln(stderr, "pmph-loadtest floor: --cert-dir is required and --decode must be json or none")
		return 2
	}
	cert, err := tls.LoadX509KeyPair(filepath.Join(*certDir, "tls.crt"), filepath.Join(*certDir, "tls.key"))
	if err != nil {
		fmt.Fprintf(stderr, "pmph-loadtest floor: %v\n", err)
		return 2
	}
	ln, err := net.Listen("tcp", *listen)
	if err != nil {
		fmt.Fprintf(stderr, "pmph-loadtest floor: %v\n", err)
		return 1
	}
	srv := loadtest.FloorServer(cert, loadtest.FloorDecode(*decode))
	go func() {
		<-ctx.Done()
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = srv.Shutdown(sctx)
	}()
	line, _ := json.Marshal(map[string]string{"message": "listening", "address": ln.Addr().String(), "decode": *decode})
	fmt.Fprintln(stdout, string(line))
	if err := loadtest.ServeFloor(srv, ln); err != nil {
		fmt.Fprintf(stderr, "pmph-loadtest floor: %v\n", err)
		return 1
	}
	return 0
}
