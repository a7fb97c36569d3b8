#!/usr/bin/env bash
# What the gateway costs per request, measured against nginx in one run.
#
# One request, three paths, same load generator (h2load, HTTP/2, keep-alive):
#   direct   gRPC GetProduct straight to the products service
#   nginx    the same gRPC call through nginx as a plain reverse proxy (grpc_pass)
#   gateway  GET /v1/products/{id} through the shopfast gateway, with API-key
#            auth, rate limiting (GCRA + monthly quota) and JSON transcoding on
#   untraced the same through a second gateway with tracing off
#            (OTEL_SDK_DISABLED=true): the cost of a span per request
# and, unless MTLS=0, the same two proxies with TLS to their upstream — what
# service identity costs, like for like:
#   nginx_tls     nginx to a second products over grpcs:// (client certificate,
#                 verified upstream, sessions reused)
#   gateway_mtls  the gateway to that products over mutual TLS (as `shopfast up` runs)
# The plain paths run with --insecure, the TLS ones with certificates from
# `shopfast certs`, each against its own registry and products.
# CPU per request is read from /proc for the proxy in the middle (nginx, the
# gateway) and for the backend. Each path runs ROUNDS times, interleaved; the
# table shows medians.
#
# Two load shapes by default: light (4 connections x 4 streams = 16 in
# flight) and heavy (8 x 16 = 128 in flight).
#
#   scripts/bench-gateway.sh                       # 40000 requests per run, 5 rounds, both loads
#   LOADS="8x16" REQUESTS=100000 ROUNDS=3 scripts/bench-gateway.sh
#   PROFILE=/tmp/gateway.perf scripts/bench-gateway.sh   # also a perf profile of the gateway
#   CALL_GRAPH=dwarf PROFILE=/tmp/gateway.perf scripts/bench-gateway.sh   # ... with call stacks
#   BIN=/tmp/other/shopfast scripts/bench-gateway.sh   # measure another build (A/B)
#   BASELINE_BIN=/tmp/old/shopfast scripts/bench-gateway.sh   # also a gateway of another build,
#                                      # interleaved in the same rounds: an A/B on equal terms
#   POLICY=1 scripts/bench-gateway.sh   # with a traffic policy in force (the versioned pick's full cost)
#   SYSCALLS=1 scripts/bench-gateway.sh   # also count the proxies' system calls per request (perf)
#   PIN=1 scripts/bench-gateway.sh   # proxies on CPU 1, backend and h2load on CPU 0
#   HTTP1=1 scripts/bench-gateway.sh   # also HTTP/1.1 (wrk): the gateway, and nginx proxying
#                                      # to an nginx that serves the same JSON from a file
set -euo pipefail
# No built-in secrets: this run's own (in the environment, never on a command line).
SHOPFAST_USERS__TOKEN_SECRET=$(head -c 32 /dev/urandom | base64)
export SHOPFAST_USERS__TOKEN_SECRET SHOPFAST_GATEWAY__TOKEN_SECRET=$SHOPFAST_USERS__TOKEN_SECRET
# The plain paths: plain text between the processes (the TLS paths unset this).
plain_env=()
for svc in REGISTRY USERS PRODUCTS PAYMENTS ORDERS GATEWAY CONSOLE; do
  export "SHOPFAST_${svc}__TLS__INSECURE=true"; plain_env+=(-u "SHOPFAST_${svc}__TLS__INSECURE")
done
MTLS=${MTLS:-1}
export SHOPFAST_PAYMENTS__CARD_KEY=${SHOPFAST_PAYMENTS__CARD_KEY:-$(head -c 32 /dev/urandom | base64)}
cd "$(dirname "$0")/.."
REQUESTS=${REQUESTS:-40000}
ROUNDS=${ROUNDS:-5}
LOADS=${LOADS:-"4x4 8x16"}
CLIENTS=4
STREAMS=4

need() { command -v "$1" >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$2"; }; }
need nginx nginx
need h2load nghttp2-client

if [ -z "${BIN:-}" ]; then cargo build -q --release -p shopfast; fi
bin=${BIN:-target/release/shopfast}
work=$(mktemp -d)
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  [ -f "$work/nginx.pid" ] && kill "$(cat "$work/nginx.pid")" 2>/dev/null || true
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
registry_port=$(free_port); products_port=$(free_port); products_admin=$(free_port)
gateway_port=$(free_port); nginx_port=$(free_port); untraced_port=$(free_port)

cat > "$work/shopfast.toml" <<TOML
[gateway.tiers.bench]
per_minute = 100000000
burst = 100000000
monthly_quota = 1000000000000

[gateway.api_keys.bench-key]
client = "bench"
tier = "bench"
TOML

RUST_LOG=warn $bin registry --addr "127.0.0.1:$registry_port" > "$work/registry.log" 2>&1 & pids+=($!)
sleep 0.5
# Shedding off on the backend: this measures what a proxy costs, not how the
# stack defends itself (128 in flight on 2 cores would be shed, and the
# gateway's breaker would then answer 503 for the rest of the run).
SHOPFAST_PRODUCTS__SHEDDING__ENABLED=false RUST_LOG=warn $bin products --grpc-addr "127.0.0.1:$products_port" --admin-addr "127.0.0.1:$products_admin" \
  --data-dir "$work" --registry-url "http://127.0.0.1:$registry_port" > "$work/products.log" 2>&1 & products_pid=$!; pids+=($products_pid)
# The gateways log at the shipped default level (info): what a log line and a
# request span's fields cost is part of what is measured.
RUST_LOG=info $bin gateway --threads "${GATEWAY_THREADS:-1}" --addr "127.0.0.1:$gateway_port" --registry-url "http://127.0.0.1:$registry_port" \
  --data-dir "$work" --config "$work/shopfast.toml" > "$work/gateway.log" 2>&1 & gateway_pid=$!; pids+=($gateway_pid)
mkdir -p "$work/untraced"
OTEL_SDK_DISABLED=true RUST_LOG=info $bin gateway --threads "${GATEWAY_THREADS:-1}" --addr "127.0.0.1:$untraced_port" \
  --registry-url "http://127.0.0.1:$registry_port" --data-dir "$work/untraced" --config "$work/shopfast.toml" \
  > "$work/untraced.log" 2>&1 & untraced_pid=$!; pids+=($untraced_pid)
# The TLS stack: its own registry and products (mutual TLS), a gateway to
# them, and (below) nginx over grpcs://.
tls_products_pid=""; mtls_pid=""; mtls_port=$(free_port); nginx_tls_port=$(free_port)
if [ "$MTLS" = 1 ]; then
  $bin certs --dir "$work/tls" > /dev/null
  tls_registry_port=$(free_port); tls_products_port=$(free_port)
  env "${plain_env[@]}" RUST_LOG=warn $bin registry --addr "127.0.0.1:$tls_registry_port" --tls-dir "$work/tls" \
    > "$work/tls-registry.log" 2>&1 & pids+=($!)
  sleep 0.5
  mkdir -p "$work/tls-data" "$work/mtls"
  env "${plain_env[@]}" SHOPFAST_PRODUCTS__SHEDDING__ENABLED=false RUST_LOG=warn $bin products --grpc-addr "127.0.0.1:$tls_products_port" \
    --admin-addr 127.0.0.1:0 --data-dir "$work/tls-data" --registry-url "https://127.0.0.1:$tls_registry_port" --tls-dir "$work/tls" \
    > "$work/tls-products.log" 2>&1 & tls_products_pid=$!; pids+=($tls_products_pid)
  env "${plain_env[@]}" RUST_LOG=info $bin gateway --threads "${GATEWAY_THREADS:-1}" --addr "127.0.0.1:$mtls_port" \
    --registry-url "https://127.0.0.1:$tls_registry_port" --tls-dir "$work/tls" --data-dir "$work/mtls" --config "$work/shopfast.toml" \
    > "$work/mtls.log" 2>&1 & mtls_pid=$!; pids+=($mtls_pid)
fi
baseline_pid=""; baseline_port=$(free_port)
if [ -n "${BASELINE_BIN:-}" ]; then
  mkdir -p "$work/baseline"
  RUST_LOG=info $BASELINE_BIN gateway --threads "${GATEWAY_THREADS:-1}" --addr "127.0.0.1:$baseline_port" \
    --registry-url "http://127.0.0.1:$registry_port" --data-dir "$work/baseline" --config "$work/shopfast.toml" \
    > "$work/baseline.log" 2>&1 & baseline_pid=$!; pids+=($baseline_pid)
fi

start_nginx() { # name http-block-lines: one worker, $work/name.pid, started
  local name=$1 http=$2
  cat > "$work/$name.conf" <<NGINX
worker_processes 1;
pid $work/$name.pid;
error_log $work/$name-error.log warn;
events { worker_connections 1024; }
http {
  access_log off;
  client_body_temp_path $work/$name-body;
  # nginx closes a client connection after 1000 requests by default; the load generators do not reconnect.
  keepalive_requests 1000000000;
$http
}
NGINX
  nginx -p "$work" -c "$work/$name.conf"
}
start_nginx nginx "
  upstream products { server 127.0.0.1:$products_port; keepalive 32; keepalive_requests 1000000000; }
  server { listen 127.0.0.1:$nginx_port http2; location / { grpc_pass grpc://products; } }"
if [ "$MTLS" = 1 ]; then
  # As the gateway does it: a client certificate (the gateway's identity),
  # the upstream verified against the stack's CA under its service name,
  # keep-alive connections and TLS sessions reused.
  start_nginx nginx_tls "
  upstream products_tls { server 127.0.0.1:$tls_products_port; keepalive 32; keepalive_requests 1000000000; }
  server {
    listen 127.0.0.1:$nginx_tls_port http2;
    location / {
      grpc_pass grpcs://products_tls;
      grpc_ssl_certificate $work/tls/gateway.pem;
      grpc_ssl_certificate_key $work/tls/gateway-key.pem;
      grpc_ssl_trusted_certificate $work/tls/ca.pem;
      grpc_ssl_verify on;
      grpc_ssl_name products.shopfast.internal;
      grpc_ssl_server_name on;
      grpc_ssl_session_reuse on;
    }
  }"
fi

gateway_url="http://127.0.0.1:$gateway_port"
untraced_url="http://127.0.0.1:$untraced_port"
baseline_url="http://127.0.0.1:$baseline_port"
mtls_url="http://127.0.0.1:$mtls_port"
if [ "$MTLS" = 1 ]; then
  for _ in $(seq 1 100); do curl -fs -H 'x-api-key: bench-key' "$mtls_url/v1/products?pageSize=1" > "$work/tls-page.json" 2>/dev/null && break; sleep 0.2; done
fi
for _ in $(seq 1 100); do curl -fs -H 'x-api-key: bench-key' "$gateway_url/v1/products?pageSize=1" > "$work/page.json" 2>/dev/null && break; sleep 0.2; done
for _ in $(seq 1 100); do curl -fs -H 'x-api-key: bench-key' "$untraced_url/v1/products?pageSize=1" > /dev/null 2>&1 && break; sleep 0.2; done
if [ -n "$baseline_pid" ]; then
  for _ in $(seq 1 100); do curl -fs -H 'x-api-key: bench-key' "$baseline_url/v1/products?pageSize=1" > /dev/null 2>&1 && break; sleep 0.2; done
fi
product_id=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["products"][0]["id"])' "$work/page.json")
# POLICY=1: a traffic policy in force for products (its one version at 100 %,
# sticky by client), so the gateway hashes every request's key into the
# weights before picking an instance — the versioned pick at its full cost.
if [ "${POLICY:-0}" = 1 ]; then
  version=$(curl -fs "http://127.0.0.1:$registry_port/v1/services/products" | python3 -c 'import json,sys; print(json.load(sys.stdin)["instances"][0]["version"])')
  curl -fs -X PUT "http://127.0.0.1:$registry_port/v1/policies/products" -H 'content-type: application/json' \
    -d "{\"weights\": {\"$version\": 100}, \"sticky\": \"client\", \"reason\": \"bench\"}" > /dev/null
  sleep 1
  echo "traffic policy: products $version at 100 %, sticky by client"
fi
# gRPC frame of GetProductRequest{product_id}: 0 (uncompressed), 4-byte length, protobuf.
frame() { # product-id file: the GetProductRequest frame
python3 - "$1" "$2" <<'PY'
import struct, sys
pid = sys.argv[1].encode()
msg = b"\x0a" + bytes([len(pid)]) + pid
open(sys.argv[2], "wb").write(b"\x00" + struct.pack(">I", len(msg)) + msg)
PY
}
frame "$product_id" "$work/get.bin"
nginx_worker=$(pgrep -P "$(cat "$work/nginx.pid")" | head -n 1)
nginx_tls_worker=""
if [ "$MTLS" = 1 ]; then
  nginx_tls_worker=$(pgrep -P "$(cat "$work/nginx_tls.pid")" | head -n 1)
  # The TLS stack seeded its own catalog: its product's id, and its gRPC frame.
  tls_product_id=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["products"][0]["id"])' "$work/tls-page.json")
  frame "$tls_product_id" "$work/tls-get.bin"
fi
# PIN=1: every proxy on CPU 1, the backend and the load generator on CPU 0, so
# the proxy in the middle has a core to itself (it idles between bursts, and
# each burst starts on a cold cache) instead of sharing both with them.
loadcpu=()
if [ -n "${PIN:-}" ]; then
  for pid in $gateway_pid $untraced_pid $baseline_pid $nginx_worker $mtls_pid $nginx_tls_worker; do taskset -a -pc 1 "$pid" > /dev/null; done
  for pid in $products_pid $tls_products_pid; do taskset -a -pc 0 "$pid" > /dev/null; done
  loadcpu=(taskset -c 0)
fi

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
grpc_path=/shopfast.products.v1.ProductService/GetProduct
run() { # name url [h2load args...] -> "name rps mean_ms proxy_us backend_us"
  local name=$1 url=$2; shift 2
  local proxy_pid="" backend_pid=$products_pid
  case $name in nginx) proxy_pid=$nginx_worker;; gateway) proxy_pid=$gateway_pid;; untraced) proxy_pid=$untraced_pid;; baseline) proxy_pid=$baseline_pid;;
    nginx_tls) proxy_pid=$nginx_tls_worker; backend_pid=$tls_products_pid;; gateway_mtls) proxy_pid=$mtls_pid; backend_pid=$tls_products_pid;; esac
  local p0=0 b0; b0=$(cpu_ticks "$backend_pid"); [ -n "$proxy_pid" ] && p0=$(cpu_ticks "$proxy_pid")
  local out; out=$("${loadcpu[@]}" h2load -n "$REQUESTS" -c "$CLIENTS" -m "$STREAMS" -t 1 "$@" "$url")
  local p1=0 b1; b1=$(cpu_ticks "$backend_pid"); [ -n "$proxy_pid" ] && p1=$(cpu_ticks "$proxy_pid")
  local ok; ok=$(echo "$out" | sed -n 's/.*status codes: \([0-9]*\) 2xx.*/\1/p')
  [ "$ok" = "$REQUESTS" ] || { echo "$out" >&2; echo "$name: only $ok of $REQUESTS succeeded" >&2; exit 1; }
  local rps mean; rps=$(echo "$out" | sed -n 's/.*finished in .*, \([0-9.]*\) req\/s.*/\1/p')
  mean=$(echo "$out" | awk '/time for request:/ {print $6}')
  local hz; hz=$(getconf CLK_TCK)
  echo "$name $rps $mean $(( (p1 - p0) * 1000000 / hz )) $(( (b1 - b0) * 1000000 / hz ))"
}

syscalls() { # name pid url [h2load args...]: system calls per request of the proxy, printed
  local name=$1 pid=$2 url=$3; shift 3
  perf stat -x, -e raw_syscalls:sys_enter -p "$pid" -o "$work/syscalls" & local perf_pid=$!
  sleep 0.2
  "${loadcpu[@]}" h2load -n "$REQUESTS" -c "$CLIENTS" -m "$STREAMS" -t 1 "$@" "$url" > /dev/null
  kill -INT "$perf_pid"; wait "$perf_pid" || true
  awk -F, -v name="$name" -v n="$REQUESTS" '/sys_enter/ {printf "%s: %.2f system calls per request\n", name, $1 / n}' "$work/syscalls" >&2
}

grpc_args=(-d "$work/get.bin" -H 'content-type: application/grpc' -H 'te: trailers')
tls_grpc_args=(-d "$work/tls-get.bin" -H 'content-type: application/grpc' -H 'te: trailers')
run_tls_paths() { # the TLS paths, when on
  [ "$MTLS" = 1 ] || return 0
  run nginx_tls "http://127.0.0.1:$nginx_tls_port$grpc_path" "${tls_grpc_args[@]}"
  run gateway_mtls "$mtls_url/v1/products/$tls_product_id" -H 'x-api-key: bench-key'
}
# Warm up every path once.
REQUESTS=2000 run direct "http://127.0.0.1:$products_port$grpc_path" "${grpc_args[@]}" > /dev/null
REQUESTS=2000 run nginx "http://127.0.0.1:$nginx_port$grpc_path" "${grpc_args[@]}" > /dev/null
REQUESTS=2000 run gateway "$gateway_url/v1/products/$product_id" -H 'x-api-key: bench-key' > /dev/null
REQUESTS=2000 run untraced "$untraced_url/v1/products/$product_id" -H 'x-api-key: bench-key' > /dev/null
if [ -n "$baseline_pid" ]; then REQUESTS=2000 run baseline "$baseline_url/v1/products/$product_id" -H 'x-api-key: bench-key' > /dev/null; fi
REQUESTS=2000 run_tls_paths > /dev/null

for load in $LOADS; do
CLIENTS=${load%x*}
STREAMS=${load#*x}
: > "$work/results"
# PROFILE=path: also record a CPU profile of the gateway (perf, cpu-clock) during round 1.
for round in $(seq 1 "$ROUNDS"); do
  if [ -n "${PROFILE:-}" ] && [ "$round" = 1 ]; then
    perf record -q -e cpu-clock ${CALL_GRAPH:+--call-graph "$CALL_GRAPH"} -F 2999 -p "$gateway_pid" -o "$PROFILE.$load" > /dev/null 2>&1 & perf_pid=$!
    sleep 0.2
    run gateway "$gateway_url/v1/products/$product_id" -H 'x-api-key: bench-key' > /dev/null
    kill -INT "$perf_pid"; wait "$perf_pid" || true
  fi
  if [ -n "${SYSCALLS:-}" ] && [ "$round" = 1 ]; then
    syscalls nginx "$nginx_worker" "http://127.0.0.1:$nginx_port$grpc_path" "${grpc_args[@]}"
    syscalls gateway "$gateway_pid" "$gateway_url/v1/products/$product_id" -H 'x-api-key: bench-key'
  fi
  run direct "http://127.0.0.1:$products_port$grpc_path" "${grpc_args[@]}" >> "$work/results"
  run nginx "http://127.0.0.1:$nginx_port$grpc_path" "${grpc_args[@]}" >> "$work/results"
  run gateway "$gateway_url/v1/products/$product_id" -H 'x-api-key: bench-key' >> "$work/results"
  run untraced "$untraced_url/v1/products/$product_id" -H 'x-api-key: bench-key' >> "$work/results"
  if [ -n "$baseline_pid" ]; then run baseline "$baseline_url/v1/products/$product_id" -H 'x-api-key: bench-key' >> "$work/results"; fi
  run_tls_paths >> "$work/results"
  echo "load $load: round $round done" >&2
done
python3 - "$work/results" "$REQUESTS" "$CLIENTS" "$STREAMS" "$ROUNDS" <<'PY'
import statistics, sys
rows = [l.split() for l in open(sys.argv[1]) if l.strip()]
requests, clients, streams, rounds = sys.argv[2:6]
by = {}
for name, rps, mean, proxy_cpu, backend_cpu in rows:
    by.setdefault(name, []).append((float(rps), mean, int(proxy_cpu), int(backend_cpu)))
n = int(requests)
def med(name, i):
    return statistics.median(v[i] for v in by[name])
def mean_ms(text):
    return float(text[:-2]) / 1000 if text.endswith("us") else float(text[:-2]) if text.endswith("ms") else float(text[:-1]) * 1000
print(f"\nGetProduct, {n} requests x {rounds} rounds, h2load -c {clients} -m {streams} -t 1 (medians)\n")
print(f"{'path':<13}{'req/s':>10}{'mean latency':>15}{'proxy CPU/req':>16}{'backend CPU/req':>18}")
stats = {}
for name in [n for n in ("direct", "nginx", "gateway", "untraced", "baseline", "nginx_tls", "gateway_mtls") if n in by]:
    rps = med(name, 0)
    latency = statistics.median(mean_ms(v[1]) for v in by[name])
    proxy = med(name, 2) / n
    backend = med(name, 3) / n
    stats[name] = (rps, latency, proxy, backend)
    proxy_text = "-" if name == "direct" else f"{proxy:.1f} us"
    print(f"{name:<13}{rps:>10.0f}{latency:>12.3f} ms{proxy_text:>16}{backend:>15.1f} us")
(d, ng, gw) = (stats["direct"], stats["nginx"], stats["gateway"])
print()
print(f"gateway CPU per request / nginx CPU per request: {gw[2] / ng[2]:.2f}  (target <= 1.00)")
print(f"throughput: nginx/direct {ng[0] / d[0]:.2f}, gateway/direct {gw[0] / d[0]:.2f}, gateway/nginx {gw[0] / ng[0]:.2f}")
print(f"added latency vs direct: nginx {ng[1] - d[1]:+.3f} ms, gateway {gw[1] - d[1]:+.3f} ms")
un = stats["untraced"]
print(f"tracing: gateway CPU per request traced / untraced {gw[2] / un[2]:.2f}; untraced / nginx {un[2] / ng[2]:.2f}")
if "baseline" in stats:
    print(f"A/B: gateway CPU per request / baseline build's {gw[2] / stats['baseline'][2]:.2f}; baseline / nginx {stats['baseline'][2] / ng[2]:.2f}")
if "gateway_mtls" in stats:
    mt, nt = stats["gateway_mtls"], stats["nginx_tls"]
    print(f"mTLS: gateway CPU per request with / without {mt[2] / gw[2]:.2f} (target < 1.10); nginx with TLS upstream / without {nt[2] / ng[2]:.2f}")
    print(f"mTLS: gateway / nginx, both with TLS upstream {mt[2] / nt[2]:.2f}; backend CPU per request with / without {mt[3] / gw[3]:.2f}")
PY
done

# HTTP1=1: the same GET over HTTP/1.1 (wrk, keep-alive) through the gateway,
# beside nginx proxying HTTP/1.1 to a second nginx that serves the product's
# JSON from a file. That is the plain proxying nginx's often-quoted ~16 us is
# for: no gRPC, no HTTP/2, no transcoding -- not the same route, shown for scale.
if [ -n "${HTTP1:-}" ]; then
  need wrk wrk
  mkdir -p "$work/static"
  curl -fs -H 'x-api-key: bench-key' "$gateway_url/v1/products/$product_id" > "$work/static/product.json"
  chmod a+rx "$work" "$work/static"; chmod a+r "$work/static/product.json"  # nginx's workers are not root
  static_port=$(free_port); h1_port=$(free_port)
  start_nginx static "
  open_file_cache max=16;
  server { listen 127.0.0.1:$static_port; location / { default_type application/json; root $work/static; try_files /product.json =404; } }"
  start_nginx h1 "
  upstream static { server 127.0.0.1:$static_port; keepalive 32; keepalive_requests 1000000000; }
  server { listen 127.0.0.1:$h1_port; location / { proxy_pass http://static; proxy_http_version 1.1; proxy_set_header Connection \"\"; } }"
  pids+=("$(cat "$work/static.pid")" "$(cat "$work/h1.pid")")
  h1_worker=$(pgrep -P "$(cat "$work/h1.pid")" | head -n 1)
  curl -fs "http://127.0.0.1:$h1_port/" | cmp -s - "$work/static/product.json" || { echo "nginx over HTTP/1.1 does not serve the product" >&2; exit 1; }
  [ -n "${PIN:-}" ] && taskset -a -pc 1 "$h1_worker" > /dev/null
  echo 'wrk.headers["x-api-key"] = "bench-key"' > "$work/key.lua"
  wrk_run() { # name proxy_pid connections url -> "name us_per_request"
    local name=$1 pid=$2 connections=$3 url=$4 p0 p1 out n
    p0=$(cpu_ticks "$pid")
    out=$("${loadcpu[@]}" wrk -t 1 -c "$connections" -d "${HTTP1_SECONDS:-5}s" -s "$work/key.lua" "$url")
    p1=$(cpu_ticks "$pid")
    if echo "$out" | grep -q 'Non-2xx'; then echo "$out" >&2; echo "$name: some answers were not 2xx" >&2; exit 1; fi
    n=$(echo "$out" | awk '/requests in/ {print $1}')
    echo "$name $(( (p1 - p0) * 1000000 / $(getconf CLK_TCK) )) $n"
  }
  for load in $LOADS; do
    connections=$(( ${load%x*} * ${load#*x} ))
    : > "$work/h1-results"
    for round in $(seq 1 "$ROUNDS"); do
      wrk_run nginx "$h1_worker" "$connections" "http://127.0.0.1:$h1_port/" >> "$work/h1-results"
      wrk_run gateway "$gateway_pid" "$connections" "$gateway_url/v1/products/$product_id" >> "$work/h1-results"
    done
    python3 - "$work/h1-results" "$connections" "$ROUNDS" <<'PY'
import statistics, sys
per = {}
for name, micros, requests in (l.split() for l in open(sys.argv[1]) if l.strip()):
    per.setdefault(name, []).append(int(micros) / int(requests))
ng, gw = statistics.median(per["nginx"]), statistics.median(per["gateway"])
print(f"\nHTTP/1.1 (wrk, {sys.argv[2]} connections, medians of {sys.argv[3]}): CPU per request")
print(f"  nginx proxying to a static file server: {ng:.1f} us")
print(f"  gateway (auth, limits, JSON from gRPC): {gw:.1f} us   (ratio {gw / ng:.2f}; not the same route)")
PY
  done
fi
