//! Placing an order: the card is tokenized by Payments first (a malformed
//! card is refused before anything happens, and the saga keeps only the
//! token), then the order saga runs on its own task, and the caller hears
//! within `answer_within` whatever the card does: the order when the saga is
//! done, its refusal, or — while it is still going (a slow processor, a
//! dependency restarting) — the order as pending, to poll. A saga that ended
//! because a dependency stayed unavailable past its budget did not refuse the
//! order: asked again with the same idempotency key, the order is placed
//! afresh (the next generation of ids), never the old failure replayed.
use std::sync::Arc;
use std::time::Duration;

use contracts::payments::v1 as payments_pb;
use contracts::payments::v1::payment_service_client::PaymentServiceClient;
use kit_core::error::DomainError;
use kit_core::reason::Reason;
use saga::{Orchestrator, SagaRecord, SagaState};
use tonic::Code;

use crate::steps::{Channel, initial_context};
use crate::store::{Order, OrderStore, StoreError};

/// Attempts (generations of ids) one idempotency key may start, each after
/// the previous one ended on the platform's trouble.
pub const MAX_GENERATIONS: u32 = 10;

pub struct Placing {
    pub store: OrderStore,
    pub orchestrator: Arc<Orchestrator>,
    pub payments: PaymentServiceClient<Channel>,
    /// How long a caller waits for the saga before hearing "pending".
    pub answer_within: Duration,
    pub call_timeout: Duration,
}

/// A checked order to place.
pub struct NewOrder {
    pub user_id: String,
    pub items: Vec<(String, i64)>,
    pub currency: String,
    pub address: Option<String>,
    pub card: payments_pb::Card,
}

/// Why an order was not placed: the account for people, and the reason's
/// name for programs when the failing service gave one (CARD_DECLINED,
/// CIRCUIT_OPEN …).
#[derive(Debug)]
pub struct Why {
    pub message: String,
    pub reason: Option<Reason>,
}

impl From<String> for Why {
    fn from(message: String) -> Self {
        Self { message, reason: None }
    }
}

/// How a placed order stands when the caller is answered.
#[derive(Debug)]
pub enum Placed {
    /// The saga completed: the order, paid.
    Done(Box<Order>),
    /// Refused for the order's own reason (declined card, out of stock).
    Refused(Why),
    /// A dependency stayed unavailable past the saga's budget; placing it
    /// again (same key) may pass.
    Unavailable(Why),
    /// Still going: the saga as it stands.
    Pending(Box<SagaRecord>),
}

/// Why an order could not be placed at all (nothing was started).
#[derive(Debug, thiserror::Error)]
pub enum NotPlaced {
    /// The card (or another part of the request) is malformed.
    #[error("{0}")]
    Invalid(String),
    /// Payments could not tokenize the card right now.
    #[error("{0}")]
    Unavailable(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl Placing {
    /// Places `order` under the first of `ids` (saga id, order id) that is
    /// free, or joins the saga already placing it.
    pub async fn place(
        &self,
        ids: impl Iterator<Item = (String, String)>,
        order: NewOrder,
        deadline: Option<Duration>,
    ) -> Result<Placed, NotPlaced> {
        let wait = self.wait(deadline);
        for (saga_id, order_id) in ids {
            match self.store.saga(&saga_id).await {
                // Ended on the platform's trouble: this key may try again.
                Ok(saga) if saga.state.is_terminal() && saga.failure_retryable => continue,
                Ok(_) => return Ok(self.await_saga(&saga_id, wait).await?),
                Err(StoreError::Domain(DomainError::NotFound(_))) => {}
                Err(err) => return Err(err.into()),
            }
            return self.start(&saga_id, &order_id, order, wait).await;
        }
        Ok(Placed::Unavailable(format!("the order was tried {MAX_GENERATIONS} times; try again later").into()))
    }

    /// How long to wait for a saga: `answer_within`, less when the caller's
    /// deadline is nearer (with room to answer).
    fn wait(&self, deadline: Option<Duration>) -> Duration {
        let room = Duration::from_millis(300);
        deadline.map_or(self.answer_within, |left| left.saturating_sub(room).min(self.answer_within))
    }

    async fn start(&self, saga_id: &str, order_id: &str, order: NewOrder, wait: Duration) -> Result<Placed, NotPlaced> {
        let token = self.tokenize(saga_id, &order.user_id, order.card).await?;
        let context = initial_context(&order.items, &order.currency, order.address, &token);
        let saga = self.orchestrator.new_saga(saga_id, order_id, &order.user_id, context);
        // The saga runs on its own task: a caller that gives up (or is told
        // "pending") does not stop it half way.
        let orchestrator = self.orchestrator.clone();
        // Still the request's trace (the steps' calls are its children) and
        // its routing: its user's versions, a smoke test's override.
        let mut run = tokio::spawn(kit_client::routing::carry(tracing::Instrument::instrument(
            async move { orchestrator.run(saga).await },
            tracing::info_span!("saga", order_id = %order_id),
        )));
        match tokio::time::timeout(wait, &mut run).await {
            Ok(Ok(Ok(saga))) => Ok(self.answer(saga).await?),
            Ok(outcome) => {
                let error =
                    outcome.map_or_else(|e| e.to_string(), |r| r.err().map(|e| e.to_string()).unwrap_or_default());
                tracing::error!(order_id, %error, "saga store failed; the saga resumes on restart");
                let why = "the order could not be recorded; it will be completed or undone shortly";
                Ok(Placed::Unavailable(why.to_string().into()))
            }
            // Still running: it goes on, the caller polls.
            Err(_) => Ok(self.await_saga(saga_id, Duration::ZERO).await?),
        }
    }

    /// Payments keeps the card under a token for this saga (the same token
    /// on a retry: the call is idempotent by the saga's key).
    async fn tokenize(&self, saga_id: &str, user_id: &str, card: payments_pb::Card) -> Result<String, NotPlaced> {
        let message = payments_pb::CreatePaymentMethodRequest { user_id: user_id.to_string(), card: Some(card) };
        let mut request = tonic::Request::new(message);
        let metadata = request.metadata_mut();
        if let Ok(key) = format!("saga:{saga_id}:tokenize").parse() {
            metadata.insert("idempotency-key", key);
        }
        metadata.insert("x-client-id", tonic::metadata::MetadataValue::from_static("orders"));
        if let Ok(user) = user_id.parse() {
            metadata.insert("x-user-id", user);
        }
        request.set_timeout(self.call_timeout);
        match self.payments.clone().create_payment_method(request).await {
            Ok(method) => Ok(method.into_inner().token),
            Err(status) if status.code() == Code::InvalidArgument => {
                Err(NotPlaced::Invalid(format!("payment_method: {}", status.message())))
            }
            Err(status) => {
                tracing::warn!(code = ?status.code(), detail = %status.message(), "could not tokenize the card");
                Err(NotPlaced::Unavailable("payments is unavailable; nothing was ordered — retry shortly".into()))
            }
        }
    }

    /// Waits up to `wait` for a saga another call (or the recovery after a
    /// restart) is driving; then its answer, or pending.
    async fn await_saga(&self, saga_id: &str, wait: Duration) -> Result<Placed, StoreError> {
        let until = tokio::time::Instant::now() + wait;
        loop {
            let saga = self.store.saga(saga_id).await?;
            // Compensating: the outcome is decided, only the undo goes on.
            if saga.state.is_terminal() || saga.state == SagaState::Compensating {
                return self.answer(saga).await;
            }
            if tokio::time::Instant::now() >= until {
                return Ok(Placed::Pending(Box::new(saga)));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// A decided saga's answer (completed, or failed and being or done undoing).
    async fn answer(&self, saga: SagaRecord) -> Result<Placed, StoreError> {
        let why = || Why {
            message: saga.failure.clone().unwrap_or_else(|| "the order could not be completed".into()),
            reason: saga.failure_reason.as_deref().and_then(Reason::from_name),
        };
        Ok(match saga.state {
            SagaState::Completed => Placed::Done(Box::new(self.store.get(&saga.order_id).await?)),
            SagaState::Running => Placed::Pending(Box::new(saga)),
            _ if saga.failure_retryable => Placed::Unavailable(why()),
            _ => Placed::Refused(why()),
        })
    }
}
