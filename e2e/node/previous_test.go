package node

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/kaidotio/prometheus-metrics-proxy-hook/src/testenv/images"
	"github.com/kaidotio/prometheus-metrics-proxy-hook/src/testenv/kubetest"
	"github.com/kaidotio/prometheus-metrics-proxy-hook/src/testenv/registry"
)

// previousCommit is the release the upgrade test starts from: the last
// commit of main whose chart and binaries predate lease records, lease API
// tokens and the reconciler (the merge of the node branch, before the
// sidecar lifecycle, reconciler and lease API identity work). Its image has
// the two binaries at the paths its chart names.
const previousCommit = "13e08201820bb30b72da04fd53183bf0132d752b"

// previousVersion is the version its chart, appVersion and image tag get
// here: that commit's chart says 0.1.0, as this checkout's does, and its
// image would otherwise replace the current one in the registry.
const previousVersion = "0.0.1-previous"

// previousRelease builds the previous release's image and chart once per
// test binary, from a tree exported from git.
type previousRelease struct {
	once  sync.Once
	chart registry.Chart
	err   error
}

// previousChart returns the previous release's chart in the registry, its
// image pushed under previousVersion.
func (c *cluster) previousChart(t *testing.T) registry.Chart {
	t.Helper()
	c.previous.once.Do(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
		defer cancel()
		started := time.Now()
		c.previous.chart, c.previous.err = c.buildPrevious(ctx)
		t.Logf("built and pushed the image and chart of %s (%s) in %s", previousCommit[:7], previousVersion, since(started))
	})
	if c.previous.err != nil {
		t.Fatalf("the previous release: %v", c.previous.err)
	}
	return c.previous.chart
}

func (c *cluster) buildPrevious(ctx context.Context) (registry.Chart, error) {
	root, err := kubetest.RepoRoot()
	if err != nil {
		return registry.Chart{}, err
	}
	src, err := os.MkdirTemp(c.Dir, "previous-src-")
	if err != nil {
		return registry.Chart{}, err
	}
	defer os.RemoveAll(src)
	if err := images.ExportCommit(ctx, root, previousCommit, src); err != nil {
		return registry.Chart{}, err
	}
	built, err := images.Project(ctx, images.Options{
		WorkDir: filepath.Join(c.Dir, "images-previous"), Root: src,
		Version: previousVersion, Revision: previousCommit, Tags: []string{previousVersion},
	})
	if err != nil {
		return registry.Chart{}, fmt.Errorf("building the image of %s: %w", previousCommit, err)
	}
	if err := c.Registry.PushAll(ctx, []images.Built{built}); err != nil {
		return registry.Chart{}, err
	}
	return c.Registry.PushChart(ctx, c.Helm, filepath.Join(src, images.ChartDir),
		"--version", previousVersion, "--app-version", previousVersion)
}
