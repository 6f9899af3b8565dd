# syntax=docker/dockerfile:1.7
#
# The gateway image: a Rust builder stage, then a distroless runtime (glibc, CA certificates,
# no shell, no package manager) running as the unprivileged "nonroot" user (65532).
#
#   docker build -t gateway .
#   docker run --rm -p 8080:8080 -p 9090:9090 gateway      # development mode, in-memory bus
#
# The image holds `gateway` (the entrypoint) and `gateway-publish`. The HEALTHCHECK uses a
# static busybox `wget` (about 1 MiB), since distroless has no HTTP client and no shell; it
# asks the admin listener's /healthz on port 9090, so keep GATEWAY_ADMIN_LISTEN on that port
# (the default) or override the healthcheck.

ARG RUST_VERSION=1.95
ARG DEBIAN_RELEASE=bookworm

FROM rust:${RUST_VERSION}-slim-${DEBIAN_RELEASE} AS builder
# make, for jemalloc (the gateway's allocator), which is built from source with the image's gcc.
RUN apt-get update && apt-get install -y --no-install-recommends make \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
# The registry and target caches stay on the build host between builds (BuildKit cache
# mounts), so a code change does not download or rebuild every dependency.
RUN --mount=type=cache,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,target=/usr/local/cargo/git,sharing=locked \
    --mount=type=cache,target=/src/target,sharing=locked \
    cargo build --release --locked -p gateway -p publisher --bins \
    && mkdir -p /out \
    && cp target/release/gateway target/release/gateway-publish /out/

# A statically linked busybox, for its wget applet only.
FROM busybox:1.36-musl AS healthcheck

FROM gcr.io/distroless/cc-debian12:nonroot AS runtime
LABEL org.opencontainers.image.title="gateway" \
      org.opencontainers.image.description="Real-time WebSocket gateway" \
      org.opencontainers.image.licenses="MIT"
COPY --from=builder /out/gateway /out/gateway-publish /usr/local/bin/
COPY --from=healthcheck /bin/wget /usr/local/bin/wget
ENV GATEWAY_LISTEN=0.0.0.0:8080 \
    GATEWAY_ADMIN_LISTEN=0.0.0.0:9090 \
    GATEWAY_LOG_FORMAT=json
EXPOSE 8080 9090
USER 65532:65532
# The gateway drains on SIGTERM (GATEWAY_DRAIN_TIMEOUT, 20 s by default): give it longer
# than that to stop (`docker stop -t 30`, compose's stop_grace_period).
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
    CMD ["/usr/local/bin/wget", "-q", "-T", "2", "-O", "/dev/null", "http://127.0.0.1:9090/healthz"]
ENTRYPOINT ["/usr/local/bin/gateway"]
