# One multi-call image for every process of shopfast: the same binary with a
# different command per container (`registry`, `users`, `gateway`, …), so
# every service runs exactly the build that was tested, and a host pulls one
# image, not eleven. The final stage is FROM scratch: the binary, the shared
# libraries it links, a non-root user — no shell, no package manager.
#
# With a registry:  docker build -t shopfast:v0.1.0 .
# Without one (CI here), scripts/build-images.sh builds the final stage below
# alone, over the filesystem deploy/docker/rootfs.sh makes from this host's
# release build — the same stage, so what CI runs is what users run.
ARG RUST_IMAGE=rust:1.95-slim-bookworm

FROM ${RUST_IMAGE} AS builder
WORKDIR /src
RUN apt-get update && apt-get install -y --no-install-recommends binutils ca-certificates && rm -rf /var/lib/apt/lists/*
COPY . .
RUN cargo build --release --locked -p shopfast && deploy/docker/rootfs.sh target/release/shopfast /rootfs

# --- the final stage (scripts/build-images.sh: from here on, with the host's rootfs) ---
FROM scratch AS final
ARG VERSION=0.1.0
ARG REVISION=unknown
ARG SOURCE=https://github.com/shopfast/shopfast
COPY --from=builder /rootfs/ /
# COPY makes everything root's: the data directory is the user's own.
COPY --from=builder --chown=65532:65532 /rootfs/usr/share/shopfast/data/ /data/
LABEL org.opencontainers.image.title="shopfast" \
      org.opencontainers.image.description="shopfast: registry, services, gateway, console, traffic generator and deploy controller in one binary" \
      org.opencontainers.image.source="${SOURCE}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="Apache-2.0"
USER 65532:65532
WORKDIR /data
VOLUME ["/data"]
ENTRYPOINT ["/usr/local/bin/shopfast"]
CMD ["--help"]
