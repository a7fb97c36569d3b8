//! Payments' workflows, in the order their steps must happen: charge an
//! order (authorize, capture, complete — or release), refund, void an
//! order's payments, keep a card for later. They decide; `store` persists,
//! `processor` moves money, and `api` only translates protobuf and maps
//! [`PaymentError`] to gRPC codes.
use std::sync::Arc;

use kit_core::error::DomainError;
use kit_core::reason::Reason;
use kit_core::time::now_millis;

use crate::domain::{self, CardSummary, Status};
use crate::failure::PaymentError;
use crate::processor::{ChargeCard, Processor, ProcessorError};
use crate::recovery;
use crate::store::{Change, NewPayment, Payment, PaymentStore, StoredMethod};
use crate::vault::{StoredCard, Vault};

/// Tokenized cards: how they are sealed and how long they last.
pub struct Methods {
    pub vault: Arc<Vault>,
    pub ttl_ms: i64,
}

/// A card as a caller gives it.
pub struct CardInput<'a> {
    pub number: &'a str,
    pub expiry_month: i32,
    pub expiry_year: i32,
    pub cvc: &'a str,
}

/// What to charge with: a card given whole, or a token CreatePaymentMethod made.
pub enum PayWith<'a> {
    Card(CardInput<'a>),
    Token(&'a str),
}

pub struct Charge<'a> {
    pub order_id: &'a str,
    pub user_id: &'a str,
    pub amount_minor: i64,
    pub currency_code: &'a str,
    pub pay_with: PayWith<'a>,
    /// When the call charging counts as gone (its deadline plus a grace).
    pub abandon_at: i64,
}

pub struct Payments {
    store: PaymentStore,
    processor: Arc<dyn Processor>,
    methods: Methods,
}

/// Today as (year, month), UTC.
pub fn this_month() -> (i32, u32) {
    let (year, month) = kit_core::time::civil_from_days(now_millis().div_euclid(86_400_000));
    (year as i32, month as u32)
}

pub fn check_card(card: &CardInput<'_>) -> Result<CardSummary, PaymentError> {
    Ok(domain::check_card(card.number, card.expiry_month, card.expiry_year, card.cvc, this_month())?)
}

fn digits(number: &str) -> String {
    number.chars().filter(|c| !c.is_whitespace()).collect()
}

fn voided(order_id: &str) -> PaymentError {
    PaymentError::precondition(format!("order {order_id} was voided; it is not charged"))
}

impl Payments {
    pub fn new(store: PaymentStore, processor: Arc<dyn Processor>, methods: Methods) -> Self {
        Self { store, processor, methods }
    }

    pub async fn get(&self, id: &str) -> Result<Payment, PaymentError> {
        Ok(self.store.get(id).await?)
    }

    /// Charges an order once: a retry of a charge that completed answers with
    /// that payment; a voided order is not charged (and a charge the void
    /// overtook is refunded).
    pub async fn charge(&self, charge: Charge<'_>) -> Result<Payment, PaymentError> {
        domain::check_amount(charge.amount_minor, charge.currency_code)?;
        let (number, card) = self.card_to_charge(&charge.pay_with, charge.user_id).await?;
        if self.store.is_voided(charge.order_id).await? {
            return Err(voided(charge.order_id));
        }
        // The order is paid already, by this user, this amount: a retry whose
        // first answer was lost (we were killed after completing it, before
        // the caller's idempotency record was written). The same answer, and
        // no second charge — refusing it would make the caller compensate a
        // payment that succeeded.
        let paid = self.store.for_order(charge.order_id).await?.into_iter().find(|p| {
            p.status == Status::Completed
                && p.user_id == charge.user_id
                && p.amount_minor == charge.amount_minor
                && p.currency_code == charge.currency_code
        });
        if let Some(paid) = paid {
            tracing::info!(payment_id = %paid.id, order_id = %charge.order_id, "order already paid; answered with its payment");
            return Ok(paid);
        }

        let payment = self
            .store
            .create(&NewPayment {
                order_id: charge.order_id,
                user_id: charge.user_id,
                amount_minor: charge.amount_minor,
                currency_code: charge.currency_code,
                card_brand: card.brand,
                card_last4: &card.last4,
                abandon_at: charge.abandon_at,
            })
            .await?;
        kit_telemetry::grpc_telemetry::annotate("payment_id", &payment.id);
        let card = ChargeCard { number, expired: card.expired };
        let authorization = match self.processor.authorize(&card, charge.amount_minor).await {
            Ok(authorization) => authorization,
            Err(err) => return Err(self.fail(&payment, "authorize", Status::Pending, &err).await),
        };
        self.store.attempt(&payment.id, "authorize", "ok", &authorization).await?;
        let authorized = Change { authorization_id: Some(&authorization), ..Default::default() };
        self.store.transition(&payment.id, Status::Pending, Status::Authorized, authorized).await?;
        self.store.transition(&payment.id, Status::Authorized, Status::Processing, Change::default()).await?;
        if let Err(err) = self.processor.capture(&authorization).await {
            return Err(self.fail(&payment, "capture", Status::Processing, &err).await);
        }
        self.store.attempt(&payment.id, "capture", "ok", "").await?;
        if let Err(err) =
            self.store.transition(&payment.id, Status::Processing, Status::Completed, Change::default()).await
        {
            self.release_duplicate(&payment, &authorization, charge.amount_minor).await;
            return Err(err.into());
        }
        // The order may have been voided while this charge ran (its caller
        // gave up and compensated): the money goes straight back.
        if self.store.is_voided(charge.order_id).await? {
            let completed = self.store.get(&payment.id).await?;
            let reason = "the order was voided while the charge ran";
            recovery::refund(&self.store, self.processor.as_ref(), &completed, None, reason, charge.abandon_at).await?;
            tracing::warn!(payment_id = %payment.id, order_id = %charge.order_id, "order voided during the charge; refunded");
            return Err(voided(charge.order_id));
        }
        metrics::counter!("payments_total", "outcome" => "completed").increment(1);
        tracing::info!(payment_id = %payment.id, order_id = %charge.order_id, amount = charge.amount_minor, "payment completed");
        Ok(self.store.get(&payment.id).await?)
    }

    /// Someone else completed this order's payment first: release ours.
    /// Best effort, but never silent: the answer to the caller is the refusal.
    async fn release_duplicate(&self, payment: &Payment, authorization: &str, amount_minor: i64) {
        let released = self.processor.refund(authorization, amount_minor).await.map_err(|e| e.to_string());
        let detail = match &released {
            Ok(()) => "order already paid; hold released".to_string(),
            Err(e) => format!("order already paid; releasing the hold failed: {e}"),
        };
        let change = Change { failure: Some(("duplicate_charge", "order already paid", false)), ..Default::default() };
        let recorded = match self.store.attempt(&payment.id, "complete", "refused", &detail).await {
            Ok(()) => self.store.transition(&payment.id, Status::Processing, Status::Failed, change).await,
            Err(e) => Err(e),
        };
        if released.is_err() || recorded.is_err() {
            tracing::error!(payment_id = %payment.id, ?released, recorded = ?recorded.err(), "duplicate charge not fully cleaned up");
        }
    }

    /// FAILED with the processor's reason; what the caller is told.
    async fn fail(&self, payment: &Payment, step: &str, from: Status, err: &ProcessorError) -> PaymentError {
        if let Err(e) = self.store.attempt(&payment.id, step, "failed", &err.to_string()).await {
            tracing::error!(payment_id = %payment.id, error = %e, "could not record a failed attempt");
        }
        let change = Change { failure: Some((err.code(), &err.to_string(), err.retryable())), ..Default::default() };
        if let Err(e) = self.store.transition(&payment.id, from, Status::Failed, change).await {
            return e.into();
        }
        metrics::counter!("payments_total", "outcome" => err.code()).increment(1);
        match err {
            ProcessorError::Declined(_) => {
                DomainError::refused(Reason::CardDeclined, format!("{err} (payment {})", payment.id)).into()
            }
            _ => PaymentError::ProcessorTrouble(format!("{err} ({}, payment {})", err.code(), payment.id)),
        }
    }

    /// The card to charge: given whole, or by the token CreatePaymentMethod
    /// made for this user. Returns the number and what may be kept of it.
    async fn card_to_charge(
        &self,
        pay_with: &PayWith<'_>,
        user_id: &str,
    ) -> Result<(String, CardSummary), PaymentError> {
        let token = match pay_with {
            PayWith::Card(card) => return Ok((digits(card.number), check_card(card)?)),
            PayWith::Token(token) => *token,
        };
        let unknown = || PaymentError::precondition(format!("payment method {token} is unknown or expired"));
        let method = self.store.method(token, now_millis()).await?.ok_or_else(unknown)?;
        // Someone else's token does not exist, as far as they can tell.
        if method.user_id != user_id {
            return Err(unknown());
        }
        let card = self.methods.vault.open(token, &method.sealed).map_err(|err| {
            tracing::error!(payment_method = token, error = %err, "stored card unreadable");
            PaymentError::Internal("stored card unreadable")
        })?;
        let summary = domain::check_stored_card(&card.number, card.expiry_month, card.expiry_year, this_month())?;
        Ok((card.number, summary))
    }

    /// Refunds `amount` (None: what remains) of a payment, in its currency.
    pub async fn refund(
        &self,
        payment_id: &str,
        amount: Option<(i64, &str)>,
        reason: &str,
        abandon_at: i64,
    ) -> Result<Payment, PaymentError> {
        let payment = self.store.get(payment_id).await?;
        if let Some((_, currency)) = amount
            && currency != payment.currency_code
        {
            return Err(DomainError::invalid(format!("the payment is in {}", payment.currency_code)).into());
        }
        let amount = amount.map(|(minor, _)| minor);
        recovery::refund(&self.store, self.processor.as_ref(), &payment, amount, reason, abandon_at).await?;
        Ok(self.store.get(&payment.id).await?)
    }

    /// Voids an order: no charge for it starts after this, one still running
    /// refunds itself as it completes, and what it was charged goes back.
    pub async fn void_order(
        &self,
        order_id: &str,
        reason: &str,
        abandon_at: i64,
    ) -> Result<Vec<Payment>, PaymentError> {
        // First the tombstone: no charge for this order starts after it.
        self.store.void_order(order_id, reason).await?;
        for payment in self.store.for_order(order_id).await? {
            let mut payment = payment;
            if payment.status.in_flight() {
                if payment.abandon_at >= now_millis() {
                    return Err(PaymentError::Changed(format!(
                        "payment {} is still being processed; retry",
                        payment.id
                    )));
                }
                recovery::settle(&self.store, self.processor.as_ref(), &payment).await?;
                payment = self.store.get(&payment.id).await?;
                if payment.status.in_flight() {
                    // The processor did not take the reversal: not done yet.
                    return Err(PaymentError::NotYet(format!(
                        "payment {} could not be reversed yet; retry",
                        payment.id
                    )));
                }
            }
            if payment.status == Status::Completed && payment.refunded_minor < payment.amount_minor {
                match recovery::refund(&self.store, self.processor.as_ref(), &payment, None, reason, abandon_at).await {
                    Ok(()) => {}
                    // Moved on since we read it (a charge refunding itself):
                    // look again on the retry.
                    Err(PaymentError::Refused(DomainError::FailedPrecondition(_))) => {
                        return Err(PaymentError::Changed(format!("payment {} is changing; retry", payment.id)));
                    }
                    Err(err) => return Err(err),
                }
            }
        }
        Ok(self.store.for_order(order_id).await?)
    }

    /// Seals a card for `user_id` under a new token, valid for the methods' TTL.
    pub async fn keep_card(&self, user_id: &str, card: &CardInput<'_>) -> Result<StoredMethod, PaymentError> {
        let summary = check_card(card)?;
        let token = format!("pm_{}", uuid::Uuid::now_v7().simple());
        let stored =
            StoredCard { number: digits(card.number), expiry_month: card.expiry_month, expiry_year: card.expiry_year };
        let sealed = self.methods.vault.seal(&token, &stored).map_err(|err| {
            tracing::error!(error = %err, "could not seal a card");
            PaymentError::Internal("could not store the card")
        })?;
        let now = now_millis();
        let method = StoredMethod {
            token,
            user_id: user_id.to_string(),
            sealed,
            card_brand: summary.brand.to_string(),
            card_last4: summary.last4.clone(),
            expires_at: now + self.methods.ttl_ms,
        };
        self.store.save_method(&method, now).await?;
        Ok(method)
    }
}
