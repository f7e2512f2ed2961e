package main

import (
	"context"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"time"
)

// benchmark is one line of `go test -bench` output.
type benchmark struct {
	pkg, name string
	metrics   []metric // in output order: ns/op, B/op, allocs/op, custom
}

type metric struct {
	value float64
	unit  string
}

func (b benchmark) get(unit string) (float64, bool) {
	for _, m := range b.metrics {
		if m.unit == unit {
			return m.value, true
		}
	}
	return 0, false
}

// microRun is one `go test -bench` invocation.
type microRun struct {
	pkg, pattern, benchtime string
	timeout                 time.Duration
}

func microRuns(o *options) []microRun {
	var runs []microRun
	if o.micro {
		runs = append(runs,
			microRun{"./src/admission/", "^(BenchmarkParse|BenchmarkPatch|BenchmarkHandler)$", o.benchtime, 5 * time.Minute},
			microRun{"./src/semaphore/", "^BenchmarkAcquireRelease$", o.benchtime, 5 * time.Minute},
		)
	}
	if o.sidecar {
		runs = append(runs,
			microRun{"./src/sidecar/metricsproxy/", "^BenchmarkScrape$", o.benchtime, 5 * time.Minute},
			// Each case runs once for about 10 s; -benchtime 1x keeps it so.
			microRun{"./src/sidecar/", "^BenchmarkSidecarRSS$", "1x", 10 * time.Minute},
		)
	}
	return runs
}

// runMicro runs one benchmark set; the raw output goes to the state dir.
func runMicro(ctx context.Context, o *options, m microRun) ([]benchmark, string, error) {
	goBin := filepath.Join(runtime.GOROOT(), "bin", "go")
	if _, err := os.Stat(goBin); err != nil {
		goBin = "go"
	}
	args := []string{"test", "-run", "^$", "-bench", m.pattern, "-benchmem", "-benchtime", m.benchtime,
		"-count", "1", "-timeout", m.timeout.String(), m.pkg}
	cmdline := "go " + strings.Join(quoteArgs(args), " ")
	out, err := runCmd(ctx, m.timeout+time.Minute, os.Stderr, o.root, goBin, args...)
	name := strings.NewReplacer("/", "_", ".", "").Replace(strings.Trim(m.pkg, "./"))
	_ = os.WriteFile(filepath.Join(o.stateDir, "micro-"+name+".txt"), out, 0o600)
	return parseBench(string(out), m.pkg), cmdline, err
}

func quoteArgs(args []string) []string {
	out := make([]string, len(args))
	for i, a := range args {
		if strings.ContainsAny(a, "^$|()* ") {
			a = "'" + a + "'"
		}
		out[i] = a
	}
	return out
}

// parseBench reads the benchmark lines: name, iterations, then value and
// unit pairs.
func parseBench(out, pkg string) []benchmark {
	var bs []benchmark
	for _, line := range strings.Split(out, "\n") {
		f := strings.Fields(line)
		if len(f) < 4 || !strings.HasPrefix(f[0], "Benchmark") {
			continue
		}
		if _, err := strconv.Atoi(f[1]); err != nil {
			continue
		}
		b := benchmark{pkg: pkg, name: trimProcs(f[0])}
		for i := 2; i+1 < len(f); i += 2 {
			v, err := strconv.ParseFloat(f[i], 64)
			if err != nil {
				break
			}
			b.metrics = append(b.metrics, metric{v, f[i+1]})
		}
		bs = append(bs, b)
	}
	return bs
}

// trimProcs drops the -GOMAXPROCS suffix of a benchmark name.
func trimProcs(name string) string {
	if i := strings.LastIndexByte(name, '-'); i > 0 {
		if _, err := strconv.Atoi(name[i+1:]); err == nil {
			return name[:i]
		}
	}
	return name
}
