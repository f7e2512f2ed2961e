package leaseserver_test

import (
	"context"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/kaidotio/prometheus-metrics-proxy-hook/src/leaseapi"
	"github.com/kaidotio/prometheus-metrics-proxy-hook/src/leaseauth"
	"github.com/kaidotio/prometheus-metrics-proxy-hook/src/leaseserver"
	"github.com/kaidotio/prometheus-metrics-proxy-hook/src/testenv/kubetest"
)

// benchPods is how many pods renew at once, each with its own lease and
// token, as the sidecars of one busy semaphore.
const benchPods = 16

// runs names each run's pods and semaphore apart.
var runs atomic.Int64

// BenchmarkRenew measures renewals through the lease API over TLS on three
// real Redis nodes, with token checks against the real API server (cached,
// or a TokenReview per call) and without any (the behaviour before tokens).
// cpu-ms/renewal is the CPU of this process (server, client and TLS on
// both ends) per renewal, apiserver-cpu-ms/renewal the API server's (its
// TokenReviews and pod GETs; etcd is not counted).
func BenchmarkRenew(b *testing.B) {
	e, _ := newKube(b)
	ns := e.namespace(b, "bench")
	type sidecar struct {
		client *leaseapi.Client
		lease  leaseapi.Lease
	}
	for _, mode := range []struct {
		name string
		auth bool
		ttl  time.Duration
	}{{"no token checks", false, 0}, {"tokens cached", true, 0}, {"tokens uncached", true, -1}} {
		b.Run(mode.name, func(b *testing.B) {
			srv := inProcess(b, e, func(c *leaseserver.Config) {
				c.PodRate = -1
				if !mode.auth {
					c.Auth, c.Pods = nil, nil
					return
				}
				v, err := leaseauth.New(leaseauth.Config{Client: e.kube, Audience: audience, CacheTTL: mode.ttl})
				if err != nil {
					b.Fatal(err)
				}
				c.Auth, c.Pods = v, leaseserver.NewPodCache(c.Pods, 5*time.Second)
			})
			run := strconv.Itoa(int(runs.Add(1)))
			sidecars := make([]sidecar, benchPods)
			for i := range sidecars {
				p, l := e.member(b, ns, "pod-"+run+"-"+strconv.Itoa(i), "key-"+run, benchPods)
				client := clientOf(b, srv)
				file := b.TempDir() + "/token"
				writeFile(b, file, e.token(b, p, audience))
				client.UseTokenFile(file)
				sidecars[i] = sidecar{client: client, lease: l}
			}
			var next atomic.Int64
			b.SetParallelism(benchPods)
			before, apiBefore := cpuTime(), apiServerCPU(b, e.cp)
			b.ResetTimer()
			b.RunParallel(func(pb *testing.PB) {
				s := sidecars[int(next.Add(1)-1)%benchPods]
				for pb.Next() {
					if _, err := s.client.Renew(context.Background(), s.lease); err != nil {
						b.Error(err)
						return
					}
				}
			})
			b.StopTimer()
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "renewals/s")
			b.ReportMetric(float64(cpuTime()-before)/float64(time.Millisecond)/float64(b.N), "cpu-ms/renewal")
			b.ReportMetric(float64(apiServerCPU(b, e.cp)-apiBefore)/float64(time.Millisecond)/float64(b.N), "apiserver-cpu-ms/renewal")
		})
	}
}

func cpuTime() time.Duration {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// apiServerCPU is the CPU time kube-apiserver used so far, found in /proc
// by its working directory under the control plane's.
func apiServerCPU(b *testing.B, cp *kubetest.ControlPlane) time.Duration {
	b.Helper()
	want := "--cert-dir=" + filepath.Join(cp.Dir, "kube-apiserver")
	procs, _ := filepath.Glob("/proc/[0-9]*/cmdline")
	for _, f := range procs {
		cmdline, err := os.ReadFile(f)
		if err != nil || !strings.Contains(string(cmdline), want) {
			continue
		}
		stat, err := os.ReadFile(filepath.Join(filepath.Dir(f), "stat"))
		if err != nil {
			continue
		}
		// Fields after the parenthesised command: utime and stime are the
		// 12th and 13th, in clock ticks of 10 ms.
		fields := strings.Fields(string(stat[strings.LastIndexByte(string(stat), ')')+1:]))
		utime, _ := strconv.ParseInt(fields[11], 10, 64)
		stime, _ := strconv.ParseInt(fields[12], 10, 64)
		return time.Duration(utime+stime) * 10 * time.Millisecond
	}
	b.Fatal("kube-apiserver is not in /proc")
	return 0
}
