#!/usr/bin/env bash
# How fast the gateway answers when a backend is down, against the same
# request while it is up, in one run (wrk, HTTP/1.1 keep-alive, 4 connections):
#   healthy     GET /v1/products/{id}, products up
#   cached      the same GET with products killed: the open breaker refuses at
#               once and the `cached` fallback answers with the last good body
#   fail fast   a GET never answered before (nothing cached): 503 at once
#
#   scripts/bench-fallback.sh            # DURATION=5 seconds per run
set -euo pipefail
# No built-in secrets: this run's own (in the environment, never on a command line).
SHOPFAST_USERS__TOKEN_SECRET=$(head -c 32 /dev/urandom | base64)
export SHOPFAST_USERS__TOKEN_SECRET SHOPFAST_GATEWAY__TOKEN_SECRET=$SHOPFAST_USERS__TOKEN_SECRET
# Plain text between the processes: this measures resilience, not TLS
# (scripts/bench-gateway.sh measures what mutual TLS costs).
for svc in REGISTRY USERS PRODUCTS PAYMENTS ORDERS GATEWAY CONSOLE; do export "SHOPFAST_${svc}__TLS__INSECURE=true"; done
export SHOPFAST_PAYMENTS__CARD_KEY=${SHOPFAST_PAYMENTS__CARD_KEY:-$(head -c 32 /dev/urandom | base64)}
cd "$(dirname "$0")/.."
DURATION=${DURATION:-5}
command -v wrk > /dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk; }

cargo build -q --release -p shopfast
bin=target/release/shopfast
work=$(mktemp -d)
pids=()
cleanup() { for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
registry_port=$(free_port); gateway_port=$(free_port)

cat > "$work/shopfast.toml" <<TOML
[gateway.tiers.anonymous]
per_minute = 100000000
burst = 100000000
monthly_quota = 0

[gateway.dependencies.products]
fallback = "cached"
TOML

RUST_LOG=warn $bin registry --addr "127.0.0.1:$registry_port" > "$work/registry.log" 2>&1 & pids+=($!)
sleep 0.5
RUST_LOG=warn $bin products --grpc-addr 127.0.0.1:0 --admin-addr 127.0.0.1:0 --data-dir "$work" \
  --registry-url "http://127.0.0.1:$registry_port" > "$work/products.log" 2>&1 & products_pid=$!; pids+=($products_pid)
RUST_LOG=warn $bin gateway --addr "127.0.0.1:$gateway_port" --registry-url "http://127.0.0.1:$registry_port" \
  --data-dir "$work" --config "$work/shopfast.toml" > "$work/gateway.log" 2>&1 & pids+=($!)

url="http://127.0.0.1:$gateway_port"
for _ in $(seq 1 100); do curl -fs "$url/v1/products?pageSize=2" > "$work/page.json" 2>/dev/null && break; sleep 0.2; done
read -r id other < <(python3 -c 'import json,sys; p=json.load(open(sys.argv[1]))["products"]; print(p[0]["id"], p[1]["id"])' "$work/page.json")

measure() { # name url -> "name p50 p99 rps non2xx"
  local out; out=$(wrk -t1 -c4 -d"${DURATION}s" --latency "$2")
  local p50 p99 rps bad
  p50=$(echo "$out" | awk '$1 == "50%" {print $2}')
  p99=$(echo "$out" | awk '$1 == "99%" {print $2}')
  rps=$(echo "$out" | awk '/Requests\/sec/ {print $2}')
  bad=$(echo "$out" | awk '/Non-2xx/ {print $5}')
  echo "$1 $p50 $p99 $rps ${bad:-0}"
}

measure healthy "$url/v1/products/$id" > "$work/results"
kill -9 "$products_pid"
# Let the breaker see the failures and open.
for _ in $(seq 1 20); do curl -s -o /dev/null "$url/v1/products/$id"; done
measure cached "$url/v1/products/$id" >> "$work/results"
measure fail-fast "$url/v1/products/$other" >> "$work/results"
python3 - "$work/results" <<'PY'
import sys
def ms(text):
    for unit, factor in (("us", 0.001), ("ms", 1.0), ("s", 1000.0)):
        if text.endswith(unit):
            return float(text[: -len(unit)]) * factor
    raise ValueError(text)
rows = [l.split() for l in open(sys.argv[1]) if l.strip()]
print(f"\nGET /v1/products/{{id}} through the gateway, wrk -t1 -c4\n")
print(f"{'':<11}{'p50 ms':>9}{'p99 ms':>9}{'req/s':>10}{'non-2xx':>9}")
stats = {}
for name, p50, p99, rps, bad in rows:
    stats[name] = (ms(p50), ms(p99))
    print(f"{name:<11}{ms(p50):>9.3f}{ms(p99):>9.3f}{float(rps):>10.0f}{bad:>9}")
print(f"\ncached fallback p50 / healthy p50: {stats['cached'][0] / stats['healthy'][0]:.2f}")
PY
