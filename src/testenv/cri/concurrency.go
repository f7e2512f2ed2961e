package cri

import (
	"sort"
	"time"
)

// Interval is when one container ran: [Start, End). A zero End means it
// still runs.
type Interval struct {
	Name       string
	Start, End time.Time
}

// Running are the intervals of the containers that started: from the
// runtime's StartedAt to its FinishedAt.
func Running(cs []Container) []Interval {
	var out []Interval
	for _, c := range cs {
		if c.StartedAt.IsZero() {
			continue
		}
		out = append(out, Interval{Name: c.PodNamespace + "/" + c.PodName + "/" + c.Name, Start: c.StartedAt, End: c.FinishedAt})
	}
	return out
}

// Concurrency is how many intervals overlapped.
type Concurrency struct {
	// Max is the largest number of intervals that held at one instant, and
	// MaxAt the first instant it did, with the intervals that held then.
	Max   int
	MaxAt time.Time
	AtMax []string
	// Over is how long, in total, more than the limit held at once.
	Over time.Duration
}

// Overlap sweeps the intervals in time order; an interval still open counts
// until until. An interval ending at the instant another starts does not
// overlap it.
func Overlap(intervals []Interval, limit int, until time.Time) Concurrency {
	type edge struct {
		at    time.Time
		delta int
		idx   int
	}
	var edges []edge
	for i, iv := range intervals {
		end := iv.End
		if end.IsZero() {
			end = until
		}
		if !end.After(iv.Start) {
			continue
		}
		edges = append(edges, edge{iv.Start, +1, i}, edge{end, -1, i})
	}
	sort.SliceStable(edges, func(i, j int) bool {
		if !edges[i].at.Equal(edges[j].at) {
			return edges[i].at.Before(edges[j].at)
		}
		return edges[i].delta < edges[j].delta
	})
	var c Concurrency
	open := map[int]bool{}
	n := 0
	for i, e := range edges {
		n += e.delta
		if e.delta > 0 {
			open[e.idx] = true
		} else {
			delete(open, e.idx)
		}
		if n > limit && i+1 < len(edges) {
			c.Over += edges[i+1].at.Sub(e.at)
		}
		if n > c.Max {
			c.Max, c.MaxAt = n, e.at
			c.AtMax = c.AtMax[:0]
			for idx := range open {
				c.AtMax = append(c.AtMax, intervals[idx].Name)
			}
			sort.Strings(c.AtMax)
		}
	}
	return c
}
