//! Orders under fire. Concurrent clients place orders through the gateway,
//! as clients do — each retrying up to five times with the same
//! Idempotency-Key, asking again while an order is accepted (202) — while
//! Orders, Payments and Products are killed with SIGKILL and restarted at
//! random moments (same ports, same databases). It reports availability:
//! the share of valid-card orders that end paid (at least
//! `CRASH_MIN_PAID_SHARE`, default 95 %), the attempts refused by breakers,
//! and the gap from each restarted service being ready to the next order
//! served. Afterwards, within a bound, the invariants are read from each
//! service's own database:
//!
//! - every saga is terminal, none needs a person;
//! - per product, available + reserved + sold is what it was, nothing is
//!   left reserved, and the units sold are exactly those of paid orders;
//! - no order has two charges; a paid order has one, of its total, not
//!   refunded; a cancelled order that was charged is refunded in full; no
//!   payment is left in flight;
//! - no idempotency key made two orders, and every order a client was told is
//!   paid is paid; no saga failed for a card lost in a restart; no order was
//!   refused (409) for the platform's own trouble (a breaker, a restart).
//!
//! It prints the counts and fails on any violation. `CRASH_ORDERS` (default
//! 80 here; `scripts/crash-orders.sh` runs 300 on both databases),
//! `CRASH_CONCURRENCY` (default 16), `CRASH_RATE` (orders a second, default
//! 4, so the chaos overlaps the whole run), `CRASH_KILL_EVERY_MS` (the pause between
//! kills, a random draw in `min..max`, default `1500..5000`), `CRASH_SEED`
//! (printed; the same seed replays the same orders and kills), `SHOPFAST_BIN`
//! (run another build, e.g. a baseline, under the same chaos).
#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

mod support;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use contracts::products::v1 as products_pb;
use contracts::products::v1::product_service_client::ProductServiceClient;
use contracts::users::v1 as users_pb;
use contracts::users::v1::user_service_client::UserServiceClient;
use kit::testing::TestDb;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};
use sqlx::Row;
use support::Proc;
use tokio::sync::Mutex;

const VICTIMS: [&str; 3] = ["orders", "payments", "products"];
const SERVICES: [&str; 4] = ["users", "products", "payments", "orders"];
/// Test cards and how often clients use them: approve, decline, transient, slow.
const CARDS: [(&str, u32); 4] =
    [("4242424242424242", 80), ("4000000000009995", 8), ("4000000000000119", 7), ("4000000000000077", 5)];
/// Cards that should end paid (the others decline, or always fail "try again").
const VALID_LAST4: [&str; 2] = ["4242", "0077"];
/// Attempts a client makes with one key before it gives up (as the outside test did).
const MAX_ATTEMPTS: u32 = 5;
const API_KEY: &str = "crash-key";

fn env_number(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn free_addr() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().to_string()
}

/// How one process is started, so it can be started again the same way.
struct Launch {
    args: Vec<String>,
    database_url: String,
}

impl Launch {
    /// The first start. Its ports were free when picked, but another process
    /// (the other database's run, in parallel) may take one before the
    /// service binds it: then it picks new ones, which restarts keep.
    fn start_on_free_ports(&mut self) -> Proc {
        for _ in 0..5 {
            let args: Vec<&str> = self.args.iter().map(String::as_str).collect();
            if let Some(proc) = Proc::try_start(&args) {
                return proc;
            }
            for flag in ["--grpc-addr", "--admin-addr", "--addr"] {
                if let Some(at) = self.args.iter().position(|a| a == flag) {
                    self.args[at + 1] = free_addr();
                }
            }
        }
        panic!("{:?} did not start on five sets of free ports", self.args);
    }

    fn addr(&self, flag: &str) -> String {
        let at = self.args.iter().position(|a| a == flag).unwrap();
        self.args[at + 1].clone()
    }
}

/// The config the processes share: the token secret Users signs with and
/// the gateway checks, and an API key on a tier the load does not exceed.
fn write_config(dir: &std::path::Path) -> String {
    let path = dir.join("shopfast.toml");
    let text = format!(
        r#"
[gateway]

[gateway.tiers.chaos]
per_minute = 600000
burst = 20000
monthly_quota = 0

[gateway.api_keys.{API_KEY}]
client = "crash-test"
tier = "chaos"
"#
    );
    std::fs::write(&path, text).unwrap();
    path.to_str().unwrap().to_string()
}

/// When a victim was killed and when its new process was ready.
#[derive(Debug, Clone, Copy)]
struct Restart {
    victim: &'static str,
    killed: Instant,
    ready: Instant,
}

struct Stack {
    _registry: Mutex<Proc>,
    launches: HashMap<&'static str, Launch>,
    running: Mutex<HashMap<&'static str, Proc>>,
    gateway: String,
    _dbs: Vec<TestDb>,
    _dir: tempfile::TempDir,
}

impl Stack {
    /// Registry, the four services and the gateway; PostgreSQL when `postgres`.
    async fn start(postgres: bool) -> Option<Self> {
        let dir = tempfile::tempdir().unwrap();
        let config = write_config(dir.path());
        let registry = Proc::registry("127.0.0.1:0", 500, 3_000, 1_000);
        let registry_url = registry.url();
        let mut dbs = Vec::new();
        let mut launches = HashMap::new();
        for name in SERVICES {
            let database_url = if postgres {
                let db = TestDb::postgres().await?;
                let url = db.url.clone();
                dbs.push(db);
                url
            } else {
                kit::db::sqlite_file_url(&dir.path().join(format!("{name}.db")))
            };
            let args = vec![
                name.to_string(),
                "--grpc-addr".into(),
                free_addr(),
                "--admin-addr".into(),
                free_addr(),
                "--database-url".into(),
                database_url.clone(),
                "--registry-url".into(),
                registry_url.clone(),
                "--config".into(),
                config.clone(),
            ];
            launches.insert(name, Launch { args, database_url });
        }
        let gateway_dir = dir.path().join("gateway");
        std::fs::create_dir_all(&gateway_dir).unwrap();
        let gateway_args = vec![
            "gateway".to_string(),
            "--addr".into(),
            free_addr(),
            "--registry-url".into(),
            registry_url.clone(),
            "--config".into(),
            config,
            "--data-dir".into(),
            gateway_dir.to_str().unwrap().to_string(),
        ];
        launches.insert("gateway", Launch { args: gateway_args, database_url: String::new() });
        let mut running = HashMap::new();
        for name in SERVICES.into_iter().chain(["gateway"]) {
            let launch: &mut Launch = launches.get_mut(name).unwrap();
            running.insert(name, launch.start_on_free_ports());
        }
        let gateway = format!("http://{}", launches["gateway"].addr("--addr"));
        Some(Self {
            _registry: Mutex::new(registry),
            launches,
            running: Mutex::new(running),
            gateway,
            _dbs: dbs,
            _dir: dir,
        })
    }

    fn grpc_url(&self, name: &str) -> String {
        format!("http://{}", self.launches[name].addr("--grpc-addr"))
    }

    /// SIGKILL, a pause, and the same process again; when it was killed and ready.
    async fn crash_and_restart(self: &Arc<Self>, name: &'static str, pause: Duration) -> Restart {
        let mut running = self.running.lock().await;
        let killed = Instant::now();
        if let Some(proc) = running.remove(name) {
            proc.kill9();
        }
        tokio::time::sleep(pause).await;
        let args = self.launches[name].args.clone();
        let restarted = tokio::task::spawn_blocking(move || {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            Proc::start(&args)
        })
        .await
        .unwrap();
        running.insert(name, restarted);
        Restart { victim: name, killed, ready: Instant::now() }
    }

    async fn pool(&self, name: &str) -> sqlx::AnyPool {
        sqlx::any::install_default_drivers();
        sqlx::any::AnyPoolOptions::new().max_connections(2).connect(&self.launches[name].database_url).await.unwrap()
    }
}

/// What a client was finally told about its order.
#[derive(Debug, Clone, PartialEq)]
enum Told {
    Paid(String),
    /// Refused (409): the body's `reason`, and its message for the report.
    Refused {
        reason: String,
        message: String,
    },
    /// Gave up after its attempts: the outcome is the system's to settle.
    Unknown,
}

/// One client's order: what it was told, and every answer on the way.
#[derive(Debug)]
struct Placed {
    told: Told,
    card: &'static str,
    attempts: u32,
    /// Attempts refused by a circuit breaker (ours, anywhere on the path).
    breaker_refusals: u32,
    /// (sent, answered, status) of every request; 0 for no answer.
    answers: Vec<(Instant, Instant, u16)>,
}

/// A client that retries with the same key — on a 5xx, no answer, or "in
/// progress" — up to `MAX_ATTEMPTS` times, waiting as Retry-After says; an
/// accepted (202) order is asked about again (same key) until it is final,
/// which is not a new attempt.
async fn place_order(
    http: reqwest::Client,
    gateway: String,
    token: String,
    key: String,
    order: Value,
    card: &'static str,
) -> Placed {
    let mut placed = Placed { told: Told::Unknown, card, attempts: 0, breaker_refusals: 0, answers: Vec::new() };
    let started = Instant::now();
    while placed.attempts < MAX_ATTEMPTS && started.elapsed() < Duration::from_secs(180) {
        let sent = Instant::now();
        let response = http
            .post(format!("{gateway}/v1/orders"))
            .header("x-api-key", API_KEY)
            .header("idempotency-key", &key)
            .bearer_auth(&token)
            .json(&order)
            .timeout(Duration::from_secs(30))
            .send()
            .await;
        let (status, retry_after, body) = match response {
            Ok(r) => {
                let status = r.status().as_u16();
                let retry_after = r.headers().get("retry-after").and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
                (status, retry_after, r.json::<Value>().await.unwrap_or_default())
            }
            Err(_) => (0, None, Value::Null),
        };
        placed.answers.push((sent, Instant::now(), status));
        let reason = body["reason"].as_str().unwrap_or_default().to_string();
        match status {
            // Created (a build from before 201 answers 200).
            200 | 201 => {
                placed.told = Told::Paid(body["id"].as_str().unwrap().to_string());
                return placed;
            }
            202 => {
                tokio::time::sleep(Duration::from_millis(300)).await;
                continue;
            }
            409 if reason != "IDEMPOTENCY_IN_PROGRESS" => {
                let message = body["message"].as_str().unwrap_or_default().to_string();
                placed.told = Told::Refused { reason, message };
                return placed;
            }
            400 | 401 | 403 | 404 | 422 => panic!("a well-formed order was refused as bad input: {status} {body}"),
            _ => {}
        }
        placed.attempts += 1;
        if reason == "CIRCUIT_OPEN" {
            placed.breaker_refusals += 1;
        }
        let pause = retry_after.map_or(Duration::ZERO, Duration::from_secs)
            + Duration::from_millis(rand::rng().random_range(200..1_000));
        tokio::time::sleep(pause).await;
    }
    placed
}

/// An order of one or two lines, paid with a card drawn by weight.
fn order_request(rng: &mut StdRng, products: &[String]) -> (Value, &'static str) {
    let mut chosen: Vec<&String> = products.iter().collect();
    let lines = rng.random_range(1..=2);
    let mut items = Vec::new();
    for _ in 0..lines {
        let at = rng.random_range(0..chosen.len());
        let product_id = chosen.remove(at).clone();
        items.push(json!({ "productId": product_id, "quantity": rng.random_range(1..=3).to_string() }));
    }
    let mut pick = rng.random_range(0..CARDS.iter().map(|c| c.1).sum::<u32>());
    let mut card = CARDS[0].0;
    for (number, weight) in CARDS {
        if pick < weight {
            card = number;
            break;
        }
        pick -= weight;
    }
    let order = json!({
        "items": items,
        "paymentMethod": { "cardNumber": card, "expiryMonth": 12, "expiryYear": 2040, "cvc": "123" },
        "shippingAddress": { "line1": "1 Crash Lane", "city": "Springfield", "countryCode": "US" },
    });
    (order, card)
}

/// `SELECT <name>, COUNT(*) AS n … GROUP BY <name>` as a map.
async fn counts_by(pool: &sqlx::AnyPool, sql: &'static str) -> BTreeMap<String, i64> {
    let rows = sqlx::query(sql).fetch_all(pool).await.unwrap();
    rows.iter().map(|r| (r.get::<String, _>(0), r.get::<i64, _>("n"))).collect()
}

/// Test-built SQL over the test's own ids.
async fn count(pool: &sqlx::AnyPool, sql: &str) -> i64 {
    sqlx::query(sqlx::AssertSqlSafe(sql.to_string())).fetch_one(pool).await.unwrap().try_get::<i64, _>(0).unwrap()
}

const PAID_STATES: &str = "('PAID', 'SHIPPED', 'DELIVERED')";

/// Cancelled orders (in the Orders database) whose charge (in the Payments
/// database) is not refunded in full.
async fn unrefunded_charges_of_cancelled(orders_db: &sqlx::AnyPool, payments_db: &sqlx::AnyPool) -> usize {
    let cancelled: HashSet<String> = sqlx::query("SELECT id FROM orders WHERE status = 'CANCELLED'")
        .fetch_all(orders_db)
        .await
        .unwrap()
        .iter()
        .map(|r| r.get::<String, _>("id"))
        .collect();
    sqlx::query("SELECT order_id FROM payments WHERE status IN ('COMPLETED', 'REFUNDING')")
        .fetch_all(payments_db)
        .await
        .unwrap()
        .iter()
        .filter(|r| cancelled.contains(&r.get::<String, _>("order_id")))
        .count()
}

async fn orders_survive_kill_9(postgres: bool) {
    let total = env_number("CRASH_ORDERS", 80);
    let concurrency = env_number("CRASH_CONCURRENCY", 16);
    // Orders arrive at a steady rate, so the chaos overlaps the whole run.
    let rate = env_number("CRASH_RATE", 4).max(1) as f64;
    let kill_every = std::env::var("CRASH_KILL_EVERY_MS").unwrap_or_else(|_| "1500..5000".into());
    let (kill_min, kill_max) = kill_every
        .split_once("..")
        .and_then(|(a, b)| Some((a.parse::<u64>().ok()?, b.parse::<u64>().ok()?)))
        .filter(|(a, b)| a < b)
        .expect("CRASH_KILL_EVERY_MS is min..max in milliseconds");
    let min_paid_share: f64 = std::env::var("CRASH_MIN_PAID_SHARE").ok().and_then(|v| v.parse().ok()).unwrap_or(0.95);
    let seed: u64 = std::env::var("CRASH_SEED").ok().and_then(|v| v.parse().ok()).unwrap_or_else(rand::random);
    println!("crash test seed: CRASH_SEED={seed}");
    let Some(stack) = Stack::start(postgres).await else { return };
    let stack = Arc::new(stack);
    let backend = if postgres { "postgresql" } else { "sqlite" };

    // Customers, signed in, and a small, contended catalog.
    let mut users = UserServiceClient::connect(stack.grpc_url("users")).await.unwrap();
    let mut tokens = Vec::new();
    for i in 0..10 {
        let (email, password) = (format!("crash{i}@example.com"), "crash test password 1".to_string());
        let request = users_pb::CreateUserRequest {
            email: email.clone(),
            password: password.clone(),
            name: format!("Crash {i}"),
            address: None,
        };
        users.create_user(request).await.unwrap();
        let login = users.authenticate_user(users_pb::AuthenticateUserRequest { email, password }).await.unwrap();
        tokens.push(login.into_inner().access_token);
    }
    let mut products = ProductServiceClient::connect(stack.grpc_url("products")).await.unwrap();
    let stock_each = (total as i64 * 3 / 5).max(10);
    let mut product_ids = Vec::new();
    for i in 0..4 {
        let product = products_pb::Product {
            sku: format!("CRASH-{i}"),
            name: format!("Crash item {i}"),
            category: "test".into(),
            price: Some(contracts::common::v1::Money { currency_code: "USD".into(), minor_units: 1_000 + 250 * i }),
            stock: stock_each,
            ..Default::default()
        };
        let created = products.create_product(products_pb::CreateProductRequest { product: Some(product) }).await;
        product_ids.push(created.unwrap().into_inner().id);
    }

    // Chaos while the orders come in.
    let done = Arc::new(AtomicBool::new(false));
    let chaos = {
        let (stack, done) = (stack.clone(), done.clone());
        tokio::spawn(async move {
            let mut rng = StdRng::seed_from_u64(seed ^ 0x5eed);
            let mut restarts = Vec::new();
            while !done.load(Ordering::SeqCst) {
                let wait = Duration::from_millis(rng.random_range(kill_min..kill_max));
                let victim = VICTIMS[rng.random_range(0..VICTIMS.len())];
                let pause = Duration::from_millis(rng.random_range(50..600));
                tokio::time::sleep(wait).await;
                if done.load(Ordering::SeqCst) {
                    break;
                }
                restarts.push(stack.crash_and_restart(victim, pause).await);
            }
            restarts
        })
    };
    let http = reqwest::Client::new();
    let mut rng = StdRng::seed_from_u64(seed);
    let requests: Vec<(Value, &'static str)> = (0..total).map(|_| order_request(&mut rng, &product_ids)).collect();
    let started = Instant::now();
    let placed: Vec<(String, Placed)> = {
        use futures::StreamExt;
        futures::stream::iter(requests.into_iter().enumerate())
            .map(|(i, (order, card))| {
                let (http, gateway) = (http.clone(), stack.gateway.clone());
                let token = tokens[i % tokens.len()].clone();
                let key = format!("crash-order-{i}");
                let due = tokio::time::Instant::from_std(started) + Duration::from_secs_f64(i as f64 / rate);
                async move {
                    tokio::time::sleep_until(due).await;
                    (key.clone(), place_order(http, gateway, token, key, order, card).await)
                }
            })
            .buffer_unordered(concurrency)
            .collect()
            .await
    };
    let placing = started.elapsed();
    done.store(true, Ordering::SeqCst);
    let restarts = chaos.await.unwrap();
    let told: Vec<(String, Told)> = placed.iter().map(|(key, p)| (key.clone(), p.told.clone())).collect();

    // Everything settles on its own within a bound.
    let (orders_db, products_db, payments_db) =
        (stack.pool("orders").await, stack.pool("products").await, stack.pool("payments").await);
    let settle_started = Instant::now();
    let product_list = product_ids.iter().map(|id| format!("'{id}'")).collect::<Vec<_>>().join(", ");
    loop {
        let open_sagas =
            count(&orders_db, "SELECT COUNT(*) FROM sagas WHERE state IN ('RUNNING', 'COMPENSATING')").await;
        let in_flight = count(
            &payments_db,
            "SELECT COUNT(*) FROM payments WHERE status IN ('PENDING', 'AUTHORIZED', 'PROCESSING', 'REFUNDING')",
        )
        .await;
        let reserved = count(
            &products_db,
            &format!("SELECT CAST(COALESCE(SUM(reserved), 0) AS BIGINT) FROM products WHERE id IN ({product_list})"),
        )
        .await;
        let kept = unrefunded_charges_of_cancelled(&orders_db, &payments_db).await;
        if open_sagas == 0 && in_flight == 0 && reserved == 0 && kept == 0 {
            break;
        }
        if settle_started.elapsed() > Duration::from_secs(120) {
            eprintln!(
                "not settled after 120 s: {open_sagas} open sagas, {in_flight} payments in flight, {reserved} units \
                 reserved, {kept} cancelled orders still charged"
            );
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let settling = settle_started.elapsed();

    // The invariants, from the services' own databases.
    let mut violations: Vec<String> = Vec::new();
    let mut check = |ok: bool, what: String| {
        if !ok {
            violations.push(what);
        }
    };
    let saga_states = counts_by(&orders_db, "SELECT state, COUNT(*) AS n FROM sagas GROUP BY state").await;
    let open = saga_states.get("RUNNING").unwrap_or(&0) + saga_states.get("COMPENSATING").unwrap_or(&0);
    check(open == 0, format!("{open} sagas not terminal"));
    let manual = count(&orders_db, "SELECT COUNT(*) FROM sagas WHERE manual_intervention = 1").await;
    for row in
        sqlx::query("SELECT record FROM sagas WHERE manual_intervention = 1").fetch_all(&orders_db).await.unwrap()
    {
        let record: serde_json::Value = serde_json::from_str(&row.get::<String, _>("record")).unwrap();
        let failed: Vec<String> = record["steps"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|s| s["status"] == "COMPENSATION_FAILED")
            .map(|s| format!("{}: {}", s["name"], s["error"]))
            .collect();
        eprintln!("needs a person: saga {} ({}): {failed:?}", record["id"], record["failure"]);
    }
    // Why refused sagas were refused: the step that failed for good and the gist.
    let mut refusals: BTreeMap<String, i64> = BTreeMap::new();
    for row in sqlx::query("SELECT record FROM sagas WHERE state <> 'COMPLETED'").fetch_all(&orders_db).await.unwrap() {
        let record: serde_json::Value = serde_json::from_str(&row.get::<String, _>("record")).unwrap();
        let failure = record["failure"].as_str().unwrap_or("none");
        let gist = if record["failure_reason"] == "INSUFFICIENT_STOCK" {
            "out of stock"
        } else if record["failure_reason"] == "CARD_DECLINED" {
            "declined"
        } else if record["failure_reason"] == "PAYMENT_PROCESSING_FAILED" {
            "processor trouble, attempts spent"
        } else if failure.contains("no payment method") || failure.contains("lost in a restart") {
            "card lost"
        } else if record["failure_retryable"] == true {
            "platform unavailable past the budget"
        } else {
            "other"
        };
        check(gist != "card lost", format!("saga {} failed for a lost card: {failure}", record["id"]));
        let step = failure.split(':').next().unwrap_or("?");
        *refusals.entry(format!("{step} ({gist})")).or_default() += 1;
    }
    check(manual == 0, format!("{manual} sagas need manual intervention"));
    let order_states = counts_by(&orders_db, "SELECT status, COUNT(*) AS n FROM orders GROUP BY status").await;
    let orders_total: i64 = order_states.values().sum();
    check(orders_total <= total as i64, format!("{orders_total} orders from {total} idempotency keys"));
    let stuck = count(&orders_db, "SELECT COUNT(*) FROM orders WHERE status IN ('CREATED', 'RESERVED')").await;
    check(stuck == 0, format!("{stuck} orders left CREATED/RESERVED"));

    // Stock: conserved, nothing held, sold = what paid orders hold.
    let sold_by_orders: HashMap<String, i64> = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT i.product_id, CAST(SUM(i.quantity) AS BIGINT) AS units FROM order_items i JOIN orders o ON o.id = i.order_id \
         WHERE o.status IN {PAID_STATES} GROUP BY i.product_id"
    )))
    .fetch_all(&orders_db)
    .await
    .unwrap()
    .iter()
    .map(|r| (r.get::<String, _>("product_id"), r.get::<i64, _>("units")))
    .collect();
    let mut stock_lines = Vec::new();
    for id in &product_ids {
        let row = sqlx::query("SELECT stock, reserved, sold FROM products WHERE id = $1")
            .bind(id)
            .fetch_one(&products_db)
            .await
            .unwrap();
        let (stock, reserved, sold): (i64, i64, i64) = (row.get("stock"), row.get("reserved"), row.get("sold"));
        let available = stock - reserved;
        check(
            available + reserved + sold == stock_each,
            format!("product {id}: {available} + {reserved} + {sold} != {stock_each}"),
        );
        check(reserved == 0, format!("product {id}: {reserved} units still reserved"));
        let paid_units = sold_by_orders.get(id).copied().unwrap_or(0);
        check(sold == paid_units, format!("product {id}: {sold} sold but paid orders hold {paid_units}"));
        stock_lines.push(format!(
            "available {available} + reserved {reserved} + sold {sold} = {}",
            available + reserved + sold
        ));
    }

    // Money.
    let payment_states = counts_by(&payments_db, "SELECT status, COUNT(*) AS n FROM payments GROUP BY status").await;
    let charges: Vec<(String, String, i64, i64)> = sqlx::query(
        "SELECT order_id, status, amount_minor, refunded_minor FROM payments \
         WHERE status IN ('COMPLETED', 'REFUNDING', 'REFUNDED')",
    )
    .fetch_all(&payments_db)
    .await
    .unwrap()
    .iter()
    .map(|r| (r.get("order_id"), r.get("status"), r.get("amount_minor"), r.get("refunded_minor")))
    .collect();
    let mut charges_per_order: HashMap<&str, Vec<&(String, String, i64, i64)>> = HashMap::new();
    for charge in &charges {
        charges_per_order.entry(charge.0.as_str()).or_default().push(charge);
    }
    let double = charges_per_order.values().filter(|c| c.len() > 1).count();
    check(double == 0, format!("{double} orders charged twice"));
    let in_flight = payment_states
        .iter()
        .filter(|(s, _)| ["PENDING", "AUTHORIZED", "PROCESSING", "REFUNDING"].contains(&s.as_str()))
        .map(|(_, n)| n)
        .sum::<i64>();
    check(in_flight == 0, format!("{in_flight} payments left in flight"));
    let orders_rows: Vec<(String, String, i64)> = sqlx::query("SELECT id, status, total_minor FROM orders")
        .fetch_all(&orders_db)
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get("id"), r.get("status"), r.get("total_minor")))
        .collect();
    let order_ids: HashSet<&str> = orders_rows.iter().map(|o| o.0.as_str()).collect();
    let (mut charged_cancelled, mut refunded_cancelled) = (0, 0);
    for (id, status, total_minor) in &orders_rows {
        let order_charges = charges_per_order.get(id.as_str()).cloned().unwrap_or_default();
        if ["PAID", "SHIPPED", "DELIVERED"].contains(&status.as_str()) {
            let good = order_charges.len() == 1
                && order_charges[0].1 == "COMPLETED"
                && order_charges[0].2 == *total_minor
                && order_charges[0].3 == 0;
            check(good, format!("paid order {id} has charges {order_charges:?}, total {total_minor}"));
        } else if !order_charges.is_empty() {
            charged_cancelled += 1;
            let refunded = order_charges.iter().all(|c| c.1 == "REFUNDED" && c.3 == c.2);
            refunded_cancelled += i64::from(refunded);
            check(refunded, format!("{status} order {id} kept money: {order_charges:?}"));
        }
    }
    let orphan = charges.iter().filter(|c| !order_ids.contains(c.0.as_str()) && c.1 != "REFUNDED").count();
    check(orphan == 0, format!("{orphan} charges for orders that do not exist, not refunded"));

    // What clients were told.
    let told_paid: Vec<&String> =
        told.iter().filter_map(|(_, t)| if let Told::Paid(id) = t { Some(id) } else { None }).collect();
    let statuses: HashMap<&str, &str> = orders_rows.iter().map(|o| (o.0.as_str(), o.1.as_str())).collect();
    let lost = told_paid
        .iter()
        .filter(|id| !matches!(statuses.get(id.as_str()), Some(&"PAID" | &"SHIPPED" | &"DELIVERED")))
        .count();
    check(lost == 0, format!("{lost} orders a client was told are paid are not"));
    let refused = told.iter().filter(|(_, t)| matches!(t, Told::Refused { .. })).count();
    let unknown = told.iter().filter(|(_, t)| *t == Told::Unknown).count();
    // A refusal (409) is for the order's own reason, never the platform's trouble.
    for (key, told) in &told {
        if let Told::Refused { reason, message } = told {
            let business = ["INSUFFICIENT_STOCK", "CARD_DECLINED", "PAYMENT_PROCESSING_FAILED"];
            check(
                business.contains(&reason.as_str()),
                format!("{key} refused for the platform's trouble: {reason:?} {message}"),
            );
        }
    }

    // Availability: valid-card orders that ended paid (those refused for
    // stock excepted: a correct business answer), attempts refused by
    // breakers, and how soon orders were served again after each restart.
    let valid_card = |p: &Placed| VALID_LAST4.iter().any(|l| p.card.ends_with(l));
    let valid = placed.iter().filter(|(_, p)| valid_card(p)).count();
    let out_of_stock = placed
        .iter()
        .filter(|(_, p)| {
            valid_card(p) && matches!(&p.told, Told::Refused { reason, .. } if reason == "INSUFFICIENT_STOCK")
        })
        .count();
    let paid_valid: i64 = count(
        &payments_db,
        "SELECT COUNT(*) FROM payments WHERE status = 'COMPLETED' AND card_last4 IN ('4242', '0077')",
    )
    .await;
    let paid_share = paid_valid as f64 / (valid - out_of_stock).max(1) as f64;
    let attempts: u32 = placed.iter().map(|(_, p)| p.attempts.max(1)).sum();
    let breaker_refusals: u32 = placed.iter().map(|(_, p)| p.breaker_refusals).sum();
    let answers: Vec<(Instant, Instant, u16)> = placed.iter().flat_map(|(_, p)| p.answers.iter().copied()).collect();
    let mut gaps = Vec::new();
    for restart in &restarts {
        let served = answers.iter().filter(|(sent, _, status)| *sent >= restart.ready && [200, 201].contains(status));
        if let Some(done) = served.map(|(_, done, _)| *done).min() {
            gaps.push((restart.victim, restart.ready - restart.killed, done - restart.ready));
        }
    }
    let mut gap_only: Vec<Duration> = gaps.iter().map(|g| g.2).collect();
    gap_only.sort();
    let median_gap = gap_only.get(gap_only.len() / 2).copied().unwrap_or_default();
    let max_gap = gap_only.last().copied().unwrap_or_default();
    let mut kills: BTreeMap<&str, u32> = BTreeMap::new();
    for restart in &restarts {
        *kills.entry(restart.victim).or_default() += 1;
    }

    println!("\n== crash test on {backend}: {total} orders, {rate}/s, up to {concurrency} at once, seed {seed} ==");
    println!("kills (SIGKILL + restart, every {kill_min}..{kill_max} ms): {kills:?}");
    println!("placing took {placing:.1?}; settled {settling:.1?} after the last order");
    println!("clients told: paid {}, refused {refused}, gave up {unknown}", told_paid.len());
    println!(
        "availability: valid-card orders paid {paid_valid} of {} ({:.1} %; {out_of_stock} more refused for stock); \
         attempts {attempts}, refused by a breaker {breaker_refusals}; served again after a restart: median {median_gap:.1?}, \
         max {max_gap:.1?} ({} restarts measured)",
        valid - out_of_stock,
        paid_share * 100.0,
        gaps.len()
    );
    for (victim, down, gap) in &gaps {
        println!("  {victim}: down {down:.1?}, then the next order served {gap:.1?} after it was ready");
    }
    println!("sagas: {saga_states:?}; manual intervention {manual}");
    println!("refused at: {refusals:?}");
    println!("orders: {order_states:?}");
    println!(
        "payments: {payment_states:?}; orders charged twice {double}; cancelled orders charged {charged_cancelled}, refunded {refunded_cancelled}"
    );
    for (id, line) in product_ids.iter().zip(&stock_lines) {
        println!("product {id}: {line} (started with {stock_each})");
    }
    check(
        paid_share >= min_paid_share,
        format!(
            "only {:.1} % of valid-card orders paid (at least {:.0} % expected)",
            paid_share * 100.0,
            min_paid_share * 100.0
        ),
    );
    println!("violations: {}", violations.len());
    for v in &violations {
        println!("  VIOLATION: {v}");
    }
    assert!(told_paid.len() as i64 > 0, "no order went through at all");
    assert!(violations.is_empty(), "{} invariant violations (see above)", violations.len());
    drop(orders_db);
    drop(products_db);
    drop(payments_db);
    let stack = Arc::into_inner(stack).unwrap();
    for db in stack._dbs {
        db.cleanup().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orders_survive_kill_9_on_sqlite() {
    orders_survive_kill_9(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orders_survive_kill_9_on_postgresql() {
    orders_survive_kill_9(true).await;
}
