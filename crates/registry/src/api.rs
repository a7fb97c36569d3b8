//! The registry's HTTP/JSON API.
use std::collections::BTreeMap;
use std::time::Duration;

use axum::extract::ConnectInfo;
use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post, put};
use axum::{Json, Router};
use kit_tls::Peer;
use serde_json::json;

use crate::core::{Registry, RegistryError};
use crate::model::{HeartbeatRequest, Instance, RegisterRequest};
use crate::store::StoreError;
use kit_core::error::DomainError;
use kit_core::time::now_millis;
use registry_wire::traffic::{PolicyChange, TrafficPolicy};

const MAX_WAIT: Duration = Duration::from_secs(60);
const DEFAULT_WAIT: Duration = Duration::from_secs(30);
const INDEX_HEADER: &str = "x-registry-index";

pub struct ApiError(StatusCode, String, Option<&'static str>);

impl ApiError {
    fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self(status, message.into(), None)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let code = self.2.unwrap_or(match self.0 {
            StatusCode::BAD_REQUEST => "INVALID_ARGUMENT",
            StatusCode::FORBIDDEN => "PERMISSION_DENIED",
            StatusCode::NOT_FOUND => "NOT_FOUND",
            StatusCode::CONFLICT => "ALREADY_EXISTS",
            StatusCode::SERVICE_UNAVAILABLE => "UNAVAILABLE",
            _ => "INTERNAL",
        });
        (self.0, Json(json!({ "code": code, "message": self.1 }))).into_response()
    }
}

impl From<RegistryError> for ApiError {
    fn from(err: RegistryError) -> Self {
        match err {
            RegistryError::Domain(DomainError::Invalid(m)) => ApiError::new(StatusCode::BAD_REQUEST, m),
            RegistryError::Domain(DomainError::NotFound(m)) => ApiError::new(StatusCode::NOT_FOUND, m),
            RegistryError::Domain(DomainError::AlreadyExists(m)) => ApiError::new(StatusCode::CONFLICT, m),
            RegistryError::Domain(DomainError::FailedPrecondition(m)) => {
                ApiError(StatusCode::CONFLICT, m, Some("FAILED_PRECONDITION"))
            }
            RegistryError::Domain(other) => ApiError::new(StatusCode::BAD_REQUEST, other.to_string()),
            // A compare-and-set that lost: read again and decide again.
            RegistryError::Store(StoreError::Conflict(m)) => ApiError(StatusCode::CONFLICT, m, Some("ABORTED")),
            RegistryError::Store(e) => {
                tracing::error!(error = %e, "registry storage failed");
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "registry storage unavailable")
            }
        }
    }
}

impl From<JsonRejection> for ApiError {
    fn from(rejection: JsonRejection) -> Self {
        ApiError::new(StatusCode::BAD_REQUEST, format!("invalid JSON body: {}", rejection.body_text()))
    }
}

type ApiResult<T> = Result<T, ApiError>;

pub fn router(registry: Registry) -> Router {
    Router::new()
        .route("/v1/register", post(register))
        .route("/v1/heartbeat/{id}", put(heartbeat))
        .route("/v1/instances", get(instances))
        .route("/v1/instances/{id}", delete(deregister))
        .route("/v1/instances/{id}/drain", post(drain))
        .route("/v1/services", get(services))
        .route("/v1/services/{name}", get(service))
        .route("/v1/policies", get(policies))
        .route("/v1/policies/{service}", get(policy).put(set_policy).delete(remove_policy))
        .route("/v1/audit", get(audit))
        .route("/v1/prometheus/targets", get(prometheus_targets))
        .route("/health/live", get(|| async { Json(json!({ "status": "live" })) }))
        .route("/health/ready", get(ready))
        .route("/metrics", kit_telemetry::metrics::route())
        .fallback(|| async { ApiError::new(StatusCode::NOT_FOUND, "no such endpoint") })
        .layer(axum::extract::DefaultBodyLimit::max(64 * 1024))
        .layer(axum::middleware::from_fn(kit_telemetry::otel::trace_http_if_traced))
        .with_state(registry)
}

/// Who may change an entry: over TLS, the service the instance registered
/// as (its certificate's identity) or an operator; in plain text (an
/// insecure registry, warned about at start) anyone.
fn may_write(peer: &Peer, secured: bool, service: &str) -> ApiResult<()> {
    if !secured {
        return Ok(());
    }
    match peer.identity.as_deref() {
        Some(identity) if identity == service || identity == kit_tls::OPERATOR => Ok(()),
        Some(identity) => {
            metrics::counter!("registry_writes_refused_total", "caller" => identity.to_string()).increment(1);
            Err(ApiError::new(
                StatusCode::FORBIDDEN,
                format!("{identity} may not register or change instances of {service}"),
            ))
        }
        None => {
            metrics::counter!("registry_writes_refused_total", "caller" => "anonymous").increment(1);
            Err(ApiError::new(StatusCode::FORBIDDEN, "registering needs a client certificate naming the service"))
        }
    }
}

/// Who may change traffic policies: over TLS, an operator or the deploy
/// controller; in plain text anyone. Returns the name the audit log records.
fn may_route(peer: &Peer, secured: bool) -> ApiResult<String> {
    let identity = peer.identity.clone();
    if !secured {
        return Ok(identity.unwrap_or_else(|| "anonymous".into()));
    }
    match identity {
        Some(identity) if identity == kit_tls::OPERATOR || identity == kit_tls::DEPLOYER => Ok(identity),
        other => {
            let caller = other.unwrap_or_else(|| "anonymous".into());
            metrics::counter!("registry_writes_refused_total", "caller" => caller.clone()).increment(1);
            Err(ApiError::new(
                StatusCode::FORBIDDEN,
                format!("{caller} may not change traffic policies (operator or deployer only)"),
            ))
        }
    }
}

/// The instance `id`, for a write `peer` must be allowed to make.
async fn writable(registry: &Registry, peer: &Peer, id: &str) -> ApiResult<()> {
    if !registry.secured() {
        return Ok(());
    }
    match registry.store().get(id).await.map_err(RegistryError::from)? {
        Some(instance) => may_write(peer, true, &instance.name),
        // Unknown: the registry's answer says so (a heartbeat then re-registers).
        None => Ok(()),
    }
}

async fn register(
    State(registry): State<Registry>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    body: Result<Json<RegisterRequest>, JsonRejection>,
) -> ApiResult<impl IntoResponse> {
    let Json(request) = body?;
    may_write(&peer, registry.secured(), &request.name)?;
    let response = registry.register(request, now_millis()).await?;
    Ok((StatusCode::OK, Json(response)))
}

async fn heartbeat(
    State(registry): State<Registry>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    Path(id): Path<String>,
    body: Option<Json<HeartbeatRequest>>,
) -> ApiResult<Json<Instance>> {
    writable(&registry, &peer, &id).await?;
    let health = body.and_then(|Json(b)| b.health);
    Ok(Json(registry.heartbeat(&id, health, now_millis()).await?))
}

async fn deregister(
    State(registry): State<Registry>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    writable(&registry, &peer, &id).await?;
    registry.deregister(&id, now_millis()).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn drain(
    State(registry): State<Registry>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    Path(id): Path<String>,
) -> ApiResult<Json<Instance>> {
    // The deploy controller retires versions it does not run itself.
    if peer.identity.as_deref() != Some(kit_tls::DEPLOYER) {
        writable(&registry, &peer, &id).await?;
    }
    Ok(Json(registry.drain(&id, "requested", now_millis()).await?))
}

/// `index` + `wait` make a blocking query (as in Consul): the answer comes when
/// the registry changes after `index`, or when `wait` runs out.
fn parse_wait(text: Option<&String>) -> ApiResult<Duration> {
    let Some(text) = text else { return Ok(DEFAULT_WAIT) };
    let parsed = if let Some(ms) = text.strip_suffix("ms") {
        ms.parse::<u64>().map(Duration::from_millis)
    } else if let Some(s) = text.strip_suffix('s') {
        s.parse::<u64>().map(Duration::from_secs)
    } else {
        text.parse::<u64>().map(Duration::from_millis)
    };
    parsed
        .map(|d| d.min(MAX_WAIT))
        .map_err(|_| ApiError::new(StatusCode::BAD_REQUEST, format!("wait {text:?} is not like 30s or 500ms")))
}

async fn block_until_changed(registry: &Registry, params: &BTreeMap<String, String>) -> ApiResult<u64> {
    let current = registry.store().revision().await.map_err(RegistryError::from)?;
    let Some(index) = params.get("index") else { return Ok(current) };
    let index: u64 = index.parse().map_err(|_| ApiError::new(StatusCode::BAD_REQUEST, "index must be a number"))?;
    let wait = parse_wait(params.get("wait"))?;
    // Behind: answer now. Ahead: the registry restarted and its revision
    // started over; answer now too, or the watcher would miss changes.
    if index != current {
        return Ok(current);
    }
    // While warming up, answer when it ends at the latest: the answer after
    // it is the whole truth, and clients drop what they only remembered.
    let wait = registry.warming(now_millis()).map_or(wait, |left| wait.min(left + Duration::from_millis(50)));
    Ok(registry.wait_for_change(index, wait).await.map_err(RegistryError::from)?)
}

fn with_index<T: serde::Serialize>(index: u64, body: T) -> impl IntoResponse {
    let mut headers = HeaderMap::new();
    headers.insert(INDEX_HEADER, HeaderValue::from(index));
    (headers, Json(body))
}

async fn service(
    State(registry): State<Registry>,
    Path(name): Path<String>,
    Query(params): Query<BTreeMap<String, String>>,
) -> ApiResult<impl IntoResponse> {
    let index = block_until_changed(&registry, &params).await?;
    let all = params.get("all").is_some_and(|v| v == "true");
    let filter: BTreeMap<String, String> =
        params.into_iter().filter(|(k, _)| !matches!(k.as_str(), "index" | "wait" | "all")).collect();
    let instances = registry.lookup(&name, &filter, all).await?;
    let policy = registry.store().get_policy(&name).await.map_err(RegistryError::from)?;
    let warming = registry.warming(now_millis()).is_some();
    Ok(with_index(index, json!({ "index": index, "instances": instances, "policy": policy, "warming": warming })))
}

async fn policies(State(registry): State<Registry>) -> ApiResult<impl IntoResponse> {
    let policies = registry.store().list_policies().await.map_err(RegistryError::from)?;
    Ok(Json(json!({ "policies": policies })))
}

async fn policy(State(registry): State<Registry>, Path(service): Path<String>) -> ApiResult<Json<TrafficPolicy>> {
    match registry.store().get_policy(&service).await.map_err(RegistryError::from)? {
        Some(policy) => Ok(Json(policy)),
        None => Err(ApiError::new(StatusCode::NOT_FOUND, format!("service {service} has no traffic policy"))),
    }
}

async fn set_policy(
    State(registry): State<Registry>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    Path(service): Path<String>,
    body: Result<Json<PolicyChange>, JsonRejection>,
) -> ApiResult<Json<TrafficPolicy>> {
    let by = may_route(&peer, registry.secured())?;
    let Json(change) = body?;
    Ok(Json(registry.set_policy(&service, change, &by, now_millis()).await?))
}

async fn remove_policy(
    State(registry): State<Registry>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    Path(service): Path<String>,
) -> ApiResult<StatusCode> {
    let by = may_route(&peer, registry.secured())?;
    registry.remove_policy(&service, &by, now_millis()).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn instances(
    State(registry): State<Registry>,
    Query(params): Query<BTreeMap<String, String>>,
) -> ApiResult<impl IntoResponse> {
    let index = block_until_changed(&registry, &params).await?;
    let instances = registry.store().list().await.map_err(RegistryError::from)?;
    Ok(with_index(index, json!({ "index": index, "instances": instances })))
}

async fn services(State(registry): State<Registry>) -> ApiResult<impl IntoResponse> {
    Ok(Json(json!({ "services": registry.services().await? })))
}

async fn audit(
    State(registry): State<Registry>,
    Query(params): Query<BTreeMap<String, String>>,
) -> ApiResult<impl IntoResponse> {
    let number = |key: &str, default: u64| -> ApiResult<u64> {
        params.get(key).map_or(Ok(default), |v| {
            v.parse()
                .map_err(|_| ApiError::new(StatusCode::BAD_REQUEST, format!("{key} must be a non-negative number")))
        })
    };
    let after = number("after", 0)?;
    let limit = number("limit", 100)?.clamp(1, 1_000) as usize;
    let entries = registry.store().audit(after, limit).await.map_err(RegistryError::from)?;
    Ok(Json(json!({ "entries": entries })))
}

/// Prometheus HTTP service discovery: every instance's admin endpoint.
async fn prometheus_targets(State(registry): State<Registry>) -> ApiResult<impl IntoResponse> {
    let instances = registry.store().list().await.map_err(RegistryError::from)?;
    let groups: Vec<_> = instances
        .into_iter()
        .filter(|i| !i.admin_address.is_empty() && i.health.routable())
        .map(|i| {
            let mut labels = serde_json::Map::new();
            labels.insert("service".into(), i.name.clone().into());
            labels.insert("instance_id".into(), i.id.clone().into());
            for (key, value) in &i.metadata {
                let label: String = key.chars().map(|c| if c.is_ascii_alphanumeric() { c } else { '_' }).collect();
                labels.insert(format!("meta_{label}"), value.clone().into());
            }
            json!({ "targets": [i.admin_address], "labels": labels })
        })
        .collect();
    Ok(Json(groups))
}

async fn ready(State(registry): State<Registry>) -> impl IntoResponse {
    match registry.store().revision().await {
        Ok(_) => (StatusCode::OK, Json(json!({ "status": "ready" }))),
        Err(e) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({ "status": "not_ready", "failing": { "storage": e.to_string() } })),
        ),
    }
}
