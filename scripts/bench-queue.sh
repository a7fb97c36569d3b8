#!/usr/bin/env bash
# The asynchronous path's figures, in one run, against Redis itself as the ceiling.
#
#   1. ceiling: redis-benchmark's XADD and XREADGROUP rates on a private
#      redis-server (no persistence) on this machine — what the broker alone
#      does, with nothing behind a message;
#   2. pipeline (examples/bench_queue.rs, release build): EVENTS paid orders'
#      events waiting in Orders' outbox (SQLite); the relay publishes them
#      (outbox -> broker, events/s), then 1 and then 3 fulfilment workers
#      drain them (broker -> worker -> Orders' AdvanceFulfilment, a SQLite
#      commit per event; events/s until every order is SHIPPED). Both brokers
#      (Redis Streams, the embedded queue), ROUNDS rounds each, interleaved;
#      medians and the spread;
#   3. overload: paid orders written at RATE a second for DURATION seconds
#      while one worker (8 consumers) spends WORK_MS per event (capacity
#      8000/WORK_MS events/s): the backlog and the lag sampled every 500 ms,
#      and the time to drain once the writing stops.
#
#   scripts/bench-queue.sh                      # EVENTS=5000 ROUNDS=3 RATE=300 DURATION=10 WORK_MS=50
#   EVENTS=20000 ROUNDS=5 scripts/bench-queue.sh
#   BIN_DIR=/tmp/other/release scripts/bench-queue.sh   # another build's bench_queue (A/B)
set -euo pipefail
cd "$(dirname "$0")/.."
EVENTS=${EVENTS:-5000}
ROUNDS=${ROUNDS:-3}
RATE=${RATE:-300}
DURATION=${DURATION:-10}
WORK_MS=${WORK_MS:-50}

command -v redis-server > /dev/null && command -v redis-benchmark > /dev/null || {
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server redis-tools
}
if [ -z "${BIN_DIR:-}" ]; then cargo build -q --release -p shopfast --example bench_queue; fi
bench=${BIN_DIR:-target/release}/examples/bench_queue
work=$(mktemp -d)
redis_pid=""
cleanup() {
  [ -n "$redis_pid" ] && kill "$redis_pid" 2>/dev/null && wait "$redis_pid" 2>/dev/null
  rm -rf "$work"
}
trap cleanup EXIT

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
redis-server --port "$port" --bind 127.0.0.1 --save "" --appendonly no --dir "$work" > "$work/redis.log" 2>&1 & redis_pid=$!
for _ in $(seq 100); do redis-cli -p "$port" ping > /dev/null 2>&1 && break; sleep 0.05; done
url="redis://127.0.0.1:$port/0"

echo "== ceiling: redis-benchmark on this machine (16 clients, no pipelining)"
n=200000
xadd=$(redis-benchmark -p "$port" -n "$n" -c 16 -q XADD ceiling '*' key order-1 kind order.paid payload '{}' \
  | tr '\r' '\n' | sed -n 's/.*: \([0-9.]*\) requests per second.*/\1/p' | tail -1)
redis-cli -p "$port" XGROUP CREATE ceiling g 0 > /dev/null
xread=$(redis-benchmark -p "$port" -n "$n" -c 16 -q XREADGROUP GROUP g c COUNT 1 STREAMS ceiling '>' \
  | tr '\r' '\n' | sed -n 's/.*: \([0-9.]*\) requests per second.*/\1/p' | tail -1)
redis-cli -p "$port" DEL ceiling > /dev/null
echo "XADD $xadd/s, XREADGROUP (one entry each) $xread/s"

echo "== pipeline: $EVENTS events, $ROUNDS rounds"
: > "$work/pipeline.jsonl"
for round in $(seq "$ROUNDS"); do
  for broker in "$url" embedded; do
    for workers in 1 3; do
      line=$("$bench" pipeline "$broker" --events "$EVENTS" --workers "$workers" 2> "$work/bench.log" | tail -1)
      echo "$line" >> "$work/pipeline.jsonl"
      echo "round $round: $line"
    done
  done
done

echo "== overload: $RATE events/s for $DURATION s, one worker at $WORK_MS ms an event"
: > "$work/overload.jsonl"
for broker in "$url" embedded; do
  "$bench" overload "$broker" --rate "$RATE" --seconds "$DURATION" --work-ms "$WORK_MS" --workers 1 2> "$work/bench.log" \
    | tail -1 >> "$work/overload.jsonl"
done

python3 - "$work/pipeline.jsonl" "$work/overload.jsonl" "$xadd" "$xread" <<'PY'
import json, statistics, sys
runs = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
xadd, xread = float(sys.argv[3] or 0), float(sys.argv[4] or 0)
print(f"\nceiling (redis-benchmark): XADD {xadd:,.0f}/s, XREADGROUP {xread:,.0f}/s")
print(f"\n{'broker':<10} {'workers':>7} {'relay ev/s':>11} {'drain ev/s':>11} {'spread':>14} {'vs XREADGROUP':>14}")
for broker in ("redis", "embedded"):
    for workers in (1, 3):
        rs = [r for r in runs if r["broker"] == broker and r["workers"] == workers]
        if not rs:
            continue
        drain = [r["drain_per_sec"] for r in rs]
        relay = statistics.median(r["relay_per_sec"] for r in rs)
        med = statistics.median(drain)
        spread = f"{min(drain):,.0f}-{max(drain):,.0f}"
        ratio = f"{med / xread:.3f}" if xread else "-"
        print(f"{broker:<10} {workers:>7} {relay:>11,.0f} {med:>11,.0f} {spread:>14} {ratio:>14}")
print()
for line in open(sys.argv[2]):
    if not line.strip():
        continue
    r = json.loads(line)
    print(f"overload ({r['broker']}): {r['rate']} events/s for {r['seconds']} s into capacity ~{r['capacity_per_sec']:.0f}/s: "
          f"peak backlog {r['peak_backlog_messages']} messages, peak lag {r['peak_lag_secs']:.1f} s; "
          f"drained {r['drain_after_writing_secs']:.1f} s after the writing stopped (writing took {r['writing_secs']:.1f} s)")
PY
