package kubenode

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

const (
	// dirPrefix starts the name of every node's working directory in the
	// temporary directory; the sweep removes what crashed runs left there.
	dirPrefix = "pmph-kubenode-"
	// kubepodsCgroup is where the kubelet (cgroupfs driver) puts every pod.
	kubepodsCgroup = "kubepods"
	cgroupRoot     = "/sys/fs/cgroup"
	// containerLogLinks is where the kubelet links every container's log,
	// outside its root directory.
	containerLogLinks = "/var/log/containers"
	// killTimeout bounds the wait for SIGKILLed processes to disappear.
	killTimeout = 20 * time.Second
)

// chainPrefixes name the iptables chains a node creates: kube-proxy's, the
// kubelet's and kube-router's (KUBE-), the portmap plugin's (CNI-) and the
// harness's own guard and probe.
var chainPrefixes = []string{"KUBE-", "CNI-", guardChain, probeChain}

// sweep removes everything a node may leave on the machine: the processes it
// started (found by their environment marker) and the shims containerd
// started, the pods' processes (found by their cgroup), mounts under its
// directories, its links, its iptables chains, nftables table and ipsets, the
// kubelet's log links, and the directories themselves. It runs before a start
// (for a run that crashed) and as the last step of Stop. Every step runs even
// when an earlier one failed.
func sweep(dirs []string, toolsBin string) error {
	var errs []error
	add := func(err error) {
		if err != nil {
			errs = append(errs, err)
		}
	}
	add(killMarked())
	add(killPods())
	add(unmountUnder(dirs))
	add(removeHostFiles(dirs))
	add(removeCgroups())
	add(deleteLinks(bridgeName))
	add(removeNodeAddresses())
	add(cleanNetfilter(toolsBin))
	add(removeLogLinks(dirs))
	removeServiceAccountDir()
	for _, d := range dirs {
		if err := os.RemoveAll(d); err != nil {
			add(fmt.Errorf("cannot remove %s: %w", d, err))
		}
	}
	return errors.Join(errs...)
}

// leftoverDirs lists working directories of earlier nodes.
func leftoverDirs() []string {
	dirs, _ := filepath.Glob(filepath.Join(os.TempDir(), dirPrefix+"*"))
	return dirs
}

// markedPids lists the processes that carry the harness's marker: the
// components, and the container shims containerd started with its
// environment.
func markedPids() []int {
	var pids []int
	self := os.Getpid()
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == self {
			continue
		}
		env, err := os.ReadFile(filepath.Join("/proc", e.Name(), "environ"))
		if err != nil {
			continue
		}
		for kv := range bytes.SplitSeq(env, []byte{0}) {
			if bytes.HasPrefix(kv, []byte(markerEnv+"=")) {
				pids = append(pids, pid)
				break
			}
		}
	}
	return pids
}

func killMarked() error {
	return killAndWait("the node's processes and container shims", markedPids)
}

// killPods kills every process in the kubelet's pod cgroups: the
// containers outlive their shims otherwise.
func killPods() error {
	return killAndWait("the pods' processes", podPids)
}

func podPids() []int {
	seen := map[int]bool{}
	var pids []int
	for _, dir := range kubepodsDirs() {
		_ = filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
			if err != nil || d.IsDir() || d.Name() != "cgroup.procs" {
				return nil
			}
			data, _ := os.ReadFile(path)
			for f := range strings.FieldsSeq(string(data)) {
				if pid, err := strconv.Atoi(f); err == nil && !seen[pid] {
					seen[pid] = true
					pids = append(pids, pid)
				}
			}
			return nil
		})
	}
	return pids
}

// kubepodsDirs lists the kubepods cgroup in every mounted hierarchy (one per
// controller on cgroup v1, and the unified one).
func kubepodsDirs() []string {
	var dirs []string
	entries, _ := os.ReadDir(cgroupRoot)
	for _, e := range entries {
		d := filepath.Join(cgroupRoot, e.Name(), kubepodsCgroup)
		if st, err := os.Stat(d); err == nil && st.IsDir() {
			dirs = append(dirs, d)
		}
	}
	if st, err := os.Stat(filepath.Join(cgroupRoot, kubepodsCgroup)); err == nil && st.IsDir() {
		dirs = append(dirs, filepath.Join(cgroupRoot, kubepodsCgroup))
	}
	return dirs
}

func killAndWait(what string, list func() []int) error {
	deadline := time.Now().Add(killTimeout)
	for {
		pids := list()
		if len(pids) == 0 {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s did not exit within %s of SIGKILL: pids %v", what, killTimeout, pids)
		}
		for _, pid := range pids {
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// removeCgroups removes the kubelet's cgroups, deepest first; a cgroup
// directory is removed with rmdir, which the kernel refuses while a process
// is still in it.
func removeCgroups() error {
	var errs []error
	for _, dir := range kubepodsDirs() {
		var subdirs []string
		_ = filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
			if err == nil && d.IsDir() {
				subdirs = append(subdirs, path)
			}
			return nil
		})
		sort.Slice(subdirs, func(i, j int) bool { return len(subdirs[i]) > len(subdirs[j]) })
		for _, d := range subdirs {
			if err := unix.Rmdir(d); err != nil && !errors.Is(err, unix.ENOENT) {
				errs = append(errs, fmt.Errorf("cannot remove the cgroup %s: %w", d, err))
			}
		}
	}
	return errors.Join(errs...)
}

// mountsUnder lists the mount points at or below any of dirs, deepest first.
func mountsUnder(dirs []string) []string {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return nil
	}
	defer f.Close()
	var mounts []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) < 5 {
			continue
		}
		mp := unescapeMountPath(fields[4])
		for _, d := range dirs {
			if mp == d || strings.HasPrefix(mp, d+"/") {
				mounts = append(mounts, mp)
				break
			}
		}
	}
	sort.SliceStable(mounts, func(i, j int) bool { return len(mounts[i]) > len(mounts[j]) })
	return mounts
}

// unescapeMountPath undoes mountinfo's octal escapes (\040 for a space).
func unescapeMountPath(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			if v, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(v))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// unmountUnder unmounts the kubelet's volume tmpfs mounts, containerd's
// rootfs, shm and network namespace mounts: a directory with a mount in it
// cannot be removed.
func unmountUnder(dirs []string) error {
	var errs []error
	for range 3 {
		mounts := mountsUnder(dirs)
		if len(mounts) == 0 {
			return nil
		}
		errs = errs[:0]
		for _, mp := range mounts {
			if err := unix.Unmount(mp, unix.MNT_DETACH); err != nil && !errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.ENOENT) {
				errs = append(errs, fmt.Errorf("cannot unmount %s: %w", mp, err))
			}
		}
	}
	if left := mountsUnder(dirs); len(left) > 0 {
		errs = append(errs, fmt.Errorf("mounts are left after unmounting: %v", left))
	}
	return errors.Join(errs...)
}

func deleteLinks(names ...string) error {
	var errs []error
	for _, name := range names {
		if _, err := os.Stat(filepath.Join("/sys/class/net", name)); err != nil {
			continue
		}
		if out, err := exec.Command("ip", "link", "delete", name).CombinedOutput(); err != nil {
			errs = append(errs, fmt.Errorf("cannot delete the link %s: %v: %s", name, err, strings.TrimSpace(string(out))))
		}
	}
	return errors.Join(errs...)
}

// removeLogLinks removes the kubelet's links in /var/log/containers that
// point into the node's directories.
func removeLogLinks(dirs []string) error {
	entries, err := os.ReadDir(containerLogLinks)
	if err != nil {
		return nil
	}
	var errs []error
	for _, e := range entries {
		path := filepath.Join(containerLogLinks, e.Name())
		target, err := os.Readlink(path)
		if err != nil {
			continue
		}
		for _, d := range dirs {
			if strings.HasPrefix(target, d+"/") {
				if err := os.Remove(path); err != nil {
					errs = append(errs, err)
				}
				break
			}
		}
	}
	return errors.Join(errs...)
}
