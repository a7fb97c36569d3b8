//! Fulfilment's decisions and what stays in this process. A paid order's
//! `order.paid` event (written in the same transaction that made it PAID) is
//! relayed to the queue once due (`relay`), and the fulfilment worker (its
//! own process) answers it with AdvanceFulfilment(SHIPPED); the
//! `order.shipped` event written with that change brings DELIVERED the same
//! way. `step` is the pure decision both use.
//!
//! The outbox worker here only finishes cancellations of paid orders
//! (`order.cancelling`: refund, restock, CANCELLED) that could not be
//! finished when they were asked for: that is compensation, owed by Orders
//! itself, not fulfilment.
use std::time::Duration;

use futures::future::BoxFuture;
use kit::shutdown::CancellationToken;
use serde::{Deserialize, Serialize};

use crate::domain::OrderStatus;
use crate::events::{ORDER_CANCELLING, ORDER_SHIPPED};
use crate::store::{Event, OrderStore, StoreError};

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

/// One fulfilment step: the status it starts from and the event announcing it (kind, delay).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Step {
    pub from: OrderStatus,
    pub next: Option<(&'static str, i64)>,
}

/// The step that ends in `to`, or `None` when fulfilment does not move orders there.
pub fn step(to: OrderStatus, config: &FulfilmentConfig) -> Option<Step> {
    match to {
        OrderStatus::Shipped => {
            Some(Step { from: OrderStatus::Paid, next: Some((ORDER_SHIPPED, config.deliver_after_ms)) })
        }
        OrderStatus::Delivered => Some(Step { from: OrderStatus::Shipped, next: None }),
        _ => None,
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

/// Finishes the cancellations due at `now`; returns how many were settled.
/// Each is a consumer span continuing the trace that wrote the event.
pub async fn process_due(
    store: &OrderStore,
    config: &FulfilmentConfig,
    cancels: &dyn FinishCancel,
    now: i64,
) -> Result<usize, StoreError> {
    let events = store.due_events(ORDER_CANCELLING, now, config.batch).await?;
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
        kit_telemetry::otel::continue_stored(&span, &event.traceparent);
        if tracing::Instrument::instrument(finish(store, cancels, &event), span).await? {
            settled += 1;
        }
    }
    Ok(settled)
}

/// One cancellation: finished and marked, or `false` to be retried later.
async fn finish(store: &OrderStore, cancels: &dyn FinishCancel, event: &Event) -> Result<bool, StoreError> {
    match cancels.finish_cancel(&event.order_id).await {
        Ok(()) => {
            store.mark_published(&event.id).await?;
            Ok(true)
        }
        Err(error) => {
            tracing::warn!(event_id = %event.id, order_id = %event.order_id, %error, "cancellation not finished; retrying later");
            store.retry_later(&event.id, 1_000 * (event.attempts + 1).min(30)).await?;
            Ok(false)
        }
    }
}

/// Polls the outbox for cancellations to finish until `shutdown`.
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
                if let Err(err) = process_due(&store, &config, cancels.as_ref(), kit_core::time::now_millis()).await {
                    tracing::warn!(error = %err, "outbox pass failed; retrying next tick");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fulfilment_moves_paid_to_shipped_to_delivered_and_nowhere_else() {
        let config = FulfilmentConfig::default();
        assert_eq!(
            step(OrderStatus::Shipped, &config),
            Some(Step { from: OrderStatus::Paid, next: Some((ORDER_SHIPPED, config.deliver_after_ms)) })
        );
        assert_eq!(step(OrderStatus::Delivered, &config), Some(Step { from: OrderStatus::Shipped, next: None }));
        for other in [OrderStatus::Cancelled, OrderStatus::Paid, OrderStatus::Returned, OrderStatus::Created] {
            assert_eq!(step(other, &config), None);
        }
    }
}
