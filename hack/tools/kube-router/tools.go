//go:build tools

// Package tools pins kube-router, whose network policy controller (iptables
// and ipset, no user-space queue) the node harness (src/testenv/kubenode)
// runs on the host where the kernel lacks nftables' queue expression that
// kube-network-policies needs; hack/install-tools.sh builds it from this
// module.
package tools

import (
	_ "github.com/cloudnativelabs/kube-router/v2/cmd/kube-router"
)
