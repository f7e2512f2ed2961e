package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// loadResult is the part of pmph-loadtest's JSON line the report uses.
type loadResult struct {
	Label      string         `json:"label"`
	Requests   int            `json:"requests"`
	Measured   int            `json:"measured"`
	Throughput float64        `json:"throughput_per_s"`
	Allowed    int            `json:"allowed"`
	Patched    int            `json:"patched"`
	Denied     int            `json:"denied"`
	DeniedBy   map[string]int `json:"denied_by"`
	Errors     int            `json:"errors"`
	Invalid    int            `json:"invalid"`
	Unexpected int            `json:"unexpected"`
	PodBytes   int            `json:"pod_bytes"`
	Latency    latency        `json:"latency_ms"`
	Scheduled  *latency       `json:"latency_from_scheduled_ms"`
	Check      *struct {
		Keys             int `json:"keys"`
		Admitted         int `json:"admitted"`
		MaxCertainlyHeld int `json:"max_certainly_held"`
		OverAdmissions   int `json:"over_admissions"`
		DenialsWhileFree int `json:"denials_while_free"`
		Unknown          int `json:"unknown_outcomes"`
		Released         int `json:"released"`
		ReleaseErrors    int `json:"release_errors"`
		ReleaseNotHeld   int `json:"release_not_held"`
		Inspected        int `json:"inspected"`
		InspectMismatch  int `json:"inspect_mismatches"`
		InspectOverSize  int `json:"inspect_over_size"`
		InspectErrors    int `json:"inspect_errors"`
	} `json:"semaphore_check"`
	Redis *struct {
		ScriptCalls []int64 `json:"script_calls"`
		Commands    []int64 `json:"commands"`
		PerReview   float64 `json:"script_calls_per_review_per_node"`
		NetReleases float64 `json:"script_calls_per_review_per_node_net_of_releases"`
	} `json:"redis"`
	ToolCPU float64 `json:"tool_cpu_s"`
	Seconds float64 `json:"seconds"`
	OK      bool    `json:"ok"`
}

type latency struct {
	P50  float64 `json:"p50"`
	P90  float64 `json:"p90"`
	P99  float64 `json:"p99"`
	P999 float64 `json:"p999"`
	Max  float64 `json:"max"`
}

// scenario is one load run.
type scenario struct {
	name   string // e.g. "semaphore-unique"
	target string // webhook, webhook-everysec, floor-json, floor-none
	size   int    // pod bytes
	mode   string // closed or open
	args   []string
}

func (s scenario) id() string {
	return fmt.Sprintf("%s/%s/%dKiB/%s", s.target, s.name, s.size>>10, s.mode)
}

// row is a scenario's outcome.
type row struct {
	scenario
	res      *loadResult
	mem      *memory
	err      string
	duration time.Duration
	// cpu is CPU time per review, in µs: the server (webhook or floor)
	// and the Redis nodes together.
	cpuServer, cpuRedis float64
}

var (
	sizes = []int{2 << 10, 64 << 10}
	modes = []string{"closed", "open"}
)

const (
	closedConcurrency = 32
	openRate          = 500
	sharedSize        = 1000
	// sharedReleaseAbove keeps the shared semaphore 90% full: contended,
	// near capacity, and every denial a wrong one (at least 100-32 slots
	// stay free).
	sharedReleaseAbove = 900
)

// scenarios lists the load runs: for each pod size and mode, the floor
// first, then the webhook's paths.
func scenarios(lax bool, gogc int) []scenario {
	var out []scenario
	for _, size := range sizes {
		for _, mode := range modes {
			add := func(name, target string, args ...string) {
				out = append(out, scenario{name: name, target: target, size: size, mode: mode, args: args})
			}
			add("floor", "floor-json")
			add("floor", "floor-none")
			add("not-annotated", "webhook")
			add("annotated", "webhook", "--annotated")
			add("semaphore-unique", "webhook", "--annotated", "--semaphore=unique", "--size=10")
			add("semaphore-shared", "webhook", "--annotated", "--semaphore=shared", "--size="+strconv.Itoa(sharedSize),
				"--release-above="+strconv.Itoa(sharedReleaseAbove))
			if gogc > 0 && mode == "closed" {
				target := "webhook-gogc" + strconv.Itoa(gogc)
				add("annotated", target, "--annotated")
				add("semaphore-unique", target, "--annotated", "--semaphore=unique", "--size=10")
			}
			if lax && size == 2<<10 {
				add("semaphore-unique", "webhook-everysec", "--annotated", "--semaphore=unique", "--size=10")
				add("semaphore-shared", "webhook-everysec", "--annotated", "--semaphore=shared", "--size="+strconv.Itoa(sharedSize),
					"--release-above="+strconv.Itoa(sharedReleaseAbove))
			}
		}
	}
	return out
}

// runScenario runs pmph-loadtest for s and reads the webhook's memory.
func runScenario(ctx context.Context, o *options, e *env, s scenario, runID string) row {
	r := row{scenario: s}
	var url string
	var wh *webhookProc
	var server int
	switch s.target {
	case "webhook":
		wh = e.webhook
	case "webhook-everysec":
		wh = e.webhookLax
	default:
		if strings.HasPrefix(s.target, "webhook-gogc") {
			wh = e.webhookGOGC
		}
	case "floor-json":
		url = "https://" + e.floors["json"].addr + "/mutate"
		server = e.floors["json"].pid()
	case "floor-none":
		url = "https://" + e.floors["none"].addr + "/mutate"
		server = e.floors["none"].pid()
	}
	var redisPids []int
	if wh != nil {
		server = wh.pid()
		for _, n := range wh.redis.Nodes {
			redisPids = append(redisPids, n.Pid())
		}
	}
	serverCPU0, redisCPU0 := cpuTicks(server), cpuTicks(redisPids...)
	args := []string{"run", "--ca-file=" + filepath.Join(e.certDir, "ca.crt"),
		"--duration=" + o.duration.String(), "--warmup=" + o.warmup.String(),
		"--pod-bytes=" + strconv.Itoa(s.size), "--label=" + s.id(), "--run-id=" + runID}
	if s.mode == "closed" {
		args = append(args, "--mode=closed", "--concurrency="+strconv.Itoa(closedConcurrency))
	} else {
		args = append(args, "--mode=open", "--rate="+strconv.Itoa(openRate))
	}
	if wh != nil {
		url = "https://" + wh.addr + "/mutate"
		args = append(args, "--redis-addresses="+strings.Join(wh.redis.Addrs(), ","), "--redis-password-file="+wh.passwordFile)
		if err := resetPeak(wh.pid()); err != nil {
			r.err = fmt.Sprintf("resetting the peak RSS: %v", err)
		}
	} else {
		// The floor allows everything unchanged, whatever the pod says.
		args = append(args, "--expect=allowed")
	}
	args = append(args, "--url="+url)
	args = append(args, s.args...)
	began := time.Now()
	out, err := runCmd(ctx, o.warmup+o.duration+2*time.Minute, os.Stderr, o.root, o.loadtestBin, args...)
	r.duration = time.Since(began)
	if line := lastLine(out); line != "" {
		var res loadResult
		if jerr := json.Unmarshal([]byte(line), &res); jerr == nil {
			r.res = &res
		}
	}
	if err != nil && (r.res == nil || r.res.OK) {
		r.err = err.Error()
	}
	if wh != nil {
		if m, merr := readMemory(wh.pid()); merr == nil {
			r.mem = &m
		}
	}
	if r.res != nil && r.res.Requests > 0 {
		perReview := func(ticks int64) float64 { return float64(ticks) * 1e6 / clockTicks / float64(r.res.Requests) }
		r.cpuServer = perReview(cpuTicks(server) - serverCPU0)
		r.cpuRedis = perReview(cpuTicks(redisPids...) - redisCPU0)
	}
	return r
}

func lastLine(b []byte) string {
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	return lines[len(lines)-1]
}
