#!/usr/bin/env bash
# The compose stack, as a user runs it, checked end to end: images built
# (scripts/build-images.sh), certificates and secrets made (init.sh), the
# stack brought up with a profile (default, or postgres), every container
# waited for until healthy (the time from `up` to all-healthy is printed),
# a shop journey through the gateway (sign up, log in, browse, one order with
# a test card, read it back), then one service container crashed (its
# process killed with SIGKILL from the host, so the restart policy — not
# compose — brings it back) while orders go on, then everything torn down.
#
#   scripts/compose-smoke.sh [default|postgres|redis]    (SKIP_BUILD=1: use the images as they are)
set -euo pipefail
cd "$(dirname "$0")/.."
profile=${1:-default}
project=shopfast-ci-$profile
files=(-f deploy/compose/compose.yaml)
profiles=()
case "$profile" in
  default) ;;
  postgres)
    files+=(-f deploy/compose/compose.postgres.yaml)
    profiles=(--profile postgres)
    scripts/standin-images.sh postgres
    ;;
  redis)
    files+=(-f deploy/compose/compose.redis.yaml)
    profiles=(--profile redis)
    scripts/standin-images.sh redis
    ;;
  *) echo "profile: default, postgres or redis" >&2; exit 2 ;;
esac
compose() { docker-compose "${files[@]}" -p "$project" "${profiles[@]}" "$@"; }
[ -n "${SKIP_BUILD:-}" ] || scripts/build-images.sh
deploy/compose/init.sh
cleanup() {
  status=$?
  if [ $status -ne 0 ]; then
    echo "== compose logs (failed with $status)"
    compose ps || true
    compose logs --no-color --tail 40 || true
  fi
  compose down -v --remove-orphans >/dev/null 2>&1 || true
  exit $status
}
trap cleanup EXIT

started=$SECONDS
compose up -d --quiet-pull 2>&1 | grep -v "^Creating\|^Starting" || true
healthy_within() {
  local deadline=$((SECONDS + $1))
  while [ $SECONDS -lt $deadline ]; do
    local ids states
    mapfile -t ids < <(compose ps -q)
    states=$(docker inspect --format '{{.Name}} {{if .State.Health}}{{.State.Health.Status}}{{else}}{{.State.Status}}{{end}}' "${ids[@]}")
    if ! grep -qv ' healthy$' <<<"$states"; then return 0; fi
    sleep 1
  done
  echo "not healthy within $1 s:"; echo "$states"; return 1
}
healthy_within 180
echo "== $profile: $(compose ps -q | wc -l) containers healthy $((SECONDS - started)) s after up"

api_key=$(cat deploy/compose/.secrets/secrets/api_key)
python3 - "$api_key" <<'PY'
import json, sys, time, urllib.request, uuid
key, base = sys.argv[1], "http://127.0.0.1:8000"
def call(method, path, body=None, token=None, headers=None):
    request = urllib.request.Request(base + path, method=method, data=json.dumps(body).encode() if body is not None else None)
    request.add_header("x-api-key", key)
    request.add_header("content-type", "application/json")
    if token: request.add_header("authorization", f"Bearer {token}")
    for k, v in (headers or {}).items(): request.add_header(k, v)
    with urllib.request.urlopen(request, timeout=15) as response:
        return response.status, json.loads(response.read() or b"{}")
email = f"compose-{uuid.uuid4().hex[:8]}@test.invalid"
password = "a long enough password 1"
print("sign up", call("POST", "/v1/users", {"email": email, "password": password, "name": "Compose"})[0])
status, login = call("POST", "/v1/auth/login", {"email": email, "password": password})
token = login["accessToken"]; print("log in", status)
status, page = call("GET", "/v1/products?pageSize=5&inStockOnly=true", token=token)
product = page["products"][0]["id"]; print("browse", status, len(page["products"]), "products")
order = {"items": [{"productId": product, "quantity": "1"}],
         "paymentMethod": {"cardNumber": "4242424242424242", "expiryMonth": 12, "expiryYear": 2040, "cvc": "123"},
         "shippingAddress": {"line1": "1 Compose Way", "city": "Springfield", "countryCode": "US"}}
status, placed = call("POST", "/v1/orders", order, token=token, headers={"idempotency-key": uuid.uuid4().hex})
print("order", status, placed.get("status"))
assert status in (201, 202), placed
deadline = time.time() + 30
while True:
    status, read = call("GET", f"/v1/orders/{placed['id']}", token=token)
    if read.get("status") not in ("PENDING", "PENDING_PAYMENT", None) or time.time() > deadline: break
    time.sleep(0.5)
print("read back", status, read.get("status"))
assert status == 200 and read["id"] == placed["id"] and read.get("status") not in ("FAILED", "CANCELLED"), read
# Shipped and delivered by the fulfilment worker, through the queue.
deadline = time.time() + 60
while read.get("status") != "ORDER_STATUS_DELIVERED" and time.time() < deadline:
    time.sleep(1)
    status, read = call("GET", f"/v1/orders/{placed['id']}", token=token)
print("fulfilled through the queue", read.get("status"))
assert read.get("status") == "ORDER_STATUS_DELIVERED", read
PY

if [ "$profile" = postgres ]; then
  # Each service's tables are in its own PostgreSQL (nothing fell back to SQLite).
  for service in users products payments orders; do
    tables=$(compose exec -T "$service-db" psql -U shopfast -d "$service" -tAc \
      "select count(*) from information_schema.tables where table_schema = 'public'")
    [ "${tables:-0}" -gt 0 ] || { echo "no tables in $service's PostgreSQL"; exit 1; }
    echo "$service: $tables tables in its own PostgreSQL"
  done
fi

if [ "$profile" = redis ]; then
  # The gateway's limits are counted in Redis, not per gateway.
  curl -fsS http://127.0.0.1:8000/metrics | grep -q '^ratelimit_redis_up 1' \
    || { echo "the gateway does not count its limits in Redis"; exit 1; }
  echo "redis: the gateway's limits are counted in Redis ($(compose exec -T redis redis-cli dbsize | tr -d '\r') keys)"
  # And the order events went through Redis Streams.
  events=$(compose exec -T redis redis-cli -n 1 xlen orders.events | tr -d '\r')
  [ "${events:-0}" -gt 0 ] || { echo "no order events in Redis Streams"; exit 1; }
  echo "redis: $events order events in the orders.events stream"
fi

# A crash: products' process killed from the host; orders go on meanwhile.
victim=$(compose ps -q products)
orders_log=$(mktemp)
python3 - "$api_key" > "$orders_log" 2>&1 <<'PY' &
import json, sys, time, urllib.request, uuid
key, base = sys.argv[1], "http://127.0.0.1:8000"
def call(method, path, body=None, token=None):
    request = urllib.request.Request(base + path, method=method, data=json.dumps(body).encode() if body is not None else None)
    request.add_header("x-api-key", key); request.add_header("content-type", "application/json")
    request.add_header("idempotency-key", uuid.uuid4().hex)
    if token: request.add_header("authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=15) as response: return response.status, json.loads(response.read() or b"{}")
    except urllib.error.HTTPError as error: return error.code, {}
    except Exception: return 0, {}
email = f"crash-{uuid.uuid4().hex[:8]}@test.invalid"
call("POST", "/v1/users", {"email": email, "password": "a long enough password 1", "name": "Crash"})
token = call("POST", "/v1/auth/login", {"email": email, "password": "a long enough password 1"})[1]["accessToken"]
product = call("GET", "/v1/products?pageSize=5&inStockOnly=true", token=token)[1]["products"][0]["id"]
order = {"items": [{"productId": product, "quantity": "1"}],
         "paymentMethod": {"cardNumber": "4242424242424242", "expiryMonth": 12, "expiryYear": 2040, "cvc": "123"},
         "shippingAddress": {"line1": "1 Crash Way", "city": "Springfield", "countryCode": "US"}}
end, results = time.time() + 20, []
while time.time() < end:
    results.append(call("POST", "/v1/orders", order, token=token)[0]); time.sleep(0.1)
ok = sum(1 for s in results if s in (201, 202))
print(f"orders during the crash: {ok} of {len(results)} accepted; statuses {sorted(set(results))}")
PY
orders=$!
sleep 2
restarts_before=$(docker inspect --format '{{.RestartCount}}' "$victim")
crashed=$SECONDS
kill -9 "$(docker inspect --format '{{.State.Pid}}' "$victim")"
until [ "$(docker inspect --format '{{.RestartCount}}' "$victim")" -gt "$restarts_before" ]; do
  [ $((SECONDS - crashed)) -lt 30 ] || { echo "products was not restarted"; exit 1; }
  sleep 0.2
done
healthy_within 60
echo "== $profile: products crashed (SIGKILL), restarted by its restart policy and healthy again in $((SECONDS - crashed)) s"
wait "$orders"
cat "$orders_log"
accepted=$(sed -n 's/^orders during the crash: \([0-9]*\) of .*/\1/p' "$orders_log")
[ "${accepted:-0}" -gt 0 ] || { echo "no order went through during the crash"; exit 1; }
echo "== $profile: compose smoke passed in $((SECONDS - started)) s"
