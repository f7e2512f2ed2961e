package admission

import (
	"strings"
	"testing"
	"time"
)

func TestGracePeriodFor(t *testing.T) {
	tests := []struct {
		name     string
		own      *int64
		interval time.Duration
		want     int64
	}{
		{"unset counts as Kubernetes' 30 s", nil, time.Minute, 30 + 60 + 10},
		{"own value kept for the app", ptr(int64(120)), time.Minute, 120 + 60 + 10},
		{"zero", ptr(int64(0)), 15 * time.Second, 0 + 15 + 10},
		{"sub-second interval rounds up", ptr(int64(30)), 1500 * time.Millisecond, 30 + 12},
		{"ten minutes", nil, 10 * time.Minute, 30 + 600 + 10},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := gracePeriodFor(tt.own, tt.interval)
			if got != tt.want {
				t.Errorf("gracePeriodFor = %d, want %d", got, tt.want)
			}
			if tt.own != nil && got < *tt.own {
				t.Errorf("gracePeriodFor lowered the pod's own %d to %d", *tt.own, got)
			}
		})
	}
}

func TestScrapeIntervalFor(t *testing.T) {
	tests := []struct {
		raw     string // "" means no annotation
		want    time.Duration
		wantErr string
	}{
		{"", time.Minute, ""},
		{"15s", 15 * time.Second, ""},
		{"1s", time.Second, ""},
		{"10m", 10 * time.Minute, ""},
		{"2m30s", 150 * time.Second, ""},
		{"999ms", 0, `scrape-interval "999ms" must be a Go duration from 1s to 10m`},
		{"10m1s", 0, `scrape-interval "10m1s" must be a Go duration from 1s to 10m`},
		{"60", 0, `scrape-interval "60" must be a Go duration`},
		{"-15s", 0, `scrape-interval "-15s" must be a Go duration`},
		{" 15s", 0, `scrape-interval " 15s" must be a Go duration`},
	}
	for _, tt := range tests {
		t.Run(tt.raw, func(t *testing.T) {
			ann := map[string]string{}
			if tt.raw != "" {
				ann[AnnotationScrapeInterval] = tt.raw
			}
			got, d := scrapeIntervalFor(ann, time.Minute)
			switch {
			case tt.wantErr == "" && d != nil:
				t.Fatalf("denied: %s", d.message)
			case tt.wantErr != "" && (d == nil || !strings.Contains(d.message, tt.wantErr) || d.code != 400):
				t.Fatalf("denial %+v, want a 400 containing %q", d, tt.wantErr)
			case got != tt.want:
				t.Errorf("interval %s, want %s", got, tt.want)
			}
		})
	}
}
