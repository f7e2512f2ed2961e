package gobuild_test

import (
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/kaidotio/prometheus-metrics-proxy-hook/src/buildinfo"
	"github.com/kaidotio/prometheus-metrics-proxy-hook/src/testenv/gobuild"
)

// Both commands build, are named for their package, and answer version
// with the build's one line.
func TestCommandsBuildAndAnswerVersion(t *testing.T) {
	for _, pkg := range []string{gobuild.Webhook, gobuild.Sidecar} {
		t.Run(filepath.Base(pkg), func(t *testing.T) {
			bin := gobuild.Test(t, pkg)
			if filepath.Base(bin) != filepath.Base(pkg) {
				t.Errorf("binary %s is not named for %s", bin, pkg)
			}
			if again := gobuild.Test(t, pkg); again != bin {
				t.Errorf("a second call built again: %s, then %s", bin, again)
			}
			out, err := exec.Command(bin, "version").Output()
			if err != nil {
				t.Fatalf("%s version: %v", bin, err)
			}
			if want := buildinfo.String() + "\n"; string(out) != want {
				t.Fatalf("%s version printed %q, want %q", bin, out, want)
			}
		})
	}
}

// Test builds share one directory per checkout, which later runs reuse: a
// directory per build once grew /tmp by 14 GB in a day of test runs.
func TestBuildsShareOneDirectory(t *testing.T) {
	webhook := gobuild.Test(t, gobuild.Webhook)
	sidecar := gobuild.Test(t, gobuild.Sidecar)
	if filepath.Dir(webhook) != filepath.Dir(sidecar) {
		t.Fatalf("the commands were built into two directories: %s and %s", webhook, sidecar)
	}
}
