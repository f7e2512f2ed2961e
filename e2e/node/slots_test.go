package node

import (
	"bufio"
	"context"
	"fmt"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"
)

// redisCLI runs redis-cli in one of the release's Redis pods, with the
// password from the pod's own Secret file (never in argv), and returns its
// output lines.
func (r *release) redisCLI(ctx context.Context, node int, args ...string) ([]string, error) {
	pod := fmt.Sprintf("%s-redis-%d", r.Fullname, node)
	script := `REDISCLI_AUTH="$(cat /run/secrets/redis/password)" exec redis-cli --raw -h 127.0.0.1 -p 6379 "$@"`
	out, err := r.c.Node.Kubectl(ctx, append([]string{"-n", r.Namespace, "exec", pod, "-c", "redis", "--", "sh", "-c", script, "redis-cli"}, args...)...)
	if err != nil {
		return nil, fmt.Errorf("redis-cli %s in %s: %w", strings.Join(args, " "), pod, err)
	}
	var lines []string
	sc := bufio.NewScanner(strings.NewReader(string(out)))
	for sc.Scan() {
		lines = append(lines, sc.Text())
	}
	return lines, nil
}

// semaphoreBase is the Redis key every key of w's semaphore starts with
// (docs/semaphore.md).
func (w workload) semaphoreBase() string { return "pmph:{" + w.Namespace + "/" + w.Key + "}" }

// checkSlotsHeld checks that every pod's holder id (the webhook's
// annotation) is the value of its slot's key on every Redis node.
func (r *release) checkSlotsHeld(t *testing.T, w workload, pods []runningPod) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	args := []string{"MGET"}
	for _, p := range pods {
		if p.Holder == "" || p.Slot == "" {
			t.Fatalf("pod %s carries no holder or slot annotation: holder %q, slot %q", p.Name, p.Holder, p.Slot)
		}
		args = append(args, w.semaphoreBase()+":"+p.Slot)
	}
	for node := range redisReplicas {
		holders, err := r.redisCLI(ctx, node, args...)
		if err != nil {
			t.Fatal(err)
		}
		for i, p := range pods {
			if i >= len(holders) || holders[i] != p.Holder {
				t.Errorf("Redis node %d: slot %s of %s holds %v, want pod %s's holder %s", node, p.Slot, w.semaphoreBase(), at(holders, i), p.Name, p.Holder)
			}
		}
	}
	if t.Failed() {
		t.FailNow()
	}
}

func at(s []string, i int) string {
	if i < len(s) {
		return strconv.Quote(s[i])
	}
	return "nothing"
}

// leaseKey matches the keys of a lease: a slot, a holder's claim, a lease
// record. An acquisition's outcome key (":c:") may outlive the lease.
var leaseKey = regexp.MustCompile(`}:([0-9]+|h:.*|record:.*)$`)

// checkSlotsFree checks that no Redis node keeps a slot, claim or record
// of w's semaphore.
func (r *release) checkSlotsFree(t *testing.T, w workload) {
	t.Helper()
	r.c.timed(t, "every slot free on every Redis node", func(ctx context.Context) error {
		return r.c.poll(ctx, func() (bool, string, error) {
			var held []string
			for node := range redisReplicas {
				keys, err := r.redisCLI(ctx, node, "--scan", "--pattern", w.semaphoreBase()+":*")
				if err != nil {
					return false, err.Error(), nil
				}
				for _, k := range keys {
					if leaseKey.MatchString(k) {
						held = append(held, fmt.Sprintf("node %d: %s", node, k))
					}
				}
			}
			return len(held) == 0, fmt.Sprintf("lease keys left: %v", held), nil
		})
	})
}

// reconcilerCounts are the reconciler's counters summed over the webhook
// pods: its releases (every cause) and its successful sweeps.
type reconcilerCounts struct {
	Releases, Sweeps float64
}

// reconcilerReleases reads the webhook pods' metrics through the API
// server's pod proxy.
func (r *release) reconcilerReleases(t *testing.T) reconcilerCounts {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	counts, err := r.reconcilerCounts(ctx)
	if err != nil {
		t.Fatal(err)
	}
	return counts
}

func (r *release) reconcilerCounts(ctx context.Context) (reconcilerCounts, error) {
	scrapes, err := r.webhookMetrics(ctx, "")
	if err != nil {
		return reconcilerCounts{}, err
	}
	return reconcilerCounts{
		Releases: metricSum(scrapes, "prometheus_metrics_proxy_hook_reconciler_releases_total", nil),
		Sweeps:   metricSum(scrapes, "prometheus_metrics_proxy_hook_reconciler_sweeps_total", map[string]string{"result": "ok"}),
	}, nil
}

// checkNoReconcilerRelease waits until the reconciler has completed a
// sweep that began after the pods were gone, and checks that it released
// nothing since before: the sidecars gave their slots back themselves.
func (r *release) checkNoReconcilerRelease(t *testing.T, before reconcilerCounts) {
	t.Helper()
	var now reconcilerCounts
	r.c.timed(t, "a reconciler sweep after the pods were gone", func(ctx context.Context) error {
		first, err := r.reconcilerCounts(ctx)
		if err != nil {
			return err
		}
		return r.c.poll(ctx, func() (bool, string, error) {
			if now, err = r.reconcilerCounts(ctx); err != nil {
				return false, err.Error(), nil
			}
			// One sweep may have been under way when the last pod went.
			return now.Sweeps >= first.Sweeps+2, fmt.Sprintf("%v successful sweeps, want %v", now.Sweeps, first.Sweeps+2), nil
		})
	})
	if now.Releases != before.Releases {
		t.Errorf("the reconciler released %v leases while the pods terminated: a sidecar did not give its slot back", now.Releases-before.Releases)
	}
}
