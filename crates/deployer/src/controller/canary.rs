//! The canary's steps: each sets the weights, marks both sides' counters,
//! then is analysed every `analysis_interval` — a gross regression rolls
//! back at once, the step passes only when its time (with traffic) is up and
//! every check passes, too little traffic holds it with the reason shown.
use std::time::Duration;

use kit_core::time::now_millis;

use super::{ControlError, Controller, Step, event};
use crate::analysis::{self, Check, Verdict};
use crate::canary_state::{CanaryState, Marks, Point, StepRecord};
use crate::evidence::since;
use crate::model::{Cause, Phase, Rollout};
use kit_core::error::DomainError;

/// What an operator may ask of a canary in progress.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CanaryCommand {
    /// Hold the step (its clock stops; gross regressions still roll back).
    Pause,
    Resume,
    /// Skip the remaining steps: 100 % now (in the rollback window: end it now).
    Promote,
}

impl CanaryCommand {
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "pause" => Some(Self::Pause),
            "resume" => Some(Self::Resume),
            "promote" => Some(Self::Promote),
            _ => None,
        }
    }
}

/// `1m 30s`-style text of a span in milliseconds (whole seconds).
fn span(ms: u64) -> String {
    humantime::format_duration(Duration::from_secs(ms.div_ceil(1_000))).to_string()
}

fn rate(value: f64, seconds: f64) -> f64 {
    if seconds > 0.0 { value / seconds } else { 0.0 }
}

/// The failing checks, for the record: which, their figures, their samples.
fn failures(checks: &[Check], at_least: Verdict) -> String {
    let failing: Vec<String> = checks
        .iter()
        .filter(|c| c.verdict >= at_least)
        .map(|c| format!("{} ({} against {} requests): {}", c.name, c.canary_samples, c.stable_samples, c.detail))
        .collect();
    failing.join("; ")
}

impl Controller {
    /// Sets the weights of step `index` and marks where both sides' counters start.
    pub(super) async fn begin_step(&self, mut rollout: Rollout, index: usize) -> Step {
        let Some(mut canary) = rollout.canary.take() else {
            return self.abort(rollout, Cause::Inconsistent, "a canary without its state".into());
        };
        canary.step = index;
        let weights = canary.weights(&rollout.blue, &rollout.green);
        let both = [rollout.blue.as_str(), rollout.green.as_str()];
        let reason = format!("rollout {}: canary step {} at {} %", rollout.id, index + 1, canary.weight());
        if let Err(err) = self.registry.route(&rollout.service, weights, &both, reason).await {
            rollout.canary = Some(canary);
            return Self::trouble(rollout, "cannot set the step's weights", err);
        }
        let now = now_millis();
        // Marked after the weights changed; unreadable now, the first analysis marks.
        let marks = self.registry.sides(&rollout.service, &rollout.green, &rollout.blue).await.ok().map(|s| s.marks);
        canary.mark = marks.clone();
        canary.previous = marks;
        canary.step_started_ms = now;
        canary.step_elapsed_ms = 0;
        canary.last_analysis_ms = Some(now);
        canary.waiting = None;
        canary.checks.clear();
        let detail = format!(
            "{} at {} %, {} at {} %; held {} with traffic, analysed every {}",
            rollout.green,
            canary.weight(),
            rollout.blue,
            100 - canary.weight(),
            span(canary.duration_ms()),
            span(canary.config.analysis_interval)
        );
        let steps = canary.config.steps.len();
        rollout.canary = Some(canary);
        if index == 0 {
            rollout.enter(Phase::Progressing, now, detail);
            event(&rollout, "switched");
        } else {
            rollout.record(now, format!("step {}/{steps}", index + 1), detail);
        }
        Step::Moved(rollout)
    }

    /// One analysis of the step.
    pub(super) async fn progress(&self, mut rollout: Rollout) -> Step {
        let Some(mut canary) = rollout.canary.take() else {
            return self.abort(rollout, Cause::Inconsistent, "a canary without its state".into());
        };
        let now = now_millis();
        let interval = Duration::from_millis(canary.config.analysis_interval);
        let sides = match self.registry.sides(&rollout.service, &rollout.green, &rollout.blue).await {
            Ok(sides) => sides,
            Err(err) => {
                rollout.canary = Some(canary);
                return Self::trouble(rollout, "registry unreachable", err);
            }
        };
        // Every canary instance gone (crashed, or unreachable) past a grace.
        if sides.canary_instances == 0 {
            let missing_since = *rollout.green_missing_since_ms.get_or_insert(now);
            if now - missing_since >= super::GREEN_MISSING_GRACE_MS {
                let why = format!("no canary instance has answered for {} s", (now - missing_since) / 1_000);
                return self.roll_back_canary(rollout, canary, why).await;
            }
        } else {
            rollout.green_missing_since_ms = None;
        }
        let current = sides.marks;
        let Some(mark) = canary.mark.clone() else {
            canary.mark = Some(current.clone());
            canary.previous = Some(current);
            canary.last_analysis_ms = Some(now);
            rollout.canary = Some(canary);
            return Step::Wait(interval, Some(rollout));
        };
        let step = Marks { canary: since(&current.canary, &mark.canary), stable: since(&current.stable, &mark.stable) };
        let previous = canary.previous.clone().unwrap_or_else(|| mark.clone());
        let last = Marks {
            canary: since(&current.canary, &previous.canary),
            stable: since(&current.stable, &previous.stable),
        };
        // A controller that was away does not count its absence as the step's time.
        let cap = 2 * canary.config.analysis_interval;
        let elapsed = u64::try_from(now - canary.last_analysis_ms.unwrap_or(now)).unwrap_or(0).min(cap);
        let (canary_last, stable_last) = (last.canary.server(), last.stable.server());
        let seconds = elapsed as f64 / 1e3;
        let red = |t: &kit_core::red::Totals| {
            let error_pct = (t.requests > 0.0).then(|| t.errors / t.requests * 100.0);
            (error_pct, kit_core::red::quantile(&t.buckets, canary.config.quantile).map(|s| s * 1e3))
        };
        let ((canary_error_pct, canary_p95_ms), (stable_error_pct, stable_p95_ms)) =
            (red(&canary_last), red(&stable_last));
        canary.push_point(Point {
            at_ms: now,
            weight: canary.weight(),
            canary_rps: rate(canary_last.requests, seconds),
            stable_rps: rate(stable_last.requests, seconds),
            canary_error_pct,
            stable_error_pct,
            canary_p95_ms,
            stable_p95_ms,
        });
        let traffic =
            canary_last.requests + stable_last.requests + last.canary.calls.requests + last.stable.calls.requests;
        let checks = analysis::judge(&step.canary, &step.stable, &canary.config);
        let verdict = analysis::overall(&checks);
        let holding =
            |checks: &[Check]| checks.is_empty() || checks.iter().any(|c| c.verdict == Verdict::Wait && !c.advisory);
        if holding(&canary.checks) && !holding(&checks) {
            let samples = checks.first().map_or((0.0, 0.0), |c| (c.canary_samples, c.stable_samples));
            rollout.record(
                now,
                "minimum sample reached",
                format!("{} requests on the canary, {} on stable: judging", samples.0, samples.1),
            );
        }
        canary.checks = checks;
        canary.previous = Some(current);
        canary.last_analysis_ms = Some(now);
        if verdict == Verdict::FailFast {
            let why = failures(&canary.checks, Verdict::FailFast);
            return self.roll_back_canary(rollout, canary, why).await;
        }
        if canary.paused.is_some() {
            rollout.canary = Some(canary);
            rollout.updated_ms = now;
            return Step::Wait(interval, Some(rollout));
        }
        let mut waiting = None;
        if traffic > 0.0 {
            canary.step_elapsed_ms += elapsed;
        } else {
            waiting = Some(format!(
                "no traffic to {} since the last analysis: the step is paused until traffic returns",
                rollout.service
            ));
        }
        if waiting.is_none() && canary.step_elapsed_ms >= canary.duration_ms() {
            match verdict {
                Verdict::Pass => return self.pass_step(rollout, canary, &step).await,
                Verdict::Fail => {
                    let why = failures(&canary.checks, Verdict::Fail);
                    return self.roll_back_canary(rollout, canary, why).await;
                }
                _ => {
                    let held = canary.checks.iter().find(|c| c.verdict == Verdict::Wait && !c.advisory);
                    waiting = Some(format!(
                        "the step's time is up but there is too little traffic to judge: {}",
                        held.map_or_else(String::new, |c| format!("{}: {}", c.name, c.detail))
                    ));
                }
            }
        }
        if waiting != canary.waiting {
            match &waiting {
                Some(why) => rollout.record(now, "waiting", why.clone()),
                None => rollout.record(now, "traffic back", "the step goes on"),
            }
            canary.waiting = waiting;
        }
        rollout.canary = Some(canary);
        rollout.updated_ms = now;
        Step::Wait(interval, Some(rollout))
    }

    /// The step passed: on to the next, or 100 %.
    async fn pass_step(&self, mut rollout: Rollout, mut canary: CanaryState, step: &Marks) -> Step {
        let now = now_millis();
        let (canary_calls, stable_calls) = (step.canary.calls.requests, step.stable.calls.requests);
        let all = canary_calls + stable_calls;
        let record = StepRecord {
            weight: canary.weight(),
            started_ms: canary.step_started_ms,
            ended_ms: now,
            canary_calls,
            stable_calls,
            observed_share: if all > 0.0 { canary_calls / all * 100.0 } else { 0.0 },
        };
        let summary: Vec<String> = canary
            .checks
            .iter()
            .filter(|c| !c.advisory)
            .map(|c| match (c.canary, c.stable) {
                (Some(a), Some(b)) => format!("{} {a:.2} vs {b:.2} {}", c.name, c.unit),
                _ => c.name.clone(),
            })
            .collect();
        rollout.record(
            now,
            format!("step {}/{} passed", canary.step + 1, canary.config.steps.len()),
            format!(
                "{} % asked, {:.1} % of {all} calls observed on the canary; {}",
                record.weight,
                record.observed_share,
                summary.join(", ")
            ),
        );
        canary.steps_done.push(record);
        let promote = canary.next_is_promotion();
        let next = canary.step + 1;
        rollout.canary = Some(canary);
        if promote {
            return self.promote(rollout, "every step passed its analysis").await;
        }
        self.begin_step(rollout, next).await
    }

    /// 100 % on the canary; stable kept at weight 0 for the rollback window.
    async fn promote(&self, mut rollout: Rollout, why: &str) -> Step {
        let both = [rollout.blue.as_str(), rollout.green.as_str()];
        let green = rollout.green.clone();
        if let Err(err) = self.route(&rollout, &green, &both, &format!("canary promoted: {why}")).await {
            return Self::trouble(rollout, "cannot promote", err);
        }
        let now = now_millis();
        let window = rollout.canary.as_ref().map_or(0, |c| c.config.rollback_window);
        if let Some(canary) = rollout.canary.as_mut() {
            canary.step = canary.config.steps.len().saturating_sub(1);
            canary.waiting = None;
            canary.paused = None;
        }
        event(&rollout, "promoted");
        rollout.record(now, "promoted", format!("{green} at 100 %: {why}"));
        rollout.standby_until_ms = Some(now + window as i64);
        rollout.enter(
            Phase::Standby,
            now,
            format!("{} kept at weight 0 for {} for a rollback", rollout.blue, span(window)),
        );
        Step::Moved(rollout)
    }

    /// Weight 0 on the canary at once; its instances are drained and stopped next.
    async fn roll_back_canary(&self, mut rollout: Rollout, canary: CanaryState, why: String) -> Step {
        rollout.canary = Some(canary);
        let both = [rollout.blue.as_str(), rollout.green.as_str()];
        let blue = rollout.blue.clone();
        if let Err(err) = self.route(&rollout, &blue, &both, "rollback: the canary regressed").await {
            return Self::trouble(rollout, "cannot roll back", err);
        }
        let now = now_millis();
        event(&rollout, "rolled_back");
        tracing::warn!(rollout = %rollout.id, %why, "canary regressed; rolled back");
        rollout.record(now, "switched back to stable", why.clone());
        rollout.reason = Some(format!("rolled back automatically: {why}"));
        rollout.cause = Some(Cause::Regressed);
        rollout.enter(Phase::RollingBack, now, why);
        Step::Moved(rollout)
    }

    /// Pause, resume or promote the service's canary.
    pub async fn command(&self, service: &str, command: CanaryCommand, reason: &str) -> Result<Rollout, ControlError> {
        let (mut rollout, _held) = self.active_locked(service).await?;
        let expected = rollout.phase;
        let now = now_millis();
        let id = rollout.id.clone();
        let refuse = |what: &str| -> Result<Rollout, ControlError> {
            Err(DomainError::FailedPrecondition(format!("{what} (rollout {id} is {})", expected.name())).into())
        };
        if rollout.canary.is_none() {
            return refuse("only a canary can be paused, resumed or promoted");
        }
        match (command, rollout.phase) {
            (CanaryCommand::Pause, Phase::Progressing) => {
                if let Some(canary) = rollout.canary.as_mut() {
                    canary.paused = Some(reason.to_string());
                }
                rollout.record(now, "paused", format!("by the operator: {reason}"));
            }
            (CanaryCommand::Resume, Phase::Progressing) => {
                if let Some(canary) = rollout.canary.as_mut() {
                    canary.paused = None;
                    canary.last_analysis_ms = Some(now);
                }
                rollout.record(now, "resumed", format!("by the operator: {reason}"));
            }
            (CanaryCommand::Promote, Phase::Progressing) => {
                rollout = match self.promote(rollout, &format!("by the operator: {reason}")).await {
                    Step::Moved(promoted) => promoted,
                    Step::Wait(..) => {
                        return Err(ControlError::Unavailable("the registry refused the promotion".into()));
                    }
                };
            }
            (CanaryCommand::Promote, Phase::Standby) => {
                rollout.standby_until_ms = Some(now);
                rollout.record(now, "rollback window ended", format!("by the operator: {reason}"));
            }
            (CanaryCommand::Pause | CanaryCommand::Resume, _) => return refuse("only a canary in progress"),
            (CanaryCommand::Promote, _) => return refuse("a canary can be promoted once it takes traffic"),
        }
        self.store.save(&rollout, expected).await?;
        self.poke_of(&rollout.id).notify_one();
        Ok(rollout)
    }
}
