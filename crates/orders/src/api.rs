//! OrderService over gRPC, translating: CreateOrder places the order
//! (`placing`) and answers 201 with the paid order, 202 with the pending one
//! to poll, the refusal (FAILED_PRECONDITION), or UNAVAILABLE with a retry
//! hint when the platform's own trouble stopped it; cancelling is
//! `cancelling`'s. With an idempotency key (the kit layer) a retried
//! CreateOrder returns the same final answer. Users see only their own
//! orders (`x-user-id` from the gateway).
use kit::error::status;
use std::sync::Arc;
use std::time::Duration;

use contracts::common::v1::{Address, Money};
use contracts::orders::v1 as pb;
use contracts::payments::v1 as payments_pb;
use contracts::time::timestamp_from_millis;
use kit_core::error::DomainError;
use kit_core::pagination;
use kit_resilience::Deadline;
use prost::Message;
use saga::SagaRecord;
use tonic::{Request, Response, Status};

use crate::cancelling::Canceller;
use crate::domain::{self, OrderStatus};
use crate::placing::{MAX_GENERATIONS, NewOrder, NotPlaced, Placed, Placing};
use crate::steps::{address_json, context};
use crate::store::{Change, Order, OrderStore};

pub struct OrdersApi {
    pub store: OrderStore,
    pub placing: Placing,
    pub canceller: Arc<Canceller>,
    pub fulfilment: crate::fulfilment::FulfilmentConfig,
}

/// When a caller whose order could not be placed for the platform's trouble should come back.
const RETRY_AFTER: Duration = Duration::from_secs(1);

fn status_to_pb(status: OrderStatus) -> pb::OrderStatus {
    match status {
        OrderStatus::Created => pb::OrderStatus::Created,
        OrderStatus::Reserved => pb::OrderStatus::Reserved,
        OrderStatus::Paid => pb::OrderStatus::Paid,
        OrderStatus::Shipped => pb::OrderStatus::Shipped,
        OrderStatus::Delivered => pb::OrderStatus::Delivered,
        OrderStatus::Cancelled => pb::OrderStatus::Cancelled,
        OrderStatus::Returned => pb::OrderStatus::Returned,
        OrderStatus::Cancelling => pb::OrderStatus::Cancelling,
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
        Ok(pb::OrderStatus::Cancelling) => Some(OrderStatus::Cancelling),
        // Not a stored status: an order being placed has no record yet.
        Ok(pb::OrderStatus::Pending) | Err(_) => {
            return Err(status(DomainError::invalid(format!("unknown order status {value}"))));
        }
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

/// An order its saga is still placing (or failed to place before its record
/// was written), as the saga knows it: PENDING while it runs, CANCELLED with
/// the reason once it has ended. Prices come with the record.
fn saga_view(saga: &SagaRecord) -> pb::Order {
    let items: Vec<(String, i64)> =
        saga.context.get(context::ITEMS).and_then(|text| serde_json::from_str(text).ok()).unwrap_or_default();
    let status = if saga.state.is_terminal() { pb::OrderStatus::Cancelled } else { pb::OrderStatus::Pending };
    pb::Order {
        id: saga.order_id.clone(),
        user_id: saga.user_id.clone(),
        status: status as i32,
        items: items
            .into_iter()
            .map(|(product_id, quantity)| pb::OrderItem { product_id, quantity, ..Default::default() })
            .collect(),
        shipping_address: saga.context.get(context::ADDRESS).and_then(|a| address_from_json(a)),
        saga_id: saga.id.clone(),
        failure_reason: if saga.state.is_terminal() { saga.failure.clone().unwrap_or_default() } else { String::new() },
        create_time: Some(timestamp_from_millis(saga.created_at_ms)),
        update_time: Some(timestamp_from_millis(saga.updated_at_ms)),
        ..Default::default()
    }
}

fn location(order_id: &str) -> String {
    format!("/v1/orders/{order_id}")
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
        ("", None) => Err(status(DomainError::invalid("user_id is required"))),
        (user, Some(caller)) if user != caller => {
            Err(status(DomainError::PermissionDenied("you can only act for yourself".into())))
        }
        (user, _) => Ok(user.to_string()),
    }
}

/// Saga and order ids for a CreateOrder carrying an idempotency key, one pair
/// per generation: derived from the caller, the key and the request, so a
/// retry that outlives the key's claim (the first call's process died, or it
/// was answered "pending") finds the first saga instead of starting a second
/// order — and, when that saga ended on the platform's trouble, the next
/// generation places the order afresh.
fn derived_ids<T: Message>(request: &Request<T>, key: &str) -> impl Iterator<Item = (String, String)> + use<T> {
    let metadata = |name| request.metadata().get(name).and_then(|v| v.to_str().ok()).unwrap_or_default().to_string();
    let scope = format!("{}|{}|{key}", metadata("x-client-id"), metadata("x-user-id"));
    let body = request.get_ref().encode_to_vec();
    (0..MAX_GENERATIONS).map(move |generation| {
        let id = |kind: &str| {
            // Generation 0 keeps the ids orders had before generations existed.
            let kind = if generation == 0 { kind.to_string() } else { format!("{kind}#{generation}") };
            let hash = kit::idempotency::request_hash(&format!("{kind}|{scope}"), &body);
            uuid::Uuid::parse_str(&hash[..32]).map(|u| u.to_string()).unwrap_or(hash)
        };
        (id("saga"), id("order"))
    })
}

impl OrdersApi {
    /// The gRPC answer to a placed order.
    fn answer(placed: Placed) -> Result<Response<pb::Order>, Status> {
        match placed {
            Placed::Done(order) => {
                let at = location(&order.id);
                Ok(kit::reply::created(Response::new(to_pb(*order)), &at))
            }
            Placed::Pending(saga) => {
                let at = location(&saga.order_id);
                Ok(kit::reply::accepted(Response::new(saga_view(&saga)), &at))
            }
            Placed::Refused(why) => {
                let message = format!("order refused: {}", why.message);
                Err(status(match why.reason {
                    Some(reason) => DomainError::refused(reason, message),
                    None => DomainError::FailedPrecondition(message),
                }))
            }
            Placed::Unavailable(why) => {
                let message = format!("the order could not be placed now: {}; retry", why.message);
                let unavailable = kit::reply::unavailable(message, RETRY_AFTER);
                Err(match why.reason {
                    Some(reason) => kit_resilience::signals::with_reason(unavailable, reason),
                    None => unavailable,
                })
            }
        }
    }

    /// The saga placing an order not recorded yet, if the caller may see it.
    async fn placing_saga(&self, order_id: &str, caller: Option<&str>) -> Result<Option<SagaRecord>, Status> {
        let saga = self.store.saga_for_order(order_id).await?;
        Ok(saga.filter(|saga| caller.is_none_or(|c| c == saga.user_id)))
    }

    /// The caller's order, read from the database (what a change starts from).
    async fn owned(&self, order_id: &str, caller: Option<&str>) -> Result<Order, Status> {
        self.owned_from(order_id, caller, false).await
    }

    /// The caller's order as `owned`, or through the read cache (`cached`): only to show it.
    async fn owned_from(&self, order_id: &str, caller: Option<&str>, cached: bool) -> Result<Order, Status> {
        kit_telemetry::grpc_telemetry::annotate("order_id", order_id);
        if order_id.trim().is_empty() {
            return Err(status(DomainError::invalid("order_id is required")));
        }
        let order = if cached { self.store.get_cached(order_id).await? } else { self.store.get(order_id).await? };
        // Someone else's order does not exist, as far as they can tell.
        if caller.is_some_and(|c| c != order.user_id) {
            return Err(status(DomainError::NotFound(format!("no order {order_id}"))));
        }
        Ok(order)
    }
}

#[tonic::async_trait]
impl pb::order_service_server::OrderService for OrdersApi {
    async fn create_order(&self, request: Request<pb::CreateOrderRequest>) -> Result<Response<pb::Order>, Status> {
        let caller = caller(&request);
        let deadline = Deadline::of(&request).remaining(std::time::Instant::now());
        let key = request.metadata().get(kit::idempotency::METADATA_KEY).and_then(|v| v.to_str().ok());
        let ids: Box<dyn Iterator<Item = (String, String)> + Send> = match key {
            Some(key) => Box::new(derived_ids(&request, key)),
            None => Box::new(std::iter::once((uuid::Uuid::now_v7().to_string(), uuid::Uuid::now_v7().to_string()))),
        };
        let request = request.into_inner();
        let user_id = acting_user(&request.user_id, caller.as_deref())?;
        let items: Vec<(String, i64)> = request.items.into_iter().map(|i| (i.product_id, i.quantity)).collect();
        let items = crate::domain::check_items(&items).map_err(status)?;
        let currency = if request.currency_code.is_empty() { "USD".to_string() } else { request.currency_code };
        if currency.len() != 3 || !currency.bytes().all(|b| b.is_ascii_uppercase()) {
            return Err(status(DomainError::invalid("currency_code must be three upper-case letters")));
        }
        let method =
            request.payment_method.ok_or_else(|| status(DomainError::invalid("payment_method is required")))?;
        if method.card_number.trim().is_empty() {
            return Err(status(DomainError::invalid("payment_method.card_number is required")));
        }
        let order = NewOrder {
            user_id,
            items,
            currency,
            address: request.shipping_address.as_ref().map(address_json),
            card: payments_pb::Card {
                number: method.card_number,
                expiry_month: method.expiry_month,
                expiry_year: method.expiry_year,
                cvc: method.cvc,
            },
        };
        match self.placing.place(ids, order, deadline).await {
            Ok(placed) => {
                let order_id = match &placed {
                    Placed::Done(order) => Some(order.id.as_str()),
                    Placed::Pending(saga) => Some(saga.order_id.as_str()),
                    Placed::Refused(_) | Placed::Unavailable(_) => None,
                };
                if let Some(order_id) = order_id {
                    kit_telemetry::grpc_telemetry::annotate("order_id", order_id);
                }
                Self::answer(placed)
            }
            Err(NotPlaced::Invalid(message)) => Err(status(DomainError::invalid(message))),
            Err(NotPlaced::Unavailable(message)) => Err(kit::reply::unavailable(message, RETRY_AFTER)),
            Err(NotPlaced::Store(err)) => Err(err.into()),
        }
    }

    async fn get_order(&self, request: Request<pb::GetOrderRequest>) -> Result<Response<pb::Order>, Status> {
        let caller = caller(&request);
        let order_id = request.into_inner().order_id;
        match self.owned_from(&order_id, caller.as_deref(), true).await {
            Ok(order) => Ok(Response::new(to_pb(order))),
            // Not recorded yet: the saga placing it knows it.
            Err(status) if status.code() == tonic::Code::NotFound => {
                match self.store.saga_for_order(&order_id).await? {
                    Some(saga) if caller.as_deref().is_none_or(|c| c == saga.user_id) => {
                        Ok(Response::new(saga_view(&saga)))
                    }
                    _ => Err(status),
                }
            }
            Err(status) => Err(status),
        }
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
            .map_err(|e| kit::error::status(DomainError::invalid(e.to_string())))?;
        let (orders, total) = self.store.list(&user_id, status, page.offset, page.limit).await?;
        Ok(Response::new(pb::ListOrdersResponse {
            orders: orders.into_iter().map(to_pb).collect(),
            next_page_token: pagination::next_token(page, total, fingerprint),
        }))
    }

    async fn cancel_order(&self, request: Request<pb::CancelOrderRequest>) -> Result<Response<pb::Order>, Status> {
        let caller = caller(&request);
        let request = request.into_inner();
        let reason = domain::cancel_reason(&request.reason).map_err(status)?;
        let order = match self.owned(&request.order_id, caller.as_deref()).await {
            Ok(order) => order,
            // Accepted but not recorded yet: its saga may still be placing it.
            Err(not_found) if not_found.code() == tonic::Code::NotFound => {
                let saga = self.placing_saga(&request.order_id, caller.as_deref()).await?;
                let still_placing = saga.is_some_and(|saga| !saga.state.is_terminal());
                return Err(status(domain::cancel_unrecorded(&request.order_id, still_placing)));
            }
            Err(other) => return Err(other),
        };
        let order = self.canceller.cancel(&order, &reason).await?;
        let at = location(&order.id);
        let still_going = order.status == OrderStatus::Cancelling;
        let response = Response::new(to_pb(order));
        // The refund or the restock could not be done right now: the outbox worker finishes it.
        Ok(if still_going { kit::reply::accepted(response, &at) } else { response })
    }

    async fn list_sagas(
        &self,
        request: Request<pb::ListSagasRequest>,
    ) -> Result<Response<pb::ListSagasResponse>, Status> {
        let request = request.into_inner();
        let page =
            pagination::resolve(request.page_size, "", 0).map_err(|e| status(DomainError::invalid(e.to_string())))?;
        if request.order_id.len() > 200 {
            return Err(status(DomainError::invalid("order_id is at most 200 characters")));
        }
        let order_id = Some(request.order_id.as_str()).filter(|id| !id.is_empty());
        let sagas = self.store.list_sagas(request.needs_intervention, order_id, page.limit).await?;
        Ok(Response::new(pb::ListSagasResponse { sagas: sagas.into_iter().map(saga_to_pb).collect() }))
    }

    async fn advance_fulfilment(
        &self,
        request: Request<pb::AdvanceFulfilmentRequest>,
    ) -> Result<Response<pb::AdvanceFulfilmentResponse>, Status> {
        let request = request.into_inner();
        if request.order_id.is_empty() || request.event_id.is_empty() {
            return Err(status(DomainError::invalid("order_id and event_id are required")));
        }
        let to = status_from_pb(request.to)?.ok_or_else(|| status(DomainError::invalid("to is required")))?;
        let step = crate::fulfilment::step(to, &self.fulfilment).ok_or_else(|| {
            status(DomainError::invalid(
                "fulfilment moves orders to ORDER_STATUS_SHIPPED or ORDER_STATUS_DELIVERED only",
            ))
        })?;
        let next = step.next.map(|(kind, delay)| (kind, "{}", delay));
        let change = Change { event: next, handles: Some(&request.event_id), ..Default::default() };
        let applied = match self.store.transition(&request.order_id, step.from, to, change).await {
            Ok(()) => true,
            // A replay, or the order was cancelled meanwhile: nothing to do
            // but to remember the event was answered.
            Err(crate::store::StoreError::Domain(DomainError::FailedPrecondition(_))) => {
                self.store.mark_handled(&request.order_id, &request.event_id).await?;
                false
            }
            Err(err) => return Err(err.into()),
        };
        let order = self.store.get(&request.order_id).await?;
        if applied {
            tracing::info!(order_id = %order.id, from = step.from.as_str(), to = to.as_str(), "fulfilment step");
        }
        Ok(Response::new(pb::AdvanceFulfilmentResponse { order: Some(to_pb(order)), applied }))
    }

    async fn update_order_status(
        &self,
        request: Request<pb::UpdateOrderStatusRequest>,
    ) -> Result<Response<pb::Order>, Status> {
        let request = request.into_inner();
        let to = status_from_pb(request.status)?.ok_or_else(|| status(DomainError::invalid("status is required")))?;
        if matches!(to, OrderStatus::Cancelled | OrderStatus::Cancelling) {
            return Err(status(DomainError::invalid("use CancelOrder to cancel (it refunds)")));
        }
        let order = self.owned(&request.order_id, None).await?;
        self.store.transition(&order.id, order.status, to, Change::default()).await?;
        Ok(Response::new(to_pb(self.store.get(&order.id).await?)))
    }
}
