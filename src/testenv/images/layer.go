package images

import (
	"archive/tar"
	"compress/gzip"
	"errors"
	"fmt"
	"os"
	"runtime"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// DefaultPath is the PATH of every image, as in the Debian and distroless
// base images.
const DefaultPath = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

// Layer writes the file system as an uncompressed tar into a new file under
// dir (the standard library's tar.Writer.AddFS walks it) and returns it as a
// layer; go-containerregistry compresses it and computes the digests.
func Layer(root *RootFS, dir string) (v1.Layer, error) {
	f, err := os.CreateTemp(dir, "layer-*.tar")
	if err != nil {
		return nil, fmt.Errorf("creating the layer file: %w", err)
	}
	tw := tar.NewWriter(f)
	err = errors.Join(tw.AddFS(root.FS()), tw.Close())
	err = errors.Join(err, f.Close())
	if err != nil {
		return nil, fmt.Errorf("writing the layer %s: %w", f.Name(), err)
	}
	// The fastest gzip level: the images go to a registry on this machine, and
	// the CoreDNS layer alone is tens of megabytes.
	layer, err := tarball.LayerFromFile(f.Name(), tarball.WithMediaType(types.OCILayer), tarball.WithCompressionLevel(gzip.BestSpeed))
	if err != nil {
		return nil, fmt.Errorf("reading back the layer %s: %w", f.Name(), err)
	}
	return layer, nil
}

// assemble makes a single-layer OCI image for linux on this machine's
// architecture (or arch when set) with the given config.
func assemble(root *RootFS, dir, arch string, cfg v1.Config) (v1.Image, error) {
	layer, err := Layer(root, dir)
	if err != nil {
		return nil, err
	}
	img := mutate.MediaType(empty.Image, types.OCIManifestSchema1)
	img = mutate.ConfigMediaType(img, types.OCIConfigJSON)
	img, err = mutate.Append(img, mutate.Addendum{
		Layer:     layer,
		History:   v1.History{CreatedBy: "src/testenv/images", Created: v1.Time{Time: epoch}},
		MediaType: types.OCILayer,
	})
	if err != nil {
		return nil, fmt.Errorf("adding the layer: %w", err)
	}
	file, err := img.ConfigFile()
	if err != nil {
		return nil, fmt.Errorf("reading the image config: %w", err)
	}
	file = file.DeepCopy()
	if arch == "" {
		arch = runtime.GOARCH
	}
	file.OS = "linux"
	file.Architecture = arch
	file.Created = v1.Time{Time: epoch}
	file.Config = cfg
	img, err = mutate.ConfigFile(img, file)
	if err != nil {
		return nil, fmt.Errorf("setting the image config: %w", err)
	}
	return img, nil
}
