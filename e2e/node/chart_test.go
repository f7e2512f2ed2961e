// Package node runs the chart on a real node (src/testenv/kubenode): the
// images are built without Docker and served by a loopback registry through
// containerd's mirrors for their upstream hosts, the packaged chart is pushed
// to the same registry and installed from it with the real helm, and opted-in
// pods run under the kubelet with the injected sidecar.
//
// The package's tests share one node (main_test.go); each installs its own
// release and app namespace and removes them when it ends.
package node

import (
	"context"
	"fmt"
	"slices"
	"testing"
)

// TestChartOnTheNode installs the chart from the registry on a real node,
// waits for its pods, runs helm test, and gates a Deployment of 4 replicas
// on a semaphore of size 2.
func TestChartOnTheNode(t *testing.T) {
	c := sharedCluster(t)
	r := c.installChart(t, installOptions{Name: "pmph", CIValues: []string{"no-persistence-values.yaml"}})
	r.waitReady(t, true)
	t.Run("helm test", r.helmTest)
	t.Run("semaphore of 2 gates 4 replicas", func(t *testing.T) {
		checkSemaphore(t, c, workload{Name: "workers", Namespace: "workers", Key: "workers", Size: 2, Replicas: 4})
	})
}

// checkSemaphore applies the workload's Deployment in a restricted
// namespace: exactly Size pods run while the ReplicaSet's creations keep
// being denied, and deleting one lets another run, never more than Size at
// once.
func checkSemaphore(t *testing.T, c *cluster, w workload) {
	c.appNamespace(t, w.Namespace)
	w.apply(t, c)
	first := w.waitRunning(t, c)
	w.waitDenials(t, c, first, w.fullDenial(), 2)
	if t.Failed() {
		return
	}
	deleted := first[0]
	c.kubectl(t, "-n", w.Namespace, "delete", "pod", deleted, "--wait=false")
	most := 0
	c.timed(t, "another pod Running after a delete", func(ctx context.Context) error {
		return c.poll(ctx, func() (bool, string, error) {
			running, all, err := w.pods(ctx, c)
			if err != nil {
				return false, err.Error(), nil
			}
			most = max(most, len(running))
			if len(running) > w.Size {
				return false, "", fmt.Errorf("%d pods run on a semaphore of size %d: %v", len(running), w.Size, running)
			}
			next := slices.ContainsFunc(running, func(p string) bool { return !slices.Contains(first, p) })
			return next, fmt.Sprintf("running %v of pods %v, first %v", running, all, first), nil
		})
	})
	t.Logf("at most %d pods ran at once while %s terminated and its successor started", most, deleted)
}
