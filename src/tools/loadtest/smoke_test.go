package loadtest_test

import (
	"context"
	"crypto/tls"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/kaidotio/prometheus-metrics-proxy-hook/src/testenv/redistest"
	"github.com/kaidotio/prometheus-metrics-proxy-hook/src/testenv/webhooktest"
	"github.com/kaidotio/prometheus-metrics-proxy-hook/src/tools/loadtest"
)

func template(t *testing.T, o loadtest.PodOptions, v *loadtest.Vars, size int) *loadtest.Template {
	t.Helper()
	pod, err := loadtest.Pad(loadtest.Pod(o), size, v)
	if err != nil {
		t.Fatal(err)
	}
	tmpl, err := loadtest.Compile(loadtest.Review(pod, false))
	if err != nil {
		t.Fatal(err)
	}
	return tmpl
}

// TestFloorOpenLoop runs the open loop against the floor webhook, in
// process: every review allowed, a latency for each, from the send and
// from the schedule.
func TestFloorOpenLoop(t *testing.T) {
	for _, decode := range []loadtest.FloorDecode{loadtest.FloorJSON, loadtest.FloorNone} {
		t.Run(string(decode), func(t *testing.T) {
			certs := webhooktest.NewCertDir(t)
			cert, err := tls.LoadX509KeyPair(certs.Dir+"/tls.crt", certs.Dir+"/tls.key")
			if err != nil {
				t.Fatal(err)
			}
			ln, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			srv := loadtest.FloorServer(cert, decode)
			go func() { _ = loadtest.ServeFloor(srv, ln) }()
			t.Cleanup(func() { _ = srv.Close() })

			vars := loadtest.Vars{Run: "floor", Namespace: "load"}
			res, err := loadtest.Run(context.Background(), loadtest.Config{
				URL: "https://" + ln.Addr().String() + "/mutate", CAPEM: certs.CA.PEM,
				Mode: loadtest.ModeOpen, Rate: 200, Count: 60, Warmup: 50 * time.Millisecond,
				Body: template(t, loadtest.PodOptions{}, &vars, 2048), Vars: vars, Expect: loadtest.ExpectAllowed,
			})
			if err != nil {
				t.Fatal(err)
			}
			if !res.OK || res.Errors+res.Invalid+res.Unexpected != 0 || res.Allowed != res.Requests {
				t.Fatalf("result %+v", res)
			}
			if res.Measured != 60 || res.Latency.Count != 60 || res.LatencyScheduled == nil || res.LatencyScheduled.Count != 60 {
				t.Errorf("measured %d, latencies %d, from schedule %+v; want 60 each", res.Measured, res.Latency.Count, res.LatencyScheduled)
			}
			if res.WarmupRequests == 0 || res.Requests != res.Measured+res.WarmupRequests {
				t.Errorf("requests %d = measured %d + warm-up %d?", res.Requests, res.Measured, res.WarmupRequests)
			}
			if !strings.Contains(res.Target, "timeout=5s") {
				t.Errorf("target %s has no API server timeout", res.Target)
			}
		})
	}
}

// TestWebhookSmoke drives the real webhook binary and Redis nodes in a
// closed loop through every path, and checks that the tool's own
// accounting agrees with the answers and with the nodes.
func TestWebhookSmoke(t *testing.T) {
	cluster := redistest.StartT(t, 3)
	wh := webhooktest.Start(t, webhooktest.Options{Redis: cluster.Addrs(), RedisPassword: cluster.Password,
		// -race slows everything; the smoke test checks accounting, not
		// timeouts.
		Args: []string{"--redis-timeout=2s"}})
	redis := &loadtest.RedisConfig{Addrs: cluster.Addrs(), Password: cluster.Password}

	tests := []struct {
		name    string
		pod     loadtest.PodOptions
		vars    loadtest.Vars
		expect  loadtest.Expect
		release loadtest.ReleasePolicy
		check   func(t *testing.T, res *loadtest.Result)
	}{
		{name: "not annotated", expect: loadtest.ExpectAllowed, check: func(t *testing.T, res *loadtest.Result) {
			if res.Patched != 0 || res.Allowed != res.Requests {
				t.Errorf("allowed %d patched %d of %d", res.Allowed, res.Patched, res.Requests)
			}
		}},
		{name: "annotated", pod: loadtest.PodOptions{Annotated: true}, expect: loadtest.ExpectPatched, check: func(t *testing.T, res *loadtest.Result) {
			if res.Patched != res.Requests {
				t.Errorf("patched %d of %d", res.Patched, res.Requests)
			}
		}},
		{
			name: "unique keys", pod: loadtest.PodOptions{Annotated: true, KeyMode: loadtest.KeyUnique},
			vars: loadtest.Vars{KeyMode: loadtest.KeyUnique, Size: 3}, expect: loadtest.ExpectPatched,
			check: func(t *testing.T, res *loadtest.Result) {
				c := res.SemaphoreCheck
				if c == nil || c.Keys != res.Requests || c.Admitted != res.Requests || c.MaxCertainlyHeld != 1 || c.Inspected != res.Requests {
					t.Errorf("semaphore check %+v for %d requests", c, res.Requests)
				}
				// One acquire script per node per admission, nothing else.
				if res.Redis == nil || res.Redis.ScriptCallsPerReview != 1 {
					t.Errorf("redis %+v, want exactly 1 script call per node per admission", res.Redis)
				}
			},
		},
		{
			name: "shared key with releases", pod: loadtest.PodOptions{Annotated: true, KeyMode: loadtest.KeyShared},
			vars:   loadtest.Vars{KeyMode: loadtest.KeyShared, SharedKey: "smoke", Size: 50},
			expect: loadtest.ExpectPatchedOrFull, release: loadtest.ReleasePolicy{Above: 10},
			check: func(t *testing.T, res *loadtest.Result) {
				c := res.SemaphoreCheck
				if c == nil || c.Keys != 1 || c.Inspected != 1 {
					t.Fatalf("semaphore check %+v", c)
				}
				// Every admission beyond 10 held releases the oldest.
				if c.Released != res.Allowed-10 || c.Held["smoke"] != 10 {
					t.Errorf("released %d of %d admissions, %d held at the end; want all but 10", c.Released, res.Allowed, c.Held["smoke"])
				}
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			vars := tt.vars
			vars.Run, vars.Namespace = "smoke", "load"
			res, err := loadtest.Run(context.Background(), loadtest.Config{
				URL: wh.MutateURL(), CAPEM: wh.CAPEM(), Mode: loadtest.ModeClosed, Concurrency: 4, Count: 120,
				Body: template(t, tt.pod, &vars, 2048), Vars: vars, Expect: tt.expect,
				Release: tt.release, Redis: redis, Log: testLog{t},
			})
			if err != nil {
				t.Fatal(err)
			}
			if res.Errors+res.Invalid+res.Unexpected != 0 || res.Allowed+res.Denied != res.Requests || res.Measured != 120 {
				t.Fatalf("result %+v", res)
			}
			if c := res.SemaphoreCheck; c != nil && (c.OverAdmissions != 0 || c.InspectMismatch+c.InspectOverSize+c.InspectErrors != 0 ||
				c.ReleaseErrors+c.ReleaseNotHeld != 0) {
				t.Errorf("semaphore check %+v", c)
			}
			tt.check(t, res)
		})
	}
}

type testLog struct{ t *testing.T }

func (l testLog) Write(p []byte) (int, error) {
	l.t.Log(strings.TrimSpace(string(p)))
	return len(p), nil
}
