package registry

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"

	"github.com/kaidotio/prometheus-metrics-proxy-hook/src/testenv/images"
)

// Local returns where the registry keeps an image a pod names ref:
// "ghcr.io/kaidotio/x:1" -> "127.0.0.1:PORT/kaidotio/x:1" (the repository path
// is kept, so a mirror for the original host finds it).
func (r *Registry) Local(ref string) string { return LocalRef(r.Host, ref) }

// LocalRef is Local for any registry host.
func LocalRef(host, ref string) string {
	_, repo, tag := images.SplitRef(ref)
	return host + "/" + repo + ":" + tag
}

// Push pushes the image under each of the references (by their Local names)
// and returns its manifest digest.
func (r *Registry) Push(ctx context.Context, img v1.Image, refs ...string) (v1.Hash, error) {
	return Push(ctx, r.Host, img, refs...)
}

// Push pushes the image to the registry at host (plain HTTP for a loopback
// host, HTTPS otherwise) under the LocalRef of each reference.
func Push(ctx context.Context, host string, img v1.Image, refs ...string) (v1.Hash, error) {
	digest, err := img.Digest()
	if err != nil {
		return v1.Hash{}, fmt.Errorf("computing the image's digest: %w", err)
	}
	for _, ref := range refs {
		tag, err := name.NewTag(LocalRef(host, ref), name.StrictValidation)
		if err != nil {
			return v1.Hash{}, fmt.Errorf("naming %s in the registry: %w", ref, err)
		}
		if err := remote.Write(tag, img, remote.WithContext(ctx)); err != nil {
			return v1.Hash{}, fmt.Errorf("pushing %s to %s: %w", ref, tag, err)
		}
	}
	return digest, nil
}

// PushAll pushes every built image under all of its references.
func (r *Registry) PushAll(ctx context.Context, built []images.Built) error {
	for _, b := range built {
		if _, err := r.Push(ctx, b.Image, b.Refs...); err != nil {
			return fmt.Errorf("pushing the %s image: %w", b.Name, err)
		}
	}
	return nil
}

// Pull reads the image the registry holds for ref (a reference as a pod names
// it, or a Local one).
func (r *Registry) Pull(ctx context.Context, ref string) (v1.Image, error) {
	if !strings.HasPrefix(ref, r.Host+"/") {
		ref = r.Local(ref)
	}
	parsed, err := name.ParseReference(ref, name.Insecure)
	if err != nil {
		return nil, fmt.Errorf("parsing %s: %w", ref, err)
	}
	img, err := remote.Image(parsed, remote.WithContext(ctx))
	if err != nil {
		return nil, fmt.Errorf("pulling %s: %w", ref, err)
	}
	return img, nil
}

// HostsTOML is containerd's hosts.toml (certs.d/<upstream host>/hosts.toml,
// with the CRI plugin's registry config_path set to the certs.d directory)
// that serves the upstream host's images from this registry over plain HTTP.
// The server is the registry too, so a missing image fails instead of
// reaching the real host.
func (r *Registry) HostsTOML() string {
	return fmt.Sprintf(`server = "http://%s"

[host."http://%s"]
  capabilities = ["pull", "resolve"]
`, r.Host, r.Host)
}

// WriteMirrors writes certsDir/<host>/hosts.toml (HostsTOML) for each upstream
// host, for containerd's CRI plugin with registry.config_path = certsDir.
func (r *Registry) WriteMirrors(certsDir string, hosts ...string) error {
	for _, host := range hosts {
		dir := filepath.Join(certsDir, host)
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return fmt.Errorf("writing the mirror for %s: %w", host, err)
		}
		if err := os.WriteFile(filepath.Join(dir, "hosts.toml"), []byte(r.HostsTOML()), 0o644); err != nil {
			return fmt.Errorf("writing the mirror for %s: %w", host, err)
		}
	}
	return nil
}
