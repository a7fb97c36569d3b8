//! The Products service: catalog, search, and inventory reservations that never
//! oversell and expire on their own.
//!
//! `domain` holds the rules, `store` persists, `api` translates gRPC.
pub mod api;
pub mod catalog;
pub mod domain;
pub mod seed;
pub mod store;

use std::time::Duration;

use kit::shutdown::CancellationToken;
use serde::{Deserialize, Serialize};

use kit::config::ServiceCommon;
use kit::db::{Db, DbOptions};
use kit::server::{Host, RunningService, ServiceSpec, StartError};

pub const SERVICE: &str = "products";
static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct ProductsConfig {
    #[serde(flatten)]
    pub common: ServiceCommon,
    /// How long a reservation holds stock when the caller sets no TTL.
    pub reservation_ttl_secs: u64,
    /// The longest TTL a caller may ask for.
    pub max_reservation_ttl_secs: u64,
    /// How often expired reservations are released.
    pub reaper_interval_ms: u64,
    /// Load the sample catalog when the database is empty.
    pub seed: bool,
    /// The read cache of products and search pages.
    pub cache: readcache::CacheConfig,
}

impl Default for ProductsConfig {
    fn default() -> Self {
        Self {
            common: ServiceCommon::with_ports(9002, 9102),
            reservation_ttl_secs: 900,
            max_reservation_ttl_secs: 3_600,
            reaper_interval_ms: 1_000,
            seed: true,
            cache: Default::default(),
        }
    }
}

/// Opens the database (migrating it), seeds it if asked, and serves until
/// `shutdown` is cancelled.
pub async fn start(config: ProductsConfig, shutdown: CancellationToken) -> Result<RunningService, StartError> {
    describe_metrics();
    if config.reservation_ttl_secs == 0 || config.reservation_ttl_secs > config.max_reservation_ttl_secs {
        return Err(StartError::Config("reservation_ttl_secs must be between 1 and max_reservation_ttl_secs".into()));
    }
    if config.reaper_interval_ms == 0 {
        return Err(StartError::Config("reaper_interval_ms must be positive".into()));
    }
    let spec = ServiceSpec {
        name: SERVICE,
        grpc_services: &[contracts::service_names::PRODUCTS],
        descriptor_set: contracts::FILE_DESCRIPTOR_SET,
    };
    let mut host = Host::bind(spec, &config.common, shutdown.clone()).await?;
    let db = Db::open(&config.common.database_url_for(SERVICE), &DbOptions::default(), &MIGRATOR).await?;
    host.enforce_idempotency(&db).await?;
    let store = store::ProductStore::new(db.clone());
    if config.seed {
        let added = store
            .seed_if_empty(seed::products(), kit_core::time::now_millis())
            .await
            .map_err(|e| StartError::Config(format!("seeding the catalog failed: {e}")))?;
        if added > 0 {
            tracing::info!(added, "seeded the catalog");
        }
    }
    host.readiness().require_database(&db);

    let policy = api::ReservationPolicy {
        default_ttl_ms: (config.reservation_ttl_secs * 1000) as i64,
        max_ttl_ms: (config.max_reservation_ttl_secs * 1000) as i64,
    };
    readcache::describe_metrics();
    let cache = readcache::ReadCache::new("products", &config.cache).map_err(StartError::Config)?;
    let catalog = catalog::Catalog::new(store, std::sync::Arc::new(cache));
    let service = contracts::products::v1::product_service_server::ProductServiceServer::new(api::ProductsApi::new(
        catalog.clone(),
        policy,
    ));
    let mut running = host.start(tonic::service::Routes::new(service)).await?;
    running.attach(tokio::spawn(reap_expired(catalog, Duration::from_millis(config.reaper_interval_ms), shutdown)));
    running.own_database(db);
    Ok(running)
}

/// Releases reservations whose time ran out, until shutdown.
async fn reap_expired(catalog: catalog::Catalog, every: Duration, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tick.tick() => {}
        }
        loop {
            match catalog.expire_due(kit_core::time::now_millis(), 100).await {
                Ok(0) => break,
                Ok(n) => {
                    tracing::info!(expired = n, "released expired reservations");
                    if n < 100 {
                        break;
                    }
                }
                Err(err) => {
                    tracing::warn!(error = %err, "reservation reaper failed; retrying next tick");
                    break;
                }
            }
        }
    }
}

/// HELP text of products' own metrics.
pub fn describe_metrics() {
    // Descriptions reach only an installed recorder.
    let _ = kit_telemetry::metrics::prometheus();
    use metrics::describe_counter;
    describe_counter!("inventory_reservations_total", "Inventory reservation attempts, by result.");
}
