//! The Payments service: a simulated card processor (authorize, capture,
//! refund; declines, timeouts, transient errors), every attempt recorded,
//! idempotent by key (the kit's idempotency layer), at most one charge per
//! order (a unique index).
//!
//! `domain` holds the rules, `processor` the processor trait and the
//! simulation, `store` persists, `api` translates gRPC.
pub mod api;
pub mod domain;
pub mod processor;
pub mod recovery;
pub mod store;

use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use kit::config::ServiceCommon;
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
}

impl Default for PaymentsConfig {
    fn default() -> Self {
        Self { common: ServiceCommon::with_ports(9004, 9104), processor: Default::default() }
    }
}

pub async fn start(config: PaymentsConfig, shutdown: CancellationToken) -> Result<RunningService, StartError> {
    if !(0.0..=1.0).contains(&config.processor.failure_rate) {
        return Err(StartError::Config("processor.failure_rate must be between 0 and 1".into()));
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
    let api = api::PaymentsApi::new(store.clone(), processor.clone());
    let service = contracts::payments::v1::payment_service_server::PaymentServiceServer::new(api);
    let mut running = host.start(tonic::service::Routes::new(service)).await?;
    // Payments a crash (or a spent deadline) left half done are settled.
    running.attach(recovery::spawn(store, processor, Duration::from_secs(1), shutdown));
    running.own_database(db);
    Ok(running)
}
