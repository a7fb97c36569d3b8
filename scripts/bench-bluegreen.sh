#!/usr/bin/env bash
# Blue-green under load, every answer counted: `shopfast up` (release build),
# an open-loop load through the gateway (BENCH_RATE requests/s, default 1000;
# one in BENCH_ORDERS_EVERY an order with a test card, default 20; the rest
# product reads), then `shopfast deploy products --version v2` (green started
# beside blue, smoke-tested, switched, watched, blue retired), then v3 rolled
# back on request in its watch window. Any 5xx, connection error or timeout
# is a failure. Prints, for the switch and the rollback, answers, req/s,
# failures and p50/p99 latency before, during (±1 s around the policy change)
# and after; ROUNDS runs (default 3), each on a fresh stack.
#
# Then the policy propagation figure: time from a policy PUT to the first
# request served by the new version, through the gateway and through Orders
# (median of 20; crates/shopfast/tests/traffic.rs).
#
#   scripts/bench-bluegreen.sh
#   BENCH_RATE=1500 ROUNDS=1 scripts/bench-bluegreen.sh
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${ROUNDS:-3}
export BENCH_RATE=${BENCH_RATE:-1000} BENCH_ORDERS_EVERY=${BENCH_ORDERS_EVERY:-20}
cargo build --release -q -p shopfast --tests
for round in $(seq 1 "$ROUNDS"); do
  echo "== round $round of $ROUNDS: $BENCH_RATE req/s"
  cargo test --release -q -p shopfast --test deploy -- --ignored --exact bench_blue_green_under_load --nocapture 2>&1 \
    | grep -E '^(rate|window|switch|rollback|the whole run|test result)' || { echo "round $round failed"; exit 1; }
done
echo "== policy propagation (PUT → first request served by the new version; median of 20)"
cargo test --release -q -p shopfast --test traffic -- --exact a_policy_change_reaches_the_gateway_and_orders_within_a_second --nocapture 2>&1 \
  | grep -iE 'median|test result' || true
