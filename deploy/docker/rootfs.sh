#!/usr/bin/env bash
# The final image's whole filesystem, from a built `shopfast` binary: the
# binary (debug info stripped), the shared libraries it links (as `ldd`
# lists them, with the dynamic loader), the public CA roots, a non-root user (65532, "shopfast"),
# the skeleton of /data (copied there owned by it) and a writable /tmp. No shell, no package manager.
# Run by the Dockerfile's builder stage, or on the host for an image built
# from the host's binary (scripts/build-images.sh) — the same final stage.
#
#   deploy/docker/rootfs.sh BINARY OUT_DIR
set -euo pipefail
binary=$1
out=$2
rm -rf "$out"
mkdir -p "$out/usr/local/bin" "$out/etc" "$out/tmp" "$out/usr/share/shopfast/data"
objcopy --strip-debug "$binary" "$out/usr/local/bin/shopfast" 2>/dev/null || cp "$binary" "$out/usr/local/bin/shopfast"
chmod 0755 "$out/usr/local/bin/shopfast"
# Every library the binary loads, at the path it is looked up by.
ldd "$binary" | awk '/=> \// {print $3} /^\t\/[^ ]+ \(/ {print $1}' | sort -u | while read -r lib; do
  mkdir -p "$out$(dirname "$lib")"
  cp -L "$lib" "$out$lib"
done
cat > "$out/etc/passwd" <<'PASSWD'
root:x:0:0:root:/root:/sbin/nologin
shopfast:x:65532:65532:shopfast:/data:/sbin/nologin
PASSWD
cat > "$out/etc/group" <<'GROUP'
root:x:0:
shopfast:x:65532:
GROUP
echo "hosts: files dns" > "$out/etc/nsswitch.conf"
# Public roots, as distroless has them: HTTP clients load the system's roots
# at start (an OTLP collector or an etcd behind a public certificate needs
# them; the stack's own mutual TLS uses its own CA).
mkdir -p "$out/etc/ssl/certs"
cp /etc/ssl/certs/ca-certificates.crt "$out/etc/ssl/certs/ca-certificates.crt"
chmod 1777 "$out/tmp"
# The skeleton of /data: the Dockerfile copies it there owned by the user
# the image runs as (a COPY makes everything else root's).
echo "the data directory of the shopfast image" > "$out/usr/share/shopfast/data/README"
