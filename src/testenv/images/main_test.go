package images_test

import (
	"context"
	"fmt"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/kaidotio/prometheus-metrics-proxy-hook/src/testenv/images"
)

// builds are the images the tests share: each is built once, on first use,
// into a directory that outlives every test.
type builds struct {
	dir  string
	once map[string]func() (images.Built, error)
}

// shared is set once by TestMain, before any test runs.
var shared builds

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "pmph-images-test-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	shared = builds{dir: dir, once: map[string]func() (images.Built, error){}}
	for _, name := range images.Names() {
		shared.once[name] = sync.OnceValues(func() (images.Built, error) {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
			defer cancel()
			built, err := images.Build(ctx, images.Options{WorkDir: dir, Version: testVersion, Revision: testRevision}, name)
			if err != nil {
				return images.Built{}, err
			}
			return built[0], nil
		})
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// sharedBuild returns the shared build of the named image, stamped with
// testVersion and testRevision.
func sharedBuild(t *testing.T, name string) images.Built {
	t.Helper()
	b, err := shared.once[name]()
	if err != nil {
		t.Fatal(err)
	}
	return b
}
