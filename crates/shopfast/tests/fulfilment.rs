//! Fulfilment over the queue, under fire: orders placed through the gateway
//! while a fulfilment worker (one of two) is frozen with entries in hand and
//! then killed with SIGKILL — and, on Redis, while Redis itself is killed and
//! restarted empty (no persistence). Every paid order must reach DELIVERED,
//! each step made exactly once: counted from Orders' own records (one
//! `order.shipped` event per order, written in the transaction that shipped
//! it) and from its log (one "fulfilment step" line per order and step).
//! Both brokers, both databases: the embedded queue with SQLite, Redis
//! Streams with PostgreSQL.
#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

mod support;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use sqlx::Row;
use support::{Shopper, Up, child_pids, eventually, instances, signal};

/// Orders placed per run.
const ORDERS: usize = 40;

/// A Redis of the test's own (the shared one must not be killed under other
/// tests), without persistence: a restart loses everything, the worst case.
struct PrivateRedis {
    port: u16,
    child: Option<Child>,
}

impl PrivateRedis {
    fn start() -> Option<Self> {
        let port = std::net::TcpListener::bind("127.0.0.1:0").ok()?.local_addr().ok()?.port();
        let mut redis = Self { port, child: None };
        if !redis.launch() {
            assert!(!kit::testing::running_in_ci(), "redis-server is required in CI (apt install redis-server)");
            eprintln!("SKIPPED: redis-server not installed");
            return None;
        }
        Some(redis)
    }

    fn launch(&mut self) -> bool {
        let spawned = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn();
        let Ok(child) = spawned else { return false };
        self.child = Some(child);
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(10) {
            if std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("redis-server did not listen on {} within 10 s", self.port);
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Products with enough units for the run, round-robin.
async fn products_with_stock(shopper: &Shopper) -> Vec<String> {
    let page: Value = shopper
        .request(reqwest::Method::GET, "/v1/products?pageSize=100&inStockOnly=true")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let units = |p: &Value| p["available"].as_str().and_then(|s| s.parse::<i64>().ok()).unwrap_or(0);
    let ids: Vec<String> = page["products"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| units(p) >= 5)
        .filter_map(|p| p["id"].as_str().map(str::to_string))
        .collect();
    assert!(ids.len() * 5 >= ORDERS, "not enough stock for {ORDERS} orders");
    ids
}

/// Places an order; its id once paid (a 202 is polled until it is).
async fn place(shopper: &Shopper, product: &str, key: &str) -> Option<String> {
    let body = Shopper::order_of(product, "4242424242424242");
    for _ in 0..20 {
        let sent = shopper.request(reqwest::Method::POST, "/v1/orders").header("idempotency-key", key).json(&body);
        let Ok(response) = sent.send().await else { continue };
        let status = response.status();
        let order: Value = response.json().await.unwrap_or_default();
        match status.as_u16() {
            201 if order["status"] == "ORDER_STATUS_PAID" => return order["id"].as_str().map(str::to_string),
            200..=299 => {}
            409 => return None,
            _ => {}
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    panic!("order {key} was never paid");
}

/// Orders' records of fulfilment: status per order, and `order.shipped` events per order.
async fn orders_records(url: &str) -> (BTreeMap<String, String>, BTreeMap<String, i64>) {
    sqlx::any::install_default_drivers();
    let pool = sqlx::AnyPool::connect(url).await.unwrap();
    let statuses = sqlx::query("SELECT id, status FROM orders")
        .fetch_all(&pool)
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get::<String, _>("id"), r.get::<String, _>("status")))
        .collect();
    let shipped =
        sqlx::query("SELECT order_id, COUNT(*) AS n FROM outbox WHERE kind = 'order.shipped' GROUP BY order_id")
            .fetch_all(&pool)
            .await
            .unwrap()
            .iter()
            .map(|r| (r.get::<String, _>("order_id"), r.get::<i64, _>("n")))
            .collect();
    pool.close().await;
    (statuses, shipped)
}

/// "fulfilment step" lines in Orders' log, per (order, status reached).
fn steps_logged(data: &Path) -> BTreeMap<(String, String), usize> {
    let log = std::fs::read_to_string(data.join("logs/orders-1.log")).unwrap_or_default();
    let mut steps = BTreeMap::new();
    for line in log.lines().filter(|l| l.contains("fulfilment step")) {
        let Ok(entry) = serde_json::from_str::<Value>(line) else { continue };
        let field = |name: &str| {
            entry.get(name).or_else(|| entry["fields"].get(name)).and_then(Value::as_str).map(str::to_string)
        };
        if let (Some(order), Some(to)) = (field("order_id"), field("to")) {
            *steps.entry((order, to)).or_default() += 1;
        }
    }
    steps
}

/// Sum of a counter over every instance of `service`.
async fn counter(up: &Up, service: &str, name: &str) -> f64 {
    let mut total = 0.0;
    for instance in instances(up, service).await {
        let url = format!("http://{}/metrics", instance["admin_address"].as_str().unwrap_or_default());
        let Ok(response) = reqwest::get(url).await else { continue };
        let text = response.text().await.unwrap_or_default();
        total += text
            .lines()
            .filter(|l| l.starts_with(&format!("{name}{{")) || l.starts_with(&format!("{name} ")))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>();
    }
    total
}

async fn run(orders_db: &str, redis: Option<&mut PrivateRedis>) {
    let data = tempfile::tempdir().unwrap();
    let redis_url = redis.as_ref().map(|r| r.url());
    let mut flags = vec!["--no-loadgen", "--no-console", "--replicas", "fulfilment=2"];
    if let Some(url) = &redis_url {
        flags.extend(["--redis-url", url.as_str()]);
    }
    let env = [
        ("SHOPFAST_ORDERS__DATABASE_URL", orders_db),
        ("SHOPFAST_ORDERS__FULFILMENT__SHIP_AFTER_MS", "300"),
        ("SHOPFAST_ORDERS__FULFILMENT__DELIVER_AFTER_MS", "300"),
        ("SHOPFAST_FULFILMENT__CALL_TIMEOUT_MS", "1000"),
        ("SHOPFAST_FULFILMENT__CLAIM_IDLE_MS", "2000"),
        // Receives stay open this long: a worker frozen now is handed entries
        // for two seconds more, which it holds when it is killed.
        ("SHOPFAST_FULFILMENT__BLOCK_MS", "2000"),
    ];
    let up = Up::start(data.path(), &flags, &env);
    let shopper = Shopper::sign_up(&up.gateway, &up.api_key, "fulfilment@example.com").await;
    let products = products_with_stock(&shopper).await;

    let placing = {
        let shopper = shopper.clone();
        let products = products.clone();
        tokio::spawn(async move {
            let mut paid = Vec::new();
            for n in 0..ORDERS {
                let product = &products[n % products.len()];
                if let Some(id) = place(&shopper, product, &format!("fulfil-{n}")).await {
                    paid.push(id);
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            paid
        })
    };

    // A worker frozen with entries in hand, then killed: what it held is
    // claimed by the other after the idle time (`up` restarts it meanwhile).
    eventually(Duration::from_secs(30), "both workers taking entries", || async {
        child_pids(data.path(), "fulfilment").len() == 2
            && counter(&up, "fulfilment", "queue_processed_total").await >= 1.0
    })
    .await;
    let victim = child_pids(data.path(), "fulfilment");
    assert_eq!(victim.len(), 2, "two workers: {victim:?}");
    signal(victim[0], "-STOP");
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    signal(victim[0], "-KILL");
    signal(victim[0], "-CONT");
    if let Some(redis) = redis {
        // Redis dies and comes back empty: the stream, the group, the
        // pending entries and the epoch key are gone.
        tokio::time::sleep(Duration::from_millis(500)).await;
        redis.kill9();
        tokio::time::sleep(Duration::from_millis(700)).await;
        assert!(redis.launch(), "redis-server restarts");
    }
    let paid = placing.await.unwrap();
    assert!(paid.len() >= ORDERS * 9 / 10, "{} of {ORDERS} orders paid", paid.len());

    let within = Duration::from_secs(90);
    let took = eventually(within, "every paid order delivered", || async {
        let (statuses, _) = orders_records(orders_db).await;
        paid.iter().all(|id| statuses.get(id).map(String::as_str) == Some("DELIVERED"))
    })
    .await;
    let (statuses, shipped) = orders_records(orders_db).await;
    let steps = steps_logged(data.path());
    for id in &paid {
        assert_eq!(statuses[id], "DELIVERED");
        assert_eq!(shipped.get(id), Some(&1), "{id}: shipped exactly once");
        for to in ["SHIPPED", "DELIVERED"] {
            assert_eq!(steps.get(&(id.clone(), to.to_string())), Some(&1), "{id}: one step to {to}");
        }
    }
    let redelivered = counter(&up, "fulfilment", "queue_redeliveries_total").await;
    let republished = counter(&up, "orders", "queue_republished_total").await;
    let replayed = counter(&up, "fulfilment", "queue_processed_total").await;
    println!(
        "{} paid orders delivered (all within {took:?} of the last order); redeliveries {redelivered}, \
         republished {republished}, processed by the surviving workers {replayed}",
        paid.len()
    );
    assert!(redelivered >= 1.0, "the frozen worker's entries were delivered again");
    if redis_url.is_some() {
        assert!(republished >= 1.0, "what Redis lost was published again from the outbox");
    }
    up.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_worker_loses_nothing_on_the_embedded_queue_and_sqlite() {
    let db = kit::testing::TestDb::sqlite();
    run(&db.url, None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_worker_and_a_restarted_redis_lose_nothing_on_postgresql() {
    let Some(db) = kit::testing::TestDb::postgres().await else { return };
    let Some(mut redis) = PrivateRedis::start() else { return };
    run(&db.url, Some(&mut redis)).await;
    db.cleanup().await;
}
