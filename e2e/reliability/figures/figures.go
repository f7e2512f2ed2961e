// Package figures tallies the outcomes and latencies of the operations a
// fault-injection run makes, per fault, and prints them as the Markdown
// table docs/reliability.md quotes.
package figures

import (
	"fmt"
	"maps"
	"slices"
	"strings"
	"sync"
	"time"
)

// Book collects observations; it is safe for concurrent use.
type Book struct {
	mu       sync.Mutex
	cells    map[key]*cell
	injected map[string]int
}

type key struct{ fault, op string }

type cell struct {
	latencies []time.Duration
	ok        int
	outcomes  map[string]int
}

// NewBook returns an empty book.
func NewBook() *Book {
	return &Book{cells: map[key]*cell{}, injected: map[string]int{}}
}

// Observe records one operation op (e.g. "admission") that ran while fault
// was active: whether it had the answer the run expects (ok), how it ended
// (outcome, e.g. "allowed", "full", "no quorum"), and how long it took.
func (b *Book) Observe(fault, op string, ok bool, outcome string, d time.Duration) {
	b.mu.Lock()
	defer b.mu.Unlock()
	c := b.cells[key{fault, op}]
	if c == nil {
		c = &cell{outcomes: map[string]int{}}
		b.cells[key{fault, op}] = c
	}
	c.latencies = append(c.latencies, d)
	c.outcomes[outcome]++
	if ok {
		c.ok++
	}
}

// Inject counts one injection of fault.
func (b *Book) Inject(fault string) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.injected[fault]++
}

// Injected is how many times fault was injected.
func (b *Book) Injected(fault string) int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.injected[fault]
}

// Row is the summary of one operation under one fault.
type Row struct {
	Fault, Op     string
	Count, OK     int
	Outcomes      map[string]int
	P50, P99, Max time.Duration
}

// Rate is the share of operations with the expected answer, 0 to 1.
func (r Row) Rate() float64 {
	if r.Count == 0 {
		return 0
	}
	return float64(r.OK) / float64(r.Count)
}

// Rows summarises every fault and operation, in the order of faults given
// first (the schedule's order), then any other fault by name.
func (b *Book) Rows(order ...string) []Row {
	b.mu.Lock()
	defer b.mu.Unlock()
	rank := map[string]int{}
	for i, f := range order {
		rank[f] = i + 1
	}
	keys := slices.Collect(maps.Keys(b.cells))
	slices.SortFunc(keys, func(a, c key) int {
		ra, rc := rank[a.fault], rank[c.fault]
		switch {
		case ra != rc && ra != 0 && rc != 0:
			return ra - rc
		case ra != rc:
			return rc - ra // ranked faults before unranked ones
		case a.fault != c.fault:
			return strings.Compare(a.fault, c.fault)
		}
		return strings.Compare(a.op, c.op)
	})
	rows := make([]Row, 0, len(keys))
	for _, k := range keys {
		c := b.cells[k]
		lat := slices.Clone(c.latencies)
		slices.Sort(lat)
		rows = append(rows, Row{
			Fault: k.fault, Op: k.op, Count: len(lat), OK: c.ok, Outcomes: maps.Clone(c.outcomes),
			P50: Percentile(lat, 50), P99: Percentile(lat, 99), Max: Percentile(lat, 100),
		})
	}
	return rows
}

// Percentile is the nearest-rank percentile p (0 < p <= 100) of sorted.
func Percentile(sorted []time.Duration, p float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	rank := int(p/100*float64(len(sorted))+0.999999) - 1
	return sorted[min(max(rank, 0), len(sorted)-1)]
}

// Markdown prints the rows as a table: fault, injections, operation,
// count, success rate, outcomes, p50, p99 and max latency.
func (b *Book) Markdown(order ...string) string {
	var sb strings.Builder
	sb.WriteString("| fault | injected | operation | count | expected answer | outcomes | p50 | p99 | max |\n")
	sb.WriteString("|---|---:|---|---:|---:|---|---:|---:|---:|\n")
	for _, r := range b.Rows(order...) {
		outs := slices.Sorted(maps.Keys(r.Outcomes))
		parts := make([]string, len(outs))
		for i, o := range outs {
			parts[i] = fmt.Sprintf("%s %d", o, r.Outcomes[o])
		}
		fmt.Fprintf(&sb, "| %s | %d | %s | %d | %.1f%% | %s | %s | %s | %s |\n",
			r.Fault, b.Injected(r.Fault), r.Op, r.Count, 100*r.Rate(), strings.Join(parts, ", "),
			ms(r.P50), ms(r.P99), ms(r.Max))
	}
	return sb.String()
}

func ms(d time.Duration) string {
	return fmt.Sprintf("%.1f ms", float64(d)/float64(time.Millisecond))
}
