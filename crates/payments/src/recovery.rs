//! Payments a crash or a spent deadline left in flight. tonic drops a call at
//! its deadline, so a payment still PENDING, AUTHORIZED, PROCESSING or
//! REFUNDING after its call's deadline (plus a grace, `abandon_at`) has no one
//! working on it any more. Recovery settles each one so no money stays in
//! limbo:
//! - PENDING: no hold was recorded → FAILED ("interrupted", retryable);
//! - AUTHORIZED, PROCESSING: the hold — and a capture whose answer the crash
//!   lost — is reversed at the processor → FAILED ("interrupted");
//! - REFUNDING: back to COMPLETED, as when the processor fails a refund; the
//!   refund is asked again by whoever wanted it (the saga retries its
//!   compensation, `VoidOrderPayments` refunds what is COMPLETED).
//!
//! And a charge of a voided order that is still COMPLETED — the charge
//! finished after the void and its process died before it could refund
//! itself — is refunded here.
use std::sync::Arc;
use std::time::Duration;

use kit::shutdown::CancellationToken;
use kit_core::time::now_millis;

use crate::domain::{self, Status};
use crate::failure::PaymentError;
use crate::processor::Processor;
use crate::store::{Change, Payment, PaymentStore, StoreError};

/// How long after its call's deadline a payment counts as abandoned.
pub const GRACE_MS: i64 = 1_000;
/// The longest a payment call may work on it when the caller set no deadline.
pub const MAX_CALL_MS: i64 = 60_000;

/// `abandon_at` for a payment a call with `deadline` left is working on.
pub fn abandon_at(now: i64, deadline: Option<Duration>) -> i64 {
    let left = deadline.map_or(MAX_CALL_MS, |d| (d.as_millis() as i64).min(MAX_CALL_MS));
    now + left + GRACE_MS
}

/// Settles one abandoned payment (see the module docs). A payment that moved
/// on meanwhile is left as it is.
pub async fn settle(store: &PaymentStore, processor: &dyn Processor, payment: &Payment) -> Result<(), StoreError> {
    let interrupted = |retryable| Change {
        failure: Some(("interrupted", "the payment was interrupted and reversed", retryable)),
        ..Default::default()
    };
    let result = match payment.status {
        Status::Pending => store.transition(&payment.id, Status::Pending, Status::Failed, interrupted(true)).await,
        Status::Authorized | Status::Processing => {
            let authorization = payment.authorization_id.clone().unwrap_or_default();
            if let Err(err) = processor.reverse(&authorization, payment.amount_minor).await {
                // Tried again on the next pass.
                store.attempt(&payment.id, "reverse", "failed", &err.to_string()).await?;
                return Ok(());
            }
            store.attempt(&payment.id, "reverse", "ok", "abandoned in flight").await?;
            store.transition(&payment.id, payment.status, Status::Failed, interrupted(false)).await
        }
        Status::Refunding => {
            store.attempt(&payment.id, "refund", "interrupted", "abandoned in flight; to be asked again").await?;
            store.transition(&payment.id, Status::Refunding, Status::Completed, Change::default()).await
        }
        _ => return Ok(()),
    };
    match result {
        Ok(()) => {
            metrics::counter!("payments_recovered_total", "from" => payment.status.as_str()).increment(1);
            tracing::warn!(payment_id = %payment.id, order_id = %payment.order_id, from = payment.status.as_str(), "abandoned payment settled");
            Ok(())
        }
        // Someone finished it after all: nothing to settle.
        Err(StoreError::Domain(_)) => Ok(()),
        Err(err) => Err(err),
    }
}

/// Refunds `amount` (None: what remains) of a COMPLETED payment; the call
/// doing it is gone by `abandon_at`.
pub async fn refund(
    store: &PaymentStore,
    processor: &dyn Processor,
    payment: &Payment,
    amount: Option<i64>,
    reason: &str,
    abandon_at: i64,
) -> Result<(), PaymentError> {
    if payment.status != Status::Completed {
        return Err(PaymentError::precondition(format!(
            "only a COMPLETED payment can be refunded; this one is {}",
            payment.status.as_str()
        )));
    }
    let amount = domain::refund_amount(payment.amount_minor, payment.refunded_minor, amount)?;
    let refunding = Change { abandon_at: Some(abandon_at), ..Default::default() };
    store.transition(&payment.id, Status::Completed, Status::Refunding, refunding).await?;
    let authorization = payment.authorization_id.clone().unwrap_or_default();
    if let Err(err) = processor.refund(&authorization, amount).await {
        store.attempt(&payment.id, "refund", "failed", &err.to_string()).await?;
        store.transition(&payment.id, Status::Refunding, Status::Completed, Change::default()).await?;
        return Err(PaymentError::NotYet(format!("{err}; retry the refund")));
    }
    store.attempt(&payment.id, "refund", "ok", &amount.to_string()).await?;
    store.complete_refund(&payment.id, amount, reason).await?;
    metrics::counter!("payment_refunds_total").increment(1);
    Ok(())
}

/// Settles every abandoned payment and refunds what voided orders still
/// hold; returns how many payments were looked at.
pub async fn sweep(store: &PaymentStore, processor: &dyn Processor) -> Result<usize, StoreError> {
    let abandoned = store.abandoned(now_millis(), 500).await?;
    for payment in &abandoned {
        settle(store, processor, payment).await?;
    }
    let kept = store.charged_but_voided(500).await?;
    for payment in &kept {
        let abandon_at = abandon_at(now_millis(), Some(Duration::from_secs(10)));
        match refund(store, processor, payment, None, "the order was voided", abandon_at).await {
            Ok(()) => {
                tracing::warn!(payment_id = %payment.id, order_id = %payment.order_id, "charge of a voided order refunded")
            }
            // Moved on meanwhile, or the processor said no: the next pass looks again.
            Err(err) => {
                tracing::warn!(payment_id = %payment.id, error = %err, "refund of a voided order's charge failed; retrying")
            }
        }
    }
    Ok(abandoned.len() + kept.len())
}

/// Sweeps every `every` until `shutdown` (the first pass at once: a restart
/// after a crash finds that crash's payments).
pub fn spawn(
    store: PaymentStore,
    processor: Arc<dyn Processor>,
    every: Duration,
    shutdown: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tick.tick() => if let Err(err) = sweep(&store, processor.as_ref()).await {
                    tracing::warn!(error = %err, "payment recovery pass failed; retrying");
                },
            }
        }
    })
}
