// Package kubenode runs a real Kubernetes node on this machine for tests and
// the demo: kubetest's control plane plus kube-scheduler, a kubelet on
// Debian's containerd and runc, a CNI bridge network, kube-proxy (iptables),
// CoreDNS as a Deployment in kube-system, a NetworkPolicy enforcer
// (kube-network-policies where the kernel has the nftables queue expression,
// kube-router's firewall where it has ipset), and a default StorageClass whose claims bind to local
// PersistentVolumes made beforehand (CreateLocalVolumes). Pods run for real.
//
// The node takes the whole machine: iptables, the kubelet's cgroups and the
// CNI state are shared by the host. Start takes a machine-wide lock, sweeps
// what a crashed earlier run left behind, and Stop removes everything again:
// processes (container shims and pods included), mounts, links, iptables
// chains and directories. It needs root; Unsupported says why a machine
// cannot run a node.
//
// Pod traffic stays on the machine: pods reach each other over the bridge,
// and the node (the API server, the kubelet) through the node's own address
// on the loopback interface; nothing is masqueraded, and a guard rule drops what a
// pod sends out through any other interface.
package kubenode

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/kaidotio/prometheus-metrics-proxy-hook/src/testenv/kubetest"
	"github.com/kaidotio/prometheus-metrics-proxy-hook/src/testenv/localproc"
)

const (
	// DemoOwner is the Owner of the demo's node. A test that finds it
	// running refuses to start rather than wait: it runs until
	// `make demo-down`.
	DemoOwner = "make demo"
	// NodeName is the name the node registers under.
	NodeName = "pmph-kubenode"
	// defaultStartTimeout covers a cold start on a loaded 2-core machine:
	// the API server alone takes a minute there.
	defaultStartTimeout = 5 * time.Minute
	pollInterval        = 250 * time.Millisecond
)

// Options configure Start.
type Options struct {
	// Owner says who runs the node, for the message another Start prints
	// while this node holds the machine: a test's name, or DemoOwner.
	Owner string
	// SandboxImage is the pause image of every pod (required). It must be
	// in one of ImageArchives or pullable through Mirrors.
	SandboxImage string
	// CoreDNSImage is the image of cluster DNS (required), found the same way.
	CoreDNSImage string
	// Mirrors maps a registry host (say "ghcr.io") to the URL of the
	// registry containerd pulls its images from instead (say
	// "http://127.0.0.1:5000"). Images of other hosts are not pulled
	// from anywhere: import them with ImageArchives.
	Mirrors map[string]string
	// ImageArchives are image tarballs (docker save or OCI layout) imported
	// into containerd before the kubelet starts.
	ImageArchives []string
	// StartTimeout bounds Start once it holds the machine-wide lock (the
	// wait for another test's node is bounded only by Start's context);
	// zero means 5 minutes.
	StartTimeout time.Duration
	// Logf, when set, receives one line per step.
	Logf func(format string, args ...any)
}

// Node is a running node with its control plane. The embedded ControlPlane
// gives the API server's URL, token, Do, Kubectl and CreateNamespace.
type Node struct {
	*kubetest.ControlPlane
	// Name is the Node object's name.
	Name string
	// IP is the node's InternalIP, an address of its own on the loopback
	// interface.
	IP string
	// PodCIDR is the pod network's subnet.
	PodCIDR string
	// ClusterDNS is the ClusterIP of the kube-dns Service.
	ClusterDNS string
	// NetworkPolicyEnforcer names the program that enforces NetworkPolicies
	// (EnforcerKubeNetworkPolicies or EnforcerKubeRouter), "" when none can
	// run on this kernel.
	NetworkPolicyEnforcer string
	// NetworkPoliciesUnenforced says why NetworkPolicies are not enforced on
	// this node ("" when an enforcer runs): the kernel has neither the
	// nftables queue expression nor ipset with the iptables set match.
	NetworkPoliciesUnenforced string
	// Dir is the working directory: one log per component, the kubelet's
	// root directory, containerd's state.
	Dir string

	opts      Options
	addr      addressing
	toolsBin  string
	lock      *os.File
	rec       record
	forwarder net.Listener
	procs     []*process

	stopOnce sync.Once
	stopErr  error
}

// Unsupported says why this machine cannot run a node ("" when it can): the
// node needs Linux, root, and the cgroup hierarchies the kubelet puts pods in.
func Unsupported() string {
	if _, err := os.Stat("/proc/self/mountinfo"); err != nil {
		return "the node needs Linux (/proc/self/mountinfo is missing)"
	}
	if os.Geteuid() != 0 {
		return fmt.Sprintf("the node needs root (it runs containerd, the kubelet and iptables), and this process runs as uid %d", os.Geteuid())
	}
	for _, c := range []string{"cpu", "memory", "pids"} {
		if _, err := os.Stat(filepath.Join(cgroupRoot, c, "cgroup.procs")); err != nil {
			if _, err2 := os.Stat(filepath.Join(cgroupRoot, "cgroup.controllers")); err2 != nil {
				return fmt.Sprintf("the node needs the %s cgroup controller, and neither %s/%s nor a cgroup v2 hierarchy at %s is mounted", c, cgroupRoot, c, cgroupRoot)
			}
		}
	}
	if _, err := os.Stat("/proc/sys/net/bridge/bridge-nf-call-iptables"); err != nil {
		return "the node needs the br_netfilter kernel module (/proc/sys/net/bridge/bridge-nf-call-iptables is missing), for Services between pods on one bridge; load it with `modprobe br_netfilter`"
	}
	return ""
}

// Start starts a node and returns once it is Ready, kube-proxy has synced,
// cluster DNS answers and the NetworkPolicy enforcer runs. On error
// everything it started is stopped and swept again.
func Start(ctx context.Context, opts Options) (_ *Node, err error) {
	if reason := Unsupported(); reason != "" {
		return nil, errors.New(reason)
	}
	if opts.SandboxImage == "" || opts.CoreDNSImage == "" {
		return nil, errors.New("kubenode.Options needs SandboxImage and CoreDNSImage")
	}
	bins, err := findBinaries()
	if err != nil {
		return nil, err
	}
	if opts.Logf == nil {
		opts.Logf = func(string, ...any) {}
	}
	if opts.Owner == "" {
		opts.Owner = filepath.Base(os.Args[0])
	}
	n := &Node{Name: NodeName, ClusterDNS: clusterDNSIP, opts: opts, toolsBin: bins.toolsBin}
	if n.lock, err = acquireLock(ctx, opts.Owner, n.logf); err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			err = errors.Join(err, n.Stop())
		}
	}()
	// The deadline starts once the machine is ours: waiting for another
	// test package's node is not part of starting this one.
	timeout := opts.StartTimeout
	if timeout <= 0 {
		timeout = defaultStartTimeout
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	if err := n.sweepLeftovers(); err != nil {
		return nil, err
	}
	if err := n.prepare(); err != nil {
		return nil, err
	}
	if err := n.startControlPlane(ctx); err != nil {
		return nil, err
	}
	if err := n.startNode(ctx, bins); err != nil {
		return nil, err
	}
	return n, nil
}

func (n *Node) logf(format string, args ...any) {
	n.opts.Logf("kubenode: "+format, args...)
}

// sweepLeftovers removes what an earlier run left, found by the record it
// wrote and by the fixed names and prefixes every run uses.
func (n *Node) sweepLeftovers() error {
	old, err := readRecord()
	if err != nil {
		return err
	}
	dirs := leftoverDirs()
	if old != nil && old.Dir != "" && !contains(dirs, old.Dir) {
		dirs = append(dirs, old.Dir)
	}
	if old != nil || len(dirs) > 0 {
		n.logf("sweeping what an earlier node left behind (directories %v)", dirs)
	}
	// Always: a run killed before it wrote its record can have left chains
	// and links too.
	if err := sweep(dirs, n.toolsBin); err != nil {
		return fmt.Errorf("cannot clean up after an earlier node on this machine: %w", err)
	}
	if old == nil {
		return nil
	}
	if err := restoreForwarding(old.IPForward); err != nil {
		return err
	}
	return os.Remove(recordPath)
}

// prepare creates the working directory, records the run, and sets up the
// node's address, forwarding and the guard rule.
func (n *Node) prepare() error {
	dir, err := os.MkdirTemp("", dirPrefix)
	if err != nil {
		return fmt.Errorf("cannot create the node's working directory: %w", err)
	}
	n.Dir = dir
	a, err := pickAddressing()
	if err != nil {
		return err
	}
	n.addr = a
	n.IP, n.PodCIDR = a.nodeIP.String(), a.podCIDR.String()
	n.rec = record{Owner: n.opts.Owner, PID: os.Getpid(), Dir: dir}
	if err := writeRecord(&n.rec); err != nil {
		return err
	}
	if n.rec.IPForward, err = enableForwarding(); err != nil {
		return err
	}
	if err := writeRecord(&n.rec); err != nil {
		return err
	}
	if err := installGuard(); err != nil {
		return err
	}
	return addNodeAddress(a.nodeIP)
}

func (n *Node) startControlPlane(ctx context.Context) error {
	cp, err := kubetest.Start(ctx, kubetest.Options{
		ControllerManager: true,
		ServingHosts: []string{n.IP, kubernetesSvcIP, "kubernetes", "kubernetes.default",
			"kubernetes.default.svc", "kubernetes.default.svc." + clusterDomain},
		APIServerFlags: []string{
			// Pods reach the API server through the "kubernetes" Service,
			// whose endpoint is the node's address (forwarded to loopback).
			"--advertise-address=" + n.IP,
			"--endpoint-reconciler-type=lease",
			"--kubelet-preferred-address-types=InternalIP",
			"--allow-privileged=true",
		},
		Logf: n.opts.Logf,
	})
	if err != nil {
		return err
	}
	n.ControlPlane = cp
	return n.forwardAPIServer()
}

// forwardAPIServer accepts connections on the node's address at the API
// server's port and relays them to the API server on loopback, where it
// listens.
func (n *Node) forwardAPIServer() error {
	_, port, err := net.SplitHostPort(strings.TrimPrefix(n.URL, "https://"))
	if err != nil {
		return err
	}
	l, err := net.Listen("tcp", net.JoinHostPort(n.IP, port))
	if err != nil {
		return fmt.Errorf("cannot listen on the node's address for the API server: %w", err)
	}
	n.forwarder = l
	go relay(l, net.JoinHostPort("127.0.0.1", port))
	return nil
}

// binaries are the paths of the node's programs.
type binaries struct {
	toolsBin                              string
	scheduler, kubelet, proxy, containerd string
}

func findBinaries() (binaries, error) {
	dir, err := kubetest.ToolsBin()
	if err != nil {
		return binaries{}, err
	}
	b := binaries{toolsBin: dir}
	for name, dst := range map[string]*string{
		"kube-scheduler": &b.scheduler, "kubelet": &b.kubelet, "kube-proxy": &b.proxy,
	} {
		if *dst, err = kubetest.Tool(name); err != nil {
			return binaries{}, err
		}
	}
	for _, cmd := range []string{"containerd", "containerd-shim-runc-v2", "runc", "ctr", "iptables", "ip", "conntrack", "nft", "unshare"} {
		path, err := exec.LookPath(cmd)
		if err != nil {
			return binaries{}, fmt.Errorf("%s is not installed; run `make tools` (it installs the node's Debian packages)", cmd)
		}
		if cmd == "containerd" {
			b.containerd = path
		}
	}
	if !isExecutable(filepath.Join(cniBinDir, "bridge")) {
		return binaries{}, fmt.Errorf("the CNI plugins are not installed in %s; run `make tools` (Debian package containernetworking-plugins)", cniBinDir)
	}
	return b, nil
}

// startNode starts, in order, containerd (and imports the images), the
// kubelet, kube-scheduler, kube-proxy, CoreDNS, the default StorageClass and
// the NetworkPolicy enforcer.
func (n *Node) startNode(ctx context.Context, b binaries) error {
	ports, err := localproc.FreePorts(7)
	if err != nil {
		return err
	}
	kubeletPort, kubeletHealthz, schedPort, proxyHealthz, proxyMetrics, netpolMetrics, netpolHealthz :=
		ports[0], ports[1], ports[2], ports[3], ports[4], ports[5], ports[6]
	a := n.addr
	kcfg := filepath.Join(n.Dir, "kubeconfig")
	if err := writeFiles(map[string]string{kcfg: kubeconfig(n.URL, n.Token, n.CACertPEM)}); err != nil {
		return err
	}
	if err := n.startContainerd(ctx, b.containerd, a); err != nil {
		return err
	}
	cp := newContainerdPaths(n.Dir)
	kubeletDir := filepath.Join(n.Dir, "kubelet")
	if err := writeFiles(map[string]string{
		filepath.Join(kubeletDir, "config.yaml"): kubeletConfig(kubeletDir, cp.socket, a, kubeletPort, kubeletHealthz),
		filepath.Join(kubeletDir, "resolv.conf"): "",
	}); err != nil {
		return err
	}
	if err := os.MkdirAll(n.podLogsDir(), 0o755); err != nil {
		return err
	}
	if _, err := n.run(ctx, "kubelet", b.kubelet, []string{
		"--config=" + filepath.Join(kubeletDir, "config.yaml"),
		"--kubeconfig=" + kcfg,
		"--root-dir=" + filepath.Join(kubeletDir, "root"),
		"--cert-dir=" + filepath.Join(kubeletDir, "pki"),
		"--hostname-override=" + n.Name,
		"--node-ip=" + n.IP,
	}, nil, n.nodeReady); err != nil {
		return err
	}
	if _, err := n.run(ctx, "kube-scheduler", b.scheduler, []string{
		"--kubeconfig=" + kcfg,
		"--authentication-kubeconfig=" + kcfg,
		"--authorization-kubeconfig=" + kcfg,
		"--bind-address=127.0.0.1",
		"--secure-port=" + strconv.Itoa(schedPort),
		"--leader-elect=false",
	}, nil, httpsHealthy(schedPort)); err != nil {
		return err
	}
	if _, err := n.run(ctx, "kube-proxy", b.proxy, []string{
		"--kubeconfig=" + kcfg,
		"--proxy-mode=iptables",
		"--hostname-override=" + n.Name,
		"--cluster-cidr=" + n.PodCIDR,
		"--healthz-bind-address=127.0.0.1:" + strconv.Itoa(proxyHealthz),
		"--metrics-bind-address=127.0.0.1:" + strconv.Itoa(proxyMetrics),
		// Leave the machine's sysctls alone: no conntrack table resizing,
		// no route_localnet for NodePorts on 127.0.0.1.
		"--conntrack-max-per-core=0",
		"--conntrack-tcp-timeout-established=0",
		"--conntrack-tcp-timeout-close-wait=0",
		"--iptables-localhost-nodeports=false",
		"--nodeport-addresses=" + n.IP + "/32",
	}, nil, httpHealthy(proxyHealthz)); err != nil {
		return err
	}
	if err := n.startCoreDNS(ctx); err != nil {
		return err
	}
	if err := n.createStorageClass(ctx); err != nil {
		return err
	}
	return n.startNetworkPolicies(ctx, kcfg, netpolMetrics, netpolHealthz)
}

func (n *Node) startContainerd(ctx context.Context, bin string, a addressing) error {
	p := newContainerdPaths(n.Dir)
	config, err := containerdConfig(bin, p, n.opts.SandboxImage)
	if err != nil {
		return err
	}
	if err := writeFiles(map[string]string{p.config: config}); err != nil {
		return err
	}
	if err := writeMirrors(p.certsDir, n.opts.Mirrors); err != nil {
		return err
	}
	if err := writeCNIConfig(p.cniConf, filepath.Join(p.dir, "cni-ipam"), a); err != nil {
		return err
	}
	if _, err := n.run(ctx, "containerd", bin, []string{
		"--config=" + p.config, "--root=" + p.root, "--state=" + p.state, "--address=" + p.socket,
	}, nil, func(ctx context.Context) error { return ctr(ctx, p.socket, "version") }); err != nil {
		return err
	}
	for _, archive := range n.opts.ImageArchives {
		started := time.Now()
		if err := ctr(ctx, p.socket, "images", "import", archive); err != nil {
			return fmt.Errorf("cannot import the image archive %s: %w", archive, err)
		}
		n.logf("imported %s in %s", archive, time.Since(started).Round(time.Millisecond))
	}
	return nil
}

// run starts a component in its own directory under Dir and waits until
// ready succeeds.
func (n *Node) run(ctx context.Context, name, bin string, args, extraEnv []string, ready func(context.Context) error) (*process, error) {
	dir := filepath.Join(n.Dir, name)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	started := time.Now()
	p, err := startProcess(dir, name, bin, args, append(os.Environ(), extraEnv...))
	if err != nil {
		return nil, err
	}
	n.procs = append(n.procs, p)
	n.logf("started %s as pid %d (log: %s)", name, p.pid(), p.logPath)
	if err := waitFor(ctx, p, ready); err != nil {
		return nil, p.failure(err)
	}
	n.logf("%s is ready after %s", name, time.Since(started).Round(time.Millisecond))
	return p, nil
}

// waitFor polls ready until it succeeds, the process exits, or ctx ends.
func waitFor(ctx context.Context, p *process, ready func(context.Context) error) error {
	var last error
	for {
		probeCtx, cancel := context.WithTimeout(ctx, 5*time.Second)
		last = ready(probeCtx)
		cancel()
		if last == nil {
			return nil
		}
		if p != nil && !p.running() {
			return fmt.Errorf("%s exited early (%v); the last check said: %v", p.name, p.cmd.ProcessState, last)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("not ready before the start deadline (%v); the last check said: %w", context.Cause(ctx), last)
		case <-time.After(pollInterval):
		}
	}
}

// nodeReady succeeds once the Node reports the Ready condition True.
func (n *Node) nodeReady(ctx context.Context) error {
	var node struct {
		Status struct {
			Conditions []struct{ Type, Status, Message string }
		}
	}
	if err := n.Do(ctx, http.MethodGet, "/api/v1/nodes/"+n.Name, nil, &node); err != nil {
		return err
	}
	for _, c := range node.Status.Conditions {
		if c.Type == "Ready" {
			if c.Status == "True" {
				return nil
			}
			return fmt.Errorf("the node is not Ready: %s", c.Message)
		}
	}
	return errors.New("the node has no Ready condition yet")
}

// Kubeconfig returns the path of a kubeconfig for the admin user.
func (n *Node) Kubeconfig() string { return n.KubeconfigPath }

// CRISocket is the path of the node's containerd socket, which serves the
// CRI (the kubelet's runtime endpoint): tests read container statuses from
// it, with the runtime's own timestamps.
func (n *Node) CRISocket() string { return newContainerdPaths(n.Dir).socket }

// ContainerLogPath is the file the kubelet has the runtime write a
// container's output to, in the CRI log format (one line per write:
// timestamp, stream, P or F, text). The kubelet removes it with the pod, so
// a test that reads a container's last lines after the pod is gone opens it
// while the container runs and keeps it open.
func (n *Node) ContainerLogPath(namespace, pod, uid, container string, restartCount int) string {
	dir := fmt.Sprintf("%s_%s_%s", namespace, pod, uid)
	return filepath.Join(n.podLogsDir(), dir, container, fmt.Sprintf("%d.log", restartCount))
}

// podLogsDir is the kubelet's podLogsDir (kubeletConfig).
func (n *Node) podLogsDir() string { return filepath.Join(n.Dir, "kubelet", "pods-logs") }

// LogTail returns the last lines of a component's log: "containerd",
// "kubelet", "kube-scheduler", "kube-proxy", the NetworkPolicy enforcer
// (NetworkPolicyEnforcer), or one of the control plane's.
func (n *Node) LogTail(component string, lines int) string {
	for _, p := range n.procs {
		if p.name == component {
			return localproc.LogTail(p.logPath, lines, "\n")
		}
	}
	if n.ControlPlane != nil {
		return n.ControlPlane.LogTail(component, lines)
	}
	return fmt.Sprintf("(no component %q)", component)
}

// Stop stops every component (the kubelet before the pods' processes,
// containerd's shims with it), stops the control plane, removes the node's
// mounts, links, iptables chains, ipsets and directories, restores IP
// forwarding and releases the machine. It is safe to call more than once.
func (n *Node) Stop() error {
	if n == nil {
		return nil
	}
	n.stopOnce.Do(func() {
		var errs []error
		for i := len(n.procs) - 1; i >= 0; i-- {
			if err := n.procs[i].stop(); err != nil {
				errs = append(errs, err)
			}
		}
		if n.forwarder != nil {
			n.forwarder.Close()
		}
		if n.ControlPlane != nil {
			if err := n.ControlPlane.Stop(); err != nil {
				errs = append(errs, err)
			}
		}
		if n.lock != nil {
			var dirs []string
			if n.Dir != "" {
				dirs = append(dirs, n.Dir)
			}
			errs = append(errs, sweep(dirs, n.toolsBin), restoreForwarding(n.rec.IPForward))
			if n.Dir != "" {
				if err := os.Remove(recordPath); err != nil && !errors.Is(err, os.ErrNotExist) {
					errs = append(errs, err)
				}
			}
			n.lock.Close()
		}
		n.stopErr = errors.Join(errs...)
	})
	return n.stopErr
}

func contains(list []string, s string) bool {
	for _, v := range list {
		if v == s {
			return true
		}
	}
	return false
}
