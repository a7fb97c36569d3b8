//! A saga as it is persisted: enough to resume it after a crash at any point.
use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum SagaState {
    /// Forward steps are running.
    Running,
    /// A step failed for good; completed steps are being undone.
    Compensating,
    /// Every step succeeded.
    Completed,
    /// Every completed step was undone.
    Compensated,
    /// A compensation kept failing: a person must look (see `manual_intervention`).
    Failed,
}

impl SagaState {
    pub fn is_terminal(self) -> bool {
        matches!(self, SagaState::Completed | SagaState::Compensated | SagaState::Failed)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum StepStatus {
    Pending,
    /// Started; if the process died here, the step may or may not have happened.
    Running,
    Succeeded,
    Failed,
    Compensating,
    Compensated,
    CompensationFailed,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepRecord {
    pub name: String,
    pub status: StepStatus,
    pub attempts: u32,
    pub compensation_attempts: u32,
    pub started_at_ms: Option<i64>,
    pub finished_at_ms: Option<i64>,
    pub error: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SagaRecord {
    pub id: String,
    pub order_id: String,
    pub user_id: String,
    pub state: SagaState,
    pub steps: Vec<StepRecord>,
    /// Names of the steps that may have taken effect, in the order they did:
    /// what compensation undoes, last first.
    pub completed: Vec<String>,
    /// Data steps hand each other (reservation id, payment id, …).
    pub context: BTreeMap<String, String>,
    pub manual_intervention: bool,
    pub failure: Option<String>,
    /// The saga failed because a service stayed unavailable past the retry
    /// budget (not because the request was refused): asked again, it may pass.
    #[serde(default)]
    pub failure_retryable: bool,
    /// Why, in a name programs branch on (`kit_core::reason`: CARD_DECLINED,
    /// INSUFFICIENT_STOCK …), when the failing step's callee said.
    #[serde(default)]
    pub failure_reason: Option<String>,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
}

impl SagaRecord {
    pub fn new(id: &str, order_id: &str, user_id: &str, steps: &[&str], now_ms: i64) -> Self {
        Self {
            id: id.to_string(),
            order_id: order_id.to_string(),
            user_id: user_id.to_string(),
            state: SagaState::Running,
            steps: steps
                .iter()
                .map(|name| StepRecord {
                    name: name.to_string(),
                    status: StepStatus::Pending,
                    attempts: 0,
                    compensation_attempts: 0,
                    started_at_ms: None,
                    finished_at_ms: None,
                    error: None,
                })
                .collect(),
            completed: Vec::new(),
            context: BTreeMap::new(),
            manual_intervention: false,
            failure: None,
            failure_retryable: false,
            failure_reason: None,
            created_at_ms: now_ms,
            updated_at_ms: now_ms,
        }
    }

    pub fn step(&self, name: &str) -> Option<&StepRecord> {
        self.steps.iter().find(|s| s.name == name)
    }

    pub(crate) fn step_mut(&mut self, name: &str) -> Option<&mut StepRecord> {
        self.steps.iter_mut().find(|s| s.name == name)
    }

    /// The idempotency key of a forward step: `saga:{saga_id}:{step}:{order_id}`.
    pub fn step_key(&self, step: &str) -> String {
        format!("saga:{}:{step}:{}", self.id, self.order_id)
    }

    /// The idempotency key of a compensation: `saga:{saga_id}:compensate:{step}:{order_id}`.
    pub fn compensation_key(&self, step: &str) -> String {
        format!("saga:{}:compensate:{step}:{}", self.id, self.order_id)
    }
}
