// Package images builds the container images the local node runs, without a
// container engine: the project's image from the same inputs as the
// Dockerfile, Redis under the tag the chart names, and the images tests and
// the node need (pause, an app that serves metrics, busybox, CoreDNS).
// go-containerregistry assembles the manifests, configs and compressed
// layers; each layer is the file system described by a RootFS.
//
// Every image is named by the reference a pod or the chart uses for it
// (Built.Refs), so that a registry mirror for those hosts (src/testenv/registry)
// serves them with no change to the chart's values.
package images

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/kaidotio/prometheus-metrics-proxy-hook/src/testenv/kubetest"
)

// The references of the images that are not the chart's own. The pause and
// CoreDNS images keep the names Kubernetes gives them; the test-only ones live
// under pmph.invalid, a host that cannot resolve, so nothing can pull them
// from anywhere but the local registry.
const (
	PauseRef      = "registry.k8s.io/pause:3.10"
	CoreDNSRef    = "registry.k8s.io/coredns/coredns:v1.15.0"
	BusyboxRef    = "pmph.invalid/busybox:static"
	MetricsAppRef = "pmph.invalid/metrics-app:v1"
)

// The names Build takes.
const (
	NameProject    = "project"
	NameRedis      = "redis"
	NamePause      = "pause"
	NameMetricsApp = "metrics-app"
	NameBusybox    = "busybox"
	NameCoreDNS    = "coredns"
)

// Names lists every image Build can make, in build order.
func Names() []string {
	return []string{NameProject, NameRedis, NamePause, NameMetricsApp, NameBusybox, NameCoreDNS}
}

// Built is an image and the references it is known by (host included, as a
// pod spec names it).
type Built struct {
	Name  string
	Refs  []string
	Image v1.Image
}

// Options are the inputs of every build.
type Options struct {
	// WorkDir holds the binaries and layer files; the images read their layers
	// from it, so it must outlive them. Required.
	WorkDir string
	// Root is the repository root; empty means kubetest.RepoRoot().
	Root string
	// Version and Revision are stamped into the project's binaries and labels;
	// empty means "dev" and "unknown", as an unstamped build says.
	Version  string
	Revision string
	// Binaries go into the project image; empty means DefaultBinaries().
	Binaries []Binary
	// Entrypoint of the project image; empty means the first binary alone.
	Entrypoint []string
	// Tags name the project image under the chart's image repository; empty
	// means the chart's appVersion, and Version too when it is another tag.
	// A build of an earlier commit whose chart has the same appVersion needs
	// a tag of its own, or it would replace the current image.
	Tags []string
	// Arch is the project image's GOARCH; empty means this machine's. The
	// other images hold this machine's binaries and are always its arch.
	Arch string
	// ToolsBin holds the coredns binary hack/install-tools.sh built; empty
	// means kubetest.ToolsBin().
	ToolsBin string
	// Go is the go command; empty means "go" on PATH.
	Go string
}

func (o Options) withDefaults() (Options, error) {
	if o.WorkDir == "" {
		return o, errors.New("images.Options.WorkDir is empty: the images read their layers from it, so give a directory that outlives them")
	}
	if o.Root == "" {
		root, err := kubetest.RepoRoot()
		if err != nil {
			return o, err
		}
		o.Root = root
	}
	if o.Version == "" {
		o.Version = "dev"
	}
	if o.Revision == "" {
		o.Revision = "unknown"
	}
	if o.ToolsBin == "" {
		bin, err := kubetest.ToolsBin()
		if err != nil {
			return o, err
		}
		o.ToolsBin = bin
	}
	return o, nil
}

func builder(name string) (func(context.Context, Options) (Built, error), bool) {
	switch name {
	case NameProject:
		return Project, true
	case NameRedis:
		return Redis, true
	case NamePause:
		return Pause, true
	case NameMetricsApp:
		return MetricsApp, true
	case NameBusybox:
		return Busybox, true
	case NameCoreDNS:
		return CoreDNS, true
	}
	return nil, false
}

// Build makes the named images (all of Names() when none is given).
func Build(ctx context.Context, opts Options, names ...string) ([]Built, error) {
	if len(names) == 0 {
		names = Names()
	}
	built := make([]Built, 0, len(names))
	for _, name := range names {
		build, ok := builder(name)
		if !ok {
			return nil, fmt.Errorf("there is no image named %q; the images are %s", name, strings.Join(Names(), ", "))
		}
		b, err := build(ctx, opts)
		if err != nil {
			return nil, fmt.Errorf("building the %s image: %w", name, err)
		}
		built = append(built, b)
	}
	return built, nil
}

// Hosts returns the registry hosts the references name (ghcr.io, docker.io,
// registry.k8s.io, pmph.invalid...), sorted: the hosts a node needs a mirror
// for.
func Hosts(built []Built) []string {
	var hosts []string
	for _, b := range built {
		for _, ref := range b.Refs {
			host, _, _ := SplitRef(ref)
			if !slices.Contains(hosts, host) {
				hosts = append(hosts, host)
			}
		}
	}
	slices.Sort(hosts)
	return hosts
}

// SplitRef splits a fully qualified reference "host/path:tag" into its host
// as written ("docker.io", not the index host), repository path and tag.
func SplitRef(ref string) (host, repo, tag string) {
	host, rest, _ := strings.Cut(ref, "/")
	repo, tag = rest, "latest"
	if i := strings.LastIndex(rest, ":"); i >= 0 {
		repo, tag = rest[:i], rest[i+1:]
	}
	return host, repo, tag
}

func newBuildDir(workDir, name string) (string, error) {
	dir := filepath.Join(workDir, name)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", fmt.Errorf("creating the build directory of the %s image: %w", name, err)
	}
	return os.MkdirTemp(dir, "build-")
}
