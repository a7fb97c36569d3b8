//! Route policies: who may call each method, its timeout, its retries, which
//! field must be the caller's own id. Declared in the protos
//! (`option (shopfast.options.v1.route)`, read like `google.api.http`),
//! overridable per method in config
//! (`[gateway.routes."shopfast.users.v1.UserService.GetUser"]`).
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

/// The contracts' declaration of how the edge exposes a method.
const ROUTE: &str = "shopfast.options.v1.route";
/// A call's deadline when neither the client nor the contract sets one.
pub const DEFAULT_TIMEOUT_MS: u64 = 5_000;

/// The policy the contract declares for `method` (`shopfast.options.v1.route`
/// beside its `google.api.http`). A method without one is internal: not
/// exposed. An access level this gateway does not know is internal too, so a
/// newer contract never opens a method an older gateway cannot guard.
pub fn declared(method: &MethodDescriptor) -> RoutePolicy {
    let mut policy = RoutePolicy {
        access: Access::Internal,
        timeout_ms: DEFAULT_TIMEOUT_MS,
        attempts: 2,
        owner_field: None,
        replies: Replies::Plain,
    };
    let Some(extension) = method.parent_pool().get_extension_by_name(ROUTE) else { return policy };
    let options = method.options();
    if !options.has_extension(&extension) {
        return policy;
    }
    let declared = options.get_extension(&extension);
    let Some(route) = declared.as_message() else { return policy };
    let field = |name: &str| route.get_field_by_name(name).map(|value| value.into_owned());
    policy.access = match field("access").and_then(|v| v.as_enum_number()) {
        Some(1) => Access::Public,
        Some(2) => Access::User,
        Some(3) => Access::Admin,
        _ => Access::Internal,
    };
    policy.owner_field = field("owner_field").and_then(|v| v.as_str().map(str::to_string)).filter(|f| !f.is_empty());
    if let Some(timeout) = field("timeout_ms").and_then(|v| v.as_u32()).filter(|t| *t > 0) {
        policy.timeout_ms = u64::from(timeout);
    }
    policy.replies = match field("replies").and_then(|v| v.as_enum_number()) {
        Some(1) => Replies::CreatedOrAccepted,
        Some(2) => Replies::OkOrAccepted,
        _ => Replies::Plain,
    };
    policy
}

/// The policy in force for `method`: the contract's, then config's override.
pub fn resolve(method: &MethodDescriptor, overrides: &BTreeMap<String, PolicyOverride>) -> RoutePolicy {
    let mut policy = declared(method);
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
    use prost_reflect::DescriptorPool;

    use super::*;

    /// The hand-written table the gateway used before the contracts declared
    /// their routes: every method must come out of the protos the same.
    fn former_table(method: &str) -> (Access, u64, Option<&'static str>, Replies) {
        const READ: u64 = 5_000;
        const WRITE: u64 = 10_000;
        let (access, timeout, owner) = match method {
            "shopfast.users.v1.UserService.CreateUser" => (Access::Public, WRITE, None),
            "shopfast.users.v1.UserService.AuthenticateUser" => (Access::Public, WRITE, None),
            "shopfast.users.v1.UserService.GetUser" => (Access::User, READ, Some("user_id")),
            "shopfast.users.v1.UserService.UpdateUser" => (Access::User, WRITE, Some("user_id")),
            "shopfast.products.v1.ProductService.GetProduct"
            | "shopfast.products.v1.ProductService.GetProducts"
            | "shopfast.products.v1.ProductService.SearchProducts"
            | "shopfast.products.v1.ProductService.CheckAvailability" => (Access::Public, READ, None),
            "shopfast.products.v1.ProductService.CreateProduct" => (Access::Admin, WRITE, None),
            "shopfast.orders.v1.OrderService.CreateOrder" => (Access::User, WRITE, Some("user_id")),
            "shopfast.orders.v1.OrderService.GetOrder" | "shopfast.orders.v1.OrderService.CancelOrder" => {
                (Access::User, WRITE, None)
            }
            "shopfast.orders.v1.OrderService.ListOrders" => (Access::User, READ, Some("user_id")),
            "shopfast.orders.v1.OrderService.UpdateOrderStatus" => (Access::Admin, WRITE, None),
            "shopfast.payments.v1.PaymentService.GetPayment" => (Access::Admin, READ, None),
            _ => (Access::Internal, READ, None),
        };
        let replies = match method {
            "shopfast.orders.v1.OrderService.CreateOrder" => Replies::CreatedOrAccepted,
            "shopfast.orders.v1.OrderService.CancelOrder" => Replies::OkOrAccepted,
            _ => Replies::Plain,
        };
        (access, timeout, owner, replies)
    }

    fn pool() -> DescriptorPool {
        DescriptorPool::decode(contracts::FILE_DESCRIPTOR_SET).unwrap()
    }

    #[test]
    fn every_method_declares_what_the_former_table_said() {
        let mut methods = 0;
        for service in pool().services().filter(|s| s.full_name().starts_with("shopfast.")) {
            for method in service.methods() {
                let policy = declared(&method);
                let got = (policy.access, policy.timeout_ms, policy.owner_field.as_deref(), policy.replies);
                assert_eq!(got, former_table(method.full_name()), "{}", method.full_name());
                assert_eq!(policy.attempts, 2);
                methods += 1;
            }
        }
        assert!(methods >= 30, "only {methods} methods in the contracts");
    }

    #[test]
    fn config_overrides_what_the_contract_declares() {
        let pool = pool();
        let method = pool.get_service_by_name("shopfast.users.v1.UserService").unwrap();
        let method = method.methods().find(|m| m.name() == "GetUser").unwrap();
        let overrides = BTreeMap::from([(
            method.full_name().to_string(),
            PolicyOverride {
                access: Some(Access::Admin),
                timeout_ms: Some(700),
                attempts: Some(0),
                owner_field: Some(String::new()),
            },
        )]);
        let policy = resolve(&method, &overrides);
        assert_eq!(
            (policy.access, policy.timeout_ms, policy.attempts, policy.owner_field),
            (Access::Admin, 700, 1, None)
        );
        assert_eq!(resolve(&method, &BTreeMap::new()).owner_field.as_deref(), Some("user_id"));
    }

    #[test]
    fn an_undeclared_or_unknown_access_stays_internal() {
        let source = r#"
            syntax = "proto3";
            package shopfast.probe.v1;
            import "shopfast/options/v1/options.proto";
            message M {}
            service S {
              rpc Plain(M) returns (M);
              rpc Future(M) returns (M) { option (shopfast.options.v1.route) = {access: 9 timeout_ms: 0}; }
            }
        "#;
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("probe.proto"), source).unwrap();
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../proto");
        let mut compiler = protox::Compiler::new([dir.path(), root.as_path()]).unwrap();
        compiler.include_imports(true);
        compiler.open_file("probe.proto").unwrap();
        let pool = DescriptorPool::decode(compiler.encode_file_descriptor_set().as_slice()).unwrap();
        let service = pool.get_service_by_name("shopfast.probe.v1.S").unwrap();
        for method in service.methods() {
            let policy = declared(&method);
            assert_eq!((policy.access, policy.timeout_ms), (Access::Internal, DEFAULT_TIMEOUT_MS), "{}", method.name());
        }
    }
}
