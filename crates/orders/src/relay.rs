//! The outbox relay: publishes due fulfilment events to the queue, at least
//! once, oldest first. An order has at most one fulfilment event
//! outstanding (`order.shipped` is written only by handling `order.paid`),
//! so per order the queue sees them in order. Each publish is a producer
//! span continuing the trace that wrote the event; the message carries that
//! span's context, so the worker's consumer span continues it in turn.
//!
//! The outbox stays the source of truth. The relay publishes again what was
//! published and never handled when the broker shows it lost what it held: a
//! new epoch (Redis restarted without persistence, the embedded broker
//! restarted), or a consumer group with nothing pending and nothing left to
//! deliver while events are still unhandled (trimmed, dead-lettered, lost);
//! and, while the queue is busy, what stayed unhandled for longer than
//! `republish_after_ms` when the group is not that far behind (a relay that
//! died between claiming and publishing, an event dead-lettered while
//! Orders was down). The worker's step is conditional, so a copy of an
//! event that was only slow changes nothing twice.
use std::sync::Arc;
use std::time::Duration;

use kit::shutdown::CancellationToken;
use queue::{Broker, Message};
use serde::{Deserialize, Serialize};

use crate::events::RELAYED;
use crate::store::{Event, OrderStore, StoreError};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RelayConfig {
    pub poll_ms: u64,
    /// Events published per pass, at most.
    pub batch: i64,
    /// The consumer group whose progress tells whether events were lost.
    pub watch_group: String,
    /// How often the broker's state is compared with the outbox.
    pub check_ms: u64,
    /// An unhandled event is republished only once published this long ago.
    pub republish_grace_ms: i64,
    /// While the queue is busy, an event unhandled this long after its
    /// publication is published again (unless the group lags this much).
    pub republish_after_ms: i64,
    /// Republished at most this often (a poison event ends in the dead letters, not in a loop).
    pub max_republish: i64,
}

impl Default for RelayConfig {
    fn default() -> Self {
        Self {
            poll_ms: 200,
            batch: 200,
            watch_group: "fulfilment".into(),
            check_ms: 2_000,
            republish_grace_ms: 5_000,
            republish_after_ms: 60_000,
            max_republish: 5,
        }
    }
}

impl RelayConfig {
    pub fn validate(&self) -> Result<(), String> {
        if self.poll_ms == 0 || self.check_ms == 0 || !(1..=1_000).contains(&self.batch) {
            return Err("relay.poll_ms and relay.check_ms must be positive, relay.batch 1 to 1000".into());
        }
        if self.republish_grace_ms < 0 || self.max_republish < 0 || self.watch_group.is_empty() {
            return Err("relay.republish_grace_ms and relay.max_republish must not be negative".into());
        }
        if self.republish_after_ms < self.republish_grace_ms {
            return Err("relay.republish_after_ms must be at least relay.republish_grace_ms".into());
        }
        Ok(())
    }
}

pub struct Relay {
    pub store: OrderStore,
    pub broker: Arc<dyn Broker>,
    pub stream: String,
    pub config: RelayConfig,
}

#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Queue(#[from] queue::QueueError),
}

fn producer_span(event: &Event, stream: &str) -> tracing::Span {
    let span = tracing::info_span!(
        "relay",
        otel.name = %format_args!("publish {}", event.kind),
        otel.kind = "producer",
        messaging.system = "shopfast",
        messaging.destination.name = %stream,
        order_id = %event.order_id,
        event_id = %event.id,
        trace_id = tracing::field::Empty,
        span_id = tracing::field::Empty,
    );
    kit_telemetry::otel::continue_stored(&span, &event.traceparent);
    span
}

impl Relay {
    /// Publishes `events` (already claimed); on failure they go back to the outbox.
    async fn publish(&self, events: Vec<Event>, reason: Option<&'static str>) -> Result<Option<String>, RelayError> {
        if events.is_empty() {
            return Ok(None);
        }
        let mut messages = Vec::with_capacity(events.len());
        let mut spans = Vec::with_capacity(events.len());
        for event in &events {
            let span = producer_span(event, &self.stream);
            let traceparent = span.in_scope(kit_telemetry::otel::current_traceparent).unwrap_or_default();
            messages.push(Message {
                key: event.order_id.clone(),
                kind: event.kind.clone(),
                payload: event.payload.clone(),
                event_id: event.id.clone(),
                traceparent,
                published_at_ms: kit_core::time::now_millis(),
            });
            spans.push(span);
        }
        let ids: Vec<String> = events.iter().map(|e| e.id.clone()).collect();
        let labels = [("stream", self.stream.clone()), ("broker", self.broker.kind().to_string())];
        match self.broker.publish(&self.stream, &messages).await {
            Ok(published) => {
                match reason {
                    None => metrics::counter!("queue_published_total", &labels).increment(ids.len() as u64),
                    Some(reason) => {
                        self.store.mark_republished(&ids).await?;
                        let labels = [("stream", self.stream.clone()), ("reason", reason.to_string())];
                        metrics::counter!("queue_republished_total", &labels).increment(ids.len() as u64);
                    }
                }
                drop(spans);
                Ok(Some(published.epoch))
            }
            Err(err) => {
                for span in &spans {
                    span.in_scope(|| tracing::warn!(error = %err, "publish failed; the event stays in the outbox"));
                }
                metrics::counter!("queue_publish_failures_total", "stream" => self.stream.clone()).increment(1);
                if reason.is_none() {
                    self.store.unclaim(&ids).await?;
                }
                Err(err.into())
            }
        }
    }

    /// New due events, claimed and published; the broker's epoch when it answered.
    pub async fn publish_due(&self) -> Result<Option<String>, RelayError> {
        let due = self.store.due_events_of(RELAYED, kit_core::time::now_millis(), self.config.batch).await?;
        let claimed = self.store.claim_for_publish(due).await?;
        self.publish(claimed, None).await
    }

    /// Publishes again what was published before `before` and never handled.
    async fn republish(&self, before: i64, reason: &'static str) -> Result<usize, RelayError> {
        let mut total = 0;
        for kind in RELAYED {
            let lost = self.store.unhandled(kind, before, self.config.max_republish, self.config.batch).await?;
            if !lost.is_empty() {
                tracing::warn!(events = lost.len(), kind, reason, "publishing again events the queue lost");
            }
            total += lost.len();
            self.publish(lost, Some(reason)).await?;
        }
        Ok(total)
    }

    /// Compares the broker's state with the outbox; republishes what it lost.
    pub async fn check(&self, known_epoch: &mut Option<String>) -> Result<(), RelayError> {
        let started = kit_core::time::now_millis();
        let stats = self.broker.stats(&self.stream, &self.config.watch_group).await?;
        self.gauges(&stats).await;
        let changed = known_epoch.as_ref().is_some_and(|known| *known != stats.epoch);
        if changed {
            // Everything published before now may be gone: all of it, page by page
            // (a republished event's publish time moves past `started`).
            while self.republish(started, "broker_restarted").await? > 0 {}
        } else if stats.pending == 0 && stats.lag == 0 {
            self.republish(started - self.config.republish_grace_ms, "unhandled").await?;
        } else if stats.lag == 0 || stats.lag_ms < self.config.republish_after_ms {
            self.republish(started - self.config.republish_after_ms, "overdue").await?;
        }
        // Only once all of it went out again: a pass that failed halfway
        // sees the new epoch next time and finishes the job.
        *known_epoch = Some(stats.epoch);
        Ok(())
    }

    async fn gauges(&self, stats: &queue::Stats) {
        let stream = [("stream", self.stream.clone())];
        metrics::gauge!("queue_depth", &stream).set(stats.length as f64);
        metrics::gauge!("queue_dead_letter_depth", &stream).set(stats.dead_letters as f64);
        if let Ok((due, open)) = self.store.outbox_backlog(kit_core::time::now_millis()).await {
            metrics::gauge!("outbox_due_unpublished").set(due as f64);
            metrics::gauge!("outbox_published_unhandled").set(open as f64);
        }
    }

    /// Relays until `shutdown`.
    pub async fn run(self, shutdown: CancellationToken) {
        let mut epoch: Option<String> = None;
        let mut tick = tokio::time::interval(Duration::from_millis(self.config.poll_ms));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_check = tokio::time::Instant::now();
        let mut failing = false;
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tick.tick() => {}
            }
            let mut result = self.publish_due().await.map(|answered| {
                if let (Some(answered), Some(known)) = (&answered, &epoch) {
                    // Seen on a publish: check at once rather than on the next round.
                    if answered != known {
                        last_check = tokio::time::Instant::now() - Duration::from_millis(self.config.check_ms);
                    }
                }
            });
            if result.is_ok() && last_check.elapsed() >= Duration::from_millis(self.config.check_ms) {
                last_check = tokio::time::Instant::now();
                result = self.check(&mut epoch).await;
            }
            match result {
                Ok(()) if failing => {
                    failing = false;
                    tracing::info!(stream = %self.stream, "the queue takes events again");
                }
                Ok(()) => {}
                Err(err) if !failing => {
                    failing = true;
                    tracing::warn!(stream = %self.stream, error = %err, "relay pass failed; events stay in the outbox");
                }
                Err(_) => {}
            }
        }
    }
}
