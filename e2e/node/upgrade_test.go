package node

import (
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"slices"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"

	"github.com/kaidotio/prometheus-metrics-proxy-hook/src/leaseapi"
	"github.com/kaidotio/prometheus-metrics-proxy-hook/src/semaphore"
	"github.com/kaidotio/prometheus-metrics-proxy-hook/src/testenv/cri"
)

// chartLeaseTTL is the chart's default webhook.leaseTTL, and so its Redis
// StatefulSet's minReadySeconds.
const chartLeaseTTL = 30 * time.Second

// The webhook's metrics the upgrade test reads.
const (
	metricLegacy   = "prometheus_metrics_proxy_hook_lease_api_legacy_requests_total"
	metricReleases = "prometheus_metrics_proxy_hook_reconciler_releases_total"
	metricSweeps   = "prometheus_metrics_proxy_hook_reconciler_sweeps_total"
)

// TestUpgradeFromPreviousRelease installs the previous release's chart
// (previousCommit: no lease records, no lease API tokens, no reconciler),
// lets 2 of 3 pods take the slots of a semaphore of size 2 with its
// sidecars, and runs helm upgrade to this checkout's chart. The old leases
// stay held by the same holders and are renewed by the old sidecars without
// a token; the third pod stays refused; the reconciler releases none of
// them; a holder id alone cannot acquire; and when an old pod is deleted,
// its slot goes to the third pod, which the new release injects with a
// token.
func TestUpgradeFromPreviousRelease(t *testing.T) {
	c := sharedCluster(t)
	previous := c.previousChart(t)
	values := []string{"no-persistence-values.yaml"}
	r := c.installChart(t, installOptions{Name: "upgrade", Chart: previous, CIValues: values})
	r.waitReady(t, true)
	r.checkWebhookImage(t, previousVersion)

	w := workload{Name: "legacy", Namespace: "legacy", Key: "jobs", Size: 2, Replicas: 3}
	name := w.Namespace + "/" + w.Key
	c.appNamespace(t, w.Namespace)
	rec := c.recordContainers(t, w.Namespace)
	w.apply(t, c)
	old := w.waitRunning(t, c)
	holders := legacyPods(t, c, w, old)
	seen := watch(t, r, w, holders)
	w.waitDenials(t, c, old, w.fullDenial(), 1)
	seen.waitLeases(t, r, "the previous release's leases, without records", name, w.Size, func(leases []semaphore.HeldLease) string {
		return sameHolders(leases, holders)
	})

	// The new chart's Redis StatefulSet counts a pod available one lease TTL
	// after it is Ready. Kubernetes replaces every pod that is not yet
	// available at once in a Parallel StatefulSet, so the previous release
	// runs that long first, as a release in use has.
	r.waitRedisAvailable(t, chartLeaseTTL)
	started := time.Now()
	r.upgrade(t, installOptions{Name: r.Name, CIValues: values})
	r.waitRollout(t)
	upgraded := time.Now()
	r.checkWebhookImage(t, c.Chart.Version)
	t.Logf("helm upgrade and both rollouts took %s", upgraded.Sub(started).Round(100*time.Millisecond))

	t.Run("old leases renewed without a token", func(t *testing.T) {
		c.timed(t, "2 renewals of each old lease after the upgrade", func(ctx context.Context) error {
			return c.poll(ctx, seen.guard(func() (bool, string, error) {
				seenNow := seen.observations()
				var state []string
				done := true
				for pod, holder := range holders {
					n := refreshes(seenNow, holder, upgraded)
					state = append(state, fmt.Sprintf("%s: %d", pod, n))
					done = done && n >= 2
				}
				scrapes, err := r.webhookMetrics(ctx, c.Chart.Version)
				if err != nil {
					return false, err.Error(), nil
				}
				renewals := metricSum(scrapes, metricLegacy, map[string]string{"operation": "renew"})
				state = append(state, fmt.Sprintf("legacy renewals accepted %.0f", renewals))
				return done && renewals >= 4, "TTL refreshes since the upgrade " + strings.Join(state, ", "), nil
			}))
		})
		seen.waitLeases(t, r, "the same holders, still without records", name, w.Size, func(leases []semaphore.HeldLease) string {
			return sameHolders(leases, holders)
		})
	})

	t.Run("third pod refused by the upgraded webhook", func(t *testing.T) {
		w.waitDenials(t, c, old, w.fullDenial()+"; its slots are held by a pod admitted by the previous release (slot 0), a pod admitted by the previous release (slot 1)", 2)
	})

	t.Run("a holder id alone cannot acquire", func(t *testing.T) {
		pod := old[0]
		req := leaseapi.AcquireRequest{Lease: leaseapi.Lease{Namespace: w.Namespace, Key: w.Key, Holder: holders[pod]}, Size: w.Size}
		answer, err := r.callLeaseAPI(t.Context(), leaseapi.AcquirePath, req)
		if err != nil {
			t.Fatal(err)
		}
		if answer.Status != 401 || !strings.Contains(answer.Body, `"cause":"missing-token"`) {
			t.Errorf("acquire with %s's holder id and no token answered %d %s; want 401 with cause missing-token", pod, answer.Status, answer.Body)
		}
		t.Logf("acquire with %s's holder id and no token: %d %s", pod, answer.Status, strings.TrimSpace(answer.Body))
		seen.waitLeases(t, r, "the slots untouched by the refused acquire", name, w.Size, func(leases []semaphore.HeldLease) string {
			return sameHolders(leases, holders)
		})
	})

	t.Run("reconciler releases no old lease", func(t *testing.T) {
		c.timed(t, "2 reconciler sweeps that release nothing", func(ctx context.Context) error {
			return c.poll(ctx, seen.guard(func() (bool, string, error) {
				scrapes, err := r.webhookMetrics(ctx, c.Chart.Version)
				if err != nil {
					return false, err.Error(), nil
				}
				released := metricSum(scrapes, metricReleases, nil)
				if released != 0 {
					return false, "", fmt.Errorf("the reconciler released %.0f leases; it must never release a lease of the previous release", released)
				}
				sweeps := metricSum(scrapes, metricSweeps, map[string]string{"result": "ok"})
				return sweeps >= 2, fmt.Sprintf("%.0f successful sweeps, %.0f releases", sweeps, released), nil
			}))
		})
		if n := releaseEvents(t, c, w.Namespace); n != 0 {
			t.Errorf("%d SemaphoreSlotReleased events in namespace %s; the reconciler must release no lease of the previous release", n, w.Namespace)
		}
	})
	if t.Failed() {
		return
	}

	deleted, kept := old[0], old[1]
	seen.letGo(deleted)
	deletedAt := time.Now()
	c.kubectl(t, "-n", w.Namespace, "delete", "pod", deleted, "--wait=false")
	var freed time.Time
	var ttlBefore time.Duration
	c.timed(t, "the deleted pod's slot free in Redis", func(ctx context.Context) error {
		return c.poll(ctx, seen.guard(func() (bool, string, error) {
			for _, o := range seen.observations() {
				if o.LeaseErr != nil {
					continue
				}
				ttl, held := o.holderTTL(holders[deleted])
				if held {
					ttlBefore = ttl
					continue
				}
				if o.At.After(deletedAt) {
					freed = o.At
					return true, "", nil
				}
			}
			return false, fmt.Sprintf("%s's lease still held, %s left", deleted, ttlBefore), nil
		}))
	})
	scrapes, err := r.webhookMetrics(t.Context(), c.Chart.Version)
	if err != nil {
		t.Fatal(err)
	}
	releases := metricSum(scrapes, metricLegacy, map[string]string{"operation": "release"})
	t.Logf("%s's slot was free %s after its delete (seen each second); its lease had %s left when last seen held; legacy releases accepted: %.0f",
		deleted, freed.Sub(deletedAt).Round(100*time.Millisecond), ttlBefore, releases)
	if releases < 1 {
		t.Errorf("no release without a token was accepted: %s's slot ended by its TTL, not by its sidecar's release", deleted)
	}

	var third string
	c.timed(t, "the third pod Running", func(ctx context.Context) error {
		return c.poll(ctx, seen.guard(func() (bool, string, error) {
			running, all, err := w.pods(ctx, c)
			if err != nil {
				return false, err.Error(), nil
			}
			for _, p := range running {
				if !slices.Contains(old, p) {
					third = p
				}
			}
			return third != "", fmt.Sprintf("running %v of pods %v", running, all), nil
		}))
	})
	if t.Failed() {
		return
	}
	t.Logf("the third pod %s ran %s after the delete", third, time.Since(deletedAt).Round(100*time.Millisecond))
	checkAppsAtMostSize(t, c, rec, w, deleted, third)
	thirdHolder := checkNewInjection(t, c, w, third)
	seen.waitLeases(t, r, "the kept old lease and the third pod's recorded one", name, w.Size, func(leases []semaphore.HeldLease) string {
		want := map[string]string{kept: holders[kept]}
		if msg := sameHolders(slices.DeleteFunc(slices.Clone(leases), func(l semaphore.HeldLease) bool { return l.Holder == thirdHolder }), want); msg != "" {
			return msg
		}
		for _, l := range leases {
			if l.Holder == thirdHolder && l.Record != nil && recordNames(l.Record.Pod, third) {
				return ""
			}
		}
		return fmt.Sprintf("no lease of %s with a record naming it among %+v", third, leases)
	})

	t.Run("a recorded lease needs its token", func(t *testing.T) {
		answer, err := r.callLeaseAPI(t.Context(), leaseapi.RenewPath, leaseapi.Lease{Namespace: w.Namespace, Key: w.Key, Slot: slotOf(t, c, w, third), Holder: thirdHolder})
		if err != nil {
			t.Fatal(err)
		}
		if answer.Status != 401 || !strings.Contains(answer.Body, `"cause":"missing-token"`) {
			t.Errorf("renew of %s's recorded lease with no token answered %d %s; want 401 with cause missing-token", third, answer.Status, answer.Body)
		}
	})

	seen.end()
	if err := seen.err(); err != nil {
		t.Error(err)
	}
	logWatched(t, seen.observations())
}

// checkAppsAtMostSize waits until the deleted pod's app exited and the
// third pod's app started, as the container runtime reports them, and
// checks from the runtime's StartedAt and FinishedAt of every app container
// of the workload that at most Size of them ran at any instant.
func checkAppsAtMostSize(t *testing.T, c *cluster, rec *cri.Recorder, w workload, deleted, third string) {
	t.Helper()
	var gone, next cri.Container
	c.waitContainers(t, rec, "the deleted pod's app exited and the third pod's app started", func(cs []cri.Container) (bool, string) {
		for _, ct := range started(cs, "") {
			switch ct.PodName {
			case deleted:
				gone = ct
			case third:
				next = ct
			}
		}
		return gone.Exited() && !next.StartedAt.IsZero(), describe(cs)
	})
	_, conc := appConcurrency(t, rec, w.Size)
	t.Logf("at most %d app containers ran at once on a semaphore of size %d (CRI times); the third pod's app started %s after the deleted pod's app finished",
		conc.Max, w.Size, next.StartedAt.Sub(gone.FinishedAt).Round(time.Millisecond))
	errorIfOver(t, conc, w.Size)
}

// legacyPods checks that the previous release injected the running pods
// (its sidecar image, a regular container, no token volume) and returns
// their holder ids by pod.
func legacyPods(t *testing.T, c *cluster, w workload, running []string) map[string]string {
	t.Helper()
	holders := map[string]string{}
	for _, name := range running {
		p := getPod(t, c, w.Namespace, name)
		var sidecar *corev1.Container
		for i := range p.Spec.Containers {
			if p.Spec.Containers[i].Name == "prometheus-metrics-proxy" {
				sidecar = &p.Spec.Containers[i]
			}
		}
		switch {
		case sidecar == nil:
			t.Fatalf("pod %s has no regular sidecar container: the previous release injects one", name)
		case !strings.HasSuffix(sidecar.Image, ":"+previousVersion):
			t.Fatalf("pod %s's sidecar runs %s, not the previous release's image", name, sidecar.Image)
		case tokenVolume(p) != "":
			t.Fatalf("pod %s has a lease API token volume %s; the previous release injects none", name, tokenVolume(p))
		}
		holders[name] = p.Annotations[prefix+"semaphore-holder"]
		if holders[name] == "" {
			t.Fatalf("pod %s has no holder annotation", name)
		}
	}
	return holders
}

// checkNewInjection checks that the new release injected the pod (a native
// sidecar with the lease API token) and returns its holder id.
func checkNewInjection(t *testing.T, c *cluster, w workload, name string) string {
	t.Helper()
	p := getPod(t, c, w.Namespace, name)
	native := false
	for _, ic := range p.Spec.InitContainers {
		if ic.Name == "prometheus-metrics-proxy" && ic.RestartPolicy != nil && *ic.RestartPolicy == corev1.ContainerRestartPolicyAlways {
			native = true
			if strings.HasSuffix(ic.Image, ":"+previousVersion) {
				t.Errorf("pod %s's sidecar runs the previous release's image %s", name, ic.Image)
			}
		}
	}
	if !native {
		t.Errorf("pod %s has no native sidecar: the upgraded webhook did not inject it", name)
	}
	if tokenVolume(p) == "" {
		t.Errorf("pod %s has no projected lease API token", name)
	}
	holder := p.Annotations[prefix+"semaphore-holder"]
	if holder == "" {
		t.Fatalf("pod %s has no holder annotation", name)
	}
	return holder
}

func getPod(t *testing.T, c *cluster, namespace, name string) *corev1.Pod {
	t.Helper()
	var p corev1.Pod
	if err := json.Unmarshal([]byte(c.kubectl(t, "-n", namespace, "get", "pod", name, "-o", "json")), &p); err != nil {
		t.Fatalf("decoding pod %s: %v", name, err)
	}
	return &p
}

func slotOf(t *testing.T, c *cluster, w workload, name string) int {
	t.Helper()
	var slot int
	if _, err := fmt.Sscan(getPod(t, c, w.Namespace, name).Annotations[prefix+"semaphore-slot"], &slot); err != nil {
		t.Fatalf("pod %s's slot annotation: %v", name, err)
	}
	return slot
}

// tokenVolume names the pod's projected volume with a ServiceAccount token,
// "" when it has none.
func tokenVolume(p *corev1.Pod) string {
	for _, v := range p.Spec.Volumes {
		if v.Projected == nil {
			continue
		}
		for _, s := range v.Projected.Sources {
			if s.ServiceAccountToken != nil && s.ServiceAccountToken.Audience != "" {
				return v.Name
			}
		}
	}
	return ""
}

// sameHolders says how the leases differ from the holders (by pod), each
// without a record as the previous release grants them; "" when they match.
func sameHolders(leases []semaphore.HeldLease, holders map[string]string) string {
	got := map[string]bool{}
	for _, l := range leases {
		if l.Record != nil {
			return fmt.Sprintf("the lease of holder %s on slot %d has record %+v", l.Holder[:8], l.Slot, l.Record)
		}
		got[l.Holder] = true
	}
	for _, pod := range slices.Sorted(maps.Keys(holders)) {
		if !got[holders[pod]] {
			return fmt.Sprintf("%s's lease (holder %s...) is not held on a quorum; leases %+v", pod, holders[pod][:8], leases)
		}
	}
	if len(got) != len(holders) {
		return fmt.Sprintf("%d leases held, want the %d of %v: %+v", len(got), len(holders), slices.Sorted(maps.Keys(holders)), leases)
	}
	return ""
}

// waitLeases waits until check, given the semaphore's leases, says "".
func (wt *watcher) waitLeases(t *testing.T, r *release, what, name string, size int, check func([]semaphore.HeldLease) string) {
	t.Helper()
	r.c.timed(t, what, func(ctx context.Context) error {
		return r.c.poll(ctx, wt.guard(func() (bool, string, error) {
			leases, err := r.leases(ctx, name, size)
			if err != nil {
				return false, err.Error(), nil
			}
			msg := check(leases)
			return msg == "", msg, nil
		}))
	})
}

// checkWebhookImage checks the image tag of the webhook's Deployment.
func (r *release) checkWebhookImage(t *testing.T, tag string) {
	t.Helper()
	image := r.c.kubectl(t, "-n", r.Namespace, "get", "deployment", r.Fullname, "-o", "jsonpath={.spec.template.spec.containers[0].image}")
	if !strings.HasSuffix(image, ":"+tag) {
		t.Fatalf("the webhook runs %s, want the tag %s", image, tag)
	}
}

// waitRollout waits until the webhook Deployment and the Redis StatefulSet
// run their new revision on every replica.
func (r *release) waitRollout(t *testing.T) {
	t.Helper()
	for _, object := range []string{"deployment/" + r.Fullname, "statefulset/" + r.Fullname + "-redis"} {
		r.c.timed(t, "rollout of "+object, func(ctx context.Context) error {
			_, err := r.c.Node.Kubectl(ctx, "-n", r.Namespace, "rollout", "status", object, "--timeout=5m")
			return err
		})
	}
	if t.Failed() {
		t.FailNow()
	}
}

// releaseEvents counts the reconciler's SemaphoreSlotReleased events in a
// namespace.
func releaseEvents(t *testing.T, c *cluster, namespace string) int {
	t.Helper()
	var list corev1.EventList
	if err := c.getJSON(t.Context(), &list, "-n", namespace, "events", "--field-selector", "reason=SemaphoreSlotReleased"); err != nil {
		t.Fatal(err)
	}
	return len(list.Items)
}

// logWatched logs what the watcher saw over the test.
func logWatched(t *testing.T, seen []observation) {
	t.Helper()
	if len(seen) == 0 {
		return
	}
	failed := 0
	for _, o := range seen {
		if o.LeaseErr != nil {
			failed++
		}
	}
	t.Logf("%d looks at the semaphore over %s, %d of them without a Redis quorum", len(seen),
		seen[len(seen)-1].At.Sub(seen[0].At).Round(time.Second), failed)
}

// waitRedisAvailable waits until every Redis pod has been Ready for at
// least d.
func (r *release) waitRedisAvailable(t *testing.T, d time.Duration) {
	t.Helper()
	r.c.timed(t, fmt.Sprintf("Redis pods Ready for %s", d), func(ctx context.Context) error {
		return r.c.poll(ctx, func() (bool, string, error) {
			pods, err := r.pods(ctx, "redis")
			if err != nil {
				return false, err.Error(), nil
			}
			var state []string
			available := 0
			for _, p := range pods {
				for _, cond := range p.Status.Conditions {
					if cond.Type == corev1.PodReady && cond.Status == corev1.ConditionTrue {
						ready := time.Since(cond.LastTransitionTime.Time)
						state = append(state, fmt.Sprintf("%s Ready for %s", p.Name, ready.Round(time.Second)))
						if ready >= d {
							available++
						}
					}
				}
			}
			return available == redisReplicas, strings.Join(state, ", "), nil
		})
	})
}

// recordNames tells whether a lease record's pod field names the pod: its
// name, or the generateName and "*" that admission saw before the API server
// chose the name.
func recordNames(recorded, pod string) bool {
	if prefix, ok := strings.CutSuffix(recorded, "*"); ok {
		return strings.HasPrefix(pod, prefix)
	}
	return recorded == pod
}
