#!/usr/bin/env bash
# Stand-ins for the official images the compose file names (same tags), built
# from Debian bookworm's packages on a base made locally — for machines that
# can reach no container registry (CI here). Where a tag is already present
# (pulled, or built before) it is left alone. Grafana has no Debian package:
# the observability profile needs grafana/grafana pulled.
#
#   scripts/standin-images.sh [postgres] [redis] [prometheus]   (default: all three)
set -euo pipefail
cd "$(dirname "$0")/.."
declare -A tags=([postgres]=postgres:15-bookworm [redis]=redis:7.0-bookworm [prometheus]=prom/prometheus:v2.42.0)
wanted=("$@")
[ ${#wanted[@]} -gt 0 ] || wanted=(postgres redis prometheus)
deploy/docker/make-base-image.sh >/dev/null
for name in "${wanted[@]}"; do
  tag=${tags[$name]:?"unknown stand-in $name (postgres, redis, prometheus)"}
  if docker image inspect "$tag" >/dev/null 2>&1; then echo "$tag present"; continue; fi
  started=$SECONDS
  docker build -q -f "deploy/docker/standins/$name.Dockerfile" -t "$tag" deploy/docker/standins >/dev/null
  echo "$tag: stand-in built in $((SECONDS - started)) s"
done
