package node

import (
	"context"
	"fmt"
	"log"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/kaidotio/prometheus-metrics-proxy-hook/src/testenv/chartnode"
	"github.com/kaidotio/prometheus-metrics-proxy-hook/src/testenv/kubenode"
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
				fmt.Fprintf(os.Stderr, "%s log tail:\n%s\n", name, c.Node.LogTail(name, 30))
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
	*chartnode.Cluster
	// previous is the release the upgrade test starts from, built on
	// first use.
	previous previousRelease
}

// startCluster builds and pushes the images and the chart, and starts the
// node with containerd's mirrors pointing at the registry. The wait for
// another package's node (the machine-wide lock) is bounded only by ctx:
// under `make test` the node tests of several packages queue for the
// machine.
func startCluster(ctx context.Context) (*cluster, error) {
	logger := log.New(os.Stderr, "e2e/node: ", log.Ltime|log.Lmsgprefix)
	c, err := chartnode.Start(ctx, chartnode.Options{Owner: "e2e/node tests", Logf: logger.Printf})
	if err != nil {
		return nil, err
	}
	return &cluster{Cluster: c}, nil
}

func (c *cluster) stop() error { return c.Cluster.Stop() }
