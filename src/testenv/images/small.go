package images

import (
	"context"
	"fmt"
	"os"
	"path/filepath"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/kaidotio/prometheus-metrics-proxy-hook/src/testenv/countingapp"
)

// The test programs built into the pause and metrics-app images.
const (
	pausePackage      = "./src/testenv/cmd/pmph-pause"
	metricsAppPackage = "./src/testenv/cmd/countingapp"
)

// MetricsAppPort is the port the metrics app serves /metrics on by default.
const MetricsAppPort = 8080

// Pause builds the sandbox (pause) image: a static Go program that blocks
// until SIGTERM or SIGINT, as registry.k8s.io/pause does.
func Pause(ctx context.Context, opts Options) (Built, error) {
	img, err := goProgramImage(ctx, opts, NamePause, pausePackage, "/pause", v1.Config{User: "65535:65535"})
	if err != nil {
		return Built{}, err
	}
	return Built{Name: NamePause, Refs: []string{PauseRef}, Image: img}, nil
}

// MetricsApp builds the app the lifecycle tests run, the one the process
// tests run too (package countingapp): by default it serves a counter that
// grows once a second on :8080/metrics, keeps counting for 5 s after SIGTERM,
// and prints its final value as a JSON line on exit. A pod's env overrides
// the COUNTINGAPP_* defaults.
func MetricsApp(ctx context.Context, opts Options) (Built, error) {
	img, err := goProgramImage(ctx, opts, NameMetricsApp, metricsAppPackage, "/metrics-app", v1.Config{
		User:         ProjectUser,
		ExposedPorts: map[string]struct{}{fmt.Sprintf("%d/tcp", MetricsAppPort): {}},
		Env: []string{
			fmt.Sprintf("%s=:%d", countingapp.EnvListen, MetricsAppPort),
			countingapp.EnvTick + "=1s",
			countingapp.EnvDrain + "=5s",
		},
	})
	if err != nil {
		return Built{}, err
	}
	return Built{Name: NameMetricsApp, Refs: []string{MetricsAppRef}, Image: img}, nil
}

func goProgramImage(ctx context.Context, opts Options, name, pkg, path string, cfg v1.Config) (v1.Image, error) {
	opts, err := opts.withDefaults()
	if err != nil {
		return nil, err
	}
	dir, err := newBuildDir(opts.WorkDir, name)
	if err != nil {
		return nil, err
	}
	bins, err := goBuild{goCmd: opts.Go, root: opts.Root}.build(ctx, dir, pkg)
	if err != nil {
		return nil, err
	}
	root := NewRootFS()
	root.Users(Account{Name: "nonroot", ID: NonrootUID, Home: "/nonexistent"})
	if err := root.HostFile(path, bins[pkg]); err != nil {
		return nil, err
	}
	cfg.Entrypoint = []string{path}
	cfg.Env = append([]string{DefaultPath}, cfg.Env...)
	return assemble(root, dir, "", cfg)
}

// CoreDNS builds the cluster DNS image from the coredns binary that
// hack/install-tools.sh builds from the pinned tools module
// (hack/tools/coredns), as /coredns with the upstream image's entrypoint.
// The Corefile comes from the Deployment's ConfigMap (-conf). It runs as
// nonroot and /coredns has the file capability to bind port 53, which takes
// the pod granting NET_BIND_SERVICE, as kubeadm's CoreDNS Deployment does.
func CoreDNS(ctx context.Context, opts Options) (Built, error) {
	opts, err := opts.withDefaults()
	if err != nil {
		return Built{}, err
	}
	bin := filepath.Join(opts.ToolsBin, "coredns")
	if _, err := os.Stat(bin); err != nil {
		return Built{}, fmt.Errorf("the coredns binary is missing: run hack/install-tools.sh coredns (%w)", err)
	}
	if err := checkStatic(bin); err != nil {
		return Built{}, err
	}
	dir, err := newBuildDir(opts.WorkDir, NameCoreDNS)
	if err != nil {
		return Built{}, err
	}
	root := NewRootFS()
	root.Users(Account{Name: "nonroot", ID: NonrootUID, Home: "/nonexistent"})
	if err := root.HostFile("coredns", bin); err != nil {
		return Built{}, err
	}
	if err := root.FileCapabilities("coredns", CapNetBindService); err != nil {
		return Built{}, err
	}
	img, err := assemble(root, dir, "", v1.Config{
		User:         ProjectUser,
		Entrypoint:   []string{"/coredns"},
		Env:          []string{DefaultPath},
		ExposedPorts: map[string]struct{}{"53/tcp": {}, "53/udp": {}},
	})
	if err != nil {
		return Built{}, err
	}
	return Built{Name: NameCoreDNS, Refs: []string{CoreDNSRef}, Image: img}, nil
}
