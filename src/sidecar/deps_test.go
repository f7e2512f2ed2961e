package sidecar_test

import (
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
)

// TestNoRedisOrKubernetesClient keeps the sidecar small and harmless: it
// talks to the webhook's lease API only, never to Redis or the Kubernetes
// API.
func TestNoRedisOrKubernetesClient(t *testing.T) {
	const module = "github.com/kaidotio/prometheus-metrics-proxy-hook/src/"
	deps := goListDeps(t, module+"sidecar", module+"sidecar/metricsproxy", module+"sidecar/leasekeeper")
	for _, d := range deps {
		if strings.HasPrefix(d, "github.com/gomodule/redigo") || strings.HasPrefix(d, "k8s.io/") || strings.HasPrefix(d, "sigs.k8s.io/") {
			t.Errorf("the sidecar depends on %s", d)
		}
	}
}

func goListDeps(t *testing.T, pkgs ...string) []string {
	t.Helper()
	cmd := exec.Command(filepath.Join(runtime.GOROOT(), "bin", "go"), append([]string{"list", "-deps"}, pkgs...)...)
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("go list -deps: %v", err)
	}
	return strings.Fields(string(out))
}
