package node

import (
	"fmt"
	"runtime"
	"slices"
	"strings"
	"time"

	"github.com/kaidotio/prometheus-metrics-proxy-hook/src/testenv/docsection"
)

// finalScrapeSection is the generated part of docs/reliability.md.
var finalScrapeSection = docsection.For("final-scrape", "make final-scrape")

// renderFinalScrape writes the distribution of a run as Markdown.
func renderFinalScrape(batches []terminationBatch, started time.Time, loadStart, loadEnd string) string {
	var b strings.Builder
	w := func(format string, args ...any) { fmt.Fprintf(&b, format, args...) }
	w("Run of %s: %d cores, load average (1/5/15 min) %s at the start and %s at the end; ",
		started.UTC().Format("2006-01-02 15:04 MST"), runtime.NumCPU(), loadStart, loadEnd)
	w("the app counts every %s and drains for %s after SIGTERM; the sidecar fetches every %s; ", appTick, appDrain, finalFetchInterval)
	w("each pod declares the Prometheus scrape interval, and all pods of a row are deleted with one `kubectl delete`. ")
	w("Every column but the first three is min / median / max; the pod's disappearance is polled every second.\n\n")
	w("| scrape interval | pods | misses | ticks short: min / median / max | counting time lost | final sample stored after the app's exit | app's exit after the delete | pod gone after the app's exit |\n")
	w("|---|---|---|---|---|---|---|---|\n")
	for _, bt := range batches {
		var short, after, exit, gone []float64
		misses := 0
		for _, x := range bt.Terminations {
			if x.miss() {
				misses++
			}
			if x.StoredErr == nil {
				short = append(short, x.missed())
				after = append(after, x.Stored.Time.Sub(x.ExitedAt).Seconds())
			}
			exit = append(exit, x.ExitedAt.Sub(x.Deleted).Seconds())
			gone = append(gone, x.GoneAt.Sub(x.ExitedAt).Seconds())
		}
		lost := make([]float64, len(short))
		for i, s := range short {
			lost[i] = s * appTick.Seconds()
		}
		w("| %s | %d | %d | %s | %s | %s | %s | %s |\n", bt.Interval, len(bt.Terminations), misses,
			spread(short, "%.0f"), spread(lost, "%.1f s"), spread(after, "%.1f s"), spread(exit, "%.1f s"), spread(gone, "%.1f s"))
	}
	w("\nTicks short, per termination (value: how many):\n\n")
	for _, bt := range batches {
		counts := map[float64]int{}
		var values []float64
		for _, x := range bt.Terminations {
			if x.StoredErr != nil {
				continue
			}
			if counts[x.missed()] == 0 {
				values = append(values, x.missed())
			}
			counts[x.missed()]++
		}
		slices.Sort(values)
		parts := make([]string, len(values))
		for i, v := range values {
			parts[i] = fmt.Sprintf("%.0f: %d", v, counts[v])
		}
		w("- %s: %s\n", bt.Interval, strings.Join(parts, ", "))
	}
	return b.String()
}

// spread is "min / median / max" of values.
func spread(values []float64, format string) string {
	if len(values) == 0 {
		return "-"
	}
	s := slices.Clone(values)
	slices.Sort(s)
	f := func(v float64) string { return fmt.Sprintf(format, v) }
	return f(s[0]) + " / " + f(s[len(s)/2]) + " / " + f(s[len(s)-1])
}
