//go:build tools

// Package tools pins CoreDNS; hack/install-tools.sh builds it from this module.
package tools

import _ "github.com/coredns/coredns"
