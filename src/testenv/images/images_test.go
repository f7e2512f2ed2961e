package images_test

import (
	"context"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/kaidotio/prometheus-metrics-proxy-hook/src/testenv/images"
	"github.com/kaidotio/prometheus-metrics-proxy-hook/src/testenv/kubetest"
)

const (
	testVersion  = "v9.8.7-images-test"
	testRevision = "0123456789abcdef"
)

func build(t *testing.T, name string, opts images.Options) images.Built {
	t.Helper()
	if opts.WorkDir == "" {
		opts.WorkDir = t.TempDir()
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	built, err := images.Build(ctx, opts, name)
	if err != nil {
		t.Fatal(err)
	}
	if len(built) != 1 || built[0].Name != name {
		t.Fatalf("Build(%q) returned %d images (%v), want one named %q", name, len(built), built, name)
	}
	return built[0]
}

func configOf(t *testing.T, img v1.Image) *v1.ConfigFile {
	t.Helper()
	cfg, err := img.ConfigFile()
	if err != nil {
		t.Fatalf("reading the image config: %v", err)
	}
	return cfg
}

func extract(t *testing.T, img v1.Image) string {
	t.Helper()
	dir := t.TempDir()
	if err := images.Extract(img, dir); err != nil {
		t.Fatal(err)
	}
	return dir
}

func repoRoot(t *testing.T) string {
	t.Helper()
	root, err := kubetest.RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	return root
}

func TestProjectImageConfig(t *testing.T) {
	root := repoRoot(t)
	chart, err := images.ReadChart(root)
	if err != nil {
		t.Fatal(err)
	}
	binaries := images.DefaultBinaries()
	b := sharedBuild(t, images.NameProject)
	cfg := configOf(t, b.Image)
	tests := []struct {
		name      string
		got, want any
	}{
		{"entrypoint", cfg.Config.Entrypoint, []string{binaries[0].Path}},
		{"user", cfg.Config.User, "65532:65532"},
		{"labels", cfg.Config.Labels, images.ProjectLabels(testVersion, testRevision)},
		{"version label", cfg.Config.Labels["org.opencontainers.image.version"], testVersion},
		{"os", cfg.OS, "linux"},
		{"references", b.Refs, []string{chart.ImageRepository + ":" + chart.AppVersion, chart.ImageRepository + ":" + testVersion}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if !equal(tt.got, tt.want) {
				t.Errorf("got %v, want %v", tt.got, tt.want)
			}
		})
	}
}

func equal(a, b any) bool {
	switch a := a.(type) {
	case []string:
		return slices.Equal(a, b.([]string))
	case map[string]string:
		return maps.Equal(a, b.(map[string]string))
	default:
		return a == b
	}
}

func TestProjectImageFiles(t *testing.T) {
	b := sharedBuild(t, images.NameProject)
	dir := extract(t, b.Image)
	for _, bin := range images.DefaultBinaries() {
		t.Run(filepath.Base(bin.Path)+" version", func(t *testing.T) {
			out, err := exec.Command(filepath.Join(dir, bin.Path), "version").CombinedOutput()
			if err != nil {
				t.Fatalf("%s version: %v\n%s", bin.Path, err, out)
			}
			for _, want := range []string{testVersion, testRevision} {
				if !strings.Contains(string(out), want) {
					t.Errorf("%s version printed %q, which lacks %q", bin.Path, out, want)
				}
			}
		})
	}
	t.Run("no shell", func(t *testing.T) {
		for _, sh := range []string{"bin/sh", "bin/bash", "bin/busybox"} {
			if _, err := os.Lstat(filepath.Join(dir, sh)); err == nil {
				t.Errorf("the project image has /%s; it must have no shell", sh)
			}
		}
	})
	t.Run("nonroot account", func(t *testing.T) {
		for file, line := range map[string]string{
			"etc/passwd": "nonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin",
			"etc/group":  "nonroot:x:65532:",
		} {
			data, err := os.ReadFile(filepath.Join(dir, file))
			if err != nil {
				t.Fatal(err)
			}
			if !slices.Contains(strings.Split(string(data), "\n"), line) {
				t.Errorf("/%s lacks the line %q:\n%s", file, line, data)
			}
		}
	})
}

func TestProjectImageIsReproducible(t *testing.T) {
	opts := images.Options{Version: testVersion, Revision: testRevision}
	first, second := sharedBuild(t, images.NameProject), build(t, images.NameProject, opts)
	d1, err := first.Image.Digest()
	if err != nil {
		t.Fatal(err)
	}
	d2, err := second.Image.Digest()
	if err != nil {
		t.Fatal(err)
	}
	if d1 != d2 {
		t.Errorf("two builds from the same inputs differ: %s and %s", d1, d2)
	}
}

func TestBuildRejectsUnknownNameAndMissingWorkDir(t *testing.T) {
	tests := []struct {
		name string
		opts images.Options
		img  string
		want string
	}{
		{"unknown image", images.Options{WorkDir: t.TempDir()}, "nginx", `there is no image named "nginx"`},
		{"no work dir", images.Options{}, images.NamePause, "WorkDir is empty"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := images.Build(context.Background(), tt.opts, tt.img)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("Build(%q) = %v, want an error containing %q", tt.img, err, tt.want)
			}
		})
	}
}

func TestSplitRef(t *testing.T) {
	tests := []struct {
		ref, host, repo, tag string
	}{
		{"ghcr.io/kaidotio/prometheus-metrics-proxy-hook:0.1.0", "ghcr.io", "kaidotio/prometheus-metrics-proxy-hook", "0.1.0"},
		{"docker.io/library/redis:7.4.2-alpine", "docker.io", "library/redis", "7.4.2-alpine"},
		{"127.0.0.1:5000/pause:3.10", "127.0.0.1:5000", "pause", "3.10"},
		{"registry.k8s.io/coredns/coredns", "registry.k8s.io", "coredns/coredns", "latest"},
	}
	for _, tt := range tests {
		host, repo, tag := images.SplitRef(tt.ref)
		if host != tt.host || repo != tt.repo || tag != tt.tag {
			t.Errorf("SplitRef(%q) = %q, %q, %q; want %q, %q, %q", tt.ref, host, repo, tag, tt.host, tt.repo, tt.tag)
		}
	}
}
