package cri

import (
	"slices"
	"testing"
	"time"
)

func TestOverlap(t *testing.T) {
	t0 := time.Unix(1_700_000_000, 0)
	at := func(s float64) time.Time { return t0.Add(time.Duration(s * float64(time.Second))) }
	for _, tc := range []struct {
		name      string
		intervals []Interval
		limit     int
		until     time.Time
		wantMax   int
		wantAt    time.Time
		wantAtMax []string
		wantOver  time.Duration
	}{
		{name: "none", limit: 1},
		{
			name:      "one after the other, touching",
			intervals: []Interval{{"a", at(0), at(10)}, {"b", at(10), at(20)}},
			limit:     1, wantMax: 1, wantAt: at(0), wantAtMax: []string{"a"},
		},
		{
			name:      "overlap of 2.5 s over a limit of 1",
			intervals: []Interval{{"a", at(0), at(10)}, {"b", at(7.5), at(20)}},
			limit:     1, wantMax: 2, wantAt: at(7.5), wantAtMax: []string{"a", "b"}, wantOver: 2500 * time.Millisecond,
		},
		{
			name:      "still running counts until until",
			intervals: []Interval{{"a", at(0), time.Time{}}, {"b", at(5), at(8)}},
			limit:     1, until: at(30), wantMax: 2, wantAt: at(5), wantAtMax: []string{"a", "b"}, wantOver: 3 * time.Second,
		},
		{
			name:      "three within a limit of 2, then a third over it",
			intervals: []Interval{{"a", at(0), at(10)}, {"b", at(1), at(4)}, {"c", at(4), at(12)}, {"d", at(9), at(11)}},
			limit:     2, wantMax: 3, wantAt: at(9), wantAtMax: []string{"a", "c", "d"}, wantOver: time.Second,
		},
		{
			name:      "same name twice (a restarted container) counts twice",
			intervals: []Interval{{"a", at(0), at(3)}, {"a", at(2), at(5)}},
			limit:     1, wantMax: 2, wantAt: at(2), wantAtMax: []string{"a", "a"}, wantOver: time.Second,
		},
		{
			name:      "empty interval ignored",
			intervals: []Interval{{"a", at(3), at(3)}, {"b", at(0), at(5)}},
			limit:     1, wantMax: 1, wantAt: at(0), wantAtMax: []string{"b"},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := Overlap(tc.intervals, tc.limit, tc.until)
			if got.Max != tc.wantMax || !got.MaxAt.Equal(tc.wantAt) || !slices.Equal(got.AtMax, tc.wantAtMax) || got.Over != tc.wantOver {
				t.Errorf("Overlap = max %d at %v %v, over %s; want max %d at %v %v, over %s",
					got.Max, got.MaxAt, got.AtMax, got.Over, tc.wantMax, tc.wantAt, tc.wantAtMax, tc.wantOver)
			}
		})
	}
}

func TestRunningSkipsContainersNotStarted(t *testing.T) {
	start := time.Unix(100, 0)
	got := Running([]Container{
		{PodNamespace: "ns", PodName: "p", Name: "app", StartedAt: start},
		{PodNamespace: "ns", PodName: "q", Name: "app"},
	})
	if len(got) != 1 || got[0].Name != "ns/p/app" || !got[0].Start.Equal(start) || !got[0].End.IsZero() {
		t.Errorf("Running = %+v, want only ns/p/app from %v, still running", got, start)
	}
}
