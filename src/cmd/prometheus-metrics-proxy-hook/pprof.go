//go:build pprof

package main

// Profiling build (`go build -tags pprof`): with PMPH_PPROF_ADDRESS set, the
// process serves net/http/pprof there, so that `make bench` and people can
// take CPU and allocation profiles under load. The release build does not
// contain it: no flag to misconfigure, no bytes added to the binary.

import (
	"net/http"
	_ "net/http/pprof" // registers /debug/pprof on http.DefaultServeMux
	"os"
)

func init() {
	addr := os.Getenv("PMPH_PPROF_ADDRESS")
	if addr == "" {
		return
	}
	go func() { _ = http.ListenAndServe(addr, nil) }()
}
