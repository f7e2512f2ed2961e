package images

import (
	"archive/tar"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
)

// Extract unpacks the image's flattened file system (go-containerregistry's
// mutate.Extract) into dir, so tests can run its binaries on this machine, in
// a chroot when they need the image's libraries. Owners are kept when running
// as root; extended attributes are not.
func Extract(img v1.Image, dir string) error {
	rc := mutate.Extract(img)
	defer rc.Close()
	tr := tar.NewReader(rc)
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return fmt.Errorf("reading the image's file system: %w", err)
		}
		if err := extractEntry(tr, h, dir); err != nil {
			return fmt.Errorf("extracting %s: %w", h.Name, err)
		}
	}
}

func extractEntry(tr *tar.Reader, h *tar.Header, dir string) error {
	target := filepath.Join(dir, filepath.FromSlash(clean(h.Name)))
	if target != dir && !strings.HasPrefix(target, dir+string(filepath.Separator)) {
		return fmt.Errorf("the path leaves %s", dir)
	}
	if err := os.MkdirAll(filepath.Dir(target), 0o755); err != nil {
		return err
	}
	mode := h.FileInfo().Mode()
	switch h.Typeflag {
	case tar.TypeDir:
		if err := os.MkdirAll(target, 0o755); err != nil {
			return err
		}
	case tar.TypeReg:
		f, err := os.OpenFile(target, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o600)
		if err != nil {
			return err
		}
		_, err = io.Copy(f, tr)
		if err := errors.Join(err, f.Close()); err != nil {
			return err
		}
	case tar.TypeSymlink:
		os.Remove(target)
		return os.Symlink(h.Linkname, target)
	default:
		return fmt.Errorf("unsupported entry type %q", h.Typeflag)
	}
	if os.Geteuid() == 0 {
		if err := os.Lchown(target, h.Uid, h.Gid); err != nil {
			return err
		}
	}
	// After the chown, which clears set-id bits.
	return os.Chmod(target, mode&(os.ModePerm|os.ModeSticky|os.ModeSetuid|os.ModeSetgid))
}
