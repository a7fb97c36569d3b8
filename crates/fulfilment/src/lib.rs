//! The fulfilment worker (`shopfast fulfilment`): consumes order events from
//! the queue in the `fulfilment` consumer group and moves each order through
//! Orders' gRPC API (AdvanceFulfilment, behind the kit's guard): `order.paid`
//! ships it, `order.shipped` delivers it. Several instances share the group,
//! each entry handled by one at a time; an entry a killed worker held is
//! claimed by another after `claim_idle_ms`. AdvanceFulfilment is a
//! conditional transition, so a redelivered or republished event changes
//! nothing twice. The worker does not know which broker it has.
pub mod consumer;

use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use kit::config::ServiceCommon;
use kit::server::{Host, RunningService, ServiceSpec, StartError};
use kit::shutdown::CancellationToken;
use kit_client::discovery::Discovery;
use kit_client::guard::Dependency;
use kit_client::guard::guard_balancer;
use kit_resilience::DependencyConfig;

pub const SERVICE: &str = "fulfilment";

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct FulfilmentWorkerConfig {
    #[serde(flatten)]
    pub common: ServiceCommon,
    pub queue: queue::QueueConfig,
    /// The consumer group the instances share.
    pub group: String,
    /// Consumers in this process, each handling its deliveries one by one.
    pub concurrency: usize,
    /// Entries a consumer takes at once.
    pub batch: usize,
    /// How long a receive waits for entries.
    pub block_ms: u64,
    /// An entry unacknowledged this long is taken from its consumer (it
    /// died): longer than one handling can take (`call_timeout_ms` +
    /// `work_ms` + 1 s). A consumer starts no handling that could outlast
    /// it, so no entry is handled by two consumers at once.
    pub claim_idle_ms: u64,
    /// Deliveries after which an entry goes to the dead letters.
    pub max_deliveries: u32,
    /// Deadline of each AdvanceFulfilment call.
    pub call_timeout_ms: u64,
    /// How often the queue's depth and lag are read for the gauges.
    pub stats_ms: u64,
    /// Simulated work per event before the order moves (a carrier's API
    /// call, say): 0 by default; a demo or a benchmark raises it to watch
    /// the queue build up and drain.
    pub work_ms: u64,
    /// Breaker, bulkhead and retry toward Orders.
    pub orders: DependencyConfig,
}

impl Default for FulfilmentWorkerConfig {
    fn default() -> Self {
        Self {
            common: ServiceCommon::with_ports(9005, 9105),
            queue: Default::default(),
            group: "fulfilment".into(),
            concurrency: 4,
            batch: 16,
            block_ms: 2_000,
            claim_idle_ms: 15_000,
            max_deliveries: 5,
            call_timeout_ms: 5_000,
            stats_ms: 2_000,
            work_ms: 0,
            orders: Default::default(),
        }
    }
}

impl FulfilmentWorkerConfig {
    pub fn validate(&self) -> Result<(), String> {
        self.queue.validate()?;
        if self.group.is_empty() || self.group.len() > 128 || self.group.contains(char::is_whitespace) {
            return Err("group must be 1 to 128 characters without spaces".into());
        }
        if !(1..=256).contains(&self.concurrency) || !(1..=1_000).contains(&self.batch) {
            return Err("concurrency must be 1 to 256 and batch 1 to 1000".into());
        }
        if !(1..=10_000).contains(&self.block_ms) || self.call_timeout_ms == 0 || self.stats_ms == 0 {
            return Err("block_ms must be 1 to 10000; call_timeout_ms and stats_ms positive".into());
        }
        if self.call_timeout_ms < 250 {
            return Err("call_timeout_ms must be at least 250".into());
        }
        // The consumer keeps a second between a handling's end and the
        // moment another may claim the entry (consumer::deadline_after).
        if self.claim_idle_ms < self.call_timeout_ms.saturating_add(self.work_ms).saturating_add(1_000) {
            return Err("claim_idle_ms must exceed call_timeout_ms + work_ms by a second at least \
                        (or a slow handling is taken over while it runs)"
                .into());
        }
        if self.max_deliveries == 0 {
            return Err("max_deliveries must be positive".into());
        }
        Ok(())
    }
}

pub async fn start(config: FulfilmentWorkerConfig, shutdown: CancellationToken) -> Result<RunningService, StartError> {
    config.validate().map_err(StartError::Config)?;
    let registry_url = config.common.registry_url.clone().ok_or_else(|| {
        StartError::Config(
            "the worker finds Orders (and the embedded queue) through the registry: set registry_url".into(),
        )
    })?;
    queue::describe_metrics();
    let spec = ServiceSpec { name: SERVICE, grpc_services: &[], descriptor_set: contracts::FILE_DESCRIPTOR_SET };
    let host = Host::bind(spec, &config.common, shutdown.clone()).await?;
    let discovery = Discovery::new(&registry_url, host.tls(), shutdown.clone());
    let broker = queue::connect(&config.queue, &discovery).await.map_err(|e| StartError::Config(e.to_string()))?;
    let orders_balancer = discovery.balancer("orders", Default::default()).await;
    let orders = guard_balancer(Dependency::new("orders", &config.orders), orders_balancer);
    let orders = contracts::orders::v1::order_service_client::OrderServiceClient::new(queue::grpc::channel(orders));
    let mut running = host.start(tonic::service::Routes::default()).await?;
    // One name per process and consumer: a restarted worker is a new
    // consumer, and what the old one held is claimed after the idle time.
    let instance = uuid::Uuid::now_v7().simple().to_string();
    let settings = Arc::new(consumer::Settings {
        stream: config.queue.stream.clone(),
        group: config.group.clone(),
        batch: config.batch,
        block: Duration::from_millis(config.block_ms),
        claim_idle: Duration::from_millis(config.claim_idle_ms),
        max_deliveries: config.max_deliveries,
        call_timeout: Duration::from_millis(config.call_timeout_ms),
        work: Duration::from_millis(config.work_ms),
    });
    for n in 0..config.concurrency {
        let consumer = consumer::Consumer {
            name: format!("{SERVICE}-{}-{n}", &instance[instance.len() - 12..]),
            broker: broker.clone(),
            orders: orders.clone(),
            settings: settings.clone(),
        };
        running.attach(tokio::spawn(consumer.run(shutdown.clone())));
    }
    running.attach(tokio::spawn(consumer::report_queue(
        broker,
        settings,
        Duration::from_millis(config.stats_ms),
        shutdown,
    )));
    Ok(running)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn garbage_settings_are_refused_with_the_field_named() {
        assert!(FulfilmentWorkerConfig::default().validate().is_ok());
        let cases: Vec<(FulfilmentWorkerConfig, &str)> = vec![
            (FulfilmentWorkerConfig { concurrency: 0, ..Default::default() }, "concurrency"),
            (FulfilmentWorkerConfig { batch: 5_000, ..Default::default() }, "batch"),
            (FulfilmentWorkerConfig { group: "a b".into(), ..Default::default() }, "group"),
            (FulfilmentWorkerConfig { claim_idle_ms: 1_000, ..Default::default() }, "claim_idle_ms"),
            (FulfilmentWorkerConfig { max_deliveries: 0, ..Default::default() }, "max_deliveries"),
            (FulfilmentWorkerConfig { work_ms: 60_000, ..Default::default() }, "work_ms"),
            (FulfilmentWorkerConfig { block_ms: 0, ..Default::default() }, "block_ms"),
            (FulfilmentWorkerConfig { claim_idle_ms: 5_500, ..Default::default() }, "claim_idle_ms"),
            (FulfilmentWorkerConfig { call_timeout_ms: 10, ..Default::default() }, "call_timeout_ms"),
        ];
        for (config, field) in cases {
            let err = config.validate().unwrap_err();
            assert!(err.contains(field), "{field}: {err}");
        }
    }
}
