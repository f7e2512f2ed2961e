#!/usr/bin/env bash
# Installs the tools the tests and the demo run, into $PMPH_TOOLS_BIN
# (default <repo>/.tools/bin).
#
#   hack/install-tools.sh [TOOL...]       install TOOLs (no argument: all of them)
#   hack/install-tools.sh --ct-etc        print the directory holding chart-testing's
#                                         lintconf.yaml and chart_schema.yaml
#   hack/install-tools.sh --list          print the tool names
#
# Go tools are built from the pinned tools modules in hack/tools/<module>/ and
# each binary gets a stamp file (.stamps/<tool>) describing what it was built
# from: the pinned version, the tools module's go.mod and go.sum, the linker
# flags and the Go version. A tool whose stamp matches is not touched, so a
# second run takes well under a second; bumping a pin changes the stamp and
# rebuilds. Debian packages go through hack/ensure-apt.sh.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BIN=${PMPH_TOOLS_BIN:-$ROOT/.tools/bin}
GO=${GO:-go}
# The directory of chart-testing's config files sits next to the bin directory
# so that a custom PMPH_TOOLS_BIN carries its own copy.
CT_ETC=$(dirname "$BIN")/etc/ct

KUBE_VERSION=v1.37.2
HELM_VERSION=v3.22.0
CT_VERSION=v3.14.0
ACTIONLINT_VERSION=v1.7.12
REGISTRY_VERSION=v3.1.2
COREDNS_VERSION=v1.15.0

KUBE_NETWORK_POLICIES_VERSION=v0.8.0
# kube-router enforces NetworkPolicies with iptables and ipset where the kernel
# lacks the nftables queue expression kube-network-policies needs; only its
# firewall runs. v2.1.0 is the only version the Go module proxy serves, and it
# has reported security flaws: it runs only inside the test node, on loopback
# and the test pod network, and is never shipped in an image or the chart.
KUBE_ROUTER_VERSION=v2.1.0

# registry is the OCI registry the images are pushed to (src/testenv/registry);
# coredns goes into the cluster DNS image (src/testenv/images); the kubelet,
# kube-scheduler, kube-proxy and kube-network-policies or kube-router run the
# node (src/testenv/kubenode).
GO_TOOLS=(kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy kubectl helm ct actionlint registry coredns kube-network-policies kube-router)
PROMETHEUS_VERSION=v0.316.0
PROMETHEUS_OPERATOR_VERSION=v0.85.0

# Prometheus with Kubernetes service discovery (Debian's has none) is named
# prometheus-k8s so that it does not shadow Debian's prometheus; the operator
# turns ServiceMonitors into its scrape configuration in the tests.
GO_TOOLS+=(prometheus-k8s prometheus-operator)
# command:debian-package, as hack/ensure-apt.sh takes them.
# busybox (busybox-static) and redis-cli go into the images src/testenv/images builds.
# The second line is what the node harness (src/testenv/kubenode) runs: the
# container runtime, the CNI plugins (checked by a path, Debian puts them in
# /usr/lib/cni), and the netfilter and link tools kube-proxy, the kubelet and
# the harness call.
APT_TOOLS=(etcd:etcd-server redis-server:redis-server redis-cli:redis-tools prometheus:prometheus yamllint:yamllint openssl:openssl busybox:busybox-static
	containerd:containerd runc:runc /usr/lib/cni/bridge:containernetworking-plugins iptables:iptables conntrack:conntrack nft:nftables ip:iproute2 ipset:ipset)

die() {
	echo "install-tools: $*" >&2
	exit 1
}

all_tool_names() {
	printf '%s\n' "${GO_TOOLS[@]}"
	for pair in "${APT_TOOLS[@]}"; do echo "${pair%%:*}"; done
}

case "${1:-}" in
--list)
	all_tool_names
	exit 0
	;;
--ct-etc)
	echo "$CT_ETC"
	exit 0
	;;
-h | --help)
	sed -n '2,15p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
	exit 0
	;;
esac

# Module directory and package of each Go tool.
tool_module() {
	case $1 in
	kube-apiserver | kube-controller-manager | kube-scheduler | kubelet | kube-proxy | kubectl) echo kubernetes ;;
	kube-network-policies) echo kube-network-policies ;;
	kube-router) echo kube-router ;;
	helm) echo helm ;;
	ct) echo chart-testing ;;
	actionlint) echo actionlint ;;
	registry) echo registry ;;
	coredns) echo coredns ;;
	prometheus-k8s) echo prometheus ;;
	prometheus-operator) echo prometheus-operator ;;
	*) return 1 ;;
	esac
}

tool_package() {
	case $1 in
	kube-apiserver | kube-controller-manager | kube-scheduler | kubelet | kube-proxy | kubectl) echo "k8s.io/kubernetes/cmd/$1" ;;
	kube-network-policies) echo sigs.k8s.io/kube-network-policies/cmd ;;
	kube-router) echo github.com/cloudnativelabs/kube-router/v2/cmd/kube-router ;;
	helm) echo helm.sh/helm/v3/cmd/helm ;;
	ct) echo github.com/helm/chart-testing/v3/ct ;;
	actionlint) echo github.com/rhysd/actionlint/cmd/actionlint ;;
	registry) echo github.com/distribution/distribution/v3/cmd/registry ;;
	coredns) echo github.com/coredns/coredns ;;
	prometheus-k8s) echo github.com/prometheus/prometheus/cmd/prometheus ;;
	prometheus-operator) echo github.com/prometheus-operator/prometheus-operator/cmd/operator ;;
	*) return 1 ;;
	esac
}

tool_version() {
	case $(tool_module "$1") in
	kubernetes) echo "$KUBE_VERSION" ;;
	helm) echo "$HELM_VERSION" ;;
	chart-testing) echo "$CT_VERSION" ;;
	actionlint) echo "$ACTIONLINT_VERSION" ;;
	kube-network-policies) echo "$KUBE_NETWORK_POLICIES_VERSION" ;;
	kube-router) echo "$KUBE_ROUTER_VERSION" ;;
	registry) echo "$REGISTRY_VERSION" ;;
	coredns) echo "$COREDNS_VERSION" ;;
	prometheus) echo "$PROMETHEUS_VERSION" ;;
	prometheus-operator) echo "$PROMETHEUS_OPERATOR_VERSION" ;;
	esac
}

# Linker flags that make each binary report its real version: without them
# Kubernetes reports v0.0.0-master (which `kubectl version` cannot parse), helm
# reports v3.22 and assumes Kubernetes 1.20 for `helm template`, ct says
# "unreleased", actionlint prints the tools module's version and the registry
# "v3.1.2+unknown".
tool_ldflags() {
	local v
	v=$(tool_version "$1")
	case $(tool_module "$1") in
	kubernetes)
		local major minor flags=""
		major=${v#v}
		major=${major%%.*}
		minor=${v#v*.}
		minor=${minor%%.*}
		for p in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
			flags+=" -X $p.gitVersion=$v -X $p.gitMajor=$major -X $p.gitMinor=$minor"
			flags+=" -X $p.gitTreeState=clean -X $p.buildDate=1970-01-01T00:00:00Z"
		done
		echo "${flags# }"
		;;
	helm)
		# Helm's own Makefile derives the default Kubernetes version from the
		# client-go minor it is built with (v0.37 -> 1.37).
		local kminor
		kminor=$(GOWORK=off "$GO" -C "$ROOT/hack/tools/helm" list -m -f '{{.Version}}' k8s.io/client-go)
		kminor=${kminor#v0.}
		kminor=${kminor%%.*}
		echo "-X helm.sh/helm/v3/internal/version.version=$v -X helm.sh/helm/v3/internal/version.gitTreeState=clean" \
			"-X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMajor=1 -X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMinor=$kminor" \
			"-X helm.sh/helm/v3/pkg/chartutil.k8sVersionMajor=1 -X helm.sh/helm/v3/pkg/chartutil.k8sVersionMinor=$kminor"
		;;
	chart-testing) echo "-X github.com/helm/chart-testing/v3/ct/cmd.Version=$v" ;;
	actionlint) echo "-X github.com/rhysd/actionlint.version=$v" ;;
	kube-network-policies) echo "" ;;
	kube-router) echo "-X github.com/cloudnativelabs/kube-router/v2/pkg/version.Version=$v" ;;
	registry) echo "-X github.com/distribution/distribution/v3/version.version=$v" ;;
	# CoreDNS's version is a constant of its source; only the commit is a flag.
	coredns) echo "-X github.com/coredns/coredns/coremain.GitCommit=$v" ;;
	prometheus)
		# Prometheus 3's Go module versions are v0.3MM.P for release 3.MM.P.
		local mp=${v#v0.3}
		echo "-X github.com/prometheus/common/version.Version=3.$((10#${mp%%.*})).${mp#*.}"
		;;
	prometheus-operator) echo "-X github.com/prometheus/common/version.Version=${v#v}" ;;
	esac
}

# Build tags of each Go tool. Prometheus leaves out every service discovery
# but Kubernetes': the cloud SDKs behind the others are most of its build time.
tool_tags() {
	case $(tool_module "$1") in
	prometheus) echo remove_all_sd,enable_kubernetes_sd ;;
	esac
}

# The stamp names everything that changes the binary. The helm flags ask the go
# command for the client-go version, so they are left out of the stamp (the
# go.sum hash already covers that) to keep the up-to-date check free of go
# invocations other than `go env GOVERSION`.
tool_stamp() {
	local mod ldflags
	mod=$(tool_module "$1")
	if [ "$mod" = helm ]; then ldflags=helm-makefile-flags; else ldflags=$(tool_ldflags "$1"); fi
	{
		echo "tool=$1 version=$(tool_version "$1") go=$GO_VERSION cgo=0 strip=-s-w trimpath"
		echo "ldflags=$ldflags"
		# Only tools with tags get the line, so the other stamps stay as they were.
		local tags
		tags=$(tool_tags "$1")
		if [ -n "$tags" ]; then echo "tags=$tags"; fi
		cat "$ROOT/hack/tools/$mod/go.mod" "$ROOT/hack/tools/$mod/go.sum"
	} | sha256sum | cut -d' ' -f1
}

up_to_date() {
	local tool=$1
	[ -x "$BIN/$tool" ] || return 1
	[ -f "$BIN/.stamps/$tool" ] || return 1
	[ "$(cat "$BIN/.stamps/$tool")" = "$(tool_stamp "$tool")" ] || return 1
	if [ "$tool" = ct ]; then
		[ -f "$CT_ETC/lintconf.yaml" ] && [ -f "$CT_ETC/chart_schema.yaml" ] || return 1
	fi
}

TICKER_PID=""
TMP_DIR=""
cleanup() {
	if [ -n "$TICKER_PID" ]; then kill "$TICKER_PID" 2>/dev/null || true; fi
	if [ -n "$TMP_DIR" ]; then rm -rf "$TMP_DIR"; fi
}
trap cleanup EXIT

# Builds the given tools of one tools module in one `go build` (the packages
# share most of their dependencies, so one invocation schedules them best),
# printing a line every 30 s so a cold build (minutes) does not look stuck.
build_tools() {
	local mod=$1
	shift
	local tools=("$@") pkgs=() t ldflags="" start rc
	for t in "${tools[@]}"; do pkgs+=("$(tool_package "$t")"); done
	# One module builds with one set of linker flags; the flags of every tool
	# of the module are identical by construction (tool_ldflags is per module).
	# -s -w as in the upstream release builds: the Kubernetes binaries shrink
	# from 170 MB to about 110 MB and link faster.
	ldflags="-s -w $(tool_ldflags "${tools[0]}")"
	TMP_DIR=$(mktemp -d "$BIN/.build.XXXXXX")
	echo ">> building ${tools[*]} $(tool_version "${tools[0]}") (hack/tools/$mod)" >&2
	start=$SECONDS
	(
		# The ticker's own sleep is ended with it, so nothing outlives a run.
		trap - EXIT
		trap 'kill "$nap" 2>/dev/null; exit 0' TERM
		while :; do
			sleep 30 &
			nap=$!
			wait "$nap"
			echo "   still building ${tools[*]} ($((SECONDS - start))s)" >&2
		done
	) &
	TICKER_PID=$!
	rc=0
	# -mod=readonly: the committed go.sum is the pin; a build must not edit it.
	# GOWORK=off: a go.work elsewhere in the tree must not pull the tools into
	# another module graph. CGO off as in the upstream release builds, so no C
	# compiler is needed.
	CGO_ENABLED=0 GOWORK=off GOFLAGS="${GOFLAGS:-} -mod=readonly -buildvcs=false" \
		"$GO" -C "$ROOT/hack/tools/$mod" build -trimpath -tags "$(tool_tags "${tools[0]}")" -ldflags "$ldflags" -o "$TMP_DIR/" "${pkgs[@]}" || rc=$?
	kill "$TICKER_PID" 2>/dev/null || true
	wait "$TICKER_PID" 2>/dev/null || true
	TICKER_PID=""
	if [ "$rc" -ne 0 ]; then
		die "building ${tools[*]} from hack/tools/$mod failed (go build exit code $rc); the output above says why."
	fi
	# go build names a binary after the last element of its package path;
	# kube-network-policies keeps its main package in ./cmd.
	for t in "${tools[@]}"; do
		mv -f "$TMP_DIR/$(basename "$(tool_package "$t")")" "$BIN/$t"
	done
	if [ "$mod" = chart-testing ]; then
		local dir
		dir=$(GOWORK=off GOFLAGS=-mod=readonly "$GO" -C "$ROOT/hack/tools/$mod" list -m -f '{{.Dir}}' github.com/helm/chart-testing/v3)
		[ -f "$dir/etc/lintconf.yaml" ] || die "chart-testing's module directory $dir has no etc/lintconf.yaml."
		mkdir -p "$CT_ETC"
		cp -f "$dir/etc/lintconf.yaml" "$dir/etc/chart_schema.yaml" "$CT_ETC/"
		chmod u+w "$CT_ETC"/*
	fi
	for t in "${tools[@]}"; do
		tool_stamp "$t" >"$BIN/.stamps/$t"
	done
	rm -rf "$TMP_DIR"
	TMP_DIR=""
	echo ">> built ${tools[*]} in $((SECONDS - start))s" >&2
}

requested=("$@")
if [ ${#requested[@]} -eq 0 ]; then
	mapfile -t requested < <(all_tool_names)
fi

apt_pairs=()
go_requested=()
for tool in "${requested[@]}"; do
	found=""
	for pair in "${APT_TOOLS[@]}"; do
		if [ "${pair%%:*}" = "$tool" ]; then
			apt_pairs+=("$pair")
			found=1
		fi
	done
	if [ -z "$found" ]; then
		tool_module "$tool" >/dev/null || die "unknown tool '$tool'; known tools are: $(all_tool_names | paste -sd " ")"
		go_requested+=("$tool")
	fi
done

if [ ${#apt_pairs[@]} -gt 0 ]; then
	"$ROOT/hack/ensure-apt.sh" "${apt_pairs[@]}"
fi

# The node runs one NetworkPolicy enforcer, the first this kernel can run
# (src/testenv/kubenode/netpolicy.go probes the same way): kube-network-policies
# needs the nftables queue expression, kube-router ipset and the iptables set
# match. Building one that cannot run here costs minutes on a cold cache.
nfqueue_probe='table inet pmph-kubenode-probe {
	chain forward {
		type filter hook forward priority 0; policy accept;
		queue num 100 bypass
	}
}'
nfqueue_works() {
	printf '%s\n' "$nfqueue_probe" | nft -c -f - >/dev/null 2>&1
}
ipset_works() {
	local ok=1
	if ipset create pmph-kubenode-probe hash:ip 2>/dev/null; then
		iptables -t filter -N PMPH-KUBENODE-PROBE 2>/dev/null &&
			iptables -t filter -A PMPH-KUBENODE-PROBE -m set --match-set pmph-kubenode-probe src -j RETURN 2>/dev/null && ok=0
		iptables -t filter -F PMPH-KUBENODE-PROBE 2>/dev/null || true
		iptables -t filter -X PMPH-KUBENODE-PROBE 2>/dev/null || true
		ipset destroy pmph-kubenode-probe 2>/dev/null || true
	fi
	return $ok
}
node_enforcer() {
	if nfqueue_works; then
		echo kube-network-policies
	elif ipset_works; then
		echo kube-router
	fi
}
kept=()
enforcer=""
for tool in ${go_requested[@]+"${go_requested[@]}"}; do
	case $tool in
	kube-network-policies | kube-router)
		[ -n "$enforcer" ] || enforcer=$(node_enforcer)
		if [ "$tool" != "$enforcer" ]; then
			echo ">> not building $tool: the node runs ${enforcer:-no NetworkPolicy enforcer} on this kernel (see src/testenv/kubenode/netpolicy.go)" >&2
			continue
		fi
		;;
	esac
	kept+=("$tool")
done
go_requested=(${kept[@]+"${kept[@]}"})

[ ${#go_requested[@]} -eq 0 ] && exit 0

command -v "$GO" >/dev/null 2>&1 || die "the go command ('$GO') is not on PATH; install Go 1.26 or set GO."
mkdir -p "$BIN/.stamps"
# Two concurrent runs (say `make test` in two shells) would build the same
# binaries into the same place; the second waits for the first and then finds
# everything up to date.
exec 9>"$BIN/.lock"
if ! flock -n 9; then
	echo ">> waiting for another install-tools run to finish" >&2
	flock 9
fi
GO_VERSION=$("$GO" env GOVERSION)

# Group the stale tools by module, keeping the order of first request.
modules=()
declare -A stale_by_module=()
for tool in "${go_requested[@]}"; do
	up_to_date "$tool" && continue
	mod=$(tool_module "$tool")
	case " ${stale_by_module[$mod]:-} " in *" $tool "*) continue ;; esac
	[ -n "${stale_by_module[$mod]:-}" ] || modules+=("$mod")
	stale_by_module[$mod]="${stale_by_module[$mod]:-} $tool"
done

for mod in "${modules[@]}"; do
	if [ "$mod" = kubernetes ]; then
		echo ">> with a cold Go build cache this takes 6 to 15 minutes on 2 cores (depending on load); with a warm one it only links, in under a minute" >&2
	fi
	# shellcheck disable=SC2086 # the list is space-separated tool names
	build_tools "$mod" ${stale_by_module[$mod]}
done
