//! Who may call what, between services: one server layer reading the
//! contracts' own declarations (`shopfast.options.v1.callers` on each
//! method, `identity_asserters` on each service) and the caller's identity
//! from its certificate ([`kit_tls::Peer`]).
//!
//! - A method that declares its callers answers only them (and the
//!   `operator` identity): anyone else gets PERMISSION_DENIED, counted in
//!   `access_denied_total`. Health and reflection declare none: any caller
//!   with a certificate may use them.
//! - `x-user-id` / `x-client-id` (acting for a user) are believed only from
//!   the service's identity asserters; anyone else sending them is refused —
//!   dropping them instead would leave a call that acts for nobody, which a
//!   service reads as an internal caller's.
//! - In plain text (`insecure`) there are no identities, and nothing is
//!   checked: that is what the start-up warning says.
use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::task::{Context, Poll};

use futures::future::BoxFuture;
use prost_reflect::{DescriptorPool, Value};
use tonic::Status;
use tower::{Layer, Service};

use kit_core::reason::Reason;
use kit_resilience::signals;
use kit_tls::{OPERATOR, Peer};

const CALLERS: &str = "shopfast.options.v1.callers";
const ASSERTERS: &str = "shopfast.options.v1.identity_asserters";
/// Metadata that says whom a call acts for.
const IDENTITY_METADATA: [&str; 2] = ["x-user-id", "x-client-id"];

#[derive(Debug, thiserror::Error)]
#[error("access policy from the descriptors: {0}")]
pub struct PolicyError(String);

/// The callers each method of one process's services allows.
#[derive(Debug, Default)]
pub struct AccessPolicy {
    service: &'static str,
    /// `/package.Service/Method` → identities allowed to call it.
    methods: HashMap<String, BTreeSet<String>>,
    /// `package.Service` → identities whose identity metadata it believes.
    asserters: HashMap<String, BTreeSet<String>>,
}

fn strings(value: &Value) -> BTreeSet<String> {
    match value {
        Value::List(items) => items.iter().filter_map(|v| v.as_str().map(str::to_string)).collect(),
        Value::String(s) => BTreeSet::from([s.clone()]),
        _ => BTreeSet::new(),
    }
}

impl AccessPolicy {
    /// Read from `descriptor_set` for the gRPC services `services` (full names).
    pub fn from_descriptors(
        service: &'static str,
        descriptor_set: &[u8],
        services: &[&str],
    ) -> Result<Self, PolicyError> {
        let pool = DescriptorPool::decode(descriptor_set).map_err(|e| PolicyError(e.to_string()))?;
        let callers = pool.get_extension_by_name(CALLERS).ok_or_else(|| PolicyError(format!("no {CALLERS}")))?;
        let asserters = pool.get_extension_by_name(ASSERTERS).ok_or_else(|| PolicyError(format!("no {ASSERTERS}")))?;
        let mut policy = Self { service, ..Default::default() };
        for name in services {
            let descriptor = pool.get_service_by_name(name).ok_or_else(|| PolicyError(format!("no service {name}")))?;
            let options = descriptor.options();
            policy.asserters.insert(name.to_string(), strings(&options.get_extension(&asserters)));
            for method in descriptor.methods() {
                let options = method.options();
                if !options.has_extension(&callers) {
                    continue;
                }
                let declared = options.get_extension(&callers);
                let allowed = declared
                    .as_message()
                    .and_then(|m| m.get_field_by_name("allow").map(|v| strings(&v)))
                    .unwrap_or_default();
                policy.methods.insert(format!("/{}/{}", name, method.name()), allowed);
            }
        }
        Ok(policy)
    }

    /// Whether `caller` may make this call; why not, otherwise.
    pub fn check(&self, caller: &str, path: &str, headers: &http::HeaderMap) -> Result<(), Status> {
        if caller == OPERATOR {
            return Ok(());
        }
        if let Some(allowed) = self.methods.get(path)
            && !allowed.contains(caller)
        {
            return Err(Status::permission_denied(format!("{caller} may not call {path}")));
        }
        let asserts = IDENTITY_METADATA.iter().find(|name| headers.contains_key(**name));
        if let Some(name) = asserts {
            let service = path.trim_start_matches('/').split('/').next().unwrap_or_default();
            let believed = self.asserters.get(service).is_some_and(|a| a.contains(caller));
            if !believed {
                let denied = Status::permission_denied(format!("{caller} may not act for a user ({name})"));
                return Err(signals::with_reason(denied, Reason::UserAssertionForbidden));
            }
        }
        Ok(())
    }
}

/// The server layer enforcing an [`AccessPolicy`].
#[derive(Clone)]
pub struct AccessLayer {
    policy: Arc<AccessPolicy>,
}

impl AccessLayer {
    pub fn new(policy: AccessPolicy) -> Self {
        Self { policy: Arc::new(policy) }
    }
}

impl<S> Layer<S> for AccessLayer {
    type Service = Access<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Access { inner, policy: self.policy.clone() }
    }
}

#[derive(Clone)]
pub struct Access<S> {
    inner: S,
    policy: Arc<AccessPolicy>,
}

impl<S, B> Service<http::Request<B>> for Access<S>
where
    S: Service<http::Request<B>, Response = http::Response<tonic::body::Body>> + Send + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let identity = request.extensions().get::<Peer>().and_then(|peer| peer.identity.clone());
        if let Some(caller) = identity
            && let Err(why) = self.policy.check(&caller, request.uri().path(), request.headers())
        {
            let method = request.uri().path().to_string();
            metrics::counter!("access_denied_total", "service" => self.policy.service, "method" => method, "caller" => caller)
                .increment(1);
            tracing::warn!(reason = %why, "call refused");
            return Box::pin(async move { Ok(why.into_http()) });
        }
        Box::pin(self.inner.call(request))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(service: &str) -> AccessPolicy {
        AccessPolicy::from_descriptors("test", contracts_descriptor(), &[service]).unwrap()
    }

    /// The contracts' descriptor set, as the services compile it (kit cannot
    /// depend on `contracts`; the test builds it from the same protos).
    fn contracts_descriptor() -> &'static [u8] {
        static SET: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
        SET.get_or_init(|| {
            let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../proto");
            let mut compiler = protox::Compiler::new([root]).unwrap();
            compiler.include_imports(true);
            for file in ["shopfast/payments/v1/payments.proto", "shopfast/orders/v1/orders.proto"] {
                compiler.open_file(file).unwrap();
            }
            compiler.encode_file_descriptor_set()
        })
    }

    #[test]
    fn methods_answer_their_declared_callers_and_the_operator() {
        let payments = policy("shopfast.payments.v1.PaymentService");
        let none = http::HeaderMap::new();
        let charge = "/shopfast.payments.v1.PaymentService/ProcessPayment";
        assert!(payments.check("orders", charge, &none).is_ok());
        let denied = payments.check("gateway", charge, &none).unwrap_err();
        assert_eq!(
            (denied.code(), denied.message()),
            (tonic::Code::PermissionDenied, &*format!("gateway may not call {charge}"))
        );
        assert_eq!(signals::reason(&denied), None, "a method a caller may not call is only PERMISSION_DENIED");
        assert!(payments.check("products", "/shopfast.payments.v1.PaymentService/VoidOrderPayments", &none).is_err());
        assert!(payments.check("gateway", "/shopfast.payments.v1.PaymentService/GetPayment", &none).is_ok());
        assert!(payments.check(OPERATOR, charge, &none).is_ok());
        // Undeclared (health, reflection): any caller with a certificate.
        assert!(payments.check("products", "/grpc.health.v1.Health/Check", &none).is_ok());
        let orders = policy("shopfast.orders.v1.OrderService");
        assert!(
            orders.check("gateway", "/shopfast.orders.v1.OrderService/ListSagas", &none).is_err(),
            "operators only"
        );
    }

    #[test]
    fn only_identity_asserters_may_act_for_a_user() {
        let orders = policy("shopfast.orders.v1.OrderService");
        let mut acting = http::HeaderMap::new();
        acting.insert("x-user-id", "u-1".parse().unwrap());
        let get = "/shopfast.orders.v1.OrderService/GetOrder";
        assert!(orders.check("gateway", get, &acting).is_ok());
        let payments = policy("shopfast.payments.v1.PaymentService");
        let void = "/shopfast.payments.v1.PaymentService/VoidOrderPayments";
        assert!(payments.check("orders", void, &acting).is_ok());
        let mut client = http::HeaderMap::new();
        client.insert("x-client-id", "someone".parse().unwrap());
        let refund = "/shopfast.payments.v1.PaymentService/GetPayment";
        let denied = payments.check("gateway", refund, &client).unwrap_err();
        assert_eq!(denied.code(), tonic::Code::PermissionDenied);
        assert_eq!(signals::reason(&denied), Some(Reason::UserAssertionForbidden));
        assert_eq!(denied.message(), "gateway may not act for a user (x-client-id)", "it names the header");
    }
}
