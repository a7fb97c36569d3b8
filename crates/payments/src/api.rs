//! PaymentService over gRPC: translates protobuf to the workflows (`workflow`)
//! and their outcomes back, in the codes callers (the order saga) act on:
//! a decline is FAILED_PRECONDITION (permanent: compensate), a processor
//! timeout or error is UNAVAILABLE (retryable: the idempotency key is freed
//! and a retry is a new attempt), a second charge for an order is
//! ALREADY_EXISTS. Every attempt stays on record.
use contracts::common::v1::Money;
use contracts::payments::v1 as pb;
use contracts::time::timestamp_from_millis;
use kit::error::status;
use kit_core::error::DomainError;
use kit_core::reason::Reason;
use kit_core::time::now_millis;
use kit_resilience::Deadline;
use kit_resilience::signals::{caused_by_request, with_reason};
use kit_telemetry::grpc_telemetry::annotate;
use tonic::{Request, Response, Status};

use crate::domain::{self, Status as PaymentStatus};
use crate::failure::PaymentError;
use crate::recovery;
use crate::store::Payment;
use crate::workflow::{CardInput, Charge, PayWith, Payments, this_month};

pub struct PaymentsApi {
    payments: Payments,
}

impl PaymentsApi {
    pub fn new(payments: Payments) -> Self {
        Self { payments }
    }
}

/// The one place a payment workflow's failure becomes a gRPC status.
fn answer(err: PaymentError) -> Status {
    match err {
        PaymentError::Refused(e) => kit::error::status(e),
        PaymentError::Db(e) => kit::error::from_sqlx(&e),
        PaymentError::ProcessorTrouble(m) => {
            with_reason(caused_by_request(Status::unavailable(m)), Reason::PaymentProcessingFailed)
        }
        PaymentError::NotYet(m) => Status::unavailable(m),
        PaymentError::Changed(m) => Status::aborted(m),
        PaymentError::Internal(m) => Status::internal(m),
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

fn card_input(card: &pb::Card) -> CardInput<'_> {
    CardInput { number: &card.number, expiry_month: card.expiry_month, expiry_year: card.expiry_year, cvc: &card.cvc }
}

fn required_card(card: Option<&pb::Card>) -> Result<CardInput<'_>, Status> {
    card.map(card_input).ok_or_else(|| status(DomainError::invalid("card is required")))
}

/// When the payment a call with this request's deadline works on counts as abandoned.
fn abandon_at<T>(request: &Request<T>) -> i64 {
    recovery::abandon_at(now_millis(), Deadline::of(request).remaining(std::time::Instant::now()))
}

fn check_reason(reason: &str) -> Result<(), Status> {
    if reason.len() > 500 {
        return Err(status(DomainError::invalid("reason is at most 500 characters")));
    }
    Ok(())
}

fn required(value: &str, name: &str) -> Result<(), Status> {
    if value.trim().is_empty() || value.len() > 200 {
        return Err(status(DomainError::invalid(format!("{name} is required (at most 200 characters)"))));
    }
    Ok(())
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
        let amount = request.amount.as_ref().ok_or_else(|| status(DomainError::invalid("amount is required")))?;
        let pay_with = match (&request.card, request.payment_method_token.as_str()) {
            (Some(card), _) => PayWith::Card(card_input(card)),
            (None, "") => return Err(status(DomainError::invalid("card or payment_method_token is required"))),
            (None, token) => {
                required(token, "payment_method_token")?;
                PayWith::Token(token)
            }
        };
        let charge = Charge {
            order_id: &request.order_id,
            user_id: &request.user_id,
            amount_minor: amount.minor_units,
            currency_code: &amount.currency_code,
            pay_with,
            abandon_at,
        };
        Ok(Response::new(to_pb(self.payments.charge(charge).await.map_err(answer)?)))
    }

    async fn get_payment(&self, request: Request<pb::GetPaymentRequest>) -> Result<Response<pb::Payment>, Status> {
        let id = request.into_inner().payment_id;
        required(&id, "payment_id")?;
        annotate("payment_id", &id);
        Ok(Response::new(to_pb(self.payments.get(&id).await.map_err(answer)?)))
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
        let amount = request.amount.as_ref().map(|m| (m.minor_units, m.currency_code.as_str()));
        let payment =
            self.payments.refund(&request.payment_id, amount, &request.reason, abandon_at).await.map_err(answer)?;
        Ok(Response::new(to_pb(payment)))
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
        let payments = self.payments.void_order(&request.order_id, reason, abandon_at).await.map_err(answer)?;
        Ok(Response::new(pb::VoidOrderPaymentsResponse { payments: payments.into_iter().map(to_pb).collect() }))
    }

    async fn create_payment_method(
        &self,
        request: Request<pb::CreatePaymentMethodRequest>,
    ) -> Result<Response<pb::PaymentMethod>, Status> {
        let request = request.into_inner();
        required(&request.user_id, "user_id")?;
        annotate("user_id", &request.user_id);
        let card = required_card(request.card.as_ref())?;
        let method = self.payments.keep_card(&request.user_id, &card).await.map_err(answer)?;
        annotate("payment_method", &method.token);
        Ok(Response::new(pb::PaymentMethod {
            token: method.token,
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
        let card = required_card(request.card.as_ref())?;
        let answer = match domain::check_card(card.number, card.expiry_month, card.expiry_year, card.cvc, this_month())
        {
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
        let (year, month) = crate::workflow::this_month();
        assert!((2025..2100).contains(&year));
        assert!((1..=12).contains(&month));
    }
}
