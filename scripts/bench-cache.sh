#!/usr/bin/env bash
# The read cache, on and off, in one run: GET /v1/products/{id} through the
# gateway (wrk, HTTP/1.1 keep-alive, CONNECTIONS connections, DURATION s),
# against two stacks that differ only in Products' cache — each its own
# registry, products (SQLite) and gateway; one with `cache.enabled = false`.
# Rounds are interleaved; the table shows medians of req/s, p50 and p99, and
# the products process's CPU per request (from /proc), with the spread.
# One product is read over and over (a hot item: every read after the first
# is a hit while nothing writes it).
#
#   scripts/bench-cache.sh                          # DURATION=10 ROUNDS=3 CONNECTIONS=8
#   BIN=/tmp/other/shopfast scripts/bench-cache.sh  # another build
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION=${DURATION:-10}
ROUNDS=${ROUNDS:-3}
CONNECTIONS=${CONNECTIONS:-8}
for svc in REGISTRY PRODUCTS GATEWAY; do export "SHOPFAST_${svc}__TLS__INSECURE=true"; done
SHOPFAST_GATEWAY__TOKEN_SECRET=$(head -c 32 /dev/urandom | base64); export SHOPFAST_GATEWAY__TOKEN_SECRET

command -v wrk > /dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk; }
if [ -z "${BIN:-}" ]; then cargo build -q --release -p shopfast --bin shopfast; fi
bin=${BIN:-target/release/shopfast}
work=$(mktemp -d)
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
cat > "$work/shopfast.toml" <<TOML
[gateway.tiers.bench]
per_minute = 100000000
burst = 100000000
monthly_quota = 1000000000000

[gateway.api_keys.bench-key]
client = "bench"
tier = "bench"
TOML

declare -A gateway products_pid
for variant in on off; do
  dir="$work/$variant"; mkdir -p "$dir"
  registry_port=$(free_port); gateway_port=$(free_port)
  RUST_LOG=warn $bin registry --addr "127.0.0.1:$registry_port" > "$dir/registry.log" 2>&1 & pids+=($!)
  sleep 0.3
  enabled=true; [ "$variant" = off ] && enabled=false
  # Shedding off: this measures the read path, not how the stack defends itself.
  SHOPFAST_PRODUCTS__CACHE__ENABLED=$enabled SHOPFAST_PRODUCTS__SHEDDING__ENABLED=false RUST_LOG=warn \
    $bin products --grpc-addr 127.0.0.1:0 --admin-addr 127.0.0.1:0 --data-dir "$dir" \
    --registry-url "http://127.0.0.1:$registry_port" > "$dir/products.log" 2>&1 & products_pid[$variant]=$!; pids+=($!)
  RUST_LOG=warn $bin gateway --addr "127.0.0.1:$gateway_port" --registry-url "http://127.0.0.1:$registry_port" \
    --data-dir "$dir" --config "$work/shopfast.toml" > "$dir/gateway.log" 2>&1 & pids+=($!)
  gateway[$variant]="http://127.0.0.1:$gateway_port"
done
for variant in on off; do
  for _ in $(seq 200); do
    curl -fsS -H 'x-api-key: bench-key' "${gateway[$variant]}/v1/products?pageSize=1" > "$work/page-$variant.json" 2>/dev/null && break
    sleep 0.1
  done
done
id=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["products"][0]["id"])' "$work/page-on.json")
id_off=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["products"][0]["id"])' "$work/page-off.json")

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
hz=$(getconf CLK_TCK)
: > "$work/runs.txt"
for round in $(seq "$ROUNDS"); do
  for variant in on off; do
    pid=${products_pid[$variant]}
    target=$id; [ "$variant" = off ] && target=$id_off
    url="${gateway[$variant]}/v1/products/$target"
    wrk -t1 -c"$CONNECTIONS" -d2s -H 'x-api-key: bench-key' "$url" > /dev/null   # warm up
    c0=$(cpu_ticks "$pid")
    out=$(wrk -t1 -c"$CONNECTIONS" -d"${DURATION}s" --latency -H 'x-api-key: bench-key' "$url")
    c1=$(cpu_ticks "$pid")
    python3 - "$variant" "$c0" "$c1" "$hz" >> "$work/runs.txt" <<PY
import re, sys
out = """$out"""
variant, c0, c1, hz = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
def ms(label):
    m = re.search(rf"\s{label}%\s+([\d.]+)(us|ms|s)", out)
    v, unit = float(m.group(1)), m.group(2)
    return v / 1000 if unit == "us" else v * 1000 if unit == "s" else v
total = int(re.search(r"(\d+) requests in", out).group(1))
rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
cpu_us = (c1 - c0) / hz * 1e6 / max(total, 1)
print(variant, rps, ms("50"), ms("99"), cpu_us, int(errors.group(1)) if errors else 0)
PY
    echo "round $round $(tail -1 "$work/runs.txt")"
  done
done
python3 - "$work/runs.txt" <<'PY'
import statistics, sys
rows = [l.split() for l in open(sys.argv[1]) if l.strip()]
print(f"\nGET /v1/products/{{id}} through the gateway, wrk -t1, one hot product\n")
print(f"{'cache':<6} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'products CPU us/req':>20} {'req/s spread':>16} {'non-2xx':>8}")
med = {}
for variant in ("on", "off"):
    rs = [r for r in rows if r[0] == variant]
    col = lambda i: [float(r[i]) for r in rs]
    med[variant] = [statistics.median(col(i)) for i in range(1, 5)]
    rps, p50, p99, cpu = med[variant]
    spread = f"{min(col(1)):,.0f}-{max(col(1)):,.0f}"
    print(f"{variant:<6} {rps:>9,.0f} {p50:>8.2f} {p99:>8.2f} {cpu:>20.1f} {spread:>16} {sum(int(r[5]) for r in rs):>8}")
on, off = med["on"], med["off"]
print(f"\ncache on / off: req/s {on[0] / off[0]:.2f}x, p50 {on[1] / off[1]:.2f}x, p99 {on[2] / off[2]:.2f}x, "
      f"products CPU per request {on[3] / off[3]:.2f}x")
PY
