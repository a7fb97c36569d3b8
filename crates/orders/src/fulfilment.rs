//! Fulfilment from the transactional outbox: a paid order's `order.paid`
//! event (written in the same transaction that made it PAID) ships it after a
//! delay, and the `order.shipped` event written with that change delivers it.
//! Delivery is at least once: a crash between a change and marking its event
//! published replays the event, and the conditional transition then finds the
//! order already moved on and only marks the event done. The same worker
//! finishes cancellations of paid orders (`order.cancelling`: refund, restock,
//! CANCELLED) that could not be finished when they were asked for.
use std::time::Duration;

use futures::future::BoxFuture;
use kit::error::DomainError;
use kit::shutdown::CancellationToken;
use serde::{Deserialize, Serialize};

use crate::domain::OrderStatus;
use crate::store::{Change, Event, OrderStore, StoreError};

pub const ORDER_PAID: &str = "order.paid";
pub const ORDER_SHIPPED: &str = "order.shipped";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FulfilmentConfig {
    /// From PAID to SHIPPED.
    pub ship_after_ms: i64,
    /// From SHIPPED to DELIVERED.
    pub deliver_after_ms: i64,
    pub poll_ms: u64,
    pub batch: i64,
}

impl Default for FulfilmentConfig {
    fn default() -> Self {
        Self { ship_after_ms: 2_000, deliver_after_ms: 3_000, poll_ms: 200, batch: 50 }
    }
}

/// What finishes a paid order's cancellation (its refund and restock, then
/// CANCELLED): `cancelling::Canceller`, over the other services.
pub trait FinishCancel: Send + Sync {
    fn finish_cancel<'a>(&'a self, order_id: &'a str) -> BoxFuture<'a, Result<(), String>>;
}

impl FinishCancel for crate::cancelling::Canceller {
    fn finish_cancel<'a>(&'a self, order_id: &'a str) -> BoxFuture<'a, Result<(), String>> {
        Box::pin(async move { self.finish(order_id).await.map_err(|e| e.to_string()) })
    }
}

/// What one event asks for.
struct Effect {
    from: OrderStatus,
    to: OrderStatus,
    /// The event announcing the change, and its delay.
    next: Option<(&'static str, i64)>,
}

fn effect(event: &Event, config: &FulfilmentConfig) -> Option<Effect> {
    match event.kind.as_str() {
        ORDER_PAID => Some(Effect {
            from: OrderStatus::Paid,
            to: OrderStatus::Shipped,
            next: Some((ORDER_SHIPPED, config.deliver_after_ms)),
        }),
        ORDER_SHIPPED => Some(Effect { from: OrderStatus::Shipped, to: OrderStatus::Delivered, next: None }),
        _ => None,
    }
}

/// Handles the events due at `now`; returns how many were settled. Each is a
/// consumer span continuing the trace that wrote the event, so an order's
/// trace shows it shipped and delivered.
pub async fn process_due(
    store: &OrderStore,
    config: &FulfilmentConfig,
    cancels: &dyn FinishCancel,
    now: i64,
) -> Result<usize, StoreError> {
    let events = store.due_events(now, config.batch).await?;
    let mut settled = 0;
    for event in events {
        let span = tracing::info_span!(
            "outbox",
            otel.name = %format_args!("handle {}", event.kind),
            otel.kind = "consumer",
            order_id = %event.order_id,
            event_id = %event.id,
            trace_id = tracing::field::Empty,
            span_id = tracing::field::Empty,
        );
        kit::otel::continue_stored(&span, &event.traceparent);
        if tracing::Instrument::instrument(handle(store, config, cancels, &event), span).await? {
            settled += 1;
        }
    }
    Ok(settled)
}

/// One event: the change it asks for, then marked published; `false` when it
/// is to be retried later.
async fn handle(
    store: &OrderStore,
    config: &FulfilmentConfig,
    cancels: &dyn FinishCancel,
    event: &Event,
) -> Result<bool, StoreError> {
    if event.kind == crate::cancelling::ORDER_CANCELLING {
        return match cancels.finish_cancel(&event.order_id).await {
            Ok(()) => {
                store.mark_published(&event.id).await?;
                Ok(true)
            }
            Err(error) => {
                tracing::warn!(event_id = %event.id, order_id = %event.order_id, %error, "cancellation not finished; retrying later");
                store.retry_later(&event.id, 1_000 * (event.attempts + 1).min(30)).await?;
                Ok(false)
            }
        };
    }
    let Some(Effect { from, to, next }) = effect(event, config) else {
        tracing::warn!(event_id = %event.id, kind = %event.kind, "unknown outbox event; skipped");
        store.mark_published(&event.id).await?;
        return Ok(true);
    };
    let change = Change { event: next.map(|(kind, delay)| (kind, "{}", delay)), ..Default::default() };
    match store.transition(&event.order_id, from, to, change).await {
        Ok(()) => {
            tracing::info!(order_id = %event.order_id, from = from.as_str(), to = to.as_str(), "fulfilment step");
        }
        // Already moved on: cancelled meanwhile, or this event was handled
        // before a crash kept it from being marked.
        Err(StoreError::Domain(DomainError::FailedPrecondition(_) | DomainError::NotFound(_))) => {}
        Err(err) => {
            tracing::warn!(event_id = %event.id, error = %err, "fulfilment step failed; retrying later");
            store.retry_later(&event.id, 1_000 * (event.attempts + 1).min(30)).await?;
            return Ok(false);
        }
    }
    store.mark_published(&event.id).await?;
    Ok(true)
}

/// Polls the outbox until `shutdown`.
pub async fn run(
    store: OrderStore,
    config: FulfilmentConfig,
    cancels: std::sync::Arc<dyn FinishCancel>,
    shutdown: CancellationToken,
) {
    let mut tick = tokio::time::interval(Duration::from_millis(config.poll_ms.max(10)));
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tick.tick() => {
                if let Err(err) = process_due(&store, &config, cancels.as_ref(), kit::time::now_millis()).await {
                    tracing::warn!(error = %err, "fulfilment pass failed; retrying next tick");
                }
            }
        }
    }
}
