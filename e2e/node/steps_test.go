package node

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
)

// poll calls check every pollInterval until it says done, returns an error,
// or ctx ends; the error then carries check's last description.
func (c *cluster) poll(ctx context.Context, check func() (done bool, state string, err error)) error {
	tick := time.NewTicker(pollInterval)
	defer tick.Stop()
	for {
		done, state, err := check()
		if err != nil || done {
			return err
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%w; last: %s", ctx.Err(), state)
		case <-tick.C:
		}
	}
}

// timed runs step with a 5-minute deadline, logs how long it took and fails
// t with its error.
func (c *cluster) timed(t *testing.T, name string, step func(ctx context.Context) error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Minute)
	defer cancel()
	started := time.Now()
	if err := step(ctx); err != nil {
		t.Errorf("%s after %s: %v", name, since(started), err)
		c.dump(t)
		return
	}
	t.Logf("%s took %s", name, since(started))
}

// dump logs what the cluster looked like when a step failed.
func (c *cluster) dump(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	for _, args := range [][]string{
		{"get", "pods", "-A", "-o", "wide"},
		{"get", "events", "-A", "--sort-by=.lastTimestamp"},
	} {
		out, err := c.Node.Kubectl(ctx, args...)
		t.Logf("kubectl %s: %v\n%s", strings.Join(args, " "), err, out)
	}
}

// kubectl runs kubectl against the node and fails t when it fails.
func (c *cluster) kubectl(t *testing.T, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	out, err := c.Node.Kubectl(ctx, args...)
	if err != nil {
		t.Fatalf("%v", err)
	}
	return string(out)
}

// waitReplicasReady waits until a Deployment or StatefulSet has every
// replica Ready, and stops t when it does not.
func (c *cluster) waitReplicasReady(t *testing.T, namespace, kind, name string) {
	t.Helper()
	c.timed(t, kind+" "+name+" Ready", func(ctx context.Context) error {
		return c.poll(ctx, func() (bool, string, error) {
			out, err := c.Node.Kubectl(ctx, "-n", namespace, "get", kind, name, "-o",
				"jsonpath={.status.readyReplicas}/{.spec.replicas}")
			got := strings.TrimSpace(string(out))
			ready, desired, _ := strings.Cut(got, "/")
			return err == nil && ready != "" && ready == desired, fmt.Sprintf("%s %s ready/desired %q", kind, name, got), nil
		})
	})
	if t.Failed() {
		t.FailNow()
	}
}

// getJSON runs `kubectl get ARGS -o json` and decodes the answer into into
// (a typed list).
func (c *cluster) getJSON(ctx context.Context, into any, args ...string) error {
	out, err := c.Node.Kubectl(ctx, append(append([]string{"get"}, args...), "-o", "json")...)
	if err != nil {
		return err
	}
	if err := json.Unmarshal(out, into); err != nil {
		return fmt.Errorf("decoding kubectl get %s: %w", strings.Join(args, " "), err)
	}
	return nil
}

// countEvents adds up the counts of a namespace's events that the field
// selector picks and whose message match accepts.
func (c *cluster) countEvents(ctx context.Context, ns, selector string, match func(message string) bool) (int, error) {
	var list corev1.EventList
	if err := c.getJSON(ctx, &list, "-n", ns, "events", "--field-selector", selector); err != nil {
		return 0, err
	}
	n := 0
	for _, ev := range list.Items {
		if match(ev.Message) {
			n += max(int(ev.Count), 1)
		}
	}
	return n, nil
}

// appNamespace creates a namespace for a test's pods, enforcing the
// restricted Pod Security Standard as the chart's users run it, and deletes
// it when t ends.
func (c *cluster) appNamespace(t *testing.T, name string) {
	t.Helper()
	c.kubectl(t, "create", "namespace", name)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
		defer cancel()
		c.deleteNamespace(ctx, t, name)
	})
	c.kubectl(t, "label", "namespace", name, "pod-security.kubernetes.io/enforce=restricted", "pod-security.kubernetes.io/enforce-version=latest")
}

// deleteNamespace deletes a namespace without waiting out its pods' grace
// periods (the sidecar's final-scrape wait would make that minutes), and
// waits until it is gone.
func (c *cluster) deleteNamespace(ctx context.Context, t *testing.T, name string) {
	if out, err := c.Node.Kubectl(ctx, "-n", name, "delete", "pods", "--all", "--grace-period=0", "--force", "--ignore-not-found"); err != nil {
		t.Errorf("deleting the pods of %s: %v\n%s", name, err, out)
	}
	if out, err := c.Node.Kubectl(ctx, "delete", "namespace", name, "--ignore-not-found", "--timeout=4m"); err != nil {
		t.Errorf("deleting namespace %s: %v\n%s", name, err, out)
	}
}

func since(t time.Time) time.Duration { return time.Since(t).Round(100 * time.Millisecond) }
