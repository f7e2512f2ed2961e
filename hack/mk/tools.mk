# Tools the e2e, chart and demo targets run. hack/install-tools.sh builds the
# Go tools from the pinned modules in hack/tools/ into $(TOOLS_BIN) and
# installs the Debian ones; a run with everything in place takes about a
# second, so `make test` can depend on it unconditionally.

# Commands the Go tests start as real processes (command:debian-package).
APT_DEPS += etcd:etcd-server prometheus:prometheus yamllint:yamllint
TEST_DEPS += tools

# chart-testing's lintconf.yaml and chart_schema.yaml, copied out of its
# module by `hack/install-tools.sh ct` (which also prints the directory with
# --ct-etc): ct lint --lint-conf $(CT_LINTCONF) --chart-yaml-schema $(CT_CHART_SCHEMA).
# Exported for tests that run ct.
CT_ETC          := $(patsubst %/,%,$(dir $(TOOLS_BIN)))/etc/ct
CT_LINTCONF     := $(CT_ETC)/lintconf.yaml
CT_CHART_SCHEMA := $(CT_ETC)/chart_schema.yaml
export PMPH_CT_ETC := $(CT_ETC)

.PHONY: tools
tools:
	@hack/install-tools.sh

# Prints the directory of the CRDs (cert-manager, Istio, prometheus-operator)
# the chart's optional objects need, copied into .tools/crds.
.PHONY: crds
crds:
	@hack/crds.sh $(patsubst %/,%,$(dir $(TOOLS_BIN)))/crds
