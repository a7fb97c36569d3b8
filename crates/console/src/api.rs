//! The console's HTTP side: the OTLP receiver, the JSON API the page reads,
//! the page itself, and its own health and metrics.
use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Value, json};

use crate::Console;
use crate::model::{TraceQuery, edges, waterfall};
use crate::otlp::{decode_logs, decode_spans};
use crate::store::OUTSIDE;

/// A refusal: its status and the reason, sent as `{"error": reason}`.
struct ApiError {
    status: StatusCode,
    message: String,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, Json(json!({ "error": self.message }))).into_response()
    }
}

type ApiResult = Result<Response, ApiError>;

pub(crate) fn router(console: Arc<Console>) -> Router {
    let limit = console.config.max_body_bytes;
    Router::new()
        .route("/", get(page))
        .route("/v1/traces", post(receive_traces))
        .route("/v1/logs", post(receive_logs))
        .route("/api/services", get(services))
        .route("/api/alerts", get(alerts))
        .route("/api/traces", get(search))
        .route("/api/traces/{trace_id}", get(trace))
        .route("/api/dependencies", get(dependencies))
        .route("/api/timeseries", get(timeseries))
        .route("/api/deployments", get(deployments))
        .route("/api/loadgen", get(loadgen_stats).put(set_loadgen))
        .route("/api/loadgen/mode/{name}", post(loadgen_mode))
        .route("/health/live", get(|| async { Json(json!({ "status": "live" })) }))
        .route("/health/ready", get(ready))
        .route("/metrics", kit_telemetry::metrics::route())
        .layer(DefaultBodyLimit::max(limit))
        .with_state(console)
}

fn error(status: StatusCode, message: impl Into<String>) -> ApiError {
    ApiError { status, message: message.into() }
}

fn unavailable(what: &str, err: impl std::fmt::Display) -> ApiError {
    tracing::warn!(error = %err, "{what} failed");
    error(StatusCode::SERVICE_UNAVAILABLE, format!("{what} failed; try again"))
}

/// OTLP/HTTP accepts protobuf here; JSON and compressed bodies are refused
/// with 415 rather than misread.
fn check_otlp_headers(headers: &HeaderMap) -> Result<(), ApiError> {
    let content_type = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
    if !content_type.starts_with("application/x-protobuf") {
        return Err(error(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            format!("send OTLP as application/x-protobuf (got {content_type:?}; OTLP/JSON is not supported)"),
        ));
    }
    match headers.get(header::CONTENT_ENCODING).and_then(|v| v.to_str().ok()) {
        None | Some("identity") => Ok(()),
        Some(other) => {
            Err(error(StatusCode::UNSUPPORTED_MEDIA_TYPE, format!("content-encoding {other:?} is not supported")))
        }
    }
}

/// An empty `Export*ServiceResponse`: everything was accepted.
fn accepted() -> Response {
    ([(header::CONTENT_TYPE, "application/x-protobuf")], Vec::<u8>::new()).into_response()
}

async fn receive_traces(State(console): State<Arc<Console>>, headers: HeaderMap, body: Bytes) -> ApiResult {
    check_otlp_headers(&headers)?;
    let spans = decode_spans(&body).map_err(|e| error(StatusCode::BAD_REQUEST, e.to_string()))?;
    console.store.insert_spans(&spans).await.map_err(|e| unavailable("storing spans", e))?;
    metrics::counter!("console_spans_received_total").increment(spans.len() as u64);
    Ok(accepted())
}

async fn receive_logs(State(console): State<Arc<Console>>, headers: HeaderMap, body: Bytes) -> ApiResult {
    check_otlp_headers(&headers)?;
    let logs = decode_logs(&body).map_err(|e| error(StatusCode::BAD_REQUEST, e.to_string()))?;
    console.store.insert_logs(&logs).await.map_err(|e| unavailable("storing logs", e))?;
    metrics::counter!("console_logs_received_total").increment(logs.len() as u64);
    Ok(accepted())
}

async fn services(State(console): State<Arc<Console>>) -> ApiResult {
    let now = kit_core::time::now_millis();
    let monitor = console.monitor.lock().map_err(|_| error(StatusCode::INTERNAL_SERVER_ERROR, "health unavailable"))?;
    Ok(Json(json!({ "services": monitor.overview(now), "at_ms": now })).into_response())
}

async fn alerts(State(console): State<Arc<Console>>) -> ApiResult {
    let now = kit_core::time::now_millis();
    let monitor = console.monitor.lock().map_err(|_| error(StatusCode::INTERNAL_SERVER_ERROR, "health unavailable"))?;
    Ok(Json(json!({ "alerts": monitor.alerts(now), "at_ms": now })).into_response())
}

fn is_trace_id(id: &str) -> bool {
    id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit()) && id.bytes().any(|b| b != b'0')
}

fn bad(message: String) -> ApiError {
    error(StatusCode::BAD_REQUEST, message)
}

/// Only the parameters a route knows; anything else is a typo worth a 400.
fn only_known(params: &HashMap<String, String>, known: &[&str]) -> Result<(), ApiError> {
    match params.keys().find(|k| !known.contains(&k.as_str())) {
        Some(unknown) => Err(bad(format!("unknown parameter {unknown:?}; known: {}", known.join(", ")))),
        None => Ok(()),
    }
}

fn non_empty(params: &HashMap<String, String>, name: &str, max_len: usize) -> Result<Option<String>, ApiError> {
    match params.get(name).map(|v| v.trim()) {
        None | Some("") => Ok(None),
        Some(v) if v.len() > max_len => Err(bad(format!("{name} is longer than {max_len} characters"))),
        Some(v) => Ok(Some(v.to_string())),
    }
}

fn number(
    params: &HashMap<String, String>,
    name: &str,
    range: std::ops::RangeInclusive<f64>,
) -> Result<Option<f64>, ApiError> {
    match params.get(name) {
        None => Ok(None),
        Some(text) => match text.trim().parse::<f64>() {
            Ok(v) if v.is_finite() && range.contains(&v) => Ok(Some(v)),
            _ => Err(bad(format!("{name} must be a number from {} to {}, got {text:?}", range.start(), range.end()))),
        },
    }
}

async fn search(State(console): State<Arc<Console>>, Query(params): Query<HashMap<String, String>>) -> ApiResult {
    only_known(&params, &["trace_id", "order_id", "service", "errors", "min_duration_ms", "limit"])?;
    let trace_id = non_empty(&params, "trace_id", 32)?.map(|id| id.to_ascii_lowercase());
    if let Some(id) = &trace_id
        && !is_trace_id(id)
    {
        return Err(bad(format!("trace_id must be 32 hex digits, not all zero; got {id:?}")));
    }
    let errors_only = match params.get("errors").map(String::as_str) {
        None | Some("") | Some("false") | Some("0") => false,
        Some("true") | Some("1") => true,
        Some(other) => return Err(bad(format!("errors must be true or false, got {other:?}"))),
    };
    let query = TraceQuery {
        trace_id,
        order_id: non_empty(&params, "order_id", 200)?,
        service: non_empty(&params, "service", 100)?,
        errors_only,
        min_duration_ms: number(&params, "min_duration_ms", 0.0..=86_400_000.0)?,
        limit: number(&params, "limit", 1.0..=200.0)?.map(|l| l as u32).unwrap_or(50),
    };
    let since_ns = (kit_core::time::now_millis() - console.config.retention_ms as i64).saturating_mul(1_000_000);
    let traces = console.store.search(&query, since_ns).await.map_err(|e| unavailable("trace search", e))?;
    Ok(Json(json!({ "traces": traces })).into_response())
}

async fn trace(State(console): State<Arc<Console>>, Path(trace_id): Path<String>) -> ApiResult {
    let trace_id = trace_id.to_ascii_lowercase();
    if !is_trace_id(&trace_id) {
        return Err(bad(format!("a trace id is 32 hex digits, not all zero; got {trace_id:?}")));
    }
    let spans = console.store.trace(&trace_id).await.map_err(|e| unavailable("reading the trace", e))?;
    if spans.is_empty() {
        return Err(error(StatusCode::NOT_FOUND, format!("no spans of trace {trace_id} (yet, or no longer)")));
    }
    let logs = console.store.logs_of_trace(&trace_id).await.map_err(|e| unavailable("reading the trace's logs", e))?;
    let start_ns = spans.iter().map(|s| s.start_ns).min().unwrap_or(0);
    let end_ns = spans.iter().map(|s| s.end_ns).max().unwrap_or(start_ns);
    let services: BTreeSet<String> = spans.iter().map(|s| s.service.clone()).collect();
    Ok(Json(json!({
        "trace_id": trace_id,
        "start_ns": start_ns,
        "duration_ms": (end_ns - start_ns) as f64 / 1e6,
        "services": services,
        "spans": waterfall(spans),
        "logs": logs,
    }))
    .into_response())
}

/// The charts' series: every service's rate, errors and p95, and the
/// queue's depth and lag, over the last `minutes` (5 to 60, default 15).
async fn timeseries(State(console): State<Arc<Console>>, Query(params): Query<HashMap<String, String>>) -> ApiResult {
    only_known(&params, &["minutes"])?;
    let minutes = number(&params, "minutes", 5.0..=60.0)?.unwrap_or(15.0);
    let span_ms = (minutes * 60_000.0) as i64;
    // About 90 points a chart, never finer than the scrapes.
    let step_ms = (span_ms / 90).max(console.config.scrape_interval_ms as i64);
    let series = match console.monitor.lock() {
        Ok(monitor) => monitor.series(kit_core::time::now_millis(), span_ms, step_ms),
        Err(_) => return Err(unavailable("reading the monitor", "poisoned")),
    };
    Ok(Json(json!({ "minutes": minutes, "series": series })).into_response())
}

async fn dependencies(State(console): State<Arc<Console>>, Query(params): Query<HashMap<String, String>>) -> ApiResult {
    only_known(&params, &["window_ms"])?;
    let retention = console.config.retention_ms as f64;
    let window_ms =
        number(&params, "window_ms", 1_000.0..=retention.max(1_000.0))?.unwrap_or(300_000.0_f64.min(retention));
    let since_ns = (kit_core::time::now_millis() - window_ms as i64).saturating_mul(1_000_000);
    let calls = console.store.calls_since(since_ns).await.map_err(|e| unavailable("reading calls", e))?;
    let edges = edges(calls, window_ms / 1e3);
    let mut nodes: BTreeSet<String> = edges.iter().flat_map(|e| [e.caller.clone(), e.callee.clone()]).collect();
    if let Ok(monitor) = console.monitor.lock() {
        nodes.extend(monitor.overview(kit_core::time::now_millis()).into_iter().map(|h| h.service));
    }
    Ok(Json(json!({ "window_ms": window_ms, "outside": OUTSIDE, "nodes": nodes, "edges": edges })).into_response())
}

/// The deployments panel: every service's versions (instances, track, the
/// share of traffic the registry's policy gives each) and the deploy
/// controller's latest rollouts with their steps. Either part may be
/// missing (`*_error` says why) without failing the other.
async fn deployments(State(console): State<Arc<Console>>) -> ApiResult {
    let mut answer = serde_json::Map::new();
    match &console.registry {
        None => {
            answer.insert("versions_error".into(), json!("no registry configured"));
        }
        Some(registry) => match tokio::try_join!(registry.all_instances(), registry.policies()) {
            Ok((list, policies)) => {
                answer.insert("versions".into(), json!(version_rows(&list.instances, &policies)));
            }
            Err(err) => {
                answer.insert("versions_error".into(), json!(format!("registry: {err}")));
            }
        },
    }
    match &console.deployer {
        None => {
            answer.insert("rollouts_error".into(), json!("no deploy controller configured"));
        }
        Some((url, http)) => {
            let read = async {
                let response =
                    http.get(format!("{url}/v1/rollouts?limit=10")).send().await.map_err(|e| e.to_string())?;
                let body: Value = response.json().await.map_err(|e| e.to_string())?;
                Ok::<Value, String>(body["rollouts"].clone())
            };
            match read.await {
                Ok(rollouts) => answer.insert("rollouts".into(), rollouts),
                Err(err) => answer.insert("rollouts_error".into(), json!(format!("deploy controller: {err}"))),
            };
        }
    }
    Ok(Json(Value::Object(answer)).into_response())
}

/// One row per service and version: instances (routable of registered),
/// tracks, and the policy's weight (`null`: no policy, all versions share).
fn version_rows(
    instances: &[registry_wire::wire::InstanceInfo],
    policies: &[registry_wire::traffic::TrafficPolicy],
) -> Vec<Value> {
    let mut rows: std::collections::BTreeMap<(&str, &str), (usize, usize, BTreeSet<&str>)> = Default::default();
    for instance in instances {
        let row = rows.entry((instance.name.as_str(), instance.version.as_str())).or_default();
        row.0 += 1;
        row.1 += usize::from(instance.health.routable());
        row.2.insert(instance.track.as_str());
    }
    rows.into_iter()
        .map(|((service, version), (registered, routable, tracks))| {
            let weight = policies.iter().find(|p| p.service == service).map(|p| p.weights.get(version).copied().unwrap_or(0));
            json!({ "service": service, "version": version, "tracks": tracks, "instances": registered, "routable": routable, "weight": weight })
        })
        .collect()
}

fn loadgen_url(console: &Console) -> Result<String, ApiError> {
    console.loadgen_url.read().ok().and_then(|url| url.clone()).ok_or_else(|| {
        error(StatusCode::NOT_FOUND, "no traffic generator is configured (PUT /api/loadgen {\"url\": …})")
    })
}

/// Passes the traffic generator's answer on (status and JSON body).
async fn relay(request: reqwest::RequestBuilder) -> ApiResult {
    let response = request.send().await.map_err(|e| unavailable("asking the traffic generator", e))?;
    let status = StatusCode::from_u16(response.status().as_u16()).unwrap_or(StatusCode::BAD_GATEWAY);
    let body: Value = response.json().await.map_err(|e| unavailable("reading the traffic generator", e))?;
    Ok((status, Json(body)).into_response())
}

async fn loadgen_stats(State(console): State<Arc<Console>>) -> ApiResult {
    let url = loadgen_url(&console)?;
    relay(console.http.get(format!("{url}/stats"))).await
}

async fn loadgen_mode(State(console): State<Arc<Console>>, Path(name): Path<String>) -> ApiResult {
    let url = loadgen_url(&console)?;
    relay(console.http.post(format!("{url}/mode/{name}"))).await
}

async fn set_loadgen(State(console): State<Arc<Console>>, body: Bytes) -> ApiResult {
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Body {
        url: String,
    }
    let parsed: Body =
        serde_json::from_slice(&body).map_err(|e| bad(format!("expected {{\"url\": \"http://…\"}}: {e}")))?;
    let url = parsed.url.trim_end_matches('/').to_string();
    crate::check_http_url(&url).map_err(bad)?;
    if !console.config.is_loadgen_target(&url) {
        return Err(error(
            StatusCode::FORBIDDEN,
            "not a configured traffic generator: the console relays only to loadgen_url and loadgen_targets",
        ));
    }
    if let Ok(mut slot) = console.loadgen_url.write() {
        *slot = Some(url.clone());
    }
    Ok(Json(json!({ "url": url })).into_response())
}

async fn ready(State(console): State<Arc<Console>>) -> Response {
    match console.store.db().ping().await {
        Ok(()) => Json(json!({ "status": "ready" })).into_response(),
        Err(e) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({ "status": "not_ready", "failing": { "database": e.to_string() } })),
        )
            .into_response(),
    }
}

async fn page() -> Html<&'static str> {
    Html(include_str!("page.html"))
}
