package main

import (
	"fmt"
	"strings"

	"github.com/kaidotio/prometheus-metrics-proxy-hook/src/testenv/docsection"
)

// benchSection delimits the generated part of the report; the rest of the
// file is written by people and kept.
var benchSection = docsection.For("bench", "make bench")

func writeReport(path, section string) error {
	return docsection.Rewrite(path, benchSection, "# Performance\n\n", section)
}

func mib(kib int64) string { return fmt.Sprintf("%.1f", float64(kib)/1024) }

func ratio(a, b float64) string {
	if b == 0 {
		return "-"
	}
	return fmt.Sprintf("%.2f", a/b)
}

// floorOf finds the floor row of the same pod size and mode.
func floorOf(rows []row, r row, target string) *row {
	for i := range rows {
		f := &rows[i]
		if f.target == target && f.size == r.size && f.mode == r.mode && f.res != nil {
			return f
		}
	}
	return nil
}

func find(rows []row, target, name string, size int, mode string) *row {
	for i := range rows {
		r := &rows[i]
		if r.target == target && r.name == name && r.size == size && r.mode == mode && r.res != nil {
			return r
		}
	}
	return nil
}

func render(res *results) string {
	var b strings.Builder
	w := func(format string, args ...any) { fmt.Fprintf(&b, format, args...) }
	m := res.machine
	o := res.options

	w("### Run of %s\n\n", res.started.UTC().Format("2006-01-02 15:04 MST"))
	w("- Machine: %s, %d cores, %.1f GiB, Linux %s; %s; redis-server %s.\n", m.cpu, m.cores, m.memGiB, m.kernel, m.goVersion, m.redis)
	w("- Load average (1/5/15 min) at the start %s, at the end %s; the run took %s.\n", m.loadStart, m.loadEnd,
		res.finished.Sub(res.started).Round(1e9))
	if m.fsyncP50 > 0 {
		w("- Disk: a 256-byte append + fdatasync in the Redis directory (%s) takes p50 %s, p99 %s; with `appendfsync always` every write command waits for one. ",
			m.fsyncFS, m.fsyncP50.Round(1e3), m.fsyncP99.Round(1e3))
		w("The three Redis nodes share this one disk: of three such appends at once (one per node), the second, which a quorum waits for, completes at p50 %s, p99 %s.\n",
			m.quorumP50.Round(1e3), m.quorumP99.Round(1e3))
	}
	w("- Load scenarios: `pmph-loadtest run` for %s after %s of warm-up each; closed loop at concurrency %d, open loop at %d/s. ",
		o.duration, o.warmup, closedConcurrency, openRate)
	w("The webhook is the release build (`make build`), its Redis 3 nodes with `appendfsync always` (production settings), logging at info; ")
	w("the floor is `pmph-loadtest floor` on the same certificate and TLS settings: `none` reads the body and finds the uid (the floor of the ratios), `json` decodes the review with encoding/json (the trivial webhook).\n\n")

	w("#### Load scenarios: throughput and latency\n\n")
	w("`× floor` is to the `none` floor (TLS, HTTP and reading the body: the least any webhook does) of the same pod size and mode, measured in this run; `× json` to the `json` floor (the trivial webhook that decodes the review with encoding/json). ")
	w("Latency is from the request's send (it had a connection) to the end of the answer; in the open loop `sched p99` is from the scheduled time. ")
	w("`errors` counts failed requests, answers that break the AdmissionReview contract and answers the scenario did not expect.\n\n")
	w("| target | scenario | pod | mode | reviews/s | × floor | × json | p50 ms | p90 ms | p99 ms | p99.9 ms | max ms | p99 × floor | sched p99 ms | allowed | denied | errors | ok |\n")
	w("|---|---|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|---|\n")
	for _, r := range res.rows {
		w("| %s | %s | %d KiB | %s ", r.target, r.name, r.size>>10, modeLabel(r.mode))
		if r.res == nil {
			w("| failed: %s |||||||||||||\n", strings.ReplaceAll(r.err, "|", "/"))
			continue
		}
		x := r.res
		fn, fj := floorOf(res.rows, r, "floor-none"), floorOf(res.rows, r, "floor-json")
		tr, trj, pr := "-", "-", "-"
		if fn != nil {
			tr = ratio(x.Throughput, fn.res.Throughput)
			pr = ratio(x.Latency.P99, fn.res.Latency.P99)
		}
		if fj != nil {
			trj = ratio(x.Throughput, fj.res.Throughput)
		}
		sched := "-"
		if x.Scheduled != nil {
			sched = fmt.Sprintf("%.3f", x.Scheduled.P99)
		}
		denied := fmt.Sprint(x.Denied)
		if len(x.DeniedBy) > 0 {
			denied += " " + codes(x.DeniedBy)
		}
		w("| %.0f | %s | %s | %.3f | %.3f | %.3f | %.3f | %.3f | %s | %s | %d | %s | %d | %s |\n",
			x.Throughput, tr, trj, x.Latency.P50, x.Latency.P90, x.Latency.P99, x.Latency.P999, x.Latency.Max, pr, sched,
			x.Allowed, denied, x.Errors+x.Invalid+x.Unexpected, okLabel(x.OK, r.err))
	}
	w("\n")

	w("#### Load scenarios: what each review costs\n\n")
	w("CPU time per review (user + system, µs) of the server (the webhook or the floor), of the 3 Redis nodes together and of the load tool, all on the same %d cores; ", m.cores)
	w("Redis script calls per review per node and all Redis commands per review (INFO commandstats deltas; the scripts' own commands included); ")
	w("the webhook's memory after the scenario (MiB): VmHWM is its peak during the scenario (reset before each), RssAnon its own memory, the rest of VmRSS the binary's pages.\n\n")
	w("| target | scenario | pod | mode | CPU server | CPU Redis | CPU tool | scripts/review/node | Redis commands/review (3 nodes) | VmHWM | VmRSS | RssAnon |\n")
	w("|---|---|---|---|--:|--:|--:|--:|--:|--:|--:|--:|\n")
	for _, r := range res.rows {
		if r.res == nil {
			continue
		}
		x := r.res
		scripts, commands := "-", "-"
		if x.Redis != nil && x.Allowed+x.Denied > 0 {
			var all int64
			for _, c := range x.Redis.Commands {
				all += c
			}
			if x.Redis.PerReview > 0 {
				scripts = fmt.Sprintf("%.3f", x.Redis.PerReview)
				if x.Redis.NetReleases > 0 && x.Redis.NetReleases != x.Redis.PerReview {
					scripts += fmt.Sprintf(" (%.3f net of releases)", x.Redis.NetReleases)
				}
			}
			if all > 0 {
				commands = fmt.Sprintf("%.2f", float64(all)/float64(x.Allowed+x.Denied))
			}
		}
		memCols := "- | - | -"
		if r.mem != nil {
			memCols = fmt.Sprintf("%s | %s | %s", mib(r.mem.VmHWM), mib(r.mem.VmRSS), mib(r.mem.RssAnon))
		}
		redis := "-"
		if r.cpuRedis > 0 {
			redis = fmt.Sprintf("%.0f", r.cpuRedis)
		}
		tool := x.ToolCPU * 1e6 / float64(max(1, x.Requests))
		w("| %s | %s | %d KiB | %s | %.0f | %s | %.0f | %s | %s | %s |\n", r.target, r.name, r.size>>10, modeLabel(r.mode),
			r.cpuServer, redis, tool, scripts, commands, memCols)
	}
	w("\n")

	w("#### Semaphore checks\n\n")
	w("Over-admissions: the most slots of one semaphore certainly held at once (admissions answered, releases not yet sent) beyond its size. ")
	w("Denials while a slot was free: denials during which fewer than `size` slots were possibly held (admissions sent before the denial was answered whose release was not answered before it was sent, plus reviews of unknown outcome). ")
	w("Inspect reads the semaphores back from the nodes at the end (up to 2000 keys): each must hold at most its size, and between what the run certainly and possibly left held.\n\n")
	w("| target | scenario | pod | mode | admitted | denied | max certainly held | over-admissions | denials while free | released | inspected | inspect mismatches |\n")
	w("|---|---|---|---|--:|--:|--:|--:|--:|--:|--:|--:|\n")
	rows := res.rows
	if res.burst != nil {
		rows = append(append([]row{}, rows...), *res.burst)
	}
	for _, r := range rows {
		if r.res == nil || r.res.Check == nil {
			continue
		}
		c := r.res.Check
		w("| %s | %s | %d KiB | %s | %d | %d | %d | %d | %d | %d | %d | %d |\n", r.target, r.name, r.size>>10, modeLabel(r.mode),
			c.Admitted, r.res.Denied, c.MaxCertainlyHeld, c.OverAdmissions, c.DenialsWhileFree, c.Released, c.Inspected,
			c.InspectMismatch+c.InspectOverSize+c.InspectErrors)
	}
	w("\n`burst-fill`: 1500 reviews for one fresh semaphore of %d slots at concurrency %d, no releases: exactly %d must be admitted.\n\n", sharedSize, closedConcurrency, sharedSize)

	renderTargets(&b, res)
	renderMicro(&b, res)
	return b.String()
}

func modeLabel(mode string) string {
	if mode == "closed" {
		return fmt.Sprintf("closed c=%d", closedConcurrency)
	}
	return fmt.Sprintf("open %d/s", openRate)
}

func okLabel(ok bool, err string) string {
	switch {
	case err != "":
		return "no: " + strings.ReplaceAll(err, "|", "/")
	case ok:
		return "yes"
	}
	return "**no**"
}

func codes(m map[string]int) string {
	var parts []string
	for _, c := range []string{"400", "429", "503"} {
		if n := m[c]; n > 0 {
			parts = append(parts, fmt.Sprintf("%s: %d", c, n))
		}
	}
	for c, n := range m {
		if c != "400" && c != "429" && c != "503" {
			parts = append(parts, fmt.Sprintf("%s: %d", c, n))
		}
	}
	return "(" + strings.Join(parts, ", ") + ")"
}

func renderTargets(b *strings.Builder, res *results) {
	w := func(format string, args ...any) { fmt.Fprintf(b, format, args...) }
	w("#### Targets\n\n")
	w("| figure | target | 2 KiB pods | 64 KiB pods |\n|---|---|---|---|\n")
	throughput := func(name string, target float64) {
		w("| %s reviews/s, closed c=%d | >= %.0f%% of the floor |", name, closedConcurrency, target*100)
		for _, size := range sizes {
			r := find(res.rows, "webhook", name, size, "closed")
			f := find(res.rows, "floor-none", "floor", size, "closed")
			if r == nil || f == nil {
				w(" - |")
				continue
			}
			q := r.res.Throughput / f.res.Throughput
			w(" %.0f/s = %.0f%% of %.0f/s: %s |", r.res.Throughput, q*100, f.res.Throughput, verdict(q >= target))
		}
		w("\n")
	}
	throughput("semaphore-unique", 0.40)
	throughput("annotated", 0.60)
	throughput("not-annotated", 0.85)

	w("| semaphore admission p99 at %d/s open loop (from send) | <= 2x the floor's p99 |", openRate)
	for _, size := range sizes {
		r := find(res.rows, "webhook", "semaphore-unique", size, "open")
		f := find(res.rows, "floor-none", "floor", size, "open")
		if r == nil || f == nil {
			w(" - |")
			continue
		}
		q := r.res.Latency.P99 / f.res.Latency.P99
		w(" %.3f ms = %.2fx %.3f ms: %s |", r.res.Latency.P99, q, f.res.Latency.P99, verdict(q <= 2))
	}
	w("\n")

	w("| Redis script calls per uncontended admission | exactly 1 per node |")
	for _, size := range sizes {
		var parts []string
		met := true
		for _, mode := range modes {
			r := find(res.rows, "webhook", "semaphore-unique", size, mode)
			if r == nil || r.res.Redis == nil {
				continue
			}
			parts = append(parts, fmt.Sprintf("%.3f (%s)", r.res.Redis.PerReview, mode))
			met = met && r.res.Redis.PerReview == 1
		}
		if len(parts) == 0 {
			w(" - |")
			continue
		}
		w(" %s: %s |", strings.Join(parts, ", "), verdict(met))
	}
	w("\n")

	over, wrong, checked := 0, 0, 0
	rows := res.rows
	if res.burst != nil {
		rows = append(append([]row{}, rows...), *res.burst)
	}
	for _, r := range rows {
		if r.res != nil && r.res.Check != nil {
			checked++
			over += r.res.Check.OverAdmissions + r.res.Check.InspectOverSize
		}
	}
	w("| over-admissions, any scenario | 0 | %d over %d semaphore runs (both sizes, incl. everysec and burst-fill): %s | |\n", over, checked, verdict(over == 0))
	var parts []string
	for _, size := range sizes {
		if r := find(res.rows, "webhook", "semaphore-shared", size, "closed"); r != nil && r.res.Check != nil {
			wrong += r.res.Check.DenialsWhileFree
			parts = append(parts, fmt.Sprintf("%d KiB: %d of %d denials", size>>10, r.res.Check.DenialsWhileFree, r.res.Denied))
		}
	}
	if res.burst != nil && res.burst.res != nil && res.burst.res.Check != nil {
		wrong += res.burst.res.Check.DenialsWhileFree
		parts = append(parts, fmt.Sprintf("burst-fill: %d of %d denials, %d admitted", res.burst.res.Check.DenialsWhileFree, res.burst.res.Denied, res.burst.res.Allowed))
	}
	w("| denials while a slot was free (shared key, c=%d) | 0 | %s: %s | |\n", closedConcurrency, strings.Join(parts, "; "), verdict(wrong == 0))

	peaks, gogcPeaks := map[int]int64{}, map[int]int64{}
	for _, r := range res.rows {
		if r.mem == nil {
			continue
		}
		switch {
		case r.target == "webhook":
			peaks[r.size] = max(peaks[r.size], r.mem.VmHWM)
		case strings.HasPrefix(r.target, "webhook-gogc"):
			gogcPeaks[r.size] = max(gogcPeaks[r.size], r.mem.VmHWM)
		}
	}
	if len(peaks) > 0 {
		w("| webhook RSS, peak under load | <= 25 MiB |")
		for _, size := range sizes {
			w(" %s MiB (the largest VmHWM of the scenarios): %s |", mib(peaks[size]), verdict(peaks[size] <= 25*1024))
		}
		w("\n")
		if len(gogcPeaks) > 0 {
			w("| the same with GOGC=%d (annotated and semaphore-unique, closed loop) | <= 25 MiB |", res.options.gogc)
			for _, size := range sizes {
				w(" %s MiB: %s |", mib(gogcPeaks[size]), verdict(gogcPeaks[size] <= 25*1024))
			}
			w("\n")
		}
	}
	if idle := sidecarRSS(res, "idle"); idle != nil {
		rss, _ := idle.get("VmRSS-KiB")
		anon, _ := idle.get("RssAnon-KiB")
		file, _ := idle.get("RssFile-KiB")
		peak, _ := idle.get("VmHWM-KiB")
		w("| sidecar RSS | <= 8 MiB steady, <= 10 MiB peak | idle with a lease: VmRSS %s MiB (RssAnon %s, RssFile %s), peak %s", mib(int64(rss)), mib(int64(anon)), mib(int64(file)), mib(int64(peak)))
		met := rss <= 8*1024 && peak <= 10*1024
		if gz := sidecarRSS(res, "10rps-64KiB-gzip"); gz != nil {
			grss, _ := gz.get("VmRSS-KiB")
			gpeak, _ := gz.get("VmHWM-KiB")
			w("; 10 scrapes/s of 64 KiB gzip: VmRSS %s MiB, peak %s", mib(int64(grss)), mib(int64(gpeak)))
			met = met && grss <= 8*1024 && gpeak <= 10*1024
		}
		w(": %s | |\n", verdict(met))
	}
	for _, b := range []struct {
		name  string
		bytes int64
	}{{"webhook", res.webhookBytes}, {"sidecar", res.sidecarBytes}} {
		if b.bytes > 0 {
			w("| release binary, %s | <= 20 MB | %d bytes = %.1f MB: %s | |\n", b.name, b.bytes, float64(b.bytes)/1e6, verdict(b.bytes <= 20e6))
		}
	}
	w("\n")
}

func verdict(ok bool) string {
	if ok {
		return "met"
	}
	return "**missed**"
}

func sidecarRSS(res *results, name string) *benchmark {
	for _, m := range res.micro {
		for i := range m.benches {
			if m.benches[i].name == "BenchmarkSidecarRSS/"+name {
				return &m.benches[i]
			}
		}
	}
	return nil
}

func renderMicro(b *strings.Builder, res *results) {
	w := func(format string, args ...any) { fmt.Fprintf(b, format, args...) }
	if len(res.micro) == 0 {
		return
	}
	w("#### Micro-benchmarks\n\n")
	for _, m := range res.micro {
		w("`%s`", m.cmdline)
		if m.err != "" {
			w(" failed: %s", m.err)
		}
		w("\n\n| benchmark | ns/op | B/op | allocs/op | other |\n|---|--:|--:|--:|---|\n")
		for _, bench := range m.benches {
			ns, _ := bench.get("ns/op")
			bop, _ := bench.get("B/op")
			allocs, _ := bench.get("allocs/op")
			var other []string
			for _, mt := range bench.metrics {
				switch mt.unit {
				case "ns/op", "B/op", "allocs/op":
				default:
					other = append(other, fmt.Sprintf("%g %s", mt.value, mt.unit))
				}
			}
			w("| %s | %.0f | %.0f | %.0f | %s |\n", strings.TrimPrefix(bench.name, "Benchmark"), ns, bop, allocs, strings.Join(other, ", "))
		}
		w("\n")
	}
	if d, p := microFind(res, "BenchmarkScrape/direct"), microFind(res, "BenchmarkScrape/proxied"); d != nil && p != nil {
		dn, _ := d.get("ns/op")
		pn, _ := p.get("ns/op")
		w("Sidecar proxy overhead for a 1 MiB exposition: %.0f µs per scrape through the proxy vs %.0f µs direct (+%.0f µs, %.2fx).\n\n",
			pn/1e3, dn/1e3, (pn-dn)/1e3, pn/dn)
	}
}

func microFind(res *results, name string) *benchmark {
	for _, m := range res.micro {
		for i := range m.benches {
			if m.benches[i].name == name {
				return &m.benches[i]
			}
		}
	}
	return nil
}
