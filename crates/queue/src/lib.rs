//! The asynchronous path between services: a stream of messages, consumer
//! groups that share it (each entry to one consumer at a time), explicit
//! acknowledgements, entries a silent consumer held claimed by another after
//! an idle time, a dead-letter stream after too many deliveries, a bounded
//! length. Two brokers give these semantics behind one trait, so producers
//! and consumers never know which they have:
//!
//! - `redis_streams`: Redis Streams (XADD, XREADGROUP, XAUTOCLAIM, XACK), the
//!   production broker, configured by URL;
//! - `memory` + `grpc`: the embedded broker — the same structure in one
//!   process (`shopfast queue`), served over gRPC, for a stack with nothing
//!   installed.
//!
//! Neither is the source of truth: the producer's outbox is. Delivery is at
//! least once, and a broker that lost what it held (a restart without
//! persistence) shows a new `epoch`, which tells producers to publish again
//! whatever was not handled yet.
pub mod grpc;
pub mod memory;
pub mod redis_streams;
pub mod service;

use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};

pub use service::{QueueServiceConfig, SERVICE};

/// A message as the producer wrote it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Message {
    /// What the consumers' order follows (an order id).
    pub key: String,
    pub kind: String,
    pub payload: String,
    /// The producer's id of the event (an outbox row).
    pub event_id: String,
    /// W3C traceparent of the span that published it.
    pub traceparent: String,
    pub published_at_ms: i64,
}

/// An entry handed to one consumer of a group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    /// The broker's id of the entry (`<ms>-<seq>`).
    pub id: String,
    pub message: Message,
    /// 1 on the first delivery; more when it was claimed from a consumer that went quiet.
    pub deliveries: u32,
}

/// What a consumer asks for.
#[derive(Debug, Clone)]
pub struct Receive<'a> {
    pub stream: &'a str,
    pub group: &'a str,
    pub consumer: &'a str,
    pub max: usize,
    /// How long to wait when nothing is there.
    pub block: Duration,
    /// Entries pending this long on another consumer are taken over.
    pub claim_idle: Duration,
}

/// A stream and one consumer group as they stand.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stats {
    /// Changes when the broker lost what it held.
    pub epoch: String,
    /// Entries in the stream (bounded by trimming).
    pub length: u64,
    /// Delivered, not acknowledged yet.
    pub pending: u64,
    /// Published, not delivered to the group yet.
    pub lag: u64,
    /// Age of the oldest entry not delivered yet (0 when none).
    pub lag_ms: i64,
    pub dead_letters: u64,
    pub consumers: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Published {
    pub ids: Vec<String>,
    pub epoch: String,
}

#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    #[error("the broker cannot be reached: {0}")]
    Unavailable(String),
    #[error("the broker refused the request: {0}")]
    Refused(String),
    #[error("the broker answered something unexpected: {0}")]
    Protocol(String),
}

/// A broker, as producers and consumers see it.
pub trait Broker: Send + Sync {
    /// Which broker this is (`redis` or `embedded`), for logs and metrics.
    fn kind(&self) -> &'static str;
    fn publish<'a>(&'a self, stream: &'a str, messages: &'a [Message]) -> BoxFuture<'a, Result<Published, QueueError>>;
    fn receive<'a>(&'a self, request: Receive<'a>) -> BoxFuture<'a, Result<Vec<Delivery>, QueueError>>;
    fn ack<'a>(&'a self, stream: &'a str, group: &'a str, ids: &'a [String]) -> BoxFuture<'a, Result<u64, QueueError>>;
    /// Moves the delivery to the stream's dead letters and acknowledges it.
    fn dead_letter<'a>(
        &'a self,
        stream: &'a str,
        group: &'a str,
        delivery: &'a Delivery,
        reason: &'a str,
    ) -> BoxFuture<'a, Result<(), QueueError>>;
    fn stats<'a>(&'a self, stream: &'a str, group: &'a str) -> BoxFuture<'a, Result<Stats, QueueError>>;
}

/// Which broker a producer or consumer uses, in its TOML (`[orders.queue]`,
/// `[fulfilment.queue]`) or environment.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct QueueConfig {
    /// Redis Streams at this URL (`redis://127.0.0.1:6379/0`); unset: the
    /// embedded broker, found in the registry as the `queue` service.
    pub redis_url: Option<kit::config::Secret>,
    /// The stream of order events.
    pub stream: String,
    /// Entries kept in the stream (older ones are trimmed).
    pub max_length: u64,
    /// Deadline of each call to the broker (a blocking read waits `block_ms` on top).
    pub call_timeout_ms: u64,
}

impl Default for QueueConfig {
    fn default() -> Self {
        Self { redis_url: None, stream: "orders.events".into(), max_length: 100_000, call_timeout_ms: 2_000 }
    }
}

impl QueueConfig {
    pub fn validate(&self) -> Result<(), String> {
        if self.stream.is_empty() || self.stream.len() > 128 || self.stream.chars().any(|c| c.is_whitespace()) {
            return Err("queue.stream must be 1 to 128 characters without spaces".into());
        }
        if self.max_length < 100 {
            return Err("queue.max_length must be at least 100".into());
        }
        if self.call_timeout_ms == 0 {
            return Err("queue.call_timeout_ms must be positive".into());
        }
        Ok(())
    }
}

/// The broker the config names: Redis at its URL, or the embedded broker
/// (the `queue` service) through the registry, balanced and guarded like
/// every other dependency.
pub async fn connect(
    config: &QueueConfig,
    discovery: &kit_client::discovery::Discovery,
) -> Result<Arc<dyn Broker>, QueueError> {
    config.validate().map_err(QueueError::Refused)?;
    let timeout = Duration::from_millis(config.call_timeout_ms);
    Ok(match &config.redis_url {
        Some(url) => Arc::new(redis_streams::RedisStreams::new(url.expose(), config.max_length, timeout)?),
        None => {
            let balancer = discovery.balancer(SERVICE, std::collections::BTreeMap::new()).await;
            let dependency = kit_client::guard::Dependency::new(SERVICE, &Default::default());
            let guarded = kit_client::guard::guard_balancer(dependency, balancer);
            Arc::new(grpc::GrpcBroker::new(grpc::channel(guarded), timeout))
        }
    })
}

/// The `<ms>` of a stream id `<ms>-<seq>`.
pub fn id_millis(id: &str) -> Option<i64> {
    id.split_once('-').map_or(id, |(ms, _)| ms).parse().ok()
}

/// HELP text of the queue's metrics: producers', consumers' and the broker's.
pub fn describe_metrics() {
    // Descriptions reach only an installed recorder.
    let _ = kit_telemetry::metrics::prometheus();
    use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
    describe_counter!("queue_published_total", "Messages published to the queue, by stream and broker.");
    describe_counter!(
        "queue_republished_total",
        "Messages published again because the broker lost them (a new epoch) or they went unhandled, by stream and reason."
    );
    describe_counter!("queue_publish_failures_total", "Publish attempts the broker did not take, by stream.");
    describe_counter!("queue_processed_total", "Messages a consumer handled, by group, kind and outcome.");
    describe_counter!(
        "queue_redeliveries_total",
        "Messages delivered again (claimed from a consumer that went quiet), by group."
    );
    describe_counter!("queue_dead_letters_total", "Messages moved to the dead-letter stream, by group.");
    describe_histogram!(
        "queue_processing_duration_seconds",
        Unit::Seconds,
        "Time from a delivery to its acknowledgement, by group and kind."
    );
    describe_histogram!(
        "queue_end_to_end_seconds",
        Unit::Seconds,
        "Time from publish to acknowledgement, by group: what the queue adds to an event's handling."
    );
    describe_gauge!("queue_depth", "Entries in the stream, by stream (bounded by trimming).");
    describe_gauge!("queue_pending", "Entries delivered to a consumer and not acknowledged yet, by stream and group.");
    describe_gauge!("queue_lag_messages", "Entries published and not yet delivered to the group, by stream and group.");
    describe_gauge!(
        "queue_lag_seconds",
        "Age of the oldest entry not yet delivered to the group, by stream and group."
    );
    describe_gauge!("queue_dead_letter_depth", "Entries in the stream's dead-letter stream.");
    describe_gauge!("queue_consumers", "Consumers the group has seen, by stream and group.");
    describe_gauge!(
        "outbox_due_unpublished",
        "Outbox events due and not yet published to the queue (the relay's backlog)."
    );
    describe_gauge!("outbox_published_unhandled", "Outbox events published and not yet handled by their consumer.");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_garbage_is_refused_with_the_field_named() {
        assert!(QueueConfig::default().validate().is_ok());
        let bad = QueueConfig { stream: "a b".into(), ..Default::default() };
        assert!(bad.validate().unwrap_err().contains("queue.stream"));
        let bad = QueueConfig { max_length: 3, ..Default::default() };
        assert!(bad.validate().unwrap_err().contains("queue.max_length"));
        let bad = QueueConfig { call_timeout_ms: 0, ..Default::default() };
        assert!(bad.validate().unwrap_err().contains("queue.call_timeout_ms"));
    }

    #[test]
    fn the_redis_url_stays_out_of_debug_output() {
        let config =
            QueueConfig { redis_url: Some(kit::config::Secret::new("redis://:hunter2@db:6379")), ..Default::default() };
        assert!(!format!("{config:?}").contains("hunter2"));
    }

    #[test]
    fn ids_carry_their_millisecond() {
        assert_eq!(id_millis("1700000000000-3"), Some(1_700_000_000_000));
        assert_eq!(id_millis("12"), Some(12));
        assert_eq!(id_millis("x-1"), None);
    }
}
