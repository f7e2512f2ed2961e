package node

import (
	"context"
	"encoding/base64"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/kaidotio/prometheus-metrics-proxy-hook/src/testenv/images"
	"github.com/kaidotio/prometheus-metrics-proxy-hook/src/testenv/kubetest"
	"github.com/kaidotio/prometheus-metrics-proxy-hook/src/testenv/registry"
)

const (
	prefix       = "prometheus-metrics-proxy-hook.kaidotio.github.io/"
	pollInterval = time.Second
	chartName    = "prometheus-metrics-proxy-hook"
)

// release is one installation of the chart on the shared node.
type release struct {
	c         *cluster
	Name      string
	Namespace string
	// Fullname is what the chart names its objects: RELEASE-prometheus-metrics-proxy-hook.
	Fullname string
	// tlsSecret holds the webhook's serving certificate.
	tlsSecret string
}

// installOptions choose the chart and values of helm install and upgrade.
type installOptions struct {
	// Name is the release's name; its namespace is Name+"-system".
	Name string
	// Chart is the chart in the registry; empty means this checkout's.
	Chart registry.Chart
	// CIValues are files of the chart's ci/ directory, applied in order.
	CIValues []string
	// Set are --set arguments on top.
	Set []string
}

// installChart installs the chart from the registry, with its serving
// certificate in a Secret (cert-manager does not run here), and uninstalls
// it and deletes its namespace when t ends.
func (c *cluster) installChart(t *testing.T, opts installOptions) *release {
	t.Helper()
	r := &release{c: c, Name: opts.Name, Namespace: opts.Name + "-system", Fullname: opts.Name + "-" + chartName}
	c.kubectl(t, "create", "namespace", r.Namespace)
	t.Cleanup(func() { r.uninstall(t) })
	r.tlsSecret = r.createTLSSecret(t)
	r.helmApply(t, "install", opts)
	return r
}

// upgrade runs helm upgrade to opts' chart with opts' values (helm takes
// the new chart's defaults, not the installed release's values).
func (r *release) upgrade(t *testing.T, opts installOptions) {
	t.Helper()
	r.helmApply(t, "upgrade", opts)
}

// helmApply runs helm install or upgrade of the release and fails t unless
// the release is deployed.
func (r *release) helmApply(t *testing.T, verb string, opts installOptions) {
	t.Helper()
	chart := opts.Chart
	if chart.URL == "" {
		chart = r.c.chart
	}
	root, err := kubetest.RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	args := []string{verb, r.Name, chart.URL, "--version", chart.Version, "--plain-http",
		"--namespace", r.Namespace, "--kubeconfig", r.c.node.KubeconfigPath}
	for _, f := range opts.CIValues {
		args = append(args, "-f", filepath.Join(root, images.ChartDir, "ci", f))
	}
	args = append(args, "--set", "certManager.enabled=false", "--set", "tls.existingSecret="+r.tlsSecret,
		"--set", "tls.caBundle="+base64.StdEncoding.EncodeToString(r.c.ca.PEM))
	for _, s := range opts.Set {
		args = append(args, "--set", s)
	}
	r.c.timed(t, fmt.Sprintf("helm %s %s %s", verb, r.Name, chart.Version), func(ctx context.Context) error {
		out, err := r.c.helm.Run(ctx, args...)
		if err == nil && !strings.Contains(out, "STATUS: deployed") {
			err = fmt.Errorf("helm %s printed no STATUS: deployed:\n%s", verb, out)
		}
		return err
	})
	if t.Failed() {
		t.FailNow()
	}
}

// createTLSSecret stores a serving certificate for the webhook's Service.
func (r *release) createTLSSecret(t *testing.T) string {
	t.Helper()
	certPEM, keyPEM, err := r.c.ca.Issue(48*time.Hour, r.Fullname+"."+r.Namespace+".svc", r.Fullname+"."+r.Namespace+".svc.cluster.local")
	if err != nil {
		t.Fatal(err)
	}
	name := r.Name + "-tls"
	dir := t.TempDir()
	args := []string{"-n", r.Namespace, "create", "secret", "generic", name}
	for file, data := range map[string][]byte{"tls.crt": certPEM, "tls.key": keyPEM, "ca.crt": r.c.ca.PEM} {
		path := filepath.Join(dir, file)
		if err := os.WriteFile(path, data, 0o600); err != nil {
			t.Fatal(err)
		}
		args = append(args, "--from-file="+file+"="+path)
	}
	r.c.kubectl(t, args...)
	return name
}

// waitReady waits until the webhook's Deployment and, unless Redis runs
// outside the chart, its StatefulSet have every replica Ready.
func (r *release) waitReady(t *testing.T, withRedis bool) {
	t.Helper()
	waits := []struct{ kind, name string }{{"deployment", r.Fullname}}
	if withRedis {
		waits = append(waits, struct{ kind, name string }{"statefulset", r.Fullname + "-redis"})
	}
	for _, w := range waits {
		r.c.timed(t, w.kind+" Ready", func(ctx context.Context) error {
			return r.c.poll(ctx, func() (bool, string, error) {
				out, err := r.c.node.Kubectl(ctx, "-n", r.Namespace, "get", w.kind, w.name, "-o",
					"jsonpath={.status.readyReplicas}/{.spec.replicas}")
				got := strings.TrimSpace(string(out))
				ready, desired, _ := strings.Cut(got, "/")
				return err == nil && ready != "" && ready == desired, fmt.Sprintf("%s %s ready/desired %q", w.kind, w.name, got), nil
			})
		})
	}
	if t.Failed() {
		t.FailNow()
	}
}

// uninstall removes the release and its namespace, so that the next test
// starts from a node without webhook configurations or Redis pods.
func (r *release) uninstall(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	if out, err := r.c.helm.Run(ctx, "uninstall", r.Name, "--namespace", r.Namespace, "--kubeconfig", r.c.node.KubeconfigPath,
		"--wait", "--timeout", "3m", "--ignore-not-found"); err != nil {
		t.Errorf("helm uninstall %s: %v\n%s", r.Name, err, out)
	}
	r.c.deleteNamespace(ctx, t, r.Namespace)
}
