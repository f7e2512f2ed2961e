package e2e

import (
	"context"
	"fmt"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/kaidotio/prometheus-metrics-proxy-hook/e2e/chartinstall"
	"github.com/kaidotio/prometheus-metrics-proxy-hook/e2e/crds"
	"github.com/kaidotio/prometheus-metrics-proxy-hook/e2e/kubectl"
	"github.com/kaidotio/prometheus-metrics-proxy-hook/e2e/webhookconfig"
	"github.com/kaidotio/prometheus-metrics-proxy-hook/src/admission"
	"github.com/kaidotio/prometheus-metrics-proxy-hook/src/semaphore"
	"github.com/kaidotio/prometheus-metrics-proxy-hook/src/testenv/kubetest"
	"github.com/kaidotio/prometheus-metrics-proxy-hook/src/testenv/redistest"
	"github.com/kaidotio/prometheus-metrics-proxy-hook/src/testenv/webhooktest"
)

const (
	// repoRoot is where go test runs this package from: e2e/.
	repoRoot = ".."
	// webhookName is the chart's single webhook, as kubectl names it in a
	// denial ("admission webhook %q denied the request").
	webhookName = "prometheus-metrics-proxy-hook.kaidotio.github.io"
	// scopeLabel keeps each release's webhook to the namespaces labelled
	// with its name (the chart's webhook.namespaceSelector value), so that
	// scenarios sharing one API server never meet another scenario's
	// webhook, or one that is down on purpose.
	scopeLabel = "e2e.prometheus-metrics-proxy-hook.kaidotio.github.io/webhook"
	// stepTimeout bounds one step that waits for the API server, a
	// controller or a process on a loaded 2-core machine.
	stepTimeout = 90 * time.Second
)

// env is what every test of the suite shares: one control plane (starting
// kube-apiserver costs ~13 s, more under load), the CRDs, and three Redis
// nodes. Tests keep to their own namespaces, releases and semaphore keys.
type env struct {
	cp      *kubetest.ControlPlane
	kubectl *kubectl.Runner
	redis   *redistest.Cluster
	sem     *semaphore.Client
}

func startEnv(t *testing.T) *env {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Minute)
	defer cancel()

	cp, err := kubetest.Start(ctx, kubetest.Options{ControllerManager: true, Logf: t.Logf})
	if err != nil {
		t.Fatalf("cannot start the control plane (run `make tools` first if a tool is missing): %v", err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("kube-apiserver log tail:\n%s", cp.LogTail("kube-apiserver", 30))
			t.Logf("kube-controller-manager log tail:\n%s", cp.LogTail("kube-controller-manager", 30))
		}
		if err := cp.Stop(); err != nil {
			t.Errorf("cannot stop the control plane: %v", err)
		}
	})
	k, err := kubectl.New(cp.KubeconfigPath)
	if err != nil {
		t.Fatal(err)
	}
	started := time.Now()
	names, err := crds.Apply(ctx, k, repoRoot, t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("applied %d CRDs in %s", len(names), time.Since(started).Round(time.Millisecond))

	redis, err := redistest.Start(redistest.Options{Nodes: 3})
	if err != nil {
		t.Fatalf("cannot start the Redis nodes: %v", err)
	}
	t.Cleanup(func() {
		if err := redis.Close(); err != nil {
			t.Errorf("cannot stop the Redis nodes: %v", err)
		}
	})
	sem, err := semaphore.New(semaphore.Config{Addrs: redis.Addrs(), Password: redis.Password, NodeTimeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = sem.Close() })
	return &env{cp: cp, kubectl: k, redis: redis, sem: sem}
}

func chartDir() string { return filepath.Join(repoRoot, "charts", "prometheus-metrics-proxy-hook") }

// kctl runs kubectl and fails the test when it cannot run at all; a
// non-zero exit is left to the caller.
func (e *env) kctl(t *testing.T, stdin string, args ...string) kubectl.Result {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), stepTimeout)
	defer cancel()
	res, err := e.kubectl.Run(ctx, stdin, args...)
	if err != nil {
		t.Fatal(err)
	}
	return res
}

// mustKctl runs kubectl and fails the test unless it exits 0.
func (e *env) mustKctl(t *testing.T, stdin string, args ...string) kubectl.Result {
	t.Helper()
	res := e.kctl(t, stdin, args...)
	if err := res.Err(); err != nil {
		t.Fatal(err)
	}
	return res
}

// namespace creates a namespace (and its default ServiceAccount) with labels.
func (e *env) namespace(t *testing.T, name string, labels map[string]string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), stepTimeout)
	defer cancel()
	if err := e.cp.CreateNamespace(ctx, name, labels); err != nil {
		t.Fatal(err)
	}
}

// restricted are the labels of a namespace that enforces the restricted Pod
// Security Standard through the API server's PodSecurity admission.
func restricted() map[string]string {
	return map[string]string{
		"pod-security.kubernetes.io/enforce":         "restricted",
		"pod-security.kubernetes.io/enforce-version": "latest",
	}
}

// webhookTarget is a release of the chart whose webhook configuration calls
// a local webhook process, for the namespaces labelled with its scope.
type webhookTarget struct {
	release string
	mwc     string
	wh      *webhooktest.Webhook
}

// installTarget installs the chart as release (in its own restricted
// namespace) with values over the defaults, scoped to namespaces labelled
// scopeLabel=release, and points its MutatingWebhookConfiguration at wh.
func (e *env) installTarget(t *testing.T, release string, values map[string]any, wh *webhooktest.Webhook) *webhookTarget {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 3*time.Minute)
	defer cancel()
	ns := release + "-system"
	e.namespace(t, ns, restricted())
	scoped := map[string]any{"webhook": map[string]any{
		"namespaceSelector": map[string]any{"matchLabels": map[string]any{scopeLabel: release}},
	}}
	vals, err := chartinstall.Values(nil, values, scoped)
	if err != nil {
		t.Fatal(err)
	}
	res, err := chartinstall.Install(ctx, chartinstall.Options{
		Kubeconfig: e.cp.KubeconfigPath, ChartDir: chartDir(), Release: release, Namespace: ns, Values: vals,
	})
	if err != nil {
		t.Fatal(err)
	}
	objs, err := chartinstall.Objects(res.Release.Manifest, ns, chartinstall.ClusterScoped)
	if err != nil {
		t.Fatal(err)
	}
	var mwc string
	for _, o := range objs {
		if o.Kind == "MutatingWebhookConfiguration" {
			mwc = o.Name
		}
	}
	if mwc == "" {
		t.Fatalf("release %s has no MutatingWebhookConfiguration", release)
	}
	if _, err := webhookconfig.Repoint(ctx, e.cp, mwc, "https://"+wh.Addr()+"/mutate", wh.CAPEM()); err != nil {
		t.Fatal(err)
	}
	return &webhookTarget{release: release, mwc: mwc, wh: wh}
}

// served creates a namespace that target's webhook serves (plus extra
// labels) and waits until the API server calls the webhook for it.
func (e *env) served(t *testing.T, name string, target *webhookTarget, extra map[string]string) {
	t.Helper()
	labels := map[string]string{scopeLabel: target.release}
	for k, v := range extra {
		labels[k] = v
	}
	e.namespace(t, name, labels)
	ctx, cancel := context.WithTimeout(t.Context(), stepTimeout)
	defer cancel()
	if err := webhookconfig.WaitServed(ctx, e.cp, name, admission.ContainerName); err != nil {
		t.Fatal(err)
	}
}

// startWebhook runs the webhook binary against the suite's Redis nodes,
// checking lease API tokens with the suite's API server, and prints its log
// when the test fails.
func (e *env) startWebhook(t *testing.T, args ...string) *webhooktest.Webhook {
	t.Helper()
	// The suite checks behaviour while every other package's tests load the
	// same 2 cores; the default 50 ms per Redis node is a production
	// latency bound that e2e/reliability exercises. A scenario's own
	// --redis-timeout comes later and wins.
	args = append([]string{"--redis-timeout=500ms"}, args...)
	wh := webhooktest.Start(t, webhooktest.Options{Redis: e.redis.Addrs(), RedisPassword: e.redis.Password,
		Kubeconfig: e.cp.KubeconfigPath, Args: args})
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("webhook log tail:\n%s", tail(wh.Logs(), 40))
		}
	})
	return wh
}

func tail(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// inspect reads a semaphore's slots straight from Redis.
func (e *env) inspect(t *testing.T, namespace, key string, size int) semaphore.Status {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), stepTimeout)
	defer cancel()
	st, err := e.sem.Inspect(ctx, namespace+"/"+key, size)
	if err != nil {
		t.Fatalf("cannot inspect semaphore %s/%s: %v", namespace, key, err)
	}
	if len(st.Failures) > 0 {
		t.Fatalf("semaphore %s/%s: nodes failed to answer: %v", namespace, key, st.Failures)
	}
	return st
}

// eventually polls check every interval until it returns nil or timeout
// passes, then fails the test with the last error.
func eventually(t *testing.T, timeout, interval time.Duration, what string, check func() error) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		err := check()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: still not true after %s: %v", what, timeout, err)
		}
		select {
		case <-t.Context().Done():
			t.Fatalf("%s: %v (last check: %v)", what, t.Context().Err(), err)
		case <-time.After(interval):
		}
	}
}

// podExists tells whether the pod was stored.
func (e *env) podExists(t *testing.T, namespace, name string) bool {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), stepTimeout)
	defer cancel()
	err := e.cp.Do(ctx, http.MethodGet, fmt.Sprintf("/api/v1/namespaces/%s/pods/%s", namespace, name), nil, nil)
	if kubetest.IsNotFound(err) {
		return false
	}
	if err != nil {
		t.Fatal(err)
	}
	return true
}
