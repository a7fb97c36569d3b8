#!/usr/bin/env bash
# Makes the files an overlay's secretGenerator reads, under OVERLAY/secrets/
# (git-ignored; nothing secret is ever committed). Only what is missing is
# made: run it again and nothing changes; delete a file to make a new one.
#
#   deploy/kubernetes/make-secrets.sh deploy/kubernetes/overlays/dev \
#       --postgres 'postgres://shopfast:PASSWORD@db.example.internal:5432'
#   deploy/kubernetes/make-secrets.sh deploy/kubernetes/overlays/production \
#       --postgres 'postgres://shopfast:PASSWORD@db.example.internal:5432' \
#       --redis 'redis://:PASSWORD@redis.example.internal:6379'
#
# It makes:
#   secrets/tls/            `shopfast certs --dir secrets/tls`: a CA and a certificate per
#                           identity (ca-key.pem and operator*.pem are never put in the cluster;
#                           keep ca-key.pem somewhere safer once the certificates exist)
#   secrets/token_secret    32 random bytes in hex (Users signs tokens, the gateway checks them)
#   secrets/card_key        32 random bytes in base64 (Payments seals stored cards)
#   secrets/admin_api_key, secrets/deployer_api_key (and in dev secrets/loadgen_api_key):
#                           API keys, and secrets/api-keys.json, the gateway's api_keys_file
#   secrets/datastores.env  one PostgreSQL URL per service (database shopfast_<service>),
#                           and in production the gateway's Redis (shared rate limits)
#
# `shopfast` is taken from $SHOPFAST, the PATH or this checkout's target/ —
# or make the certificates yourself with the image:
#   docker run --rm -u "$(id -u)" -v "$PWD/OVERLAY/secrets/tls:/tls" shopfast:v0.1.0 certs --dir /tls
set -euo pipefail

usage() {
  sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//' >&2
  exit 2
}

[ $# -ge 1 ] || usage
overlay=$1
shift
postgres=""
redis=""
while [ $# -gt 0 ]; do
  case "$1" in
    --postgres) postgres=${2:?--postgres needs a URL prefix}; shift 2 ;;
    --redis) redis=${2:?--redis needs a URL}; shift 2 ;;
    -h | --help) usage ;;
    *) echo "unknown argument: $1" >&2; usage ;;
  esac
done
[ -f "$overlay/kustomization.yaml" ] || { echo "$overlay: not an overlay (no kustomization.yaml)" >&2; exit 2; }
name=$(basename "$(cd "$overlay" && pwd)")
dir="$overlay/secrets"
umask 077
mkdir -p "$dir/tls"

made=()
hex32() { od -An -N32 -tx1 /dev/urandom | tr -d ' \n'; }
base64_32() { head -c 32 /dev/urandom | base64 | tr -d '\n'; }
api_key() { printf 'sf%s' "$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')"; }
# A secret file, made by `make` when missing; no trailing newline (the value
# is used byte for byte).
keep_or_make() {
  local file="$dir/$1" make=$2
  if [ ! -s "$file" ]; then
    printf '%s' "$($make)" >"$file"
    made+=("$1")
  fi
}

# Certificates.
identities=(registry users products payments orders queue fulfilment gateway console deployer)
missing_tls=0
for identity in ca "${identities[@]}"; do
  [ -s "$dir/tls/$identity.pem" ] || missing_tls=1
done
if [ "$missing_tls" = 1 ]; then
  here=$(cd "$(dirname "$0")/../.." && pwd)
  shopfast=${SHOPFAST:-}
  if [ -z "$shopfast" ]; then
    for candidate in "$(command -v shopfast || true)" "$here/target/release/shopfast" "$here/target/debug/shopfast"; do
      if [ -n "$candidate" ] && [ -x "$candidate" ]; then shopfast=$candidate; break; fi
    done
  fi
  if [ -z "$shopfast" ]; then
    echo "make-secrets: no shopfast binary to make certificates with: set SHOPFAST=/path/to/shopfast," >&2
    echo "  build one (cargo build --release -p shopfast), or run the image:" >&2
    echo "  docker run --rm -u \"\$(id -u)\" -v \"\$PWD/$dir/tls:/tls\" shopfast:v0.1.0 certs --dir /tls" >&2
    exit 1
  fi
  # Every identity of the stack and `operator` (for you: shopfast status,
  # deploy, curl --cert); files already there are kept.
  "$shopfast" certs --dir "$dir/tls"
  made+=("tls/")
fi

keep_or_make token_secret hex32
keep_or_make card_key base64_32
keep_or_make admin_api_key api_key
keep_or_make deployer_api_key api_key
if [ "$name" = dev ]; then keep_or_make loadgen_api_key api_key; fi

# The gateway's API keys: made once from the key files; after that it is
# yours to edit (add clients), and only checked.
keys_file="$dir/api-keys.json"
if [ ! -s "$keys_file" ]; then
  {
    printf '{\n'
    printf '  "%s": {"client": "operator", "tier": "professional", "admin": true},\n' "$(cat "$dir/admin_api_key")"
    if [ "$name" = dev ]; then
      printf '  "%s": {"client": "loadgen", "tier": "loadgen", "admin": false},\n' "$(cat "$dir/loadgen_api_key")"
    fi
    printf '  "%s": {"client": "deployer", "tier": "professional", "admin": true}\n' "$(cat "$dir/deployer_api_key")"
    printf '}\n'
  } >"$keys_file"
  made+=("api-keys.json")
else
  for key_file in deployer_api_key $([ "$name" = dev ] && echo loadgen_api_key); do
    if ! grep -qF "\"$(cat "$dir/$key_file")\"" "$keys_file"; then
      echo "make-secrets: $keys_file lacks the key in $dir/$key_file: add it, or delete $keys_file to remake it" >&2
      exit 1
    fi
  done
fi

# Database URLs (and Redis in production).
stores_file="$dir/datastores.env"
if [ ! -s "$stores_file" ]; then
  placeholder=0
  if [ -z "$postgres" ]; then
    postgres="postgres://REPLACE_ME:REPLACE_ME@postgres.invalid:5432"
    placeholder=1
  fi
  {
    for service in users products payments orders gateway deployer; do
      printf '%s=%s/shopfast_%s\n' "$service" "${postgres%/}" "$service"
    done
    if [ "$name" = production ]; then
      if [ -z "$redis" ]; then redis="redis://:REPLACE_ME@redis.invalid:6379"; placeholder=1; fi
      printf 'redis=%s\n' "$redis"
    fi
  } >"$stores_file"
  made+=("datastores.env")
  if [ "$placeholder" = 1 ]; then
    echo "make-secrets: WARNING: $stores_file holds placeholders (REPLACE_ME): edit it, or delete it and pass --postgres/--redis" >&2
  fi
fi

if [ ${#made[@]} -eq 0 ]; then
  echo "make-secrets: $dir is complete; nothing made"
else
  echo "make-secrets: made ${made[*]} in $dir"
fi
