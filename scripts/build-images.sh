#!/usr/bin/env bash
# Builds the shopfast image from the release binary built on this host (the
# Dockerfile's final stage, extracted word for word, over the filesystem
# deploy/docker/rootfs.sh makes: no registry, no Rust image needed) and tags it as the design's tagging table says, for the
# multi-call image and for each service name (the same image):
#   <name>:<commit sha>  <name>:build-<BUILD_NUMBER>  <name>:v<semver>  <name>:<ENVIRONMENT>-latest
# Prints the image's size and how long each part took.
#
#   scripts/build-images.sh                      (BUILD_NUMBER=local, ENVIRONMENT=dev)
#   BUILD_NUMBER=1234 ENVIRONMENT=staging scripts/build-images.sh
set -euo pipefail
cd "$(dirname "$0")/.."
build_number=${BUILD_NUMBER:-local}
environment=${ENVIRONMENT:-dev}
version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n 1)
revision=$(git rev-parse --short=7 HEAD 2>/dev/null || echo unknown)
names=(shopfast registry users products payments orders queue fulfilment gateway console loadgen deployer)
started=$SECONDS
if [ -z "${SKIP_CARGO:-}" ]; then cargo build --release -q -p shopfast; fi
built=$SECONDS
deploy/docker/rootfs.sh target/release/shopfast build/rootfs
# The Dockerfile's final stage, word for word, over the host's rootfs.
marker='# --- the final stage'
grep -q "^$marker" Dockerfile || { echo "no final-stage marker in the Dockerfile" >&2; exit 1; }
sed -n "/^$marker/,\$p" Dockerfile | sed -e '/^COPY /s|--from=builder ||' -e '/^COPY /s| /rootfs/| build/rootfs/|' > build/Dockerfile.final
if grep -q -- '--from=' build/Dockerfile.final || ! grep -q '^COPY build/rootfs/ /$' build/Dockerfile.final; then
  echo "the final stage no longer copies the builder's /rootfs/ as expected" >&2; exit 1
fi
docker build -q -f build/Dockerfile.final --build-arg VERSION="$version" \
  --build-arg REVISION="$(git rev-parse HEAD 2>/dev/null || echo unknown)" \
  -t "shopfast:v$version" . >/dev/null
for name in "${names[@]}"; do
  for tag in "$revision" "build-$build_number" "v$version" "$environment-latest"; do
    docker tag "shopfast:v$version" "$name:$tag"
  done
done
size=$(docker image inspect "shopfast:v$version" --format '{{.Size}}')
echo "shopfast:v$version ($revision, build-$build_number, $environment-latest; also as ${names[*]:1}): $((size / 1000000)) MB"
echo "binary built in $((built - started)) s, image in $((SECONDS - built)) s"
