# The demo (hack/demo): a local control plane, 3 Redis nodes and the webhook,
# the chart installed into it, and a narrated walkthrough with the real
# kubectl. The environment keeps running in the background until
# `make demo-down`; everything lives under $(DEMO_STATE).
#
#   make demo        start (or reuse) the environment and walk through it
#   make demo-down   stop every process the demo started

DEMO_STATE ?= $(ROOT)/.cache/demo
DEMO_BIN   := $(BIN_DIR)/pmph-demo
# What the demo runs: the control plane binaries built from the pinned
# Kubernetes module, kubectl, and Debian's etcd and redis-server.
DEMO_TOOLS := kube-apiserver kube-controller-manager kubectl etcd redis-server

.PHONY: demo
demo: build
	@hack/install-tools.sh $(DEMO_TOOLS)
	@echo ">> building the demo (hack/demo; it links the Helm SDK and client-go: a few minutes with a cold Go build cache, seconds afterwards)"
	@$(GO) build -o $(DEMO_BIN) ./hack/demo
	@$(DEMO_BIN) up --state-dir $(DEMO_STATE) --root $(ROOT) --webhook-binary $(WEBHOOK_BINARY) --sidecar-binary $(SIDECAR_BINARY)

.PHONY: demo-down
demo-down:
	@$(GO) build -o $(DEMO_BIN) ./hack/demo
	@$(DEMO_BIN) down --state-dir $(DEMO_STATE) --root $(ROOT)
