#!/usr/bin/env bash
# The order crash test at full size: N orders (default 300) placed through
# the gateway at a steady rate by clients that retry up to 5 times with the
# same Idempotency-Key, while Orders, Payments and Products are killed with
# SIGKILL and restarted every few seconds, on SQLite and then on PostgreSQL.
# Each run prints its seed, the availability figures (valid-card orders paid,
# attempts refused by breakers, the gap from each restart being ready to the
# next order served) and the invariant counts (sagas, orders, payments, stock
# per product), and fails on any violation or on less than 95 % of valid-card
# orders paid; see crates/shopfast/tests/crash.rs for the list.
#
#   scripts/crash-orders.sh                          # 300 orders, both databases
#   ORDERS=500 RATE=8 scripts/crash-orders.sh sqlite
#   KILL_EVERY_MS=400..2000 scripts/crash-orders.sh  # harsher chaos
#   SEED=42 scripts/crash-orders.sh postgresql       # replay a run
#   SHOPFAST_BIN=/tmp/base/target/debug/shopfast MIN_PAID_SHARE=0 scripts/crash-orders.sh
#                                                    # the same chaos against another build
set -euo pipefail
cd "$(dirname "$0")/.."
filter=${1:-orders_survive_kill_9}
case "$filter" in
  sqlite|postgresql) filter="orders_survive_kill_9_on_$filter" ;;
esac
# PostgreSQL must be there: a missing server is a failure, not a skip.
export CI=true
export CRASH_ORDERS=${ORDERS:-300} CRASH_CONCURRENCY=${CONCURRENCY:-16} CRASH_RATE=${RATE:-4}
export CRASH_KILL_EVERY_MS=${KILL_EVERY_MS:-1500..5000} CRASH_MIN_PAID_SHARE=${MIN_PAID_SHARE:-0.95}
[ -n "${SEED:-}" ] && export CRASH_SEED=$SEED
cargo test -p shopfast --test crash "$filter" -- --nocapture --test-threads 1 2>&1 | grep -v '^{'
exit "${PIPESTATUS[0]}"
