package reconciler_test

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/kaidotio/prometheus-metrics-proxy-hook/src/reconciler"
	"github.com/kaidotio/prometheus-metrics-proxy-hook/src/semaphore"
	"github.com/kaidotio/prometheus-metrics-proxy-hook/src/testenv/kubetest"
	"github.com/kaidotio/prometheus-metrics-proxy-hook/src/testenv/redistest"
)

const (
	label  = "prometheus-metrics-proxy-hook.kaidotio.github.io/semaphore-holder"
	window = 2 * time.Second
	// within bounds every wait on a loaded machine.
	within = 60 * time.Second
)

type env struct {
	cp     *kubetest.ControlPlane
	client kubernetes.Interface
	sem    *semaphore.Client
}

func start(t *testing.T) *env {
	t.Helper()
	if testing.Short() {
		t.Skip("starts a control plane; skipped with -short")
	}
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Minute)
	defer cancel()
	cp, err := kubetest.Start(ctx, kubetest.Options{Logf: t.Logf})
	if err != nil {
		t.Fatalf("cannot start the control plane (run `make tools` first if a tool is missing): %v", err)
	}
	t.Cleanup(func() {
		if err := cp.Stop(); err != nil {
			t.Errorf("stopping the control plane: %v", err)
		}
	})
	cfg, err := clientcmd.BuildConfigFromFlags("", cp.KubeconfigPath)
	if err != nil {
		t.Fatal(err)
	}
	client, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	cluster := redistest.StartT(t, 3)
	sem, err := semaphore.New(semaphore.Config{Addrs: cluster.Addrs(), Password: cluster.Password, NodeTimeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = sem.Close() })
	return &env{cp: cp, client: client, sem: sem}
}

// run starts a reconciler until the test ends.
func (e *env) run(t *testing.T, identity string) *prometheus.Registry {
	t.Helper()
	metrics := reconciler.NewMetrics()
	reg := prometheus.NewRegistry()
	reg.MustRegister(metrics)
	r, err := reconciler.New(reconciler.Config{
		Client: e.client, Leases: e.sem, HolderLabel: label,
		Window: window, Interval: 500 * time.Millisecond, TerminalGrace: time.Second,
		Election: reconciler.Election{Namespace: "default", Name: "reconciler-test", Identity: identity,
			LeaseDuration: 3 * time.Second, RenewDeadline: 2 * time.Second, RetryPeriod: 500 * time.Millisecond},
		Logger:  zerolog.New(zerolog.NewTestWriter(t)).With().Str("identity", identity).Logger(),
		Metrics: metrics,
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		if err := r.Run(ctx); err != nil && ctx.Err() == nil {
			t.Errorf("reconciler %s: %v", identity, err)
		}
	}()
	t.Cleanup(func() {
		cancel()
		wg.Wait()
	})
	return reg
}

func (e *env) namespace(t *testing.T, name string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), within)
	defer cancel()
	if err := e.cp.CreateNamespace(ctx, name, nil); err != nil {
		t.Fatal(err)
	}
}

// lease takes a slot of ns/key for a pod, with a record unless legacy.
func (e *env) lease(t *testing.T, ns, key, pod string, legacy bool) semaphore.Lease {
	t.Helper()
	holder := semaphore.NewHolderID()
	if legacy {
		l, err := e.sem.AcquireAs(t.Context(), ns+"/"+key, 10, 10*time.Minute, holder)
		if err != nil {
			t.Fatal(err)
		}
		return l
	}
	l, err := e.sem.AcquireWithRecord(t.Context(), ns+"/"+key, 10, 10*time.Minute, holder,
		semaphore.Record{Granted: time.Now(), Pod: pod, Owner: "ReplicaSet/web", OwnerAPIVersion: "apps/v1"})
	if err != nil {
		t.Fatal(err)
	}
	return l
}

func (e *env) pod(t *testing.T, ns, name, holder string) *corev1.Pod {
	t.Helper()
	p := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Labels: map[string]string{label: holder}},
		Spec:       corev1.PodSpec{Containers: []corev1.Container{{Name: "app", Image: "registry.k8s.io/pause:3.10"}}},
	}
	created, err := e.client.CoreV1().Pods(ns).Create(t.Context(), p, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return created
}

func (e *env) held(t *testing.T, l semaphore.Lease) bool {
	t.Helper()
	st, err := e.sem.Inspect(t.Context(), l.Name, 10)
	if err != nil {
		t.Fatal(err)
	}
	return st.Slots[l.Slot].Holder == l.Holder
}

func waitFor(t *testing.T, what string, cond func() error) time.Duration {
	t.Helper()
	began := time.Now()
	for {
		err := cond()
		if err == nil {
			return time.Since(began)
		}
		if time.Since(began) > within {
			t.Fatalf("%s: %v after %s", what, err, within)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func (e *env) released(t *testing.T, l semaphore.Lease, what string) time.Duration {
	t.Helper()
	return waitFor(t, what, func() error {
		if e.held(t, l) {
			return fmt.Errorf("slot %d of %s is still held", l.Slot, l.Name)
		}
		return nil
	})
}

// value sums the samples of a metric whose labels include the given
// value (any, when empty).
func value(t *testing.T, reg *prometheus.Registry, name, labelValue string) float64 {
	t.Helper()
	families, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	sum := 0.0
	for _, f := range families {
		if f.GetName() != name {
			continue
		}
		for _, m := range f.GetMetric() {
			match := labelValue == ""
			for _, l := range m.GetLabel() {
				match = match || l.GetValue() == labelValue
			}
			if !match {
				continue
			}
			switch {
			case m.GetCounter() != nil:
				sum += m.GetCounter().GetValue()
			case m.GetGauge() != nil:
				sum += m.GetGauge().GetValue()
			}
		}
	}
	return sum
}

func releases(t *testing.T, reg *prometheus.Registry, cause string) float64 {
	return value(t, reg, "prometheus_metrics_proxy_hook_reconciler_releases_total", cause)
}

// TestReleaseRules runs one reconciler against the real API server and
// Redis, with a window of 2 s, through every rule.
func TestReleaseRules(t *testing.T) {
	e := start(t)
	e.namespace(t, "rules")
	e.namespace(t, "elsewhere")
	metrics := e.run(t, "only")

	// A lease whose pod runs is kept past the window.
	kept := e.lease(t, "rules", "k", "runs", false)
	e.pod(t, "rules", "runs", kept.Holder)
	// A lease of the previous release (no record) is kept, pod or not.
	legacy := e.lease(t, "rules", "k", "", true)
	// A pod in another namespace carrying the holder does not keep a lease.
	stolen := e.lease(t, "rules", "k", "rejected-twin", false)
	e.pod(t, "elsewhere", "copy", stolen.Holder)
	// No pod at all: released after the window.
	never := e.lease(t, "rules", "k", "rejected", false)

	d := e.released(t, never, "a lease without a pod")
	if d < window-time.Second {
		t.Fatalf("released %s after its admission, before the %s window", d, window)
	}
	t.Logf("no_pod: released %s after admission (window %s)", d.Round(100*time.Millisecond), window)
	e.released(t, stolen, "a lease whose holder label is on a pod of another namespace")

	// The pod is deleted: released at once, without waiting for a window.
	gone := e.lease(t, "rules", "k", "deleted", false)
	e.pod(t, "rules", "deleted", gone.Holder)
	deleted := time.Now()
	if err := e.client.CoreV1().Pods("rules").Delete(t.Context(), "deleted", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	e.released(t, gone, "a lease whose pod was deleted")
	t.Logf("pod_deleted: released %s after the deletion", time.Since(deleted).Round(100*time.Millisecond))

	// The pod finished and its sidecar did not release: released after the
	// grace.
	done := e.lease(t, "rules", "k", "finished", false)
	p := e.pod(t, "rules", "finished", done.Holder)
	p.Status.Phase = corev1.PodFailed
	if _, err := e.client.CoreV1().Pods("rules").UpdateStatus(t.Context(), p, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	finished := time.Now()
	e.released(t, done, "a lease whose pod failed")
	t.Logf("pod_terminal: released %s after the pod failed (grace 1s)", time.Since(finished).Round(100*time.Millisecond))

	if !e.held(t, kept) || !e.held(t, legacy) {
		t.Fatalf("a lease with a running pod (%v) or without a record (%v) was released", e.held(t, kept), e.held(t, legacy))
	}
	for cause, want := range map[string]float64{"no_pod": 2, "pod_deleted": 1, "pod_terminal": 1} {
		if got := releases(t, metrics, cause); got != want {
			t.Errorf("releases{cause=%q} = %v, want %v", cause, got, want)
		}
	}

	// Each release is an Event: on the pod when it existed, else on the
	// owner from the record.
	waitFor(t, "the Events", func() error {
		list, err := e.client.CoreV1().Events("rules").List(t.Context(), metav1.ListOptions{FieldSelector: "reason=SemaphoreSlotReleased"})
		if err != nil {
			return err
		}
		on := map[string]bool{}
		for _, ev := range list.Items {
			on[ev.InvolvedObject.Kind+"/"+ev.InvolvedObject.Name] = true
		}
		for _, want := range []string{"ReplicaSet/web", "Pod/deleted", "Pod/finished"} {
			if !on[want] {
				return fmt.Errorf("no Event on %s among %v", want, on)
			}
		}
		return nil
	})
}

// TestTwoReconcilers runs two reconcilers on one Lease: one leads, and a
// leaked lease is released once.
func TestTwoReconcilers(t *testing.T) {
	e := start(t)
	e.namespace(t, "two")
	a, b := e.run(t, "a"), e.run(t, "b")
	var leaks []semaphore.Lease
	for i := range 5 {
		leaks = append(leaks, e.lease(t, "two", "k", fmt.Sprintf("rejected-%d", i), false))
	}
	for _, l := range leaks {
		e.released(t, l, "a leaked lease")
	}
	if got := releases(t, a, "no_pod") + releases(t, b, "no_pod"); got != float64(len(leaks)) {
		t.Fatalf("%v releases counted for %d leaks, want one each", got, len(leaks))
	}
	leaders := value(t, a, "prometheus_metrics_proxy_hook_reconciler_leader", "") + value(t, b, "prometheus_metrics_proxy_hook_reconciler_leader", "")
	if leaders != 1 {
		t.Fatalf("%v reconcilers lead, want 1", leaders)
	}
}
