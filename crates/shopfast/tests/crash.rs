//! Orders under fire. Concurrent clients place orders straight at the Orders
//! service while Orders, Payments and Products are killed with SIGKILL and
//! restarted at random moments (same ports, same databases). Afterwards,
//! within a bound, the invariants are read from each service's own database:
//!
//! - every saga is terminal, none needs a person;
//! - per product, available + reserved + sold is what it was, nothing is
//!   left reserved, and the units sold are exactly those of paid orders;
//! - no order has two charges; a paid order has one, of its total, not
//!   refunded; a cancelled order that was charged is refunded in full; no
//!   payment is left in flight;
//! - no idempotency key made two orders, and every order a client was told is
//!   paid is paid.
//!
//! It prints the counts and fails on any violation. `CRASH_ORDERS` (default
//! 80 here; `scripts/crash-orders.sh` runs 200 on both databases),
//! `CRASH_CONCURRENCY` (default 16).
#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

mod support;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use contracts::orders::v1 as orders_pb;
use contracts::orders::v1::order_service_client::OrderServiceClient;
use contracts::products::v1 as products_pb;
use contracts::products::v1::product_service_client::ProductServiceClient;
use contracts::users::v1 as users_pb;
use contracts::users::v1::user_service_client::UserServiceClient;
use kit::testing::TestDb;
use rand::Rng;
use sqlx::Row;
use support::Proc;
use tokio::sync::Mutex;
use tonic::Code;
use tonic::transport::Channel;

const VICTIMS: [&str; 3] = ["orders", "payments", "products"];
const SERVICES: [&str; 4] = ["users", "products", "payments", "orders"];
/// Test cards and how often clients use them: approve, decline, transient, slow.
const CARDS: [(&str, u32); 4] =
    [("4242424242424242", 80), ("4000000000009995", 8), ("4000000000000119", 7), ("4000000000000077", 5)];

fn env_number(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn free_addr() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().to_string()
}

/// How one service is started, so it can be started again the same way.
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
            for flag in ["--grpc-addr", "--admin-addr"] {
                let at = self.args.iter().position(|a| a == flag).unwrap();
                self.args[at + 1] = free_addr();
            }
        }
        panic!("{:?} did not start on five sets of free ports", self.args);
    }
}

struct Stack {
    _registry: Mutex<Proc>,
    launches: HashMap<&'static str, Launch>,
    running: Mutex<HashMap<&'static str, Proc>>,
    _dbs: Vec<TestDb>,
    _dir: tempfile::TempDir,
}

impl Stack {
    /// Registry plus the four services; PostgreSQL when `postgres`.
    async fn start(postgres: bool) -> Option<Self> {
        let dir = tempfile::tempdir().unwrap();
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
            ];
            launches.insert(name, Launch { args, database_url });
        }
        let mut running = HashMap::new();
        for name in SERVICES {
            let launch: &mut Launch = launches.get_mut(name).unwrap();
            running.insert(name, launch.start_on_free_ports());
        }
        Some(Self { _registry: Mutex::new(registry), launches, running: Mutex::new(running), _dbs: dbs, _dir: dir })
    }

    fn grpc_url(&self, name: &str) -> String {
        let args = &self.launches[name].args;
        let at = args.iter().position(|a| a == "--grpc-addr").unwrap();
        format!("http://{}", args[at + 1])
    }

    /// SIGKILL, a pause, and the same process again.
    async fn crash_and_restart(self: &Arc<Self>, name: &'static str, pause: Duration) {
        let mut running = self.running.lock().await;
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
    Refused,
    /// Gave up retrying: the outcome is the system's to settle.
    Unknown,
}

fn keyed<T>(message: T, user_id: &str, key: &str) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    let metadata = request.metadata_mut();
    metadata.insert("x-user-id", user_id.parse().unwrap());
    metadata.insert("x-client-id", "crash-test".parse().unwrap());
    metadata.insert("idempotency-key", key.parse().unwrap());
    request.set_timeout(Duration::from_secs(30));
    request
}

/// A client that retries with the same key until it hears a final answer or gives up.
async fn place_order(
    client: OrderServiceClient<Channel>,
    user_id: String,
    key: String,
    message: orders_pb::CreateOrderRequest,
) -> Told {
    let started = Instant::now();
    loop {
        let mut client = client.clone();
        match client.create_order(keyed(message.clone(), &user_id, &key)).await {
            // Created: paid (by now perhaps shipped, for a late retry).
            Ok(order) if order.metadata().get("x-http-code").is_some_and(|c| c == "201") => {
                return Told::Paid(order.into_inner().id);
            }
            Ok(pending) => {
                assert_eq!(pending.get_ref().status, orders_pb::OrderStatus::Pending as i32, "{pending:?}");
                assert_eq!(pending.metadata().get("x-http-code").unwrap(), "202");
                // Accepted: ask again (same key) until it is final.
                if started.elapsed() > Duration::from_secs(90) {
                    return Told::Unknown;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(status) if status.code() == Code::FailedPrecondition => return Told::Refused,
            Err(status) if matches!(status.code(), Code::InvalidArgument | Code::NotFound | Code::PermissionDenied) => {
                panic!("a well-formed order was refused as bad input: {status:?}")
            }
            Err(_) if started.elapsed() > Duration::from_secs(90) => return Told::Unknown,
            // Unavailable, aborted (in progress), cancelled, deadline: the same key again.
            Err(_) => tokio::time::sleep(Duration::from_millis(rand::rng().random_range(200..1_000))).await,
        }
    }
}

fn order_request(products: &[String]) -> orders_pb::CreateOrderRequest {
    let mut rng = rand::rng();
    let mut chosen: Vec<&String> = products.iter().collect();
    let lines = rng.random_range(1..=2);
    let mut items = Vec::new();
    for _ in 0..lines {
        let at = rng.random_range(0..chosen.len());
        let product_id = chosen.remove(at).clone();
        items.push(orders_pb::OrderItemRequest { product_id, quantity: rng.random_range(1..=3) });
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
    orders_pb::CreateOrderRequest {
        items,
        payment_method: Some(orders_pb::PaymentMethod {
            card_number: card.into(),
            expiry_month: 12,
            expiry_year: 2040,
            cvc: "123".into(),
        }),
        shipping_address: Some(contracts::common::v1::Address {
            line1: "1 Crash Lane".into(),
            city: "Springfield".into(),
            country_code: "US".into(),
            ..Default::default()
        }),
        ..Default::default()
    }
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
    let Some(stack) = Stack::start(postgres).await else { return };
    let stack = Arc::new(stack);
    let backend = if postgres { "postgresql" } else { "sqlite" };

    // Customers and a small, contended catalog.
    let mut users = UserServiceClient::connect(stack.grpc_url("users")).await.unwrap();
    let mut user_ids = Vec::new();
    for i in 0..10 {
        let request = users_pb::CreateUserRequest {
            email: format!("crash{i}@example.com"),
            password: "crash test password 1".into(),
            name: format!("Crash {i}"),
            address: None,
        };
        user_ids.push(users.create_user(request).await.unwrap().into_inner().id);
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
            let mut kills: BTreeMap<&str, u32> = BTreeMap::new();
            while !done.load(Ordering::SeqCst) {
                let (wait, victim, pause) = {
                    let mut rng = rand::rng();
                    let wait = Duration::from_millis(rng.random_range(400..2_000));
                    (
                        wait,
                        VICTIMS[rng.random_range(0..VICTIMS.len())],
                        Duration::from_millis(rng.random_range(50..600)),
                    )
                };
                tokio::time::sleep(wait).await;
                if done.load(Ordering::SeqCst) {
                    break;
                }
                stack.crash_and_restart(victim, pause).await;
                *kills.entry(victim).or_default() += 1;
            }
            kills
        })
    };
    let orders = OrderServiceClient::new(Channel::from_shared(stack.grpc_url("orders")).unwrap().connect_lazy());
    let started = Instant::now();
    let told: Vec<(String, Told)> = {
        use futures::StreamExt;
        futures::stream::iter(0..total)
            .map(|i| {
                let client = orders.clone();
                let user = user_ids[i % user_ids.len()].clone();
                let key = format!("crash-order-{i}");
                let message = order_request(&product_ids);
                async move { (key.clone(), place_order(client, user, key, message).await) }
            })
            .buffer_unordered(concurrency)
            .collect()
            .await
    };
    let placing = started.elapsed();
    done.store(true, Ordering::SeqCst);
    let kills = chaos.await.unwrap();

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
        let gist = if failure.contains("insufficient stock") {
            "out of stock"
        } else if failure.contains("card declined") {
            "declined"
        } else if failure.contains("lost in a restart") {
            "card lost in a restart"
        } else {
            "unavailable, retries spent"
        };
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
    let refused = told.iter().filter(|(_, t)| *t == Told::Refused).count();
    let unknown = told.iter().filter(|(_, t)| *t == Told::Unknown).count();

    println!("\n== crash test on {backend}: {total} orders, {concurrency} clients ==");
    println!("kills (SIGKILL + restart): {kills:?}");
    println!("placing took {placing:.1?}; settled {settling:.1?} after the last order");
    println!("clients told: paid {}, refused {refused}, gave up {unknown}", told_paid.len());
    println!("sagas: {saga_states:?}; manual intervention {manual}");
    println!("refused at: {refusals:?}");
    println!("orders: {order_states:?}");
    println!(
        "payments: {payment_states:?}; orders charged twice {double}; cancelled orders charged {charged_cancelled}, refunded {refunded_cancelled}"
    );
    for (id, line) in product_ids.iter().zip(&stock_lines) {
        println!("product {id}: {line} (started with {stock_each})");
    }
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
