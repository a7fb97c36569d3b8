//! The deploy controller's HTTP API: start a rollout, follow it, roll back.
//! Over TLS, reading needs only the CA; starting or rolling back needs the
//! operator's certificate.
use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::rejection::JsonRejection;
use axum::extract::{ConnectInfo, Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::json;

use kit_core::error::DomainError;
use kit_tls::Peer;

use crate::controller::{CanaryCommand, ControlError, Controller};
use crate::model::{DeployRequest, Rollout};
use crate::store::StoreError;

#[derive(Clone)]
pub struct ApiState {
    pub controller: Arc<Controller>,
    /// Writes need the operator's identity (mutual TLS).
    pub secured: bool,
}

pub struct ApiError(StatusCode, &'static str, String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(json!({ "code": self.1, "message": self.2 }))).into_response()
    }
}

impl From<ControlError> for ApiError {
    fn from(err: ControlError) -> Self {
        match err {
            ControlError::Domain(DomainError::Invalid(m)) => ApiError(StatusCode::BAD_REQUEST, "INVALID_ARGUMENT", m),
            ControlError::Domain(DomainError::NotFound(m)) => ApiError(StatusCode::NOT_FOUND, "NOT_FOUND", m),
            ControlError::Domain(DomainError::FailedPrecondition(m)) => {
                ApiError(StatusCode::CONFLICT, "FAILED_PRECONDITION", m)
            }
            ControlError::Domain(other) => ApiError(StatusCode::BAD_REQUEST, "INVALID_ARGUMENT", other.to_string()),
            ControlError::Store(StoreError::Busy(m)) => ApiError(StatusCode::CONFLICT, "ALREADY_EXISTS", m),
            ControlError::Store(e) => {
                tracing::error!(error = %e, "deploy store failed");
                ApiError(StatusCode::SERVICE_UNAVAILABLE, "UNAVAILABLE", "deploy store unavailable".into())
            }
            ControlError::Unavailable(m) => ApiError(StatusCode::SERVICE_UNAVAILABLE, "UNAVAILABLE", m),
        }
    }
}

impl From<JsonRejection> for ApiError {
    fn from(rejection: JsonRejection) -> Self {
        ApiError(StatusCode::BAD_REQUEST, "INVALID_ARGUMENT", format!("invalid JSON body: {}", rejection.body_text()))
    }
}

type ApiResult<T> = Result<T, ApiError>;

pub fn router(state: ApiState) -> Router {
    Router::new()
        .route("/v1/rollouts", post(create).get(list))
        .route("/v1/rollouts/{id}", get(one))
        .route("/v1/services/{service}/rollout", get(current))
        .route("/v1/services/{service}/rollback", post(roll_back))
        .route("/v1/services/{service}/rollout/{action}", post(act))
        .route("/health/live", get(|| async { Json(json!({ "status": "live" })) }))
        .route("/health/ready", get(ready))
        .route("/metrics", kit_telemetry::metrics::route())
        .fallback(|| async { ApiError(StatusCode::NOT_FOUND, "NOT_FOUND", "no such endpoint".into()) })
        .layer(axum::extract::DefaultBodyLimit::max(64 * 1024))
        .with_state(state)
}

fn operator_only(state: &ApiState, peer: &Peer) -> ApiResult<()> {
    if !state.secured || peer.identity.as_deref() == Some(kit_tls::OPERATOR) {
        return Ok(());
    }
    let who = peer.identity.clone().unwrap_or_else(|| "a client without a certificate".into());
    Err(ApiError(
        StatusCode::FORBIDDEN,
        "PERMISSION_DENIED",
        format!("{who} may not deploy; the operator's certificate may"),
    ))
}

async fn create(
    State(state): State<ApiState>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    body: Result<Json<DeployRequest>, JsonRejection>,
) -> ApiResult<impl IntoResponse> {
    operator_only(&state, &peer)?;
    let Json(request) = body?;
    let rollout = state.controller.create(request).await?;
    Ok((StatusCode::CREATED, Json(rollout)))
}

async fn list(
    State(state): State<ApiState>,
    Query(params): Query<BTreeMap<String, String>>,
) -> ApiResult<Json<serde_json::Value>> {
    let limit = match params.get("limit") {
        Some(text) => text
            .parse::<i64>()
            .ok()
            .filter(|n| (1..=200).contains(n))
            .ok_or_else(|| ApiError(StatusCode::BAD_REQUEST, "INVALID_ARGUMENT", "limit must be 1-200".into()))?,
        None => 20,
    };
    let rollouts = state.controller.recent(params.get("service").map(String::as_str), limit).await?;
    Ok(Json(json!({ "rollouts": rollouts })))
}

async fn one(State(state): State<ApiState>, Path(id): Path<String>) -> ApiResult<Json<Rollout>> {
    match state.controller.store().get(&id).await.map_err(ControlError::from)? {
        Some(rollout) => Ok(Json(rollout)),
        None => Err(ApiError(StatusCode::NOT_FOUND, "NOT_FOUND", format!("no rollout {id}"))),
    }
}

/// The service's rollout in progress, else its last one.
async fn current(State(state): State<ApiState>, Path(service): Path<String>) -> ApiResult<Json<Rollout>> {
    let store = state.controller.store();
    if let Some(active) = store.active(&service).await.map_err(ControlError::from)? {
        return Ok(Json(active));
    }
    match store.recent(Some(&service), 1).await.map_err(ControlError::from)?.into_iter().next() {
        Some(last) => Ok(Json(last)),
        None => Err(ApiError(StatusCode::NOT_FOUND, "NOT_FOUND", format!("{service} has never been deployed here"))),
    }
}

#[derive(serde::Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RollbackRequest {
    #[serde(default)]
    reason: String,
}

/// The optional `{"reason": …}` body of a rollback or a canary command.
fn reason_of(body: &[u8]) -> ApiResult<String> {
    let reason = if body.iter().all(u8::is_ascii_whitespace) {
        String::new()
    } else {
        let request: RollbackRequest = serde_json::from_slice(body)
            .map_err(|e| ApiError(StatusCode::BAD_REQUEST, "INVALID_ARGUMENT", format!("invalid JSON body: {e}")))?;
        request.reason
    };
    let reason = if reason.trim().is_empty() { "operator".to_string() } else { reason };
    if reason.len() > 256 {
        return Err(ApiError(StatusCode::BAD_REQUEST, "INVALID_ARGUMENT", "reason must be at most 256 bytes".into()));
    }
    Ok(reason)
}

async fn roll_back(
    State(state): State<ApiState>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    Path(service): Path<String>,
    body: axum::body::Bytes,
) -> ApiResult<Json<Rollout>> {
    operator_only(&state, &peer)?;
    let reason = reason_of(&body)?;
    Ok(Json(state.controller.roll_back(&service, &reason).await?))
}

/// `pause`, `resume`, `promote` a canary; `abort` is a rollback.
async fn act(
    State(state): State<ApiState>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    Path((service, action)): Path<(String, String)>,
    body: axum::body::Bytes,
) -> ApiResult<Json<Rollout>> {
    operator_only(&state, &peer)?;
    let reason = reason_of(&body)?;
    if action == "abort" {
        return Ok(Json(state.controller.roll_back(&service, &format!("aborted: {reason}")).await?));
    }
    let Some(command) = CanaryCommand::parse(&action) else {
        return Err(ApiError(
            StatusCode::NOT_FOUND,
            "NOT_FOUND",
            format!("no action {action:?}; pause, resume, promote or abort"),
        ));
    };
    Ok(Json(state.controller.command(&service, command, &reason).await?))
}

async fn ready(State(state): State<ApiState>) -> impl IntoResponse {
    match state.controller.store().db().ping().await {
        Ok(()) => (StatusCode::OK, Json(json!({ "status": "ready" }))),
        Err(e) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({ "status": "not_ready", "failing": { "store": e.to_string() } })),
        ),
    }
}
