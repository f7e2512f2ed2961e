// Package buildinfo holds the version stamped into the binary at link time.
package buildinfo

import "runtime"

// These are set with -ldflags "-X github.com/kaidotio/prometheus-metrics-proxy-hook/src/buildinfo.Version=..."
// and are read-only after start-up.
var (
	Version  = "dev"
	Revision = "unknown"
)

// GoVersion is the Go release the binary was built with.
func GoVersion() string { return runtime.Version() }

// VersionRequested reports whether a command's arguments ask for its
// version: `version` and nothing else.
func VersionRequested(args []string) bool { return len(args) == 1 && args[0] == "version" }

// String is the one-line form that `version` prints.
func String() string {
	return "prometheus-metrics-proxy-hook " + Version + " (revision " + Revision + ", " + GoVersion() + ")"
}
