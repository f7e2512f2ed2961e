# syntax=docker/dockerfile:1.7
#
# One image, two static binaries: prometheus-metrics-proxy-hook-webhook (the
# entrypoint) runs the admission webhook and the lease API;
# prometheus-metrics-proxy-hook-sidecar is the command of the container the
# webhook injects into pods (same image, admission.SidecarCommand).
#
#   docker build --build-arg VERSION=v0.1.0 --build-arg REVISION=$(git rev-parse HEAD) \
#     -t ghcr.io/kaidotio/prometheus-metrics-proxy-hook:v0.1.0 .
#
# (`make image` passes both.) The build runs on the build platform and
# cross-compiles for the target one, so multi-arch builds need no emulation.

FROM --platform=$BUILDPLATFORM golang:1.26.8-bookworm AS build
ARG TARGETOS
ARG TARGETARCH
ARG VERSION=dev
ARG REVISION=unknown
WORKDIR /src
# go.mod also lists the test-only modules (Helm SDK, Kubernetes); the build
# downloads only what the binaries import, into the cache mount.
COPY go.mod go.sum ./
COPY src/ src/
RUN --mount=type=cache,target=/go/pkg/mod \
    --mount=type=cache,target=/root/.cache/go-build \
    CGO_ENABLED=0 GOOS=$TARGETOS GOARCH=$TARGETARCH \
    go build -trimpath -buildvcs=false \
      -ldflags "-s -w \
        -X github.com/kaidotio/prometheus-metrics-proxy-hook/src/buildinfo.Version=${VERSION} \
        -X github.com/kaidotio/prometheus-metrics-proxy-hook/src/buildinfo.Revision=${REVISION}" \
      -o /out/ ./src/cmd/prometheus-metrics-proxy-hook-webhook ./src/cmd/prometheus-metrics-proxy-hook-sidecar

# Static, no shell, no package manager; nonroot is uid/gid 65532, the uid the
# chart and the injected sidecar run as.
FROM gcr.io/distroless/static-debian12:nonroot
ARG VERSION=dev
ARG REVISION=unknown
LABEL org.opencontainers.image.title="prometheus-metrics-proxy-hook" \
      org.opencontainers.image.description="Admission webhook: Redlock semaphore for pods and a metrics-proxy sidecar that keeps the final scrape" \
      org.opencontainers.image.source="https://github.com/kaidotio/prometheus-metrics-proxy-hook" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}"
COPY --from=build /out/prometheus-metrics-proxy-hook-webhook /out/prometheus-metrics-proxy-hook-sidecar /usr/local/bin/
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/prometheus-metrics-proxy-hook-webhook"]
