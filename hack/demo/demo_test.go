package main

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/kaidotio/prometheus-metrics-proxy-hook/src/testenv/localproc"
	"github.com/kaidotio/prometheus-metrics-proxy-hook/src/testenv/sidecartest"
	"github.com/kaidotio/prometheus-metrics-proxy-hook/src/testenv/webhooktest"
)

// demoRunner runs the demo's command against a state directory of its own,
// with the flags `make demo` passes and extra ones.
type demoRunner struct {
	bin, state, root string
	flags            []string
}

func newDemoRunner(t *testing.T, flags ...string) *demoRunner {
	t.Helper()
	root, err := filepath.Abs(filepath.Join("..", ".."))
	if err != nil {
		t.Fatal(err)
	}
	d := &demoRunner{bin: buildDemo(t), state: t.TempDir(), root: root, flags: flags}
	// Whatever happens, nothing of the demo outlives the test.
	t.Cleanup(func() {
		// t.Context() is already cancelled when clean-ups run.
		if out, code := d.runCtx(context.Background(), t, 5*time.Minute, "down"); code != 0 {
			t.Errorf("demo down in the clean-up exited %d:\n%s", code, out)
		}
	})
	return d
}

// run runs `demo CMD` and returns its output and exit code.
func (d *demoRunner) run(t *testing.T, timeout time.Duration, cmd string) (string, int) {
	t.Helper()
	return d.runCtx(t.Context(), t, timeout, cmd)
}

func (d *demoRunner) runCtx(parent context.Context, t *testing.T, timeout time.Duration, sub string) (string, int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(parent, timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, d.bin, append([]string{sub, "--state-dir", d.state, "--root", d.root}, d.flags...)...)
	cmd.Dir = d.root
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	out, err := cmd.CombinedOutput()
	var ee *exec.ExitError
	switch {
	case err == nil:
		return string(out), 0
	case errors.As(err, &ee) && ee.ExitCode() > 0:
		return string(out), ee.ExitCode()
	}
	t.Errorf("demo %s: %v\n%s", sub, err, out)
	return string(out), -1
}

// TestDemo runs the demo's control-plane walkthrough (what `make demo`
// falls back to where the node cannot run) as `make demo` and
// `make demo-down` do, against a state directory of its own: the
// walkthrough succeeds and shows what it promises, a second `up` reuses the
// running environment, `down` leaves no process and no etcd data behind,
// and so does a daemon that is killed.
func TestDemo(t *testing.T) {
	if testing.Short() {
		t.Skip("the demo starts a control plane; skipped with -short")
	}
	d := newDemoRunner(t, "--webhook-binary", webhooktest.Binary(t), "--sidecar-binary", sidecartest.Binary(t), "--mode", modeControlPlane)
	state := d.state
	demo := func(t *testing.T, timeout time.Duration, args ...string) (string, int) {
		t.Helper()
		return d.run(t, timeout, args[0])
	}

	out, code := demo(t, 10*time.Minute, "up")
	if code != 0 {
		t.Fatalf("demo up exited %d:\n%s\ndaemon log:\n%s", code, out, localproc.LogTail(filepath.Join(state, "daemon.log"), 40, "\n"))
	}
	for _, want := range []string{
		"--mode control-plane: running the walkthrough without a node.",
		"the demo environment is ready",
		`denied the request: semaphore "demo-1/workers" is full (2/2 slots held); its slots are held by pod worker-`,
		"the pod will be created when a slot frees up",
		"sidecar log: info  Released the semaphore slot.",
		"pod/worker-3 created",
		"Warning: dry run: no semaphore slot was taken",
		`semaphore-size "0" must be an integer from 1 to 1024`,
		`Error creating: admission webhook "prometheus-metrics-proxy-hook.kaidotio.github.io" denied the request: semaphore "demo-1/batch" is full (2/2 slots held)`,
		"export KUBECONFIG=" + filepath.Join(state, "kubeconfig"),
		"make demo-down",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("the walkthrough did not print %q:\n%s", want, out)
		}
	}
	daemon := readPid(t, state)
	pids := demoProcesses(t, state)
	if len(pids) < 7 { // etcd, kube-apiserver, kube-controller-manager, 3 redis-server, the webhook
		t.Errorf("%d demo processes run after up, want at least 7: %v", len(pids), pids)
	}

	out, code = demo(t, 5*time.Minute, "up")
	if code != 0 || !strings.Contains(out, "A demo environment is already running") || !strings.Contains(out, "kubectl create namespace demo-2") {
		t.Errorf("a second up exited %d and printed:\n%s", code, out)
	}
	if again := readPid(t, state); again != daemon {
		t.Errorf("the second up replaced the daemon %d with %d", daemon, again)
	}

	etcdData := etcdDataDirs(config{dir: stateDir(state)})
	if len(etcdData) != 1 {
		t.Errorf("found etcd data directories %v, want one", etcdData)
	}
	out, code = demo(t, 3*time.Minute, "down")
	if code != 0 || !strings.Contains(out, "The demo is stopped") {
		t.Fatalf("demo down exited %d:\n%s", code, out)
	}
	assertGone(t, state, append(pids, daemon), etcdData)

	// A daemon that dies without its clean-up takes its processes along;
	// down then removes what is left on disk.
	out, code = demo(t, 10*time.Minute, "up")
	if code != 0 {
		t.Fatalf("demo up (after down) exited %d:\n%s", code, out)
	}
	daemon, pids = readPid(t, state), demoProcesses(t, state)
	etcdData = etcdDataDirs(config{dir: stateDir(state)})
	if err := syscall.Kill(daemon, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	// The kernel kills them at once, but a large process takes a moment to
	// exit.
	deadline := time.Now().Add(30 * time.Second)
	for len(alive(pids)) > 0 && time.Now().Before(deadline) {
		time.Sleep(100 * time.Millisecond)
	}
	assertGone(t, state, pids, nil)
	out, code = demo(t, 3*time.Minute, "down")
	if code != 0 || !strings.Contains(out, "No demo is running.") {
		t.Errorf("demo down after a killed daemon exited %d:\n%s", code, out)
	}
	for _, d := range etcdData {
		if _, err := os.Stat(d); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("down left etcd's data directory %s of the killed daemon (%v)", d, err)
		}
	}
	if leftovers, _ := filepath.Glob(filepath.Join(state, "tmp", "*")); len(leftovers) > 0 {
		t.Errorf("down left the control plane's directories: %v", leftovers)
	}
}

// buildDemo builds this command, with the race detector when the test has it
// (the packages are then already compiled that way).
func buildDemo(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "pmph-demo")
	args := []string{"build", "-o", bin}
	if raceEnabled {
		args = append(args, "-race")
	}
	cmd := exec.Command(filepath.Join(runtime.GOROOT(), "bin", "go"), append(args, ".")...)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	return bin
}

func readPid(t *testing.T, dir string) int {
	t.Helper()
	pid, err := stateDir(dir).readPid()
	if err != nil {
		t.Fatal(err)
	}
	return pid
}

// demoProcesses lists the processes of the demo's environment, as down's
// sweep finds them.
func demoProcesses(t *testing.T, dir string) []int {
	t.Helper()
	return processes(t, func(pid int) bool { return isDemoProcess(pid, dir) })
}

// processes lists the processes for which match is true.
func processes(t *testing.T, match func(pid int) bool) []int {
	t.Helper()
	entries, err := os.ReadDir("/proc")
	if err != nil {
		t.Fatal(err)
	}
	var out []int
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == os.Getpid() {
			continue
		}
		if match(pid) {
			out = append(out, pid)
		}
	}
	return out
}

// assertGone checks that none of the processes is alive (a zombie
// reparented to init is dead, only not reaped yet) and that the etcd data
// directories are gone.
func assertGone(t *testing.T, dir string, pids []int, etcdData []string) {
	t.Helper()
	for _, pid := range alive(pids) {
		stat, _ := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "stat"))
		t.Errorf("process %d is still running: %s", pid, strings.TrimSpace(string(stat)))
	}
	if left := demoProcesses(t, dir); len(left) > 0 {
		t.Errorf("processes of the demo are still running: %v", left)
	}
	for _, d := range etcdData {
		if _, err := os.Stat(d); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("etcd's data directory %s is still there (%v)", d, err)
		}
	}
}

// alive are the processes that exist and are not zombies.
func alive(pids []int) []int {
	var out []int
	for _, pid := range pids {
		stat, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "stat"))
		if err != nil {
			continue
		}
		// The state follows the command name in parentheses, which may
		// contain spaces.
		rest := string(stat)
		if i := strings.LastIndexByte(rest, ')'); i >= 0 {
			rest = rest[i+1:]
		}
		if f := strings.Fields(rest); len(f) > 0 && f[0] == "Z" {
			continue
		}
		out = append(out, pid)
	}
	return out
}
