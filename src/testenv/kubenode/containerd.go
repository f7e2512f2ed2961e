package kubenode

import (
	"context"
	"fmt"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
)

const (
	criNamespace = "k8s.io"
	// cniBinDir is where Debian's containernetworking-plugins installs.
	cniBinDir = "/usr/lib/cni"
)

// containerdPaths are containerd's directories and socket under the node's
// working directory.
type containerdPaths struct {
	dir, root, state, socket, config, cniConf, certsDir string
}

func newContainerdPaths(dir string) containerdPaths {
	d := filepath.Join(dir, "containerd")
	return containerdPaths{
		dir:      d,
		root:     filepath.Join(d, "root"),
		state:    filepath.Join(d, "state"),
		socket:   filepath.Join(d, "containerd.sock"),
		config:   filepath.Join(d, "config.toml"),
		cniConf:  filepath.Join(d, "cni"),
		certsDir: filepath.Join(d, "certs.d"),
	}
}

// containerdConfig takes `containerd config default` and changes what a node
// on this machine needs; a changed default that no longer has one of these
// keys is an error rather than a silently different node.
func containerdConfig(bin string, p containerdPaths, sandboxImage string) (string, error) {
	out, err := exec.Command(bin, "config", "default").Output()
	if err != nil {
		return "", fmt.Errorf("`containerd config default` failed: %w", err)
	}
	config := string(out)
	for _, kv := range [][]string{
		{"root", strconv.Quote(p.root)},
		{"state", strconv.Quote(p.state)},
		{"address", strconv.Quote(p.socket), `"/run/containerd/containerd.sock"`},
		{"path", strconv.Quote(filepath.Join(p.dir, "opt")), `"/opt/containerd"`},
		// Without it every sandbox fails here: runc cannot lower the
		// oom_score_adj it was given below its own ("can't get final child's
		// PID from pipe: EOF").
		{"restrict_oom_score_adj", "true"},
		{"sandbox_image", strconv.Quote(sandboxImage)},
		// Every pod may bind ports below 1024 (net.ipv4.ip_unprivileged_port_start=0
		// in its network namespace), as containerd 2 does by default:
		// CoreDNS runs as a user on port 53, and file capabilities do not
		// survive allowPrivilegeEscalation: false.
		{"enable_unprivileged_ports", "true"},
		// Network namespaces under the state directory, not /run/netns, so
		// that the sweep finds and unmounts them.
		{"netns_mounts_under_state_dir", "true"},
		{"bin_dir", strconv.Quote(cniBinDir)},
		{"conf_dir", strconv.Quote(p.cniConf)},
		{"config_path", strconv.Quote(p.certsDir)},
		// runc's state, which defaults to /run/containerd/runc.
		{"Root", strconv.Quote(filepath.Join(p.state, "runc"))},
	} {
		if config, err = setTOMLKey(config, kv[0], kv[1], kv[2:]...); err != nil {
			return "", err
		}
	}
	return config, nil
}

// setTOMLKey replaces the value of the one line `key = ...` (with the given
// old value, when several lines have that key).
func setTOMLKey(config, key, value string, old ...string) (string, error) {
	lines := strings.Split(config, "\n")
	found := -1
	for i, line := range lines {
		k, v, ok := strings.Cut(strings.TrimSpace(line), " = ")
		if !ok || k != key || (len(old) > 0 && v != old[0]) {
			continue
		}
		if found >= 0 {
			return "", fmt.Errorf("`containerd config default` has more than one %q line", key)
		}
		found = i
	}
	if found < 0 {
		return "", fmt.Errorf("`containerd config default` has no %q line; this containerd is not the one the node harness knows", key)
	}
	indent := lines[found][:len(lines[found])-len(strings.TrimLeft(lines[found], " \t"))]
	lines[found] = indent + key + " = " + value
	return strings.Join(lines, "\n"), nil
}

// writeMirrors configures containerd to pull every image of a registry host
// from a mirror, and from nothing else: the mirror is the server, so no
// request falls back to the real registry.
func writeMirrors(certsDir string, mirrors map[string]string) error {
	hosts := make([]string, 0, len(mirrors))
	for h := range mirrors {
		hosts = append(hosts, h)
	}
	sort.Strings(hosts)
	for _, host := range hosts {
		mirror := mirrors[host]
		u, err := url.Parse(mirror)
		if err != nil || u.Host == "" {
			return fmt.Errorf("the mirror %q of %s is not a URL such as http://127.0.0.1:5000", mirror, host)
		}
		dir := filepath.Join(certsDir, host)
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return err
		}
		hostsTOML := fmt.Sprintf("server = %q\n\n[host.%q]\n  capabilities = [\"pull\", \"resolve\"]\n", mirror, mirror)
		if err := os.WriteFile(filepath.Join(dir, "hosts.toml"), []byte(hostsTOML), 0o644); err != nil {
			return err
		}
	}
	return nil
}

// ctr runs containerd's own client against the node's containerd.
func ctr(ctx context.Context, socket string, args ...string) error {
	cmd := exec.CommandContext(ctx, "ctr", append([]string{"--address", socket, "--namespace", criNamespace}, args...)...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		return fmt.Errorf("ctr %s failed (%v): %s", strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}
