package registry

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
)

// ChartRepository is the chart's repository path, as in the README's
// oci://ghcr.io/kaidotio/charts/prometheus-metrics-proxy-hook.
const ChartRepository = "kaidotio/charts"

// Chart is a chart the registry holds.
type Chart struct {
	// URL is what helm install/pull take: oci://127.0.0.1:PORT/kaidotio/charts/NAME.
	URL     string
	Version string
}

// Helm runs a helm command with its configuration, cache and data under dir
// (no user's ~/.config/helm is read or written).
type Helm struct {
	Binary string
	Dir    string
}

// Run runs helm with args and returns its combined output.
func (h Helm) Run(ctx context.Context, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, h.Binary, args...)
	cmd.Env = append(os.Environ(),
		"HELM_CONFIG_HOME="+filepath.Join(h.Dir, "config"),
		"HELM_CACHE_HOME="+filepath.Join(h.Dir, "cache"),
		"HELM_DATA_HOME="+filepath.Join(h.Dir, "data"),
		"HELM_REGISTRY_CONFIG="+filepath.Join(h.Dir, "config", "registry.json"),
	)
	out, err := cmd.CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("helm %s: %w\n%s", strings.Join(args, " "), err, out)
	}
	return string(out), nil
}

// PushChart packages the chart directory with `helm package` and pushes it
// with `helm push --plain-http` to oci://HOST/kaidotio/charts. packageArgs
// go to helm package: "--version", "0.0.1-previous" gives an earlier
// commit's chart a version of its own.
func (r *Registry) PushChart(ctx context.Context, helm Helm, chartDir string, packageArgs ...string) (Chart, error) {
	pkgDir, err := os.MkdirTemp(helm.Dir, "package-")
	if err != nil {
		return Chart{}, fmt.Errorf("creating the package directory: %w", err)
	}
	defer os.RemoveAll(pkgDir)
	if _, err := helm.Run(ctx, append([]string{"package", chartDir, "--destination", pkgDir}, packageArgs...)...); err != nil {
		return Chart{}, err
	}
	tgzs, err := filepath.Glob(filepath.Join(pkgDir, "*.tgz"))
	if err != nil || len(tgzs) != 1 {
		return Chart{}, fmt.Errorf("helm package wrote %d archives into %s, not one", len(tgzs), pkgDir)
	}
	base := strings.TrimSuffix(filepath.Base(tgzs[0]), ".tgz")
	out, err := helm.Run(ctx, "push", tgzs[0], "oci://"+r.Host+"/"+ChartRepository, "--plain-http")
	if err != nil {
		return Chart{}, err
	}
	// The archive is NAME-VERSION.tgz and helm push prints "Pushed: HOST/PATH/NAME:VERSION".
	ref := pushedRef(out)
	i := strings.LastIndex(ref, ":")
	if ref == "" || i < 0 || !strings.HasSuffix(base, "-"+ref[i+1:]) {
		return Chart{}, fmt.Errorf("helm push of %s printed no pushed reference matching it:\n%s", base, out)
	}
	return Chart{URL: "oci://" + ref[:i], Version: ref[i+1:]}, nil
}

func pushedRef(out string) string {
	for _, line := range strings.Split(out, "\n") {
		if ref, ok := strings.CutPrefix(strings.TrimSpace(line), "Pushed: "); ok {
			return ref
		}
	}
	return ""
}
