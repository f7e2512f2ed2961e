package node

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"

	"github.com/kaidotio/prometheus-metrics-proxy-hook/src/testenv/countingapp"
)

// These tests need no node: they check the manifests and the parsing the
// node tests rely on.

func TestFinalLine(t *testing.T) {
	for _, tc := range []struct {
		name, log string
		final     float64
		at        string
		wantErr   bool
	}{
		{"final line after the address line",
			"2026-12-05T20:00:00.000000001Z stdout F {\"addr\":\"[::]:8080\"}\n" +
				"2026-12-05T20:01:02.5Z stdout F {\"final\":123,\"lastExposed\":120}\n",
			123, "2026-12-05T20:01:02.5Z", false},
		{"other lines are skipped", "garbage\n2026-12-05T20:00:00Z stderr F oops\n2026-12-05T20:00:01Z stdout F {\"final\":0,\"lastExposed\":0}\n",
			0, "2026-12-05T20:00:01Z", false},
		{"no final line: the app did not exit", "2026-12-05T20:00:00Z stdout F {\"addr\":\":8080\"}\n", 0, "", true},
		{"a final line without a time", "yesterday stdout F {\"final\":1,\"lastExposed\":1}\n", 0, "", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "0.log")
			if err := os.WriteFile(path, []byte(tc.log), 0o644); err != nil {
				t.Fatal(err)
			}
			f, err := os.Open(path)
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			got, err := finalLine(f)
			if tc.wantErr {
				if err == nil {
					t.Fatalf("finalLine = %+v, want an error", got)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			at, _ := time.Parse(time.RFC3339Nano, tc.at)
			if *got.Final != tc.final || !got.at.Equal(at) {
				t.Errorf("finalLine = final %v at %s, want %v at %s", *got.Final, got.at, tc.final, at)
			}
		})
	}
}

func TestMetricSum(t *testing.T) {
	const exposition = `# HELP x_total Help.
# TYPE x_total counter
x_total{cause="a"} 1
x_total{cause="b"} 2.5
# TYPE x_total_other counter
x_total_other{cause="a"} 100
# TYPE y gauge
y 7
`
	parser := expfmt.NewTextParser(model.UTF8Validation)
	families, err := parser.TextToMetricFamilies(strings.NewReader(exposition))
	if err != nil {
		t.Fatal(err)
	}
	scrapes := []map[string]*dto.MetricFamily{families, families}
	for _, tc := range []struct {
		name, metric string
		labels       map[string]string
		want         float64
	}{
		{"every sample of a labelled counter, over every scrape", "x_total", nil, 7},
		{"samples with a label", "x_total", map[string]string{"cause": "b"}, 5},
		{"a gauge without labels", "y", nil, 14},
		{"a prefix of another metric's name is not that metric", "x_total_other", nil, 200},
		{"absent", "z_total", nil, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := metricSum(scrapes, tc.metric, tc.labels); got != tc.want {
				t.Errorf("metricSum(%s, %v) = %v, want %v", tc.metric, tc.labels, got, tc.want)
			}
		})
	}
}

func TestFinalScrapeRunFromEnv(t *testing.T) {
	for _, tc := range []struct {
		name, pods, intervals string
		want                  finalScrapeRun
		wantErr               bool
	}{
		{"defaults: the short run of make test", "", "", finalScrapeRun{Pods: 5, Intervals: []time.Duration{15 * time.Second}}, false},
		{"the full run", "20", "15s, 60s", finalScrapeRun{Pods: 20, Intervals: []time.Duration{15 * time.Second, time.Minute}}, false},
		{"no pods", "0", "", finalScrapeRun{}, true},
		{"a bad interval", "", "15", finalScrapeRun{}, true},
		{"an interval below a second", "", "500ms", finalScrapeRun{}, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Setenv(envFinalScrapePods, tc.pods)
			t.Setenv(envFinalScrapeIntervals, tc.intervals)
			t.Setenv(envFinalScrapeReport, "")
			got, err := finalScrapeRunFromEnv()
			if (err != nil) != tc.wantErr {
				t.Fatalf("error %v, want an error: %v", err, tc.wantErr)
			}
			if err == nil && (got.Pods != tc.want.Pods || len(got.Intervals) != len(tc.want.Intervals)) {
				t.Errorf("got %+v, want %+v", got, tc.want)
			}
			for i := range min(len(got.Intervals), len(tc.want.Intervals)) {
				if got.Intervals[i] != tc.want.Intervals[i] {
					t.Errorf("interval %d is %s, want %s", i, got.Intervals[i], tc.want.Intervals[i])
				}
			}
		})
	}
}

func TestWorkloadManifests(t *testing.T) {
	w := workload{Name: "counter", Namespace: "ns", Key: "k", Size: 3, Replicas: 3, ScrapeInterval: "15s", Tick: 100 * time.Millisecond}
	dep, err := json.Marshal(w.manifest())
	if err != nil {
		t.Fatal(err)
	}
	var d appsv1.Deployment
	if err := json.Unmarshal(dep, &d); err != nil {
		t.Fatal(err)
	}
	if d.Kind != "Deployment" || d.APIVersion != "apps/v1" || *d.Spec.Replicas != 3 ||
		d.Spec.Selector.MatchLabels["app"] != "counter" || d.Spec.Template.Labels["app"] != "counter" {
		t.Errorf("the Deployment is %s", dep)
	}
	pods, err := json.Marshal(w.podsManifest())
	if err != nil {
		t.Fatal(err)
	}
	var list struct {
		Kind  string       `json:"kind"`
		Items []corev1.Pod `json:"items"`
	}
	if err := json.Unmarshal(pods, &list); err != nil {
		t.Fatal(err)
	}
	if list.Kind != "List" || len(list.Items) != 3 {
		t.Fatalf("the pod list is %s", pods)
	}
	for i, p := range list.Items {
		a := p.Annotations
		if p.Kind != "Pod" || p.Name != fmt.Sprintf("counter-%d", i) || a[prefix+"prometheus-metrics-proxy"] != "true" ||
			a[prefix+"scrape-interval"] != "15s" || a["prometheus.io/scrape"] != "true" || a["prometheus.io/port"] != "8080" {
			t.Errorf("pod %d is %+v", i, p.ObjectMeta)
		}
		env := p.Spec.Containers[0].Env
		if len(env) != 1 || env[0].Name != countingapp.EnvTick || env[0].Value != "100ms" {
			t.Errorf("pod %d's app environment is %v, want only the tick", i, env)
		}
	}
}
