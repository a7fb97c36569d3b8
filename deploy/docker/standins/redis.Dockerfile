# A stand-in for the official redis:7.0-bookworm: Debian bookworm's Redis 7.0.
FROM shopfast-base:bookworm
RUN apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends redis-server \
    && rm -rf /var/lib/apt/lists/*
EXPOSE 6379
USER redis
CMD ["redis-server", "--protected-mode", "no"]
