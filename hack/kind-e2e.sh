#!/usr/bin/env bash
# Installs the chart into a kind cluster the way users and CI do, with
# chart-testing: every charts/prometheus-metrics-proxy-hook/ci/*-values.yaml is
# installed into a fresh namespace, `helm test` runs, and the release is
# removed.
#
#   make kind-e2e          (or hack/kind-e2e.sh)
#
# Needs Docker (or Podman with KIND_EXPERIMENTAL_PROVIDER=podman) and kubectl.
# kind, helm and ct are installed when missing (kind through the Go module
# proxy; helm and ct through hack/install-tools.sh). Steps:
#   1. kind cluster $KIND_CLUSTER (created unless it exists; deleted at the end
#      unless KEEP_CLUSTER=1 or it existed before)
#   2. cert-manager $CERT_MANAGER_VERSION (Helm chart, with its CRDs), waited for
#   3. Istio and Prometheus Operator CRDs from the pinned Go modules
#      (hack/crds.sh), so the istio values and the ServiceMonitor/PrometheusRule
#      Capabilities checks see real APIs
#   4. the image built from this tree and loaded into the kind nodes
#   5. ct install --config ct.yaml --all with image.tag set to the loaded image
#
# Variables: KIND_CLUSTER (pmph-e2e), KIND_NODE_IMAGE (kind's default),
# KIND_VERSION (v0.33.0), CERT_MANAGER_VERSION (v1.21.2), IMAGE_REPO
# (ghcr.io/kaidotio/prometheus-metrics-proxy-hook), IMAGE_TAG (kind-e2e),
# KEEP_CLUSTER (0), DOCKER (docker).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

KIND_CLUSTER=${KIND_CLUSTER:-pmph-e2e}
KIND_NODE_IMAGE=${KIND_NODE_IMAGE:-}
KIND_VERSION=${KIND_VERSION:-v0.33.0}
CERT_MANAGER_VERSION=${CERT_MANAGER_VERSION:-v1.21.2}
IMAGE_REPO=${IMAGE_REPO:-ghcr.io/kaidotio/prometheus-metrics-proxy-hook}
IMAGE_TAG=${IMAGE_TAG:-kind-e2e}
KEEP_CLUSTER=${KEEP_CLUSTER:-0}
DOCKER=${DOCKER:-docker}
VERSION=${VERSION:-$(git describe --tags --always --dirty 2>/dev/null || echo dev)}
REVISION=${REVISION:-$(git rev-parse --verify -q HEAD 2>/dev/null || echo unknown)}
TOOLS_BIN=${PMPH_TOOLS_BIN:-$ROOT/.tools/bin}
export PATH="$TOOLS_BIN:$PATH"

say() { printf '\n>> %s\n' "$*" >&2; }
die() {
	echo "kind-e2e: $*" >&2
	exit 1
}

command -v "$DOCKER" >/dev/null 2>&1 || die "$DOCKER is not installed; kind needs a container engine (this target is for machines with Docker, such as CI)."
"$DOCKER" info >/dev/null 2>&1 || die "$DOCKER cannot reach its daemon; start it first."
command -v kubectl >/dev/null 2>&1 || die "kubectl is not on PATH; ct install needs it (hack/install-tools.sh kubectl builds one)."

# Tools: helm and ct pinned by hack/install-tools.sh unless already on PATH
# (the CI workflow puts the same versions there), kind from the Go module proxy.
command -v helm >/dev/null 2>&1 || hack/install-tools.sh helm
command -v ct >/dev/null 2>&1 || hack/install-tools.sh ct
if ! command -v kind >/dev/null 2>&1; then
	say "installing kind $KIND_VERSION"
	mkdir -p "$TOOLS_BIN"
	GOBIN=$TOOLS_BIN go install "sigs.k8s.io/kind@$KIND_VERSION"
fi

created=0
crd_dir=""
cleanup() {
	local rc=$?
	if [ -n "$crd_dir" ]; then rm -rf "$crd_dir"; fi
	if [ "$created" = 1 ] && [ "$KEEP_CLUSTER" != 1 ]; then
		say "deleting kind cluster $KIND_CLUSTER"
		kind delete cluster --name "$KIND_CLUSTER" >/dev/null 2>&1 || true
	fi
	exit "$rc"
}
trap cleanup EXIT

if kind get clusters 2>/dev/null | grep -qx "$KIND_CLUSTER"; then
	say "using existing kind cluster $KIND_CLUSTER"
else
	say "creating kind cluster $KIND_CLUSTER"
	args=(create cluster --name "$KIND_CLUSTER" --wait 120s)
	[ -n "$KIND_NODE_IMAGE" ] && args+=(--image "$KIND_NODE_IMAGE")
	kind "${args[@]}"
	created=1
fi
kubectl config use-context "kind-$KIND_CLUSTER" >/dev/null

say "installing cert-manager $CERT_MANAGER_VERSION"
helm upgrade --install cert-manager cert-manager \
	--repo https://charts.jetstack.io --version "$CERT_MANAGER_VERSION" \
	--namespace cert-manager --create-namespace \
	--set crds.enabled=true --wait --timeout 5m

say "applying Istio and Prometheus Operator CRDs"
crd_dir=$(mktemp -d)
hack/crds.sh "$crd_dir" >/dev/null
for f in "$crd_dir"/istio_* "$crd_dir"/prometheus-operator_*; do
	kubectl apply --server-side -f "$f" >/dev/null
done
kubectl wait --for=condition=Established --timeout=60s \
	crd/servicemonitors.monitoring.coreos.com crd/prometheusrules.monitoring.coreos.com \
	crd/peerauthentications.security.istio.io crd/serviceentries.networking.istio.io crd/sidecars.networking.istio.io

say "building and loading $IMAGE_REPO:$IMAGE_TAG"
"$DOCKER" build --build-arg VERSION="$VERSION" --build-arg REVISION="$REVISION" -t "$IMAGE_REPO:$IMAGE_TAG" .
kind load docker-image --name "$KIND_CLUSTER" "$IMAGE_REPO:$IMAGE_TAG"

say "ct install (every ci/*-values.yaml, helm test included)"
ct install --config ct.yaml --all \
	--helm-extra-set-args "--set=image.repository=$IMAGE_REPO --set=image.tag=$IMAGE_TAG --set=image.pullPolicy=Never --set=sidecar.pullPolicy=Never"
say "kind-e2e passed"
