package main

import (
	"fmt"
	"io"
	"os"

	"github.com/kaidotio/prometheus-metrics-proxy-hook/src/testenv/kubenode"
)

// chooseMode says up front what the demo needs and what it will run: the
// node where it can, else the control-plane walkthrough with the reason.
// ok is false when the node was asked for and cannot run.
func chooseMode(cfg config, out io.Writer) (mode string, ok bool) {
	fmt.Fprintln(out, "make demo runs the chart on a real node on this machine: it needs Linux and root (it runs")
	fmt.Fprintln(out, "containerd, a kubelet and kube-proxy, and writes iptables rules), and it takes the machine's only")
	fmt.Fprintln(out, "node until `make demo-down`.")
	fmt.Fprintln(out)
	reason := kubenode.Unsupported()
	switch {
	case cfg.mode == modeControlPlane:
		fmt.Fprintln(out, "--mode control-plane: running the walkthrough without a node.")
		fmt.Fprintln(out)
		describeControlPlane(out)
		return modeControlPlane, true
	case reason != "" && cfg.mode == modeNode:
		fmt.Fprintf(os.Stderr, "demo: this machine cannot run the node: %s.\n", reason)
		return "", false
	case reason != "":
		fmt.Fprintf(out, "This machine cannot run the node: %s.\n", reason)
		fmt.Fprintln(out, "Falling back to the control-plane walkthrough: the chart's objects are stored but its pods never")
		fmt.Fprintln(out, "run, and the webhook and the sidecar run as local processes.")
		fmt.Fprintln(out)
		describeControlPlane(out)
		return modeControlPlane, true
	}
	if err := kubenode.Holder(); err != nil && cfg.nodeOwner == kubenode.DemoOwner {
		fmt.Fprintf(os.Stderr, "demo: %v.\n", nodeBusy(err))
		return "", false
	}
	fmt.Fprintln(out, "Starting the demo environment in the background: the project's, Redis', CoreDNS' and an app's")
	fmt.Fprintln(out, "images built from this checkout without Docker and pushed to an OCI registry on loopback; a control")
	fmt.Fprintln(out, "plane, kube-scheduler, a kubelet on containerd and runc, kube-proxy, CoreDNS and a NetworkPolicy enforcer;")
	fmt.Fprintln(out, "then the chart, installed from that registry with helm.")
	return modeNode, true
}

func describeControlPlane(out io.Writer) {
	fmt.Fprintln(out, "Starting the demo environment in the background: etcd, kube-apiserver, kube-controller-manager,")
	fmt.Fprintln(out, "3 Redis nodes and the webhook, all on loopback, with the chart installed into the API server.")
}
