package chartnode

import (
	"context"
	"encoding/base64"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/kaidotio/prometheus-metrics-proxy-hook/src/testenv/images"
	"github.com/kaidotio/prometheus-metrics-proxy-hook/src/testenv/kubetest"
	"github.com/kaidotio/prometheus-metrics-proxy-hook/src/testenv/registry"
)

// certValidity is the lifetime of a release's serving certificate: longer
// than any test or demo runs.
const certValidity = 48 * time.Hour

// Release is one installation of the chart.
type Release struct {
	Name      string
	Namespace string
	// Fullname is what the chart names its objects: NAME-prometheus-metrics-proxy-hook.
	Fullname string
	// CIValues are files of the chart's ci/ directory, applied in order.
	CIValues []string
	// Set are --set arguments on top.
	Set []string
}

// NewRelease is a release named name in the namespace name-system.
func NewRelease(name string, ciValues ...string) Release {
	return Release{Name: name, Namespace: name + "-system", Fullname: name + "-" + ChartName, CIValues: ciValues}
}

// TLSSecret is the name of the Secret that holds the release's serving
// certificate.
func (r Release) TLSSecret() string { return r.Name + "-tls" }

// CreateTLSSecret stores a serving certificate for the release's webhook
// Service, signed by the cluster's CA, in the release's namespace (which
// must exist): what cert-manager would issue in a cluster.
func (c *Cluster) CreateTLSSecret(ctx context.Context, r Release) error {
	certPEM, keyPEM, err := c.CA.Issue(certValidity, r.Fullname+"."+r.Namespace+".svc", r.Fullname+"."+r.Namespace+".svc.cluster.local")
	if err != nil {
		return err
	}
	dir, err := os.MkdirTemp(c.Dir, "tls-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	args := []string{"-n", r.Namespace, "create", "secret", "generic", r.TLSSecret()}
	for file, data := range map[string][]byte{"tls.crt": certPEM, "tls.key": keyPEM, "ca.crt": c.CA.PEM} {
		path := filepath.Join(dir, file)
		if err := os.WriteFile(path, data, 0o600); err != nil {
			return err
		}
		args = append(args, "--from-file="+file+"="+path)
	}
	if out, err := c.Node.Kubectl(ctx, args...); err != nil {
		return fmt.Errorf("creating the Secret %s: %w\n%s", r.TLSSecret(), err, out)
	}
	return nil
}

// InstallArgs are the arguments of `helm install` for the release: the
// chart from the registry, its ci/ values, cert-manager off and the serving
// certificate from TLSSecret, then r.Set.
func (c *Cluster) InstallArgs(r Release) ([]string, error) {
	return c.HelmArgs("install", c.Chart, r)
}

// HelmArgs are InstallArgs for another verb (upgrade) and chart (an earlier
// release's, pushed to the same registry).
func (c *Cluster) HelmArgs(verb string, chart registry.Chart, r Release) ([]string, error) {
	root, err := kubetest.RepoRoot()
	if err != nil {
		return nil, err
	}
	args := []string{verb, r.Name, chart.URL, "--version", chart.Version, "--plain-http",
		"--namespace", r.Namespace, "--kubeconfig", c.Node.KubeconfigPath}
	for _, f := range r.CIValues {
		args = append(args, "-f", filepath.Join(root, images.ChartDir, "ci", f))
	}
	args = append(args, "--set", "certManager.enabled=false", "--set", "tls.existingSecret="+r.TLSSecret(),
		"--set", "tls.caBundle="+base64.StdEncoding.EncodeToString(c.CA.PEM))
	for _, s := range r.Set {
		args = append(args, "--set", s)
	}
	return args, nil
}

// Install creates the release's namespace and TLS Secret and runs helm
// install; it returns helm's output.
func (c *Cluster) Install(ctx context.Context, r Release) (string, error) {
	if out, err := c.Node.Kubectl(ctx, "create", "namespace", r.Namespace); err != nil {
		return "", fmt.Errorf("creating the namespace %s: %w\n%s", r.Namespace, err, out)
	}
	if err := c.CreateTLSSecret(ctx, r); err != nil {
		return "", err
	}
	args, err := c.InstallArgs(r)
	if err != nil {
		return "", err
	}
	out, err := c.Helm.Run(ctx, args...)
	if err == nil && !strings.Contains(out, "STATUS: deployed") {
		err = fmt.Errorf("helm install printed no STATUS: deployed:\n%s", out)
	}
	return out, err
}

// WaitReady waits until every replica of the release's webhook Deployment
// and, with withRedis, of its Redis StatefulSet is Ready, calling progress
// with each change of what it sees.
func (c *Cluster) WaitReady(ctx context.Context, r Release, withRedis bool, progress func(string)) error {
	waits := [][2]string{{"deployment", r.Fullname}}
	if withRedis {
		waits = append(waits, [2]string{"statefulset", r.Fullname + "-redis"})
	}
	for _, w := range waits {
		last := ""
		for {
			out, err := c.Node.Kubectl(ctx, "-n", r.Namespace, "get", w[0], w[1], "-o", "jsonpath={.status.readyReplicas}/{.spec.replicas}")
			got := strings.TrimSpace(string(out))
			ready, desired, _ := strings.Cut(got, "/")
			if err == nil && ready != "" && ready == desired {
				break
			}
			if ready == "" && desired != "" {
				// The API server leaves out a count of zero.
				got = "0/" + desired
			}
			if now := fmt.Sprintf("%s %s: %s ready", w[0], w[1], got); now != last && progress != nil {
				progress(now)
				last = now
			}
			select {
			case <-ctx.Done():
				return fmt.Errorf("waiting for %s %s to be Ready (last: %s ready): %w", w[0], w[1], got, context.Cause(ctx))
			case <-time.After(time.Second):
			}
		}
	}
	return nil
}
