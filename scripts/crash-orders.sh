#!/usr/bin/env bash
# The order crash test at full size: N orders (default 200) from 16 concurrent
# clients while Orders, Payments and Products are killed with SIGKILL and
# restarted at random moments, on SQLite and then on PostgreSQL. Each run
# prints the invariant counts (sagas, orders, payments, stock per product) and
# fails on any violation; see crates/shopfast/tests/crash.rs for the list.
#
#   scripts/crash-orders.sh                  # 200 orders, both databases
#   ORDERS=500 scripts/crash-orders.sh sqlite
#   CONCURRENCY=32 scripts/crash-orders.sh postgresql
set -euo pipefail
cd "$(dirname "$0")/.."
filter=${1:-orders_survive_kill_9}
case "$filter" in
  sqlite|postgresql) filter="orders_survive_kill_9_on_$filter" ;;
esac
# PostgreSQL must be there: a missing server is a failure, not a skip.
export CI=true
CRASH_ORDERS=${ORDERS:-200} CRASH_CONCURRENCY=${CONCURRENCY:-16} \
  cargo test -p shopfast --test crash "$filter" -- --nocapture --test-threads 1 2>&1 | grep -v '^{'
exit "${PIPESTATUS[0]}"
