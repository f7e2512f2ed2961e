#!/usr/bin/env bash
# Provides the CustomResourceDefinitions of the chart's optional objects, taken
# from the pinned Go modules that ship them as plain YAML:
#   cert-manager         Certificate, Issuer
#   Istio (istio.io/api) every Istio CRD (apply with --server-side: they are
#                        too large for the last-applied annotation)
#   prometheus-operator  ServiceMonitor, PodMonitor, PrometheusRule
#
#   hack/crds.sh          print every CRD to stdout as one YAML stream
#   hack/crds.sh DIR      copy the files into DIR and print their paths
#
# The go command downloads each module once into the module cache and checks it
# against the checksum database, so later runs are offline and fast.
set -euo pipefail

GO=${GO:-go}

CERT_MANAGER=github.com/cert-manager/cert-manager@v1.21.2
ISTIO_API=istio.io/api@v1.32.0
PROMETHEUS_OPERATOR=github.com/prometheus-operator/prometheus-operator@v0.85.0

# A short name, module@version, then the files inside it. The output file name
# is the short name plus the file's base name, which keeps them unique.
SPECS=(
	"cert-manager $CERT_MANAGER deploy/crds/cert-manager.io_certificates.yaml deploy/crds/cert-manager.io_issuers.yaml"
	"istio $ISTIO_API kubernetes/customresourcedefinitions.gen.yaml"
	"prometheus-operator $PROMETHEUS_OPERATOR example/prometheus-operator-crd/monitoring.coreos.com_servicemonitors.yaml example/prometheus-operator-crd/monitoring.coreos.com_podmonitors.yaml example/prometheus-operator-crd/monitoring.coreos.com_prometheusrules.yaml"
)

die() {
	echo "crds: $*" >&2
	exit 1
}

module_dir() {
	local json dir
	# Outside any module (and any go.work) so that the download never touches
	# the repository's go.mod or go.sum.
	json=$(cd / && GOWORK=off GOFLAGS=-mod=mod "$GO" mod download -json "$1" 2>&1) ||
		die "go mod download $1 failed: $json"
	dir=$(sed -n 's/^[[:space:]]*"Dir": "\(.*\)",\{0,1\}$/\1/p' <<<"$json")
	[ -n "$dir" ] && [ -d "$dir" ] || die "go mod download $1 reported no module directory: $json"
	echo "$dir"
}

out_dir=${1:-}
if [ -n "$out_dir" ]; then
	mkdir -p "$out_dir"
fi

first=1
for spec in "${SPECS[@]}"; do
	read -r name modver files <<<"$spec"
	dir=$(module_dir "$modver")
	for f in $files; do
		src=$dir/$f
		[ -f "$src" ] || die "$modver has no $f; the pinned version may have moved it."
		if [ -n "$out_dir" ]; then
			dst=$out_dir/${name}_$(basename "$f")
			# Files in the module cache are read-only; the copies should not be.
			install -m 0644 "$src" "$dst"
			echo "$dst"
		else
			# One stream: documents are separated by '---' lines, whatever each
			# file starts or ends with.
			[ -n "$first" ] || echo "---"
			first=""
			echo "# Source: $modver $f"
			sed '/^---[[:space:]]*$/{1d}' "$src"
		fi
	done
done
