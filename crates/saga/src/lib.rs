//! A durable saga orchestrator. A saga is a list of steps; each runs forward
//! (retrying transient failures with backoff), and once one fails for good the
//! steps that may have taken effect are compensated in reverse order — every
//! one of them, whatever happens to the others. The record is persisted
//! through `SagaStore` before and after every step, so a process killed at
//! any point resumes with `Orchestrator::resume_all`: finished steps are not
//! run again, the step that was running is run again with the same
//! idempotency key (steps must be idempotent by key, which the services'
//! idempotency layer guarantees).
//!
//! Two kinds of retryable failure get two budgets. A `Transient` one is the
//! step's own business (a card processor that said "try again") and gets
//! `max_attempts`. An `Unavailable` one is the platform's trouble — the
//! service restarting, a breaker open, no instance, a deadline — and is
//! retried for `give_up_after`, however many attempts that takes: a
//! two-second restart must not fail an order. Compensation never gives up on
//! either: it repeats, pass after pass with capped backoff, until every undo
//! succeeded; only a permanent refusal asks for a person.
//!
//! The engine knows nothing of orders or gRPC: steps and the store are traits.
mod record;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;

pub use record::{SagaRecord, SagaState, StepRecord, StepStatus};

/// How a step (or a compensation) failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StepError {
    /// May succeed if tried again (a timeout, an unavailable service). The
    /// step may also have taken effect.
    #[error("{0}")]
    Transient(StepFailure),
    /// Will fail again (declined card, out of stock); it took no effect.
    #[error("{0}")]
    Permanent(StepFailure),
    /// The step's service could not be reached or did not answer (restart,
    /// breaker open, no instance, deadline): the platform's trouble, not the
    /// request's. May also have taken effect.
    #[error("{0}")]
    Unavailable(StepFailure),
}

/// What a failed step said: words for the record and, when the callee gave
/// one, the machine-readable reason (a `kit_core::reason` name such as
/// CARD_DECLINED) the saga keeps as its `failure_reason`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StepFailure {
    pub message: String,
    pub reason: Option<String>,
}

impl StepFailure {
    pub fn with_reason(message: impl Into<String>, reason: Option<&str>) -> Self {
        Self { message: message.into(), reason: reason.map(str::to_string) }
    }
}

impl From<String> for StepFailure {
    fn from(message: String) -> Self {
        Self { message, reason: None }
    }
}

impl From<&str> for StepFailure {
    fn from(message: &str) -> Self {
        message.to_string().into()
    }
}

impl std::fmt::Display for StepFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl StepError {
    fn failure(&self) -> &StepFailure {
        match self {
            Self::Transient(failure) | Self::Permanent(failure) | Self::Unavailable(failure) => failure,
        }
    }
}

/// What a step adds to the saga's context on success.
pub type Output = BTreeMap<String, String>;

pub trait Step: Send + Sync {
    fn name(&self) -> &'static str;
    /// Runs the step; `key` is its idempotency key (the same on every retry and after a crash).
    fn run<'a>(&'a self, saga: &'a SagaRecord, key: &'a str) -> BoxFuture<'a, Result<Output, StepError>>;
    /// Undoes the step; must be idempotent and succeed when there is nothing to undo.
    fn compensate<'a>(&'a self, saga: &'a SagaRecord, key: &'a str) -> BoxFuture<'a, Result<(), StepError>>;
    /// A step after the saga's pivot (the point of no return, e.g. the money
    /// is taken): its transient failures are retried until it succeeds or
    /// fails for good, never compensated for after `max_attempts`.
    fn after_pivot(&self) -> bool {
        false
    }
}

#[derive(Debug, thiserror::Error)]
#[error("saga store: {0}")]
pub struct StoreError(pub String);

pub trait SagaStore: Send + Sync {
    /// Persists the whole record (insert or replace).
    fn save<'a>(&'a self, saga: &'a SagaRecord) -> BoxFuture<'a, Result<(), StoreError>>;
    /// Every saga not in a terminal state.
    fn unfinished(&self) -> BoxFuture<'_, Result<Vec<SagaRecord>, StoreError>>;
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RetryPolicy {
    /// Attempts at a step failing `Transient`ly (forward), or attempts per
    /// pass at a compensation.
    pub max_attempts: u32,
    pub base_backoff: Duration,
    pub max_backoff: Duration,
    /// How long a step failing because its service is `Unavailable` keeps
    /// being tried, from its first attempt (forward only).
    pub give_up_after: Duration,
}

impl RetryPolicy {
    /// Full jitter: a uniform draw from [0, min(max, base · 2^(attempt-1))].
    fn backoff(&self, attempt: u32) -> Duration {
        let ceiling = self.base_backoff.saturating_mul(1 << attempt.saturating_sub(1).min(20)).min(self.max_backoff);
        ceiling.mul_f64(rand::random::<f64>())
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

pub struct Orchestrator {
    steps: Vec<Arc<dyn Step>>,
    store: Arc<dyn SagaStore>,
    forward: RetryPolicy,
    compensation: RetryPolicy,
}

impl Orchestrator {
    pub fn new(
        steps: Vec<Arc<dyn Step>>,
        store: Arc<dyn SagaStore>,
        forward: RetryPolicy,
        compensation: RetryPolicy,
    ) -> Self {
        Self { steps, store, forward, compensation }
    }

    /// A new saga record for this orchestrator's steps (not yet persisted).
    pub fn new_saga(&self, id: &str, order_id: &str, user_id: &str, context: Output) -> SagaRecord {
        let names: Vec<&str> = self.steps.iter().map(|s| s.name()).collect();
        let mut saga = SagaRecord::new(id, order_id, user_id, &names, now_ms());
        saga.context = context;
        saga
    }

    async fn save(&self, saga: &mut SagaRecord) -> Result<(), StoreError> {
        saga.updated_at_ms = now_ms();
        self.store.save(saga).await
    }

    /// Drives a saga to a terminal state, persisting every transition. An
    /// error means the store failed: the saga is left as last saved, to be
    /// resumed.
    pub async fn run(&self, mut saga: SagaRecord) -> Result<SagaRecord, StoreError> {
        if saga.steps.iter().all(|s| s.status == StepStatus::Pending) && saga.state == SagaState::Running {
            metrics::counter!("saga_started_total").increment(1);
        }
        self.save(&mut saga).await?;
        if saga.state == SagaState::Running {
            self.run_forward(&mut saga).await?;
        }
        if saga.state == SagaState::Compensating {
            self.run_compensation(&mut saga).await?;
        }
        Ok(saga)
    }

    /// Resumes every unfinished saga (after a restart), a few at a time.
    pub async fn resume_all(&self) -> Result<Vec<SagaRecord>, StoreError> {
        use futures::StreamExt;
        let unfinished = self.store.unfinished().await?;
        if !unfinished.is_empty() {
            tracing::info!(sagas = unfinished.len(), "resuming unfinished sagas");
        }
        let results: Vec<_> =
            futures::stream::iter(unfinished).map(|saga| self.run(saga)).buffer_unordered(16).collect().await;
        results.into_iter().collect()
    }

    async fn run_forward(&self, saga: &mut SagaRecord) -> Result<(), StoreError> {
        for step in &self.steps {
            let name = step.name();
            if saga.step(name).is_some_and(|s| s.status == StepStatus::Succeeded) {
                continue;
            }
            let key = saga.step_key(name);
            // Whether an attempt may have taken effect: one that failed
            // transiently, or one a crash cut short (it is still `Running`
            // when the saga resumes). A later permanent failure does not undo
            // that: the step is compensated too.
            let mut may_have_taken_effect = saga.step(name).is_some_and(|s| s.status == StepStatus::Running);
            let mut attempt = 0;
            loop {
                attempt += 1;
                let started_at = match saga.step_mut(name) {
                    Some(record) => {
                        record.status = StepStatus::Running;
                        record.attempts += 1;
                        *record.started_at_ms.get_or_insert(now_ms())
                    }
                    None => now_ms(),
                };
                self.save(saga).await?;
                let result = step.run(saga, &key).await;
                let outcome = match &result {
                    Ok(_) => "ok",
                    Err(StepError::Transient(_)) => "transient",
                    Err(StepError::Unavailable(_)) => "unavailable",
                    Err(StepError::Permanent(_)) => "permanent",
                };
                let within_budget = match &result {
                    Err(StepError::Transient(_)) => attempt < self.forward.max_attempts,
                    Err(StepError::Unavailable(_)) => {
                        now_ms().saturating_sub(started_at) < self.forward.give_up_after.as_millis() as i64
                    }
                    _ => false,
                };
                metrics::counter!("saga_step_attempts_total", "step" => name, "outcome" => outcome).increment(1);
                match result {
                    Ok(output) => {
                        saga.context.extend(output);
                        if let Some(record) = saga.step_mut(name) {
                            record.status = StepStatus::Succeeded;
                            record.finished_at_ms = Some(now_ms());
                            record.error = None;
                        }
                        saga.completed.push(name.to_string());
                        self.save(saga).await?;
                        break;
                    }
                    Err(StepError::Transient(error) | StepError::Unavailable(error))
                        if within_budget || step.after_pivot() =>
                    {
                        may_have_taken_effect = true;
                        tracing::warn!(saga_id = %saga.id, order_id = %saga.order_id, step = name, attempt, %error, "step failed; retrying");
                        if let Some(record) = saga.step_mut(name) {
                            record.error = Some(error.message);
                        }
                        self.save(saga).await?;
                        tokio::time::sleep(self.forward.backoff(attempt)).await;
                    }
                    Err(error) => {
                        // A transient failure may have taken effect, and so may an
                        // earlier attempt: undo it too (compensations are
                        // idempotent and succeed when there is nothing to undo).
                        let retryable = !matches!(error, StepError::Permanent(_));
                        if retryable || may_have_taken_effect {
                            saga.completed.push(name.to_string());
                        }
                        // The platform's trouble outlasted the budget: the
                        // request itself may well succeed if made again.
                        saga.failure_retryable = matches!(error, StepError::Unavailable(_));
                        if let Some(record) = saga.step_mut(name) {
                            record.status = StepStatus::Failed;
                            record.finished_at_ms = Some(now_ms());
                            record.error = Some(error.to_string());
                        }
                        tracing::warn!(saga_id = %saga.id, order_id = %saga.order_id, step = name, %error, "step failed for good; compensating");
                        saga.failure = Some(match &error {
                            StepError::Transient(_) => format!("{name}: gave up after {attempt} attempts: {error}"),
                            _ => format!("{name}: {error}"),
                        });
                        saga.failure_reason = error.failure().reason.clone();
                        saga.state = SagaState::Compensating;
                        self.save(saga).await?;
                        return Ok(());
                    }
                }
            }
        }
        saga.state = SagaState::Completed;
        metrics::counter!("saga_finished_total", "state" => "completed").increment(1);
        self.save(saga).await
    }

    /// Undoes what may have taken effect, last first. A compensation that
    /// fails for a reason that may pass is left for the next pass (the others
    /// still run); passes repeat with capped backoff until every undo has
    /// succeeded — the saga stays `Compensating`, persisted, and a restart
    /// resumes it. Only a permanent refusal gives up and asks for a person.
    async fn run_compensation(&self, saga: &mut SagaRecord) -> Result<(), StoreError> {
        let mut pass = 0;
        loop {
            pass += 1;
            let pending = self.compensation_pass(saga).await?;
            if pending == 0 {
                break;
            }
            tracing::warn!(saga_id = %saga.id, order_id = %saga.order_id, pending, pass, "compensations still failing; trying again");
            metrics::counter!("saga_compensation_passes_total").increment(1);
            tokio::time::sleep(self.compensation.backoff(pass + self.compensation.max_attempts)).await;
        }
        let gave_up = saga.steps.iter().any(|s| s.status == StepStatus::CompensationFailed);
        if gave_up {
            saga.state = SagaState::Failed;
            saga.manual_intervention = true;
            metrics::counter!("saga_finished_total", "state" => "failed").increment(1);
            metrics::counter!("saga_manual_intervention_total").increment(1);
        } else {
            saga.state = SagaState::Compensated;
            metrics::counter!("saga_finished_total", "state" => "compensated").increment(1);
        }
        self.save(saga).await
    }

    /// One pass over the compensations not yet done; returns how many are
    /// still to do (failed in a way that may pass).
    async fn compensation_pass(&self, saga: &mut SagaRecord) -> Result<usize, StoreError> {
        let mut pending = 0;
        let undo: Vec<String> = saga.completed.iter().rev().cloned().collect();
        for name in undo {
            let done = saga
                .step(&name)
                .is_some_and(|s| matches!(s.status, StepStatus::Compensated | StepStatus::CompensationFailed));
            if done {
                continue;
            }
            let Some(step) = self.steps.iter().find(|s| s.name() == name) else {
                // A step this orchestrator does not know: nothing can undo it.
                if let Some(record) = saga.step_mut(&name) {
                    record.status = StepStatus::CompensationFailed;
                    record.error = Some("unknown step".into());
                }
                continue;
            };
            let key = saga.compensation_key(&name);
            let mut attempt = 0;
            loop {
                attempt += 1;
                if let Some(record) = saga.step_mut(&name) {
                    record.status = StepStatus::Compensating;
                    record.compensation_attempts += 1;
                }
                self.save(saga).await?;
                match step.compensate(saga, &key).await {
                    Ok(()) => {
                        metrics::counter!("saga_compensations_total", "step" => step.name(), "outcome" => "ok")
                            .increment(1);
                        if let Some(record) = saga.step_mut(&name) {
                            record.status = StepStatus::Compensated;
                        }
                        self.save(saga).await?;
                        break;
                    }
                    Err(StepError::Permanent(error)) => {
                        metrics::counter!("saga_compensations_total", "step" => step.name(), "outcome" => "failed")
                            .increment(1);
                        tracing::error!(saga_id = %saga.id, order_id = %saga.order_id, step = %name, %error, "compensation refused for good; manual intervention needed");
                        if let Some(record) = saga.step_mut(&name) {
                            record.status = StepStatus::CompensationFailed;
                            record.error = Some(error.message);
                        }
                        self.save(saga).await?;
                        // Never stop at the first failure: undo the rest.
                        break;
                    }
                    Err(StepError::Transient(error) | StepError::Unavailable(error)) => {
                        tracing::warn!(saga_id = %saga.id, step = %name, attempt, %error, "compensation failed; retrying");
                        if attempt >= self.compensation.max_attempts {
                            if let Some(record) = saga.step_mut(&name) {
                                record.error = Some(error.message);
                            }
                            self.save(saga).await?;
                            pending += 1;
                            break;
                        }
                        tokio::time::sleep(self.compensation.backoff(attempt)).await;
                    }
                }
            }
        }
        Ok(pending)
    }
}

/// HELP text of the saga engine's metrics. Call once the recorder is
/// installed (its users do).
pub fn describe_metrics() {
    use metrics::describe_counter;
    describe_counter!("saga_started_total", "Sagas started.");
    describe_counter!(
        "saga_step_attempts_total",
        "Saga step attempts, by step and outcome (ok, transient, permanent)."
    );
    describe_counter!("saga_compensations_total", "Saga compensations, by step and outcome.");
    describe_counter!(
        "saga_compensation_passes_total",
        "Passes over a saga's compensations that left some still to do (a dependency was away); they are retried."
    );
    describe_counter!(
        "saga_manual_intervention_total",
        "Sagas whose compensation gave up: a person must look (see the saga record)."
    );
    describe_counter!("saga_finished_total", "Sagas finished, by final state (completed, compensated, failed).");
}

#[cfg(test)]
mod tests;
