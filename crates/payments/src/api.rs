//! PaymentService over gRPC: validates, records, calls the processor, and
//! reports outcomes in the codes callers (the order saga) act on:
//! a decline is FAILED_PRECONDITION (permanent: compensate), a processor
//! timeout or error is UNAVAILABLE (retryable: the idempotency key is freed
//! and a retry is a new attempt), a second charge for an order is
//! ALREADY_EXISTS. Every attempt stays on record.
use std::sync::Arc;

use contracts::common::v1::Money;
use contracts::payments::v1 as pb;
use kit::grpc_telemetry::annotate;
use kit::resilience::Deadline;
use kit::resilience::guard::caused_by_request;
use kit::time::{now_millis, timestamp_from_millis};
use tonic::{Request, Response, Status};

use crate::domain::{self, Status as PaymentStatus};
use crate::processor::{ChargeCard, Processor, ProcessorError};
use crate::recovery;
use crate::store::{Change, NewPayment, Payment, PaymentStore, StoredMethod};
use crate::vault::{StoredCard, Vault};

pub struct PaymentsApi {
    store: PaymentStore,
    processor: Arc<dyn Processor>,
    methods: Methods,
}

/// Tokenized cards: how they are sealed and how long they last.
pub struct Methods {
    pub vault: Arc<Vault>,
    pub ttl_ms: i64,
}

impl PaymentsApi {
    pub fn new(store: PaymentStore, processor: Arc<dyn Processor>, methods: Methods) -> Self {
        Self { store, processor, methods }
    }
}

fn status_to_pb(status: PaymentStatus) -> pb::PaymentStatus {
    match status {
        PaymentStatus::Pending => pb::PaymentStatus::Pending,
        PaymentStatus::Authorized => pb::PaymentStatus::Authorized,
        PaymentStatus::Processing => pb::PaymentStatus::Processing,
        PaymentStatus::Completed => pb::PaymentStatus::Completed,
        PaymentStatus::Failed => pb::PaymentStatus::Failed,
        PaymentStatus::Refunding => pb::PaymentStatus::Refunding,
        PaymentStatus::Refunded => pb::PaymentStatus::Refunded,
    }
}

fn to_pb(p: Payment) -> pb::Payment {
    let money = |minor_units| Some(Money { currency_code: p.currency_code.clone(), minor_units });
    pb::Payment {
        id: p.id.clone(),
        order_id: p.order_id.clone(),
        user_id: p.user_id.clone(),
        status: status_to_pb(p.status) as i32,
        amount: money(p.amount_minor),
        refunded: money(p.refunded_minor),
        card_brand: p.card_brand.clone(),
        card_last4: p.card_last4.clone(),
        failure_code: p.failure_code.clone().unwrap_or_default(),
        failure_message: p.failure_message.clone().unwrap_or_default(),
        retryable: p.retryable,
        refunds: p
            .refunds
            .iter()
            .map(|r| pb::Refund {
                id: r.id.clone(),
                amount: money(r.amount_minor),
                reason: r.reason.clone(),
                create_time: Some(timestamp_from_millis(r.created_at)),
            })
            .collect(),
        create_time: Some(timestamp_from_millis(p.created_at)),
        update_time: Some(timestamp_from_millis(p.updated_at)),
    }
}

/// Today as (year, month), UTC.
fn this_month() -> (i32, u32) {
    let (year, month) = kit::time::civil_from_days(kit::time::now_millis().div_euclid(86_400_000));
    (year as i32, month as u32)
}

fn check_card(card: Option<&pb::Card>) -> Result<domain::CardSummary, Status> {
    let card = card.ok_or_else(|| Status::invalid_argument("card is required"))?;
    Ok(domain::check_card(&card.number, card.expiry_month, card.expiry_year, &card.cvc, this_month())?)
}

/// When the payment a call with this request's deadline works on counts as abandoned.
fn abandon_at<T>(request: &Request<T>) -> i64 {
    recovery::abandon_at(now_millis(), Deadline::of(request).remaining(std::time::Instant::now()))
}

fn voided(order_id: &str) -> Status {
    Status::failed_precondition(format!("order {order_id} was voided; it is not charged"))
}

fn check_reason(reason: &str) -> Result<(), Status> {
    if reason.len() > 500 {
        return Err(Status::invalid_argument("reason is at most 500 characters"));
    }
    Ok(())
}

fn required(value: &str, name: &str) -> Result<(), Status> {
    if value.trim().is_empty() || value.len() > 200 {
        return Err(Status::invalid_argument(format!("{name} is required (at most 200 characters)")));
    }
    Ok(())
}

impl PaymentsApi {
    /// FAILED with the processor's reason; the status the caller gets.
    async fn fail(&self, payment: &Payment, step: &str, from: PaymentStatus, err: &ProcessorError) -> Status {
        if let Err(e) = self.store.attempt(&payment.id, step, "failed", &err.to_string()).await {
            tracing::error!(payment_id = %payment.id, error = %e, "could not record a failed attempt");
        }
        let change = Change { failure: Some((err.code(), &err.to_string(), err.retryable())), ..Default::default() };
        if let Err(e) = self.store.transition(&payment.id, from, PaymentStatus::Failed, change).await {
            return e.into();
        }
        metrics::counter!("payments_total", "outcome" => err.code()).increment(1);
        match err {
            ProcessorError::Declined(_) => Status::failed_precondition(format!("{err} (payment {})", payment.id)),
            // The processor failed on this card: worth a retry, but no sign
            // that Payments is unhealthy — callers' breakers must not count it.
            _ => caused_by_request(Status::unavailable(format!("{err} ({}, payment {})", err.code(), payment.id))),
        }
    }

    /// The card to charge: given whole, or by the token CreatePaymentMethod
    /// made for this user. Returns the number and what may be kept of it.
    async fn card_to_charge(
        &self,
        card: Option<&pb::Card>,
        token: &str,
        user_id: &str,
    ) -> Result<(String, domain::CardSummary), Status> {
        if let Some(card) = card {
            let summary = check_card(Some(card))?;
            return Ok((card.number.chars().filter(|c| !c.is_whitespace()).collect(), summary));
        }
        if token.is_empty() {
            return Err(Status::invalid_argument("card or payment_method_token is required"));
        }
        required(token, "payment_method_token")?;
        let unknown = || Status::failed_precondition(format!("payment method {token} is unknown or expired"));
        let method = self.store.method(token, now_millis()).await?.ok_or_else(unknown)?;
        // Someone else's token does not exist, as far as they can tell.
        if method.user_id != user_id {
            return Err(unknown());
        }
        let card = self.methods.vault.open(token, &method.sealed).map_err(|err| {
            tracing::error!(payment_method = token, error = %err, "stored card unreadable");
            Status::internal("stored card unreadable")
        })?;
        let summary = domain::check_stored_card(&card.number, card.expiry_month, card.expiry_year, this_month())?;
        Ok((card.number, summary))
    }
}

#[tonic::async_trait]
impl pb::payment_service_server::PaymentService for PaymentsApi {
    async fn process_payment(
        &self,
        request: Request<pb::ProcessPaymentRequest>,
    ) -> Result<Response<pb::Payment>, Status> {
        let abandon_at = abandon_at(&request);
        let request = request.into_inner();
        required(&request.order_id, "order_id")?;
        required(&request.user_id, "user_id")?;
        annotate("order_id", &request.order_id);
        annotate("user_id", &request.user_id);
        let amount = request.amount.ok_or_else(|| Status::invalid_argument("amount is required"))?;
        domain::check_amount(amount.minor_units, &amount.currency_code)?;
        let (number, card) =
            self.card_to_charge(request.card.as_ref(), &request.payment_method_token, &request.user_id).await?;
        if self.store.is_voided(&request.order_id).await? {
            return Err(voided(&request.order_id));
        }
        // The order is paid already, by this user, this amount: a retry whose
        // first answer was lost (we were killed after completing it, before
        // the caller's idempotency record was written). The same answer, and
        // no second charge — refusing it would make the caller compensate a
        // payment that succeeded.
        let paid = self.store.for_order(&request.order_id).await?.into_iter().find(|p| {
            p.status == PaymentStatus::Completed
                && p.user_id == request.user_id
                && p.amount_minor == amount.minor_units
                && p.currency_code == amount.currency_code
        });
        if let Some(paid) = paid {
            tracing::info!(payment_id = %paid.id, order_id = %request.order_id, "order already paid; answered with its payment");
            return Ok(Response::new(to_pb(paid)));
        }

        let payment = self
            .store
            .create(&NewPayment {
                order_id: &request.order_id,
                user_id: &request.user_id,
                amount_minor: amount.minor_units,
                currency_code: &amount.currency_code,
                card_brand: card.brand,
                card_last4: &card.last4,
                abandon_at,
            })
            .await?;
        annotate("payment_id", &payment.id);
        let charge = ChargeCard { number, expired: card.expired };
        let authorization = match self.processor.authorize(&charge, amount.minor_units).await {
            Ok(authorization) => authorization,
            Err(err) => return Err(self.fail(&payment, "authorize", PaymentStatus::Pending, &err).await),
        };
        self.store.attempt(&payment.id, "authorize", "ok", &authorization).await?;
        let authorized = Change { authorization_id: Some(&authorization), ..Default::default() };
        self.store.transition(&payment.id, PaymentStatus::Pending, PaymentStatus::Authorized, authorized).await?;
        self.store
            .transition(&payment.id, PaymentStatus::Authorized, PaymentStatus::Processing, Change::default())
            .await?;
        if let Err(err) = self.processor.capture(&authorization).await {
            return Err(self.fail(&payment, "capture", PaymentStatus::Processing, &err).await);
        }
        self.store.attempt(&payment.id, "capture", "ok", "").await?;
        if let Err(err) = self
            .store
            .transition(&payment.id, PaymentStatus::Processing, PaymentStatus::Completed, Change::default())
            .await
        {
            // Someone else completed this order's payment first: release ours.
            // Best effort, but never silent: the answer to the caller is the refusal.
            let released = self.processor.refund(&authorization, amount.minor_units).await.map_err(|e| e.to_string());
            let detail = match &released {
                Ok(()) => "order already paid; hold released".to_string(),
                Err(e) => format!("order already paid; releasing the hold failed: {e}"),
            };
            let change =
                Change { failure: Some(("duplicate_charge", "order already paid", false)), ..Default::default() };
            let recorded = match self.store.attempt(&payment.id, "complete", "refused", &detail).await {
                Ok(()) => {
                    self.store.transition(&payment.id, PaymentStatus::Processing, PaymentStatus::Failed, change).await
                }
                Err(e) => Err(e),
            };
            if released.is_err() || recorded.is_err() {
                tracing::error!(payment_id = %payment.id, ?released, recorded = ?recorded.err(), "duplicate charge not fully cleaned up");
            }
            return Err(err.into());
        }
        // The order may have been voided while this charge ran (its caller
        // gave up and compensated): the money goes straight back.
        if self.store.is_voided(&request.order_id).await? {
            let completed = self.store.get(&payment.id).await?;
            recovery::refund(
                &self.store,
                self.processor.as_ref(),
                &completed,
                None,
                "the order was voided while the charge ran",
                abandon_at,
            )
            .await?;
            tracing::warn!(payment_id = %payment.id, order_id = %request.order_id, "order voided during the charge; refunded");
            return Err(voided(&request.order_id));
        }
        metrics::counter!("payments_total", "outcome" => "completed").increment(1);
        tracing::info!(payment_id = %payment.id, order_id = %request.order_id, amount = amount.minor_units, "payment completed");
        Ok(Response::new(to_pb(self.store.get(&payment.id).await?)))
    }

    async fn get_payment(&self, request: Request<pb::GetPaymentRequest>) -> Result<Response<pb::Payment>, Status> {
        let id = request.into_inner().payment_id;
        required(&id, "payment_id")?;
        annotate("payment_id", &id);
        Ok(Response::new(to_pb(self.store.get(&id).await?)))
    }

    async fn refund_payment(
        &self,
        request: Request<pb::RefundPaymentRequest>,
    ) -> Result<Response<pb::Payment>, Status> {
        let abandon_at = abandon_at(&request);
        let request = request.into_inner();
        required(&request.payment_id, "payment_id")?;
        annotate("payment_id", &request.payment_id);
        check_reason(&request.reason)?;
        let payment = self.store.get(&request.payment_id).await?;
        if let Some(amount) = &request.amount
            && amount.currency_code != payment.currency_code
        {
            return Err(Status::invalid_argument(format!("the payment is in {}", payment.currency_code)));
        }
        let amount = request.amount.map(|m| m.minor_units);
        recovery::refund(&self.store, self.processor.as_ref(), &payment, amount, &request.reason, abandon_at).await?;
        Ok(Response::new(to_pb(self.store.get(&payment.id).await?)))
    }

    async fn void_order_payments(
        &self,
        request: Request<pb::VoidOrderPaymentsRequest>,
    ) -> Result<Response<pb::VoidOrderPaymentsResponse>, Status> {
        let abandon_at = abandon_at(&request);
        let request = request.into_inner();
        required(&request.order_id, "order_id")?;
        annotate("order_id", &request.order_id);
        check_reason(&request.reason)?;
        let reason = if request.reason.is_empty() { "order voided" } else { request.reason.as_str() };
        // First the tombstone: no charge for this order starts after it, and
        // one still running refunds itself as it completes.
        self.store.void_order(&request.order_id, reason).await?;
        for payment in self.store.for_order(&request.order_id).await? {
            let mut payment = payment;
            if payment.status.in_flight() {
                if payment.abandon_at >= now_millis() {
                    return Err(Status::aborted(format!("payment {} is still being processed; retry", payment.id)));
                }
                recovery::settle(&self.store, self.processor.as_ref(), &payment).await?;
                payment = self.store.get(&payment.id).await?;
                if payment.status.in_flight() {
                    // The processor did not take the reversal: not done yet.
                    return Err(Status::unavailable(format!(
                        "payment {} could not be reversed yet; retry",
                        payment.id
                    )));
                }
            }
            if payment.status == PaymentStatus::Completed && payment.refunded_minor < payment.amount_minor {
                match recovery::refund(&self.store, self.processor.as_ref(), &payment, None, reason, abandon_at).await {
                    Ok(()) => {}
                    // Moved on since we read it (a charge refunding itself):
                    // look again on the retry.
                    Err(status) if status.code() == tonic::Code::FailedPrecondition => {
                        return Err(Status::aborted(format!("payment {} is changing; retry", payment.id)));
                    }
                    Err(status) => return Err(status),
                }
            }
        }
        let payments = self.store.for_order(&request.order_id).await?.into_iter().map(to_pb).collect();
        Ok(Response::new(pb::VoidOrderPaymentsResponse { payments }))
    }

    async fn create_payment_method(
        &self,
        request: Request<pb::CreatePaymentMethodRequest>,
    ) -> Result<Response<pb::PaymentMethod>, Status> {
        let request = request.into_inner();
        required(&request.user_id, "user_id")?;
        annotate("user_id", &request.user_id);
        let summary = check_card(request.card.as_ref())?;
        let card = request.card.ok_or_else(|| Status::invalid_argument("card is required"))?;
        let token = format!("pm_{}", uuid::Uuid::now_v7().simple());
        let stored = StoredCard {
            number: card.number.chars().filter(|c| !c.is_whitespace()).collect(),
            expiry_month: card.expiry_month,
            expiry_year: card.expiry_year,
        };
        let sealed = self.methods.vault.seal(&token, &stored).map_err(|err| {
            tracing::error!(error = %err, "could not seal a card");
            Status::internal("could not store the card")
        })?;
        let now = now_millis();
        let method = StoredMethod {
            token: token.clone(),
            user_id: request.user_id,
            sealed,
            card_brand: summary.brand.to_string(),
            card_last4: summary.last4.clone(),
            expires_at: now + self.methods.ttl_ms,
        };
        self.store.save_method(&method, now).await?;
        annotate("payment_method", &token);
        Ok(Response::new(pb::PaymentMethod {
            token,
            card_brand: method.card_brand,
            card_last4: method.card_last4,
            expire_time: Some(timestamp_from_millis(method.expires_at)),
        }))
    }

    async fn validate_payment_method(
        &self,
        request: Request<pb::ValidatePaymentMethodRequest>,
    ) -> Result<Response<pb::ValidatePaymentMethodResponse>, Status> {
        let request = request.into_inner();
        let card = request.card.as_ref().ok_or_else(|| Status::invalid_argument("card is required"))?;
        let answer =
            match domain::check_card(&card.number, card.expiry_month, card.expiry_year, &card.cvc, this_month()) {
                Ok(summary) if summary.expired => pb::ValidatePaymentMethodResponse {
                    valid: false,
                    reason: "the card has expired".into(),
                    card_brand: summary.brand.into(),
                    card_last4: summary.last4,
                },
                Ok(summary) => pb::ValidatePaymentMethodResponse {
                    valid: true,
                    reason: String::new(),
                    card_brand: summary.brand.into(),
                    card_last4: summary.last4,
                },
                Err(err) => {
                    pb::ValidatePaymentMethodResponse { valid: false, reason: err.to_string(), ..Default::default() }
                }
            };
        Ok(Response::new(answer))
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn this_month_is_a_real_month() {
        let (year, month) = super::this_month();
        assert!((2025..2100).contains(&year));
        assert!((1..=12).contains(&month));
    }
}
