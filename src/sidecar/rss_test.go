package sidecar_test

import (
	"io"
	"net/http"
	"testing"
	"time"

	"github.com/kaidotio/prometheus-metrics-proxy-hook/src/testenv/sidecartest"
)

// BenchmarkSidecarRSS measures the memory of the release build of the
// sidecar binary as it runs in a pod: keeping a lease through the
// webhook, idle, and under 10 scrapes/s for 10 s with Prometheus' headers.
// The figures are KiB from /proc/<pid>/status: VmRSS at the end, VmHWM
// (peak), and RSS split into anonymous memory (heap, stacks) and file pages
// (the binary's mapped code and data, shared by every process that runs the
// same file). Each case runs once (it takes longer than the
// default -benchtime, so b.N stays 1); ns/op is meaningless.
func BenchmarkSidecarRSS(b *testing.B) {
	const prometheusAccept = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1"
	cases := []struct {
		name     string
		padBytes int
		encoding string
		rate     int
	}{
		{"idle", 0, "", 0},
		{"10rps-64KiB-gzip", 64 << 10, "gzip", 10},
		{"10rps-1MiB-gzip", 1 << 20, "gzip", 10},
		{"10rps-1MiB-identity", 1 << 20, "", 10},
	}
	bin := sidecartest.ReleaseBinary(b)
	for _, c := range cases {
		b.Run(c.name, func(b *testing.B) {
			f := newFixture(b, 30*time.Second)
			injected := f.admit(b, "rss", 1)
			a := startApp(b, appOpts{Tick: 10 * time.Millisecond, PadBytes: c.padBytes})
			sc := sidecartest.Start(b, sidecartest.Options{Binary: bin, Env: sidecarEnv(injected, a.URL(), grace, true)})
			if !sc.WaitLog("info", "Renewed the semaphore lease.", 10*time.Second) {
				b.Fatal("the first renewal was not logged")
			}
			client := &http.Client{Transport: &http.Transport{DisableCompression: true}, Timeout: 5 * time.Second}
			var bodyBytes int64
			if c.rate == 0 {
				// Idle: what the pod pays between scrapes.
				time.Sleep(2 * time.Second)
			} else {
				tick := time.NewTicker(time.Second / time.Duration(c.rate))
				for range 10 * c.rate {
					<-tick.C
					req, _ := http.NewRequest(http.MethodGet, sc.URL()+"/metrics", nil)
					req.Header.Set("Accept", prometheusAccept)
					if c.encoding != "" {
						req.Header.Set("Accept-Encoding", c.encoding)
					}
					resp, err := client.Do(req)
					if err != nil {
						b.Fatal(err)
					}
					n, err := io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
					if err != nil || resp.StatusCode != http.StatusOK {
						b.Fatalf("scrape: %s, %v", resp.Status, err)
					}
					bodyBytes = n
				}
				tick.Stop()
			}
			m, err := sc.Memory()
			if err != nil {
				b.Fatal(err)
			}
			b.ReportMetric(float64(m.VmRSS), "VmRSS-KiB")
			b.ReportMetric(float64(m.VmHWM), "VmHWM-KiB")
			b.ReportMetric(float64(m.RssAnon), "RssAnon-KiB")
			b.ReportMetric(float64(m.RssFile), "RssFile-KiB")
			b.ReportMetric(float64(bodyBytes)/1024, "body-KiB")
		})
	}
}
