# Performance: the admission load tool, the no-op floor webhook and
# the benchmark run that writes docs/performance.md.
#
#   make bench-report   micro-benchmarks + load scenarios against the webhook
#                       and the floor; rewrites the generated part of
#                       docs/performance.md (about 15 minutes on 2 cores)
#   make bench-env      the same environment (Redis, webhook, floors) until
#                       Ctrl-C, for profiling and trying scenarios by hand
#   make loadtest       build bin/pmph-loadtest only
#
# BENCH_ARGS passes flags to hack/bench, e.g.
#   make bench-report BENCH_ARGS='--duration 5s --micro=false --only semaphore'

LOADTEST_BIN := $(BIN_DIR)/pmph-loadtest
BENCH_BIN    := $(BIN_DIR)/pmph-bench
PPROF_BIN    := $(BIN_DIR)/prometheus-metrics-proxy-hook-webhook-pprof
BENCH_ARGS   ?=

.PHONY: loadtest
loadtest:
	$(GO) build -o $(LOADTEST_BIN) ./src/tools/cmd/pmph-loadtest

.PHONY: bench-tools
bench-tools: build loadtest
	$(GO) build -o $(BENCH_BIN) ./hack/bench

.PHONY: bench-report
bench-report: apt-deps bench-tools
	$(BENCH_BIN) run --root $(ROOT) --webhook-binary $(WEBHOOK_BINARY) --sidecar-binary $(SIDECAR_BINARY) --loadtest-binary $(LOADTEST_BIN) $(BENCH_ARGS)

# The profiling build serves net/http/pprof on PMPH_PPROF_ADDRESS; it is
# never the release build. bench-env runs it instead of the release build
# when PPROF=1.
.PHONY: bench-env
bench-env: apt-deps bench-tools
	CGO_ENABLED=0 $(GO) build -tags pprof -trimpath -ldflags '$(LDFLAGS)' -o $(PPROF_BIN) ./src/cmd/prometheus-metrics-proxy-hook-webhook
	$(BENCH_BIN) env --root $(ROOT) --loadtest-binary $(LOADTEST_BIN) \
		--webhook-binary $(if $(PPROF),$(PPROF_BIN),$(WEBHOOK_BINARY)) $(BENCH_ARGS)
