package kubenode

import (
	"context"
	"os/exec"
	"strings"
	"testing"
	"time"
)

// TestSweepKubeRouterLeftovers writes what a killed kube-router leaves on the
// machine (it removes nothing when it exits): its top-level chain and the
// jump to it, a policy chain matching a pod set, a half-swapped set, and an
// IPv6 set; then checks that the sweep a Start runs first removes all of it.
func TestSweepKubeRouterLeftovers(t *testing.T) {
	if reason := Unsupported(); reason != "" {
		t.Skip("kubenode: " + reason)
	}
	if reason := ipsetUnsupported(); reason != "" {
		t.Skip("kubenode: " + reason)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Minute)
	defer cancel()
	// The sweep removes every node's chains: no node may run meanwhile.
	held, err := acquireLock(ctx, "test "+t.Name(), t.Logf)
	if err != nil {
		t.Fatal(err)
	}
	defer held.Close()
	const (
		forward = "KUBE-ROUTER-FORWARD"
		policy  = "KUBE-NWPLCY-TESTSWEEPLEFTOVR"
		srcSet  = "KUBE-SRC-TESTSWEEPLEFTOVR"
		tmpSet  = "TMP-ABCDEFGHIJKLMNOP"
		v6Set   = "inet6:KUBE-DST-TESTSWEEPLEFTOVR"
	)
	for _, args := range [][]string{
		{"ipset", "create", srcSet, "hash:ip"},
		{"ipset", "add", srcSet, "10.244.0.5"},
		{"ipset", "create", tmpSet, "hash:ip"},
		{"ipset", "create", v6Set, "hash:ip", "family", "inet6"},
		{iptables, "-t", "filter", "-N", forward},
		{iptables, "-t", "filter", "-N", policy},
		{iptables, "-t", "filter", "-A", policy, "-m", "set", "--match-set", srcSet, "src", "-j", "MARK", "--set-xmark", "0x10000/0x10000"},
		{iptables, "-t", "filter", "-A", forward, "-s", "10.244.0.5/32", "-j", policy},
		{iptables, "-t", "filter", "-I", "FORWARD", "1", "-m", "comment", "--comment", "kube-router netpol - TESTSWEEP", "-j", forward},
	} {
		if out, err := exec.Command(args[0], args[1:]...).CombinedOutput(); err != nil {
			_ = sweep(nil, "")
			t.Fatalf("%v: %v: %s", args, err, out)
		}
	}
	if err := sweep(nil, ""); err != nil {
		t.Errorf("sweep: %v", err)
	}
	if chains := leftoverChains(); len(chains) > 0 {
		t.Errorf("iptables chains are left after the sweep: %v", chains)
	}
	if sets := leftoverSets(); len(sets) > 0 {
		t.Errorf("ipsets are left after the sweep: %v", sets)
	}
	if out, err := exec.Command(iptables, "-t", "filter", "-S", "FORWARD").Output(); err != nil || strings.Contains(string(out), forward) {
		t.Errorf("FORWARD still jumps to %s after the sweep (%v):\n%s", forward, err, out)
	}
}
