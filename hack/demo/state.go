package main

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// Phases of the environment, as the daemon records them in state.json.
const (
	phaseStarting = "starting"
	phaseReady    = "ready"
	phaseStopping = "stopping"
)

// stateDir is the demo's directory (.cache/demo): the daemon's lock, pid
// file, log and state, and the working directories of what it runs. A lock
// held by the daemon for its whole life, not the pid file, says whether a
// demo is running: a pid file survives a crash, a lock does not.
type stateDir string

func (d stateDir) path(name ...string) string {
	return filepath.Join(append([]string{string(d)}, name...)...)
}

func (d stateDir) lockFile() string   { return d.path("lock") }
func (d stateDir) pidFile() string    { return d.path("daemon.pid") }
func (d stateDir) logFile() string    { return d.path("daemon.log") }
func (d stateDir) stateFile() string  { return d.path("state.json") }
func (d stateDir) kubeconfig() string { return d.path("kubeconfig") }

// nodeTmp is the temporary directory of the node's mode: the node's,
// the registry's and the control plane's working directories. It lies
// outside the state directory because the kubelet's and containerd's unix
// sockets live in it and a socket path has at most 107 bytes; its name
// comes from the state directory, so that down finds it again.
func (d stateDir) nodeTmp() string {
	sum := sha256.Sum256([]byte(d))
	return filepath.Join(os.TempDir(), "pmph-demo-"+hex.EncodeToString(sum[:4]))
}

// tmpDirs are the temporary directories of both modes.
func (d stateDir) tmpDirs() []string { return []string{d.path("tmp"), d.nodeTmp()} }

// state is what the daemon tells the other commands about the environment.
type state struct {
	Phase      string    `json:"phase"`
	Pid        int       `json:"pid"`
	Started    time.Time `json:"started"`
	Kubeconfig string    `json:"kubeconfig,omitempty"`
	APIServer  string    `json:"apiServer,omitempty"`
	// WebhookURL is the webhook's TLS base URL (admission and lease API).
	WebhookURL string `json:"webhookURL,omitempty"`
	// WebhookBinary runs the webhook; SidecarBinary the sidecar the
	// walkthrough starts.
	WebhookBinary    string   `json:"webhookBinary,omitempty"`
	SidecarBinary    string   `json:"sidecarBinary,omitempty"`
	CAFile           string   `json:"caFile,omitempty"`
	RedisAddrs       []string `json:"redisAddrs,omitempty"`
	Release          string   `json:"release,omitempty"`
	ReleaseNamespace string   `json:"releaseNamespace,omitempty"`
	WebhookConfig    string   `json:"webhookConfig,omitempty"`
	// Mode is modeNode or modeControlPlane.
	Mode string `json:"mode,omitempty"`
	// NodeIP, Registry, Chart and HelmInstall describe the node (modeNode):
	// the node's address, the registry's host, the chart's oci:// reference
	// with its version, and the helm install command as it ran.
	NodeIP      string `json:"nodeIP,omitempty"`
	Registry    string `json:"registry,omitempty"`
	Chart       string `json:"chart,omitempty"`
	HelmInstall string `json:"helmInstall,omitempty"`
	// NetworkPolicyEnforcer names what enforces NetworkPolicies on the node
	// (kube-network-policies or kube-router; "" when nothing does).
	NetworkPolicyEnforcer string `json:"networkPolicyEnforcer,omitempty"`
	// NetworkPoliciesUnenforced says why the node does not enforce
	// NetworkPolicies ("" when it does).
	NetworkPoliciesUnenforced string `json:"networkPoliciesUnenforced,omitempty"`
	// Logs maps a component to its log file.
	Logs map[string]string `json:"logs,omitempty"`
}

func (d stateDir) writeState(s *state) error {
	data, err := json.MarshalIndent(s, "", "  ")
	if err != nil {
		return err
	}
	tmp := d.stateFile() + ".tmp"
	if err := os.WriteFile(tmp, data, 0o600); err != nil {
		return fmt.Errorf("cannot write the demo state: %w", err)
	}
	// Rename, so that a reader never sees half a file.
	if err := os.Rename(tmp, d.stateFile()); err != nil {
		return fmt.Errorf("cannot write the demo state: %w", err)
	}
	return nil
}

func (d stateDir) readState() (*state, error) {
	data, err := os.ReadFile(d.stateFile())
	if err != nil {
		return nil, err
	}
	var s state
	if err := json.Unmarshal(data, &s); err != nil {
		return nil, fmt.Errorf("cannot parse %s: %w", d.stateFile(), err)
	}
	return &s, nil
}

// lock takes the daemon's lock without waiting. The returned file holds it
// until it is closed or the process exits; ok is false when another process
// holds it.
func (d stateDir) lock() (f *os.File, ok bool, err error) {
	if err := os.MkdirAll(string(d), 0o755); err != nil {
		return nil, false, fmt.Errorf("cannot create the demo directory: %w", err)
	}
	f, err = os.OpenFile(d.lockFile(), os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return nil, false, fmt.Errorf("cannot open the demo lock: %w", err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		f.Close()
		if errors.Is(err, syscall.EWOULDBLOCK) {
			return nil, false, nil
		}
		return nil, false, fmt.Errorf("cannot lock %s: %w", d.lockFile(), err)
	}
	return f, true, nil
}

// running tells whether a daemon holds the lock.
func (d stateDir) running() (bool, error) {
	f, ok, err := d.lock()
	if err != nil {
		return false, err
	}
	if ok {
		f.Close()
	}
	return !ok, nil
}

func (d stateDir) readPid() (int, error) {
	data, err := os.ReadFile(d.pidFile())
	if err != nil {
		return 0, err
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(data)))
	if err != nil || pid <= 1 {
		return 0, fmt.Errorf("the pid file %s holds %q, not a process id", d.pidFile(), strings.TrimSpace(string(data)))
	}
	return pid, nil
}

// nextRun numbers the walkthroughs, so that each one gets namespaces of its
// own in an environment that keeps running.
func (d stateDir) nextRun() (int, error) {
	p := d.path("runs")
	n := 0
	if data, err := os.ReadFile(p); err == nil {
		n, _ = strconv.Atoi(strings.TrimSpace(string(data)))
	}
	n++
	if err := os.WriteFile(p, []byte(strconv.Itoa(n)+"\n"), 0o644); err != nil {
		return 0, fmt.Errorf("cannot record the walkthrough number: %w", err)
	}
	return n, nil
}
