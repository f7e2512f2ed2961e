package images_test

import (
	"archive/tar"
	"errors"
	"io"
	"io/fs"
	"testing"

	"github.com/kaidotio/prometheus-metrics-proxy-hook/src/testenv/images"
)

func TestLayerKeepsModesOwnersAndLinks(t *testing.T) {
	root := images.NewRootFS()
	root.Dir("tmp", fs.ModeSticky|0o777, images.Root)
	root.Dir("home/nonroot", 0o700, images.Owner{UID: 65532, GID: 65532})
	root.File("usr/local/bin/app", []byte("#!"), 0o755, images.Root)
	root.Symlink("bin/sh", "/bin/busybox")
	layer, err := images.Layer(root, t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	rc, err := layer.Uncompressed()
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	got := map[string]*tar.Header{}
	tr := tar.NewReader(rc)
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		got[h.Name] = h
	}
	tests := []struct {
		name     string
		typeflag byte
		mode     int64
		uid      int
		linkname string
	}{
		{"tmp/", tar.TypeDir, 0o1777, 0, ""},
		{"home/", tar.TypeDir, 0o755, 0, ""},
		{"home/nonroot/", tar.TypeDir, 0o700, 65532, ""},
		{"usr/local/bin/app", tar.TypeReg, 0o755, 0, ""},
		{"bin/sh", tar.TypeSymlink, 0o777, 0, "/bin/busybox"},
	}
	for _, tt := range tests {
		h, ok := got[tt.name]
		if !ok {
			t.Errorf("the layer has no %s; it has %v", tt.name, keys(got))
			continue
		}
		if h.Typeflag != tt.typeflag || h.Mode != tt.mode || h.Uid != tt.uid || h.Gid != tt.uid || h.Linkname != tt.linkname || h.ModTime.Unix() != 0 {
			t.Errorf("%s: type %q mode %o uid %d gid %d link %q mtime %v; want type %q mode %o uid/gid %d link %q at the epoch",
				tt.name, h.Typeflag, h.Mode, h.Uid, h.Gid, h.Linkname, h.ModTime, tt.typeflag, tt.mode, tt.uid, tt.linkname)
		}
	}
}

func keys(m map[string]*tar.Header) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	return out
}
