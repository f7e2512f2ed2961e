# Container images of the local node, built without a container engine by
# src/testenv/images (docs/images.md):
#
#   make images                           one tarball per image in $(IMAGES_DIR)
#                                         (`ctr -n k8s.io images import`, `docker load`)
#   make images PUSH=127.0.0.1:5000       push them to that registry instead, each
#                                         under its repository path
#   make images IMAGES=project,redis      only these
#
# The Redis and busybox images take this machine's Debian packages, CoreDNS
# the binary hack/install-tools.sh builds; the Go tests that build images get
# them through `make test`'s apt-deps and tools.

IMAGES_DIR ?= $(BIN_DIR)/images
APT_DEPS += busybox:busybox-static redis-cli:redis-tools

.PHONY: images
images: apt-deps
	@hack/install-tools.sh coredns
	$(GO) run ./src/tools/cmd/pmph-images -version '$(VERSION)' -revision '$(REVISION)' \
		$(if $(IMAGES),-images '$(IMAGES)') $(if $(PUSH),-push '$(PUSH)',-out '$(IMAGES_DIR)')
