package promk8s_test

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/kaidotio/prometheus-metrics-proxy-hook/src/testenv/kubetest"
	"github.com/kaidotio/prometheus-metrics-proxy-hook/src/testenv/promk8s"
)

const waitTimeout = 2 * time.Minute

// TestAgainstAPIServer runs pod discovery against a real kube-apiserver (no
// node: the target is a loopback server on this machine). The operator-fed
// Prometheus needs the chart's pods running: e2e/node runs it on the node.
func TestAgainstAPIServer(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Minute)
	defer cancel()
	cp, err := kubetest.Start(ctx, kubetest.Options{Logf: t.Logf})
	if err != nil {
		t.Fatalf("cannot start the control plane (run `make tools` first if a tool is missing): %v", err)
	}
	t.Cleanup(func() {
		if err := cp.Stop(); err != nil {
			t.Errorf("cannot stop the control plane: %v", err)
		}
	})
	t.Run("PodDiscovery", func(t *testing.T) { testPodDiscovery(t, cp) })
}

// testPodDiscovery: an annotated Pod with a pod IP is discovered, scraped on
// the annotated port and path, and its last sample stays queryable after
// the Pod is deleted; an unannotated Pod is not scraped.
func testPodDiscovery(t *testing.T, cp *kubetest.ControlPlane) {
	ctx, cancel := context.WithTimeout(t.Context(), 4*time.Minute)
	defer cancel()
	const ns = "promk8s-pods"
	if err := cp.CreateNamespace(ctx, ns, nil); err != nil {
		t.Fatal(err)
	}
	app := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/custom-metrics" {
			http.NotFound(w, r)
			return
		}
		fmt.Fprintln(w, "# TYPE promk8s_test_value gauge\npromk8s_test_value 42")
	}))
	t.Cleanup(app.Close)
	_, port, _ := net.SplitHostPort(app.Listener.Addr().String())

	prom := promk8s.StartPodDiscovering(t, cp.KubeconfigPath, promk8s.Options{Namespaces: []string{ns}})

	// Created first, so that discovery has seen it once the second is up.
	createRunningPod(t, cp, ns, "not-annotated", nil)
	createRunningPod(t, cp, ns, "annotated", map[string]any{
		"prometheus.io/scrape": "true",
		"prometheus.io/port":   port,
		"prometheus.io/path":   "/custom-metrics",
	})
	target := prom.WaitForTarget(t, waitTimeout, map[string]string{"namespace": ns, "pod": "annotated"})
	if want := "http://127.0.0.1:" + port + "/custom-metrics"; target.ScrapeURL != want || target.Job != promk8s.PodJob {
		t.Errorf("target = %s %s, want %s %s", target.Job, target.ScrapeURL, promk8s.PodJob, want)
	}
	targets, err := prom.Targets(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, tg := range targets {
		if tg.Labels["pod"] == "not-annotated" {
			t.Errorf("the pod without prometheus.io/scrape is a target: %+v", tg)
		}
	}
	last, err := prom.LastPodSample(ctx, "promk8s_test_value", ns, "annotated", time.Minute)
	if err != nil || last.Value != 42 {
		t.Fatalf("last sample = %+v, %v; want 42", last, err)
	}

	// A pod that no node runs is deleted at once.
	if err := cp.Do(ctx, http.MethodDelete, "/api/v1/namespaces/"+ns+"/pods/annotated", nil, nil); err != nil {
		t.Fatalf("deleting the pod: %v", err)
	}
	prom.WaitForNoTarget(t, waitTimeout, map[string]string{"namespace": ns, "pod": "annotated"})
	after, err := prom.LastPodSample(ctx, "promk8s_test_value", ns, "annotated", time.Minute)
	if err != nil || after.Value != 42 || after.Time.Before(last.Time) {
		t.Errorf("after the pod is gone, last sample = %+v, %v; want 42 no older than %s", after, err, last.Time)
	}
}

// createRunningPod stores a Pod and gives it, through the status
// subresource, what a kubelet would: phase Running and a pod IP (loopback,
// where the test's server listens).
func createRunningPod(t *testing.T, cp *kubetest.ControlPlane, ns, name string, annotations map[string]any) {
	t.Helper()
	pod := map[string]any{
		"apiVersion": "v1",
		"kind":       "Pod",
		"metadata":   map[string]any{"name": name, "annotations": annotations},
		"spec": map[string]any{
			"containers": []any{map[string]any{"name": "app", "image": "registry.k8s.io/pause:3.10"}},
		},
	}
	path := "/api/v1/namespaces/" + ns + "/pods"
	if err := cp.Do(t.Context(), http.MethodPost, path, pod, nil); err != nil {
		t.Fatalf("creating pod %s: %v", name, err)
	}
	status := map[string]any{"status": map[string]any{
		"phase": "Running", "podIP": "127.0.0.1", "podIPs": []any{map[string]any{"ip": "127.0.0.1"}},
	}}
	if err := cp.Do(t.Context(), http.MethodPatch, path+"/"+name+"/status", status, nil); err != nil {
		t.Fatalf("setting the status of pod %s: %v", name, err)
	}
}
