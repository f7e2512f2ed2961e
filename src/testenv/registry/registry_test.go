package registry_test

import (
	"context"
	"encoding/base64"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/remote"

	"github.com/kaidotio/prometheus-metrics-proxy-hook/src/testenv/images"
	"github.com/kaidotio/prometheus-metrics-proxy-hook/src/testenv/kubetest"
	"github.com/kaidotio/prometheus-metrics-proxy-hook/src/testenv/registry"
	"github.com/kaidotio/prometheus-metrics-proxy-hook/src/testenv/testpki"
)

func buildImages(t *testing.T, names ...string) []images.Built {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	built, err := images.Build(ctx, images.Options{WorkDir: t.TempDir(), Version: "v0.0.0-registry-test"}, names...)
	if err != nil {
		t.Fatal(err)
	}
	return built
}

// TestPushPullRoundTrip pushes images to the real registry under their
// references' repository paths and reads them back, by the reference a pod
// names and by the registry's own name, byte for byte.
func TestPushPullRoundTrip(t *testing.T) {
	reg := registry.StartT(t)
	ctx := context.Background()
	built := buildImages(t, images.NameProject, images.NameRedis, images.NamePause)
	if err := reg.PushAll(ctx, built); err != nil {
		t.Fatal(err)
	}
	for _, b := range built {
		want, err := b.Image.Digest()
		if err != nil {
			t.Fatal(err)
		}
		wantConfig, err := b.Image.RawConfigFile()
		if err != nil {
			t.Fatal(err)
		}
		for _, ref := range b.Refs {
			for _, asked := range []string{ref, reg.Local(ref)} {
				t.Run(asked, func(t *testing.T) {
					img, err := reg.Pull(ctx, asked)
					if err != nil {
						t.Fatal(err)
					}
					got, err := img.Digest()
					if err != nil {
						t.Fatal(err)
					}
					if got != want {
						t.Errorf("pulled digest %s, pushed %s", got, want)
					}
					config, err := img.RawConfigFile()
					if err != nil {
						t.Fatal(err)
					}
					if string(config) != string(wantConfig) {
						t.Errorf("pulled config differs from the pushed one:\n%s\n%s", config, wantConfig)
					}
				})
			}
		}
	}
	t.Run("tags", func(t *testing.T) {
		repo, err := name.NewRepository(reg.Host + "/kaidotio/prometheus-metrics-proxy-hook")
		if err != nil {
			t.Fatal(err)
		}
		tags, err := remote.List(repo, remote.WithContext(ctx))
		if err != nil {
			t.Fatal(err)
		}
		if !slices.Contains(tags, "0.1.0") || !slices.Contains(tags, "v0.0.0-registry-test") {
			t.Errorf("the project repository has the tags %q, want the chart's appVersion and the stamped version", tags)
		}
	})
	t.Run("missing image", func(t *testing.T) {
		if _, err := reg.Pull(ctx, "ghcr.io/kaidotio/prometheus-metrics-proxy-hook:no-such-tag"); err == nil {
			t.Error("pulling a tag nobody pushed succeeded")
		}
	})
}

func TestLocalRefKeepsTheRepositoryPath(t *testing.T) {
	tests := []struct{ ref, want string }{
		{"ghcr.io/kaidotio/prometheus-metrics-proxy-hook:0.1.0", "127.0.0.1:5000/kaidotio/prometheus-metrics-proxy-hook:0.1.0"},
		{"docker.io/library/redis:7.4.2-alpine", "127.0.0.1:5000/library/redis:7.4.2-alpine"},
		{"registry.k8s.io/coredns/coredns:v1.15.0", "127.0.0.1:5000/coredns/coredns:v1.15.0"},
	}
	for _, tt := range tests {
		if got := registry.LocalRef("127.0.0.1:5000", tt.ref); got != tt.want {
			t.Errorf("LocalRef(%q) = %q, want %q", tt.ref, got, tt.want)
		}
	}
}

func TestCloseStopsTheRegistry(t *testing.T) {
	reg, err := registry.Start(context.Background(), registry.Options{})
	if err != nil {
		t.Fatal(err)
	}
	dir := reg.Dir()
	if err := reg.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := reg.Pull(context.Background(), images.PauseRef); err == nil {
		t.Error("the registry still answers after Close")
	}
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Errorf("the registry's directory %s is still there after Close (%v)", dir, err)
	}
}

// TestChartThroughTheRegistry packages the chart, pushes it with helm push,
// and reads it back with helm as a user would from the README's oci:// URL,
// up to installing it on a real kube-apiserver.
func TestChartThroughTheRegistry(t *testing.T) {
	root, err := kubetest.RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	helmBin, err := kubetest.Tool("helm")
	if err != nil {
		t.Fatal(err)
	}
	reg := registry.StartT(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	helm := registry.Helm{Binary: helmBin, Dir: t.TempDir()}
	chart, err := reg.PushChart(ctx, helm, filepath.Join(root, images.ChartDir))
	if err != nil {
		t.Fatal(err)
	}
	meta, err := images.ReadChart(root)
	if err != nil {
		t.Fatal(err)
	}
	if want := "oci://" + reg.Host + "/kaidotio/charts/prometheus-metrics-proxy-hook"; chart.URL != want {
		t.Errorf("chart URL %q, want %q", chart.URL, want)
	}
	tests := []struct {
		name string
		args []string
		want []string
	}{
		{"show chart", []string{"show", "chart", chart.URL, "--version", chart.Version, "--plain-http"},
			[]string{"name: prometheus-metrics-proxy-hook", "appVersion: " + meta.AppVersion}},
		{"template", []string{"template", "pmph", chart.URL, "--version", chart.Version, "--plain-http", "--namespace", "pmph-system"},
			[]string{"image: " + meta.ImageRepository + ":" + meta.AppVersion, "image: " + meta.RedisRef()}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			out, err := helm.Run(ctx, tt.args...)
			if err != nil {
				t.Fatal(err)
			}
			for _, want := range tt.want {
				if !strings.Contains(out, want) {
					t.Errorf("helm %s printed no %q:\n%s", strings.Join(tt.args, " "), want, out)
				}
			}
		})
	}
	t.Run("install", func(t *testing.T) {
		installFromRegistry(t, ctx, helm, chart, meta)
	})
	t.Run("pull", func(t *testing.T) {
		dest := t.TempDir()
		if _, err := helm.Run(ctx, "pull", chart.URL, "--version", chart.Version, "--plain-http", "--destination", dest); err != nil {
			t.Fatal(err)
		}
		if _, err := os.Stat(filepath.Join(dest, "prometheus-metrics-proxy-hook-"+chart.Version+".tgz")); err != nil {
			t.Errorf("helm pull wrote no archive: %v", err)
		}
	})
}

func TestWriteMirrors(t *testing.T) {
	reg := registry.StartT(t)
	dir := t.TempDir()
	if err := reg.WriteMirrors(dir, "ghcr.io", "docker.io"); err != nil {
		t.Fatal(err)
	}
	for _, host := range []string{"ghcr.io", "docker.io"} {
		data, err := os.ReadFile(filepath.Join(dir, host, "hosts.toml"))
		if err != nil {
			t.Fatal(err)
		}
		for _, want := range []string{`server = "http://` + reg.Host + `"`, `[host."http://` + reg.Host + `"]`, `capabilities = ["pull", "resolve"]`} {
			if !strings.Contains(string(data), want) {
				t.Errorf("%s/hosts.toml lacks %q:\n%s", host, want, data)
			}
		}
	}
}

// installFromRegistry runs `helm install oci://...` as the README's quickstart
// does, against a real kube-apiserver (certificates from tls.existingSecret:
// cert-manager does not run here), and checks that the release is deployed
// with the chart's default image references.
func installFromRegistry(t *testing.T, ctx context.Context, helm registry.Helm, chart registry.Chart, meta images.Chart) {
	cp, err := kubetest.Start(ctx, kubetest.Options{Logf: t.Logf})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := cp.Stop(); err != nil {
			t.Errorf("stopping the control plane: %v", err)
		}
	})
	ca, err := testpki.NewCA()
	if err != nil {
		t.Fatal(err)
	}
	kube := []string{"--kubeconfig", cp.KubeconfigPath, "--namespace", "pmph-system"}
	out, err := helm.Run(ctx, append([]string{"install", "pmph", chart.URL, "--version", chart.Version, "--plain-http",
		"--create-namespace", "--set", "certManager.enabled=false", "--set", "tls.existingSecret=pmph-tls",
		"--set", "tls.caBundle=" + base64.StdEncoding.EncodeToString(ca.PEM)}, kube...)...)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out, "STATUS: deployed") {
		t.Errorf("helm install printed no STATUS: deployed:\n%s", out)
	}
	manifest, err := helm.Run(ctx, append([]string{"get", "manifest", "pmph"}, kube...)...)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"image: " + meta.ImageRepository + ":" + meta.AppVersion, "image: " + meta.RedisRef()} {
		if !strings.Contains(manifest, want) {
			t.Errorf("the installed release has no %q", want)
		}
	}
}
