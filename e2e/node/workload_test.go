package node

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"

	"github.com/kaidotio/prometheus-metrics-proxy-hook/src/testenv/countingapp"
	"github.com/kaidotio/prometheus-metrics-proxy-hook/src/testenv/images"
)

// workload is a Deployment of the metrics app, opted in on a semaphore.
type workload struct {
	Name, Namespace, Key string
	Size, Replicas       int
	// ScrapeInterval is the pod's scrape-interval annotation; empty means 5s.
	ScrapeInterval string
	// Drain is how long the app keeps running after SIGTERM (a Go
	// duration); empty leaves the image's default.
	Drain string
	// StartupTimeout is the pod's semaphore-startup-timeout annotation;
	// empty leaves the webhook's default.
	StartupTimeout string
	// Strategy is the Deployment's spec.strategy as YAML flow; empty leaves
	// Kubernetes' default rolling update.
	Strategy string
	// SchedulingGate, when set, keeps every pod Pending until the gate is
	// removed from it.
	SchedulingGate string
}

// apply creates or updates the workload's Deployment.
func (w workload) apply(t *testing.T, c *cluster) {
	t.Helper()
	manifest := filepath.Join(t.TempDir(), w.Name+".yaml")
	if err := os.WriteFile(manifest, []byte(w.manifest()), 0o644); err != nil {
		t.Fatal(err)
	}
	c.kubectl(t, "-n", w.Namespace, "apply", "-f", manifest)
}

// pods lists the workload's pods (sorted by name) and those of them with a
// container running.
func (w workload) pods(ctx context.Context, c *cluster) (running, all []string, err error) {
	out, err := c.node.Kubectl(ctx, "-n", w.Namespace, "get", "pods", "-l", "app="+w.Name, "-o", "json")
	if err != nil {
		return nil, nil, err
	}
	var list corev1.PodList
	if err := json.Unmarshal(out, &list); err != nil {
		return nil, nil, fmt.Errorf("decoding the pod list: %w", err)
	}
	for _, p := range list.Items {
		all = append(all, p.Name)
		if p.Status.Phase == corev1.PodRunning && anyRunning(p.Status) {
			running = append(running, p.Name)
		}
	}
	slices.Sort(all)
	slices.Sort(running)
	return running, all, nil
}

func anyRunning(s corev1.PodStatus) bool {
	for _, c := range append(slices.Clone(s.InitContainerStatuses), s.ContainerStatuses...) {
		if c.State.Running != nil {
			return true
		}
	}
	return false
}

// fullDenials counts the FailedCreate events of the namespace's ReplicaSets
// that carry the webhook's denial of the workload's full semaphore.
func (w workload) fullDenials(ctx context.Context, c *cluster) (int, error) {
	out, err := c.node.Kubectl(ctx, "-n", w.Namespace, "get", "events", "--field-selector", "reason=FailedCreate,involvedObject.kind=ReplicaSet", "-o", "json")
	if err != nil {
		return 0, err
	}
	var list corev1.EventList
	if err := json.Unmarshal(out, &list); err != nil {
		return 0, fmt.Errorf("decoding the event list: %w", err)
	}
	want := fmt.Sprintf("semaphore %q is full (%d/%d slots held)", w.Namespace+"/"+w.Key, w.Size, w.Size)
	n := 0
	for _, ev := range list.Items {
		if strings.Contains(ev.Message, want) {
			n += max(int(ev.Count), 1)
		}
	}
	return n, nil
}

// manifest is the Deployment, restricted-PSS compliant as users write it.
func (w workload) manifest() string {
	interval := w.ScrapeInterval
	if interval == "" {
		interval = "5s"
	}
	var spec, annotations, podSpec, env strings.Builder
	if w.Strategy != "" {
		fmt.Fprintf(&spec, "  strategy: %s\n", w.Strategy)
	}
	if w.StartupTimeout != "" {
		fmt.Fprintf(&annotations, "        %ssemaphore-startup-timeout: %s\n", prefix, w.StartupTimeout)
	}
	if w.SchedulingGate != "" {
		fmt.Fprintf(&podSpec, "      schedulingGates: [{name: %s}]\n", w.SchedulingGate)
	}
	if w.Drain != "" {
		fmt.Fprintf(&env, "        env: [{name: %s, value: %q}]\n", countingapp.EnvDrain, w.Drain)
	}
	return fmt.Sprintf(`apiVersion: apps/v1
kind: Deployment
metadata:
  name: %[1]s
spec:
  replicas: %[2]d
%[8]s  selector:
    matchLabels: {app: %[1]s}
  template:
    metadata:
      labels: {app: %[1]s}
      annotations:
        %[3]sprometheus-metrics-proxy: "true"
        %[3]ssemaphore-key: %[4]s
        %[3]ssemaphore-size: "%[5]d"
        %[3]sscrape-interval: %[6]s
        prometheus.io/port: "8080"
%[9]s    spec:
%[10]s      securityContext:
        runAsNonRoot: true
        seccompProfile: {type: RuntimeDefault}
      containers:
      - name: app
        image: %[7]s
%[11]s        ports:
        - {name: metrics, containerPort: 8080}
        securityContext:
          allowPrivilegeEscalation: false
          readOnlyRootFilesystem: true
          capabilities: {drop: [ALL]}
`, w.Name, w.Replicas, prefix, w.Key, w.Size, interval, images.MetricsAppRef,
		spec.String(), annotations.String(), podSpec.String(), env.String())
}
