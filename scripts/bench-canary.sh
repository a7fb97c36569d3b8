#!/usr/bin/env bash
# Canary analysis figures on one box, every answer of an open-loop load
# counted (RATE anonymous product reads/s through the gateway, default 250):
#  - a canary failing 10 % of its calls: time from the first user failure and
#    from the analysis' minimum sample to the rollback, the blast radius
#    (user requests that failed), failures after it, stable's server errors;
#  - a canary 200 ms slower on GetProduct: time to its latency rollback;
#  - ROUNDS canaries 3 % slower (stable's GetProduct made to take 98 ms, the
#    canary's 101 ms, across the 100 ms bucket edge): false rollbacks, the
#    last p95 check of each (figures and the rank test's p-value).
# NOISE=1 keeps two busy loops running meanwhile (the noisy box). The debug
# build the tests use (PROFILE=release for the optimised one).
#
#   scripts/bench-canary.sh
#   NOISE=1 ROUNDS=5 scripts/bench-canary.sh
set -euo pipefail
cd "$(dirname "$0")/.."
export ROUNDS=${ROUNDS:-5} RATE=${RATE:-250}
profile=()
if [ "${PROFILE:-debug}" = release ]; then profile=(--release); fi
cargo build -q "${profile[@]}" -p shopfast --tests
busy=()
if [ "${NOISE:-0}" = 1 ]; then
  for _ in 1 2; do (while :; do :; done) & busy+=($!); done
  echo "== noise: two busy loops (pids ${busy[*]})"
fi
cleanup() { for pid in "${busy[@]}"; do kill "$pid" 2>/dev/null || true; done; }
trap cleanup EXIT
cargo test -q "${profile[@]}" -p shopfast --test canary -- --ignored --exact bench_canary_analysis --nocapture 2>&1 \
  | grep -E '^(load|failing|  blast|200 ms|3 %|test result)'
