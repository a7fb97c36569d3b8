#!/usr/bin/env bash
# Overload with and without adaptive load shedding, in one run.
#
# A products instance (no registry) receives SearchProducts at a fixed arrival
# rate of FACTOR x its measured capacity for DURATION seconds (open loop: arrivals do not
# wait for answers). Once with shedding on (the default), once with it off.
# Printed: served rate, shed count, and the p50/p99 latency of served requests.
# The service runs on CPU 1 and the load generator on CPU 0 (taskset), so the
# generator does not steal the service's CPU — on one shared core, an overload
# test measures the generator as much as the server.
#
#   scripts/bench-overload.sh                  # FACTOR=3 DURATION=10 (seconds)
#   FACTOR=5 DURATION=20 scripts/bench-overload.sh
set -euo pipefail
# No built-in secrets: this run's own (in the environment, never on a command line).
SHOPFAST_USERS__TOKEN_SECRET=$(head -c 32 /dev/urandom | base64)
export SHOPFAST_USERS__TOKEN_SECRET SHOPFAST_GATEWAY__TOKEN_SECRET=$SHOPFAST_USERS__TOKEN_SECRET
# Plain text between the processes: this measures resilience, not TLS
# (scripts/bench-gateway.sh measures what mutual TLS costs).
for svc in REGISTRY USERS PRODUCTS PAYMENTS ORDERS GATEWAY CONSOLE; do export "SHOPFAST_${svc}__TLS__INSECURE=true"; done
export SHOPFAST_PAYMENTS__CARD_KEY=${SHOPFAST_PAYMENTS__CARD_KEY:-$(head -c 32 /dev/urandom | base64)}
cd "$(dirname "$0")/.."
FACTOR=${FACTOR:-3}
SECONDS_PER_RUN=${DURATION:-10}

cargo build -q --release -p shopfast --bin shopfast --example overload
bin=target/release/shopfast
work=$(mktemp -d)
pid=""
cleanup() { [ -n "$pid" ] && kill "$pid" 2>/dev/null; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

run() { # shedding on|off
  local port admin; port=$(free_port); admin=$(free_port)
  rm -f "$work"/products.db*
  SHOPFAST_PRODUCTS__SHEDDING__ENABLED=$([ "$1" = on ] && echo true || echo false) RUST_LOG=warn \
    taskset -c 1 $bin products --grpc-addr "127.0.0.1:$port" --admin-addr "127.0.0.1:$admin" --data-dir "$work" > "$work/products-$1.log" 2>&1 &
  pid=$!
  for _ in $(seq 1 100); do curl -fs "http://127.0.0.1:$admin/health/ready" > /dev/null 2>&1 && break; sleep 0.1; done
  echo "shedding $1: $(taskset -c 0 target/release/examples/overload "http://127.0.0.1:$port" --factor "$FACTOR" --seconds "$SECONDS_PER_RUN")"
  kill "$pid"; wait "$pid" 2>/dev/null || true; pid=""
}

run on | tee "$work/on"
run off | tee "$work/off"
python3 - "$work/on" "$work/off" "$FACTOR" <<'PY'
import json, sys
rows = {}
for path in sys.argv[1:3]:
    line = open(path).read().strip()
    name, data = line.split(": ", 1)
    rows[name] = json.loads(data)
factor = sys.argv[3]
print(f"\nSearchProducts at {factor}x capacity, open loop\n")
print("latency of served requests; 'after 2 s' leaves out those sent before shedding could react\n")
print(f"{'':<14}{'capacity':>10}{'offered':>10}{'served':>10}{'shed':>8}{'timed out':>11}{'p50 ms':>9}{'p99 ms':>9}{'after 2 s: p50':>16}{'p99':>9}")
for name, r in rows.items():
    print(f"{name:<14}{r['capacity_rps']:>10.0f}{r['offered_rps']:>10.0f}{r['served_rps']:>10.0f}{r['shed']:>8}{r['failed_other']:>11}"
          f"{r['served_p50_ms']:>9.1f}{r['served_p99_ms']:>9.1f}{r['settled_p50_ms']:>16.1f}{r['settled_p99_ms']:>9.1f}")
on, off = rows["shedding on"], rows["shedding off"]
if off["settled_p99_ms"] == 0:
    print("\nshedding off: no request sent after 2 s was served in time (latency collapse)")
elif on["settled_p99_ms"] > 0:
    print(f"\np99 of served requests after 2 s, shedding off / on: {off['settled_p99_ms'] / on['settled_p99_ms']:.1f}x")
print(f"served share of capacity: on {on['served_rps'] / on['capacity_rps']:.2f}, off {off['served_rps'] / off['capacity_rps']:.2f}")
PY
