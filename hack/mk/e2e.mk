# End-to-end tests (e2e/): a real kube-apiserver, kube-controller-manager and
# etcd (src/testenv/kubetest), 3 Redis nodes, the webhook binary and the chart
# installed with the Helm SDK, driven through the real kubectl. They run with
# every other Go test in `make test`; the tools they need (kube-apiserver,
# kube-controller-manager, kubectl, etcd, redis-server) come from `tools`.
#
#   make e2e   only the end-to-end suite, verbose
TEST_DEPS += tools

.PHONY: e2e
e2e: apt-deps tools
	$(GO) test -race -count=1 -timeout 60m -v ./e2e/...
