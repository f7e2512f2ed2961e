package node

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"

	"github.com/kaidotio/prometheus-metrics-proxy-hook/src/testenv/countingapp"
	"github.com/kaidotio/prometheus-metrics-proxy-hook/src/testenv/docsection"
	"github.com/kaidotio/prometheus-metrics-proxy-hook/src/testenv/prometheustest"
	"github.com/kaidotio/prometheus-metrics-proxy-hook/src/testenv/promk8s"
)

// The size of a final-scrape run: `make test` runs the defaults (5 pods at
// 15 s), `make final-scrape` the full one and has the figures written into
// docs/reliability.md.
const (
	envFinalScrapePods      = "PMPH_FINAL_SCRAPE_PODS"      // pods deleted at once per scrape interval; default 5
	envFinalScrapeIntervals = "PMPH_FINAL_SCRAPE_INTERVALS" // comma-separated Prometheus scrape intervals; default 15s
	envFinalScrapeReport    = "PMPH_FINAL_SCRAPE_REPORT"    // a file whose final-scrape section gets the distribution
)

const (
	// appTick and appDrain: the app counts every tick, also while it drains
	// after SIGTERM, and then exits; the drain fits the pod's own 30 s.
	appTick  = 100 * time.Millisecond
	appDrain = 10 * time.Second
	// finalFetchInterval is the sidecar's --final-fetch-interval default.
	finalFetchInterval = 500 * time.Millisecond
	// prometheusScrapeTimeout is Prometheus' default scrape_timeout.
	prometheusScrapeTimeout = 10 * time.Second
	// ownGracePeriod is Kubernetes' default terminationGracePeriodSeconds;
	// the workload sets none.
	ownGracePeriod = 30 * time.Second
	// maxMissedTicks is what docs/sidecar.md promises, in the app's ticks:
	// the last stored sample is the app's state at the last fetch, at most
	// one fetch interval and the fetch's own time before the app stopped
	// answering. One tick for the tick under way and two for the fetch's
	// own time on a loaded machine, as in the process-level test.
	maxMissedTicks = float64(finalFetchInterval/appTick) + 3
)

// finalScrapeRun is the size of a run.
type finalScrapeRun struct {
	Pods      int
	Intervals []time.Duration
	Report    string
}

func finalScrapeRunFromEnv() (finalScrapeRun, error) {
	run := finalScrapeRun{Pods: 5, Intervals: []time.Duration{15 * time.Second}, Report: os.Getenv(envFinalScrapeReport)}
	if v := os.Getenv(envFinalScrapePods); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 || n > 50 {
			return run, fmt.Errorf("%s %q must be a number of pods from 1 to 50", envFinalScrapePods, v)
		}
		run.Pods = n
	}
	if v := os.Getenv(envFinalScrapeIntervals); v != "" {
		run.Intervals = nil
		for _, s := range strings.Split(v, ",") {
			d, err := time.ParseDuration(strings.TrimSpace(s))
			if err != nil || d < time.Second || d > 10*time.Minute {
				return run, fmt.Errorf("%s %q must list Go durations from 1s to 10m, separated by commas", envFinalScrapeIntervals, v)
			}
			run.Intervals = append(run.Intervals, d)
		}
	}
	return run, nil
}

// TestFinalScrapeOnTheNode deletes opted-in pods of the counting app at
// once, scraped by a real Prometheus that discovers pods (role pod, the
// conventional prometheus.io/* relabelling, pod IP targets), and compares
// the last sample Prometheus stored for each pod's counter with the value
// the app logged at its exit. It also checks that every pod's semaphore slot
// was given back by its sidecar: gone from Redis, and not released by the
// reconciler.
func TestFinalScrapeOnTheNode(t *testing.T) {
	run, err := finalScrapeRunFromEnv()
	if err != nil {
		t.Fatal(err)
	}
	c := sharedCluster(t)
	// 500 ms per Redis node: on a loaded 2-core machine the default 50 ms
	// denies a pod now and then for want of a quorum.
	r := c.installChart(t, installOptions{Name: "fscrape", CIValues: []string{"no-persistence-values.yaml"},
		Set: []string{"webhook.redisTimeout=500ms"}})
	r.waitReady(t, true)
	started, loadAtStart := time.Now(), loadAverage()
	var batches []terminationBatch
	for _, interval := range run.Intervals {
		t.Run("scrape interval "+interval.String(), func(t *testing.T) {
			batches = append(batches, terminateAtOnce(t, c, r, interval, run.Pods))
		})
	}
	if run.Report == "" {
		return
	}
	if len(batches) != len(run.Intervals) {
		t.Errorf("%s: not written, since a batch did not finish", run.Report)
		return
	}
	section := renderFinalScrape(batches, started, loadAtStart, loadAverage())
	if err := docsection.Rewrite(run.Report, finalScrapeSection, "", section); err != nil {
		t.Error(err)
	}
	t.Logf("wrote the distribution into %s:\n%s", run.Report, section)
}

// terminateAtOnce runs one batch: n pods declaring scrape interval
// interval, a Prometheus scraping them at that interval, all of them
// deleted with one kubectl delete.
func terminateAtOnce(t *testing.T, c *cluster, r *release, interval time.Duration, n int) terminationBatch {
	ns := fmt.Sprintf("final-%ds", int(interval.Seconds()))
	c.appNamespace(t, ns)
	prom := promk8s.StartPodDiscovering(t, c.Node.KubeconfigPath, promk8s.Options{
		ScrapeInterval: interval, ScrapeTimeout: min(interval, prometheusScrapeTimeout), Namespaces: []string{ns},
	})
	w := workload{Name: "counter", Namespace: ns, Key: "final", Size: n, Replicas: n,
		ScrapeInterval: interval.String(), Tick: appTick, Drain: appDrain}
	w.applyPods(t, c)
	pods := waitAppsRunning(t, c, w)
	logs := openAppLogs(t, c, ns, pods)
	// docs/sidecar.md, "The grace period": own + ceil(scrape interval + 10 s).
	grace := ownGracePeriod + interval + 10*time.Second
	for _, p := range pods {
		if p.Grace != grace {
			t.Errorf("pod %s has a grace period of %s, want %s (its own 30 s, the scrape interval and 10 s)", p.Name, p.Grace, grace)
		}
	}
	waitScraped(t, c, prom, ns, pods, 2*interval+time.Minute)
	r.checkSlotsHeld(t, w, pods)
	releasesBefore := r.reconcilerReleases(t)

	names := make([]string, len(pods))
	for i, p := range pods {
		names[i] = p.Name
	}
	deleted := time.Now()
	c.kubectl(t, append([]string{"-n", ns, "delete", "pod", "--wait=false"}, names...)...)
	gone := waitPodsGone(t, c, w, grace+time.Minute)
	b := terminationBatch{Interval: interval, Took: since(deleted)}
	t.Logf("%d pods deleted at once were gone after %s", n, b.Took)

	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	for _, p := range pods {
		x := termination{Pod: p.Name, Deleted: deleted, GoneAt: gone[p.Name]}
		final, err := finalLine(logs[p.Name])
		if err != nil {
			t.Errorf("pod %s: %v", p.Name, err)
			continue
		}
		x.Final, x.LastExposed, x.ExitedAt = *final.Final, *final.LastExposed, final.at
		x.Stored, x.StoredErr = prom.LastPodSample(ctx, countingapp.CounterName, ns, p.Name, 15*time.Minute)
		b.Terminations = append(b.Terminations, x)
		checkTermination(t, x)
	}
	r.checkSlotsFree(t, w)
	r.checkNoReconcilerRelease(t, releasesBefore)
	return b
}

// waitScraped waits until Prometheus has scraped every pod through its
// sidecar successfully; on timeout it logs what the first pod's containers
// said.
func waitScraped(t *testing.T, c *cluster, prom *promk8s.Prometheus, ns string, pods []runningPod, bound time.Duration) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), bound)
	defer cancel()
	started := time.Now()
	err := c.poll(ctx, func() (bool, string, error) {
		targets, err := prom.Targets(ctx)
		if err != nil {
			return false, err.Error(), nil
		}
		up := map[string]bool{}
		var states []string
		for _, tg := range targets {
			if tg.Labels["namespace"] == ns {
				up[tg.Labels["pod"]] = up[tg.Labels["pod"]] || tg.Health == "up"
				states = append(states, fmt.Sprintf("%s %s %s", tg.Labels["pod"], tg.Health, tg.LastError))
			}
		}
		for _, p := range pods {
			if !up[p.Name] {
				return false, strings.Join(states, "; "), nil
			}
		}
		return true, "", nil
	})
	if err != nil {
		for _, args := range [][]string{
			{"-n", ns, "logs", pods[0].Name, "-c", "prometheus-metrics-proxy", "--tail", "30"},
			{"-n", ns, "logs", pods[0].Name, "-c", "app"},
			{"-n", ns, "get", "pod", pods[0].Name, "-o", "yaml"},
		} {
			out, kerr := c.Node.Kubectl(context.Background(), args...)
			t.Logf("kubectl %s: %v\n%s", strings.Join(args, " "), kerr, out)
		}
		t.Fatalf("Prometheus did not scrape every pod through its sidecar within %s: %v", bound, err)
	}
	t.Logf("every pod was scraped through its sidecar within %s", since(started))
}

// checkTermination holds one pod's last stored sample to what the docs
// promise.
func checkTermination(t *testing.T, x termination) {
	t.Helper()
	if x.StoredErr != nil {
		t.Errorf("pod %s: no sample stored: %v", x.Pod, x.StoredErr)
		return
	}
	t.Logf("pod %s: app final value %v (exited %s after the delete), last exposed %v, last stored sample %v (%+.1fs after the exit): %v ticks of %s short; pod gone %s after the exit",
		x.Pod, x.Final, x.ExitedAt.Sub(x.Deleted).Round(100*time.Millisecond), x.LastExposed, x.Stored.Value,
		x.Stored.Time.Sub(x.ExitedAt).Seconds(), x.missed(), appTick, x.GoneAt.Sub(x.ExitedAt).Round(100*time.Millisecond))
	if x.Stored.Value > x.LastExposed {
		t.Errorf("pod %s: the last stored sample %v is beyond the largest value the app exposed, %v", x.Pod, x.Stored.Value, x.LastExposed)
	}
	if x.miss() {
		t.Errorf("pod %s: the last stored sample %v is %v ticks short of the app's final value %v, want 0 to %v (one fetch interval of %s and the fetch's own time)",
			x.Pod, x.Stored.Value, x.missed(), x.Final, maxMissedTicks, finalFetchInterval)
	}
}

// termination is what one pod's deletion left.
type termination struct {
	Pod string
	// Final and LastExposed are what the app logged at its exit, at
	// ExitedAt (the runtime's timestamp of that log line).
	Final, LastExposed float64
	ExitedAt           time.Time
	// Stored is the last sample Prometheus stored for the pod's counter.
	Stored    prometheustest.Point
	StoredErr error
	// Deleted is when kubectl delete ran, GoneAt when the pod object was
	// first seen gone.
	Deleted, GoneAt time.Time
}

func (x termination) missed() float64 { return x.Final - x.Stored.Value }

// miss says the final scrape did not bring the app's state at its exit
// within the promise.
func (x termination) miss() bool {
	return x.StoredErr != nil || x.missed() < 0 || x.missed() > maxMissedTicks
}

type terminationBatch struct {
	Interval     time.Duration
	Terminations []termination
	Took         time.Duration
}

// runningPod is a pod of the batch with its app running.
type runningPod struct {
	Name, UID, Holder string
	Slot              string
	AppRestarts       int
	// Grace is the pod's terminationGracePeriodSeconds, as the webhook set it.
	Grace time.Duration
}

// waitAppsRunning waits until every pod of w runs its app container and
// returns them, sorted by name.
func waitAppsRunning(t *testing.T, c *cluster, w workload) []runningPod {
	t.Helper()
	var pods []runningPod
	c.timed(t, fmt.Sprintf("%d apps running", w.Replicas), func(ctx context.Context) error {
		return c.poll(ctx, func() (bool, string, error) {
			list, err := w.podList(ctx, c)
			if err != nil {
				return false, err.Error(), nil
			}
			pods = pods[:0]
			for _, p := range list.Items {
				for _, s := range p.Status.ContainerStatuses {
					if s.Name == "app" && s.State.Running != nil {
						pods = append(pods, runningPod{Name: p.Name, UID: string(p.UID), Holder: p.Annotations[prefix+"semaphore-holder"],
							Slot: p.Annotations[prefix+"semaphore-slot"], AppRestarts: int(s.RestartCount), Grace: gracePeriod(p.Spec)})
					}
				}
			}
			return len(pods) == w.Replicas, fmt.Sprintf("%d of %d pods run their app", len(pods), w.Replicas), nil
		})
	})
	if t.Failed() {
		t.FailNow()
	}
	return pods
}

func gracePeriod(spec corev1.PodSpec) time.Duration {
	if spec.TerminationGracePeriodSeconds == nil {
		return 0
	}
	return time.Duration(*spec.TerminationGracePeriodSeconds) * time.Second
}

// openAppLogs opens each app container's log file while the pod runs: the
// kubelet removes it with the pod, and an open file stays readable.
func openAppLogs(t *testing.T, c *cluster, ns string, pods []runningPod) map[string]*os.File {
	t.Helper()
	logs := map[string]*os.File{}
	for _, p := range pods {
		f, err := os.Open(c.Node.ContainerLogPath(ns, p.Name, p.UID, "app", p.AppRestarts))
		if err != nil {
			t.Fatalf("the app's log of pod %s: %v", p.Name, err)
		}
		t.Cleanup(func() { f.Close() })
		logs[p.Name] = f
	}
	return logs
}

// appFinal is the app's final line with the runtime's timestamp.
type appFinal struct {
	countingapp.Line
	at time.Time
}

// finalLine reads the app's final-value line from a container log in the
// CRI format ("<RFC 3339 time> stdout F <text>").
func finalLine(f *os.File) (appFinal, error) {
	if _, err := f.Seek(0, 0); err != nil {
		return appFinal{}, err
	}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.SplitN(sc.Text(), " ", 4)
		if len(fields) != 4 {
			continue
		}
		l, ok := countingapp.ParseLine([]byte(fields[3]))
		if !ok || l.Final == nil || l.LastExposed == nil {
			continue
		}
		at, err := time.Parse(time.RFC3339Nano, fields[0])
		if err != nil {
			return appFinal{}, fmt.Errorf("the app's final line has no time: %q", sc.Text())
		}
		return appFinal{Line: l, at: at}, nil
	}
	if err := sc.Err(); err != nil {
		return appFinal{}, fmt.Errorf("reading the app's log %s: %w", f.Name(), err)
	}
	return appFinal{}, fmt.Errorf("the app's log %s has no final value line", f.Name())
}

// waitPodsGone waits until no pod of w is left and returns when each pod
// was first seen gone.
func waitPodsGone(t *testing.T, c *cluster, w workload, bound time.Duration) map[string]time.Time {
	t.Helper()
	gone := map[string]time.Time{}
	ctx, cancel := context.WithTimeout(t.Context(), bound)
	defer cancel()
	err := c.poll(ctx, func() (bool, string, error) {
		list, err := w.podList(ctx, c)
		if err != nil {
			return false, err.Error(), nil
		}
		left := map[string]bool{}
		for _, p := range list.Items {
			left[p.Name] = true
		}
		for i := range w.Replicas {
			name := fmt.Sprintf("%s-%d", w.Name, i)
			if _, seen := gone[name]; !seen && !left[name] {
				gone[name] = time.Now()
			}
		}
		return len(list.Items) == 0, fmt.Sprintf("%d pods left", len(list.Items)), nil
	})
	if err != nil {
		c.dump(t)
		t.Fatalf("the deleted pods were not gone within %s: %v", bound, err)
	}
	return gone
}

// loadAverage is /proc/loadavg's three load averages.
func loadAverage() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "unknown"
	}
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return "unknown"
	}
	return strings.Join(f[:3], " ")
}
