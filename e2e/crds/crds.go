// Package crds installs the CustomResourceDefinitions the chart's optional
// objects need (cert-manager, Istio, Prometheus Operator) into an API
// server, from the pinned Go modules hack/crds.sh takes them from, so that
// the API server validates the chart's custom resources against their real
// schemas and CEL rules.
package crds

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"

	"github.com/kaidotio/prometheus-metrics-proxy-hook/e2e/kubectl"
)

// Apply copies the CRD files into dir with hack/crds.sh (repoRoot is the
// repository's root), applies them with kubectl and waits until the API
// server serves every one of them. Server-side apply, because Istio's CRDs
// are too large for client-side apply's last-applied annotation.
func Apply(ctx context.Context, k *kubectl.Runner, repoRoot, dir string) ([]string, error) {
	script := filepath.Join(repoRoot, "hack", "crds.sh")
	cmd := exec.CommandContext(ctx, script, dir)
	cmd.Env = os.Environ()
	out, err := cmd.Output()
	if err != nil {
		var stderr string
		if ee, ok := err.(*exec.ExitError); ok {
			stderr = strings.TrimSpace(string(ee.Stderr))
		}
		return nil, fmt.Errorf("hack/crds.sh failed: %w: %s", err, stderr)
	}
	files := strings.Fields(string(out))
	if len(files) == 0 {
		return nil, fmt.Errorf("hack/crds.sh %s listed no CRD files", dir)
	}
	if _, err := k.MustSucceed(ctx, "", "apply", "--server-side", "--force-conflicts", "--field-manager=pmph-e2e", "-f", dir); err != nil {
		return nil, fmt.Errorf("cannot apply the CRDs: %w", err)
	}
	res, err := k.MustSucceed(ctx, "", "wait", "--for=condition=Established", "--timeout=120s", "-f", dir, "-o", "name")
	if err != nil {
		return nil, fmt.Errorf("the CRDs did not become established: %w", err)
	}
	return strings.Fields(res.Stdout), nil
}
