# syntax=docker/dockerfile:1
#
# podcache: the `podcache` sidecar plus the example binaries (producer, consumer, pair,
# webserve), so every manifest under deploy/ runs from this one image.
#
#   docker build -t podcache:0.1.0 .
#   docker run --rm podcache:0.1.0 --help
#
# Stage 1 builds with exactly the command CI uses (`cargo build --release --locked`); stage 2
# is distroless/cc (glibc + libgcc, no shell, no package manager) running as the unprivileged
# user 65532. The toolchain matches the one CI runs (rustc 1.95); bump both together.

FROM rust:1.95-slim-bookworm AS build
WORKDIR /src
# The whole workspace (every member's manifest is needed to resolve it); .dockerignore keeps
# target/, .git and the deploy files out of the context.
COPY . .
# Caches for the registry and target/ speed up rebuilds; the binaries are copied out of the
# cached target/ in the same step. Debug info (profile.release has debug = 1 for profiling)
# is stripped from the shipped binaries.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked \
    && mkdir -p /out \
    && for bin in podcache producer consumer pair webserve; do \
         strip --strip-debug -o "/out/$bin" "target/release/$bin"; \
       done

FROM gcr.io/distroless/cc-debian12:nonroot
LABEL org.opencontainers.image.title="podcache" \
      org.opencontainers.image.description="Shared-memory ring and key-value cache for Kubernetes Pods: sidecar and examples" \
      org.opencontainers.image.licenses="MIT OR Apache-2.0"
COPY --from=build /out/ /usr/local/bin/
# The files live on the shared emptyDir, mounted here by the manifests (medium: Memory).
ENV PODCACHE_DIR=/run/podcache
# distroless "nonroot": uid/gid 65532. Kubernetes manifests set the same ids explicitly.
USER 65532:65532
# 7070: HTTP API (127.0.0.1 by default: Pod-local); 7071: /healthz, /readyz, /metrics.
EXPOSE 7070 7071
# No HEALTHCHECK: Kubernetes ignores it, and the manifests probe /healthz and /readyz on 7071
# (startup, readiness, liveness); distroless has no shell or curl to run one anyway.
# checkov:skip=CKV_DOCKER_2: health is checked by the Kubernetes probes on the ops port
ENTRYPOINT ["/usr/local/bin/podcache"]
CMD ["serve"]
