//! Route policies: who may call each method, its timeout, its retries, which
//! field must be the caller's own id. Built-in defaults, overridable per method
//! in config (`[gateway.routes."shopfast.users.v1.UserService.GetUser"]`).
use std::collections::BTreeMap;

use prost_reflect::MethodDescriptor;
use serde::{Deserialize, Serialize};

use crate::routes::{Access, Replies, RoutePolicy};

/// A partial policy from config; unset fields keep the default.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyOverride {
    pub access: Option<Access>,
    pub timeout_ms: Option<u64>,
    pub attempts: Option<u32>,
    pub owner_field: Option<String>,
}

const READ_TIMEOUT_MS: u64 = 5_000;
const WRITE_TIMEOUT_MS: u64 = 10_000;

/// The built-in policy of a method, by its full name.
pub fn default_for(method: &str) -> RoutePolicy {
    let (access, timeout_ms, owner): (Access, u64, Option<&str>) = match method {
        "shopfast.users.v1.UserService.CreateUser" => (Access::Public, WRITE_TIMEOUT_MS, None),
        "shopfast.users.v1.UserService.AuthenticateUser" => (Access::Public, WRITE_TIMEOUT_MS, None),
        "shopfast.users.v1.UserService.GetUser" => (Access::User, READ_TIMEOUT_MS, Some("user_id")),
        "shopfast.users.v1.UserService.UpdateUser" => (Access::User, WRITE_TIMEOUT_MS, Some("user_id")),
        "shopfast.products.v1.ProductService.GetProduct"
        | "shopfast.products.v1.ProductService.GetProducts"
        | "shopfast.products.v1.ProductService.SearchProducts"
        | "shopfast.products.v1.ProductService.CheckAvailability" => (Access::Public, READ_TIMEOUT_MS, None),
        "shopfast.products.v1.ProductService.CreateProduct" => (Access::Admin, WRITE_TIMEOUT_MS, None),
        // Orders answer within a few seconds: 201 when the saga is done, 202
        // with the order pending otherwise (the saga goes on).
        "shopfast.orders.v1.OrderService.CreateOrder" => (Access::User, WRITE_TIMEOUT_MS, Some("user_id")),
        "shopfast.orders.v1.OrderService.GetOrder" | "shopfast.orders.v1.OrderService.CancelOrder" => {
            (Access::User, WRITE_TIMEOUT_MS, None)
        }
        "shopfast.orders.v1.OrderService.ListOrders" => (Access::User, READ_TIMEOUT_MS, Some("user_id")),
        "shopfast.orders.v1.OrderService.UpdateOrderStatus" => (Access::Admin, WRITE_TIMEOUT_MS, None),
        "shopfast.payments.v1.PaymentService.GetPayment" => (Access::Admin, READ_TIMEOUT_MS, None),
        // Everything else (ValidateUser, inventory reservations, payments
        // processing…) is for services, not for clients.
        _ => (Access::Internal, READ_TIMEOUT_MS, None),
    };
    let replies = match method {
        "shopfast.orders.v1.OrderService.CreateOrder" => Replies::CreatedOrAccepted,
        "shopfast.orders.v1.OrderService.CancelOrder" => Replies::OkOrAccepted,
        _ => Replies::Plain,
    };
    RoutePolicy { access, timeout_ms, attempts: 2, owner_field: owner.map(str::to_string), replies }
}

/// The policy in force for `method`: default, then the override.
pub fn resolve(method: &MethodDescriptor, overrides: &BTreeMap<String, PolicyOverride>) -> RoutePolicy {
    let mut policy = default_for(method.full_name());
    if let Some(o) = overrides.get(method.full_name()) {
        if let Some(access) = o.access {
            policy.access = access;
        }
        if let Some(timeout) = o.timeout_ms {
            policy.timeout_ms = timeout;
        }
        if let Some(attempts) = o.attempts {
            policy.attempts = attempts.max(1);
        }
        if o.owner_field.is_some() {
            policy.owner_field = o.owner_field.clone().filter(|f| !f.is_empty());
        }
    }
    policy
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn internal_methods_are_hidden_by_default() {
        assert_eq!(default_for("shopfast.products.v1.ProductService.ReserveInventory").access, Access::Internal);
        assert_eq!(default_for("shopfast.users.v1.UserService.ValidateUser").access, Access::Internal);
        assert_eq!(default_for("shopfast.products.v1.ProductService.SearchProducts").access, Access::Public);
        let own = default_for("shopfast.users.v1.UserService.GetUser");
        assert_eq!((own.access, own.owner_field.as_deref()), (Access::User, Some("user_id")));
        let create = default_for("shopfast.orders.v1.OrderService.CreateOrder");
        assert_eq!((create.timeout_ms, create.replies), (10_000, Replies::CreatedOrAccepted));
    }
}
