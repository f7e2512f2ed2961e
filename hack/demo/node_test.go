package main

import (
	"errors"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/kaidotio/prometheus-metrics-proxy-hook/src/testenv/kubenode"
	"github.com/kaidotio/prometheus-metrics-proxy-hook/src/testenv/localproc"
)

// walkAndDown is what TestDemoNode keeps of its deadline for the
// walkthrough (pods pulling and starting on a loaded machine) and down.
const walkAndDown = 12 * time.Minute

// TestDemoNode runs the demo on the real node, as `make demo` does on Linux
// as root: the chart's pods run, the walkthrough shows the sidecar's own
// logs, deletes a real pod and sees the next one run, and `down` stops the
// node and the registry and leaves nothing of them. The node is held under
// a test's owner, so that the other test packages' nodes and this one wait
// for each other; a running `make demo` makes it fail with the message
// that says so.
func TestDemoNode(t *testing.T) {
	if testing.Short() {
		t.Skip("the demo on the node builds images and starts a node; skipped with -short")
	}
	if reason := kubenode.Unsupported(); reason != "" {
		t.Skip("kubenode: " + reason)
	}
	owner := "test hack/demo " + t.Name()
	failIfDemoRuns(t)
	// The other test packages' nodes run first when they hold the machine:
	// the start may wait for them until shortly before the test's deadline.
	startTimeout := time.Hour
	if deadline, ok := t.Deadline(); ok {
		startTimeout = time.Until(deadline) - walkAndDown
	}
	if startTimeout < time.Minute {
		t.Fatalf("the test's deadline leaves %s for the demo's start; give go test a -timeout of at least 20m", startTimeout)
	}
	d := newDemoRunner(t, "--mode", modeNode, "--node-owner", owner, "--start-timeout", startTimeout.String())

	started := time.Now()
	out, code := d.run(t, startTimeout+walkAndDown/2, "up")
	if code != 0 {
		t.Fatalf("demo up exited %d:\n%s\ndaemon log:\n%s", code, out, localproc.LogTail(filepath.Join(d.state, "daemon.log"), 40, "\n"))
	}
	t.Logf("demo up on the node took %s", time.Since(started).Round(time.Second))
	for _, want := range []string{
		"make demo runs the chart on a real node",
		"the demo environment is ready",
		"cert-manager does not run",
		"$ helm install pmph oci://127.0.0.1:",
		`semaphore "demo-1/workers" is full (2/2 slots held)`,
		"Renewed the semaphore lease.",
		"Termination signal received",
		"and at no time did more than 2 workers run.",
		`semaphore-size "0" must be an integer from 1 to 1024`,
		"make demo-down",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("the walkthrough did not print %q:\n%s", want, out)
		}
	}
	for _, want := range []*regexp.Regexp{
		regexp.MustCompile(`(?m)^` + kubenode.NodeName + `\s+Ready\s`),
		regexp.MustCompile(`(?m)^deployment\.apps/pmph-prometheus-metrics-proxy-hook\s+2/2\s`),
		regexp.MustCompile(`(?m)^statefulset\.apps/pmph-prometheus-metrics-proxy-hook-redis\s+3/3\s`),
		regexp.MustCompile(`(?m)^workers-\S+\s+Running\s+\d+\s*$`),
	} {
		if !want.MatchString(out) {
			t.Errorf("the walkthrough printed nothing matching %s:\n%s", want, out)
		}
	}
	var busy *kubenode.BusyError
	if err := kubenode.Holder(); !errors.As(err, &busy) || busy.Owner != owner {
		t.Errorf("while the demo runs the machine's node is held by %v, want %q", err, owner)
	}
	tmp := stateDir(d.state).nodeTmp()

	out, code = d.run(t, 5*time.Minute, "down")
	if code != 0 || !strings.Contains(out, "The demo is stopped") {
		t.Fatalf("demo down exited %d:\n%s", code, out)
	}
	// Another test's node may take the machine at once.
	if err := kubenode.Holder(); errors.As(err, &busy) && busy.Owner == owner {
		t.Errorf("after down the demo's node still holds the machine: %v", err)
	}
	if _, err := os.Stat(tmp); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("down left the node's working directory %s (%v)", tmp, err)
	}
	if left := processesUnder(t, tmp, d.state); len(left) > 0 {
		t.Errorf("processes of the demo's node are still running: %v", left)
	}
}

// failIfDemoRuns fails t when `make demo` holds the machine's node: it
// runs until `make demo-down`. Other tests' nodes are waited for.
func failIfDemoRuns(t *testing.T) {
	t.Helper()
	var busy *kubenode.BusyError
	if err := kubenode.Holder(); errors.As(err, &busy) && busy.Owner == kubenode.DemoOwner {
		t.Fatalf("kubenode: %v", err)
	}
}

// processesUnder lists the live processes whose working directory or
// command line lies in one of dirs, whatever they run.
func processesUnder(t *testing.T, dirs ...string) []int {
	t.Helper()
	return alive(processes(t, func(pid int) bool { return runsIn(pid, dirs...) }))
}
