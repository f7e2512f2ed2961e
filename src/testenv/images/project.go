package images

import (
	"context"
	"fmt"
	"io/fs"

	v1 "github.com/google/go-containerregistry/pkg/v1"
)

// Binary is one Go command of the project image.
type Binary struct {
	// Package is the command's package relative to the repository root
	// ("./src/cmd/...").
	Package string
	// Path is where it goes in the image.
	Path string
}

// DefaultBinaries is the project image's layout: the webhook (the
// entrypoint) and the sidecar the webhook injects, each its own binary.
func DefaultBinaries() []Binary {
	return []Binary{
		{Package: "./src/cmd/prometheus-metrics-proxy-hook-webhook", Path: "/usr/local/bin/prometheus-metrics-proxy-hook-webhook"},
		{Package: "./src/cmd/prometheus-metrics-proxy-hook-sidecar", Path: "/usr/local/bin/prometheus-metrics-proxy-hook-sidecar"},
	}
}

// The project image's user: distroless's nonroot, the uid the chart and the
// injected sidecar run as.
const (
	NonrootUID  = 65532
	ProjectUser = "65532:65532"
)

// buildinfoPkg is where the version is stamped, as in the Makefile's LDFLAGS.
const buildinfoPkg = modulePath + "/src/buildinfo"

// ProjectLabels are the Dockerfile's LABEL lines for a version and revision.
func ProjectLabels(version, revision string) map[string]string {
	return map[string]string{
		"org.opencontainers.image.title":       "prometheus-metrics-proxy-hook",
		"org.opencontainers.image.description": "Admission webhook: Redlock semaphore for pods and a metrics-proxy sidecar that keeps the final scrape",
		"org.opencontainers.image.source":      "https://github.com/kaidotio/prometheus-metrics-proxy-hook",
		"org.opencontainers.image.version":     version,
		"org.opencontainers.image.revision":    revision,
	}
}

// Project builds the project image the way the Dockerfile does: static
// binaries stamped with the version, on a root file system like distroless
// static's nonroot variant (passwd and group with nonroot, /home/nonroot,
// /tmp; no shell), USER 65532:65532. It is named by the chart's default
// repository under the chart's appVersion, and under Version too when that is
// a different tag.
func Project(ctx context.Context, opts Options) (Built, error) {
	opts, err := opts.withDefaults()
	if err != nil {
		return Built{}, err
	}
	dir, err := newBuildDir(opts.WorkDir, NameProject)
	if err != nil {
		return Built{}, err
	}
	binaries := opts.Binaries
	if len(binaries) == 0 {
		binaries = DefaultBinaries()
	}
	root, err := projectRootFS(ctx, opts, binaries, dir)
	if err != nil {
		return Built{}, err
	}
	entrypoint := opts.Entrypoint
	if len(entrypoint) == 0 {
		entrypoint = []string{binaries[0].Path}
	}
	img, err := assemble(root, dir, opts.Arch, v1.Config{
		User:       ProjectUser,
		Entrypoint: entrypoint,
		Env:        []string{DefaultPath},
		WorkingDir: "/home/nonroot",
		Labels:     ProjectLabels(opts.Version, opts.Revision),
	})
	if err != nil {
		return Built{}, err
	}
	chart, err := ReadChart(opts.Root)
	if err != nil {
		return Built{}, err
	}
	refs, err := projectRefs(chart, opts)
	if err != nil {
		return Built{}, err
	}
	return Built{Name: NameProject, Refs: refs, Image: img}, nil
}

func projectRefs(chart Chart, opts Options) ([]string, error) {
	tags := opts.Tags
	if len(tags) == 0 {
		tags = []string{chart.AppVersion}
		if opts.Version != chart.AppVersion && validTag(opts.Version) {
			tags = append(tags, opts.Version)
		}
	}
	refs := make([]string, len(tags))
	for i, tag := range tags {
		if !validTag(tag) {
			return nil, fmt.Errorf("the project image's tag %q is not a valid tag ([A-Za-z0-9_][A-Za-z0-9_.-]{0,127})", tag)
		}
		refs[i] = chart.ImageRepository + ":" + tag
	}
	return refs, nil
}

func projectRootFS(ctx context.Context, opts Options, binaries []Binary, dir string) (*RootFS, error) {
	pkgs := make([]string, len(binaries))
	for i, b := range binaries {
		pkgs[i] = b.Package
	}
	build := goBuild{goCmd: opts.Go, root: opts.Root, arch: opts.Arch, ldflags: fmt.Sprintf(
		"-X %s.Version=%s -X %s.Revision=%s", buildinfoPkg, opts.Version, buildinfoPkg, opts.Revision)}
	bins, err := build.build(ctx, dir, pkgs...)
	if err != nil {
		return nil, err
	}
	root := NewRootFS()
	root.Users(Account{Name: "nonroot", ID: NonrootUID, Home: "/home/nonroot"})
	root.File("etc/nsswitch.conf", []byte("hosts: files dns\n"), 0o644, Root)
	root.Dir("home/nonroot", 0o700, Owner{UID: NonrootUID, GID: NonrootUID})
	root.Dir("tmp", fs.ModeSticky|0o777, Root)
	for _, b := range binaries {
		if err := root.HostFile(b.Path, bins[b.Package]); err != nil {
			return nil, err
		}
	}
	return root, nil
}

// validTag reports whether s can be an image tag ([A-Za-z0-9_][A-Za-z0-9_.-]{0,127}).
func validTag(s string) bool {
	if s == "" || len(s) > 128 || s[0] == '.' || s[0] == '-' {
		return false
	}
	for _, c := range s {
		ok := c == '_' || c == '.' || c == '-' || c >= '0' && c <= '9' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z'
		if !ok {
			return false
		}
	}
	return true
}
