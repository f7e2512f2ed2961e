package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// results is everything the report needs.
type results struct {
	started, finished time.Time
	machine           machine
	micro             []microResult
	rows              []row
	burst             *row
	// webhookBytes and sidecarBytes are the release binaries' sizes.
	webhookBytes, sidecarBytes int64
	options                    *options
}

type microResult struct {
	cmdline string
	benches []benchmark
	err     string
}

func runAll(ctx context.Context, o *options) error {
	res := &results{started: time.Now(), machine: describeMachine(), options: o,
		webhookBytes: binarySize(o.webhookBin), sidecarBytes: binarySize(o.sidecarBin)}
	logf("load average %s; probing fsync latency", res.machine.loadStart)
	if err := res.machine.probeFsync(o.stateDir, 2*time.Second); err != nil {
		logf("fsync probe failed: %v", err)
	}

	for _, m := range microRuns(o) {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		logf("micro-benchmarks: %s %s", m.pkg, m.pattern)
		benches, cmdline, err := runMicro(ctx, o, m)
		mr := microResult{cmdline: cmdline, benches: benches}
		if err != nil {
			mr.err = err.Error()
			logf("  failed: %v", err)
		}
		res.micro = append(res.micro, mr)
	}

	dir, err := os.MkdirTemp(o.stateDir, "run-")
	if err != nil {
		return err
	}
	e, err := startEnv(dir, o.webhookBin, o.loadtestBin, o.lax, o.gogc)
	if err != nil {
		return err
	}
	defer e.close()
	raw, err := os.Create(filepath.Join(o.stateDir, "results.jsonl"))
	if err != nil {
		return err
	}
	defer raw.Close()

	for i, s := range scenarios(o.lax, o.gogc) {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if o.only != nil && !o.only.MatchString(s.id()) {
			continue
		}
		r := runScenario(ctx, o, e, s, runID(i))
		res.rows = append(res.rows, r)
		logRow(r)
		if r.res != nil {
			b, _ := json.Marshal(r.res)
			fmt.Fprintln(raw, string(b))
		}
	}
	if o.burst && (o.only == nil || o.only.MatchString("burst")) {
		r := runBurst(ctx, o, e)
		res.burst = &r
		logRow(r)
		if r.res != nil {
			b, _ := json.Marshal(r.res)
			fmt.Fprintln(raw, string(b))
		}
	}
	res.finished = time.Now()
	res.machine.loadEnd = loadAvg()
	logf("load average at the end %s", res.machine.loadEnd)
	if o.out == "" {
		return nil
	}
	return writeReport(o.out, render(res))
}

// runBurst fills a fresh shared semaphore of 1000 slots with 1500 reviews
// at concurrency 32, without releases: exactly 1000 must be admitted, and
// every denial must come once all 1000 slots were possibly held.
func runBurst(ctx context.Context, o *options, e *env) row {
	s := scenario{name: "burst-fill", target: "webhook", size: 2 << 10, mode: "closed",
		args: []string{"--annotated", "--semaphore=shared", "--size=" + strconv.Itoa(sharedSize), "--count=1500", "--duration=0", "--warmup=0"}}
	saved := *o
	defer func() { *o = saved }()
	o.warmup, o.duration = 0, 0
	r := runScenario(ctx, o, e, s, runID(9999))
	return r
}

func runID(i int) string {
	var b [2]byte
	_, _ = rand.Read(b[:])
	return fmt.Sprintf("%02d%s", i%100, hex.EncodeToString(b[:]))[:6]
}

func logf(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "bench: "+format+"\n", args...)
}

func logRow(r row) {
	var b strings.Builder
	fmt.Fprintf(&b, "%-45s", r.id())
	if r.res != nil {
		fmt.Fprintf(&b, " %9.1f/s p50 %7.3f p99 %7.3f ms allowed %d denied %d errors %d ok %v",
			r.res.Throughput, r.res.Latency.P50, r.res.Latency.P99, r.res.Allowed, r.res.Denied, r.res.Errors, r.res.OK)
		if r.res.Redis != nil && r.res.Redis.PerReview > 0 {
			fmt.Fprintf(&b, " scripts/review/node %.3f", r.res.Redis.PerReview)
		}
	}
	if r.mem != nil {
		fmt.Fprintf(&b, " HWM %.1f MiB", float64(r.mem.VmHWM)/1024)
	}
	if r.err != "" {
		fmt.Fprintf(&b, " ERROR %s", r.err)
	}
	logf("%s", b.String())
}
