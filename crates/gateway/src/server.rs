//! The request pipeline: identify → rate limit → route → authorise → read and
//! transcode → call the backend → transcode back. Every response is JSON and
//! carries the trace id.
use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{ALLOW, CONTENT_LENGTH, CONTENT_TYPE, HeaderName, HeaderValue, RETRY_AFTER};
use http::{Method, Request, Response, StatusCode};
use http_body::Body as _;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use tonic::Code;

use crate::auth::{self, ApiKey, Caller};
use crate::backend::Backend;
use crate::deferred::{DeferredCall, DeferredQueue, Delivery};
use crate::errors;
use crate::grpc_call;
use crate::ratelimit::{Decision, Limiter};
use crate::routes::{Access, Matched, Route};
use crate::transcode::{self, BadRequest};
use kit::token::TokenSigner;
use kit_core::reason::Reason;
use kit_resilience::Fallback;
use kit_resilience::signals::{refused_by, server_failure};
use kit_telemetry::trace_context::TraceIds;

pub type Reply = Response<Full<Bytes>>;

/// What a request came to, with its route label for the metrics: the reply,
/// or the failure to answer with. A stage that answers early returns it.
type Dispatched = Result<(Reply, &'static str), (Failure, &'static str)>;

/// An answer a stage gives before the backend is called (refused, no
/// route): boxed, as the rare path it is.
type Early = Box<Dispatched>;

/// A route's path variables, as matched.
type Bindings = Vec<(String, String)>;

/// The call a request makes, once admitted, routed and transcoded.
struct Call {
    user: Option<String>,
    idempotency_key: Option<String>,
    version: Option<String>,
    query: Option<String>,
    message: prost_reflect::DynamicMessage,
}

pub struct Limits {
    pub max_body_bytes: usize,
    pub body_read_timeout: Duration,
}

pub struct Gateway {
    pub routes: Vec<Arc<Route>>,
    pub backends: HashMap<String, Backend>,
    pub deferred: DeferredQueue,
    pub limiter: Limiter,
    pub keys: BTreeMap<String, ApiKey>,
    pub trusted_proxies: auth::TrustedProxies,
    pub signer: TokenSigner,
    pub openapi: Bytes,
    pub limits: Limits,
    pub metrics: metrics_exporter_prometheus::PrometheusHandle,
    pub meters: crate::meters::RequestMeters,
    /// The client of the W3C trace-context test endpoint, when it is on.
    pub trace_context_test: Option<reqwest::Client>,
}

/// A failure on its way to becoming the JSON error body.
struct Failure {
    code: Code,
    message: String,
    field: Option<String>,
    status: Option<StatusCode>,
    /// Seconds for a Retry-After header.
    retry_after: Option<u64>,
    /// The body's `code` when no gRPC code says it (METHOD_NOT_ALLOWED).
    name: Option<&'static str>,
    /// The body's `reason`: which refusal this is, for programs.
    reason: Option<Reason>,
}

impl Failure {
    fn new(code: Code, message: impl Into<String>) -> Self {
        Self { code, message: message.into(), field: None, status: None, retry_after: None, name: None, reason: None }
    }

    fn with_status(mut self, status: StatusCode) -> Self {
        self.status = Some(status);
        self
    }

    fn because(mut self, reason: Reason) -> Self {
        self.reason = Some(reason);
        self
    }
}

impl From<BadRequest> for Failure {
    fn from(bad: BadRequest) -> Self {
        Self { field: bad.pointer, ..Self::new(Code::InvalidArgument, bad.message) }
    }
}

impl From<tonic::Status> for Failure {
    fn from(status: tonic::Status) -> Self {
        let code = status.code();
        let ours = refused_by(&status).is_some();
        // What the backend said (a name from our catalogue only), or what refused it here.
        let reason = kit_resilience::signals::reason(&status);
        if matches!(code, Code::Internal | Code::Unknown | Code::DataLoss) {
            tracing::error!(code = ?code, detail = %status.message(), "backend failure");
        } else if code == Code::Unavailable && !ours {
            tracing::warn!(detail = %status.message(), "backend unavailable");
        }
        let message = match code {
            // Our own refusals say what happened; a transport error's text names hosts.
            Code::Unavailable if !ours => "service unavailable".to_string(),
            _ => errors::public_message(code, status.message()),
        };
        // A backend that gave up at its deadline (tonic answers CANCELLED
        // "Timeout expired") timed out: 504, which clients retry — not 499,
        // "the client went away", which they do not.
        let (code, message) = match code {
            Code::Cancelled => (Code::DeadlineExceeded, errors::public_message(Code::DeadlineExceeded, "")),
            _ => (code, message),
        };
        let mut failure = Self { reason, ..Self::new(code, message) };
        // When to come back: the breaker (or the backend) says when; anything
        // else unavailable, a shed or a full bulkhead clears in about a second.
        failure.retry_after = match code {
            Code::Unavailable => Some(
                status
                    .metadata()
                    .get(kit_resilience::signals::RETRY_AFTER_MS)
                    .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
                    .map_or(1, |ms| ms.div_ceil(1000).max(1)),
            ),
            Code::ResourceExhausted => Some(1),
            _ => None,
        };
        // A backend shedding load or a full bulkhead is the server side's
        // trouble, not the client's rate: 503, not 429 (kept for our own limits).
        if code == Code::ResourceExhausted {
            return failure.with_status(StatusCode::SERVICE_UNAVAILABLE);
        }
        // An idempotency key reused for another request: 422, as the IETF
        // idempotency-key draft says (the backend's hint, see `kit::reply`).
        let unprocessable = status.metadata().get(kit::reply::HTTP_CODE).is_some_and(|v| v == "422");
        if code == Code::InvalidArgument && unprocessable {
            return failure.with_status(StatusCode::UNPROCESSABLE_ENTITY);
        }
        failure
    }
}

const X_CLIENT_ID: HeaderName = HeaderName::from_static("x-client-id");
const X_USER_ID: HeaderName = HeaderName::from_static("x-user-id");
/// Asks for a version by name (admin API keys only): see `registry_wire::traffic`.
const X_VERSION: HeaderName = HeaderName::from_static(registry_wire::traffic::VERSION_OVERRIDE);
const IDEMPOTENCY_KEY: HeaderName = HeaderName::from_static("idempotency-key");
const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
/// What a queued call keeps of its metadata, to send when it is delivered.
const DEFERRED_METADATA: [HeaderName; 4] = [TRACEPARENT, X_CLIENT_ID, X_USER_ID, IDEMPOTENCY_KEY];

/// gRPC metadata sent with a backend call: the entries that have a value,
/// less any value that cannot be a header value.
/// A version asked for by name: admin API keys only (a smoke test of a
/// version no user is sent to yet), and well formed.
fn version_override(headers: &http::HeaderMap, caller: &Caller) -> Result<Option<String>, Failure> {
    let Some(value) = headers.get(&X_VERSION) else { return Ok(None) };
    if !caller.admin {
        return Err(Failure::new(Code::PermissionDenied, "x-shopfast-version needs an admin API key"));
    }
    match value.to_str() {
        Ok(text) if registry_wire::traffic::valid_override(text) => Ok(Some(text.trim().to_string())),
        _ => Err(Failure::new(
            Code::InvalidArgument,
            "x-shopfast-version must be a version (v2) or service=version pairs (products=v2,orders=v3)",
        )),
    }
}

fn call_metadata<'a>(entries: impl IntoIterator<Item = (HeaderName, Option<&'a str>)>) -> http::HeaderMap {
    let mut metadata = http::HeaderMap::with_capacity(8);
    for (name, value) in entries {
        if let Some(Ok(value)) = value.map(HeaderValue::from_str) {
            metadata.insert(name, value);
        }
    }
    metadata
}

fn json_reply(status: StatusCode, body: Bytes) -> Reply {
    let mut reply = Response::new(Full::new(body));
    *reply.status_mut() = status;
    // Room for what most replies carry (rate and quota headers, the trace
    // id, hyper's content-length and date) without growing the map.
    *reply.headers_mut() = http::HeaderMap::with_capacity(16);
    reply.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    reply
}

fn failure_reply(failure: Failure, trace_id: &str) -> Reply {
    let status = failure.status.unwrap_or_else(|| errors::http_status(failure.code));
    let mut body = serde_json::json!({
        "code": failure.name.unwrap_or_else(|| errors::code_name(failure.code)),
        "message": failure.message,
        "trace_id": trace_id,
    });
    if let Some(object) = body.as_object_mut() {
        if let Some(field) = failure.field {
            object.insert("field".into(), field.into());
        }
        if let Some(reason) = failure.reason {
            object.insert("reason".into(), reason.as_str().into());
        }
    }
    let mut reply = json_reply(status, Bytes::from(body.to_string()));
    if let Some(seconds) = failure.retry_after {
        reply.headers_mut().insert(RETRY_AFTER, HeaderValue::from(seconds));
    }
    reply
}

const X_TRACE_ID: HeaderName = HeaderName::from_static("x-trace-id");
const X_RATELIMIT_LIMIT: HeaderName = HeaderName::from_static("x-ratelimit-limit");
const X_RATELIMIT_REMAINING: HeaderName = HeaderName::from_static("x-ratelimit-remaining");
const X_RATELIMIT_RESET: HeaderName = HeaderName::from_static("x-ratelimit-reset");
const RATELIMIT_LIMIT: HeaderName = HeaderName::from_static("ratelimit-limit");
const RATELIMIT_REMAINING: HeaderName = HeaderName::from_static("ratelimit-remaining");
const RATELIMIT_RESET: HeaderName = HeaderName::from_static("ratelimit-reset");
const X_QUOTA_LIMIT: HeaderName = HeaderName::from_static("x-quota-limit");
const X_QUOTA_REMAINING: HeaderName = HeaderName::from_static("x-quota-remaining");
const X_QUOTA_RESET: HeaderName = HeaderName::from_static("x-quota-reset");

/// A count that changes from one response to the next: sent as a literal,
/// kept out of the client's HPACK table (where it would push out the
/// headers that repeat).
fn changing(value: u64) -> HeaderValue {
    let mut value = HeaderValue::from(value);
    value.set_sensitive(true);
    value
}

/// X-RateLimit-* (classic) and RateLimit-* (IETF draft) headers, and the
/// monthly quota's.
fn insert_rate_headers(headers: &mut http::HeaderMap, decision: &Decision) {
    let rate = decision.rate;
    let limit = HeaderValue::from(rate.limit);
    let reset = HeaderValue::from(rate.reset_ms.div_ceil(1000));
    let remaining = changing(rate.remaining.into());
    headers.insert(X_RATELIMIT_LIMIT, limit.clone());
    headers.insert(X_RATELIMIT_REMAINING, remaining.clone());
    headers.insert(X_RATELIMIT_RESET, reset.clone());
    headers.insert(RATELIMIT_LIMIT, limit);
    headers.insert(RATELIMIT_REMAINING, remaining);
    headers.insert(RATELIMIT_RESET, reset);
    if let Some(quota) = decision.quota {
        headers.insert(X_QUOTA_LIMIT, HeaderValue::from(quota.limit));
        headers.insert(X_QUOTA_REMAINING, changing(quota.limit.saturating_sub(quota.used)));
        headers.insert(X_QUOTA_RESET, HeaderValue::from(quota.reset_secs));
    }
}

impl Gateway {
    pub async fn handle(self: Arc<Self>, request: Request<Incoming>, peer: SocketAddr) -> Reply {
        let started = Instant::now();
        let method = request.method().clone();
        // Probes and scrapes (every few seconds, from the registry, Prometheus
        // and the console) are not traced: they would bury the traces of users.
        let probe =
            method == Method::GET && matches!(request.uri().path(), "/health/live" | "/health/ready" | "/metrics");
        let span = if probe {
            tracing::Span::none()
        } else {
            // Named `{method}` until a route matches, then `{method} {route}`
            // (OpenTelemetry's HTTP conventions: a low-cardinality name).
            tracing::info_span!(
                "http",
                otel.name = method.as_str(),
                otel.kind = "server",
                method = method.as_str(),
                path = request.uri().path(),
                trace_id = tracing::field::Empty,
                span_id = tracing::field::Empty,
                http.response.status_code = tracing::field::Empty,
                otel.status_code = tracing::field::Empty,
            )
        };
        let ids = kit_telemetry::otel::continue_trace(&span, request.headers());
        // Boxed: hyper moves this future (into its stream, into the spawned
        // task) and every move copies it; the pipeline's state is kilobytes.
        let dispatch = Box::pin(self.dispatch(request, peer, &ids));
        let dispatched = tracing::Instrument::instrument(dispatch, span.clone()).await;
        let (mut reply, route_label) = match dispatched {
            Ok(done) => done,
            Err((failure, route)) => (failure_reply(failure, &ids.trace_id), route),
        };
        let headers = reply.headers_mut();
        if let Ok(mut value) = HeaderValue::from_str(&ids.trace_id) {
            // New on every response: not worth a place in the client's HPACK table.
            value.set_sensitive(true);
            headers.insert(X_TRACE_ID, value);
        }
        span.record("http.response.status_code", reply.status().as_u16());
        if reply.status().is_server_error() {
            span.record("otel.status_code", "ERROR");
        }
        let status = status_label(reply.status());
        tracing::debug!(
            parent: &span,
            route = route_label,
            status,
            elapsed_ms = started.elapsed().as_secs_f64() * 1_000.0,
            "request finished"
        );
        self.meters.record(route_label, status, started.elapsed());
        reply
    }

    /// The reply and the route label for metrics (bounded: a template, never a raw path).
    async fn dispatch(&self, request: Request<Incoming>, peer: SocketAddr, ids: &TraceIds) -> Dispatched {
        let path = request.uri().path().to_string();
        let method = request.method().clone();
        if let Some(answered) = self.own_endpoint(&method, &path) {
            return Ok(answered);
        }
        if method == Method::POST
            && path == crate::tracecontext::PATH
            && let Some(http) = &self.trace_context_test
        {
            let body = self.read_body(request).await.map_err(|f| (f, "tracecontext"))?;
            return match Box::pin(crate::tracecontext::run(http, &body)).await {
                Ok(()) => Ok((json_reply(StatusCode::OK, Bytes::from_static(b"{}")), "tracecontext")),
                Err(err) => Err((Failure::new(Code::InvalidArgument, err.to_string()), "tracecontext")),
            };
        }
        // Identify and limit before anything else costs us.
        let (caller, decision) = match self.admit(request.headers(), peer, ids).await {
            Ok(admitted) => admitted,
            Err(answered) => return *answered,
        };
        let (route, bindings) = match self.route(&method, &path, ids) {
            Ok(found) => found,
            Err(answered) => return *answered,
        };
        let label = route.label;
        tracing::Span::current().record("otel.name", label);
        let fail = |failure: Failure| (failure, label);
        let call = self.prepare(&route, &bindings, &caller, request).await.map_err(fail)?;
        let mut reply = self.forward(&route, &caller, call, &method, &path, ids).await.map_err(fail)?;
        insert_rate_headers(reply.headers_mut(), &decision);
        Ok((reply, label))
    }

    /// The gateway's own endpoints: its OpenAPI document, health and metrics.
    fn own_endpoint(&self, method: &Method, path: &str) -> Option<(Reply, &'static str)> {
        if method != Method::GET {
            return None;
        }
        match path {
            "/openapi.json" => Some((json_reply(StatusCode::OK, self.openapi.clone()), "openapi")),
            "/health/live" | "/health/ready" => {
                Some((json_reply(StatusCode::OK, Bytes::from_static(br#"{"status":"ok"}"#)), "health"))
            }
            "/metrics" => {
                let mut reply = Response::new(Full::new(Bytes::from(self.metrics.render())));
                reply.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("text/plain; version=0.0.4"));
                Some((reply, "metrics"))
            }
            _ => None,
        }
    }

    /// Who is calling, and whether their rate and quota let them: the caller
    /// and the limits' decision, or the answer that refuses them.
    async fn admit(
        &self,
        headers: &http::HeaderMap,
        peer: SocketAddr,
        ids: &TraceIds,
    ) -> Result<(Caller, Decision), Early> {
        const UNMATCHED: &str = "unmatched";
        let client_ip = self.trusted_proxies.client_ip(headers, peer.ip());
        let caller = auth::identify(headers, client_ip, &self.keys)
            .map_err(|e| Box::new(Err((Failure::new(Code::Unauthenticated, e.to_string()), UNMATCHED))))?;
        let decision = self.limit(&caller).await.map_err(|f| Box::new(Err((f, UNMATCHED))))?;
        if decision.allowed() {
            return Ok((caller, decision));
        }
        let by_quota = decision.quota.is_some_and(|q| !q.allowed);
        let retry_secs = if by_quota {
            decision.quota.map(|q| q.reset_secs).unwrap_or(60)
        } else {
            decision.rate.retry_after_ms.div_ceil(1000).max(1)
        };
        let message = if by_quota { "monthly quota exhausted" } else { "rate limit exceeded; slow down" };
        metrics::counter!("ratelimit_rejections_total", "tier" => caller.tier.clone(), "reason" => if by_quota { "quota" } else { "rate" }).increment(1);
        let reason = if by_quota { Reason::QuotaExhausted } else { Reason::RateLimited };
        let mut reply = failure_reply(Failure::new(Code::ResourceExhausted, message).because(reason), &ids.trace_id);
        insert_rate_headers(reply.headers_mut(), &decision);
        reply.headers_mut().insert(RETRY_AFTER, HeaderValue::from(retry_secs));
        Err(Box::new(Ok((reply, "rate_limited"))))
    }

    /// The route for `method path` and its path variables, or the answer
    /// that there is none (404, or 405 with the methods that are).
    fn route(&self, method: &Method, path: &str, ids: &TraceIds) -> Result<(Arc<Route>, Bindings), Early> {
        match crate::routes::find(&self.routes, method, path) {
            Matched::Route(route, bindings) => Ok((route.clone(), bindings)),
            Matched::NotFound => {
                Err(Box::new(Err((Failure::new(Code::NotFound, format!("no route for {method} {path}")), "unmatched"))))
            }
            Matched::WrongMethod(allowed) => {
                let allow = allowed.iter().map(Method::as_str).collect::<Vec<_>>().join(", ");
                let failure = Failure {
                    name: Some("METHOD_NOT_ALLOWED"),
                    ..Failure::new(Code::Unimplemented, format!("{method} is not allowed here; use {allow}"))
                }
                .with_status(StatusCode::METHOD_NOT_ALLOWED);
                let mut reply = failure_reply(failure, &ids.trace_id);
                if let Ok(value) = HeaderValue::from_str(&allow) {
                    reply.headers_mut().insert(ALLOW, value);
                }
                Err(Box::new(Ok((reply, "wrong_method"))))
            }
        }
    }

    /// The call a request makes: who it acts for (checked against the
    /// route's access and owner field), its idempotency key and version, and
    /// the request message transcoded from path, query and body.
    async fn prepare(
        &self,
        route: &Route,
        bindings: &Bindings,
        caller: &Caller,
        request: Request<Incoming>,
    ) -> Result<Call, Failure> {
        let user = self.authorise(route, caller, request.headers())?;
        let idempotency_key = idempotency_key(request.headers())?;
        let version = version_override(request.headers(), caller)?;
        let query = request.uri().query().map(str::to_string);
        let body = self.read_body(request).await?;
        let mut message = transcode::request_message(route, bindings, query.as_deref(), &body)?;
        if let (Some(field), Some(user)) = (&route.policy.owner_field, &user) {
            match transcode::string_field(&message, field) {
                None => transcode::set_string_field(&mut message, field, user)?,
                Some(owner) if owner != *user => {
                    return Err(Failure::new(Code::PermissionDenied, "you can only access your own resources"));
                }
                Some(_) => {}
            }
        }
        Ok(Call { user, idempotency_key, version, query, message })
    }

    /// Sends the call to the route's backend (or answers with its fallback)
    /// and turns the answer into the HTTP reply.
    async fn forward(
        &self,
        route: &Route,
        caller: &Caller,
        call: Call,
        method: &Method,
        path: &str,
        ids: &TraceIds,
    ) -> Result<Reply, Failure> {
        let Call { user, idempotency_key, version, query, message } = call;
        let backend = self
            .backends
            .get(&route.backend)
            .ok_or_else(|| Failure::new(Code::Unavailable, format!("no backend for {}", route.backend)))?;
        // Trace context is not set here: the guard's client span injects its
        // own (`traceparent` with the caller's sampling and random flags, and
        // `tracestate`), so the backend's span is a child of that call.
        let metadata = call_metadata([
            (X_CLIENT_ID, Some(caller.client.as_str())),
            (X_USER_ID, user.as_deref()),
            (IDEMPOTENCY_KEY, idempotency_key.as_deref()),
            (X_VERSION, version.as_deref()),
        ]);
        // The cached fallback answers a read with the last good answer to the
        // same read by the same user.
        let cache_key = backend
            .cache
            .as_ref()
            // An answer from a version asked for by name is not everyone's answer.
            .filter(|_| method == Method::GET && version.is_none())
            .map(|_| format!("{path}?{}#{}", query.as_deref().unwrap_or(""), user.as_deref().unwrap_or("")));
        let idempotent = method == Method::GET || idempotency_key.is_some();
        let answer = match self.call(backend, route, &message, &metadata, idempotent).await {
            Ok(answer) => answer,
            // Boxed: a rare path, kept out of every request's future.
            Err(status) => {
                return Box::pin(self.fallback(backend, route, status, cache_key.as_deref(), &message, &metadata, ids))
                    .await;
            }
        };
        let json = transcode::response_json(&route.output, &answer.message)
            .map_err(|e| Failure::new(Code::Internal, e.to_string()))?;
        let json = Bytes::from(json);
        if let (Some(cache), Some(key)) = (&backend.cache, cache_key) {
            cache.put(key, json.clone());
        }
        // 201 / 202 with a Location when the backend says so and the route
        // documents it; 200 otherwise.
        let status = answer.status.filter(|s| route.policy.replies.allows(*s)).unwrap_or(StatusCode::OK);
        let mut reply = json_reply(status, json);
        if let (true, Some(location)) = (status != StatusCode::OK, answer.location) {
            reply.headers_mut().insert(http::header::LOCATION, location);
        }
        // Which version answered: for operators (smoke tests, deploys), not
        // for everyone.
        if let (true, Some(version)) = (caller.admin, answer.served_version) {
            reply.headers_mut().insert(grpc_call::SERVED_VERSION, version);
        }
        Ok(reply)
    }

    async fn limit(&self, caller: &Caller) -> Result<Decision, Failure> {
        use crate::ratelimit::local::Refusal;
        self.limiter.check(&caller.tier, &caller.client).await.map_err(|refusal| match refusal {
            Refusal::UnknownTier => {
                Failure::new(Code::Internal, format!("API key tier {} is not configured", caller.tier))
            }
            // The gateway's own bound, not this client's rate: 503, come back shortly.
            Refusal::TooManyClients => {
                metrics::counter!("ratelimit_refused_clients_total", "tier" => caller.tier.clone()).increment(1);
                let failure = Failure::new(Code::Unavailable, "too many distinct clients right now; retry shortly")
                    .because(Reason::TooManyClients);
                Failure { retry_after: Some(1), ..failure }
            }
        })
    }

    /// Checks the route's access rule; returns the signed-in user, if any.
    fn authorise(&self, route: &Route, caller: &Caller, headers: &http::HeaderMap) -> Result<Option<String>, Failure> {
        let user = auth::user_id(headers, &self.signer, kit_core::time::now_millis() / 1000)
            .map_err(|e| Failure::new(Code::Unauthenticated, e.to_string()))?;
        match route.policy.access {
            Access::User if user.is_none() => Err(Failure::new(
                Code::Unauthenticated,
                "sign in first: send Authorization: Bearer <token> from POST /v1/auth/login",
            )),
            Access::Admin if !caller.admin => {
                Err(Failure::new(Code::PermissionDenied, "this endpoint needs an admin API key"))
            }
            Access::Internal => Err(Failure::new(Code::NotFound, "no such route")),
            _ => Ok(user),
        }
    }

    async fn read_body(&self, request: Request<Incoming>) -> Result<Bytes, Failure> {
        let too_large = || {
            Failure::new(
                Code::InvalidArgument,
                format!("request body larger than {} bytes", self.limits.max_body_bytes),
            )
            .with_status(StatusCode::PAYLOAD_TOO_LARGE)
        };
        let declared =
            request.headers().get(CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<usize>().ok());
        if declared.is_some_and(|n| n > self.limits.max_body_bytes) {
            return Err(too_large());
        }
        // A GET's stream ended with its headers: nothing to wait for.
        if request.body().is_end_stream() {
            return Ok(Bytes::new());
        }
        let content_type =
            request.headers().get(CONTENT_TYPE).and_then(|v| v.to_str().ok()).map(str::to_ascii_lowercase);
        let limited = Limited::new(request.into_body(), self.limits.max_body_bytes);
        let body = match tokio::time::timeout(self.limits.body_read_timeout, limited.collect()).await {
            Err(_) => {
                return Err(Failure::new(Code::DeadlineExceeded, "request body was not received in time")
                    .with_status(StatusCode::REQUEST_TIMEOUT));
            }
            Ok(Err(err)) if err.downcast_ref::<http_body_util::LengthLimitError>().is_some() => return Err(too_large()),
            Ok(Err(err)) => {
                return Err(Failure::new(Code::InvalidArgument, format!("could not read the request body: {err}")));
            }
            Ok(Ok(collected)) => collected.to_bytes(),
        };
        if !body.is_empty() && !content_type.as_deref().is_some_and(|t| t.starts_with("application/json")) {
            return Err(Failure::new(Code::InvalidArgument, "send the body as Content-Type: application/json")
                .with_status(StatusCode::UNSUPPORTED_MEDIA_TYPE));
        }
        Ok(body)
    }

    /// Calls the backend through its guard. Idempotent calls (GET, or with an
    /// idempotency key) that fail with UNAVAILABLE are retried, up to the
    /// route's attempts, with jittered backoff, while the retry budget allows.
    /// Returns the response message's bytes and hints.
    async fn call(
        &self,
        backend: &Backend,
        route: &Route,
        message: &prost_reflect::DynamicMessage,
        metadata: &http::HeaderMap,
        idempotent: bool,
    ) -> Result<grpc_call::Answer, tonic::Status> {
        let frame = grpc_call::frame(message);
        let attempts = if idempotent { route.policy.attempts.max(1) } else { 1 };
        let deadline = Instant::now() + route.timeout();
        backend.retries.started();
        let mut attempt = 0;
        loop {
            attempt += 1;
            // The backend learns our deadline (grpc-timeout) and the guard enforces it.
            let left = deadline.saturating_duration_since(Instant::now());
            let call = grpc_call::unary(backend.channel.clone(), &route.grpc_uri, frame.clone(), metadata, left);
            // A safety net only: the guard times the call out first.
            let result = match tokio::time::timeout(left + Duration::from_millis(200), call).await {
                Ok(result) => result,
                Err(_) => Err(tonic::Status::deadline_exceeded("timed out")),
            };
            match result {
                Ok(response) => return Ok(response),
                Err(status) if attempt < attempts && backend.retries.allow(attempt, &status) => {
                    let pause = backend.retries.backoff(attempt, rand::random());
                    if Instant::now() + pause >= deadline {
                        return Err(status);
                    }
                    tokio::time::sleep(pause).await;
                }
                Err(status) => return Err(status),
            }
        }
    }

    /// The dependency's fallback for a failed call, or the failure itself.
    #[allow(clippy::too_many_arguments)]
    async fn fallback(
        &self,
        backend: &Backend,
        route: &Route,
        status: tonic::Status,
        cache_key: Option<&str>,
        message: &prost_reflect::DynamicMessage,
        metadata: &http::HeaderMap,
        ids: &TraceIds,
    ) -> Result<Reply, Failure> {
        if !server_failure(status.code()) {
            return Err(status.into());
        }
        let started = Instant::now();
        let read = route.http_method == Method::GET;
        let reply = match backend.fallback {
            Fallback::Cached if read => {
                let Some((body, age)) = cache_key.and_then(|key| backend.cache.as_ref()?.get(key)) else {
                    return Err(status.into());
                };
                let mut reply = json_reply(StatusCode::OK, body);
                let headers = reply.headers_mut();
                headers.insert(http::header::AGE, HeaderValue::from(age.as_secs()));
                headers.insert(http::header::WARNING, HeaderValue::from_static("110 - \"Response is Stale\""));
                ("cached", reply)
            }
            Fallback::Default if read => {
                let empty = prost_reflect::DynamicMessage::new(route.output.clone());
                let json = transcode::dynamic_json(&empty).map_err(|e| Failure::new(Code::Internal, e.to_string()))?;
                ("default", json_reply(StatusCode::OK, Bytes::from(json)))
            }
            // A write is queued only if it certainly did not reach the
            // backend, or carries an idempotency key the backend will honour.
            Fallback::Queue if !read && (refused_by(&status).is_some() || metadata.contains_key(IDEMPOTENCY_KEY)) => {
                let mut stored: BTreeMap<String, String> = metadata
                    .iter()
                    .filter_map(|(name, value)| Some((name.to_string(), value.to_str().ok()?.to_string())))
                    .collect();
                // Delivered later, the call still joins this request's trace.
                if let Some(traceparent) = kit_telemetry::otel::current_traceparent() {
                    stored.insert("traceparent".into(), traceparent);
                }
                let encoded = prost::Message::encode_to_vec(message);
                let id = match self.deferred.push(&route.backend, &route.grpc_path, &encoded, &stored).await {
                    Ok(id) => id,
                    Err(crate::deferred::QueueError::Full(pending)) => {
                        tracing::warn!(backend = %route.backend, pending, "deferred-call queue full; write refused");
                        let message = format!(
                            "{} is unavailable and the queue of deferred writes is full; retry later",
                            route.backend
                        );
                        let failure = Failure::new(Code::Unavailable, message).because(Reason::DeferredQueueFull);
                        return Err(Failure { retry_after: Some(5), ..failure });
                    }
                    Err(err) => {
                        tracing::error!(error = %err, "could not queue a deferred call");
                        return Err(status.into());
                    }
                };
                let body = serde_json::json!({
                    "status": "accepted",
                    "deferred_id": id,
                    "message": format!("{} is unavailable; the request is queued and will be delivered when it recovers", route.backend),
                    "trace_id": ids.trace_id,
                });
                ("queue", json_reply(StatusCode::ACCEPTED, Bytes::from(body.to_string())))
            }
            _ => return Err(status.into()),
        };
        let (kind, mut reply) = reply;
        reply.headers_mut().insert(HeaderName::from_static("x-fallback"), HeaderValue::from_static(kind));
        let service = backend.dependency.name().to_string();
        metrics::counter!("fallback_requests_total", "service" => service.clone(), "kind" => kind).increment(1);
        metrics::histogram!("fallback_latency_seconds", "service" => service, "kind" => kind)
            .record(started.elapsed().as_secs_f64());
        tracing::info!(backend = %route.backend, kind, code = ?status.code(), "answered by fallback");
        Ok(reply)
    }

    /// The sizes of what clients can make the gateway remember, as gauges
    /// (each has a bound: see `StateLimits`).
    pub fn export_state_sizes(&self) {
        metrics::gauge!("ratelimit_quota_clients").set(self.limiter.quota_clients() as f64);
        metrics::gauge!("ratelimit_local_clients").set(self.limiter.local_clients() as f64);
        for (name, backend) in &self.backends {
            if let Some(cache) = &backend.cache {
                metrics::gauge!("fallback_cache_entries", "service" => name.clone()).set(cache.entries() as f64);
            }
        }
    }

    /// Deletes delivered and failed deferred calls older than a day.
    pub async fn prune_deferred(&self) {
        match self.deferred.prune(kit_core::time::now_millis()).await {
            Ok(0) => {}
            Ok(n) => tracing::debug!(deleted = n, "settled deferred calls pruned"),
            Err(err) => tracing::warn!(error = %err, "pruning deferred calls failed"),
        }
    }

    /// Delivers queued calls of every `queue` backend whose breaker lets
    /// calls through, oldest first, stopping at a backend's first failure.
    pub async fn deliver_deferred(&self) {
        for (name, backend) in &self.backends {
            if backend.fallback != Fallback::Queue || backend.dependency.refusing() {
                continue;
            }
            let calls = match self.deferred.pending(name, 20).await {
                Ok(calls) => calls,
                Err(err) => {
                    tracing::warn!(backend = %name, error = %err, "cannot read deferred calls");
                    continue;
                }
            };
            for call in calls {
                let delivery = self.deliver(backend, &call).await;
                let stop = matches!(delivery, Delivery::Retry(_));
                if let Err(err) = self.deferred.settle(&call, delivery).await {
                    tracing::warn!(deferred_id = %call.id, error = %err, "cannot record a delivery");
                }
                if stop {
                    break;
                }
            }
        }
    }

    async fn deliver(&self, backend: &Backend, call: &DeferredCall) -> Delivery {
        let Some(route) = self.routes.iter().find(|r| r.grpc_path == call.grpc_path) else {
            return Delivery::Rejected(format!("no route for {}", call.grpc_path));
        };
        let message = match prost_reflect::DynamicMessage::decode(route.input.clone(), call.message.as_slice()) {
            Ok(message) => message,
            Err(err) => return Delivery::Rejected(format!("stored message unreadable: {err}")),
        };
        let mut metadata = call_metadata(DEFERRED_METADATA.map(|name| {
            let value = call.metadata.get(name.as_str()).map(String::as_str);
            (name, value)
        }));
        if !metadata.contains_key(IDEMPOTENCY_KEY) {
            let key = format!("deferred:{}", call.id);
            metadata.extend(call_metadata([(IDEMPOTENCY_KEY, Some(key.as_str()))]));
        }
        match self.call(backend, route, &message, &metadata, true).await {
            Ok(_) => Delivery::Delivered,
            Err(status) if server_failure(status.code()) => Delivery::Retry(status.message().to_string()),
            Err(status) => Delivery::Rejected(format!("{:?}: {}", status.code(), status.message())),
        }
    }
}

/// The status as a label without allocating.
fn status_label(status: StatusCode) -> &'static str {
    match status.as_u16() {
        200 => "200",
        201 => "201",
        202 => "202",
        400 => "400",
        401 => "401",
        403 => "403",
        404 => "404",
        405 => "405",
        408 => "408",
        409 => "409",
        413 => "413",
        422 => "422",
        415 => "415",
        429 => "429",
        499 => "499",
        500 => "500",
        501 => "501",
        503 => "503",
        504 => "504",
        _ => "other",
    }
}

/// The `Idempotency-Key` header, checked: 1-255 visible ASCII characters.
fn idempotency_key(headers: &http::HeaderMap) -> Result<Option<String>, Failure> {
    let Some(value) = headers.get("idempotency-key") else { return Ok(None) };
    let key =
        value.to_str().ok().filter(|k| !k.is_empty() && k.len() <= 255 && k.bytes().all(|b| b.is_ascii_graphic()));
    match key {
        Some(key) => Ok(Some(key.to_string())),
        None => Err(Failure {
            field: Some("Idempotency-Key".into()),
            ..Failure::new(Code::InvalidArgument, "Idempotency-Key must be 1-255 visible ASCII characters")
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_backend_that_timed_out_is_a_504_never_a_499() {
        // tonic's answer when a server's own deadline passes.
        let failure = Failure::from(tonic::Status::cancelled("Timeout expired"));
        assert_eq!(
            (failure.code, errors::http_status(failure.code)),
            (Code::DeadlineExceeded, StatusCode::GATEWAY_TIMEOUT)
        );
        assert_eq!(failure.message, "the service did not answer in time");
    }

    #[test]
    fn every_503_says_when_to_come_back() {
        assert_eq!(Failure::from(tonic::Status::unavailable("restarting")).retry_after, Some(1));
        let mut hinted = tonic::Status::unavailable("breaker open");
        hinted.metadata_mut().insert(kit_resilience::signals::RETRY_AFTER_MS, "2500".parse().unwrap());
        assert_eq!(Failure::from(hinted).retry_after, Some(3), "rounded up to whole seconds");
        assert_eq!(Failure::from(tonic::Status::not_found("no")).retry_after, None);
    }

    #[test]
    fn an_idempotency_key_reused_for_another_request_is_422() {
        let mut reused = tonic::Status::invalid_argument("this idempotency key was used with a different request");
        reused.metadata_mut().insert(kit::reply::HTTP_CODE, "422".parse().unwrap());
        assert_eq!(Failure::from(reused).status, Some(StatusCode::UNPROCESSABLE_ENTITY));
        assert_eq!(Failure::from(tonic::Status::invalid_argument("bad")).status, None, "other 400s stay 400");
    }

    fn body_of(failure: Failure) -> serde_json::Value {
        let reply = failure_reply(failure, "t-1");
        let collected = futures::executor::block_on(reply.into_body().collect()).expect("a full body cannot fail");
        serde_json::from_slice(&collected.to_bytes()).expect("the error body is JSON")
    }

    #[test]
    fn the_body_names_the_reason_the_backend_or_the_client_gave() {
        use kit_resilience::signals::{REFUSED_BY, with_reason};
        let declined = with_reason(tonic::Status::failed_precondition("card declined"), Reason::CardDeclined);
        let body = body_of(Failure::from(declined));
        assert_eq!(
            (body["code"].as_str(), body["reason"].as_str()),
            (Some("FAILED_PRECONDITION"), Some("CARD_DECLINED"))
        );
        // Refused here before any call: the refusal's marker says which.
        for (by, reason) in [
            ("circuit_breaker", "CIRCUIT_OPEN"),
            ("bulkhead", "BULKHEAD_FULL"),
            ("deadline", "DEADLINE_SPENT"),
            ("no_instance", "NO_INSTANCE"),
            ("version_override", "UNKNOWN_VERSION"),
        ] {
            let mut refused = tonic::Status::unavailable("refused");
            refused.metadata_mut().insert(REFUSED_BY, by.parse().unwrap());
            assert_eq!(body_of(Failure::from(refused))["reason"], reason, "{by}");
        }
        // A name not in the catalogue is not passed on; no reason, no field.
        let mut foreign = tonic::Status::failed_precondition("x");
        foreign.metadata_mut().insert(kit_resilience::signals::REASON, "SOMETHING_ELSE".parse().unwrap());
        let body = body_of(Failure::from(foreign));
        assert!(body.get("reason").is_none(), "{body}");
        assert!(body_of(Failure::from(tonic::Status::not_found("no"))).get("reason").is_none());
        assert_eq!(
            body_of(Failure::new(Code::ResourceExhausted, "slow").because(Reason::RateLimited))["reason"],
            "RATE_LIMITED"
        );
    }
}
