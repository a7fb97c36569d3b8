//! Circuit breakers as pure state machines: the caller passes the time (and,
//! for the adaptive policy, a random draw), so every transition is testable
//! with a controllable clock. `layer.rs` puts them in front of a service.
//!
//! Only server-side failures count (see `Outcome`): a backend that answers
//! "not found" is healthy.
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::window::RollingWindow;

/// Which policy guards a dependency, and its settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "policy", rename_all = "snake_case")]
pub enum BreakerPolicy {
    Classic(ClassicConfig),
    Adaptive(AdaptiveConfig),
}

impl Default for BreakerPolicy {
    fn default() -> Self {
        Self::Classic(ClassicConfig::default())
    }
}

/// Closed / open / half-open.
///
/// Opens once the window holds at least `volume_threshold` calls and their
/// failure share reaches `failure_rate` (the design's RequestVolumeThreshold
/// 20, 50 %): a handful of failures — one client's requests that fail for
/// their own reasons — cannot open it for everyone. `failure_threshold`
/// (consecutive failures, whatever the volume) is off unless configured.
///
/// The open time starts at `open_ms` (about a second: a restarted backend is
/// back in two) and doubles with each failed probe up to `max_open_ms`, so a
/// sustained outage is probed ever more rarely; closing resets it. The
/// circuit also half-opens at once when discovery reports a new instance
/// (`probe_now`), and calls that must get through (`admit_essential`, a
/// saga's compensation) probe instead of being refused.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClassicConfig {
    pub failure_threshold: Option<u32>,
    pub failure_rate: f64,
    pub volume_threshold: u64,
    pub window_ms: u64,
    pub window_buckets: usize,
    /// Consecutive successful probes in half-open that close the circuit.
    pub success_threshold: u32,
    /// How long the circuit first stays open before probing.
    pub open_ms: u64,
    /// The longest it stays open, however many probes failed.
    pub max_open_ms: u64,
    /// Probes allowed in flight at once while half-open.
    pub half_open_max: u32,
    /// Calls slower than this count as failures.
    pub slow_call_ms: Option<u64>,
}

impl Default for ClassicConfig {
    fn default() -> Self {
        Self {
            failure_threshold: None,
            failure_rate: 0.5,
            volume_threshold: 20,
            window_ms: 10_000,
            window_buckets: 10,
            success_threshold: 3,
            open_ms: 1_000,
            max_open_ms: 30_000,
            half_open_max: 10,
            slow_call_ms: None,
        }
    }
}

/// Google SRE client-side throttling: drop with probability
/// `max(0, (total − protection − k·accepts) / (total + 1))`.
///
/// `total` counts the calls that reached the backend, not the ones this
/// breaker dropped. Counting drops too (as the SRE book's "requests" does)
/// makes "drop everything" an almost stable point: after the backend recovers,
/// the drop rate falls by only a factor of k per window, so a breaker stays
/// nearly open for minutes (go-zero's reported "stuck open"). Counting what
/// was sent, one window after recovery every counted call is a success and the
/// drop rate is 0. At a success rate s the breaker lets through k·s of the
/// traffic (all of it once k·s ≥ 1).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AdaptiveConfig {
    pub k: f64,
    pub protection: u64,
    pub window_ms: u64,
    pub window_buckets: usize,
    /// A call is let through if none has passed for this long, whatever the
    /// drop rate: the backend's recovery is always seen.
    pub force_probe_ms: u64,
    pub slow_call_ms: Option<u64>,
}

impl Default for AdaptiveConfig {
    fn default() -> Self {
        Self { k: 1.5, protection: 5, window_ms: 10_000, window_buckets: 40, force_probe_ms: 1_000, slow_call_ms: None }
    }
}

/// A breaker's state. Adaptive breakers are `Closed` while they drop nothing
/// and `Throttling` while they drop some calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    Closed,
    HalfOpen,
    Open,
    Throttling,
}

impl State {
    /// The value of the `circuit_breaker_state` gauge.
    pub fn gauge(self) -> f64 {
        match self {
            State::Closed => 0.0,
            State::HalfOpen => 1.0,
            State::Open => 2.0,
            State::Throttling => 3.0,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            State::Closed => "closed",
            State::HalfOpen => "half_open",
            State::Open => "open",
            State::Throttling => "throttling",
        }
    }
}

/// How a call went, as far as the backend's health is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Answered, including with a client error.
    Success,
    /// UNAVAILABLE, DEADLINE_EXCEEDED, INTERNAL, RESOURCE_EXHAUSTED, a 5xx or
    /// a connection error.
    Failure,
}

/// Leave to make a call; hand it back with the outcome.
#[derive(Debug)]
#[must_use]
pub struct Permit {
    generation: u64,
    probe: bool,
    started: Instant,
}

impl Permit {
    /// Whether this call is a probe (half-open trial or forced pass).
    pub fn is_probe(&self) -> bool {
        self.probe
    }
}

/// The call was refused without reaching the backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rejected {
    pub state: State,
    /// When trying again makes sense.
    pub retry_after: Duration,
}

/// A state change, to log and count.
#[derive(Debug, Clone, PartialEq)]
pub struct Transition {
    pub from: State,
    pub to: State,
    pub reason: String,
}

/// Either policy behind one interface.
#[derive(Debug)]
pub enum Breaker {
    Classic(Classic),
    Adaptive(Adaptive),
}

impl Breaker {
    pub fn new(policy: &BreakerPolicy, now: Instant) -> Self {
        match policy {
            BreakerPolicy::Classic(config) => Self::Classic(Classic::new(config.clone(), now)),
            BreakerPolicy::Adaptive(config) => Self::Adaptive(Adaptive::new(config.clone(), now)),
        }
    }

    pub fn state(&self) -> State {
        match self {
            Self::Classic(b) => b.state,
            Self::Adaptive(b) => b.state,
        }
    }

    /// `random` is a draw from [0, 1), used by the adaptive policy.
    pub fn admit(&mut self, now: Instant, random: f64) -> (Result<Permit, Rejected>, Option<Transition>) {
        match self {
            Self::Classic(b) => b.admit(now),
            Self::Adaptive(b) => b.admit(now, random),
        }
    }

    /// Admits a call that must get through (a compensation): never refused;
    /// while open it ends the open period early and goes as a probe.
    pub fn admit_essential(&mut self, now: Instant) -> (Permit, Option<Transition>) {
        match self {
            Self::Classic(b) => b.admit_essential(now),
            Self::Adaptive(b) => b.admit_essential(now),
        }
    }

    /// Discovery reports a new (or re-registered) instance: an open circuit
    /// probes at once instead of waiting out its open time.
    pub fn probe_now(&mut self, now: Instant) -> Option<Transition> {
        match self {
            Self::Classic(b) => b.probe_now(now),
            Self::Adaptive(b) => {
                b.probe_now(now);
                None
            }
        }
    }

    pub fn record(&mut self, permit: Permit, outcome: Outcome, now: Instant) -> Option<Transition> {
        match self {
            Self::Classic(b) => b.record(permit, outcome, now),
            Self::Adaptive(b) => b.record(permit, outcome, now),
        }
    }

    /// The call ended without an outcome (the caller gave up): frees its
    /// half-open slot, counts nothing.
    pub fn release(&mut self, permit: Permit) {
        if let Self::Classic(b) = self {
            b.release(permit);
        }
    }
}

fn slow(slow_call_ms: Option<u64>, permit: &Permit, outcome: Outcome, now: Instant) -> Outcome {
    match slow_call_ms {
        Some(ms) if now.saturating_duration_since(permit.started) > Duration::from_millis(ms) => Outcome::Failure,
        _ => outcome,
    }
}

#[derive(Debug)]
pub struct Classic {
    config: ClassicConfig,
    state: State,
    /// Bumped on every transition; permits from an earlier state are ignored.
    generation: u64,
    window: RollingWindow,
    consecutive_failures: u32,
    opened_at: Instant,
    /// Times opened since it was last closed: the open time doubles with each.
    opens: u32,
    probes_in_flight: u32,
    probe_successes: u32,
}

impl Classic {
    pub fn new(config: ClassicConfig, now: Instant) -> Self {
        let window = RollingWindow::new(Duration::from_millis(config.window_ms), config.window_buckets, now);
        Self {
            config,
            state: State::Closed,
            generation: 0,
            window,
            consecutive_failures: 0,
            opened_at: now,
            opens: 0,
            probes_in_flight: 0,
            probe_successes: 0,
        }
    }

    /// `open_ms`, doubled for each reopening since the circuit last closed.
    fn open_for(&self) -> Duration {
        let doublings = self.opens.saturating_sub(1).min(20);
        let ms =
            self.config.open_ms.saturating_mul(1 << doublings).min(self.config.max_open_ms.max(self.config.open_ms));
        Duration::from_millis(ms)
    }

    fn transition(&mut self, to: State, reason: String, now: Instant) -> Option<Transition> {
        let from = self.state;
        self.state = to;
        self.generation += 1;
        self.probes_in_flight = 0;
        self.probe_successes = 0;
        match to {
            State::Open => {
                self.opened_at = now;
                self.opens = self.opens.saturating_add(1);
            }
            State::Closed => {
                self.window.clear();
                self.consecutive_failures = 0;
                self.opens = 0;
            }
            State::HalfOpen | State::Throttling => {}
        }
        Some(Transition { from, to, reason })
    }

    pub fn admit(&mut self, now: Instant) -> (Result<Permit, Rejected>, Option<Transition>) {
        let mut transition = None;
        if self.state == State::Open {
            let reopens = self.opened_at + self.open_for();
            if now < reopens {
                return (Err(Rejected { state: State::Open, retry_after: reopens - now }), None);
            }
            transition = self.transition(State::HalfOpen, "open timeout elapsed; probing".into(), now);
        }
        let probe = self.state == State::HalfOpen;
        if probe {
            if self.probes_in_flight >= self.config.half_open_max {
                let rejected = Rejected { state: State::HalfOpen, retry_after: Duration::from_millis(100) };
                return (Err(rejected), transition);
            }
            self.probes_in_flight += 1;
        }
        (Ok(Permit { generation: self.generation, probe, started: now }), transition)
    }

    pub fn admit_essential(&mut self, now: Instant) -> (Permit, Option<Transition>) {
        let transition = match self.state {
            State::Open => self.transition(State::HalfOpen, "a call that must get through probes".into(), now),
            _ => None,
        };
        let probe = self.state == State::HalfOpen;
        if probe {
            // Beyond `half_open_max` if need be: it is not refused.
            self.probes_in_flight += 1;
        }
        (Permit { generation: self.generation, probe, started: now }, transition)
    }

    pub fn probe_now(&mut self, now: Instant) -> Option<Transition> {
        match self.state {
            State::Open => self.transition(State::HalfOpen, "a new instance registered; probing".into(), now),
            _ => None,
        }
    }

    pub fn record(&mut self, permit: Permit, outcome: Outcome, now: Instant) -> Option<Transition> {
        if permit.generation != self.generation {
            return None;
        }
        let outcome = slow(self.config.slow_call_ms, &permit, outcome, now);
        match self.state {
            State::HalfOpen => {
                self.probes_in_flight = self.probes_in_flight.saturating_sub(1);
                match outcome {
                    Outcome::Failure => self.transition(State::Open, "a probe failed".into(), now),
                    Outcome::Success => {
                        self.probe_successes += 1;
                        if self.probe_successes >= self.config.success_threshold {
                            let reason = format!("{} probes succeeded", self.probe_successes);
                            self.transition(State::Closed, reason, now)
                        } else {
                            None
                        }
                    }
                }
            }
            State::Closed => {
                self.window.record(outcome == Outcome::Success, now);
                match outcome {
                    Outcome::Success => {
                        self.consecutive_failures = 0;
                        None
                    }
                    Outcome::Failure => {
                        self.consecutive_failures += 1;
                        let counts = self.window.counts(now);
                        let rate = counts.failures() as f64 / counts.total.max(1) as f64;
                        if self.config.failure_threshold.is_some_and(|n| self.consecutive_failures >= n) {
                            let reason = format!("{} consecutive failures", self.consecutive_failures);
                            self.transition(State::Open, reason, now)
                        } else if counts.total >= self.config.volume_threshold && rate >= self.config.failure_rate {
                            let reason = format!("{:.0}% of {} calls failed", rate * 100.0, counts.total);
                            self.transition(State::Open, reason, now)
                        } else {
                            None
                        }
                    }
                }
            }
            State::Open | State::Throttling => None,
        }
    }

    pub fn release(&mut self, permit: Permit) {
        if permit.probe && permit.generation == self.generation {
            self.probes_in_flight = self.probes_in_flight.saturating_sub(1);
        }
    }
}

#[derive(Debug)]
pub struct Adaptive {
    config: AdaptiveConfig,
    state: State,
    window: RollingWindow,
    last_pass: Instant,
}

impl Adaptive {
    pub fn new(config: AdaptiveConfig, now: Instant) -> Self {
        let window = RollingWindow::new(Duration::from_millis(config.window_ms), config.window_buckets, now);
        Self { config, state: State::Closed, window, last_pass: now }
    }

    /// The drop probability right now.
    pub fn drop_probability(&self, now: Instant) -> f64 {
        let counts = self.window.counts(now);
        let total = counts.total as f64;
        let allowed = self.config.protection as f64 + self.config.k * counts.successes as f64;
        ((total - allowed) / (total + 1.0)).max(0.0)
    }

    fn enter(&mut self, to: State, reason: impl FnOnce() -> String) -> Option<Transition> {
        if self.state == to {
            return None;
        }
        let from = std::mem::replace(&mut self.state, to);
        Some(Transition { from, to, reason: reason() })
    }

    pub fn admit(&mut self, now: Instant, random: f64) -> (Result<Permit, Rejected>, Option<Transition>) {
        let drop = self.drop_probability(now);
        if drop <= 0.0 {
            self.last_pass = now;
            let transition = self.enter(State::Closed, || "backend succeeds again; dropping nothing".into());
            return (Ok(Permit { generation: 0, probe: false, started: now }), transition);
        }
        let transition = self.enter(State::Throttling, || format!("dropping {:.0}% of calls", drop * 100.0));
        let force_probe = Duration::from_millis(self.config.force_probe_ms);
        let probe = now.saturating_duration_since(self.last_pass) >= force_probe;
        if probe || random >= drop {
            self.last_pass = now;
            return (Ok(Permit { generation: 0, probe, started: now }), transition);
        }
        let retry_after = (self.last_pass + force_probe).saturating_duration_since(now);
        (Err(Rejected { state: State::Throttling, retry_after }), transition)
    }

    pub fn admit_essential(&mut self, now: Instant) -> (Permit, Option<Transition>) {
        let probe = self.drop_probability(now) > 0.0;
        self.last_pass = now;
        (Permit { generation: 0, probe, started: now }, None)
    }

    /// The next call is let through whatever the drop rate.
    pub fn probe_now(&mut self, now: Instant) {
        let force_probe = Duration::from_millis(self.config.force_probe_ms);
        self.last_pass = now.checked_sub(force_probe).unwrap_or(self.last_pass);
    }

    pub fn record(&mut self, permit: Permit, outcome: Outcome, now: Instant) -> Option<Transition> {
        let outcome = slow(self.config.slow_call_ms, &permit, outcome, now);
        self.window.record(outcome == Outcome::Success, now);
        None
    }
}

#[cfg(test)]
mod tests {
    use rand::{Rng, SeedableRng};

    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn classic(config: ClassicConfig) -> (Classic, Instant) {
        let t0 = Instant::now();
        (Classic::new(config, t0), t0)
    }

    fn call(b: &mut Classic, now: Instant, outcome: Outcome) -> Option<Transition> {
        let (permit, _) = b.admit(now);
        b.record(permit.expect("admitted"), outcome, now)
    }

    #[test]
    fn classic_opens_after_consecutive_failures_and_a_success_resets_the_count() {
        let (mut b, t0) = classic(ClassicConfig { failure_threshold: Some(3), ..Default::default() });
        assert!(call(&mut b, t0, Outcome::Failure).is_none());
        assert!(call(&mut b, t0, Outcome::Failure).is_none());
        assert!(call(&mut b, t0, Outcome::Success).is_none(), "a success resets the run");
        assert!(call(&mut b, t0, Outcome::Failure).is_none());
        assert!(call(&mut b, t0, Outcome::Failure).is_none());
        let opened = call(&mut b, t0, Outcome::Failure).expect("third failure in a row opens");
        assert_eq!((opened.from, opened.to), (State::Closed, State::Open));
        assert_eq!(opened.reason, "3 consecutive failures");
        let (refused, _) = b.admit(t0 + ms(10));
        assert_eq!(refused.unwrap_err(), Rejected { state: State::Open, retry_after: ms(1_000 - 10) });
    }

    #[test]
    fn classic_failure_rate_needs_the_volume_threshold() {
        let config = ClassicConfig {
            failure_threshold: Some(100),
            failure_rate: 0.5,
            volume_threshold: 10,
            ..Default::default()
        };
        let (mut b, t0) = classic(config);
        // Alternate: 50 % failures, never two in a row.
        for i in 0..9 {
            let outcome = if i % 2 == 0 { Outcome::Success } else { Outcome::Failure };
            assert!(call(&mut b, t0, outcome).is_none(), "below the volume threshold at call {i}");
        }
        let opened = call(&mut b, t0, Outcome::Failure).expect("10 calls, 50 % failed");
        assert_eq!(opened.to, State::Open);
        assert_eq!(opened.reason, "50% of 10 calls failed");
    }

    #[test]
    fn classic_failures_age_out_of_the_window() {
        let config = ClassicConfig {
            failure_threshold: Some(100),
            volume_threshold: 4,
            window_ms: 1_000,
            window_buckets: 10,
            ..Default::default()
        };
        let (mut b, t0) = classic(config);
        for _ in 0..3 {
            call(&mut b, t0, Outcome::Failure);
        }
        call(&mut b, t0, Outcome::Success);
        // Later, the old failures are gone: one failure among few calls is fine.
        let later = t0 + ms(1_500);
        assert!(call(&mut b, later, Outcome::Failure).is_none());
        assert_eq!(b.state, State::Closed);
    }

    #[test]
    fn classic_half_open_limits_probes_then_closes_after_the_success_threshold() {
        let config = ClassicConfig {
            failure_threshold: Some(1),
            success_threshold: 2,
            half_open_max: 2,
            open_ms: 1_000,
            ..Default::default()
        };
        let (mut b, t0) = classic(config);
        call(&mut b, t0, Outcome::Failure);
        let t1 = t0 + ms(1_000);
        let (first, to_half_open) = b.admit(t1);
        assert_eq!(to_half_open.expect("open timeout elapsed").to, State::HalfOpen);
        let first = first.expect("first probe");
        assert!(first.is_probe());
        let second = b.admit(t1).0.expect("second probe");
        let (third, _) = b.admit(t1);
        assert_eq!(third.unwrap_err().state, State::HalfOpen, "only half_open_max probes at once");
        // A cancelled probe frees its slot.
        b.release(second);
        let second = b.admit(t1).0.expect("slot freed");
        assert!(b.record(first, Outcome::Success, t1).is_none(), "one success is not enough");
        let closed = b.record(second, Outcome::Success, t1).expect("second success closes");
        assert_eq!((closed.from, closed.to), (State::HalfOpen, State::Closed));
        assert!(!b.admit(t1).0.expect("closed admits").is_probe());
    }

    #[test]
    fn classic_failed_probe_reopens_and_restarts_the_timer() {
        let config =
            ClassicConfig { failure_threshold: Some(1), open_ms: 1_000, max_open_ms: 1_000, ..Default::default() };
        let (mut b, t0) = classic(config);
        call(&mut b, t0, Outcome::Failure);
        let t1 = t0 + ms(1_000);
        let probe = b.admit(t1).0.expect("probe");
        let reopened = b.record(probe, Outcome::Failure, t1).expect("failed probe");
        assert_eq!((reopened.from, reopened.to), (State::HalfOpen, State::Open));
        assert_eq!(b.admit(t1 + ms(999)).0.unwrap_err().retry_after, ms(1));
        assert!(b.admit(t1 + ms(1_000)).0.is_ok());
    }

    #[test]
    fn classic_ignores_outcomes_from_before_a_transition_and_counts_slow_calls() {
        let config = ClassicConfig { failure_threshold: Some(2), slow_call_ms: Some(100), ..Default::default() };
        let (mut b, t0) = classic(config);
        let early = b.admit(t0).0.expect("closed");
        call(&mut b, t0, Outcome::Failure);
        // Slow successes are failures: this one is the second in a row.
        let slow = b.admit(t0).0.expect("closed");
        let opened = b.record(slow, Outcome::Success, t0 + ms(150)).expect("slow call counts as failure");
        assert_eq!(opened.to, State::Open);
        assert!(b.record(early, Outcome::Failure, t0 + ms(1)).is_none(), "stale permit ignored");
        assert_eq!(b.state, State::Open);
    }

    #[test]
    fn by_default_a_few_failures_among_many_calls_never_open_it_but_half_of_twenty_do() {
        let (mut b, t0) = classic(ClassicConfig::default());
        // One client's five failing requests, in a row, among others' successes.
        for _ in 0..5 {
            assert!(call(&mut b, t0, Outcome::Failure).is_none(), "five failures in a row do not open it");
        }
        for _ in 0..30 {
            assert!(call(&mut b, t0, Outcome::Success).is_none());
        }
        assert_eq!(b.state, State::Closed);
        // A backend failing half its calls over the volume threshold does.
        let (mut b, t0) = classic(ClassicConfig::default());
        for i in 0..19 {
            let outcome = if i % 2 == 0 { Outcome::Failure } else { Outcome::Success };
            assert!(call(&mut b, t0, outcome).is_none(), "below 20 calls at call {i}");
        }
        let opened = call(&mut b, t0, Outcome::Failure).expect("20 calls, 55 % failed");
        assert_eq!(opened.reason, "55% of 20 calls failed");
    }

    /// Opens the default breaker at `at` with twenty failures.
    fn open_default(b: &mut Classic, at: Instant) {
        for _ in 0..20 {
            call(b, at, Outcome::Failure);
        }
        assert_eq!(b.state, State::Open);
    }

    #[test]
    fn the_open_time_starts_near_a_second_and_doubles_while_probes_fail() {
        let (mut b, t0) = classic(ClassicConfig { max_open_ms: 4_000, ..Default::default() });
        open_default(&mut b, t0);
        assert_eq!(b.admit(t0 + ms(999)).0.unwrap_err().retry_after, ms(1), "first open: 1 s");
        let mut now = t0 + ms(1_000);
        for expected in [2_000, 4_000, 4_000] {
            let probe = b.admit(now).0.expect("probe");
            b.record(probe, Outcome::Failure, now).expect("reopens");
            assert_eq!(b.admit(now).0.unwrap_err().retry_after, ms(expected), "open for {expected} ms");
            now += ms(expected);
        }
        // The backend is back: three probes close it, and the next opening is short again.
        for _ in 0..3 {
            let probe = b.admit(now).0.expect("probe");
            b.record(probe, Outcome::Success, now);
        }
        assert_eq!(b.state, State::Closed);
        open_default(&mut b, now);
        assert_eq!(b.admit(now).0.unwrap_err().retry_after, ms(1_000), "closing reset the open time");
    }

    #[test]
    fn a_new_instance_or_an_essential_call_probes_an_open_circuit_at_once() {
        let (mut b, t0) = classic(ClassicConfig::default());
        assert!(b.probe_now(t0).is_none(), "closed: nothing to do");
        open_default(&mut b, t0);
        let half = b.probe_now(t0 + ms(10)).expect("half-opens");
        assert_eq!((half.from, half.to), (State::Open, State::HalfOpen));
        assert!(b.admit(t0 + ms(10)).0.expect("probe").is_probe());

        let (mut b, t0) = classic(ClassicConfig { half_open_max: 1, ..Default::default() });
        open_default(&mut b, t0);
        assert!(b.admit(t0).0.is_err(), "an ordinary call is refused");
        let (first, to_half) = b.admit_essential(t0);
        assert_eq!(to_half.expect("half-opens").to, State::HalfOpen);
        assert!(first.is_probe());
        let (second, none) = b.admit_essential(t0);
        assert!(none.is_none() && second.is_probe(), "never refused, even past half_open_max");
        assert!(b.admit(t0).0.is_err(), "ordinary calls still wait for a slot");
        b.record(first, Outcome::Success, t0);
        b.record(second, Outcome::Success, t0);
        let third = b.admit_essential(t0).0;
        assert_eq!(b.record(third, Outcome::Success, t0).expect("closes").to, State::Closed);
    }

    fn adaptive() -> (Adaptive, Instant) {
        let t0 = Instant::now();
        let config = AdaptiveConfig { window_ms: 10_000, window_buckets: 40, ..Default::default() };
        (Adaptive::new(config, t0), t0)
    }

    #[test]
    fn adaptive_drop_probability_follows_the_formula() {
        let (mut b, t0) = adaptive();
        for _ in 0..5 {
            let permit = b.admit(t0, 0.0).0.expect("protection lets the first calls through");
            b.record(permit, Outcome::Failure, t0);
        }
        assert_eq!(b.drop_probability(t0), 0.0, "total 5 = protection");
        for _ in 0..45 {
            let permit = Permit { generation: 0, probe: false, started: t0 };
            b.record(permit, Outcome::Failure, t0);
        }
        // (50 − 5 − 1.5·0) / 51
        assert!((b.drop_probability(t0) - 45.0 / 51.0).abs() < 1e-9);
        for _ in 0..10 {
            let permit = Permit { generation: 0, probe: false, started: t0 };
            b.record(permit, Outcome::Success, t0);
        }
        // (60 − 5 − 15) / 61
        assert!((b.drop_probability(t0) - 40.0 / 61.0).abs() < 1e-9);
        // A draw above the probability passes, one below is dropped.
        let (passed, throttling) = b.admit(t0 + ms(1), 0.99);
        assert!(passed.is_ok());
        assert_eq!(throttling.expect("starts dropping").to, State::Throttling);
        let (dropped, _) = b.admit(t0 + ms(2), 0.01);
        assert_eq!(dropped.unwrap_err().state, State::Throttling);
    }

    #[test]
    fn adaptive_forces_a_probe_each_second_and_recovers_within_one_window() {
        let (mut b, t0) = adaptive();
        // Backend down: 100 calls a second, each one that passes fails.
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let mut now = t0;
        let step = ms(10);
        let mut passed_while_down = 0;
        for _ in 0..2_000 {
            if let Ok(permit) = b.admit(now, rng.random()).0 {
                passed_while_down += 1;
                b.record(permit, Outcome::Failure, now);
            }
            now += step;
        }
        assert_eq!(b.state, State::Throttling);
        assert!(b.drop_probability(now) > 0.8, "{}", b.drop_probability(now));
        // 20 s at 100/s: 2,000 calls; only a small share reaches the dead backend.
        assert!(passed_while_down < 400, "{passed_while_down} calls hit a dead backend");
        // The draw of 0.0 always drops unless probing: probes alone get through,
        // one per second.
        let probe_at = now;
        let mut probes = 0;
        while now < probe_at + ms(3_000) {
            if let Ok(permit) = b.admit(now, 0.0).0 {
                assert!(permit.is_probe());
                probes += 1;
                b.record(permit, Outcome::Failure, now);
            }
            now += step;
        }
        assert!((2..=4).contains(&probes), "{probes} forced probes in 3 s");
        // Backend back: every call that passes succeeds. Within one window
        // (10 s) the breaker drops nothing again.
        let recovered_at = now;
        let mut closed_at = None;
        while now < recovered_at + ms(10_000) {
            let (admitted, transition) = b.admit(now, rng.random());
            if let Some(t) = transition
                && t.to == State::Closed
            {
                closed_at.get_or_insert(now);
            }
            if let Ok(permit) = admitted {
                b.record(permit, Outcome::Success, now);
            }
            now += step;
        }
        let closed_at = closed_at.expect("closed within one window of the recovery");
        assert!(closed_at <= recovered_at + ms(10_000));
        assert_eq!(b.drop_probability(now), 0.0);
    }

    #[test]
    fn adaptive_lets_through_k_times_the_success_rate() {
        let (mut b, t0) = adaptive();
        let mut rng = rand::rngs::StdRng::seed_from_u64(11);
        let mut now = t0;
        let (mut offered, mut admitted) = (0u32, 0u32);
        let mut flip = false;
        for i in 0..6_000 {
            let (result, _) = b.admit(now, rng.random());
            if i >= 3_000 {
                offered += 1;
            }
            if let Ok(permit) = result {
                flip = !flip;
                if i >= 3_000 {
                    admitted += 1;
                }
                let outcome = if flip { Outcome::Success } else { Outcome::Failure };
                b.record(permit, outcome, now);
            }
            now += ms(5);
        }
        // 50 % of what reaches the backend fails: k·s = 0.75 of calls pass.
        let share = f64::from(admitted) / f64::from(offered);
        assert!((0.65..0.85).contains(&share), "admitted share {share}");
    }
}
