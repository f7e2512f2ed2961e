//go:build tools

// Package tools pins the distribution registry; hack/install-tools.sh builds it
// from this module.
package tools

import _ "github.com/distribution/distribution/v3/cmd/registry"
