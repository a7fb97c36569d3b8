//! The order saga's five steps over gRPC: ValidateUser → ReserveInventory →
//! CreateOrder (pending) → ProcessPayment → ConfirmOrder, each with its
//! compensation. Every call carries the step's idempotency key, the user and
//! a deadline. gRPC codes map to step errors: a client-side refusal
//! (NOT_FOUND, FAILED_PRECONDITION, INVALID_ARGUMENT, ALREADY_EXISTS, …) is
//! permanent; a failure the callee marked as the request's own (the card
//! processor's trouble with this card) is transient, retried a few times; the
//! rest — a call refused by our own breaker, no instance, a restart, a
//! deadline — is the platform being unavailable, retried for a time budget.
//! Compensations are essential calls: an open breaker lets them probe.
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use contracts::common::v1::Money;
use contracts::payments::v1 as payments_pb;
use contracts::payments::v1::payment_service_client::PaymentServiceClient;
use contracts::products::v1 as products_pb;
use contracts::products::v1::product_service_client::ProductServiceClient;
use contracts::users::v1 as users_pb;
use contracts::users::v1::user_service_client::UserServiceClient;
use futures::future::BoxFuture;
use kit_core::error::DomainError;
use kit_core::reason::Reason;
use saga::{Output, SagaRecord, Step, StepError, StepFailure};
use tonic::Code;

use crate::domain::{Line, OrderStatus, Pricing};
use crate::events::ORDER_PAID;
use crate::store::{Change, Order, OrderStore, StoreError};

pub use kit_client::channel::{BoxError, Channel, ChannelError, channel};

pub const VALIDATE_USER: &str = "validate_user";
pub const RESERVE_INVENTORY: &str = "reserve_inventory";
pub const CREATE_ORDER: &str = "create_order";
pub const PROCESS_PAYMENT: &str = "process_payment";
pub const CONFIRM_ORDER: &str = "confirm_order";

/// Context keys the steps share.
pub mod context {
    /// JSON array of [product_id, quantity].
    pub const ITEMS: &str = "items";
    pub const CURRENCY: &str = "currency";
    /// JSON object of the shipping address.
    pub const ADDRESS: &str = "address";
    pub const TOTAL: &str = "total_minor";
    pub const PAYMENT_ID: &str = "payment_id";
    /// The token Payments keeps the card under (the saga never holds the card).
    pub const PAYMENT_METHOD: &str = "payment_method";
}

/// What the steps need.
pub struct Deps {
    pub users: UserServiceClient<Channel>,
    pub products: ProductServiceClient<Channel>,
    pub payments: PaymentServiceClient<Channel>,
    pub store: OrderStore,
    pub pricing: Pricing,
    pub call_timeout: Duration,
    /// Delay before a paid order ships (the outbox event's due time).
    pub ship_after_ms: i64,
}

/// The five steps, in order.
pub fn steps(deps: Arc<Deps>) -> Vec<Arc<dyn Step>> {
    [VALIDATE_USER, RESERVE_INVENTORY, CREATE_ORDER, PROCESS_PAYMENT, CONFIRM_ORDER]
        .into_iter()
        .map(|name| Arc::new(OrderStep { name, deps: deps.clone() }) as Arc<dyn Step>)
        .collect()
}

pub fn classify(status: tonic::Status) -> StepError {
    let text = format!("{:?}: {}", status.code(), status.message());
    let request_cause = kit_resilience::signals::is_request_cause(status.metadata());
    // The callee's reason, kept for the order's answer (ours only).
    let reason = kit_resilience::signals::reason(&status).map(Reason::as_str);
    match status.code() {
        Code::NotFound
        | Code::FailedPrecondition
        | Code::InvalidArgument
        | Code::AlreadyExists
        | Code::PermissionDenied
        | Code::Unauthenticated
        | Code::OutOfRange => StepError::Permanent(StepFailure::with_reason(text, reason)),
        // The callee's own words: its trouble with this request, not a code.
        _ if request_cause => StepError::Transient(StepFailure::with_reason(status.message(), reason)),
        _ => StepError::Unavailable(StepFailure::with_reason(text, reason)),
    }
}

/// Marks a call as one that must get through (a compensation): an open
/// breaker lets it probe instead of refusing it.
pub fn essential<T>(mut request: tonic::Request<T>) -> tonic::Request<T> {
    request.extensions_mut().insert(kit_resilience::signals::Essential);
    request
}

fn store_error(err: StoreError) -> StepError {
    match err {
        StoreError::Domain(e) => StepError::Permanent(e.to_string().into()),
        other => StepError::Unavailable(other.to_string().into()),
    }
}

struct OrderStep {
    name: &'static str,
    deps: Arc<Deps>,
}

impl OrderStep {
    fn request<T>(&self, saga: &SagaRecord, key: &str, message: T) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        let metadata = request.metadata_mut();
        for (name, value) in [("idempotency-key", key), ("x-user-id", saga.user_id.as_str()), ("x-client-id", "orders")]
        {
            if let Ok(value) = value.parse() {
                metadata.insert(name, value);
            }
        }
        request.set_timeout(self.deps.call_timeout);
        request
    }

    fn items(saga: &SagaRecord) -> Result<Vec<(String, i64)>, StepError> {
        let text = saga.context.get(context::ITEMS).map(String::as_str).unwrap_or("[]");
        serde_json::from_str(text).map_err(|e| StepError::Permanent(format!("saga items unreadable: {e}").into()))
    }

    async fn validate_user(&self, saga: &SagaRecord, key: &str) -> Result<Output, StepError> {
        let request = self.request(saga, key, users_pb::ValidateUserRequest { user_id: saga.user_id.clone() });
        let user = self.deps.users.clone().validate_user(request).await.map_err(classify)?.into_inner();
        let mut output = Output::new();
        if !saga.context.contains_key(context::ADDRESS)
            && let Some(address) = user.address
        {
            output.insert(context::ADDRESS.into(), address_json(&address));
        }
        Ok(output)
    }

    async fn reserve(&self, saga: &SagaRecord, key: &str) -> Result<Output, StepError> {
        let items = Self::items(saga)?
            .into_iter()
            .map(|(product_id, quantity)| products_pb::LineItem { product_id, quantity })
            .collect();
        let message = products_pb::ReserveInventoryRequest { order_id: saga.order_id.clone(), items, ttl_seconds: 0 };
        let request = self.request(saga, key, message);
        self.deps.products.clone().reserve_inventory(request).await.map_err(classify)?;
        Ok(Output::new())
    }

    async fn release(&self, saga: &SagaRecord, key: &str) -> Result<(), StepError> {
        let message = products_pb::ReleaseInventoryRequest { order_id: saga.order_id.clone() };
        let request = essential(self.request(saga, key, message));
        self.deps.products.clone().release_inventory(request).await.map_err(classify)?;
        Ok(())
    }

    /// Records the order with a price snapshot, RESERVED (its stock is held).
    async fn create_order(&self, saga: &SagaRecord, key: &str) -> Result<Output, StepError> {
        let items = Self::items(saga)?;
        let currency = saga.context.get(context::CURRENCY).cloned().unwrap_or_else(|| "USD".into());
        let ids = items.iter().map(|(id, _)| id.clone()).collect();
        let request = self.request(saga, key, products_pb::GetProductsRequest { product_ids: ids });
        let found = self.deps.products.clone().get_products(request).await.map_err(classify)?.into_inner();
        if !found.missing_ids.is_empty() {
            return Err(StepError::Permanent(format!("unknown products: {}", found.missing_ids.join(", ")).into()));
        }
        let lines: Vec<Line> = items
            .iter()
            .map(|(id, quantity)| {
                let product = found.products.iter().find(|p| &p.id == id);
                let price = product.and_then(|p| p.price.clone()).unwrap_or_default();
                Line {
                    product_id: id.clone(),
                    sku: product.map(|p| p.sku.clone()).unwrap_or_default(),
                    name: product.map(|p| p.name.clone()).unwrap_or_default(),
                    quantity: *quantity,
                    unit_price_minor: price.minor_units,
                    currency_code: price.currency_code,
                }
            })
            .collect();
        let totals =
            self.deps.pricing.totals(&lines, &currency).map_err(|e| StepError::Permanent(e.to_string().into()))?;
        let now = kit_core::time::now_millis();
        let order = Order {
            id: saga.order_id.clone(),
            user_id: saga.user_id.clone(),
            status: OrderStatus::Reserved,
            currency_code: currency,
            lines,
            totals,
            shipping_address: saga.context.get(context::ADDRESS).cloned().unwrap_or_else(|| "{}".into()),
            saga_id: saga.id.clone(),
            payment_id: None,
            failure_reason: None,
            created_at: now,
            updated_at: now,
        };
        match self.deps.store.create(&order).await {
            // Run again after a crash: the order is already there.
            Ok(()) | Err(StoreError::Domain(DomainError::AlreadyExists(_))) => {}
            Err(err) => return Err(store_error(err)),
        }
        Ok(Output::from([(context::TOTAL.to_string(), totals.total.to_string())]))
    }

    async fn cancel_order(&self, saga: &SagaRecord) -> Result<(), StepError> {
        let reason = saga.failure.clone().unwrap_or_else(|| "order could not be completed".into());
        let change = Change { failure_reason: Some(&reason), ..Default::default() };
        match self.deps.store.transition(&saga.order_id, OrderStatus::Reserved, OrderStatus::Cancelled, change).await {
            Ok(()) | Err(StoreError::Domain(DomainError::NotFound(_))) => Ok(()),
            Err(StoreError::Domain(DomainError::FailedPrecondition(_))) => {
                let current = self.deps.store.get(&saga.order_id).await.map_err(store_error)?.status;
                if current == OrderStatus::Cancelled {
                    Ok(())
                } else {
                    Err(StepError::Permanent(format!("order is {}; cannot cancel it here", current.as_str()).into()))
                }
            }
            Err(err) => Err(store_error(err)),
        }
    }

    async fn pay(&self, saga: &SagaRecord, key: &str) -> Result<Output, StepError> {
        let token = saga
            .context
            .get(context::PAYMENT_METHOD)
            .cloned()
            .ok_or_else(|| StepError::Permanent("the order has no payment method; not charged".into()))?;
        let total: i64 = saga
            .context
            .get(context::TOTAL)
            .and_then(|t| t.parse().ok())
            .ok_or_else(|| StepError::Permanent("no order total in the saga".into()))?;
        let currency = saga.context.get(context::CURRENCY).cloned().unwrap_or_else(|| "USD".into());
        let message = payments_pb::ProcessPaymentRequest {
            order_id: saga.order_id.clone(),
            user_id: saga.user_id.clone(),
            amount: Some(Money { currency_code: currency, minor_units: total }),
            card: None,
            payment_method_token: token,
        };
        let request = self.request(saga, key, message);
        let payment = self.deps.payments.clone().process_payment(request).await.map_err(classify)?.into_inner();
        Ok(Output::from([(context::PAYMENT_ID.to_string(), payment.id)]))
    }

    /// Leaves the order with no money taken or held — whatever the payment
    /// step did, including what a crash hid from us (a charge whose answer
    /// was lost): Payments refunds and reverses by order id.
    async fn void_payments(&self, saga: &SagaRecord, key: &str) -> Result<(), StepError> {
        let message = payments_pb::VoidOrderPaymentsRequest {
            order_id: saga.order_id.clone(),
            reason: format!("order {} not completed", saga.order_id),
        };
        let request = essential(self.request(saga, key, message));
        self.deps.payments.clone().void_order_payments(request).await.map_err(classify)?;
        Ok(())
    }

    async fn confirm(&self, saga: &SagaRecord, key: &str) -> Result<Output, StepError> {
        let request = self.request(saga, key, products_pb::CommitInventoryRequest { order_id: saga.order_id.clone() });
        self.deps.products.clone().commit_inventory(request).await.map_err(classify)?;
        let payment_id = saga.context.get(context::PAYMENT_ID).map(String::as_str);
        let change =
            Change { payment_id, event: Some((ORDER_PAID, "{}", self.deps.ship_after_ms)), ..Default::default() };
        match self.deps.store.transition(&saga.order_id, OrderStatus::Reserved, OrderStatus::Paid, change).await {
            Ok(()) => Ok(Output::new()),
            Err(StoreError::Domain(DomainError::FailedPrecondition(_))) => {
                // Run again after a crash: already paid is done.
                match self.deps.store.get(&saga.order_id).await.map_err(store_error)?.status {
                    OrderStatus::Reserved | OrderStatus::Created | OrderStatus::Cancelled => {
                        Err(StepError::Permanent("the order can no longer be confirmed".into()))
                    }
                    _ => Ok(Output::new()),
                }
            }
            Err(err) => Err(store_error(err)),
        }
    }
}

impl Step for OrderStep {
    fn name(&self) -> &'static str {
        self.name
    }

    /// Once paid, the order is confirmed: undoing a payment because
    /// Products was briefly away would be worse than waiting for it.
    fn after_pivot(&self) -> bool {
        self.name == CONFIRM_ORDER
    }

    fn run<'a>(&'a self, saga: &'a SagaRecord, key: &'a str) -> BoxFuture<'a, Result<Output, StepError>> {
        Box::pin(async move {
            match self.name {
                VALIDATE_USER => self.validate_user(saga, key).await,
                RESERVE_INVENTORY => self.reserve(saga, key).await,
                CREATE_ORDER => self.create_order(saga, key).await,
                PROCESS_PAYMENT => self.pay(saga, key).await,
                _ => self.confirm(saga, key).await,
            }
        })
    }

    fn compensate<'a>(&'a self, saga: &'a SagaRecord, key: &'a str) -> BoxFuture<'a, Result<(), StepError>> {
        Box::pin(async move {
            match self.name {
                RESERVE_INVENTORY => self.release(saga, key).await,
                CREATE_ORDER => self.cancel_order(saga).await,
                PROCESS_PAYMENT => self.void_payments(saga, key).await,
                // Validating a user and confirming (the last step) leave nothing to undo.
                _ => Ok(()),
            }
        })
    }
}

/// An address as the order keeps its snapshot (the proto3 JSON field names).
pub fn address_json(a: &contracts::common::v1::Address) -> String {
    serde_json::json!({
        "line1": a.line1, "line2": a.line2, "city": a.city, "region": a.region,
        "postalCode": a.postal_code, "countryCode": a.country_code,
    })
    .to_string()
}

/// The context a new order saga starts with.
pub fn initial_context(
    items: &[(String, i64)],
    currency: &str,
    address: Option<String>,
    payment_method: &str,
) -> BTreeMap<String, String> {
    let mut context = BTreeMap::from([
        (context::ITEMS.to_string(), serde_json::json!(items).to_string()),
        (context::CURRENCY.to_string(), currency.to_string()),
        (context::PAYMENT_METHOD.to_string(), payment_method.to_string()),
    ]);
    if let Some(address) = address {
        context.insert(context::ADDRESS.to_string(), address);
    }
    context
}
