# The demo (hack/demo): the chart on a real node on this machine (Linux,
# root): its images built without Docker and served by a loopback registry,
# a kubelet on containerd, kube-proxy and CoreDNS, the chart installed from
# the registry, and a narrated walkthrough with the real kubectl. Elsewhere,
# or with DEMO_MODE=control-plane, a control plane without a node, the
# webhook as a local process. The environment keeps running in the
# background until `make demo-down`; the demo's own files live under
# $(DEMO_STATE).
#
#   make demo                         start (or reuse) the environment and walk through it
#   make demo DEMO_MODE=control-plane the walkthrough without a node
#   make demo-down                    stop every process the demo started

DEMO_STATE ?= $(ROOT)/.cache/demo
DEMO_MODE  ?= auto
DEMO_BIN   := $(BIN_DIR)/pmph-demo
# What the demo runs: the control plane binaries built from the pinned
# Kubernetes module, kubectl, and Debian's etcd and redis-server; on the node
# also the node's programs, the registry, helm, and what the images hold.
DEMO_TOOLS := kube-apiserver kube-controller-manager kubectl etcd redis-server
DEMO_NODE_TOOLS := kube-scheduler kubelet kube-proxy kube-network-policies kube-router registry helm coredns \
	containerd runc /usr/lib/cni/bridge iptables conntrack nft ip ipset busybox redis-cli
# The node's tools only where the node can run: Linux, root, not asked away.
DEMO_ON_NODE := $(and $(filter Linux,$(shell uname -s)),$(filter 0,$(shell id -u)),$(filter-out control-plane,$(DEMO_MODE)))

.PHONY: demo
demo: build
	@hack/install-tools.sh $(DEMO_TOOLS) $(if $(DEMO_ON_NODE),$(DEMO_NODE_TOOLS))
	@echo ">> building the demo (hack/demo; it links the Helm SDK and client-go: a few minutes with a cold Go build cache, seconds afterwards)"
	@$(GO) build -o $(DEMO_BIN) ./hack/demo
	@$(DEMO_BIN) up --state-dir $(DEMO_STATE) --root $(ROOT) --webhook-binary $(WEBHOOK_BINARY) --sidecar-binary $(SIDECAR_BINARY) --mode $(DEMO_MODE)

.PHONY: demo-down
demo-down:
	@$(GO) build -o $(DEMO_BIN) ./hack/demo
	@$(DEMO_BIN) down --state-dir $(DEMO_STATE) --root $(ROOT)
