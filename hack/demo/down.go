package main

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/kaidotio/prometheus-metrics-proxy-hook/src/testenv/kubenode"
)

const (
	// downGrace is how long the daemon gets to stop everything after
	// SIGTERM: the webhook drains for up to 10 s, each control plane
	// process gets 10 s before SIGKILL, and so does each of the node's,
	// whose pods are killed and swept after.
	downGrace = 3 * time.Minute
	// killWait bounds the wait after SIGKILL.
	killWait = 15 * time.Second
)

// ours are the executables the demo runs; the straggler sweep only ever
// touches these.
var ours = map[string]bool{
	"etcd": true, "kube-apiserver": true, "kube-controller-manager": true,
	"redis-server": true, "prometheus-metrics-proxy-hook-webhook": true, "prometheus-metrics-proxy-hook-sidecar": true,
	// Debian's redis-server is a symlink to redis-check-rdb, which is what
	// /proc/PID/exe names.
	"redis-check-rdb": true,
	// The node's mode: the OCI registry (kubenode.SweepAfter finds the
	// node's own processes by their environment).
	"registry": true,
}

// down stops the daemon (which stops everything it started) and makes sure
// that no process of the demo is left.
func down(cfg config) int {
	running, err := cfg.dir.running()
	if err != nil {
		fmt.Fprintf(os.Stderr, "demo: %v\n", err)
		return 1
	}
	if !running {
		n := sweep(cfg)
		sweepNode(cfg)
		if err := cleanLeftovers(cfg); err != nil {
			fmt.Fprintf(os.Stderr, "demo: %v\n", err)
		}
		_ = os.Remove(cfg.dir.stateFile())
		_ = os.Remove(cfg.dir.pidFile())
		if n > 0 {
			fmt.Printf("No demo daemon was running; stopped %d process(es) it had left behind.\n", n)
		} else {
			fmt.Println("No demo is running.")
		}
		return 0
	}
	pid, err := cfg.dir.readPid()
	if err != nil {
		fmt.Fprintf(os.Stderr, "demo: a daemon holds %s but its pid is unknown (%v); stop it by hand.\n", cfg.dir.lockFile(), err)
		return 1
	}
	what := "the webhook, 3 Redis nodes, kube-controller-manager, kube-apiserver and etcd"
	if st, err := cfg.dir.readState(); err == nil && st.Mode == modeNode {
		what = "the chart's pods, the node (kubelet, containerd, kube-proxy, CoreDNS, the NetworkPolicy enforcer), the control plane and the registry"
	}
	fmt.Printf("Stopping the demo (daemon pid %d): %s...\n", pid, what)
	if err := syscall.Kill(pid, syscall.SIGTERM); err != nil && !errors.Is(err, syscall.ESRCH) {
		fmt.Fprintf(os.Stderr, "demo: cannot signal the daemon: %v\n", err)
		return 1
	}
	if !waitUnlocked(cfg, downGrace) {
		fmt.Printf("The daemon did not stop within %s; killing it (its processes die with it).\n", downGrace)
		_ = syscall.Kill(pid, syscall.SIGKILL)
		if !waitUnlocked(cfg, killWait) {
			fmt.Fprintf(os.Stderr, "demo: the daemon (pid %d) survived SIGKILL for %s.\n", pid, killWait)
			return 1
		}
	}
	if n := sweep(cfg); n > 0 {
		fmt.Printf("Stopped %d process(es) left behind.\n", n)
	}
	sweepNode(cfg)
	if err := cleanLeftovers(cfg); err != nil {
		fmt.Fprintf(os.Stderr, "demo: %v\n", err)
	}
	_ = os.Remove(cfg.dir.stateFile())
	_ = os.Remove(cfg.dir.pidFile())
	fmt.Printf("The demo is stopped; its last log is %s.\n", rel(cfg.dir.logFile()))
	return 0
}

// waitUnlocked waits until the daemon's lock is free: the daemon holds it
// until its very last moment.
func waitUnlocked(cfg config, timeout time.Duration) bool {
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		if running, err := cfg.dir.running(); err == nil && !running {
			return true
		}
		time.Sleep(100 * time.Millisecond)
	}
	return false
}

// sweep kills, by pid, any process of the demo still alive: one of ours
// whose working directory or command line lies in the state directory. The
// kernel kills them when the daemon dies, so this is a second line of
// defence (a process that ignored its parent-death signal), and it reports
// what it found.
func sweep(cfg config) int {
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return 0
	}
	n := 0
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == os.Getpid() || !isDemoProcess(pid, string(cfg.dir), cfg.dir.nodeTmp()) {
			continue
		}
		exe, _ := os.Readlink(filepath.Join("/proc", e.Name(), "exe"))
		fmt.Printf("  killing %s (pid %d), left behind\n", filepath.Base(exe), pid)
		if err := syscall.Kill(pid, syscall.SIGKILL); err == nil {
			n++
		}
	}
	return n
}

// isDemoProcess tells whether pid runs one of ours with its working
// directory or a path on its command line in one of dirs.
func isDemoProcess(pid int, dirs ...string) bool {
	proc := filepath.Join("/proc", strconv.Itoa(pid))
	exe, err := os.Readlink(filepath.Join(proc, "exe"))
	if err != nil || !ours[filepath.Base(strings.TrimSuffix(exe, " (deleted)"))] {
		return false
	}
	// A zombie is dead already; its parent (or init) reaps it.
	if stat, err := os.ReadFile(filepath.Join(proc, "stat")); err == nil {
		if f := strings.Fields(string(stat)); len(f) > 2 && f[2] == "Z" {
			return false
		}
	}
	return runsIn(pid, dirs...)
}

// runsIn tells whether pid has its working directory or a path on its
// command line in one of dirs.
func runsIn(pid int, dirs ...string) bool {
	proc := filepath.Join("/proc", strconv.Itoa(pid))
	cwd, _ := os.Readlink(filepath.Join(proc, "cwd"))
	cmdline, _ := os.ReadFile(filepath.Join(proc, "cmdline"))
	for _, dir := range dirs {
		dir += string(os.PathSeparator)
		if strings.HasPrefix(cwd+string(os.PathSeparator), dir) || strings.Contains(string(cmdline), dir) {
			return true
		}
	}
	return false
}

// cleanLeftovers removes what a daemon that was killed (SIGKILL, a crash)
// could not: the working directories of the control plane, the node and the
// registry, and etcd's data directory on tmpfs, whose path only etcd's
// command line knows, which kubetest writes as the first line of etcd's
// log. The node's mounts must be gone first (kubenode.SweepAfter).
func cleanLeftovers(cfg config) error {
	for _, d := range etcdDataDirs(cfg) {
		if err := os.RemoveAll(d); err != nil {
			return fmt.Errorf("cannot remove etcd's data directory %s: %w", d, err)
		}
	}
	for _, d := range cfg.dir.tmpDirs() {
		if err := os.RemoveAll(d); err != nil {
			return fmt.Errorf("cannot remove the demo's working directory %s: %w", d, err)
		}
	}
	return nil
}

// etcdDataDirs are the tmpfs directories of the etcd processes the demo
// started, read from the command lines kubetest writes atop etcd's logs.
func etcdDataDirs(cfg config) []string {
	var logs []string
	for _, d := range cfg.dir.tmpDirs() {
		found, _ := filepath.Glob(filepath.Join(d, "kubetest-*", "etcd", "etcd.log"))
		logs = append(logs, found...)
	}
	var out []string
	for _, l := range logs {
		data, err := os.ReadFile(l)
		if err != nil {
			continue
		}
		first, _, _ := strings.Cut(string(data), "\n")
		for _, arg := range strings.Fields(first) {
			if dataDir, ok := strings.CutPrefix(arg, "--data-dir="); ok {
				if parent := filepath.Dir(dataDir); strings.HasPrefix(parent, "/dev/shm/kubetest-etcd-") {
					out = append(out, parent)
				}
			}
		}
	}
	return out
}

// sweepNode removes what the demo's node left when its daemon was killed:
// pods, container shims, mounts, links and iptables chains. A node that
// another program runs now is not the demo's and is left alone.
func sweepNode(cfg config) {
	swept, err := kubenode.SweepAfter(cfg.nodeOwner)
	var busy *kubenode.BusyError
	switch {
	case errors.As(err, &busy):
	case err != nil:
		fmt.Fprintf(os.Stderr, "demo: cleaning up after the demo's node: %v\n", err)
	case swept:
		fmt.Println("Removed what the demo's node had left behind (pods, container shims, mounts, links, iptables chains).")
	}
}
