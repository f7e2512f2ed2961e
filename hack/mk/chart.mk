# The Helm chart, the container image and the CI workflows.
#
#   make image         build the image with docker (VERSION/REVISION stamped)
#   make chart-lint    helm lint (defaults and every ci/ values file) + ct lint
#   make workflow-lint actionlint on .github/workflows
#   make kind-e2e      kind cluster, cert-manager, CRDs, image, ct install (needs Docker)
#
# chart-lint and workflow-lint run offline and are part of `make test`; the Go
# chart tests (charts/*_test.go) run with the other Go tests.

CHART_DIR  := charts/prometheus-metrics-proxy-hook
IMAGE_REPO ?= ghcr.io/kaidotio/prometheus-metrics-proxy-hook
IMAGE_TAG  ?= $(VERSION)
IMAGE      ?= $(IMAGE_REPO):$(IMAGE_TAG)
DOCKER     ?= docker

TEST_TARGETS += chart-lint workflow-lint

.PHONY: image
image:
	$(DOCKER) build --build-arg VERSION=$(VERSION) --build-arg REVISION=$(REVISION) -t $(IMAGE) .

# ct lint without yamale (it cannot be installed here): the chart schema and
# maintainer checks are left to CI, which runs the full `ct lint`. The version
# increment check needs the remote target branch; CI does it too.
.PHONY: chart-lint
chart-lint:
	@hack/install-tools.sh helm ct yamllint
	helm lint --strict $(CHART_DIR)
	@set -e; for f in $(CHART_DIR)/ci/*-values.yaml; do \
		echo "helm lint --strict $(CHART_DIR) -f $$f"; \
		helm lint --strict --quiet $(CHART_DIR) -f "$$f"; \
	done
	ct lint --config ct.yaml --all \
		--validate-chart-schema=false --validate-maintainers=false --check-version-increment=false \
		--lint-conf "$$(hack/install-tools.sh --ct-etc)/lintconf.yaml"

.PHONY: workflow-lint
workflow-lint:
	@hack/install-tools.sh actionlint
	actionlint -color=false

# For machines with Docker: see hack/kind-e2e.sh for what it does and the
# variables it takes (KIND_CLUSTER, KIND_NODE_IMAGE, KEEP_CLUSTER).
.PHONY: kind-e2e
kind-e2e:
	IMAGE_REPO=$(IMAGE_REPO) VERSION=$(VERSION) REVISION=$(REVISION) hack/kind-e2e.sh
