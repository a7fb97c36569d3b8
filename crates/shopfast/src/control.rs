//! `shopfast up`'s control API: the instances it supervises, listed, started
//! and stopped by the deploy controller (or the operator). HTTPS on loopback
//! with client certificates required; only the `operator` and `deployer`
//! identities may use it — it starts programs.
//!
//! - `GET /v1/instances` — every instance `up` runs: service, version, track, label.
//! - `POST /v1/instances` — start `replicas` instances of a service at a
//!   version (`binary` and extra `args` optional). Idempotent by `key`: asked
//!   again (a controller resuming after a crash), it starts nothing more.
//! - `DELETE /v1/instances?service=S&version=V` — stop them (each deregisters
//!   and drains on SIGTERM first); none left is not an error.
use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{ConnectInfo, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::json;

use kit_tls::Peer;

use crate::supervisor::{ChildSpec, Proc, Supervisor};

/// At most this many instances run under `up` at once (blue and green of every service, with room).
const MAX_INSTANCES: usize = 64;
/// Start keys remembered (a resumed controller asks again with its rollout's key).
const MAX_KEYS: usize = 256;
const MAX_REPLICAS: u32 = 8;
/// Identities that may start and stop programs.
const ALLOWED: &[&str] = &[kit_tls::OPERATOR, kit_tls::DEPLOYER];

/// One instance `up` runs.
pub struct Member {
    pub service: String,
    pub version: String,
    pub track: String,
    pub label: String,
    pub proc: Proc,
}

#[derive(Serialize)]
struct MemberView<'a> {
    service: &'a str,
    version: &'a str,
    track: &'a str,
    label: &'a str,
}

impl Member {
    fn view(&self) -> MemberView<'_> {
        MemberView { service: &self.service, version: &self.version, track: &self.track, label: &self.label }
    }
}

/// Everything a new instance of a service needs that `up` settled at start.
pub struct Launcher {
    pub supervisor: Supervisor,
    /// The flags every instance gets (data dir, registry, certificates, faults).
    pub common_flags: Vec<String>,
    /// Each service's environment: its own secrets and the telemetry settings.
    pub env: BTreeMap<String, Vec<(String, String)>>,
    /// The terminal colour of each service's output.
    pub colour: BTreeMap<String, usize>,
}

#[derive(Default)]
pub struct Fleet {
    pub members: Vec<Member>,
    /// Labels started for each key, oldest first (bounded).
    started: VecDeque<(String, Vec<String>)>,
}

impl Fleet {
    pub fn new(members: Vec<Member>) -> Self {
        Self { members, started: VecDeque::new() }
    }

    /// A label not yet taken: `orders-v2-1`, `orders-v2-2`, …
    fn free_label(&self, service: &str, version: &str) -> String {
        let stem = format!("{service}-{version}");
        (1..)
            .map(|n| format!("{stem}-{n}"))
            .find(|label| self.members.iter().all(|m| m.label != *label))
            .unwrap_or(stem)
    }

    /// Every member, taken out (for the orderly stop).
    pub fn take_all(&mut self) -> Vec<Proc> {
        self.members.drain(..).map(|m| m.proc).collect()
    }
}

#[derive(Clone)]
pub struct ControlState {
    pub launcher: Arc<Launcher>,
    pub fleet: Arc<tokio::sync::Mutex<Fleet>>,
}

struct ApiError(StatusCode, &'static str, String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(json!({ "code": self.1, "message": self.2 }))).into_response()
    }
}

fn invalid(message: impl Into<String>) -> ApiError {
    ApiError(StatusCode::BAD_REQUEST, "INVALID_ARGUMENT", message.into())
}

pub fn router(state: ControlState) -> Router {
    Router::new()
        .route("/v1/instances", get(list).post(start).delete(stop))
        .fallback(|| async { ApiError(StatusCode::NOT_FOUND, "NOT_FOUND", "no such endpoint".into()) })
        .layer(axum::extract::DefaultBodyLimit::max(256 * 1024))
        .with_state(state)
}

fn allowed(peer: &Peer) -> Result<(), ApiError> {
    match peer.identity.as_deref() {
        Some(identity) if ALLOWED.contains(&identity) => Ok(()),
        other => Err(ApiError(
            StatusCode::FORBIDDEN,
            "PERMISSION_DENIED",
            format!("{} may not start or stop instances", other.unwrap_or("a client without a certificate")),
        )),
    }
}

async fn list(State(state): State<ControlState>, ConnectInfo(peer): ConnectInfo<Peer>) -> Response {
    if let Err(err) = allowed(&peer) {
        return err.into_response();
    }
    let fleet = state.fleet.lock().await;
    let views: Vec<MemberView<'_>> = fleet.members.iter().map(Member::view).collect();
    Json(json!({ "instances": views })).into_response()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct StartRequest {
    service: String,
    version: String,
    #[serde(default = "default_track")]
    track: String,
    #[serde(default = "one")]
    replicas: u32,
    #[serde(default)]
    binary: Option<String>,
    #[serde(default)]
    args: Vec<String>,
    key: String,
}

fn default_track() -> String {
    "green".into()
}

fn one() -> u32 {
    1
}

impl StartRequest {
    fn check(&self, launcher: &Launcher) -> Result<(), ApiError> {
        if !launcher.env.contains_key(&self.service) {
            let known: Vec<&str> = launcher.env.keys().map(String::as_str).collect();
            return Err(invalid(format!("service must be one of {}; got {:?}", known.join(", "), self.service)));
        }
        if !registry_wire::traffic::valid_version(&self.version) {
            return Err(invalid("version must be 1-64 of [A-Za-z0-9._+-]"));
        }
        if !registry_wire::traffic::valid_track(&self.track) {
            return Err(invalid("track must be 1-32 of [a-z0-9-]"));
        }
        if !(1..=MAX_REPLICAS).contains(&self.replicas) {
            return Err(invalid(format!("replicas must be 1 to {MAX_REPLICAS}")));
        }
        if self.key.is_empty() || self.key.len() > 128 {
            return Err(invalid("key must be 1-128 bytes"));
        }
        if self.args.len() > 32 || self.args.iter().any(|a| a.len() > 4_096 || a.contains('\0')) {
            return Err(invalid("at most 32 args of at most 4096 bytes"));
        }
        if let Some(binary) = &self.binary {
            use std::os::unix::fs::PermissionsExt;
            let executable =
                std::fs::metadata(binary).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0);
            if !executable {
                return Err(ApiError(
                    StatusCode::NOT_FOUND,
                    "NOT_FOUND",
                    format!("binary {binary:?} is not an executable file here"),
                ));
            }
        }
        Ok(())
    }
}

async fn start(
    State(state): State<ControlState>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    body: Result<Json<StartRequest>, JsonRejection>,
) -> Response {
    if let Err(err) = allowed(&peer) {
        return err.into_response();
    }
    let request = match body {
        Ok(Json(request)) => request,
        Err(rejection) => return invalid(format!("invalid JSON body: {}", rejection.body_text())).into_response(),
    };
    if let Err(err) = request.check(&state.launcher) {
        return err.into_response();
    }
    let mut fleet = state.fleet.lock().await;
    if let Some((_, labels)) = fleet.started.iter().find(|(key, _)| *key == request.key) {
        let started: Vec<_> = labels.iter().map(|label| json!({ "label": label })).collect();
        return (StatusCode::OK, Json(json!({ "started": started, "replayed": true }))).into_response();
    }
    if fleet.members.len() + request.replicas as usize > MAX_INSTANCES {
        return ApiError(
            StatusCode::SERVICE_UNAVAILABLE,
            "RESOURCE_EXHAUSTED",
            format!("up runs at most {MAX_INSTANCES} instances; stop some first"),
        )
        .into_response();
    }
    let launcher = &state.launcher;
    let mut labels = Vec::new();
    for _ in 0..request.replicas {
        let label = fleet.free_label(&request.service, &request.version);
        let mut flags = launcher.common_flags.clone();
        flags.extend([
            "--version".to_string(),
            request.version.clone(),
            "--track".to_string(),
            request.track.clone(),
            "--meta".to_string(),
            format!("replica={label}"),
        ]);
        flags.extend(request.args.iter().cloned());
        let env = launcher.env.get(&request.service).cloned().unwrap_or_default();
        let spec = ChildSpec {
            command: &request.service,
            label: &label,
            flags,
            colour: launcher.colour.get(&request.service).copied().unwrap_or(0),
            env: &env,
        };
        let binary = request.binary.as_deref().map(std::path::Path::new);
        match crate::supervisor::spawn_from(&launcher.supervisor, spec, binary) {
            Ok(proc) => {
                eprintln!("shopfast up: started {label} ({} {})", request.service, request.version);
                fleet.members.push(Member {
                    service: request.service.clone(),
                    version: request.version.clone(),
                    track: request.track.clone(),
                    label: label.clone(),
                    proc,
                });
                labels.push(label);
            }
            Err(err) => {
                return ApiError(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "INTERNAL",
                    format!("cannot start {label}: {err:#}"),
                )
                .into_response();
            }
        }
    }
    if fleet.started.len() >= MAX_KEYS {
        fleet.started.pop_front();
    }
    fleet.started.push_back((request.key.clone(), labels.clone()));
    let started: Vec<_> = labels.iter().map(|label| json!({ "label": label })).collect();
    (StatusCode::CREATED, Json(json!({ "started": started }))).into_response()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct StopQuery {
    service: String,
    version: String,
}

async fn stop(
    State(state): State<ControlState>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    query: Result<Query<StopQuery>, QueryRejection>,
) -> Response {
    if let Err(err) = allowed(&peer) {
        return err.into_response();
    }
    let Query(query) = match query {
        Ok(query) => query,
        Err(rejection) => {
            return invalid(format!("service and version are required: {}", rejection.body_text())).into_response();
        }
    };
    if !state.launcher.env.contains_key(&query.service) || !registry_wire::traffic::valid_version(&query.version) {
        return invalid(format!("no such service or version: {:?} {:?}", query.service, query.version)).into_response();
    }
    // Taken out under the lock, stopped outside it (a drain takes seconds).
    let leaving: Vec<Member> = {
        let mut fleet = state.fleet.lock().await;
        let (leaving, staying) = std::mem::take(&mut fleet.members)
            .into_iter()
            .partition(|m| m.service == query.service && m.version == query.version);
        fleet.members = staying;
        leaving
    };
    let labels: Vec<String> = leaving.iter().map(|m| m.label.clone()).collect();
    futures::future::join_all(leaving.into_iter().map(|m| m.proc.stop())).await;
    eprintln!("shopfast up: stopped {} of {} {}", labels.len(), query.service, query.version);
    let stopped: Vec<_> = labels.iter().map(|label| json!({ "label": label })).collect();
    Json(json!({ "stopped": stopped })).into_response()
}
