//! The tower layer every cross-process call goes through: deadline check,
//! bulkhead, circuit breaker, then the call with the caller's deadline, its
//! outcome read from the gRPC status (a header for errors, a trailer for
//! successes) and fed back to the breaker.
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::future::BoxFuture;
use http_body::{Body as HttpBody, Frame, SizeHint};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tonic::body::Body;
use tonic::{Code, Status};
use tower::{Layer, Service};

use kit_resilience::DependencyConfig;
use kit_resilience::breaker::{Breaker, Outcome, Permit, Rejected, State, Transition};
use kit_resilience::signals;
use kit_resilience::signals::{
    BoxError, CAUSE_REQUEST, Essential, FAILURE_CAUSE, REFUSED_BY, RETRY_AFTER_MS, encode_grpc_timeout, grpc_timeout,
    refusal, server_failure,
};

use crate::balance::InstanceOutcome;

/// Marks the current (client) span as failed, for the trace views.
fn mark_failed() {
    tracing::Span::current().record("otel.status_code", "ERROR");
}

/// One downstream service's breaker and bulkhead, shared by every client of it
/// in the process.
pub struct Dependency {
    name: String,
    breaker: Mutex<Breaker>,
    bulkhead: Option<(usize, Arc<Semaphore>)>,
    /// The deadline of a call that comes without one.
    default_timeout: Duration,
    /// RED metrics of finished calls, `[ok, error]`, by the version that
    /// answered (`none`: no instance did).
    meters: std::sync::RwLock<Vec<VersionMeters>>,
    /// Discovery's count of new instances (see `Balancer::new_instances`),
    /// and the count this breaker last saw: a new instance ends an open period.
    new_instances: OnceLock<Arc<AtomicU64>>,
    seen_instances: AtomicU64,
}

/// One destination version's meters, `[ok, error]`.
type VersionMeters = (Arc<str>, Arc<[CallMeters; 2]>);

/// A call outcome's metric handles, registered once: looking them up by
/// their labels on every call showed in the gateway's profile.
struct CallMeters {
    calls: metrics::Counter,
    latency: metrics::Histogram,
}

impl std::fmt::Debug for Dependency {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dependency").field("name", &self.name).field("state", &self.state()).finish()
    }
}

impl Dependency {
    pub fn new(name: &str, config: &DependencyConfig) -> Arc<Self> {
        let dependency = Self {
            name: name.to_string(),
            breaker: Mutex::new(Breaker::new(&config.breaker, Instant::now())),
            bulkhead: config.max_concurrency.map(|n| (n, Arc::new(Semaphore::new(n)))),
            default_timeout: Duration::from_millis(config.timeout_ms.max(1)),
            meters: std::sync::RwLock::new(Vec::new()),
            new_instances: OnceLock::new(),
            seen_instances: AtomicU64::new(0),
        };
        metrics::gauge!("circuit_breaker_state", "service" => dependency.name.clone()).set(State::Closed.gauge());
        Arc::new(dependency)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Follows a balancer's count of new instances: when discovery reports
    /// one (a restarted backend registering again), an open breaker probes
    /// at once instead of waiting out its open time.
    pub fn follow_instances(&self, new_instances: Arc<AtomicU64>) {
        self.seen_instances.store(new_instances.load(Ordering::Relaxed), Ordering::Relaxed);
        let _ = self.new_instances.set(new_instances);
    }

    /// Whether discovery reported a new instance since the last look.
    fn new_instance_seen(&self) -> bool {
        let Some(counter) = self.new_instances.get() else { return false };
        let now = counter.load(Ordering::Relaxed);
        now != self.seen_instances.load(Ordering::Relaxed) && self.seen_instances.swap(now, Ordering::Relaxed) != now
    }

    /// The meters of calls answered by `version`, registered once per
    /// version: looking them up by their labels on every call showed in the
    /// gateway's profile. A few versions live at a time; past
    /// `MAX_METERED_VERSIONS`, calls count under `other`.
    fn meters(&self, version: &str) -> Arc<[CallMeters; 2]> {
        const MAX_METERED_VERSIONS: usize = 32;
        let find =
            |list: &[VersionMeters], version: &str| list.iter().find(|(v, _)| **v == *version).map(|(_, m)| m.clone());
        if let Some(found) = self.meters.read().ok().and_then(|list| find(&list, version)) {
            return found;
        }
        let Ok(mut list) = self.meters.write() else { return Arc::new(self.register_meters("other")) };
        let version = if list.len() >= MAX_METERED_VERSIONS { "other" } else { version };
        if let Some(found) = find(&list, version) {
            return found;
        }
        let meters = Arc::new(self.register_meters(version));
        list.push((Arc::from(version), meters.clone()));
        meters
    }

    fn register_meters(&self, version: &str) -> [CallMeters; 2] {
        ["ok", "error"].map(|outcome| {
            let labels =
                [("service", self.name.clone()), ("version", version.to_string()), ("outcome", outcome.to_string())];
            CallMeters {
                calls: metrics::counter!("grpc_client_requests_total", &labels),
                latency: metrics::histogram!("grpc_client_request_duration_seconds", &labels),
            }
        })
    }

    pub fn state(&self) -> State {
        self.breaker.lock().map(|b| b.state()).unwrap_or(State::Closed)
    }

    fn admit(&self, essential: bool) -> Result<Permit, Rejected> {
        let new_instance = self.new_instance_seen();
        let (result, transition) = match self.breaker.lock() {
            Ok(mut breaker) => {
                let now = Instant::now();
                if new_instance {
                    let probing = breaker.probe_now(now);
                    self.log(probing);
                }
                if essential {
                    let (permit, transition) = breaker.admit_essential(now);
                    (Ok(permit), transition)
                } else {
                    breaker.admit(now, rand::random())
                }
            }
            // A poisoned lock means a panic mid-update; fail open rather than refuse everything.
            Err(_) => return Err(Rejected { state: State::Open, retry_after: Duration::from_secs(1) }),
        };
        self.log(transition);
        match &result {
            Ok(permit) if permit.is_probe() => {
                metrics::counter!("circuit_breaker_probe_attempts_total", "service" => self.name.clone()).increment(1)
            }
            Ok(_) => {}
            Err(rejected) => metrics::counter!("circuit_breaker_rejected_total", "service" => self.name.clone(), "state" => rejected.state.name()).increment(1),
        }
        result
    }

    fn record(&self, permit: Permit, outcome: Outcome) {
        if outcome == Outcome::Failure {
            metrics::counter!("circuit_breaker_failures_total", "service" => self.name.clone()).increment(1);
        }
        let transition = self.breaker.lock().ok().and_then(|mut b| b.record(permit, outcome, Instant::now()));
        self.log(transition);
    }

    fn release(&self, permit: Permit) {
        if let Ok(mut breaker) = self.breaker.lock() {
            breaker.release(permit);
        }
    }

    /// Whether calls are being refused right now (open, or throttling).
    pub fn refusing(&self) -> bool {
        matches!(self.state(), State::Open | State::Throttling)
    }

    fn log(&self, transition: Option<Transition>) {
        let Some(t) = transition else { return };
        metrics::gauge!("circuit_breaker_state", "service" => self.name.clone()).set(t.to.gauge());
        metrics::counter!("circuit_breaker_state_transitions_total", "service" => self.name.clone(), "from" => t.from.name(), "to" => t.to.name()).increment(1);
        let (service, from, to, reason) = (&self.name, t.from.name(), t.to.name(), &t.reason);
        match t.to {
            State::Open | State::Throttling => {
                tracing::warn!(service, from, to, reason, "circuit breaker state changed")
            }
            _ => tracing::info!(service, from, to, reason, "circuit breaker state changed"),
        }
    }
}

/// A balanced channel behind its dependency's guard, the breaker following
/// the balancer's new instances (a re-registered backend is probed at once).
pub fn guard_balancer(
    dependency: Arc<Dependency>,
    balancer: crate::balance::Balancer,
) -> Guarded<crate::balance::Balancer> {
    dependency.follow_instances(balancer.new_instances());
    GuardLayer::new(dependency).layer(balancer)
}

/// Puts a `Dependency` in front of a gRPC channel.
#[derive(Clone)]
pub struct GuardLayer {
    dependency: Arc<Dependency>,
}

impl GuardLayer {
    pub fn new(dependency: Arc<Dependency>) -> Self {
        Self { dependency }
    }
}

impl<S> Layer<S> for GuardLayer {
    type Service = Guarded<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Guarded { inner, dependency: self.dependency.clone() }
    }
}

#[derive(Clone)]
pub struct Guarded<S> {
    inner: S,
    dependency: Arc<Dependency>,
}

fn header_code(headers: &http::HeaderMap) -> Option<Code> {
    let code = headers.get("grpc-status")?.to_str().ok()?.parse::<i32>().ok()?;
    Some(Code::from(code))
}

fn outcome_of(code: Code) -> Outcome {
    if server_failure(code) { Outcome::Failure } else { Outcome::Success }
}

/// The outcome of an answer with `code` and these headers (or trailers): a
/// failure the server marked as the request's own is a healthy answer.
fn answered(code: Code, headers: &http::HeaderMap) -> Outcome {
    if headers.get(FAILURE_CAUSE).is_some_and(|v| v == CAUSE_REQUEST) { Outcome::Success } else { outcome_of(code) }
}

impl<S> Service<http::Request<Body>> for Guarded<S>
where
    S: Service<http::Request<Body>, Response = http::Response<Body>, Error = BoxError> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = BoxError;
    type Future = BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<Body>) -> Self::Future {
        let clone = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, clone);
        let dependency = self.dependency.clone();
        // The call is a span of its own, a child of whatever is calling; the
        // callee continues it from the injected `traceparent`.
        // Plumbing marked untraced, outside any trace, makes no span.
        let untraced = request.headers().contains_key(kit_telemetry::grpc_telemetry::UNTRACED)
            && tracing::Span::current().is_disabled();
        let span = if untraced {
            tracing::Span::none()
        } else {
            tracing::info_span!(
                "grpc.client",
                otel.name = request.uri().path(),
                otel.kind = "client",
                rpc.system = "grpc",
                peer.service = dependency.name.as_str(),
                otel.status_code = tracing::field::Empty,
            )
        };
        if !untraced {
            kit_telemetry::otel::inject(&span, request.headers_mut());
        }
        Box::pin(tracing::Instrument::instrument(guarded_call(dependency, inner, request), span))
    }
}

/// The checks in their order — spent deadline, bulkhead, breaker — then the
/// call under its deadline (the caller's, else the dependency's default).
async fn guarded_call<S>(
    dependency: Arc<Dependency>,
    inner: S,
    mut request: http::Request<Body>,
) -> Result<http::Response<Body>, BoxError>
where
    S: Service<http::Request<Body>, Response = http::Response<Body>, Error = BoxError>,
{
    let deadline = match grpc_timeout(request.headers()) {
        Some(left) if left.is_zero() => return Err(dependency.refuse_spent()),
        Some(left) => left,
        None => {
            // Every call across processes has a deadline, and the callee learns it.
            let default = dependency.default_timeout;
            if let Ok(value) = http::HeaderValue::from_str(&encode_grpc_timeout(default)) {
                request.headers_mut().insert("grpc-timeout", value);
            }
            default
        }
    };
    let seat = dependency.take_seat()?;
    let essential = request.extensions().get::<Essential>().is_some();
    let permit = match dependency.admit(essential) {
        Ok(permit) => permit,
        Err(rejected) => return Err(dependency.refuse_open(rejected)),
    };
    let admitted = Admitted { dependency, permit: Some(permit), _seat: seat, started: Instant::now(), instance: None };
    run_admitted(admitted, inner, request, deadline).await
}

/// Runs an admitted call and hands its outcome to the breaker (and to the
/// instance that answered) — from the headers of a trailers-only answer, else
/// from the trailers, as the body ends.
async fn run_admitted<S>(
    mut admitted: Admitted,
    mut inner: S,
    request: http::Request<Body>,
    deadline: Duration,
) -> Result<http::Response<Body>, BoxError>
where
    S: Service<http::Request<Body>, Response = http::Response<Body>, Error = BoxError>,
{
    let name = admitted.dependency.name.clone();
    let result = match tokio::time::timeout(deadline, inner.call(request)).await {
        Ok(result) => result,
        Err(_) => {
            admitted.finish(Outcome::Failure);
            mark_failed();
            return Err(Box::new(Status::deadline_exceeded(format!("{name} did not answer in time"))));
        }
    };
    let mut response = match result {
        Ok(response) => response,
        Err(err) => {
            // A refusal that is the request's own (a version it may not ask
            // for) says nothing of the dependency's health.
            let outcome = err.downcast_ref::<Status>().map_or(Outcome::Failure, |s| outcome_of(s.code()));
            admitted.finish(outcome);
            if outcome == Outcome::Failure {
                mark_failed();
            }
            return Err(err);
        }
    };
    admitted.instance = response.extensions_mut().remove::<InstanceOutcome>();
    if response.status().is_server_error() {
        admitted.finish(Outcome::Failure);
        mark_failed();
        return Ok(response);
    }
    if let Some(code) = header_code(response.headers()) {
        // Trailers-only: the status is already here.
        if server_failure(code) {
            mark_failed();
        }
        admitted.finish(answered(code, response.headers()));
        return Ok(response);
    }
    Ok(response.map(|body| Body::new(Observed { inner: body, permit: admitted })))
}

impl Dependency {
    fn refuse_spent(&self) -> BoxError {
        metrics::counter!("client_deadline_spent_total", "service" => self.name.clone()).increment(1);
        mark_failed();
        refusal(Code::DeadlineExceeded, signals::BY_DEADLINE, format!("deadline spent before calling {}", self.name))
    }

    /// A bulkhead seat, held until the response ends; refused when all are taken.
    fn take_seat(&self) -> Result<Option<OwnedSemaphorePermit>, BoxError> {
        let Some((limit, seats)) = &self.bulkhead else { return Ok(None) };
        match seats.clone().try_acquire_owned() {
            Ok(seat) => Ok(Some(seat)),
            Err(_) => {
                metrics::counter!("bulkhead_rejected_total", "service" => self.name.clone()).increment(1);
                mark_failed();
                let message = format!("{} has {limit} calls in flight already; try again shortly", self.name);
                Err(refusal(Code::ResourceExhausted, signals::BY_BULKHEAD, message))
            }
        }
    }

    fn refuse_open(&self, rejected: Rejected) -> BoxError {
        let retry_ms = rejected.retry_after.as_millis().max(1);
        let message =
            format!("{} is failing; circuit breaker {} (retry in {retry_ms} ms)", self.name, rejected.state.name());
        let mut refused = Status::new(Code::Unavailable, message);
        mark_failed();
        let metadata = refused.metadata_mut();
        metadata.insert(REFUSED_BY, tonic::metadata::MetadataValue::from_static(signals::BY_CIRCUIT_BREAKER));
        if let Ok(value) = retry_ms.to_string().parse() {
            metadata.insert(RETRY_AFTER_MS, value);
        }
        Box::new(refused)
    }
}

/// A call let through, until its outcome is known. Dropped without one (the
/// caller gave up), it frees its half-open slot and counts nothing.
struct Admitted {
    dependency: Arc<Dependency>,
    permit: Option<Permit>,
    /// The bulkhead seat is held until the response ends.
    _seat: Option<OwnedSemaphorePermit>,
    started: Instant,
    /// The instance that answered, told the outcome too (outlier ejection).
    instance: Option<InstanceOutcome>,
}

impl Admitted {
    /// Records the call's outcome: for the breaker, and as the dependency's
    /// RED metrics (calls and server-side errors, latency to the status).
    fn finish(&mut self, outcome: Outcome) {
        if let Some(permit) = self.permit.take() {
            self.dependency.record(permit, outcome);
            let instance = self.instance.take();
            if let Some(instance) = &instance {
                instance.report(outcome == Outcome::Failure);
            }
            let meters = self.dependency.meters(instance.as_ref().map_or("none", |i| i.version()));
            let meters = &meters[usize::from(outcome != Outcome::Success)];
            meters.calls.increment(1);
            meters.latency.record(self.started.elapsed().as_secs_f64());
        }
    }
}

impl Drop for Admitted {
    fn drop(&mut self) {
        if let Some(permit) = self.permit.take() {
            self.dependency.release(permit);
        }
    }
}

/// A response body that reports `grpc-status` from its trailers to the breaker.
struct Observed {
    inner: Body,
    permit: Admitted,
}

impl HttpBody for Observed {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        let this = &mut *self;
        let frame = ready!(Pin::new(&mut this.inner).poll_frame(cx));
        match &frame {
            Some(Ok(frame)) => {
                if let Some(trailers) = frame.trailers_ref() {
                    let code = header_code(trailers).unwrap_or(Code::Unknown);
                    this.permit.finish(answered(code, trailers));
                }
            }
            Some(Err(_)) => this.permit.finish(Outcome::Failure),
            // A gRPC response without trailers was cut short.
            None => this.permit.finish(Outcome::Failure),
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeout_units() {
        let parse = |v: &str| {
            let mut headers = http::HeaderMap::new();
            headers.insert("grpc-timeout", v.parse().unwrap());
            grpc_timeout(&headers)
        };
        assert_eq!(parse("5S"), Some(Duration::from_secs(5)));
        assert_eq!(parse("250m"), Some(Duration::from_millis(250)));
        assert_eq!(parse("7u"), Some(Duration::from_micros(7)));
        assert_eq!(parse("2M"), Some(Duration::from_secs(120)));
        assert_eq!(parse("0n"), Some(Duration::ZERO));
        assert_eq!(parse("5x"), None);
        assert_eq!(parse("S"), None);
        assert_eq!(parse(""), None);
        for timeout in [Duration::ZERO, Duration::from_nanos(7), Duration::from_millis(250), Duration::from_secs(30)] {
            assert_eq!(parse(&encode_grpc_timeout(timeout)), Some(timeout), "{timeout:?}");
        }
        assert_eq!(encode_grpc_timeout(Duration::from_millis(250)), "250000u");
        assert_eq!(encode_grpc_timeout(Duration::from_secs(30)), "30000000u");
        assert_eq!(encode_grpc_timeout(Duration::from_secs(86_400 * 365)), "31536000S");
    }

    #[test]
    fn only_server_side_codes_count_as_failures() {
        for code in [Code::Unavailable, Code::DeadlineExceeded, Code::Internal, Code::ResourceExhausted] {
            assert_eq!(outcome_of(code), Outcome::Failure, "{code:?}");
        }
        for code in [Code::Ok, Code::NotFound, Code::InvalidArgument, Code::PermissionDenied, Code::FailedPrecondition]
        {
            assert_eq!(outcome_of(code), Outcome::Success, "{code:?}");
        }
    }
}
