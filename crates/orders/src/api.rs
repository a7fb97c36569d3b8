//! OrderService over gRPC. CreateOrder runs the order saga to its end and
//! answers with the order (PAID) or the reason it was refused; with an
//! idempotency key (the kit layer) a retried CreateOrder returns the same
//! answer. Users see only their own orders (`x-user-id` from the gateway).
use std::sync::Arc;
use std::time::Duration;

use contracts::common::v1::{Address, Money};
use contracts::orders::v1 as pb;
use contracts::payments::v1 as payments_pb;
use kit::error::DomainError;
use kit::pagination;
use kit::time::timestamp_from_millis;
use prost::Message;
use saga::{Orchestrator, SagaRecord, SagaState};
use tonic::{Request, Response, Status};

use crate::domain::{self, OrderStatus};
use crate::steps::{CardVault, Channel, address_json, initial_context};
use crate::store::{Change, Order, OrderStore, StoreError};

pub struct OrdersApi {
    pub store: OrderStore,
    pub orchestrator: Arc<Orchestrator>,
    pub cards: Arc<CardVault>,
    pub payments: payments_pb::payment_service_client::PaymentServiceClient<Channel>,
}

fn status_to_pb(status: OrderStatus) -> pb::OrderStatus {
    match status {
        OrderStatus::Created => pb::OrderStatus::Created,
        OrderStatus::Reserved => pb::OrderStatus::Reserved,
        OrderStatus::Paid => pb::OrderStatus::Paid,
        OrderStatus::Shipped => pb::OrderStatus::Shipped,
        OrderStatus::Delivered => pb::OrderStatus::Delivered,
        OrderStatus::Cancelled => pb::OrderStatus::Cancelled,
        OrderStatus::Returned => pb::OrderStatus::Returned,
    }
}

fn status_from_pb(value: i32) -> Result<Option<OrderStatus>, Status> {
    Ok(match pb::OrderStatus::try_from(value) {
        Ok(pb::OrderStatus::Unspecified) => None,
        Ok(pb::OrderStatus::Created) => Some(OrderStatus::Created),
        Ok(pb::OrderStatus::Reserved) => Some(OrderStatus::Reserved),
        Ok(pb::OrderStatus::Paid) => Some(OrderStatus::Paid),
        Ok(pb::OrderStatus::Shipped) => Some(OrderStatus::Shipped),
        Ok(pb::OrderStatus::Delivered) => Some(OrderStatus::Delivered),
        Ok(pb::OrderStatus::Cancelled) => Some(OrderStatus::Cancelled),
        Ok(pb::OrderStatus::Returned) => Some(OrderStatus::Returned),
        Err(_) => return Err(Status::invalid_argument(format!("unknown order status {value}"))),
    })
}

fn address_from_json(text: &str) -> Option<Address> {
    let v: serde_json::Value = serde_json::from_str(text).ok()?;
    let field = |name: &str| v.get(name).and_then(|x| x.as_str()).unwrap_or_default().to_string();
    let address = Address {
        line1: field("line1"),
        line2: field("line2"),
        city: field("city"),
        region: field("region"),
        postal_code: field("postalCode"),
        country_code: field("countryCode"),
    };
    (address != Address::default()).then_some(address)
}

fn to_pb(o: Order) -> pb::Order {
    let money = |minor_units| Some(Money { currency_code: o.currency_code.clone(), minor_units });
    pb::Order {
        id: o.id.clone(),
        user_id: o.user_id.clone(),
        status: status_to_pb(o.status) as i32,
        items: o
            .lines
            .iter()
            .map(|l| pb::OrderItem {
                product_id: l.product_id.clone(),
                sku: l.sku.clone(),
                name: l.name.clone(),
                quantity: l.quantity,
                unit_price: money(l.unit_price_minor),
                line_total: money(l.unit_price_minor * l.quantity),
            })
            .collect(),
        subtotal: money(o.totals.subtotal),
        tax: money(o.totals.tax),
        shipping: money(o.totals.shipping),
        total: money(o.totals.total),
        shipping_address: address_from_json(&o.shipping_address),
        payment_id: o.payment_id.clone().unwrap_or_default(),
        saga_id: o.saga_id.clone(),
        failure_reason: o.failure_reason.clone().unwrap_or_default(),
        create_time: Some(timestamp_from_millis(o.created_at)),
        update_time: Some(timestamp_from_millis(o.updated_at)),
    }
}

/// A saga's or step's state by its persisted name (`COMPENSATED`, …).
fn persisted_name<T: serde::Serialize>(value: T) -> String {
    serde_json::to_value(value).ok().and_then(|v| v.as_str().map(str::to_string)).unwrap_or_default()
}

fn saga_to_pb(saga: SagaRecord) -> pb::Saga {
    pb::Saga {
        id: saga.id,
        order_id: saga.order_id,
        user_id: saga.user_id,
        state: persisted_name(saga.state),
        steps: saga
            .steps
            .into_iter()
            .map(|step| pb::SagaStep {
                name: step.name,
                status: persisted_name(step.status),
                attempts: step.attempts,
                compensation_attempts: step.compensation_attempts,
                error: step.error.unwrap_or_default(),
            })
            .collect(),
        manual_intervention: saga.manual_intervention,
        failure: saga.failure.unwrap_or_default(),
        create_time: Some(timestamp_from_millis(saga.created_at_ms)),
        update_time: Some(timestamp_from_millis(saga.updated_at_ms)),
    }
}

/// The signed-in user the gateway vouches for, if any.
fn caller<T>(request: &Request<T>) -> Option<String> {
    request.metadata().get("x-user-id").and_then(|v| v.to_str().ok()).map(str::to_string)
}

/// The user an order request is for: the request's, checked against the caller.
fn acting_user(requested: &str, caller: Option<&str>) -> Result<String, Status> {
    match (requested.trim(), caller) {
        ("", Some(caller)) => Ok(caller.to_string()),
        ("", None) => Err(Status::invalid_argument("user_id is required")),
        (user, Some(caller)) if user != caller => Err(Status::permission_denied("you can only act for yourself")),
        (user, _) => Ok(user.to_string()),
    }
}

/// The longest a retried CreateOrder waits for the saga it joined.
const SAGA_WAIT: Duration = Duration::from_secs(60);

/// Saga and order ids for a CreateOrder carrying an idempotency key: derived
/// from the caller, the key and the request, so a retry that outlives the
/// key's claim (the first call's process died, or its deadline passed while
/// the saga went on) finds the first saga instead of starting a second order.
fn derived_ids<T: Message>(request: &Request<T>, key: &str) -> (String, String) {
    let metadata = |name| request.metadata().get(name).and_then(|v| v.to_str().ok()).unwrap_or_default();
    let scope = format!("{}|{}|{key}", metadata("x-client-id"), metadata("x-user-id"));
    let id = |kind: &str| {
        let hash = kit::idempotency::request_hash(&format!("{kind}|{scope}"), &request.get_ref().encode_to_vec());
        uuid::Uuid::parse_str(&hash[..32]).map(|u| u.to_string()).unwrap_or(hash)
    };
    (id("saga"), id("order"))
}

impl OrdersApi {
    /// The answer to CreateOrder once its saga has ended.
    async fn answer(&self, saga: SagaRecord) -> Result<Response<pb::Order>, Status> {
        match saga.state {
            SagaState::Completed => Ok(Response::new(to_pb(self.store.get(&saga.order_id).await?))),
            _ => {
                let reason = saga.failure.unwrap_or_else(|| "the order could not be completed".into());
                Err(DomainError::FailedPrecondition(format!("order refused: {reason}")).into())
            }
        }
    }

    /// Waits for a saga another call (or the recovery after a restart) is
    /// driving, as long as the caller's deadline (tonic drops the call) and
    /// at most `SAGA_WAIT`; then "in progress", to be asked again.
    async fn await_saga(&self, saga_id: &str) -> Result<Response<pb::Order>, Status> {
        let started = std::time::Instant::now();
        loop {
            let saga = self.store.saga(saga_id).await?;
            if saga.state.is_terminal() {
                return self.answer(saga).await;
            }
            if started.elapsed() > SAGA_WAIT {
                return Err(Status::aborted("this order is still in progress; retry shortly"));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn owned(&self, order_id: &str, caller: Option<&str>) -> Result<Order, Status> {
        kit::grpc_telemetry::annotate("order_id", order_id);
        if order_id.trim().is_empty() {
            return Err(Status::invalid_argument("order_id is required"));
        }
        let order = self.store.get(order_id).await?;
        // Someone else's order does not exist, as far as they can tell.
        if caller.is_some_and(|c| c != order.user_id) {
            return Err(Status::not_found(format!("no order {order_id}")));
        }
        Ok(order)
    }
}

#[tonic::async_trait]
impl pb::order_service_server::OrderService for OrdersApi {
    async fn create_order(&self, request: Request<pb::CreateOrderRequest>) -> Result<Response<pb::Order>, Status> {
        let caller = caller(&request);
        let key = request.metadata().get(kit::idempotency::METADATA_KEY).and_then(|v| v.to_str().ok());
        let (saga_id, order_id) = match key {
            Some(key) => derived_ids(&request, key),
            None => (uuid::Uuid::now_v7().to_string(), uuid::Uuid::now_v7().to_string()),
        };
        let request = request.into_inner();
        let user_id = acting_user(&request.user_id, caller.as_deref())?;
        kit::grpc_telemetry::annotate("order_id", &order_id);
        let items: Vec<(String, i64)> = request.items.into_iter().map(|i| (i.product_id, i.quantity)).collect();
        let items = domain::check_items(&items)?;
        let currency = if request.currency_code.is_empty() { "USD".to_string() } else { request.currency_code };
        if currency.len() != 3 || !currency.bytes().all(|b| b.is_ascii_uppercase()) {
            return Err(Status::invalid_argument("currency_code must be three upper-case letters"));
        }
        let method = request.payment_method.ok_or_else(|| Status::invalid_argument("payment_method is required"))?;
        let address = request.shipping_address.as_ref().map(address_json);
        match self.store.saga(&saga_id).await {
            Ok(_) => return self.await_saga(&saga_id).await,
            Err(StoreError::Domain(DomainError::NotFound(_))) => {}
            Err(err) => return Err(err.into()),
        }
        let saga =
            self.orchestrator.new_saga(&saga_id, &order_id, &user_id, initial_context(&items, &currency, address));
        self.cards.put(
            &saga_id,
            payments_pb::Card {
                number: method.card_number,
                expiry_month: method.expiry_month,
                expiry_year: method.expiry_year,
                cvc: method.cvc,
            },
        );
        // The saga runs on its own task: a caller that gives up (its deadline
        // passes, tonic drops this call) does not stop it half way.
        let (orchestrator, cards) = (self.orchestrator.clone(), self.cards.clone());
        let run = tokio::spawn(tracing::Instrument::instrument(
            async move {
                let outcome = orchestrator.run(saga).await;
                cards.forget(&saga_id);
                outcome
            },
            // Still the request's trace: the steps' calls are its children.
            tracing::info_span!("saga", order_id = %order_id),
        ));
        let saga = match run.await {
            Ok(Ok(saga)) => saga,
            outcome => {
                let error =
                    outcome.map_or_else(|e| e.to_string(), |r| r.err().map(|e| e.to_string()).unwrap_or_default());
                tracing::error!(order_id, %error, "saga store failed; the saga resumes on restart");
                return Err(Status::unavailable(
                    "the order could not be recorded; it will be completed or undone shortly",
                ));
            }
        };
        tracing::info!(saga_id = %saga.id, order_id, state = ?saga.state, "order saga finished");
        self.answer(saga).await
    }

    async fn get_order(&self, request: Request<pb::GetOrderRequest>) -> Result<Response<pb::Order>, Status> {
        let caller = caller(&request);
        let order = self.owned(&request.into_inner().order_id, caller.as_deref()).await?;
        Ok(Response::new(to_pb(order)))
    }

    async fn list_orders(
        &self,
        request: Request<pb::ListOrdersRequest>,
    ) -> Result<Response<pb::ListOrdersResponse>, Status> {
        let caller = caller(&request);
        let request = request.into_inner();
        let user_id = acting_user(&request.user_id, caller.as_deref())?;
        let status = status_from_pb(request.status)?;
        let fingerprint = {
            use std::hash::{Hash, Hasher};
            let mut h = std::collections::hash_map::DefaultHasher::new();
            (&user_id, request.status).hash(&mut h);
            h.finish()
        };
        let page = pagination::resolve(request.page_size, &request.page_token, fingerprint)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let (orders, total) = self.store.list(&user_id, status, page.offset, page.limit).await?;
        Ok(Response::new(pb::ListOrdersResponse {
            orders: orders.into_iter().map(to_pb).collect(),
            next_page_token: pagination::next_token(page, total, fingerprint),
        }))
    }

    async fn cancel_order(&self, request: Request<pb::CancelOrderRequest>) -> Result<Response<pb::Order>, Status> {
        let caller = caller(&request);
        let request = request.into_inner();
        let order = self.owned(&request.order_id, caller.as_deref()).await?;
        let reason = if request.reason.is_empty() { "cancelled by the customer".to_string() } else { request.reason };
        if reason.len() > 500 {
            return Err(Status::invalid_argument("reason is at most 500 characters"));
        }
        match order.status {
            OrderStatus::Paid => {
                // Money back first: a cancelled order is never left charged.
                let payment_id = order.payment_id.clone().unwrap_or_default();
                let mut refund = Request::new(payments_pb::RefundPaymentRequest {
                    payment_id,
                    amount: None,
                    reason: reason.clone(),
                });
                if let Ok(key) = format!("cancel:{}", order.id).parse() {
                    refund.metadata_mut().insert("idempotency-key", key);
                }
                self.payments.clone().refund_payment(refund).await?;
            }
            OrderStatus::Created | OrderStatus::Reserved => {}
            other => {
                return Err(
                    DomainError::FailedPrecondition(format!("a {} order cannot be cancelled", other.as_str())).into()
                );
            }
        }
        let change = Change { failure_reason: Some(&reason), ..Default::default() };
        self.store.transition(&order.id, order.status, OrderStatus::Cancelled, change).await?;
        Ok(Response::new(to_pb(self.store.get(&order.id).await?)))
    }

    async fn list_sagas(
        &self,
        request: Request<pb::ListSagasRequest>,
    ) -> Result<Response<pb::ListSagasResponse>, Status> {
        let request = request.into_inner();
        let page =
            pagination::resolve(request.page_size, "", 0).map_err(|e| Status::invalid_argument(e.to_string()))?;
        if request.order_id.len() > 200 {
            return Err(Status::invalid_argument("order_id is at most 200 characters"));
        }
        let order_id = Some(request.order_id.as_str()).filter(|id| !id.is_empty());
        let sagas = self.store.list_sagas(request.needs_intervention, order_id, page.limit).await?;
        Ok(Response::new(pb::ListSagasResponse { sagas: sagas.into_iter().map(saga_to_pb).collect() }))
    }

    async fn update_order_status(
        &self,
        request: Request<pb::UpdateOrderStatusRequest>,
    ) -> Result<Response<pb::Order>, Status> {
        let request = request.into_inner();
        let to = status_from_pb(request.status)?.ok_or_else(|| Status::invalid_argument("status is required"))?;
        if to == OrderStatus::Cancelled {
            return Err(Status::invalid_argument("use CancelOrder to cancel (it refunds)"));
        }
        let order = self.owned(&request.order_id, None).await?;
        self.store.transition(&order.id, order.status, to, Change::default()).await?;
        Ok(Response::new(to_pb(self.store.get(&order.id).await?)))
    }
}
