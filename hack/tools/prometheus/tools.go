//go:build tools

// Package tools pins a Prometheus built with Kubernetes service discovery
// (Debian's package is built without it); hack/install-tools.sh builds it from
// this module as prometheus-k8s.
package tools

import _ "github.com/prometheus/prometheus/cmd/prometheus"
