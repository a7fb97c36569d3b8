//! The resilience policies: what every call across a process boundary is
//! judged by (gateway → services, service → service). Per dependency: a
//! circuit breaker (classic or adaptive) over rolling windows, deadline
//! propagation, retries under a budget, and the fallback the gateway answers
//! with when all of that fails. Servers get load shedding and fault injection
//! (`shed`, `faults`). `signals` is the status vocabulary every hop shares.
//! The guard that applies these to a call is `kit_client::guard`.
pub mod breaker;
pub mod deadline;
pub mod faults;
pub mod retry;
pub mod shed;
pub mod signals;
pub mod window;

use serde::{Deserialize, Serialize};

pub use breaker::{BreakerPolicy, State};
pub use deadline::Deadline;
pub use retry::{Retries, RetryPolicy};

pub use signals::BoxError;

/// What to answer when a dependency cannot be reached (breaker open, no
/// instance, failures after retries).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Fallback {
    /// Fail fast: 503 with a clear message.
    #[default]
    None,
    /// The last good response to the same request, with its age (reads only).
    Cached,
    /// An empty response of the right type.
    Default,
    /// Writes: accept now (202), deliver when the dependency is back.
    Queue,
}

/// Everything configurable about one downstream dependency.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DependencyConfig {
    pub breaker: BreakerPolicy,
    /// At most this many calls in flight at once (bulkhead); more are refused.
    pub max_concurrency: Option<usize>,
    pub retry: RetryPolicy,
    pub fallback: Fallback,
    /// Cached fallbacks older than this are not served.
    pub fallback_max_age_ms: u64,
    /// The deadline of a call sent without one (the caller's own deadline,
    /// from `grpc-timeout`, wins when it has one).
    pub timeout_ms: u64,
}

impl Default for DependencyConfig {
    fn default() -> Self {
        Self {
            breaker: BreakerPolicy::default(),
            max_concurrency: None,
            retry: RetryPolicy::default(),
            fallback: Fallback::None,
            fallback_max_age_ms: 300_000,
            timeout_ms: 10_000,
        }
    }
}

/// HELP text of the resilience metrics (servers' shedding, deadlines and
/// faults; retries). Call once the recorder is installed (`kit::describe_metrics`).
pub fn describe_metrics() {
    use metrics::describe_counter;
    describe_counter!("server_deadline_spent_total", "Requests not started because they arrived with no time left.");
    describe_counter!("server_shed_total", "Requests refused by adaptive load shedding (RESOURCE_EXHAUSTED).");
    describe_counter!("fault_injected_total", "Faults injected on purpose, by kind (error, abort).");
    describe_counter!("retries_total", "Retries made, by service.");
    describe_counter!("retry_budget_exhausted_total", "Retries not made because the retry budget was spent.");
}
