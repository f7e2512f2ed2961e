// Package chartnode runs the chart the way a cluster runs it, on this
// machine: it builds the images without Docker (src/testenv/images), serves
// them and the packaged chart from a loopback registry (src/testenv/registry),
// starts a real node (src/testenv/kubenode) whose containerd pulls the
// images' upstream hosts through that registry, and installs releases of the
// chart from the registry with the real helm. cert-manager does not run
// here: each release's serving certificate comes from a throw-away CA
// (src/testenv/testpki) through the chart's tls.existingSecret.
//
// The e2e/node tests and `make demo` both run the chart this way.
package chartnode

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/kaidotio/prometheus-metrics-proxy-hook/src/testenv/images"
	"github.com/kaidotio/prometheus-metrics-proxy-hook/src/testenv/kubenode"
	"github.com/kaidotio/prometheus-metrics-proxy-hook/src/testenv/kubetest"
	"github.com/kaidotio/prometheus-metrics-proxy-hook/src/testenv/registry"
	"github.com/kaidotio/prometheus-metrics-proxy-hook/src/testenv/testpki"
)

// ChartName is the chart's name, the suffix of every object it names.
const ChartName = "prometheus-metrics-proxy-hook"

// DefaultImages are the images a node running the chart needs: the
// project's, Redis, the pause image, the app that serves metrics and CoreDNS.
func DefaultImages() []string {
	return []string{images.NameProject, images.NameRedis, images.NamePause, images.NameMetricsApp, images.NameCoreDNS}
}

// Options configure Start.
type Options struct {
	// Owner names who runs the node (kubenode.Options.Owner).
	Owner string
	// Images to build and push; empty means DefaultImages().
	Images []string
	// Version stamps the project's binaries and image labels; empty means
	// "dev".
	Version string
	// Logf, when set, receives one line per step.
	Logf func(format string, args ...any)
}

// Cluster is a running node with the registry that serves its images and
// the chart, and the CA that signs every release's serving certificate.
type Cluster struct {
	Node     *kubenode.Node
	Registry *registry.Registry
	Helm     registry.Helm
	Chart    registry.Chart
	CA       *testpki.CA
	// Dir holds the image layers and helm's configuration; Stop removes it.
	Dir string
	// Timings of the start's steps, for reports.
	ImagesTook, NodeTook time.Duration
}

// Start builds and pushes the images and the chart, and starts the node with
// containerd's mirrors pointing at the registry. On error everything it
// started is stopped again.
func Start(ctx context.Context, opts Options) (_ *Cluster, err error) {
	logf := opts.Logf
	if logf == nil {
		logf = func(string, ...any) {}
	}
	names := opts.Images
	if len(names) == 0 {
		names = DefaultImages()
	}
	c := &Cluster{}
	defer func() {
		if err != nil {
			err = errors.Join(err, c.Stop())
		}
	}()
	if c.Dir, err = os.MkdirTemp("", "pmph-chartnode-"); err != nil {
		return nil, err
	}
	root, err := kubetest.RepoRoot()
	if err != nil {
		return nil, err
	}
	helmBin, err := kubetest.Tool("helm")
	if err != nil {
		return nil, err
	}
	if c.CA, err = testpki.NewCA(); err != nil {
		return nil, err
	}
	started := time.Now()
	logf("building the images %s without a container engine", strings.Join(names, ", "))
	built, err := images.Build(ctx, images.Options{WorkDir: filepath.Join(c.Dir, "images"), Version: opts.Version}, names...)
	if err != nil {
		return nil, fmt.Errorf("building the images: %w", err)
	}
	if c.Registry, err = registry.Start(ctx, registry.Options{}); err != nil {
		return nil, fmt.Errorf("starting the registry: %w", err)
	}
	logf("the OCI registry serves on %s (pid %d)", c.Registry.Host, c.Registry.Pid())
	if err := c.Registry.PushAll(ctx, built); err != nil {
		return nil, err
	}
	c.Helm = registry.Helm{Binary: helmBin, Dir: filepath.Join(c.Dir, "helm")}
	if err := os.MkdirAll(c.Helm.Dir, 0o755); err != nil {
		return nil, err
	}
	if c.Chart, err = c.Registry.PushChart(ctx, c.Helm, filepath.Join(root, images.ChartDir)); err != nil {
		return nil, err
	}
	c.ImagesTook = time.Since(started)
	logf("built and pushed the images and the chart %s:%s in %s", c.Chart.URL, c.Chart.Version, round(c.ImagesTook))
	mirrors := map[string]string{}
	for _, host := range images.Hosts(built) {
		mirrors[host] = "http://" + c.Registry.Host
	}
	started = time.Now()
	c.Node, err = kubenode.Start(ctx, kubenode.Options{
		Owner:        opts.Owner,
		SandboxImage: images.PauseRef, CoreDNSImage: images.CoreDNSRef, Mirrors: mirrors,
		Logf: logf,
	})
	if err != nil {
		return nil, fmt.Errorf("the node did not start: %w", err)
	}
	c.NodeTook = time.Since(started)
	logf("the node started in %s", round(c.NodeTook))
	return c, nil
}

// Stop stops the node and the registry and removes the working directory.
// It is safe to call more than once.
func (c *Cluster) Stop() error {
	var errs []error
	if c.Node != nil {
		errs = append(errs, c.Node.Stop())
	}
	if c.Registry != nil {
		if err := c.Registry.Close(); err != nil {
			errs = append(errs, fmt.Errorf("stopping the registry: %w", err))
		}
	}
	if c.Dir != "" {
		if err := os.RemoveAll(c.Dir); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

func round(d time.Duration) time.Duration { return d.Round(100 * time.Millisecond) }
