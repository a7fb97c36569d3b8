//! The state a canary keeps between analyses — the step it is on, that
//! step's clock, the counters the step started from, the last checks, the
//! history the console charts. Pure; persisted with the rollout.
use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::analysis::{Check, Side};
use crate::canary::CanaryConfig;

/// A step as it went: its share asked for and observed by the callers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepRecord {
    pub weight: u32,
    pub started_ms: i64,
    pub ended_ms: i64,
    /// Calls the callers counted to each side over the step.
    pub canary_calls: f64,
    pub stable_calls: f64,
    /// The canary's observed share, in % of the calls.
    pub observed_share: f64,
}

/// One analysis, for the chart: each side's figures over the last interval.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Point {
    pub at_ms: i64,
    pub weight: u32,
    pub canary_rps: f64,
    pub stable_rps: f64,
    pub canary_error_pct: Option<f64>,
    pub stable_error_pct: Option<f64>,
    pub canary_p95_ms: Option<f64>,
    pub stable_p95_ms: Option<f64>,
}

/// Points kept per rollout (a day of 5-second analyses would be 17 280).
pub const MAX_POINTS: usize = 720;

/// Each side's counters at one moment.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Marks {
    pub canary: Side,
    pub stable: Side,
}

/// Where a canary is.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CanaryState {
    pub config: CanaryConfig,
    /// The step it is on (an index into `config.steps`).
    pub step: usize,
    pub step_started_ms: i64,
    /// How long the step has had traffic (its clock).
    pub step_elapsed_ms: u64,
    pub last_analysis_ms: Option<i64>,
    /// The counters the step started from, and the last analysis' counters.
    pub mark: Option<Marks>,
    pub previous: Option<Marks>,
    /// Paused by the operator, and why.
    pub paused: Option<String>,
    /// Why the step is waiting on its own (no traffic, too few samples).
    pub waiting: Option<String>,
    /// The last analysis' checks.
    pub checks: Vec<Check>,
    pub history: Vec<Point>,
    pub steps_done: Vec<StepRecord>,
}

impl CanaryState {
    pub fn new(config: CanaryConfig) -> Self {
        Self {
            config,
            step: 0,
            step_started_ms: 0,
            step_elapsed_ms: 0,
            last_analysis_ms: None,
            mark: None,
            previous: None,
            paused: None,
            waiting: None,
            checks: Vec::new(),
            history: Vec::new(),
            steps_done: Vec::new(),
        }
    }

    pub fn weight(&self) -> u32 {
        self.config.steps.get(self.step).map_or(100, |s| s.weight)
    }

    pub fn duration_ms(&self) -> u64 {
        self.config.steps.get(self.step).map_or(0, |s| s.duration)
    }

    /// Whether the step after this one is the promotion (100 %).
    pub fn next_is_promotion(&self) -> bool {
        self.config.steps.get(self.step + 1).is_none_or(|s| s.weight >= 100)
    }

    pub fn push_point(&mut self, point: Point) {
        self.history.push(point);
        if self.history.len() > MAX_POINTS {
            self.history.remove(0);
        }
    }

    /// The weights of the current step: stable keeps the rest.
    pub fn weights(&self, stable: &str, canary: &str) -> BTreeMap<String, u32> {
        let weight = self.weight();
        [(stable.to_string(), 100 - weight), (canary.to_string(), weight)].into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weights_follow_the_step() {
        let mut state = CanaryState::new(CanaryConfig::default());
        assert_eq!(state.weights("v1", "v2"), [("v1".to_string(), 95), ("v2".to_string(), 5)].into());
        state.step = 4;
        assert!(state.next_is_promotion());
    }
}
