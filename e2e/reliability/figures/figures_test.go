package figures_test

import (
	"strings"
	"testing"
	"time"

	"github.com/kaidotio/prometheus-metrics-proxy-hook/e2e/reliability/figures"
)

func TestPercentile(t *testing.T) {
	ms := func(n ...int) []time.Duration {
		out := make([]time.Duration, len(n))
		for i, v := range n {
			out[i] = time.Duration(v) * time.Millisecond
		}
		return out
	}
	hundred := make([]int, 100)
	for i := range hundred {
		hundred[i] = i + 1
	}
	cases := []struct {
		name   string
		sorted []time.Duration
		p      float64
		want   time.Duration
	}{
		{"empty", nil, 99, 0},
		{"one", ms(7), 99, 7 * time.Millisecond},
		{"median of four", ms(1, 2, 3, 4), 50, 2 * time.Millisecond},
		{"p99 of 1..100", ms(hundred...), 99, 99 * time.Millisecond},
		{"max", ms(1, 2, 3), 100, 3 * time.Millisecond},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if got := figures.Percentile(tc.sorted, tc.p); got != tc.want {
				t.Fatalf("got %s, want %s", got, tc.want)
			}
		})
	}
}

func TestBook(t *testing.T) {
	b := figures.NewBook()
	b.Inject("node killed")
	b.Inject("node killed")
	for i := range 10 {
		b.Observe("node killed", "admission", i < 9, map[bool]string{true: "allowed", false: "no quorum"}[i < 9], time.Duration(i+1)*time.Millisecond)
	}
	b.Observe("none", "admission", true, "allowed", time.Millisecond)
	b.Observe("zz unranked", "renew", true, "renewed", time.Millisecond)
	rows := b.Rows("none", "node killed")
	if len(rows) != 3 || rows[0].Fault != "none" || rows[1].Fault != "node killed" || rows[2].Fault != "zz unranked" {
		t.Fatalf("rows out of order: %+v", rows)
	}
	r := rows[1]
	if r.Count != 10 || r.OK != 9 || r.Rate() != 0.9 || r.Outcomes["no quorum"] != 1 || r.P99 != 10*time.Millisecond {
		t.Fatalf("row %+v", r)
	}
	md := b.Markdown("none", "node killed")
	for _, want := range []string{"| node killed | 2 | admission | 10 | 90.0% | allowed 9, no quorum 1 | 5.0 ms | 10.0 ms | 10.0 ms |"} {
		if !strings.Contains(md, want) {
			t.Fatalf("table lacks %q:\n%s", want, md)
		}
	}
}
