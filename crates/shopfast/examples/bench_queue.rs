//! The halves of `scripts/bench-queue.sh` that run the platform's own
//! pieces, in one process over real sockets: a registry, Orders (its relay
//! publishing from a SQLite outbox), the broker (Redis Streams at a URL, or
//! the embedded queue service) and fulfilment workers calling Orders'
//! AdvanceFulfilment.
//!
//!   bench_queue pipeline <redis url | embedded> [--events N] [--workers W]
//!     N paid orders' `order.paid` events in the outbox before anything runs;
//!     the relay's publish rate (outbox → broker), then W workers started and
//!     the drain rate (broker → worker → Orders, every order SHIPPED).
//!   bench_queue overload <redis url | embedded> [--rate R] [--seconds S] [--work-ms M] [--workers W]
//!     paid orders written at R a second for S seconds (faster than the saga
//!     makes them on this box) while W workers each take M ms per event; the
//!     lag sampled every 500 ms, and the time to drain once writing stops.
//!
//! Each prints one line of JSON.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a bench tool: a panic is the report

use std::sync::Arc;
use std::time::{Duration, Instant};

use kit::db::{Db, DbOptions};
use kit::testing::service_common;
use orders::domain::{Line, OrderStatus, Pricing};
use orders::store::{Change, Order, OrderStore};
use queue::Broker;
use serde_json::{Value, json};

static ORDERS_MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../orders/migrations");

fn flag(args: &[String], name: &str, default: u64) -> u64 {
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).map_or(default, |v| v.parse().unwrap())
}

fn paid_order(id: &str) -> Order {
    let lines = vec![Line {
        product_id: "p1".into(),
        sku: "SKU-1".into(),
        name: "One".into(),
        quantity: 1,
        unit_price_minor: 1_000,
        currency_code: "USD".into(),
    }];
    let totals = Pricing::default().totals(&lines, "USD").unwrap();
    let now = kit_core::time::now_millis();
    Order {
        id: id.into(),
        user_id: "bench".into(),
        status: OrderStatus::Reserved,
        currency_code: "USD".into(),
        lines,
        totals,
        shipping_address: r#"{"line1":"1 Bench St","city":"Springfield","countryCode":"US"}"#.into(),
        saga_id: format!("saga-{id}"),
        payment_id: None,
        failure_reason: None,
        created_at: now,
        updated_at: now,
    }
}

/// One paid order with its `order.paid` event due now, as the saga leaves it.
async fn write_paid(store: &OrderStore, id: &str) {
    store.create(&paid_order(id)).await.unwrap();
    let paid = Change { event: Some((orders::events::ORDER_PAID, "{}", 0)), ..Default::default() };
    store.transition(id, OrderStatus::Reserved, OrderStatus::Paid, paid).await.unwrap();
}

struct Stack {
    _dir: tempfile::TempDir,
    _registry: registry::RunningRegistry,
    registry_url: String,
    db_url: String,
    store: OrderStore,
    queue: queue::QueueConfig,
    broker: Arc<dyn Broker>,
    services: Vec<kit::server::RunningService>,
    shutdown: kit::shutdown::CancellationToken,
}

impl Stack {
    async fn start(broker: &str) -> Self {
        sqlx::any::install_default_drivers();
        let dir = tempfile::tempdir().unwrap();
        let db_url = kit::db::sqlite_file_url(&dir.path().join("orders.db"));
        let db = Db::open(&db_url, &DbOptions::default(), &ORDERS_MIGRATOR).await.unwrap();
        let store = OrderStore::new(db);
        let shutdown = kit::shutdown::CancellationToken::new();
        let registry = registry::start(
            registry::RegistryConfig {
                addr: "127.0.0.1:0".parse().unwrap(),
                tls: kit_tls::TlsConfig::insecure(),
                ..Default::default()
            },
            shutdown.clone(),
        )
        .await
        .unwrap();
        let registry_url = registry.url();
        let stream = format!("bench.{}", uuid::Uuid::now_v7().simple());
        let mut services = Vec::new();
        let (queue, broker): (queue::QueueConfig, Arc<dyn Broker>) = if broker == "embedded" {
            let mut common = service_common(&db_url);
            common.registry_url = Some(registry_url.clone());
            let config = queue::QueueServiceConfig { common, max_length: 1_000_000 };
            let service = queue::service::start(config, shutdown.clone()).await.unwrap();
            let channel = tonic::transport::Channel::from_shared(service.grpc_url()).unwrap().connect_lazy();
            let broker = queue::grpc::GrpcBroker::new(queue::grpc::channel(channel), Duration::from_secs(5));
            services.push(service);
            (queue::QueueConfig { stream, max_length: 1_000_000, ..Default::default() }, Arc::new(broker))
        } else {
            let config = queue::QueueConfig {
                redis_url: Some(kit::config::Secret::new(broker)),
                stream,
                max_length: 1_000_000,
                ..Default::default()
            };
            let redis = queue::redis_streams::RedisStreams::new(broker, 1_000_000, Duration::from_secs(5)).unwrap();
            (config, Arc::new(redis))
        };
        Self { _dir: dir, _registry: registry, registry_url, db_url, store, queue, broker, services, shutdown }
    }

    async fn start_orders(&mut self) {
        let mut common = service_common(&self.db_url);
        common.registry_url = Some(self.registry_url.clone());
        let mut config = orders::OrdersConfig { common, queue: self.queue.clone(), ..Default::default() };
        // Only the shipping step is measured: delivery is due an hour later.
        config.fulfilment.deliver_after_ms = 3_600_000;
        config.relay.poll_ms = 10;
        config.relay.batch = 500;
        self.services.push(orders::start(config, self.shutdown.clone()).await.unwrap());
    }

    async fn start_workers(&mut self, workers: u64, work_ms: u64) {
        for _ in 0..workers {
            let mut common = service_common(&self.db_url);
            common.registry_url = Some(self.registry_url.clone());
            let config = fulfilment::FulfilmentWorkerConfig {
                common,
                queue: self.queue.clone(),
                work_ms,
                block_ms: 200,
                // As measured in the note: 8 consumers a worker.
                concurrency: 8,
                ..Default::default()
            };
            self.services.push(fulfilment::start(config, self.shutdown.clone()).await.unwrap());
        }
    }

    async fn count(&self, sql: &'static str) -> i64 {
        let pool = self.store_pool().await;
        let n: (i64,) = sqlx::query_as(sql).fetch_one(&pool).await.unwrap();
        n.0
    }

    async fn store_pool(&self) -> sqlx::AnyPool {
        sqlx::AnyPool::connect(&self.db_url).await.unwrap()
    }

    async fn wait_for(&self, sql: &'static str, want: i64, within: Duration) -> Duration {
        let started = Instant::now();
        let pool = self.store_pool().await;
        loop {
            let n: (i64,) = sqlx::query_as(sql).fetch_one(&pool).await.unwrap();
            if n.0 >= want {
                return started.elapsed();
            }
            assert!(started.elapsed() < within, "{sql}: {} of {want} within {within:?}", n.0);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn stop(self) {
        self.shutdown.cancel();
        for service in self.services {
            let _ = service.stop().await;
        }
    }
}

const PUBLISHED: &str = "SELECT COUNT(*) FROM outbox WHERE kind = 'order.paid' AND published_at IS NOT NULL";
const SHIPPED: &str = "SELECT COUNT(*) FROM orders WHERE status = 'SHIPPED'";

async fn pipeline(broker: &str, events: u64, workers: u64) -> Value {
    let mut stack = Stack::start(broker).await;
    for n in 0..events {
        write_paid(&stack.store, &format!("o{n}")).await;
    }
    let started = Instant::now();
    stack.start_orders().await;
    stack.wait_for(PUBLISHED, events as i64, Duration::from_secs(300)).await;
    let relay = started.elapsed();
    stack.start_workers(workers, 0).await;
    let drain = stack.wait_for(SHIPPED, events as i64, Duration::from_secs(600)).await;
    let stats = stack.broker.stats(&stack.queue.stream, "fulfilment").await.ok();
    stack.stop().await;
    json!({
        "mode": "pipeline", "broker": broker_name(broker), "workers": workers, "events": events,
        "relay_secs": relay.as_secs_f64(), "relay_per_sec": events as f64 / relay.as_secs_f64(),
        "drain_secs": drain.as_secs_f64(), "drain_per_sec": events as f64 / drain.as_secs_f64(),
        "pending_after": stats.map(|s| s.pending),
    })
}

async fn overload(broker: &str, rate: u64, seconds: u64, work_ms: u64, workers: u64) -> Value {
    let mut stack = Stack::start(broker).await;
    stack.start_orders().await;
    stack.start_workers(workers, work_ms).await;
    let total = rate * seconds;
    let writer = {
        let store = stack.store.clone();
        tokio::spawn(async move {
            let started = Instant::now();
            for n in 0..total {
                let due = started + Duration::from_secs_f64(n as f64 / rate as f64);
                tokio::time::sleep_until(due.into()).await;
                write_paid(&store, &format!("o{n}")).await;
            }
            started.elapsed()
        })
    };
    let mut samples = Vec::new();
    let started = Instant::now();
    let (mut peak_lag, mut peak_lag_secs) = (0u64, 0.0f64);
    let mut writing_took = None;
    loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let stats = stack.broker.stats(&stack.queue.stream, "fulfilment").await.unwrap_or_default();
        let backlog = stats.lag + stats.pending;
        peak_lag = peak_lag.max(backlog);
        peak_lag_secs = peak_lag_secs.max(stats.lag_ms as f64 / 1e3);
        let shipped = stack.count(SHIPPED).await;
        samples.push(json!([started.elapsed().as_secs_f64(), stats.lag, stats.pending, stats.lag_ms, shipped]));
        if writing_took.is_none() && writer.is_finished() {
            writing_took = Some(started.elapsed());
        }
        if writing_took.is_some() && shipped >= total as i64 {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(seconds * 20 + 120), "not drained");
    }
    let wrote = writing_took.unwrap_or_default();
    let drained = started.elapsed();
    stack.stop().await;
    json!({
        "mode": "overload", "broker": broker_name(broker), "workers": workers, "work_ms": work_ms,
        "rate": rate, "seconds": seconds, "events": total,
        "capacity_per_sec": workers as f64 * 8.0 * 1_000.0 / work_ms.max(1) as f64,
        "peak_backlog_messages": peak_lag, "peak_lag_secs": peak_lag_secs,
        "writing_secs": wrote.as_secs_f64(), "drain_after_writing_secs": (drained - wrote).as_secs_f64(),
        "samples": samples,
    })
}

fn broker_name(broker: &str) -> &str {
    if broker == "embedded" { "embedded" } else { "redis" }
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let usage = "bench_queue pipeline|overload <redis url|embedded> [flags]";
    let broker = args.get(2).expect(usage).clone();
    let out = match args.get(1).map(String::as_str) {
        Some("pipeline") => pipeline(&broker, flag(&args, "--events", 5_000), flag(&args, "--workers", 1)).await,
        Some("overload") => {
            overload(
                &broker,
                flag(&args, "--rate", 300),
                flag(&args, "--seconds", 10),
                flag(&args, "--work-ms", 50),
                flag(&args, "--workers", 1),
            )
            .await
        }
        _ => panic!("{usage}"),
    };
    println!("{out}");
}
