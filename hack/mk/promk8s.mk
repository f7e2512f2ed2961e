# Prometheus that discovers its targets through the API server
# (src/testenv/promk8s): prometheus-k8s and prometheus-operator come from
# `tools` (hack/tools/prometheus, hack/tools/prometheus-operator). Its tests
# run with every other Go test in `make test`.
#
#   make promk8s   only the harness's tests, verbose
.PHONY: promk8s
promk8s: apt-deps tools
	$(GO) test -race -count=1 -timeout 15m -v ./src/testenv/promk8s/...
