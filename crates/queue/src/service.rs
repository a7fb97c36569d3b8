//! `shopfast queue`: the embedded broker as its own process, registered as
//! the `queue` service — where a stack with no Redis keeps its streams.
use serde::{Deserialize, Serialize};

use kit::config::ServiceCommon;
use kit::server::{Host, RunningService, ServiceSpec, StartError};
use kit::shutdown::CancellationToken;

use crate::grpc::QueueApi;

pub const SERVICE: &str = "queue";

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct QueueServiceConfig {
    #[serde(flatten)]
    pub common: ServiceCommon,
    /// Entries kept per stream (and per dead-letter stream); older ones are trimmed.
    pub max_length: usize,
}

impl Default for QueueServiceConfig {
    fn default() -> Self {
        Self { common: ServiceCommon::with_ports(9006, 9106), max_length: 100_000 }
    }
}

pub async fn start(config: QueueServiceConfig, shutdown: CancellationToken) -> Result<RunningService, StartError> {
    if !(100..=10_000_000).contains(&config.max_length) {
        return Err(StartError::Config("max_length must be between 100 and 10000000".into()));
    }
    let spec = ServiceSpec {
        name: SERVICE,
        grpc_services: &[contracts::service_names::QUEUE],
        descriptor_set: contracts::FILE_DESCRIPTOR_SET,
    };
    let host = Host::bind(spec, &config.common, shutdown).await?;
    let api = QueueApi::new(std::sync::Arc::new(crate::memory::Embedded::new(config.max_length)));
    let service = contracts::queue::v1::queue_service_server::QueueServiceServer::new(api);
    Ok(host.start(tonic::service::Routes::new(service)).await?)
}
