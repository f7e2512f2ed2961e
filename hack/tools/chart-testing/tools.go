//go:build tools

// Package tools pins chart-testing (ct); hack/install-tools.sh builds it from this module.
package tools

import _ "github.com/helm/chart-testing/v3/ct"
