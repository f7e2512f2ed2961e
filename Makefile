# prometheus-metrics-proxy-hook
#
#   make demo   the chart on a real node (else a control plane) + walkthrough (see README)
#   make test   every test, installing what the tests need
#
# Pieces of the build that belong to one area live in hack/mk/*.mk and append
# to TEST_DEPS / TEST_TARGETS, so that `make test` stays the one entry point.

SHELL := /usr/bin/env bash -o pipefail
.SHELLFLAGS := -ec
.DEFAULT_GOAL := help

GO        ?= go
ROOT      := $(CURDIR)
TOOLS_BIN := $(ROOT)/.tools/bin
BIN_DIR   := $(ROOT)/bin
WEBHOOK_BINARY := $(BIN_DIR)/prometheus-metrics-proxy-hook-webhook
SIDECAR_BINARY := $(BIN_DIR)/prometheus-metrics-proxy-hook-sidecar
VERSION   ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
REVISION  ?= $(shell git rev-parse --verify -q HEAD 2>/dev/null || echo unknown)
LDFLAGS   := -s -w \
	-X github.com/kaidotio/prometheus-metrics-proxy-hook/src/buildinfo.Version=$(VERSION) \
	-X github.com/kaidotio/prometheus-metrics-proxy-hook/src/buildinfo.Revision=$(REVISION)

export PATH := $(TOOLS_BIN):$(PATH)
export PMPH_TOOLS_BIN := $(TOOLS_BIN)

# Commands the Go tests start as real processes, as command:debian-package.
APT_DEPS := redis-server:redis-server
TEST_DEPS :=
TEST_TARGETS := test-go

-include hack/mk/*.mk

.PHONY: help
help:
	@echo "make demo      run the chart on a real node (Linux, root; else a control plane only), walk through the scenarios"
	@echo "make test      run every test (installs redis-server, etcd, prometheus, kube-apiserver... when missing)"
	@echo "make build     build $(WEBHOOK_BINARY) and $(SIDECAR_BINARY)"
	@echo "make lint      gofmt check and go vet"
	@echo "make bench     run the benchmarks"

.PHONY: build
build:
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags '$(LDFLAGS)' -o $(WEBHOOK_BINARY) ./src/cmd/prometheus-metrics-proxy-hook-webhook
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags '$(LDFLAGS)' -o $(SIDECAR_BINARY) ./src/cmd/prometheus-metrics-proxy-hook-sidecar

.PHONY: apt-deps
apt-deps:
	@hack/ensure-apt.sh $(APT_DEPS)

.PHONY: lint
lint:
	@dirs=$$(ls -d src e2e hack charts 2>/dev/null); out=$$(gofmt -l $$dirs); if [ -n "$$out" ]; then echo "gofmt needed on:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...

.PHONY: test
test: lint $(TEST_TARGETS)

.PHONY: test-go
test-go: apt-deps $(TEST_DEPS)
	$(GO) test -race -count=1 -timeout 60m ./...

# The micro-benchmarks, the load scenarios against the webhook and a no-op
# floor, memory and binary size; rewrites the figures in docs/performance.md
# (hack/mk/bench.mk).
.PHONY: bench
bench: bench-report
