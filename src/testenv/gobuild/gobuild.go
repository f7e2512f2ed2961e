// Package gobuild builds the project's commands for tests that run them as
// processes: once per test binary and command, with the race detector when
// the tests run with it, or the way `make build` does for measurements.
//
//	bin := gobuild.Test(t, gobuild.Webhook)
//	bin := gobuild.Release(b, gobuild.Sidecar)
package gobuild

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"runtime"
	"strconv"
	"sync"
	"testing"

	"github.com/kaidotio/prometheus-metrics-proxy-hook/src/testenv/kubetest"
)

// The commands, by import path.
const (
	module  = "github.com/kaidotio/prometheus-metrics-proxy-hook"
	Webhook = module + "/src/cmd/prometheus-metrics-proxy-hook-webhook"
	Sidecar = module + "/src/cmd/prometheus-metrics-proxy-hook-sidecar"
)

// Test builds (once per test binary) and returns the path of the command
// pkg, with -race when the tests run with it, so that the process is
// checked too.
func Test(t testing.TB, pkg string) string {
	t.Helper()
	return mustBuild(t, testBuilds, pkg)
}

// Release builds (once per test binary) the command pkg the way `make
// build` does (no race detector, no cgo, stripped), for measurements of
// what runs in a pod.
func Release(t testing.TB, pkg string) string {
	t.Helper()
	return mustBuild(t, releaseBuilds, pkg)
}

// ModuleRoot is the directory of go.mod, so that builds work from any
// test's working directory.
func ModuleRoot() string {
	root, err := kubetest.RepoRoot()
	if err != nil {
		return "."
	}
	return root
}

// builds remembers one build per command: building is the slow part
// (seconds), and the result never changes while the tests run.
type builds struct {
	mu    sync.Mutex
	once  map[string]func() (string, error)
	build func(pkg string) (string, error)
}

var (
	testBuilds    = &builds{build: buildForTest}
	releaseBuilds = &builds{build: buildForRelease}
)

func mustBuild(t testing.TB, b *builds, pkg string) string {
	t.Helper()
	b.mu.Lock()
	if b.once == nil {
		b.once = map[string]func() (string, error){}
	}
	once, ok := b.once[pkg]
	if !ok {
		once = sync.OnceValues(func() (string, error) { return b.build(pkg) })
		b.once[pkg] = once
	}
	b.mu.Unlock()
	bin, err := once()
	if err != nil {
		t.Fatal(err)
	}
	return bin
}

func buildForTest(pkg string) (string, error) {
	args := []string{"build"}
	kind := "test"
	if raceEnabled {
		args, kind = append(args, "-race"), "test-race"
	}
	return buildInto(kind, pkg, args, nil)
}

func buildForRelease(pkg string) (string, error) {
	args := []string{"build", "-trimpath", "-ldflags", "-s -w"}
	return buildInto("release", pkg, args, []string{"CGO_ENABLED=0"})
}

// buildInto builds into one directory per checkout and kind that later runs
// reuse, so that repeated test runs leave no binaries behind (a directory
// per run grew /tmp by 57 MB a test binary); the rename makes the
// replacement atomic for a concurrent run that still executes the previous
// build.
func buildInto(kind, pkg string, args, env []string) (string, error) {
	sum := sha256.Sum256([]byte(ModuleRoot()))
	dir := filepath.Join(os.TempDir(), "gobuild-"+kind+"-"+hex.EncodeToString(sum[:6]))
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return "", err
	}
	bin := filepath.Join(dir, path.Base(pkg))
	tmp := bin + ".tmp" + strconv.Itoa(os.Getpid())
	if err := goBuild(append(args, "-o", tmp, pkg), env); err != nil {
		return "", err
	}
	return bin, os.Rename(tmp, bin)
}

func goBuild(args, env []string) error {
	cmd := exec.Command(goTool(), args...)
	cmd.Dir = ModuleRoot()
	cmd.Env = append(os.Environ(), env...)
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("go %v: %w\n%s", args, err, out)
	}
	return nil
}

func goTool() string {
	if p := filepath.Join(runtime.GOROOT(), "bin", "go"); fileExists(p) {
		return p
	}
	return "go"
}

func fileExists(p string) bool { _, err := os.Stat(p); return err == nil }
