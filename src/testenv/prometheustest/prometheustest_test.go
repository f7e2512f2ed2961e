package prometheustest

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

func TestScrapeAndQuery(t *testing.T) {
	var scrapes atomic.Int64
	target := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n := scrapes.Add(1)
		fmt.Fprintf(w, "# TYPE test_scrapes_total counter\ntest_scrapes_total %d\n", n)
	}))
	defer target.Close()

	p := Start(t, Options{Config: StaticConfig(Job{
		Name: "app", Interval: 200 * time.Millisecond, Targets: []string{strings.TrimPrefix(target.URL, "http://")},
	})})
	p.WaitForTargetsUp(t, 30*time.Second, "app")
	got := p.WaitFor(t, 30*time.Second, `test_scrapes_total{job="app"}`, func(v []Sample) bool { return len(v) == 1 && v[0].Value >= 3 })
	if got[0].Labels["job"] != "app" {
		t.Errorf("labels %v", got[0].Labels)
	}

	ctx := context.Background()
	series, err := p.Samples(ctx, `test_scrapes_total{job="app"}`, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	if len(series) != 1 || len(series[0].Points) < 3 {
		t.Fatalf("samples %+v", series)
	}
	for i := 1; i < len(series[0].Points); i++ {
		a, b := series[0].Points[i-1], series[0].Points[i]
		if b.Value <= a.Value || !b.Time.After(a.Time) {
			t.Errorf("samples out of order: %+v then %+v", a, b)
		}
	}

	targets, err := p.Targets(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(targets) != 1 || targets[0].Health != "up" || targets[0].Job != "app" || targets[0].ScrapeURL != target.URL+"/metrics" {
		t.Errorf("targets %+v", targets)
	}

	// Reload with no jobs: the target disappears.
	if err := p.Reload(ctx, StaticConfig()); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		targets, err := p.Targets(ctx)
		if err == nil && len(targets) == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the target is still active after the reload: %+v, %v", targets, err)
		}
		time.Sleep(100 * time.Millisecond)
	}

	if err := p.Stop(); err != nil {
		t.Fatal(err)
	}
	if _, err := p.Query(ctx, "up"); err == nil {
		t.Error("a stopped server answered")
	}
}

func TestStartFailsClearly(t *testing.T) {
	tests := []struct {
		name string
		opts Options
		want string
	}{
		{"bad config", Options{Config: "scrape_configs: [nonsense"}, "exited during start-up"},
		{"missing binary", Options{Binary: "no-such-prometheus"}, "install the Debian package prometheus"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s, err := start(t.TempDir(), tt.opts)
			if err == nil {
				_ = s.Stop()
				t.Fatal("start succeeded")
			}
			if !strings.Contains(err.Error(), tt.want) {
				t.Errorf("error %q lacks %q", err, tt.want)
			}
		})
	}
}

func TestStaticConfig(t *testing.T) {
	got := StaticConfig(Job{Name: "a", Interval: time.Second, MetricsPath: "/m", Targets: []string{"127.0.0.1:1", "127.0.0.1:2"}},
		Job{Name: "b", Interval: 1500 * time.Millisecond, Timeout: time.Second, Targets: []string{"127.0.0.1:3"}})
	want := `scrape_configs:
  - job_name: "a"
    scrape_interval: 1000ms
    scrape_timeout: 1000ms
    metrics_path: "/m"
    static_configs:
      - targets:
          - "127.0.0.1:1"
          - "127.0.0.1:2"
  - job_name: "b"
    scrape_interval: 1500ms
    scrape_timeout: 1000ms
    metrics_path: "/metrics"
    static_configs:
      - targets:
          - "127.0.0.1:3"
`
	if got != want {
		t.Errorf("got\n%s\nwant\n%s", got, want)
	}
}
