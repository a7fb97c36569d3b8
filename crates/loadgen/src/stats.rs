//! Live statistics over a sliding window: request rate, outcomes by class and
//! latency percentiles. Time is an argument, so the arithmetic is tested
//! without a clock.
use std::collections::VecDeque;

use serde::Serialize;

/// How a request ended, as a client sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Success,
    /// 4xx other than 429.
    ClientError,
    RateLimited,
    ServerError,
    /// No HTTP answer: refused connection, timeout.
    Failed,
}

impl Outcome {
    pub fn of_status(status: u16) -> Self {
        match status {
            429 => Outcome::RateLimited,
            400..=499 => Outcome::ClientError,
            500..=599 => Outcome::ServerError,
            _ => Outcome::Success,
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Counts {
    pub success: u64,
    pub client_error: u64,
    pub rate_limited: u64,
    pub server_error: u64,
    pub failed: u64,
}

impl Counts {
    fn add(&mut self, outcome: Outcome) {
        match outcome {
            Outcome::Success => self.success += 1,
            Outcome::ClientError => self.client_error += 1,
            Outcome::RateLimited => self.rate_limited += 1,
            Outcome::ServerError => self.server_error += 1,
            Outcome::Failed => self.failed += 1,
        }
    }

    pub fn total(&self) -> u64 {
        self.success + self.client_error + self.rate_limited + self.server_error + self.failed
    }
}

/// What the window shows now.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Snapshot {
    pub window_secs: f64,
    /// Requests answered per second over the window.
    pub rps: f64,
    pub window: Counts,
    pub p50_ms: f64,
    pub p95_ms: f64,
    pub p99_ms: f64,
    /// Since the start.
    pub total: Counts,
    pub journeys_started: u64,
    /// Journeys not started because too many were in flight (the generator's
    /// own cap, so an overload cannot exhaust the machine it runs on).
    pub journeys_skipped: u64,
}

pub struct Stats {
    window_ms: i64,
    recent: VecDeque<(i64, f64, Outcome)>,
    total: Counts,
    journeys_started: u64,
    journeys_skipped: u64,
}

impl Stats {
    pub fn new(window_ms: i64) -> Self {
        Self { window_ms, recent: VecDeque::new(), total: Counts::default(), journeys_started: 0, journeys_skipped: 0 }
    }

    pub fn record(&mut self, now_ms: i64, latency_ms: f64, outcome: Outcome) {
        self.total.add(outcome);
        self.recent.push_back((now_ms, latency_ms, outcome));
        self.trim(now_ms);
    }

    pub fn journey_started(&mut self) {
        self.journeys_started += 1;
    }

    pub fn journey_skipped(&mut self) {
        self.journeys_skipped += 1;
    }

    fn trim(&mut self, now_ms: i64) {
        while self.recent.front().is_some_and(|(at, ..)| *at <= now_ms - self.window_ms) {
            self.recent.pop_front();
        }
    }

    pub fn snapshot(&mut self, now_ms: i64) -> Snapshot {
        self.trim(now_ms);
        let mut window = Counts::default();
        let mut latencies: Vec<f64> = Vec::with_capacity(self.recent.len());
        for (_, latency, outcome) in &self.recent {
            window.add(*outcome);
            latencies.push(*latency);
        }
        latencies.sort_by(f64::total_cmp);
        let percentile = |p: f64| {
            if latencies.is_empty() { 0.0 } else { latencies[((latencies.len() - 1) as f64 * p).round() as usize] }
        };
        let window_secs = self.window_ms as f64 / 1_000.0;
        Snapshot {
            window_secs,
            rps: window.total() as f64 / window_secs,
            window,
            p50_ms: percentile(0.5),
            p95_ms: percentile(0.95),
            p99_ms: percentile(0.99),
            total: self.total,
            journeys_started: self.journeys_started,
            journeys_skipped: self.journeys_skipped,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_window_slides_and_counts_by_class() {
        let mut stats = Stats::new(1_000);
        for i in 0..100 {
            let outcome = match i % 10 {
                0 => Outcome::RateLimited,
                1 => Outcome::of_status(503),
                2 => Outcome::of_status(404),
                3 => Outcome::Failed,
                _ => Outcome::of_status(200),
            };
            stats.record(i * 10, (i + 1) as f64, outcome);
        }
        let now = stats.snapshot(999);
        assert_eq!(now.rps, 100.0);
        assert_eq!(
            now.window,
            Counts { success: 60, client_error: 10, rate_limited: 10, server_error: 10, failed: 10 }
        );
        assert_eq!((now.p50_ms, now.p95_ms, now.p99_ms), (51.0, 95.0, 99.0));
        // Half a second later half of it has left the window; totals stay.
        let later = stats.snapshot(1_499);
        assert_eq!(later.window.total(), 50);
        assert_eq!(later.total.total(), 100);
        let quiet = stats.snapshot(5_000);
        assert_eq!((quiet.rps, quiet.p99_ms), (0.0, 0.0));
    }
}
