//go:build tools

// Package tools pins kube-network-policies, the NetworkPolicy enforcer kind
// uses, which the node harness (src/testenv/kubenode) runs on the host;
// hack/install-tools.sh builds it from this module.
package tools

import (
	_ "sigs.k8s.io/kube-network-policies/cmd"
)
