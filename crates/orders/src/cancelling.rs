//! Cancelling an order. The decision is the status change (`domain::
//! cancellation`): an order with nothing taken goes straight to CANCELLED; a
//! PAID one goes to CANCELLING in one conditional update that also writes an
//! `order.cancelling` outbox event — so it races fulfilment's PAID → SHIPPED
//! fairly (exactly one wins), and the rest cannot be forgotten. The rest is
//! the money back (VoidOrderPayments: nothing taken or held for the order)
//! and the units back to stock (RestockInventory), both idempotent by key and
//! essential (an open breaker lets them probe), then CANCELLING → CANCELLED.
//! The request finishes it at once when it can; otherwise the outbox worker
//! does, retrying until it succeeds.
use std::time::Duration;

use contracts::payments::v1 as payments_pb;
use contracts::payments::v1::payment_service_client::PaymentServiceClient;
use contracts::products::v1 as products_pb;
use contracts::products::v1::product_service_client::ProductServiceClient;
use kit_core::error::DomainError;
use tonic::Code;

use crate::domain::{self, Cancellation, OrderStatus};
use crate::events::ORDER_CANCELLING;
use crate::steps::{Channel, essential};
use crate::store::{Change, Order, OrderStore, StoreError};

pub struct Canceller {
    pub store: OrderStore,
    pub payments: PaymentServiceClient<Channel>,
    pub products: ProductServiceClient<Channel>,
    pub call_timeout: Duration,
}

/// Why a cancellation is not finished yet (it will be, by the outbox worker).
#[derive(Debug, thiserror::Error)]
pub enum Unfinished {
    #[error("{0}")]
    Call(#[from] tonic::Status),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl Canceller {
    /// Cancels `order` (already checked to be the caller's). Returns the
    /// order as it stands: CANCELLED, or CANCELLING when the refund or the
    /// restock could not be done right now (the outbox worker finishes it).
    pub async fn cancel(&self, order: &Order, reason: &str) -> Result<Order, StoreError> {
        match domain::cancellation(order.status)? {
            Cancellation::Now => {
                let change = Change { failure_reason: Some(reason), ..Default::default() };
                self.store.transition(&order.id, order.status, OrderStatus::Cancelled, change).await?;
            }
            Cancellation::RefundAndRestock => {
                let change = Change {
                    failure_reason: Some(reason),
                    event: Some((ORDER_CANCELLING, "{}", 0)),
                    ..Default::default()
                };
                self.store.transition(&order.id, OrderStatus::Paid, OrderStatus::Cancelling, change).await?;
                self.finish_or_leave(&order.id).await;
            }
            Cancellation::Finish => self.finish_or_leave(&order.id).await,
        }
        self.store.get(&order.id).await
    }

    async fn finish_or_leave(&self, order_id: &str) {
        if let Err(err) = self.finish(order_id).await {
            tracing::warn!(order_id, error = %err, "cancellation not finished yet; the outbox worker will");
        }
    }

    /// The money back, the units back to stock, then CANCELLED. Idempotent:
    /// every part may already have happened.
    pub async fn finish(&self, order_id: &str) -> Result<(), Unfinished> {
        let void = payments_pb::VoidOrderPaymentsRequest {
            order_id: order_id.to_string(),
            reason: format!("order {order_id} cancelled"),
        };
        self.payments.clone().void_order_payments(self.request(order_id, "void", void)).await?;
        let restock = products_pb::RestockInventoryRequest { order_id: order_id.to_string() };
        match self.products.clone().restock_inventory(self.request(order_id, "restock", restock)).await {
            Ok(_) => {}
            // Nothing was sold under this order id (or it is already back): nothing to put back.
            Err(status) if matches!(status.code(), Code::NotFound | Code::FailedPrecondition) => {
                tracing::warn!(order_id, detail = %status.message(), "no committed sale to restock");
            }
            Err(status) => return Err(status.into()),
        }
        match self.store.transition(order_id, OrderStatus::Cancelling, OrderStatus::Cancelled, Change::default()).await
        {
            Ok(()) => {
                metrics::counter!("orders_cancelled_after_payment_total").increment(1);
                Ok(())
            }
            // A repeat: already CANCELLED.
            Err(StoreError::Domain(DomainError::FailedPrecondition(_))) => Ok(()),
            Err(err) => Err(err.into()),
        }
    }

    fn request<T>(&self, order_id: &str, part: &str, message: T) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        let metadata = request.metadata_mut();
        if let Ok(key) = format!("cancel:{part}:{order_id}").parse() {
            metadata.insert("idempotency-key", key);
        }
        metadata.insert("x-client-id", tonic::metadata::MetadataValue::from_static("orders"));
        request.set_timeout(self.call_timeout);
        essential(request)
    }
}
