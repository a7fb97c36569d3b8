//! The Orders service: the order state machine, pricing in minor units,
//! orders and their line items, the durable order saga (steps over gRPC,
//! persisted through the `sagas` table, resumed on start), the transactional
//! outbox and its relay to the queue the fulfilment worker reads.
pub mod api;
pub mod cancelling;
pub mod domain;
pub mod events;
pub mod fulfilment;
pub mod placing;
pub mod relay;
pub mod steps;
pub mod store;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use kit::config::ServiceCommon;
use kit::db::{Db, DbOptions};
use kit::server::{Host, RunningService, ServiceSpec, StartError};
use kit::shutdown::CancellationToken;
use kit_client::discovery::Discovery;
use kit_client::guard::Dependency;
use kit_client::guard::guard_balancer;
use kit_resilience::DependencyConfig;

pub const SERVICE: &str = "orders";
static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct OrdersConfig {
    #[serde(flatten)]
    pub common: ServiceCommon,
    pub pricing: domain::Pricing,
    pub fulfilment: fulfilment::FulfilmentConfig,
    /// The broker fulfilment events are relayed to.
    pub queue: queue::QueueConfig,
    pub relay: relay::RelayConfig,
    /// The read cache of orders (GetOrder).
    pub cache: readcache::CacheConfig,
    /// Deadline of each call a saga step makes.
    pub call_timeout_ms: u64,
    /// How long CreateOrder waits for its saga before answering 202 with the
    /// order pending (to poll at its Location) while the saga goes on.
    pub answer_within_ms: u64,
    /// Attempts at a saga step whose failure is the request's own (the card
    /// processor's "try again") before the order is refused.
    pub transient_attempts: u32,
    /// How long a saga step keeps retrying while its service is unavailable
    /// (restarting, breaker open) before the order is given up (retryable).
    pub unavailable_budget_ms: u64,
    /// Breaker, bulkhead and retry settings per dependency (users, products, payments).
    pub dependencies: BTreeMap<String, DependencyConfig>,
}

impl Default for OrdersConfig {
    fn default() -> Self {
        Self {
            common: ServiceCommon::with_ports(9003, 9103),
            pricing: Default::default(),
            fulfilment: Default::default(),
            queue: Default::default(),
            relay: Default::default(),
            cache: Default::default(),
            call_timeout_ms: 5_000,
            answer_within_ms: 3_000,
            transient_attempts: 3,
            unavailable_budget_ms: 120_000,
            dependencies: BTreeMap::new(),
        }
    }
}

pub async fn start(config: OrdersConfig, shutdown: CancellationToken) -> Result<RunningService, StartError> {
    describe_metrics();
    let registry_url = config.common.registry_url.clone().ok_or_else(|| {
        StartError::Config("orders finds users, products and payments through the registry: set registry_url".into())
    })?;
    let spec = ServiceSpec {
        name: SERVICE,
        grpc_services: &[contracts::service_names::ORDERS],
        descriptor_set: contracts::FILE_DESCRIPTOR_SET,
    };
    let mut host = Host::bind(spec, &config.common, shutdown.clone()).await?;
    let db = Db::open(&config.common.database_url_for(SERVICE), &DbOptions::default(), &MIGRATOR).await?;
    host.enforce_idempotency(&db).await?;
    host.readiness().require_database(&db);
    readcache::describe_metrics();
    queue::describe_metrics();
    let cache = readcache::ReadCache::new("orders", &config.cache).map_err(StartError::Config)?;
    let store = store::OrderStore::new(db.clone()).with_cache(std::sync::Arc::new(cache));

    let discovery = Discovery::new(&registry_url, host.tls(), shutdown.clone());
    let mut channels = BTreeMap::new();
    for name in ["users", "products", "payments"] {
        let balancer = discovery.balancer(name, BTreeMap::new()).await;
        let dependency = Dependency::new(name, &config.dependencies.get(name).cloned().unwrap_or_default());
        channels.insert(name, steps::channel(guard_balancer(dependency, balancer)));
    }
    let channel =
        |name: &str| channels.get(name).cloned().ok_or_else(|| StartError::Config(format!("no channel for {name}")));
    if config.answer_within_ms == 0 || config.transient_attempts == 0 {
        return Err(StartError::Config("answer_within_ms and transient_attempts must be positive".into()));
    }
    config.relay.validate().map_err(StartError::Config)?;
    let broker = queue::connect(&config.queue, &discovery).await.map_err(|e| StartError::Config(e.to_string()))?;
    let call_timeout = Duration::from_millis(config.call_timeout_ms);
    let payments = contracts::payments::v1::payment_service_client::PaymentServiceClient::new(channel("payments")?);
    let products = contracts::products::v1::product_service_client::ProductServiceClient::new(channel("products")?);
    let deps = Arc::new(steps::Deps {
        users: contracts::users::v1::user_service_client::UserServiceClient::new(channel("users")?),
        products: products.clone(),
        payments: payments.clone(),
        store: store.clone(),
        pricing: config.pricing.clone(),
        call_timeout,
        ship_after_ms: config.fulfilment.ship_after_ms,
    });
    // Forward: a few attempts at what the request itself hit (a processor's
    // "try again"), and a time budget long enough to ride out a dependency's
    // restart (and the in-progress claim its crash left, which lasts the
    // call's deadline). Compensation never gives up on what may pass: an
    // undo must happen, and a person is the last resort, not the next one.
    let forward = saga::RetryPolicy {
        max_attempts: config.transient_attempts,
        base_backoff: Duration::from_millis(200),
        max_backoff: Duration::from_secs(2),
        give_up_after: Duration::from_millis(config.unavailable_budget_ms),
    };
    let compensation = saga::RetryPolicy {
        max_attempts: 5,
        base_backoff: Duration::from_millis(200),
        max_backoff: Duration::from_secs(10),
        give_up_after: Duration::ZERO,
    };
    let orchestrator =
        Arc::new(saga::Orchestrator::new(steps::steps(deps), Arc::new(store.clone()), forward, compensation));
    let canceller =
        Arc::new(cancelling::Canceller { store: store.clone(), payments: payments.clone(), products, call_timeout });
    let placing = placing::Placing {
        store: store.clone(),
        orchestrator: orchestrator.clone(),
        payments,
        answer_within: Duration::from_millis(config.answer_within_ms),
        call_timeout,
    };
    let api = api::OrdersApi {
        store: store.clone(),
        placing,
        canceller: canceller.clone(),
        fulfilment: config.fulfilment.clone(),
    };
    let service = contracts::orders::v1::order_service_server::OrderServiceServer::new(api);
    let mut running = host.start(tonic::service::Routes::new(service)).await?;
    // Sagas a crash left unfinished are driven to an end.
    running.attach(tokio::spawn(async move {
        match orchestrator.resume_all().await {
            Ok(resumed) if !resumed.is_empty() => tracing::info!(sagas = resumed.len(), "unfinished sagas resumed"),
            Ok(_) => {}
            Err(err) => tracing::error!(error = %err, "resuming sagas failed"),
        }
    }));
    let relay =
        relay::Relay { store: store.clone(), broker, stream: config.queue.stream.clone(), config: config.relay };
    running.attach(tokio::spawn(relay.run(shutdown.clone())));
    running.attach(tokio::spawn(fulfilment::run(store, config.fulfilment.clone(), canceller, shutdown)));
    running.own_database(db);
    Ok(running)
}

/// HELP text of orders' own metrics.
pub fn describe_metrics() {
    // Descriptions reach only an installed recorder.
    let _ = kit_telemetry::metrics::prometheus();
    saga::describe_metrics();
    use metrics::describe_counter;
    describe_counter!(
        "orders_cancelled_after_payment_total",
        "Paid orders cancelled: refunded and restocked, then CANCELLED."
    );
}
