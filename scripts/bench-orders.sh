#!/usr/bin/env bash
# Orders per second end to end, against the raw database commit rate of the
# same machine in the same run (the ceiling: every order is many commits across
# four databases — saga record saves, the order, its outbox event, the
# reservation, the payment and its attempts, idempotency keys).
#
# For each database (SQLite files, then PostgreSQL databases):
#   1. ceiling: CONCURRENCY writers committing one-row INSERTs for DURATION s,
#      through the services' own pool settings (kit::db);
#   2. `shopfast up` (release build, every service its own process), and
#      CONCURRENCY clients POSTing /v1/orders through the gateway for DURATION s
#      (one unit of a random in-stock product, approved card, fresh
#      Idempotency-Key, user token, API key on a tier with no effective limit).
# On PostgreSQL it also counts the transactions the services committed per order
# (pg_stat_database.xact_commit, reads included).
#
#   scripts/bench-orders.sh                      # DURATION=20 CONCURRENCY=16, both databases
#   DBS=sqlite DURATION=10 scripts/bench-orders.sh
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION=${DURATION:-20}
CONCURRENCY=${CONCURRENCY:-16}
DBS=${DBS:-sqlite postgresql}
PG=${PG:-postgres://postgres@127.0.0.1:5432}

cargo build -q --release -p shopfast --bin shopfast --example bench_orders
bin=target/release/shopfast
bench=target/release/examples/bench_orders
work=$(mktemp -d)
up_pid=""
cleanup() {
  [ -n "$up_pid" ] && kill -INT "$up_pid" 2>/dev/null && wait "$up_pid" 2>/dev/null
  rm -rf "$work"
}
trap cleanup EXIT

cat > "$work/bench.toml" <<'TOML'
[gateway.tiers.professional]
per_minute = 100000000
burst = 100000000
monthly_quota = 0
TOML

pg_commits() { # prefix: transactions committed in the four service databases
  psql "$PG/postgres" -Atc "SELECT COALESCE(SUM(xact_commit), 0) FROM pg_stat_database WHERE datname IN \
    ('$1_users', '$1_products', '$1_orders', '$1_payments')"
}

for db in $DBS; do
  data="$work/$db"; mkdir -p "$data"
  unset SHOPFAST_USERS__DATABASE_URL SHOPFAST_PRODUCTS__DATABASE_URL SHOPFAST_ORDERS__DATABASE_URL SHOPFAST_PAYMENTS__DATABASE_URL
  if [ "$db" = postgresql ]; then
    prefix="bench_orders_$$"
    export SHOPFAST_USERS__DATABASE_URL="$PG/${prefix}_users" SHOPFAST_PRODUCTS__DATABASE_URL="$PG/${prefix}_products" \
      SHOPFAST_ORDERS__DATABASE_URL="$PG/${prefix}_orders" SHOPFAST_PAYMENTS__DATABASE_URL="$PG/${prefix}_payments"
    ceiling_url="$PG/${prefix}_ceiling"
  else
    ceiling_url="sqlite://$data/ceiling.db?mode=rwc"
  fi
  commits=$($bench commits "$ceiling_url" --seconds "$DURATION" --concurrency "$CONCURRENCY")

  SHOPFAST_CONFIG="$work/bench.toml" $bin up --ephemeral --quiet --data-dir "$data" > "$data/up.out" 2>&1 &
  up_pid=$!
  for _ in $(seq 1 600); do grep -q '^Gateway: ' "$data/up.out" && break; sleep 0.1; done
  line=$(grep '^Gateway: ' "$data/up.out") || { cat "$data/up.out"; exit 1; }
  gateway=$(echo "$line" | awk '{print $2}')
  key=$(echo "$line" | sed 's/.*admin): //')
  before=0; [ "$db" = postgresql ] && before=$(pg_commits "$prefix")
  orders=$($bench orders "$gateway" "$key" --seconds "$DURATION" --concurrency "$CONCURRENCY")
  after=0; [ "$db" = postgresql ] && { sleep 1.5; after=$(pg_commits "$prefix"); }
  kill -INT "$up_pid"; wait "$up_pid" 2>/dev/null || true; up_pid=""
  if [ "$db" = postgresql ]; then
    for name in users products orders payments ceiling; do dropdb -h 127.0.0.1 -U postgres --if-exists --force "${prefix}_$name"; done
  fi
  echo "$db $commits $orders $before $after" >> "$work/results"
done

python3 - "$work/results" "$DURATION" "$CONCURRENCY" <<'PY'
import json, sys
duration, concurrency = sys.argv[2], sys.argv[3]
print(f"\nOrders end to end through the gateway vs raw commits, {concurrency} clients, {duration} s each\n")
print(f"{'database':<12}{'raw commits/s':>15}{'orders/s':>10}{'ratio':>8}{'p50 ms':>9}{'p99 ms':>9}{'refused':>9}{'failed':>8}{'txns/order':>12}")
for line in open(sys.argv[1]):
    db, rest = line.split(" ", 1)
    decoder = json.JSONDecoder()
    commits, end = decoder.raw_decode(rest)
    orders, end2 = decoder.raw_decode(rest[end:].lstrip())
    before, after = rest[end:].lstrip()[end2:].split()
    attempted = orders["paid"] + orders["refused"]
    per_order = f"{(int(after) - int(before)) / attempted:.0f}" if db == "postgresql" and attempted else "-"
    print(f"{db:<12}{commits['commits_per_s']:>15.0f}{orders['orders_per_s']:>10.1f}"
          f"{commits['commits_per_s'] / max(orders['orders_per_s'], 1e-9):>8.0f}{orders['p50_ms']:>9.1f}{orders['p99_ms']:>9.1f}"
          f"{orders['refused']:>9}{orders['failed']:>8}{per_order:>12}")
print("\nratio = raw commits per second / orders per second: the commit budget one order uses up")
PY
