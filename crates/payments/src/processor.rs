//! The card processor behind a trait, so a real one could be plugged in, and
//! the simulated one: behaviour by test card, plus a configurable share of
//! random transient failures for demos.
use std::time::Duration;

use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};

use crate::domain::{Behaviour, Decline};

/// What the processor said no with.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProcessorError {
    #[error("card declined: {}", .0.code())]
    Declined(Decline),
    #[error("the processor did not answer in time")]
    Timeout,
    #[error("the processor failed: {0}")]
    Transient(String),
}

impl ProcessorError {
    pub fn retryable(&self) -> bool {
        !matches!(self, ProcessorError::Declined(_))
    }

    pub fn code(&self) -> &'static str {
        match self {
            ProcessorError::Declined(decline) => decline.code(),
            ProcessorError::Timeout => "processor_timeout",
            ProcessorError::Transient(_) => "processing_error",
        }
    }
}

/// What a charge needs to know about the card.
#[derive(Debug, Clone)]
pub struct ChargeCard {
    pub number: String,
    pub expired: bool,
}

pub trait Processor: Send + Sync {
    /// Places a hold; returns the processor's authorization id.
    fn authorize(&self, card: &ChargeCard, amount_minor: i64) -> BoxFuture<'_, Result<String, ProcessorError>>;
    /// Takes the held money.
    fn capture(&self, authorization: &str) -> BoxFuture<'_, Result<(), ProcessorError>>;
    fn refund(&self, authorization: &str, amount_minor: i64) -> BoxFuture<'_, Result<(), ProcessorError>>;
    /// Cancels an authorization whatever became of it — voids the hold, or
    /// refunds a capture whose answer a crash lost. Idempotent.
    fn reverse(&self, authorization: &str, amount_minor: i64) -> BoxFuture<'_, Result<(), ProcessorError>>;
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SimulatedConfig {
    /// Share (0-1) of authorizations that fail transiently whatever the card.
    pub failure_rate: f64,
    /// How long the "slow" test card takes.
    pub slow_ms: u64,
    /// How long the "timeout" test card hangs before the processor gives up.
    pub timeout_ms: u64,
}

impl Default for SimulatedConfig {
    fn default() -> Self {
        Self { failure_rate: 0.0, slow_ms: 1_500, timeout_ms: 3_000 }
    }
}

pub struct SimulatedProcessor {
    config: SimulatedConfig,
}

impl SimulatedProcessor {
    pub fn new(config: SimulatedConfig) -> Self {
        Self { config }
    }
}

impl Processor for SimulatedProcessor {
    fn authorize(&self, card: &ChargeCard, _amount_minor: i64) -> BoxFuture<'_, Result<String, ProcessorError>> {
        let behaviour = if card.expired {
            Behaviour::Decline(Decline::ExpiredCard)
        } else {
            crate::domain::behaviour_of(&card.number)
        };
        let unlucky = self.config.failure_rate > 0.0 && rand::random::<f64>() < self.config.failure_rate;
        Box::pin(async move {
            match behaviour {
                Behaviour::Decline(decline) => Err(ProcessorError::Declined(decline)),
                Behaviour::Timeout => {
                    tokio::time::sleep(Duration::from_millis(self.config.timeout_ms)).await;
                    Err(ProcessorError::Timeout)
                }
                Behaviour::Transient => Err(ProcessorError::Transient("try again".into())),
                _ if unlucky => Err(ProcessorError::Transient("simulated failure".into())),
                Behaviour::Slow => {
                    tokio::time::sleep(Duration::from_millis(self.config.slow_ms)).await;
                    Ok(format!("auth_{}", uuid::Uuid::now_v7().simple()))
                }
                Behaviour::Approve => Ok(format!("auth_{}", uuid::Uuid::now_v7().simple())),
            }
        })
    }

    fn capture(&self, _authorization: &str) -> BoxFuture<'_, Result<(), ProcessorError>> {
        Box::pin(async { Ok(()) })
    }

    fn refund(&self, _authorization: &str, _amount_minor: i64) -> BoxFuture<'_, Result<(), ProcessorError>> {
        Box::pin(async { Ok(()) })
    }

    fn reverse(&self, _authorization: &str, _amount_minor: i64) -> BoxFuture<'_, Result<(), ProcessorError>> {
        Box::pin(async { Ok(()) })
    }
}
