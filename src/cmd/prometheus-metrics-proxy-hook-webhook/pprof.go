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
	"runtime"
	"strconv"
)

func init() {
	addr := os.Getenv("PMPH_PPROF_ADDRESS")
	if addr == "" {
		return
	}
	// PMPH_MEMPROFILE_RATE=1 records every allocation: exact heap
	// profiles, at a cost.
	if rate, err := strconv.Atoi(os.Getenv("PMPH_MEMPROFILE_RATE")); err == nil && rate > 0 {
		runtime.MemProfileRate = rate
	}
	go func() { _ = http.ListenAndServe(addr, nil) }()
}
