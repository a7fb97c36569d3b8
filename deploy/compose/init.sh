#!/usr/bin/env bash
# Certificates (a CA and one per identity) and the stack's secrets for the
# compose stack, made by the image itself into deploy/compose/.secrets
# (git-ignored), owned by the image's user (65532) so each container can
# read the ones compose hands it. Kept if already there. Also the
# PostgreSQL password and each service's database URL (the postgres profile).
#
#   deploy/compose/init.sh            (SHOPFAST_IMAGE=shopfast:v0.1.0)
set -euo pipefail
cd "$(dirname "$0")"
image=${SHOPFAST_IMAGE:-shopfast:v0.1.0}
mkdir -p .secrets
chown 65532:65532 .secrets 2>/dev/null || chmod 0777 .secrets
docker run --rm -v "$PWD/.secrets:/out" "$image" certs --dir /out/tls >/dev/null
docker run --rm -v "$PWD/.secrets:/out" "$image" secrets --data-dir /out >/dev/null
secrets=.secrets/secrets
if [ ! -s "$secrets/postgres_password" ]; then
  (umask 077; head -c 24 /dev/urandom | base64 | tr -d '/+=' > "$secrets/postgres_password")
  for service in users products payments orders; do
    (umask 077; printf 'postgres://shopfast:%s@%s-db:5432/%s' "$(cat "$secrets/postgres_password")" "$service" "$service" \
      > "$secrets/${service}_database_url")
  done
  chown 65532:65532 "$secrets"/postgres_password "$secrets"/*_database_url 2>/dev/null || chmod 0644 "$secrets"/postgres_password "$secrets"/*_database_url
fi
echo "certificates and secrets in $PWD/.secrets"
