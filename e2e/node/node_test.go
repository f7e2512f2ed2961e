// Package node runs the chart on a real node (src/testenv/kubenode): the
// images are built without Docker and served by a loopback registry through
// containerd's mirrors for their upstream hosts, the packaged chart is pushed
// to the same registry and installed from it with the real helm, and opted-in
// pods run under the kubelet with the injected sidecar.
package node

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"

	"github.com/kaidotio/prometheus-metrics-proxy-hook/src/testenv/images"
	"github.com/kaidotio/prometheus-metrics-proxy-hook/src/testenv/kubenode"
	"github.com/kaidotio/prometheus-metrics-proxy-hook/src/testenv/kubetest"
	"github.com/kaidotio/prometheus-metrics-proxy-hook/src/testenv/registry"
	"github.com/kaidotio/prometheus-metrics-proxy-hook/src/testenv/testpki"
)

const (
	release      = "pmph"
	releaseNS    = "pmph-system"
	fullname     = "pmph-prometheus-metrics-proxy-hook"
	tlsSecret    = "pmph-tls"
	appNS        = "workers"
	semaphoreKey = "workers"
	prefix       = "prometheus-metrics-proxy-hook.kaidotio.github.io/"
	pollInterval = time.Second
)

// env is the node and what the test installs on it.
type env struct {
	node  *kubenode.Node
	helm  registry.Helm
	chart registry.Chart
	dir   string
}

// TestChartOnTheNode installs the chart from the registry on a real node,
// waits for its pods, runs helm test, and gates a Deployment of 4 replicas
// on a semaphore of size 2.
func TestChartOnTheNode(t *testing.T) {
	if testing.Short() {
		t.Skip("the chart on the node starts a node and builds its images; skipped with -short")
	}
	if reason := kubenode.Unsupported(); reason != "" {
		t.Skip("kubenode: " + reason)
	}
	e := start(t)
	t.Run("install", func(t *testing.T) { e.install(t) })
	if t.Failed() {
		return
	}
	// Only the image test: the quorum test fetches with `wget -T`, on which
	// Debian's busybox-static 1.35 in the Redis image segfaults (Alpine's
	// busybox in the real image does not).
	t.Run("helm test", func(t *testing.T) {
		e.timed(t, "helm test", func(ctx context.Context) error {
			_, err := e.helm.Run(ctx, "test", release, "--namespace", releaseNS, "--kubeconfig", e.node.KubeconfigPath,
				"--timeout", "5m", "--filter", "name="+fullname+"-test-image")
			return err
		})
	})
	t.Run("semaphore of 2 gates 4 replicas", func(t *testing.T) { e.checkSemaphore(t) })
}

// start builds and pushes the images and the chart, and starts the node with
// containerd's mirrors pointing at the registry.
func start(t *testing.T) *env {
	t.Helper()
	root, err := kubetest.RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	helmBin, err := kubetest.Tool("helm")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Minute)
	defer cancel()
	started := time.Now()
	built, err := images.Build(ctx, images.Options{WorkDir: t.TempDir()},
		images.NameProject, images.NameRedis, images.NamePause, images.NameMetricsApp, images.NameCoreDNS)
	if err != nil {
		t.Fatalf("building the images: %v", err)
	}
	reg := registry.StartT(t)
	if err := reg.PushAll(ctx, built); err != nil {
		t.Fatal(err)
	}
	helm := registry.Helm{Binary: helmBin, Dir: t.TempDir()}
	chart, err := reg.PushChart(ctx, helm, filepath.Join(root, images.ChartDir))
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("built and pushed the images and the chart in %s", since(started))
	mirrors := map[string]string{}
	for _, host := range images.Hosts(built) {
		mirrors[host] = "http://" + reg.Host
	}
	started = time.Now()
	n := kubenode.StartForTest(t, kubenode.Options{
		SandboxImage: images.PauseRef, CoreDNSImage: images.CoreDNSRef, Mirrors: mirrors,
	})
	t.Logf("the node started in %s", since(started))
	return &env{node: n, helm: helm, chart: chart, dir: t.TempDir()}
}

// install puts the serving certificate into a Secret and installs the chart
// from the registry without persistence (nothing provisions volumes here),
// then waits for the webhook's and Redis' pods to be Ready.
func (e *env) install(t *testing.T) {
	e.kubectl(t, "create", "namespace", releaseNS)
	ca, err := testpki.NewCA()
	if err != nil {
		t.Fatal(err)
	}
	certPEM, keyPEM, err := ca.Issue(48*time.Hour, fullname+"."+releaseNS+".svc", fullname+"."+releaseNS+".svc.cluster.local")
	if err != nil {
		t.Fatal(err)
	}
	files := map[string][]byte{"tls.crt": certPEM, "tls.key": keyPEM, "ca.crt": ca.PEM}
	args := []string{"-n", releaseNS, "create", "secret", "generic", tlsSecret}
	for name, data := range files {
		path := filepath.Join(e.dir, name)
		if err := os.WriteFile(path, data, 0o600); err != nil {
			t.Fatal(err)
		}
		args = append(args, "--from-file="+name+"="+path)
	}
	e.kubectl(t, args...)

	root, err := kubetest.RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	e.timed(t, "helm install", func(ctx context.Context) error {
		out, err := e.helm.Run(ctx, "install", release, e.chart.URL, "--version", e.chart.Version, "--plain-http",
			"--namespace", releaseNS, "--kubeconfig", e.node.KubeconfigPath,
			"-f", filepath.Join(root, images.ChartDir, "ci", "no-persistence-values.yaml"),
			"--set", "certManager.enabled=false", "--set", "tls.existingSecret="+tlsSecret,
			"--set", "tls.caBundle="+base64.StdEncoding.EncodeToString(ca.PEM))
		if err == nil && !strings.Contains(out, "STATUS: deployed") {
			err = fmt.Errorf("helm install printed no STATUS: deployed:\n%s", out)
		}
		return err
	})
	for _, w := range []struct{ kind, name, want string }{
		{"deployment", fullname, "2/2"},
		{"statefulset", fullname + "-redis", "3/3"},
	} {
		e.timed(t, w.kind+" "+w.want+" Ready", func(ctx context.Context) error {
			return e.poll(ctx, func() (bool, string, error) {
				out, err := e.node.Kubectl(ctx, "-n", releaseNS, "get", w.kind, w.name, "-o",
					"jsonpath={.status.readyReplicas}/{.spec.replicas}")
				got := strings.TrimSpace(string(out))
				return err == nil && got == w.want, fmt.Sprintf("%s %s ready/desired %q, want %s", w.kind, w.name, got, w.want), nil
			})
		})
	}
}

// checkSemaphore applies 4 opted-in replicas on a semaphore of size 2 in a
// restricted namespace: exactly 2 run while the ReplicaSet's creations keep
// being denied, and deleting one lets a third run, never more than 2 at once.
func (e *env) checkSemaphore(t *testing.T) {
	e.kubectl(t, "create", "namespace", appNS)
	e.kubectl(t, "label", "namespace", appNS, "pod-security.kubernetes.io/enforce=restricted", "pod-security.kubernetes.io/enforce-version=latest")
	manifest := filepath.Join(e.dir, "workers.yaml")
	if err := os.WriteFile(manifest, []byte(deployment()), 0o644); err != nil {
		t.Fatal(err)
	}
	e.kubectl(t, "-n", appNS, "apply", "-f", manifest)

	var first []string
	e.timed(t, "2 pods Running", func(ctx context.Context) error {
		return e.poll(ctx, func() (bool, string, error) {
			running, all, err := e.pods(ctx)
			if err != nil {
				return false, err.Error(), nil
			}
			if len(running) > 2 {
				return false, "", fmt.Errorf("%d pods run on a semaphore of size 2: %v", len(running), running)
			}
			first = running
			return len(running) == 2, fmt.Sprintf("running %v of pods %v", running, all), nil
		})
	})
	if t.Failed() {
		return
	}
	base, err := e.fullDenials(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	e.timed(t, "2 more full denials while 2 run", func(ctx context.Context) error {
		return e.poll(ctx, func() (bool, string, error) {
			running, all, err := e.pods(ctx)
			if err != nil {
				return false, err.Error(), nil
			}
			if !slices.Equal(running, first) || len(all) != 2 {
				return false, "", fmt.Errorf("while the semaphore is full the pods changed: running %v of pods %v, want exactly %v", running, all, first)
			}
			n, err := e.fullDenials(ctx)
			if err != nil {
				return false, err.Error(), nil
			}
			return n >= base+2, fmt.Sprintf("%d FailedCreate events of the ReplicaSet with the full denial, want at least %d", n, base+2), nil
		})
	})
	if t.Failed() {
		return
	}
	deleted := first[0]
	e.kubectl(t, "-n", appNS, "delete", "pod", deleted, "--wait=false")
	most := 0
	e.timed(t, "a third pod Running after a delete", func(ctx context.Context) error {
		return e.poll(ctx, func() (bool, string, error) {
			running, all, err := e.pods(ctx)
			if err != nil {
				return false, err.Error(), nil
			}
			most = max(most, len(running))
			if len(running) > 2 {
				return false, "", fmt.Errorf("%d pods run on a semaphore of size 2: %v", len(running), running)
			}
			third := slices.ContainsFunc(running, func(p string) bool { return !slices.Contains(first, p) })
			return third, fmt.Sprintf("running %v of pods %v, first two %v", running, all, first), nil
		})
	})
	t.Logf("at most %d pods ran at once while %s terminated and its successor started", most, deleted)
}

// pods lists the app's pods (sorted by name) and those of them with a
// container running.
func (e *env) pods(ctx context.Context) (running, all []string, err error) {
	out, err := e.node.Kubectl(ctx, "-n", appNS, "get", "pods", "-o", "json")
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

// fullDenials counts the ReplicaSet's FailedCreate events that carry the
// webhook's denial of a full semaphore.
func (e *env) fullDenials(ctx context.Context) (int, error) {
	out, err := e.node.Kubectl(ctx, "-n", appNS, "get", "events", "--field-selector", "reason=FailedCreate,involvedObject.kind=ReplicaSet", "-o", "json")
	if err != nil {
		return 0, err
	}
	var list corev1.EventList
	if err := json.Unmarshal(out, &list); err != nil {
		return 0, fmt.Errorf("decoding the event list: %w", err)
	}
	want := fmt.Sprintf("semaphore %q is full (2/2 slots held)", appNS+"/"+semaphoreKey)
	n := 0
	for _, ev := range list.Items {
		if strings.Contains(ev.Message, want) {
			n += max(int(ev.Count), 1)
		}
	}
	return n, nil
}

func deployment() string {
	return `apiVersion: apps/v1
kind: Deployment
metadata:
  name: workers
spec:
  replicas: 4
  selector:
    matchLabels: {app: workers}
  template:
    metadata:
      labels: {app: workers}
      annotations:
        ` + prefix + `prometheus-metrics-proxy: "true"
        ` + prefix + `semaphore-key: ` + semaphoreKey + `
        ` + prefix + `semaphore-size: "2"
        ` + prefix + `scrape-interval: 5s
        prometheus.io/port: "8080"
    spec:
      securityContext:
        runAsNonRoot: true
        seccompProfile: {type: RuntimeDefault}
      containers:
      - name: app
        image: ` + images.MetricsAppRef + `
        ports:
        - {name: metrics, containerPort: 8080}
        securityContext:
          allowPrivilegeEscalation: false
          readOnlyRootFilesystem: true
          capabilities: {drop: [ALL]}
`
}

// poll calls check every pollInterval until it says done, returns an error,
// or ctx ends; the error then carries check's last description.
func (e *env) poll(ctx context.Context, check func() (done bool, state string, err error)) error {
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
func (e *env) timed(t *testing.T, name string, step func(ctx context.Context) error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Minute)
	defer cancel()
	started := time.Now()
	if err := step(ctx); err != nil {
		t.Errorf("%s after %s: %v", name, since(started), err)
		e.dump(t)
		return
	}
	t.Logf("%s took %s", name, since(started))
}

// dump logs what the cluster looked like when a step failed.
func (e *env) dump(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	for _, args := range [][]string{
		{"get", "pods", "-A", "-o", "wide"},
		{"get", "events", "-A", "--sort-by=.lastTimestamp"},
	} {
		out, err := e.node.Kubectl(ctx, args...)
		t.Logf("kubectl %s: %v\n%s", strings.Join(args, " "), err, out)
	}
}

func (e *env) kubectl(t *testing.T, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	out, err := e.node.Kubectl(ctx, args...)
	if err != nil {
		t.Fatalf("%v", err)
	}
	return string(out)
}

func since(t time.Time) time.Duration { return time.Since(t).Round(100 * time.Millisecond) }
