//! Fault injection on a gRPC server, for tests and demos: added latency,
//! errors at a rate, aborted streams — per method. Off unless the process was
//! started with it enabled (`--enable-fault-injection` or `faults.enabled`);
//! then rules come from config and from the admin endpoint `/admin/faults`.
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll};
use std::time::Duration;

use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};
use tonic::Code;
use tower::{Layer, Service};

use super::BoxError;

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FaultConfig {
    /// Whether faults may be injected at all.
    pub enabled: bool,
    pub rules: Vec<FaultRule>,
}

/// One rule: which calls, and what happens to them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FaultRule {
    /// A full method (`/pkg.Service/Method`), a service (`/pkg.Service/`), or `*`.
    pub method: String,
    /// Added before the call runs.
    #[serde(default)]
    pub latency_ms: u64,
    /// Share of calls (0-1) answered with `error_code` instead of running.
    #[serde(default)]
    pub error_rate: f64,
    /// A gRPC code name, e.g. `UNAVAILABLE` (the default), `INTERNAL`.
    #[serde(default = "default_error_code")]
    pub error_code: String,
    /// Share of calls (0-1) whose stream is reset without any answer.
    #[serde(default)]
    pub abort_rate: f64,
}

fn default_error_code() -> String {
    "UNAVAILABLE".into()
}

/// Why a rule set was refused.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum FaultError {
    #[error("fault injection is disabled; start the service with --enable-fault-injection")]
    Disabled,
    #[error("rule {index}: {message}")]
    Invalid { index: usize, message: String },
}

const MAX_LATENCY_MS: u64 = 60_000;

fn code_from_name(name: &str) -> Option<Code> {
    let code = match name {
        "CANCELLED" => Code::Cancelled,
        "UNKNOWN" => Code::Unknown,
        "INVALID_ARGUMENT" => Code::InvalidArgument,
        "DEADLINE_EXCEEDED" => Code::DeadlineExceeded,
        "NOT_FOUND" => Code::NotFound,
        "ALREADY_EXISTS" => Code::AlreadyExists,
        "PERMISSION_DENIED" => Code::PermissionDenied,
        "RESOURCE_EXHAUSTED" => Code::ResourceExhausted,
        "FAILED_PRECONDITION" => Code::FailedPrecondition,
        "ABORTED" => Code::Aborted,
        "OUT_OF_RANGE" => Code::OutOfRange,
        "UNIMPLEMENTED" => Code::Unimplemented,
        "INTERNAL" => Code::Internal,
        "UNAVAILABLE" => Code::Unavailable,
        "DATA_LOSS" => Code::DataLoss,
        "UNAUTHENTICATED" => Code::Unauthenticated,
        _ => return None,
    };
    Some(code)
}

impl FaultRule {
    fn check(&self) -> Result<(), String> {
        if self.method != "*" && !self.method.starts_with('/') {
            return Err(format!("method {:?} must be *, /pkg.Service/ or /pkg.Service/Method", self.method));
        }
        for (name, rate) in [("error_rate", self.error_rate), ("abort_rate", self.abort_rate)] {
            if !(0.0..=1.0).contains(&rate) {
                return Err(format!("{name} must be between 0 and 1, got {rate}"));
            }
        }
        if self.latency_ms > MAX_LATENCY_MS {
            return Err(format!("latency_ms must be at most {MAX_LATENCY_MS}"));
        }
        if code_from_name(&self.error_code).is_none_or(|c| c == Code::Ok) {
            return Err(format!("error_code {:?} is not a gRPC error code name", self.error_code));
        }
        Ok(())
    }

    fn matches(&self, path: &str) -> bool {
        self.method == "*" || path == self.method || (self.method.ends_with('/') && path.starts_with(&self.method))
    }
}

/// The live rule set of one process.
#[derive(Debug, Clone, Default)]
pub struct Faults {
    inner: Arc<FaultsInner>,
}

#[derive(Debug, Default)]
struct FaultsInner {
    enabled: bool,
    active: AtomicBool,
    rules: RwLock<Arc<Vec<FaultRule>>>,
}

impl Faults {
    pub fn new(config: &FaultConfig) -> Result<Self, FaultError> {
        let faults = Self { inner: Arc::new(FaultsInner { enabled: config.enabled, ..Default::default() }) };
        if !config.rules.is_empty() {
            faults.set(config.rules.clone())?;
        }
        Ok(faults)
    }

    pub fn enabled(&self) -> bool {
        self.inner.enabled
    }

    pub fn rules(&self) -> Vec<FaultRule> {
        self.inner.rules.read().map(|r| r.as_ref().clone()).unwrap_or_default()
    }

    /// Replaces every rule; all are checked before any applies.
    pub fn set(&self, rules: Vec<FaultRule>) -> Result<(), FaultError> {
        if !self.inner.enabled {
            return Err(FaultError::Disabled);
        }
        for (index, rule) in rules.iter().enumerate() {
            rule.check().map_err(|message| FaultError::Invalid { index, message })?;
        }
        tracing::warn!(rules = rules.len(), "fault injection rules set");
        self.inner.active.store(!rules.is_empty(), Ordering::Relaxed);
        if let Ok(mut current) = self.inner.rules.write() {
            *current = Arc::new(rules);
        }
        Ok(())
    }

    fn matching(&self, path: &str) -> Option<FaultRule> {
        if !self.inner.active.load(Ordering::Relaxed) {
            return None;
        }
        let rules = self.inner.rules.read().ok()?.clone();
        rules.iter().find(|r| r.matches(path)).cloned()
    }
}

/// What a rule decided for one call.
#[derive(Debug, PartialEq)]
enum Injected {
    Pass,
    Error(Code),
    Abort,
}

fn decide(rule: &FaultRule, draw: f64) -> Injected {
    if draw < rule.abort_rate {
        Injected::Abort
    } else if draw < rule.abort_rate + rule.error_rate {
        Injected::Error(code_from_name(&rule.error_code).unwrap_or(Code::Unavailable))
    } else {
        Injected::Pass
    }
}

#[derive(Clone)]
pub struct FaultLayer {
    faults: Faults,
    service: &'static str,
}

impl FaultLayer {
    pub fn new(service: &'static str, faults: Faults) -> Self {
        Self { faults, service }
    }
}

impl<S> Layer<S> for FaultLayer {
    type Service = FaultInjection<S>;

    fn layer(&self, inner: S) -> Self::Service {
        FaultInjection { inner, faults: self.faults.clone(), service: self.service }
    }
}

#[derive(Clone)]
pub struct FaultInjection<S> {
    inner: S,
    faults: Faults,
    service: &'static str,
}

/// The stream was reset on purpose.
#[derive(Debug, thiserror::Error)]
#[error("fault injection aborted the call")]
pub struct Aborted;

impl<S, B, ResBody> Service<http::Request<B>> for FaultInjection<S>
where
    S: Service<http::Request<B>, Response = http::Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError> + Send + 'static,
    B: Send + 'static,
    ResBody: Default + Send + 'static,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let Some(rule) = self.faults.matching(request.uri().path()) else {
            return Box::pin(async move { inner.call(request).await.map_err(Into::into) });
        };
        let service = self.service;
        Box::pin(async move {
            if rule.latency_ms > 0 {
                tokio::time::sleep(Duration::from_millis(rule.latency_ms)).await;
            }
            let kind = match decide(&rule, rand::random()) {
                Injected::Pass => return inner.call(request).await.map_err(Into::into),
                Injected::Error(code) => {
                    metrics::counter!("fault_injected_total", "service" => service, "kind" => "error").increment(1);
                    return Ok(tonic::Status::new(code, "injected fault").into_http::<ResBody>());
                }
                Injected::Abort => "abort",
            };
            metrics::counter!("fault_injected_total", "service" => service, "kind" => kind).increment(1);
            Err(Box::new(Aborted) as BoxError)
        })
    }
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleSet {
    pub rules: Vec<FaultRule>,
}

/// `GET|PUT|DELETE /admin/faults` on the admin port. PUT replaces the rules
/// (`{"rules": [...]}`), DELETE clears them; 403 unless enabled, 422 for a bad
/// rule (nothing applied), 400 for JSON that is not a rule set.
pub fn admin_routes(faults: Faults) -> axum::Router {
    use axum::Json;
    use axum::extract::State;
    use axum::extract::rejection::JsonRejection;
    use axum::http::StatusCode;
    use axum::response::{IntoResponse, Response};

    fn answer(faults: &Faults, result: Result<(), FaultError>) -> Response {
        match result {
            Ok(()) => {
                (StatusCode::OK, Json(serde_json::json!({ "enabled": true, "rules": faults.rules() }))).into_response()
            }
            Err(err @ FaultError::Disabled) => {
                (StatusCode::FORBIDDEN, Json(serde_json::json!({ "error": err.to_string() }))).into_response()
            }
            Err(err) => (StatusCode::UNPROCESSABLE_ENTITY, Json(serde_json::json!({ "error": err.to_string() })))
                .into_response(),
        }
    }
    async fn get_rules(State(faults): State<Faults>) -> Response {
        Json(serde_json::json!({ "enabled": faults.enabled(), "rules": faults.rules() })).into_response()
    }
    async fn put_rules(State(faults): State<Faults>, body: Result<Json<RuleSet>, JsonRejection>) -> Response {
        if !faults.enabled() {
            return answer(&faults, Err(FaultError::Disabled));
        }
        match body {
            Ok(Json(set)) => {
                let result = faults.set(set.rules);
                answer(&faults, result)
            }
            Err(rejection) => {
                (StatusCode::BAD_REQUEST, Json(serde_json::json!({ "error": rejection.body_text() }))).into_response()
            }
        }
    }
    async fn clear_rules(State(faults): State<Faults>) -> Response {
        let result = faults.set(Vec::new());
        answer(&faults, result)
    }
    axum::Router::new()
        .route("/admin/faults", axum::routing::get(get_rules).put(put_rules).delete(clear_rules))
        .with_state(faults)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(method: &str) -> FaultRule {
        FaultRule {
            method: method.into(),
            latency_ms: 0,
            error_rate: 0.0,
            error_code: "UNAVAILABLE".into(),
            abort_rate: 0.0,
        }
    }

    #[test]
    fn refused_unless_enabled_and_rules_are_checked() {
        let off = Faults::new(&FaultConfig::default()).unwrap();
        assert_eq!(off.set(vec![rule("*")]), Err(FaultError::Disabled));
        let on = Faults::new(&FaultConfig { enabled: true, rules: vec![] }).unwrap();
        let bad = [
            FaultRule { error_rate: 1.5, ..rule("*") },
            FaultRule { abort_rate: -0.1, ..rule("*") },
            rule("GetProduct"),
            FaultRule { error_code: "OK".into(), ..rule("*") },
            FaultRule { error_code: "NOPE".into(), ..rule("*") },
            FaultRule { latency_ms: 600_000, ..rule("*") },
        ];
        for (i, r) in bad.into_iter().enumerate() {
            let err = on.set(vec![rule("*"), r]).unwrap_err();
            assert!(matches!(err, FaultError::Invalid { index: 1, .. }), "case {i}: {err}");
            assert!(on.rules().is_empty(), "nothing applied from a refused set");
        }
        on.set(vec![rule("/a.B/")]).unwrap();
        assert_eq!(on.rules().len(), 1);
    }

    #[test]
    fn rules_match_method_service_or_everything() {
        assert!(rule("*").matches("/x.Y/Z"));
        assert!(rule("/x.Y/").matches("/x.Y/Z"));
        assert!(!rule("/x.Y/").matches("/x.Yz/Z"));
        assert!(rule("/x.Y/Z").matches("/x.Y/Z"));
        assert!(!rule("/x.Y/Z").matches("/x.Y/Zz"));
    }

    #[test]
    fn draws_split_into_abort_error_and_pass() {
        let r = FaultRule { abort_rate: 0.1, error_rate: 0.3, error_code: "INTERNAL".into(), ..rule("*") };
        assert_eq!(decide(&r, 0.05), Injected::Abort);
        assert_eq!(decide(&r, 0.2), Injected::Error(Code::Internal));
        assert_eq!(decide(&r, 0.5), Injected::Pass);
    }
}
