package kubenode

import (
	"context"
	"errors"
	"testing"
)

// StartForTest starts a node for t and stops it when t ends. It skips t,
// saying why, on a machine that cannot run a node (see Unsupported), and
// fails t when the demo's node holds the machine. Owner and Logf default to
// t's name and t.Logf.
func StartForTest(t testing.TB, opts Options) *Node {
	t.Helper()
	if reason := Unsupported(); reason != "" {
		t.Skip("kubenode: " + reason)
	}
	if opts.Owner == "" {
		opts.Owner = "test " + t.Name()
	}
	if opts.Logf == nil {
		opts.Logf = t.Logf
	}
	n, err := Start(context.Background(), opts)
	if err != nil {
		var busy *BusyError
		if errors.As(err, &busy) {
			t.Fatalf("kubenode: %v", err)
		}
		t.Fatalf("kubenode: the node did not start: %v", err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			components := []string{"kubelet", "containerd", "kube-proxy"}
			if n.NetworkPolicyEnforcer != "" {
				components = append(components, n.NetworkPolicyEnforcer)
			}
			for _, c := range components {
				t.Logf("%s log tail:\n%s", c, n.LogTail(c, 30))
			}
		}
		if err := n.Stop(); err != nil {
			t.Errorf("kubenode: Stop failed: %v", err)
		}
	})
	return n
}
