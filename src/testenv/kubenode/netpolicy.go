package kubenode

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/kaidotio/prometheus-metrics-proxy-hook/src/testenv/kubetest"
)

// The NetworkPolicy enforcers the node can run, as Node.NetworkPolicyEnforcer
// names them.
const (
	// EnforcerKubeNetworkPolicies is sigs.k8s.io/kube-network-policies,
	// what kind runs. It needs the nftables queue expression.
	EnforcerKubeNetworkPolicies = "kube-network-policies"
	// EnforcerKubeRouter is kube-router's network policy controller alone
	// (no routing, no service proxy). It needs ipset and the iptables set
	// match.
	EnforcerKubeRouter = "kube-router"
)

const (
	// serviceAccountDir is where rest.InClusterConfig reads its token and
	// CA; kube-network-policies knows no other way to find its API server.
	serviceAccountDir = "/var/run/secrets/kubernetes.io/serviceaccount"
	// probeSet and probeChain are the throw-away ipset and iptables chain
	// that show whether the kernel has what kube-router needs.
	probeSet   = "pmph-kubenode-probe"
	probeChain = "PMPH-KUBENODE-PROBE"
	// kubeRouterForwardChain is the top-level chain of kube-router's
	// firewall; its rule accepting what a policy admitted is written at the
	// end of each full sync.
	kubeRouterForwardChain = "KUBE-ROUTER-FORWARD"
	kubeRouterAcceptMark   = "0x20000/0x20000"
)

// nfqueueProbe is a ruleset with the nftables queue expression, which
// kube-network-policies uses to hand packets of pods under a policy to its
// user-space evaluator. `nft -c` makes the kernel check it without applying.
const nfqueueProbe = `table inet pmph-kubenode-probe {
	chain forward {
		type filter hook forward priority 0; policy accept;
		queue num 100 bypass
	}
}
`

// nfqueueUnsupported says why kube-network-policies cannot run on this
// kernel ("" when it can).
func nfqueueUnsupported() string {
	cmd := exec.Command("nft", "-c", "-f", "-")
	cmd.Stdin = strings.NewReader(nfqueueProbe)
	out, err := cmd.CombinedOutput()
	if err == nil {
		return ""
	}
	return fmt.Sprintf("kube-network-policies queues packets to user space with the nftables queue expression, and this kernel refuses it (nft -c said: %s)",
		strings.Join(strings.Fields(string(out)), " "))
}

// ipsetUnsupported says why kube-router's firewall cannot run here ("" when
// it can): it creates a hash:ip set and an iptables rule matching it, and
// removes both again.
func ipsetUnsupported() string {
	if _, err := exec.LookPath("ipset"); err != nil {
		return "kube-router needs the ipset command, which is not installed; run `make tools` (Debian package ipset)"
	}
	err := runCmd("ipset", "create", probeSet, "hash:ip")
	if err == nil {
		err = errors.Join(
			runCmd(iptables, "-t", "filter", "-N", probeChain),
			runCmd(iptables, "-t", "filter", "-A", probeChain, "-m", "set", "--match-set", probeSet, "src", "-j", "RETURN"))
	}
	_ = exec.Command(iptables, "-t", "filter", "-F", probeChain).Run()
	_ = exec.Command(iptables, "-t", "filter", "-X", probeChain).Run()
	_ = exec.Command("ipset", "destroy", probeSet).Run()
	if err != nil {
		return "kube-router matches pods with ipsets, and this kernel refuses a set or the iptables set match: " + err.Error()
	}
	return ""
}

// chooseEnforcer picks kube-network-policies where the kernel has the
// nftables queue expression, else kube-router where it has ipset; with
// neither, it says why in unenforced.
func chooseEnforcer() (enforcer, unenforced string) {
	noQueue := nfqueueUnsupported()
	if noQueue == "" {
		return EnforcerKubeNetworkPolicies, ""
	}
	noIPSet := ipsetUnsupported()
	if noIPSet == "" {
		return EnforcerKubeRouter, ""
	}
	return "", noQueue + "; " + noIPSet
}

// startNetworkPolicies starts the enforcer this kernel can run, or records
// why none can.
func (n *Node) startNetworkPolicies(ctx context.Context, kubeconfig string, metricsPort, healthPort int) error {
	enforcer, unenforced := chooseEnforcer()
	if enforcer == "" {
		n.NetworkPoliciesUnenforced = unenforced
		n.logf("NetworkPolicies are stored but not enforced: %s", unenforced)
		return nil
	}
	bin, err := kubetest.Tool(enforcer)
	if err != nil {
		return err
	}
	n.NetworkPolicyEnforcer = enforcer
	n.logf("NetworkPolicies are enforced by %s", enforcer)
	if enforcer == EnforcerKubeRouter {
		return n.startKubeRouter(ctx, bin, kubeconfig, metricsPort, healthPort)
	}
	return n.startKubeNetworkPolicies(ctx, bin, metricsPort)
}

// startKubeNetworkPolicies runs kube-network-policies on the host. It reads
// its API server only from the in-cluster service account files, so it runs
// in a mount namespace of its own where those paths show the admin token and
// the API server's CA.
func (n *Node) startKubeNetworkPolicies(ctx context.Context, bin string, metricsPort int) error {
	saDir := filepath.Join(n.Dir, EnforcerKubeNetworkPolicies, "serviceaccount")
	if err := writeFiles(map[string]string{
		filepath.Join(saDir, "token"):  n.Token,
		filepath.Join(saDir, "ca.crt"): string(n.CACertPEM),
	}); err != nil {
		return err
	}
	if err := os.MkdirAll(serviceAccountDir, 0o755); err != nil {
		return fmt.Errorf("cannot create the mount point %s: %w", serviceAccountDir, err)
	}
	_, port, err := net.SplitHostPort(strings.TrimPrefix(n.URL, "https://"))
	if err != nil {
		return err
	}
	script := `mount --bind "$1" "$2" && shift 2 && exec "$@"`
	args := []string{"--mount", "--propagation", "private", "sh", "-c", script, "sh", saDir, serviceAccountDir,
		bin,
		"--hostname-override=" + n.Name,
		"--metrics-bind-address=127.0.0.1:" + strconv.Itoa(metricsPort),
		// containerd 1.6 has no NRI; pod addresses come from the API.
		"--disable-nri",
	}
	env := []string{"KUBERNETES_SERVICE_HOST=127.0.0.1", "KUBERNETES_SERVICE_PORT=" + port}
	_, err = n.run(ctx, EnforcerKubeNetworkPolicies, "unshare", args, env, httpHealthy(metricsPort, "/metrics"))
	return err
}

// startKubeRouter runs kube-router's network policy controller on the host
// and waits until it is healthy and has written its rules once. Its health
// server has no address flag and listens on every address of the machine
// (loopback, the node's address, the bridge's gateway). Each of its syncs
// saves the whole filter table and restores it without --noflush (upstream
// issue 1372), so a change kube-proxy writes to its filter chains between
// the two is undone until kube-proxy's next sync; the Service and endpoint
// changes that trigger one are frequent in the tests.
func (n *Node) startKubeRouter(ctx context.Context, bin, kubeconfig string, metricsPort, healthPort int) error {
	_, err := n.run(ctx, EnforcerKubeRouter, bin, []string{
		"--kubeconfig=" + kubeconfig,
		"--hostname-override=" + n.Name,
		"--run-firewall=true",
		"--run-router=false",
		"--run-service-proxy=false",
		"--run-loadbalancer=false",
		"--service-cluster-ip-range=" + serviceCIDR,
		"--health-port=" + strconv.Itoa(healthPort),
		"--metrics-addr=127.0.0.1",
		"--metrics-port=" + strconv.Itoa(metricsPort),
	}, nil, func(ctx context.Context) error {
		if err := httpHealthy(healthPort)(ctx); err != nil {
			return err
		}
		return kubeRouterSynced()
	})
	return err
}

// kubeRouterSynced succeeds once kube-router's first full sync has written
// its top-level forward chain, ending in the rule that accepts what a policy
// admitted.
func kubeRouterSynced() error {
	out, err := exec.Command(iptables, "-t", "filter", "-S", kubeRouterForwardChain).CombinedOutput()
	if err != nil {
		return fmt.Errorf("kube-router has not created its chain %s yet: %s", kubeRouterForwardChain, strings.TrimSpace(string(out)))
	}
	if !strings.Contains(string(out), kubeRouterAcceptMark) {
		return fmt.Errorf("kube-router has not finished its first sync: %s has no rule for the mark %s yet", kubeRouterForwardChain, kubeRouterAcceptMark)
	}
	return nil
}

// removeServiceAccountDir removes the mount point startKubeNetworkPolicies
// made, and its parents, where they are empty.
func removeServiceAccountDir() {
	for d := serviceAccountDir; d != "/var/run"; d = filepath.Dir(d) {
		if os.Remove(d) != nil {
			return
		}
	}
}
