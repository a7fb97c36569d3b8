//! Retries: exponential backoff with full jitter, and a retry budget (as in
//! Envoy and Finagle) so retries cannot multiply the load on a backend that is
//! already failing. Whether a call may be retried at all (idempotent, or
//! carrying an idempotency key) is the caller's decision.
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tonic::{Code, Status};
use tower::retry::budget::{Budget, TpsBudget};

use crate::signals::refused_by;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RetryPolicy {
    /// Attempts in all, the first included.
    pub max_attempts: u32,
    pub base_backoff_ms: u64,
    pub max_backoff_ms: u64,
    /// Retries allowed as a share of requests over the last 10 s (0.2 = 20 %).
    pub budget_ratio: f32,
    /// Retries allowed per second whatever the request count (for quiet clients).
    pub min_retries_per_sec: u32,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self { max_attempts: 3, base_backoff_ms: 25, max_backoff_ms: 1_000, budget_ratio: 0.2, min_retries_per_sec: 10 }
    }
}

/// Retry decisions for one dependency.
pub struct Retries {
    service: String,
    policy: RetryPolicy,
    budget: TpsBudget,
}

impl std::fmt::Debug for Retries {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Retries").field("service", &self.service).field("policy", &self.policy).finish()
    }
}

/// Codes worth another attempt: the backend may answer next time. A refusal
/// by our own breaker, bulkhead or deadline is not one of them.
pub fn retryable(status: &Status) -> bool {
    status.code() == Code::Unavailable && refused_by(status).is_none()
}

impl Retries {
    pub fn new(service: &str, policy: &RetryPolicy) -> Self {
        // TpsBudget panics outside these ranges.
        let ratio = if policy.budget_ratio.is_finite() { policy.budget_ratio.clamp(0.0, 1000.0) } else { 0.0 };
        let budget = TpsBudget::new(Duration::from_secs(10), policy.min_retries_per_sec.min(1_000_000), ratio);
        Self { service: service.to_string(), policy: policy.clone(), budget }
    }

    /// Counts a request (first attempts only) towards the budget.
    pub fn started(&self) {
        self.budget.deposit();
    }

    /// Whether attempt number `attempt` (1 = the first) that failed with
    /// `status` may be followed by another, spending budget if so.
    pub fn allow(&self, attempt: u32, status: &Status) -> bool {
        if attempt >= self.policy.max_attempts || !retryable(status) {
            return false;
        }
        if !self.budget.withdraw() {
            metrics::counter!("retry_budget_exhausted_total", "service" => self.service.clone()).increment(1);
            return false;
        }
        metrics::counter!("retries_total", "service" => self.service.clone()).increment(1);
        true
    }

    /// How long to wait before attempt `attempt + 1`: a uniform draw from
    /// [0, min(max, base · 2^(attempt-1))] ("full jitter").
    pub fn backoff(&self, attempt: u32, random: f64) -> Duration {
        let exp = attempt.saturating_sub(1).min(20);
        let ceiling = self.policy.base_backoff_ms.saturating_mul(1 << exp).min(self.policy.max_backoff_ms);
        Duration::from_millis((ceiling as f64 * random.clamp(0.0, 1.0)) as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_exponentially_under_a_cap_with_full_jitter() {
        let retries =
            Retries::new("x", &RetryPolicy { base_backoff_ms: 10, max_backoff_ms: 100, ..Default::default() });
        assert_eq!(retries.backoff(1, 1.0), Duration::from_millis(10));
        assert_eq!(retries.backoff(2, 1.0), Duration::from_millis(20));
        assert_eq!(retries.backoff(3, 1.0), Duration::from_millis(40));
        assert_eq!(retries.backoff(5, 1.0), Duration::from_millis(100), "capped");
        assert_eq!(retries.backoff(40, 1.0), Duration::from_millis(100), "no overflow");
        assert_eq!(retries.backoff(3, 0.0), Duration::ZERO);
        assert_eq!(retries.backoff(3, 0.5), Duration::from_millis(20));
    }

    #[test]
    fn the_budget_caps_retries_at_a_share_of_requests() {
        let policy = RetryPolicy { max_attempts: 10, budget_ratio: 0.2, min_retries_per_sec: 0, ..Default::default() };
        let retries = Retries::new("x", &policy);
        let unavailable = Status::unavailable("down");
        let mut granted = 0;
        for _ in 0..100 {
            retries.started();
            while retries.allow(1, &unavailable) {
                granted += 1;
            }
        }
        assert_eq!(granted, 20, "20 % of 100 requests");
    }

    #[test]
    fn only_unavailable_from_the_backend_is_retried_and_attempts_are_capped() {
        let retries = Retries::new("x", &RetryPolicy { max_attempts: 2, ..Default::default() });
        retries.started();
        assert!(!retries.allow(1, &Status::invalid_argument("bad")));
        assert!(!retries.allow(1, &Status::internal("bug")));
        let mut open = Status::unavailable("breaker open");
        open.metadata_mut().insert(crate::signals::REFUSED_BY, crate::signals::BY_CIRCUIT_BREAKER.parse().unwrap());
        assert!(!retries.allow(1, &open), "no retries against an open breaker");
        assert!(retries.allow(1, &Status::unavailable("down")));
        assert!(!retries.allow(2, &Status::unavailable("down")), "max_attempts reached");
    }
}
