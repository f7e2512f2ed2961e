//go:build tools

// Package tools pins prometheus-operator, whose own configuration generator
// turns the chart's ServiceMonitor into Prometheus scrape configuration in the
// tests; hack/install-tools.sh builds it from this module.
package tools

import _ "github.com/prometheus-operator/prometheus-operator/cmd/operator"
