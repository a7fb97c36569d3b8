//! What a rollout is: the request, its phases and the record of every step.
//! Pure: the controller moves a rollout from phase to phase; this says what
//! the phases are, which are over, and what a request must be.
use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use kit_core::error::DomainError;
use kit_core::red::Totals;

pub use crate::canary::{CanaryConfig, CanaryStep};
pub use crate::canary_state::CanaryState;

/// How the new version takes over.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Strategy {
    /// Green beside blue at weight 0, tested through the override, then all
    /// traffic at once; blue kept on standby, then stopped.
    BlueGreen,
    /// Green takes a growing share of traffic step by step (5 → 10 → 25 →
    /// 50 → 75 → 100 %), each step judged against blue on live metrics.
    Canary,
}

impl Strategy {
    pub fn name(self) -> &'static str {
        match self {
            Strategy::BlueGreen => "blue-green",
            Strategy::Canary => "canary",
        }
    }
}

/// Where a rollout is. The order is the blue-green path; `RollingBack` and
/// `Aborting` are the ways back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// Blue pinned at 100 %, green instances started (or awaited).
    Starting,
    /// Green ready: registered, `/health/ready` (its dependencies reachable).
    Validating,
    /// The smoke suite against green through the override; latency against blue.
    Smoke,
    /// The policy moves all traffic to green at once.
    Switching,
    /// A canary: green takes its step's share, judged against blue.
    Progressing,
    /// The post-switch window: green's errors and p95 against blue's baseline.
    Watching,
    /// Blue kept running at weight 0, for an instant rollback.
    Standby,
    /// Green alone in the policy; blue drained and stopped.
    Finishing,
    /// After the switch: traffic back to blue at once, then green stopped.
    RollingBack,
    /// Before the switch: green stopped; it never had user traffic.
    Aborting,
    Succeeded,
    RolledBack,
    Aborted,
}

impl Phase {
    pub fn is_over(self) -> bool {
        matches!(self, Phase::Succeeded | Phase::RolledBack | Phase::Aborted)
    }

    /// Whether user traffic may already be on green (a way back is a rollback).
    pub fn switched(self) -> bool {
        matches!(self, Phase::Switching | Phase::Progressing | Phase::Watching | Phase::Standby)
    }

    pub fn name(self) -> &'static str {
        match self {
            Phase::Starting => "starting",
            Phase::Validating => "validating",
            Phase::Smoke => "smoke",
            Phase::Switching => "switching",
            Phase::Progressing => "progressing",
            Phase::Watching => "watching",
            Phase::Standby => "standby",
            Phase::Finishing => "finishing",
            Phase::RollingBack => "rolling_back",
            Phase::Aborting => "aborting",
            Phase::Succeeded => "succeeded",
            Phase::RolledBack => "rolled_back",
            Phase::Aborted => "aborted",
        }
    }
}

/// The knobs of the analysis and the waits; every one has a default.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Analysis {
    /// How long green may take to register and be ready.
    pub ready_timeout_ms: u64,
    /// Reads the smoke suite times on green and on blue each.
    pub smoke_reads: u32,
    /// Green's smoke p95 above blue's by more than this share is a warning
    /// (the design: "warn but allow"), an abort with `abort_on_slow_smoke`.
    pub smoke_latency_tolerance: f64,
    pub abort_on_slow_smoke: bool,
    /// The post-switch window.
    pub watch_ms: u64,
    /// Requests green must serve in the window before it is judged.
    pub min_requests: u64,
    /// Green's server-side error rate may exceed blue's by this much (0.01 = one point).
    pub max_error_rate_increase: f64,
    /// Green's p95 may exceed blue's by this share, plus `p95_slack_ms`.
    pub p95_tolerance: f64,
    pub p95_slack_ms: f64,
    /// How long blue stays on standby after the window.
    pub standby_ms: u64,
}

impl Default for Analysis {
    fn default() -> Self {
        Self {
            ready_timeout_ms: 60_000,
            smoke_reads: 20,
            smoke_latency_tolerance: 0.5,
            abort_on_slow_smoke: false,
            watch_ms: 30_000,
            min_requests: 20,
            max_error_rate_increase: 0.01,
            // The design's post-switch threshold: 20 % degradation.
            p95_tolerance: 0.2,
            p95_slack_ms: 10.0,
            standby_ms: 60_000,
        }
    }
}

impl Analysis {
    fn check(&self) -> Result<(), DomainError> {
        let ms = [self.ready_timeout_ms, self.watch_ms, self.standby_ms];
        if ms.iter().any(|v| *v > 24 * 3_600_000) || self.ready_timeout_ms == 0 {
            return Err(DomainError::invalid("waits must be at most a day, and ready_timeout_ms above 0"));
        }
        let shares = [self.smoke_latency_tolerance, self.max_error_rate_increase, self.p95_tolerance];
        if shares.iter().any(|v| !v.is_finite() || *v < 0.0 || *v > 100.0) || !self.p95_slack_ms.is_finite() {
            return Err(DomainError::invalid("tolerances must be finite and between 0 and 100"));
        }
        if self.p95_slack_ms < 0.0 || self.smoke_reads == 0 || self.smoke_reads > 1_000 {
            return Err(DomainError::invalid("p95_slack_ms must be >= 0 and smoke_reads 1-1000"));
        }
        Ok(())
    }
}

/// A deploy as asked for (`POST /v1/rollouts`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeployRequest {
    pub service: String,
    pub strategy: Strategy,
    /// The new version; its instances register with it.
    pub version: String,
    /// The executable to start green from (default: the supervisor's own).
    #[serde(default)]
    pub binary: Option<String>,
    /// Green instances to start (default 1).
    #[serde(default)]
    pub replicas: Option<u32>,
    /// Extra command-line flags for green (`--config faulty.toml`).
    #[serde(default)]
    pub args: Vec<String>,
    /// Start green through the supervisor (default: when one is configured);
    /// false: wait for instances of `version` someone else starts.
    #[serde(default)]
    pub start_instances: Option<bool>,
    #[serde(default)]
    pub analysis: Analysis,
    /// A canary's settings over the service's configured ones (any fields of
    /// `CanaryConfig`).
    #[serde(default)]
    pub canary: Option<serde_json::Value>,
}

/// Services a deploy may replace: those the supervisor knows how to start.
pub const DEPLOYABLE: &[&str] = &["users", "products", "payments", "orders"];

impl DeployRequest {
    pub fn check(&self) -> Result<(), DomainError> {
        if !DEPLOYABLE.contains(&self.service.as_str()) {
            return Err(DomainError::invalid(format!(
                "service must be one of {}; got {:?}",
                DEPLOYABLE.join(", "),
                self.service
            )));
        }
        if !registry_wire::traffic::valid_version(&self.version) {
            return Err(DomainError::invalid("version must be 1-64 of [A-Za-z0-9._+-]"));
        }
        if self.replicas.is_some_and(|n| !(1..=8).contains(&n)) {
            return Err(DomainError::invalid("replicas must be 1 to 8"));
        }
        if self.args.len() > 32 || self.args.iter().any(|a| a.len() > 4_096 || a.contains('\0')) {
            return Err(DomainError::invalid("at most 32 args of at most 4096 bytes"));
        }
        if self.binary.as_ref().is_some_and(|b| b.is_empty() || b.len() > 4_096 || b.contains('\0')) {
            return Err(DomainError::invalid("binary must be a path"));
        }
        if self.canary.is_some() && self.strategy != Strategy::Canary {
            return Err(DomainError::invalid("canary settings are for --strategy canary"));
        }
        self.analysis.check()
    }
}

/// One thing that happened, for the record: what, when, why.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Step {
    pub at_ms: i64,
    pub phase: Phase,
    pub event: String,
    #[serde(default)]
    pub detail: String,
}

/// RED figures of some instances over a stretch of time.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Red {
    pub requests: f64,
    pub errors: f64,
    pub p95_ms: Option<f64>,
}

impl Red {
    pub fn of(totals: &Totals) -> Self {
        Self {
            requests: totals.requests,
            errors: totals.errors,
            p95_ms: kit_core::red::quantile(&totals.buckets, 0.95).map(|s| s * 1e3),
        }
    }

    pub fn error_rate(&self) -> f64 {
        if self.requests > 0.0 { self.errors / self.requests } else { 0.0 }
    }
}

/// What a latency probe of the smoke suite measured.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SmokeLatency {
    pub green_p95_ms: f64,
    pub blue_p95_ms: f64,
}

/// Why a rollout did not succeed, for programs (the `reason` says it in words).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Cause {
    /// An operator asked for the rollback or the abort.
    Requested,
    /// Green could not be started (no supervisor, a binary it refused).
    StartFailed,
    /// Green did not become (or stay) ready and routable in time.
    NotReady,
    /// Green failed before any user reached it: the smoke suite or the
    /// latency probe.
    ValidationFailed,
    /// Green regressed under real traffic and was rolled back automatically
    /// (the watch window, or a canary's analysis).
    Regressed,
    /// The rollout's own record was inconsistent (a canary without its state).
    Inconsistent,
}

/// A rollout and everything it has done, persisted after every step so a
/// controller that dies resumes where it was.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Rollout {
    pub id: String,
    pub service: String,
    pub strategy: Strategy,
    /// The version taking over, and the one it replaces.
    pub green: String,
    pub blue: String,
    pub replicas: u32,
    pub binary: Option<String>,
    pub args: Vec<String>,
    pub start_instances: bool,
    pub analysis: Analysis,
    pub phase: Phase,
    pub phase_since_ms: i64,
    pub created_ms: i64,
    pub updated_ms: i64,
    /// Why it ended as it did (or is ending).
    #[serde(default)]
    pub reason: Option<String>,
    /// The same, for programs, when it did not succeed.
    #[serde(default)]
    pub cause: Option<Cause>,
    pub steps: Vec<Step>,
    /// Blue's counters when the baseline started, and the baseline itself.
    #[serde(default)]
    pub blue_mark: Option<Totals>,
    #[serde(default)]
    pub baseline: Option<Red>,
    /// Green's counters at the switch; when the window ends.
    #[serde(default)]
    pub green_mark: Option<Totals>,
    #[serde(default)]
    pub watch_until_ms: Option<i64>,
    /// Since when no green instance has been listed or answered in the window.
    #[serde(default)]
    pub green_missing_since_ms: Option<i64>,
    #[serde(default)]
    pub standby_until_ms: Option<i64>,
    #[serde(default)]
    pub smoke_latency: Option<SmokeLatency>,
    /// Green's figures in the window, last judged.
    #[serde(default)]
    pub observed: Option<Red>,
    /// A canary's steps, analyses and history.
    #[serde(default)]
    pub canary: Option<CanaryState>,
}

/// At most this many steps are kept per rollout (a long standby waiting on
/// an unreachable registry would otherwise record without end).
pub const MAX_STEPS: usize = 500;

impl Rollout {
    pub fn new(id: String, request: DeployRequest, blue: String, can_start: bool, now_ms: i64) -> Self {
        Self {
            id,
            service: request.service,
            strategy: request.strategy,
            green: request.version,
            blue,
            replicas: request.replicas.unwrap_or(1),
            binary: request.binary,
            args: request.args,
            start_instances: request.start_instances.unwrap_or(can_start),
            analysis: request.analysis,
            phase: Phase::Starting,
            phase_since_ms: now_ms,
            created_ms: now_ms,
            updated_ms: now_ms,
            reason: None,
            cause: None,
            steps: Vec::new(),
            blue_mark: None,
            baseline: None,
            green_mark: None,
            watch_until_ms: None,
            green_missing_since_ms: None,
            standby_until_ms: None,
            smoke_latency: None,
            observed: None,
            canary: None,
        }
    }

    /// Records a step (the oldest go past `MAX_STEPS`).
    pub fn record(&mut self, now_ms: i64, event: impl Into<String>, detail: impl Into<String>) {
        self.steps.push(Step { at_ms: now_ms, phase: self.phase, event: event.into(), detail: detail.into() });
        if self.steps.len() > MAX_STEPS {
            self.steps.remove(0);
        }
        self.updated_ms = now_ms;
    }

    /// Moves to `phase`, recording why.
    pub fn enter(&mut self, phase: Phase, now_ms: i64, detail: impl Into<String>) {
        self.phase = phase;
        self.phase_since_ms = now_ms;
        self.record(now_ms, format!("entered {}", phase.name()), detail);
    }

    /// Weights that send everything to one version, the other kept for overrides.
    pub fn weights_all_on(&self, version: &str) -> BTreeMap<String, u32> {
        [(self.blue.clone(), u32::from(version == self.blue)), (self.green.clone(), u32::from(version == self.green))]
            .into_iter()
            .map(|(v, on)| (v, on * 100))
            .collect()
    }
}

/// The verdict on green's figures in the post-switch window.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    Healthy,
    /// Too little traffic to judge yet.
    Inconclusive(String),
    Regressed(String),
}

/// Judges green's window against blue's baseline (or against nothing but
/// the absolute allowance, if blue had too little traffic to be one).
pub fn judge(observed: &Red, baseline: Option<&Red>, analysis: &Analysis) -> Verdict {
    if observed.requests < analysis.min_requests as f64 {
        return Verdict::Inconclusive(format!(
            "{} requests on green, {} needed to judge",
            observed.requests, analysis.min_requests
        ));
    }
    let baseline = baseline.filter(|b| b.requests >= analysis.min_requests as f64);
    let allowed_errors = baseline.map_or(0.0, Red::error_rate) + analysis.max_error_rate_increase;
    if observed.error_rate() > allowed_errors {
        return Verdict::Regressed(format!(
            "error rate {:.2} % on green against {:.2} % allowed ({} of {} requests failed)",
            observed.error_rate() * 100.0,
            allowed_errors * 100.0,
            observed.errors,
            observed.requests
        ));
    }
    if let (Some(green), Some(blue)) = (observed.p95_ms, baseline.and_then(|b| b.p95_ms)) {
        let allowed = blue * (1.0 + analysis.p95_tolerance) + analysis.p95_slack_ms;
        if green > allowed {
            return Verdict::Regressed(format!(
                "p95 {green:.1} ms on green against {allowed:.1} ms allowed (blue {blue:.1} ms)"
            ));
        }
    }
    Verdict::Healthy
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request() -> DeployRequest {
        DeployRequest {
            service: "products".into(),
            strategy: Strategy::BlueGreen,
            version: "v2".into(),
            binary: None,
            replicas: None,
            args: Vec::new(),
            start_instances: None,
            analysis: Analysis::default(),
            canary: None,
        }
    }

    #[test]
    fn requests_are_checked() {
        assert!(request().check().is_ok());
        let bad = [
            DeployRequest { service: "gateway".into(), ..request() },
            DeployRequest { service: String::new(), ..request() },
            DeployRequest { version: "v 2".into(), ..request() },
            DeployRequest { replicas: Some(0), ..request() },
            DeployRequest { replicas: Some(9), ..request() },
            DeployRequest { args: vec!["x".into(); 33], ..request() },
            DeployRequest { binary: Some(String::new()), ..request() },
            DeployRequest { analysis: Analysis { watch_ms: u64::MAX, ..Analysis::default() }, ..request() },
            DeployRequest { analysis: Analysis { p95_tolerance: f64::NAN, ..Analysis::default() }, ..request() },
            DeployRequest { analysis: Analysis { smoke_reads: 0, ..Analysis::default() }, ..request() },
        ];
        for request in bad {
            assert!(request.check().is_err(), "{request:?}");
        }
        let json = r#"{"service":"products","strategy":"linear","version":"v2"}"#;
        assert!(serde_json::from_str::<DeployRequest>(json).is_err(), "unknown strategy");
        let canary_settings = DeployRequest { canary: Some(serde_json::json!({})), ..request() };
        assert!(canary_settings.check().is_err(), "canary settings on a blue-green");
    }

    fn red(requests: f64, errors: f64, p95: Option<f64>) -> Red {
        Red { requests, errors, p95_ms: p95 }
    }

    #[test]
    fn green_is_judged_against_blue() {
        let analysis = Analysis::default();
        let blue = red(1_000.0, 5.0, Some(20.0));
        assert_eq!(judge(&red(500.0, 3.0, Some(22.0)), Some(&blue), &analysis), Verdict::Healthy);
        assert!(matches!(judge(&red(5.0, 5.0, None), Some(&blue), &analysis), Verdict::Inconclusive(_)));
        // 0.5 % + 1 point allowed; 2 % is a regression.
        assert!(
            matches!(judge(&red(500.0, 10.0, Some(20.0)), Some(&blue), &analysis), Verdict::Regressed(r) if r.contains("error rate"))
        );
        // 20 × 1.2 + 10 = 34 ms allowed.
        assert_eq!(judge(&red(500.0, 0.0, Some(33.0)), Some(&blue), &analysis), Verdict::Healthy);
        assert!(
            matches!(judge(&red(500.0, 0.0, Some(40.0)), Some(&blue), &analysis), Verdict::Regressed(r) if r.contains("p95"))
        );
        // No baseline (blue idle): only the absolute allowance.
        assert_eq!(judge(&red(500.0, 4.0, Some(400.0)), None, &analysis), Verdict::Healthy);
        assert!(matches!(judge(&red(500.0, 6.0, None), Some(&red(3.0, 0.0, None)), &analysis), Verdict::Regressed(_)));
    }

    #[test]
    fn phases_know_where_they_stand() {
        assert!(Phase::Succeeded.is_over() && Phase::RolledBack.is_over() && Phase::Aborted.is_over());
        assert!(!Phase::Standby.is_over() && Phase::Standby.switched() && !Phase::Smoke.switched());
        let rollout = Rollout::new("r".into(), request(), "v1".into(), true, 0);
        assert_eq!(rollout.weights_all_on("v2"), [("v1".to_string(), 0), ("v2".to_string(), 100)].into());
        assert_eq!(rollout.weights_all_on("v1"), [("v1".to_string(), 100), ("v2".to_string(), 0)].into());
        let mut long = rollout;
        for i in 0..(MAX_STEPS + 10) {
            long.record(i as i64, "tick", "");
        }
        assert_eq!(long.steps.len(), MAX_STEPS);
    }

    #[test]
    fn the_cause_is_a_stable_name_and_old_records_read_without_one() {
        let mut rollout = Rollout::new("r".into(), request(), "v1".into(), true, 0);
        rollout.cause = Some(Cause::ValidationFailed);
        let json = serde_json::to_value(&rollout).unwrap();
        assert_eq!(json["cause"], "validation_failed");
        let mut old = json;
        old.as_object_mut().unwrap().remove("cause");
        assert_eq!(serde_json::from_value::<Rollout>(old).unwrap().cause, None);
    }
}
