//go:build tools

// Package tools pins actionlint; hack/install-tools.sh builds it from this module.
package tools

import _ "github.com/rhysd/actionlint/cmd/actionlint"
