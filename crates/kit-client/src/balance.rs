//! Client-side load balancing over the instances discovery knows, with passive
//! outlier ejection.
//!
//! Picks by power of two choices on in-flight requests (as tower's p2c does).
//! Ours rather than tonic's balance channel because that one connects lazily:
//! a dead instance never fails `poll_ready`, so p2c keeps routing to it until
//! the registry drops it, and it has no ejection. Here an instance that
//! refuses a connection is ejected at once (1 s, doubling per repeat, up to
//! 30 s), and the call — which never reached any server — is sent to another
//! instance, so the caller does not see the failure. An instance that answers
//! with server-side failures `OUTLIER_FAILURES` times in a row, while others
//! serve, is ejected the same way (Envoy's consecutive-5xx outlier
//! detection): the state of a service with several instances is kept per
//! instance, and one bad instance does not fail a share of every caller's calls.
//!
//! With a traffic policy (`traffic`), the version comes first: by the
//! request's sticky key into the policy's weights, then p2c among that
//! version's instances. A version that cannot serve (all its instances gone
//! or ejected) falls back to the other weighted versions, then to any
//! instance, rather than failing. A version asked for by name
//! (`x-shopfast-version`) is that version or an error, never another.
use std::sync::Arc;
use std::sync::RwLock;
use std::sync::atomic::{AtomicI64, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures::future::BoxFuture;
use http_body_util::BodyExt;
use rand::Rng;
use tonic::body::Body;
use tower::Service;

use arc_swap::ArcSwapOption;

use crate::h2_client::{ConnectError, Connection};
use crate::routing::CallRouting;
use kit_core::time::now_millis;
use kit_resilience::signals::refusal;
use registry_wire::traffic::{Override, Router, TrafficPolicy};
use registry_wire::wire::InstanceInfo;

pub use kit_resilience::signals::BoxError;

/// How many instances one call may try when connections are refused.
const MAX_CONNECT_ATTEMPTS: usize = 3;
const BASE_EJECTION: Duration = Duration::from_secs(1);
const MAX_EJECTION: Duration = Duration::from_secs(30);
/// Server-side failures in a row that eject an instance (Envoy's default).
pub const OUTLIER_FAILURES: u32 = 5;

/// One instance and its connection.
pub struct Backend {
    pub id: String,
    pub address: String,
    pub version: Arc<str>,
    registered_at_ms: i64,
    connection: Connection,
    in_flight: AtomicUsize,
    ejected_until_ms: AtomicI64,
    ejections: AtomicU32,
    /// Server-side failures in a row in its answers.
    failures_in_a_row: AtomicU32,
}

impl Backend {
    fn new(instance: &InstanceInfo, tls: Option<&Arc<kit_tls::Tls>>) -> Result<Self, http::uri::InvalidUri> {
        // The instance must prove the identity of the service it registered as.
        let tls = tls.map(|tls| (tls.clone(), instance.name.clone()));
        let connection = Connection::with_tls(&instance.address, tls)?;
        Ok(Self {
            id: instance.id.clone(),
            address: instance.address.clone(),
            version: Arc::from(instance.version.as_str()),
            registered_at_ms: instance.registered_at_ms,
            connection,
            in_flight: AtomicUsize::new(0),
            ejected_until_ms: AtomicI64::new(0),
            ejections: AtomicU32::new(0),
            failures_in_a_row: AtomicU32::new(0),
        })
    }

    pub fn is_ejected(&self, now_ms: i64) -> bool {
        self.ejected_until_ms.load(Ordering::Relaxed) > now_ms
    }

    fn eject(&self, service: &str, now_ms: i64, why: &str) {
        let n = self.ejections.fetch_add(1, Ordering::Relaxed).min(5);
        let period = (BASE_EJECTION * 2u32.pow(n)).min(MAX_EJECTION);
        self.ejected_until_ms.store(now_ms + period.as_millis() as i64, Ordering::Relaxed);
        metrics::counter!("client_ejections_total", "service" => service.to_string()).increment(1);
        tracing::warn!(service, instance_id = %self.id, address = %self.address, ejected_ms = period.as_millis() as u64, why, "instance ejected");
    }

    fn succeeded(&self) {
        if self.ejections.load(Ordering::Relaxed) != 0 {
            self.ejections.store(0, Ordering::Relaxed);
        }
    }
}

/// What a request asks of the pick: a version by name, and the keys that
/// keep it on one version.
struct Ask<'a> {
    version: Override<'a>,
    user: Option<&'a str>,
    client: Option<&'a str>,
}

impl<'a> Ask<'a> {
    fn of(headers: &'a http::HeaderMap, serving: Option<&'a CallRouting>, service: &str) -> Self {
        let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
        let user = header(registry_wire::traffic::USER_ID).or_else(|| serving.and_then(|r| r.user.as_deref()));
        // An anonymous caller's "client" is its address (`ip:…`, the
        // gateway's rate-limit key): not an API client, so not sticky.
        let client = header(registry_wire::traffic::CLIENT_ID)
            .or_else(|| serving.and_then(|r| r.client.as_deref()))
            .filter(|c| !c.starts_with("ip:"));
        let version = registry_wire::traffic::override_for(header(registry_wire::traffic::VERSION_OVERRIDE), service);
        Self { version, user, client }
    }
}

/// Power of two choices on in-flight calls among `candidates` not ejected;
/// when every one is ejected, the one whose ejection ends first (better a
/// probe than certain failure).
fn p2c(candidates: &[&Arc<Backend>], now: i64) -> Option<Arc<Backend>> {
    let healthy: Vec<&Arc<Backend>> = candidates.iter().copied().filter(|b| !b.is_ejected(now)).collect();
    match healthy.len() {
        0 => candidates.iter().min_by_key(|b| b.ejected_until_ms.load(Ordering::Relaxed)).map(|b| (*b).clone()),
        1 => Some(healthy[0].clone()),
        n => {
            let mut rng = rand::rng();
            let a = rng.random_range(0..n);
            let b = (a + rng.random_range(1..n)) % n;
            let (a, b) = (healthy[a], healthy[b]);
            let load = |x: &Backend| x.in_flight.load(Ordering::Relaxed);
            Some(if load(b) < load(a) { b.clone() } else { a.clone() })
        }
    }
}

/// Counts a call on an instance for as long as it is in flight — dropped
/// with the call, whether it finished or was cancelled mid-way (a deadline,
/// a caller gone), so p2c never sees a count that does not come down.
struct InFlight(Arc<Backend>);

impl InFlight {
    fn start(backend: &Arc<Backend>) -> Self {
        backend.in_flight.fetch_add(1, Ordering::Relaxed);
        Self(backend.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The instance that answered a call, in the response's extensions: the
/// resilience guard, which reads the call's outcome, reports it here.
#[derive(Clone)]
pub struct InstanceOutcome {
    pool: Arc<Inner>,
    backend: Arc<Backend>,
}

impl InstanceOutcome {
    /// The version of the instance that answered.
    pub fn version(&self) -> &Arc<str> {
        &self.backend.version
    }

    /// The call's outcome on this instance: `OUTLIER_FAILURES` server-side
    /// failures in a row eject it — unless it is the only routable instance
    /// (ejecting it would only move the failures elsewhere: nowhere).
    pub fn report(&self, failed: bool) {
        let backend = &self.backend;
        if !failed {
            backend.failures_in_a_row.store(0, Ordering::Relaxed);
            return;
        }
        let in_a_row = backend.failures_in_a_row.fetch_add(1, Ordering::Relaxed) + 1;
        if in_a_row < OUTLIER_FAILURES {
            return;
        }
        let now = now_millis();
        let others = self.pool.snapshot().iter().filter(|b| b.id != backend.id && !b.is_ejected(now)).count();
        if others > 0 {
            backend.failures_in_a_row.store(0, Ordering::Relaxed);
            backend.eject(&self.pool.service, now, "server-side failures in a row");
        }
    }
}

/// An instance as the balancer sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolMember {
    pub id: String,
    pub address: String,
    pub version: String,
    /// Ejected right now.
    pub ejected: bool,
    /// Ejections since its last success.
    pub consecutive_ejections: u32,
    /// Calls on it right now.
    pub in_flight: usize,
}

/// A `tower::Service` for tonic clients: `UserServiceClient::new(balancer)`.
#[derive(Clone)]
pub struct Balancer {
    inner: Arc<Inner>,
}

struct Inner {
    service: String,
    /// Our identity, when instances are reached over mutual TLS.
    tls: Option<Arc<kit_tls::Tls>>,
    backends: RwLock<Arc<Vec<Arc<Backend>>>>,
    /// How many instances joined the pool (new or re-registered) so far.
    new_instances: Arc<AtomicU64>,
    /// The service's traffic policy, if it has one.
    policy: ArcSwapOption<Router>,
}

impl Inner {
    fn snapshot(&self) -> Arc<Vec<Arc<Backend>>> {
        self.backends.read().map(|b| b.clone()).unwrap_or_default()
    }
}

impl Balancer {
    pub fn new(service: &str) -> Self {
        Self::with_tls(service, None)
    }

    /// Instances reached over mutual TLS when `tls` is given.
    pub fn with_tls(service: &str, tls: Option<Arc<kit_tls::Tls>>) -> Self {
        Self {
            inner: Arc::new(Inner {
                service: service.to_string(),
                tls,
                backends: RwLock::new(Arc::new(Vec::new())),
                new_instances: Arc::new(AtomicU64::new(0)),
                policy: ArcSwapOption::empty(),
            }),
        }
    }

    fn snapshot(&self) -> Arc<Vec<Arc<Backend>>> {
        self.inner.snapshot()
    }

    /// A count that goes up whenever an instance joins the pool: a breaker
    /// following it probes at once when a restarted backend registers again.
    pub fn new_instances(&self) -> Arc<AtomicU64> {
        self.inner.new_instances.clone()
    }

    /// Replaces the instance set. Instances that stay keep their connection and
    /// ejection state; a re-registered one (new registration time) starts fresh.
    pub fn update(&self, instances: &[InstanceInfo]) {
        let current = self.snapshot();
        let mut next = Vec::with_capacity(instances.len());
        for instance in instances.iter().filter(|i| i.health.routable()) {
            let kept = current.iter().find(|b| {
                b.id == instance.id && b.address == instance.address && b.registered_at_ms == instance.registered_at_ms
            });
            match kept {
                Some(backend) => next.push(backend.clone()),
                None => match Backend::new(instance, self.inner.tls.as_ref()) {
                    Ok(backend) => {
                        next.push(Arc::new(backend));
                        self.inner.new_instances.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(err) => {
                        tracing::warn!(instance_id = %instance.id, address = %instance.address, error = %err, "bad instance address")
                    }
                },
            }
        }
        let changed = next.len() != current.len() || next.iter().zip(current.iter()).any(|(a, b)| !Arc::ptr_eq(a, b));
        if changed {
            tracing::info!(service = %self.inner.service, instances = next.len(), "instance set changed");
        }
        metrics::gauge!("client_instances", "service" => self.inner.service.clone()).set(next.len() as f64);
        if let Ok(mut backends) = self.inner.backends.write() {
            *backends = Arc::new(next);
        }
    }

    /// Replaces the traffic policy (none: every instance alike).
    pub fn set_policy(&self, policy: Option<TrafficPolicy>) {
        let service = self.inner.service.clone();
        let index = policy.as_ref().map_or(0, |p| p.index);
        let current = self.inner.policy.load().as_ref().map(|r| r.policy().clone());
        if current == policy {
            return;
        }
        match &policy {
            Some(p) => tracing::info!(service = %service, index, weights = ?p.weights, "traffic policy applied"),
            None => tracing::info!(service = %service, "traffic policy removed; every instance alike"),
        }
        metrics::gauge!("client_traffic_policy_index", "service" => service.clone()).set(index as f64);
        // The live weights; a version that left the policy reads 0.
        let weights = |p: &Option<TrafficPolicy>| p.as_ref().map(|p| p.weights.clone()).unwrap_or_default();
        let (before, after) = (weights(&current), weights(&policy));
        for version in before.keys().filter(|v| !after.contains_key(*v)) {
            metrics::gauge!("client_traffic_weight_percent", "service" => service.clone(), "version" => version.clone())
                .set(0.0);
        }
        for (version, weight) in &after {
            metrics::gauge!("client_traffic_weight_percent", "service" => service.clone(), "version" => version.clone())
                .set(f64::from(*weight));
        }
        self.inner.policy.store(policy.map(|p| Arc::new(Router::new(p))));
    }

    /// The traffic policy in force, if any.
    pub fn policy(&self) -> Option<TrafficPolicy> {
        self.inner.policy.load().as_ref().map(|r| r.policy().clone())
    }

    /// The instances in the pool and their ejection state.
    pub fn instances(&self) -> Vec<PoolMember> {
        let now = now_millis();
        self.snapshot()
            .iter()
            .map(|b| PoolMember {
                id: b.id.clone(),
                address: b.address.clone(),
                version: b.version.to_string(),
                ejected: b.is_ejected(now),
                consecutive_ejections: b.ejections.load(Ordering::Relaxed),
                in_flight: b.in_flight.load(Ordering::Relaxed),
            })
            .collect()
    }

    /// The instance for a call: its version first (the override, else the
    /// policy), then power of two choices among that version's instances not
    /// yet tried. Refused with a status when there is none.
    fn pick(&self, tried: &[String], ask: &Ask<'_>) -> Result<Arc<Backend>, BoxError> {
        let now = now_millis();
        let backends = self.snapshot();
        let service = &self.inner.service;
        let candidates = |version: Option<&str>| -> Vec<&Arc<Backend>> {
            backends.iter().filter(|b| !tried.contains(&b.id) && version.is_none_or(|v| *b.version == *v)).collect()
        };
        let no_instance = |what: String| {
            metrics::counter!("client_no_instance_total", "service" => service.clone()).increment(1);
            refusal(tonic::Code::Unavailable, kit_resilience::signals::BY_NO_INSTANCE, what)
        };
        let policy = self.inner.policy.load();
        let router = policy.as_deref();
        if let Some(version) = self.named_version(ask, router, &backends) {
            if let Some(router) = router
                && !router.may_override(version)
            {
                let allowed = router.policy().overridable.join(", ");
                let message =
                    format!("version {version} of {service} may not be asked for by name (allowed: {allowed})");
                return Err(refusal(
                    tonic::Code::InvalidArgument,
                    kit_resilience::signals::BY_VERSION_OVERRIDE,
                    message,
                ));
            }
            return p2c(&candidates(Some(version)), now)
                .ok_or_else(|| no_instance(format!("no instance of {service} at version {version}")));
        }
        let Some(router) = router else {
            return p2c(&candidates(None), now).ok_or_else(|| no_instance(format!("no healthy instance of {service}")));
        };
        let point = Router::point(router.sticky_key(ask.user, ask.client), rand::rng().random());
        let serves = |version: &str| candidates(Some(version)).iter().any(|b| !b.is_ejected(now));
        let version = match router.choose(point) {
            Some(chosen) if serves(chosen) => Some(chosen),
            chosen => {
                let fallback = router.fallback(point, serves);
                let from = chosen.map_or_else(String::new, |v| v.to_string());
                let to = fallback.map_or_else(|| "any".to_string(), |v| v.to_string());
                metrics::counter!("client_version_fallbacks_total", "service" => service.clone(), "from" => from, "to" => to)
                    .increment(1);
                fallback
            }
        };
        // No weighted version can serve: any instance rather than failing.
        p2c(&candidates(version.map(|v| &**v)), now)
            .or_else(|| p2c(&candidates(None), now))
            .ok_or_else(|| no_instance(format!("no healthy instance of {service}")))
    }

    /// The version a request asks for by name, if it asks this service for one.
    fn named_version<'a>(&self, ask: &Ask<'a>, router: Option<&Router>, backends: &[Arc<Backend>]) -> Option<&'a str> {
        match ask.version {
            Override::Named(version) => Some(version),
            Override::IfKnown(version)
                if router.is_some_and(|r| r.knows(version)) || backends.iter().any(|b| *b.version == *version) =>
            {
                Some(version)
            }
            _ => None,
        }
    }

    async fn dispatch(self, request: http::Request<Body>) -> Result<http::Response<Body>, BoxError> {
        let (mut parts, body) = request.into_parts();
        // Unary gRPC bodies are small; buffering makes a refused call resendable.
        let body: Bytes = body.collect().await?.to_bytes();
        // What the request says, else what the request being served said;
        // an override travels on.
        let serving = crate::routing::current();
        if let Some(version) = serving.as_ref().and_then(|r| r.version.as_deref())
            && !parts.headers.contains_key(registry_wire::traffic::VERSION_OVERRIDE)
            && let Ok(value) = http::HeaderValue::from_str(version)
        {
            parts.headers.insert(registry_wire::traffic::VERSION_OVERRIDE, value);
        }
        let ask = Ask::of(&parts.headers, serving.as_ref(), &self.inner.service);
        let mut tried = Vec::new();
        loop {
            let backend = self.pick(&tried, &ask)?;
            let mut attempt = http::Request::new(body.clone());
            *attempt.method_mut() = parts.method.clone();
            *attempt.uri_mut() = parts.uri.clone();
            *attempt.version_mut() = parts.version;
            *attempt.headers_mut() = parts.headers.clone();

            let in_flight = InFlight::start(&backend);
            let result = backend.connection.send(attempt).await;
            drop(in_flight);
            match result {
                Ok(mut response) => {
                    backend.succeeded();
                    response.extensions_mut().insert(InstanceOutcome { pool: self.inner.clone(), backend });
                    return Ok(response);
                }
                Err(err) if never_sent(&*err) => {
                    backend.eject(&self.inner.service, now_millis(), "connection refused or closed");
                    tried.push(backend.id.clone());
                    if tried.len() >= MAX_CONNECT_ATTEMPTS {
                        let message = format!("{} unreachable: {err}", self.inner.service);
                        return Err(refusal(
                            tonic::Code::Unavailable,
                            kit_resilience::signals::BY_NO_INSTANCE,
                            message,
                        ));
                    }
                }
                Err(err) => {
                    // The request may have reached the server: not retried here.
                    backend.eject(&self.inner.service, now_millis(), "transport error");
                    return Err(self.unavailable(&backend, &err));
                }
            }
        }
    }
}

impl Balancer {
    /// A transport failure as the status callers see: UNAVAILABLE, whatever
    /// the transport's own wording (a dropped HTTP/2 connection would
    /// otherwise read as CANCELLED).
    fn unavailable(&self, backend: &Backend, err: &BoxError) -> BoxError {
        Box::new(tonic::Status::unavailable(format!(
            "{} instance {} at {} failed: {err}",
            self.inner.service, backend.id, backend.address
        )))
    }
}

/// Whether the request certainly never left: no connection could be made,
/// the connection was closed or going away before the request went out, or
/// the server refused its stream (REFUSED_STREAM: not processed, RFC 9113
/// §8.7).
fn never_sent(err: &(dyn std::error::Error + 'static)) -> bool {
    let mut current: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = current {
        if e.is::<ConnectError>() {
            return true;
        }
        if let Some(io) = e.downcast_ref::<std::io::Error>()
            && matches!(io.kind(), std::io::ErrorKind::ConnectionRefused)
        {
            return true;
        }
        if e.downcast_ref::<h2::Error>().is_some_and(|e| e.reason() == Some(h2::Reason::REFUSED_STREAM)) {
            return true;
        }
        current = e.source();
    }
    false
}

impl Service<http::Request<Body>> for Balancer {
    type Response = http::Response<Body>;
    type Error = BoxError;
    type Future = BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        Box::pin(self.clone().dispatch(request))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use registry_wire::wire::Health;

    fn instance(id: &str, address: &str, registered_at_ms: i64) -> InstanceInfo {
        InstanceInfo {
            id: id.into(),
            name: "svc".into(),
            address: address.into(),
            admin_address: String::new(),
            health: Health::Healthy,
            version: "v1".into(),
            track: "stable".into(),
            metadata: BTreeMap::new(),
            registered_at_ms,
        }
    }

    /// A listener that accepts connections and never answers: calls on it hang.
    async fn silent_listener() -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let address = listener.local_addr().expect("addr").to_string();
        tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((socket, _)) = listener.accept().await {
                held.push(socket);
            }
        });
        address
    }

    fn grpc_request() -> http::Request<Body> {
        let mut request = http::Request::new(Body::empty());
        *request.uri_mut() = http::Uri::from_static("/svc.Svc/Call");
        *request.method_mut() = http::Method::POST;
        request
    }

    #[tokio::test]
    async fn a_call_cancelled_mid_flight_no_longer_counts_as_in_flight() {
        let balancer = Balancer::new("svc");
        balancer.update(&[instance("a", &silent_listener().await, 1)]);
        let mut calls = Vec::new();
        for _ in 0..5 {
            let call = balancer.clone().dispatch(grpc_request());
            calls.push(tokio::spawn(tokio::time::timeout(Duration::from_millis(100), call)));
        }
        // While they hang, they count.
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(balancer.instances()[0].in_flight, 5);
        for call in calls {
            assert!(call.await.expect("joined").is_err(), "the call timed out (was cancelled)");
        }
        assert_eq!(balancer.instances()[0].in_flight, 0, "every cancelled call came off the count");
    }

    #[tokio::test]
    async fn server_failures_in_a_row_eject_an_instance_only_while_others_serve() {
        let balancer = Balancer::new("svc");
        let (a, b) = (silent_listener().await, silent_listener().await);
        balancer.update(&[instance("a", &a, 1), instance("b", &b, 1)]);
        let snapshot = balancer.snapshot();
        let outcome = |id: &str| InstanceOutcome {
            pool: balancer.inner.clone(),
            backend: snapshot.iter().find(|x| x.id == id).expect("backend").clone(),
        };
        // A success in between resets the run.
        for failed in [true, true, true, true, false, true, true, true, true] {
            outcome("a").report(failed);
        }
        assert!(balancer.instances().iter().all(|m| !m.ejected), "never five in a row");
        outcome("a").report(true);
        let members = balancer.instances();
        assert!(members.iter().find(|m| m.id == "a").expect("a").ejected, "fifth in a row ejects");
        // The last one standing is not ejected: nowhere else to send its calls.
        for _ in 0..OUTLIER_FAILURES {
            outcome("b").report(true);
        }
        assert!(!balancer.instances().iter().find(|m| m.id == "b").expect("b").ejected);
        // Picks avoid the ejected instance.
        let ask = Ask { version: Override::None, user: None, client: None };
        for _ in 0..20 {
            assert_eq!(balancer.pick(&[], &ask).expect("a pick").id, "b");
        }
    }

    #[tokio::test]
    async fn new_and_re_registered_instances_are_counted_for_the_breakers() {
        let balancer = Balancer::new("svc");
        let counter = balancer.new_instances();
        let a = silent_listener().await;
        balancer.update(&[instance("a", &a, 1)]);
        assert_eq!(counter.load(Ordering::Relaxed), 1);
        balancer.update(&[instance("a", &a, 1)]);
        assert_eq!(counter.load(Ordering::Relaxed), 1, "the same registration is not new");
        balancer.update(&[instance("a", &a, 2)]);
        assert_eq!(counter.load(Ordering::Relaxed), 2, "re-registered after a restart");
    }

    fn versioned(id: &str, address: &str, version: &str) -> InstanceInfo {
        InstanceInfo { version: version.into(), ..instance(id, address, 1) }
    }

    fn policy(weights: &[(&str, u32)], overridable: &[&str]) -> TrafficPolicy {
        TrafficPolicy {
            service: "svc".into(),
            weights: weights.iter().map(|(v, w)| (v.to_string(), *w)).collect(),
            sticky: registry_wire::traffic::Sticky::User,
            overridable: overridable.iter().map(|v| v.to_string()).collect(),
            index: 7,
            updated_at_ms: 0,
            updated_by: "test".into(),
            reason: String::new(),
        }
    }

    fn ask<'a>(version: Override<'a>, user: Option<&'a str>) -> Ask<'a> {
        Ask { version, user, client: None }
    }

    #[tokio::test]
    async fn the_policy_picks_the_version_then_the_instance() {
        let balancer = Balancer::new("svc");
        let (a, b, c) = (silent_listener().await, silent_listener().await, silent_listener().await);
        balancer.update(&[versioned("a1", &a, "v1"), versioned("a2", &b, "v1"), versioned("b1", &c, "v2")]);
        let version_of = |ask: &Ask<'_>| balancer.pick(&[], ask).expect("a pick").version.to_string();

        // No policy: every instance alike.
        let seen: std::collections::BTreeSet<String> =
            (0..200).map(|_| version_of(&ask(Override::None, None))).collect();
        assert_eq!(seen.len(), 2);
        let refused = balancer.pick(&[], &ask(Override::Named("v9"), None)).err().expect("no such version");
        assert!(refused.to_string().contains("no instance of svc at version v9"), "{refused}");

        balancer.set_policy(Some(policy(&[("v1", 0), ("v2", 100)], &["v1", "v2"])));
        for user in 0..50 {
            assert_eq!(version_of(&ask(Override::None, Some(&format!("u{user}")))), "v2");
        }
        // By name, even at weight 0; another service's name is not ours.
        assert_eq!(version_of(&ask(Override::Named("v1"), None)), "v1");
        assert_eq!(version_of(&ask(Override::IfKnown("v1"), None)), "v1");
        assert_eq!(version_of(&ask(Override::IfKnown("v9"), None)), "v2", "a version we do not have: the policy's");

        // Not overridable: refused, the request's own fault.
        balancer.set_policy(Some(policy(&[("v1", 0), ("v2", 100)], &["v2"])));
        let refused = balancer.pick(&[], &ask(Override::Named("v1"), None)).err().expect("not overridable");
        let status = refused.downcast_ref::<tonic::Status>().expect("a status");
        assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");

        // The chosen version gone: the other serves rather than nothing.
        balancer.update(&[versioned("a1", &a, "v1"), versioned("a2", &b, "v1")]);
        assert_eq!(version_of(&ask(Override::None, Some("u1"))), "v1");
        // ... and tried instances are not picked again.
        let tried = vec!["a1".to_string(), "a2".to_string()];
        assert!(balancer.pick(&tried, &ask(Override::None, None)).is_err());
        assert_eq!(balancer.policy().map(|p| p.index), Some(7));
    }

    #[test]
    fn anonymous_callers_are_not_sticky_by_their_address() {
        let mut headers = http::HeaderMap::new();
        headers.insert("x-client-id", http::HeaderValue::from_static("ip:127.0.0.1"));
        assert_eq!(Ask::of(&headers, None, "svc").client, None);
        headers.insert("x-client-id", http::HeaderValue::from_static("acme"));
        headers.insert("x-shopfast-version", http::HeaderValue::from_static("svc=v2"));
        let ask = Ask::of(&headers, None, "svc");
        assert_eq!((ask.client, ask.version), (Some("acme"), Override::Named("v2")));
        let serving = CallRouting { user: Some(Arc::from("u7")), ..Default::default() };
        assert_eq!(Ask::of(&http::HeaderMap::new(), Some(&serving), "svc").user, Some("u7"), "from the request served");
    }

    #[test]
    fn only_calls_that_cannot_have_reached_a_server_count_as_never_sent() {
        // REFUSED_STREAM: the server did not process the stream (RFC 9113 §8.7).
        assert!(never_sent(&h2::Error::from(h2::Reason::REFUSED_STREAM)));
        assert!(never_sent(&std::io::Error::from(std::io::ErrorKind::ConnectionRefused)));
        // A stream reset otherwise, or a connection lost mid-call, may have run.
        assert!(!never_sent(&h2::Error::from(h2::Reason::CANCEL)));
        assert!(!never_sent(&h2::Error::from(h2::Reason::INTERNAL_ERROR)));
        assert!(!never_sent(&std::io::Error::from(std::io::ErrorKind::ConnectionReset)));
        // Found through the chain of sources.
        #[derive(Debug, thiserror::Error)]
        #[error("call failed")]
        struct Wrapped(#[source] h2::Error);
        assert!(never_sent(&Wrapped(h2::Error::from(h2::Reason::REFUSED_STREAM))));
        assert!(!never_sent(&Wrapped(h2::Error::from(h2::Reason::CANCEL))));
    }
}
