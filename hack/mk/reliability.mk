# Reliability: fuzzing and fault injection (docs/reliability.md).
#
#   make fuzz              every fuzz target for FUZZTIME each (default 2m)
#   make reliability       the fault-injection and hardening tests (e2e/reliability), verbose,
#                          figures written to $(RELIABILITY_REPORT)
#   make reliability-long  the load test for RELIABILITY_ROUNDS rounds of the fault schedule (default 10)
#   make known-bugs        also the tests of reported, unfixed bugs (skipped otherwise; they fail until fixed)
#
# `make test` runs every fuzz target for FUZZTIME_SHORT (10s) each after the Go
# tests (test-fuzz); the fault-injection tests run with the other Go tests,
# one round of the schedule.

FUZZTIME           ?= 2m
FUZZTIME_SHORT     ?= 10s
RELIABILITY_ROUNDS ?= 10
RELIABILITY_REPORT ?= $(ROOT)/.cache/reliability-report.md

TEST_TARGETS += test-fuzz

# Every `func FuzzX(f *testing.F)` in the test files, as "dir FuzzX"; a new
# target is picked up without touching this file. `go test -fuzz` takes one
# target of one package at a time. Every target runs even when one fails, and
# the failures are listed at the end; a failing input is written to the
# package's testdata/fuzz, where plain `go test` replays it from then on.
define run-fuzz
	@failed=""; \
	targets=$$(grep -rE --include='*_test.go' '^func Fuzz[A-Za-z0-9_]*\(f \*testing\.F\)' src e2e \
		| sed -E 's#^(.*)/[^/]*_test\.go:func (Fuzz[A-Za-z0-9_]*).*#\1:\2#' | sort); \
	for t in $$targets; do \
		dir=$${t%%:*}; name=$${t##*:}; \
		echo ">> go test -run '^$$' -fuzz '^$$name\$$' -fuzztime $(1) ./$$dir"; \
		$(GO) test -run '^$$' -fuzz "^$$name\$$" -fuzztime $(1) ./$$dir || failed="$$failed ./$$dir:$$name"; \
	done; \
	if [ -n "$$failed" ]; then echo "fuzz targets failed:$$failed"; exit 1; fi
endef

.PHONY: fuzz
fuzz: apt-deps
	$(call run-fuzz,$(FUZZTIME))

.PHONY: test-fuzz
test-fuzz: apt-deps
	$(call run-fuzz,$(FUZZTIME_SHORT))

.PHONY: reliability
reliability: apt-deps
	@mkdir -p $(dir $(RELIABILITY_REPORT))
	PMPH_RELIABILITY_REPORT=$(RELIABILITY_REPORT) $(GO) test -race -count=1 -timeout 30m -v ./e2e/reliability/...

.PHONY: reliability-long
reliability-long: apt-deps
	@mkdir -p $(dir $(RELIABILITY_REPORT))
	PMPH_RELIABILITY_ROUNDS=$(RELIABILITY_ROUNDS) PMPH_RELIABILITY_REPORT=$(RELIABILITY_REPORT) \
		$(GO) test -race -count=1 -timeout 120m -v -run '^TestFaultInjectionUnderLoad$$' ./e2e/reliability/

# Tests that show a reported, unfixed bug call knownBug and skip unless
# PMPH_RUN_KNOWN_BUGS=1; this runs them (they fail until the bug is fixed).
.PHONY: known-bugs
known-bugs: apt-deps
	PMPH_RUN_KNOWN_BUGS=1 $(GO) test -race -count=1 -timeout 30m ./e2e/reliability/...
