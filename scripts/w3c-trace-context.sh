#!/usr/bin/env bash
# The official W3C trace-context test suite (vendored in
# third_party/w3c-trace-context, Python + aiohttp) against the gateway's test
# endpoint, at SPEC_LEVEL=2 (the random-trace-id flag) and STRICT_LEVEL=2
# (the strict tracestate checks). Starts a registry and a gateway with
# --enable-trace-context-test-endpoint on free ports; exits non-zero if any
# test fails.
#
#   scripts/w3c-trace-context.sh                 # builds target/debug/shopfast
#   SHOPFAST_BIN=target/release/shopfast scripts/w3c-trace-context.sh
#   scripts/w3c-trace-context.sh TraceContext2Test   # only some tests
set -euo pipefail
# No built-in secrets: this run's own (in the environment, never on a command line).
SHOPFAST_USERS__TOKEN_SECRET=$(head -c 32 /dev/urandom | base64)
export SHOPFAST_USERS__TOKEN_SECRET SHOPFAST_GATEWAY__TOKEN_SECRET=$SHOPFAST_USERS__TOKEN_SECRET
export SHOPFAST_PAYMENTS__CARD_KEY=${SHOPFAST_PAYMENTS__CARD_KEY:-$(head -c 32 /dev/urandom | base64)}
cd "$(dirname "$0")/.."
python3 -c 'import aiohttp' 2> /dev/null || python3 -m pip install -q --disable-pip-version-check 'aiohttp>=3.9,<4'
bin=${SHOPFAST_BIN:-}
if [ -z "$bin" ]; then
  cargo build -q -p shopfast --bin shopfast
  bin=target/debug/shopfast
fi
work=$(mktemp -d)
pids=()
cleanup() { for pid in "${pids[@]}"; do kill "$pid" 2> /dev/null || true; done; wait 2> /dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
registry_port=$(free_port)
gateway_port=$(free_port)
harness_port=$(free_port)

# Mutual TLS between the gateway and the registry, as `shopfast up` runs them.
"$bin" certs --dir "$work/tls" > /dev/null
export SHOPFAST_TLS_DIR="$work/tls"
RUST_LOG=warn "$bin" registry --addr "127.0.0.1:$registry_port" > "$work/registry.log" 2>&1 &
pids+=($!)
RUST_LOG=warn "$bin" gateway --addr "127.0.0.1:$gateway_port" --registry-url "https://127.0.0.1:$registry_port" \
  --data-dir "$work" --enable-trace-context-test-endpoint > "$work/gateway.log" 2>&1 &
pids+=($!)
for _ in $(seq 1 100); do
  curl -sf "http://127.0.0.1:$gateway_port/health/ready" > /dev/null && break
  sleep 0.1
done
curl -sf "http://127.0.0.1:$gateway_port/health/ready" > /dev/null || { cat "$work/gateway.log" >&2; exit 1; }

cd third_party/w3c-trace-context/test
SPEC_LEVEL=2 STRICT_LEVEL=2 HARNESS_PORT=$harness_port \
  python3 test.py "http://127.0.0.1:$gateway_port/test/tracecontext" "$@"
