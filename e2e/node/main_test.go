package node

import (
	"context"
	"fmt"
	"log"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/kaidotio/prometheus-metrics-proxy-hook/src/testenv/images"
	"github.com/kaidotio/prometheus-metrics-proxy-hook/src/testenv/kubenode"
	"github.com/kaidotio/prometheus-metrics-proxy-hook/src/testenv/kubetest"
	"github.com/kaidotio/prometheus-metrics-proxy-hook/src/testenv/registry"
	"github.com/kaidotio/prometheus-metrics-proxy-hook/src/testenv/testpki"
)

// clusters holds the node every test of the package shares: starting one
// costs a minute of image builds and half a minute of node start, and only
// one node can run on a machine anyway.
var clusters sharedClusters

type sharedClusters struct {
	once sync.Once
	c    *cluster
	err  error
}

// TestMain stops the shared node once every test ran, also when one failed.
func TestMain(m *testing.M) {
	code := m.Run()
	if c := clusters.c; c != nil {
		if code != 0 {
			for _, name := range []string{"kubelet", "containerd", "kube-proxy"} {
				fmt.Fprintf(os.Stderr, "%s log tail:\n%s\n", name, c.node.LogTail(name, 30))
			}
		}
		if err := c.stop(); err != nil {
			fmt.Fprintf(os.Stderr, "stopping the node: %v\n", err)
			code = max(code, 1)
		}
	}
	os.Exit(code)
}

// sharedCluster returns the package's node, starting it on first use. It
// skips t with -short and on a machine that cannot run a node.
func sharedCluster(t *testing.T) *cluster {
	t.Helper()
	if testing.Short() {
		t.Skip("the chart on the node starts a node and builds its images; skipped with -short")
	}
	if reason := kubenode.Unsupported(); reason != "" {
		t.Skip("kubenode: " + reason)
	}
	clusters.once.Do(func() {
		// Other packages' and helpers' nodes may hold the machine for a
		// while: the wait for them is bounded by go test's -timeout, less
		// a minute to report; without one, by 15 minutes.
		deadline := time.Now().Add(15 * time.Minute)
		if d, ok := t.Deadline(); ok {
			deadline = d.Add(-time.Minute)
		}
		ctx, cancel := context.WithDeadline(context.Background(), deadline)
		defer cancel()
		clusters.c, clusters.err = startCluster(ctx)
	})
	if clusters.err != nil {
		t.Fatalf("the shared node: %v", clusters.err)
	}
	return clusters.c
}

// cluster is the node with the registry that serves its images and the
// chart, and the CA that signs every release's serving certificate.
type cluster struct {
	node  *kubenode.Node
	reg   *registry.Registry
	helm  registry.Helm
	chart registry.Chart
	ca    *testpki.CA
	dir   string
	// previous is the release the upgrade test starts from, built on
	// first use.
	previous previousRelease
}

// startCluster builds and pushes the images and the chart, and starts the
// node with containerd's mirrors pointing at the registry.
// The wait for another package's node (the machine-wide lock) is bounded
// only by ctx and the test binary's -timeout: under `make test` the node
// tests of several packages queue for the machine; building and starting
// have deadlines of their own.
func startCluster(ctx context.Context) (_ *cluster, err error) {
	buildCtx, cancel := context.WithTimeout(ctx, 15*time.Minute)
	defer cancel()
	logger := log.New(os.Stderr, "e2e/node: ", log.Ltime|log.Lmsgprefix)
	c := &cluster{}
	defer func() {
		if err != nil {
			c.stop()
		}
	}()
	if c.dir, err = os.MkdirTemp("", "pmph-e2e-node-"); err != nil {
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
	if c.ca, err = testpki.NewCA(); err != nil {
		return nil, err
	}
	started := time.Now()
	built, err := images.Build(buildCtx, images.Options{WorkDir: filepath.Join(c.dir, "images")},
		images.NameProject, images.NameRedis, images.NamePause, images.NameMetricsApp, images.NameCoreDNS)
	if err != nil {
		return nil, fmt.Errorf("building the images: %w", err)
	}
	if c.reg, err = registry.Start(buildCtx, registry.Options{}); err != nil {
		return nil, fmt.Errorf("starting the registry: %w", err)
	}
	if err := c.reg.PushAll(buildCtx, built); err != nil {
		return nil, err
	}
	c.helm = registry.Helm{Binary: helmBin, Dir: filepath.Join(c.dir, "helm")}
	if err := os.MkdirAll(c.helm.Dir, 0o755); err != nil {
		return nil, err
	}
	if c.chart, err = c.reg.PushChart(buildCtx, c.helm, filepath.Join(root, images.ChartDir)); err != nil {
		return nil, err
	}
	logger.Printf("built and pushed the images and the chart in %s", since(started))
	mirrors := map[string]string{}
	for _, host := range images.Hosts(built) {
		mirrors[host] = "http://" + c.reg.Host
	}
	started = time.Now()
	c.node, err = kubenode.Start(ctx, kubenode.Options{
		Owner:        "e2e/node tests",
		SandboxImage: images.PauseRef, CoreDNSImage: images.CoreDNSRef, Mirrors: mirrors,
		Logf: logger.Printf,
	})
	if err != nil {
		return nil, fmt.Errorf("the node did not start: %w", err)
	}
	logger.Printf("the node started in %s", since(started))
	return c, nil
}

func (c *cluster) stop() error {
	var err error
	if c.node != nil {
		err = c.node.Stop()
	}
	if c.reg != nil {
		if cerr := c.reg.Close(); cerr != nil && err == nil {
			err = fmt.Errorf("stopping the registry: %w", cerr)
		}
	}
	if c.dir != "" {
		os.RemoveAll(c.dir)
	}
	return err
}
