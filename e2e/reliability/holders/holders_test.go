package holders_test

import (
	"testing"
	"time"

	"github.com/kaidotio/prometheus-metrics-proxy-hook/e2e/reliability/holders"
)

var t0 = time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)

func at(ms int) time.Time { return t0.Add(time.Duration(ms) * time.Millisecond) }

func iv(slot int, holder string, from, to int) holders.Interval {
	return holders.Interval{Semaphore: "ns/k", Slot: slot, Holder: holder, From: at(from), To: at(to)}
}

func TestCheck(t *testing.T) {
	cases := []struct {
		name  string
		size  int
		ivs   []holders.Interval
		kinds []holders.Kind
		at    []int
	}{
		{"nothing", 2, nil, nil, nil},
		{"one after another on one slot", 1, []holders.Interval{iv(0, "a", 0, 10), iv(0, "b", 10, 20), iv(0, "c", 20, 30)}, nil, nil},
		{"two slots at once", 2, []holders.Interval{iv(0, "a", 0, 10), iv(1, "b", 5, 15)}, nil, nil},
		{"one holder's windows overlap", 1, []holders.Interval{iv(0, "a", 0, 10), iv(0, "a", 5, 15)}, nil, nil},
		{"empty window ignored", 1, []holders.Interval{iv(0, "a", 0, 10), iv(0, "b", 5, 5)}, nil, nil},
		{"shared slot", 2, []holders.Interval{iv(0, "a", 0, 10), iv(0, "b", 9, 15)},
			[]holders.Kind{holders.SharedSlot}, []int{9}},
		{"over size on distinct slots", 2, []holders.Interval{iv(0, "a", 0, 10), iv(1, "b", 1, 10), iv(2, "c", 2, 10)},
			[]holders.Kind{holders.OverSize}, []int{2}},
		{"one report per excursion", 1, []holders.Interval{iv(0, "a", 0, 30), iv(1, "b", 5, 10), iv(2, "c", 9, 15), iv(1, "d", 40, 50), iv(2, "e", 45, 50)},
			[]holders.Kind{holders.OverSize, holders.OverSize}, []int{5, 45}},
		{"both kinds", 1, []holders.Interval{iv(0, "a", 0, 10), iv(0, "b", 3, 10)},
			[]holders.Kind{holders.OverSize, holders.SharedSlot}, []int{3, 3}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			got, err := holders.Check(tc.ivs, map[string]int{"ns/k": tc.size})
			if err != nil {
				t.Fatal(err)
			}
			if len(got) != len(tc.kinds) {
				t.Fatalf("got %d violations %v, want %d", len(got), got, len(tc.kinds))
			}
			for i, v := range got {
				if v.Kind != tc.kinds[i] || !v.At.Equal(at(tc.at[i])) {
					t.Errorf("violation %d: %s, want %s at %dms", i, v, tc.kinds[i], tc.at[i])
				}
			}
		})
	}
	if _, err := holders.Check([]holders.Interval{iv(0, "a", 0, 1)}, map[string]int{}); err == nil {
		t.Fatal("an interval of an unknown semaphore was accepted")
	}
}

func TestTenure(t *testing.T) {
	cases := []struct {
		name  string
		build func(*holders.Tenure)
		want  [][2]int
		until int
	}{
		{"admitted then released", func(tn *holders.Tenure) {
			tn.Held(at(10), at(3000))
			tn.Release(at(500))
		}, [][2]int{{10, 500}}, 500},
		{"renewals merge into one window", func(tn *holders.Tenure) {
			tn.Held(at(10), at(3000))
			tn.Renewing(at(600), at(2600))
			tn.Held(at(700), at(2600))
			tn.Renewing(at(1300), at(3300))
			tn.Held(at(1400), at(3300))
			tn.Release(at(2000))
		}, [][2]int{{10, 2000}}, 2000},
		{"a renewal shortens the startup lease", func(tn *holders.Tenure) {
			tn.Held(at(10), at(3000))
			tn.Renewing(at(600), at(1600))
			tn.Held(at(700), at(1600))
		}, [][2]int{{10, 1600}}, 1600},
		{"a renewal without an answer shortens it too", func(tn *holders.Tenure) {
			tn.Held(at(10), at(3000))
			tn.Renewing(at(600), at(1600))
		}, [][2]int{{10, 1600}}, 1600},
		{"a gap after validity ran out", func(tn *holders.Tenure) {
			tn.Held(at(10), at(1000))
			tn.Renewing(at(1400), at(2500))
			tn.Held(at(1500), at(2500))
		}, [][2]int{{10, 1000}, {1500, 2500}}, 2500},
		{"a renewal sent after the validity leaves the old window alone", func(tn *holders.Tenure) {
			tn.Held(at(10), at(1000))
			tn.Renewing(at(1400), at(2400))
		}, [][2]int{{10, 1000}}, 1000},
		{"answers after the release do not count", func(tn *holders.Tenure) {
			tn.Held(at(10), at(1000))
			tn.Release(at(400))
			tn.Held(at(450), at(2000))
		}, [][2]int{{10, 400}}, 400},
		{"an answer that came too late proves nothing", func(tn *holders.Tenure) {
			tn.Held(at(1000), at(900))
		}, nil, 0},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			tn := holders.NewTenure("ns/k", 0, "h")
			tc.build(tn)
			got := tn.Intervals()
			if len(got) != len(tc.want) {
				t.Fatalf("got %v, want %v", got, tc.want)
			}
			for i, w := range tc.want {
				if !got[i].From.Equal(at(w[0])) || !got[i].To.Equal(at(w[1])) {
					t.Fatalf("window %d is %v..%v, want %dms..%dms", i, got[i].From, got[i].To, w[0], w[1])
				}
			}
			if tc.until > 0 && !tn.ValidUntil().Equal(at(tc.until)) {
				t.Fatalf("valid until %v, want %dms", tn.ValidUntil(), tc.until)
			}
		})
	}
}

func TestRecorderIsSafeForConcurrentClients(t *testing.T) {
	r := holders.NewRecorder(map[string]int{"ns/k": 4})
	done := make(chan struct{})
	for c := range 4 {
		go func() {
			defer func() { done <- struct{}{} }()
			for i := range 100 {
				tn := holders.NewTenure("ns/k", c, string(rune('a'+c)))
				tn.Held(at(i*10), at(i*10+20))
				tn.Release(at(i*10 + 9))
				r.Add(tn)
			}
		}()
	}
	for range 4 {
		<-done
	}
	v, err := r.Check()
	if err != nil || len(v) != 0 || r.Len() != 400 {
		t.Fatalf("violations %v, err %v, %d intervals; want none and 400", v, err, r.Len())
	}
}
