//! The Payments service: a simulated card processor (authorize, capture,
//! refund; declines, timeouts, transient errors), every attempt recorded,
//! idempotent by key (the kit's idempotency layer), at most one charge per
//! order (a unique index).
//!
//! `domain` holds the rules, `workflow` the charge, refund and void
//! workflows (`failure`: what they fail with), `recovery` settles what a
//! crash left in flight, `processor` is the processor trait and the
//! simulation, `store` persists, `api` translates gRPC.
pub mod api;
pub mod domain;
pub mod failure;
pub mod processor;
pub mod recovery;
pub mod store;
pub mod vault;
pub mod workflow;

use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use kit::config::{Secret, ServiceCommon};
use kit::db::{Db, DbOptions};
use kit::server::{Host, RunningService, ServiceSpec, StartError};
use kit::shutdown::CancellationToken;

pub const SERVICE: &str = "payments";
static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct PaymentsConfig {
    #[serde(flatten)]
    pub common: ServiceCommon,
    pub processor: processor::SimulatedConfig,
    /// The key stored cards are sealed with: 32 bytes in base64. Required —
    /// there is no built-in one; `shopfast up` makes one per data directory.
    pub card_key: Option<Secret>,
    /// How long a tokenized card (CreatePaymentMethod) may be charged.
    pub payment_method_ttl_secs: u64,
}

impl Default for PaymentsConfig {
    fn default() -> Self {
        Self {
            common: ServiceCommon::with_ports(9004, 9104),
            processor: Default::default(),
            card_key: None,
            payment_method_ttl_secs: 86_400,
        }
    }
}

pub async fn start(config: PaymentsConfig, shutdown: CancellationToken) -> Result<RunningService, StartError> {
    describe_metrics();
    if !(0.0..=1.0).contains(&config.processor.failure_rate) {
        return Err(StartError::Config("processor.failure_rate must be between 0 and 1".into()));
    }
    let key = config.card_key.as_ref().ok_or_else(|| {
        StartError::Config(
            "payments needs card_key to seal stored cards: 32 random bytes in base64 \
             (SHOPFAST_PAYMENTS__CARD_KEY=$(openssl rand -base64 32)); `shopfast up` makes one per data directory"
                .into(),
        )
    })?;
    let vault = vault::Vault::from_base64(key.expose()).map_err(|e| StartError::Config(e.to_string()))?;
    if config.payment_method_ttl_secs == 0 {
        return Err(StartError::Config("payment_method_ttl_secs must be positive".into()));
    }
    let spec = ServiceSpec {
        name: SERVICE,
        grpc_services: &[contracts::service_names::PAYMENTS],
        descriptor_set: contracts::FILE_DESCRIPTOR_SET,
    };
    let mut host = Host::bind(spec, &config.common, shutdown.clone()).await?;
    let db = Db::open(&config.common.database_url_for(SERVICE), &DbOptions::default(), &MIGRATOR).await?;
    host.enforce_idempotency(&db).await?;
    host.readiness().require_database(&db);
    let processor: Arc<dyn processor::Processor> =
        Arc::new(processor::SimulatedProcessor::new(config.processor.clone()));
    let store = store::PaymentStore::new(db.clone());
    let methods = workflow::Methods { vault: Arc::new(vault), ttl_ms: config.payment_method_ttl_secs as i64 * 1_000 };
    let api = api::PaymentsApi::new(workflow::Payments::new(store.clone(), processor.clone(), methods));
    let service = contracts::payments::v1::payment_service_server::PaymentServiceServer::new(api);
    let mut running = host.start(tonic::service::Routes::new(service)).await?;
    // Payments a crash (or a spent deadline) left half done are settled.
    running.attach(recovery::spawn(store.clone(), processor, Duration::from_secs(1), shutdown.clone()));
    running.attach(store::spawn_method_sweeper(store, shutdown));
    running.own_database(db);
    Ok(running)
}

/// HELP text of payments' own metrics.
pub fn describe_metrics() {
    // Descriptions reach only an installed recorder.
    let _ = kit_telemetry::metrics::prometheus();
    use metrics::describe_counter;
    describe_counter!("payments_total", "Payments finished, by outcome (completed or the failure code).");
    describe_counter!("payment_refunds_total", "Refunds completed.");
    describe_counter!(
        "payments_recovered_total",
        "Payments a crash or a spent deadline left in flight, settled by recovery, by the state they were in."
    );
}
