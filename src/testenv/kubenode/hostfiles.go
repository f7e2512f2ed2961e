package kubenode

import (
	"crypto/sha256"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

const (
	// shimSocketDir is where containerd 1.6's runc shims put their sockets,
	// whatever containerd's --state says.
	shimSocketDir = "/run/containerd/s"
	// cniResultsDir is libcni's cache of every ADD result.
	cniResultsDir = "/var/lib/cni/results"
	// kubeletDevicePluginSocket is where the kubelet listens for device
	// plugins, whatever its --root-dir.
	kubeletDevicePluginSocket = "/var/lib/kubelet/device-plugins/kubelet.sock"
)

// hostDirsMade are directories the kubelet creates on the host whatever its
// root directory; the sweep removes them when they are empty.
var hostDirsMade = []string{
	"/var/lib/kubelet/device-plugins", "/var/lib/kubelet",
	"/usr/libexec/kubernetes/kubelet-plugins/volume/exec", "/usr/libexec/kubernetes/kubelet-plugins/volume",
	"/usr/libexec/kubernetes/kubelet-plugins", "/usr/libexec/kubernetes",
	containerLogLinks,
}

// removeHostFiles removes what the node's shims, CNI plugins and kubelet
// leave outside its directories: the shims' sockets (named by a hash of
// containerd's address, the namespace and the task id), the CNI result cache
// of its network, and the kubelet's empty directories. It reads the task ids
// from the node's containerd state, so it runs before the directories go.
func removeHostFiles(dirs []string) error {
	var errs []error
	for _, dir := range dirs {
		p := newContainerdPaths(dir)
		tasks, _ := os.ReadDir(filepath.Join(p.state, "io.containerd.runtime.v2.task", criNamespace))
		for _, task := range tasks {
			sum := sha256.Sum256([]byte(filepath.Join(p.socket, criNamespace, task.Name())))
			if err := os.Remove(filepath.Join(shimSocketDir, fmt.Sprintf("%x", sum))); err != nil && !errors.Is(err, os.ErrNotExist) {
				errs = append(errs, err)
			}
		}
	}
	results, _ := os.ReadDir(cniResultsDir)
	for _, r := range results {
		rest, ok := strings.CutPrefix(r.Name(), cniNetworkName+"-")
		if !ok {
			continue
		}
		id, _, _ := strings.Cut(rest, "-")
		for _, name := range []string{r.Name(), "cni-loopback-" + id + "-lo"} {
			if err := os.Remove(filepath.Join(cniResultsDir, name)); err != nil && !errors.Is(err, os.ErrNotExist) {
				errs = append(errs, err)
			}
		}
	}
	// The device plugin registration socket ignores --root-dir.
	if st, err := os.Lstat(kubeletDevicePluginSocket); err == nil && st.Mode()&os.ModeSocket != 0 {
		if err := os.Remove(kubeletDevicePluginSocket); err != nil {
			errs = append(errs, err)
		}
	}
	for _, d := range hostDirsMade {
		// Fails, as it should, on a directory that holds anything.
		_ = os.Remove(d)
	}
	return errors.Join(errs...)
}
