//! Service health from scraped metrics: RED per service over a sliding
//! window (rate, errors, p50/p95 from histogram buckets), green/yellow/red
//! against thresholds, breaker states, and alerts with a "for" duration — the
//! same three rules as `deploy/prometheus/rules.yml`: error ratio above 5 %,
//! p95 above twice its baseline, no traffic. Pure: time is an argument.
use std::collections::{BTreeMap, HashMap, VecDeque};

use kit_core::red::{Totals, quantile};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HealthConfig {
    /// The window RED figures are computed over.
    pub window_ms: u64,
    /// How long a condition must hold before its alert fires.
    pub alert_for_ms: u64,
    /// Error ratio: yellow at or above `error_ratio_warn`, red (and the
    /// alert) above `error_ratio_alert`.
    pub error_ratio_warn: f64,
    pub error_ratio_alert: f64,
    /// p95 latency: yellow at or above `p95_warn_ms`, red at `p95_bad_ms`.
    pub p95_warn_ms: f64,
    pub p95_bad_ms: f64,
    /// The latency baseline: the p95 over `baseline_ms` ending `baseline_gap_ms` ago.
    pub baseline_ms: u64,
    pub baseline_gap_ms: u64,
    /// Requests the baseline needs to count.
    pub baseline_min_requests: f64,
    /// The alert fires when p95 exceeds `latency_factor` × baseline.
    pub latency_factor: f64,
}

impl Default for HealthConfig {
    fn default() -> Self {
        Self {
            window_ms: 60_000,
            alert_for_ms: 120_000,
            error_ratio_warn: 0.01,
            error_ratio_alert: 0.05,
            p95_warn_ms: 500.0,
            p95_bad_ms: 2_000.0,
            // As the Prometheus rule: `[1h] offset 5m`.
            baseline_ms: 60 * 60_000,
            baseline_gap_ms: 5 * 60_000,
            baseline_min_requests: 50.0,
            latency_factor: 2.0,
        }
    }
}

impl HealthConfig {
    pub fn check(&self) -> Result<(), String> {
        if self.window_ms == 0 || self.baseline_ms == 0 {
            return Err("health.window_ms and health.baseline_ms must be above 0".into());
        }
        let ratios = [self.error_ratio_warn, self.error_ratio_alert];
        if ratios.iter().any(|r| !(0.0..=1.0).contains(r)) || self.error_ratio_warn > self.error_ratio_alert {
            return Err("health error ratios must lie in 0..=1 with warn <= alert".into());
        }
        let latency_ok = self.p95_warn_ms > 0.0 && self.p95_warn_ms <= self.p95_bad_ms && self.latency_factor > 1.0;
        if !latency_ok {
            return Err("health: need 0 < p95_warn_ms <= p95_bad_ms and latency_factor > 1".into());
        }
        Ok(())
    }
}

/// What one scrape of one instance said.
#[derive(Debug, Clone, PartialEq)]
pub struct InstanceScrape {
    pub service: String,
    pub instance_id: String,
    /// `None`: the scrape failed.
    pub totals: Option<Totals>,
    /// The instance's breakers: dependency → state (0 closed, 1 half-open, 2 open, 3 throttling).
    pub breakers: BTreeMap<String, f64>,
    /// The queue's gauges it reports (depth, pending, lag).
    pub queue: BTreeMap<String, f64>,
}

/// RED totals and breakers out of a Prometheus text exposition.
pub fn read_exposition(service: &str, instance_id: &str, text: &str) -> InstanceScrape {
    let (totals, breakers, queue) = match kit_core::red::read_exposition(service, text) {
        Some(read) => (Some(read.totals), read.breakers, read.queue),
        None => (None, BTreeMap::new(), BTreeMap::new()),
    };
    InstanceScrape { service: service.into(), instance_id: instance_id.into(), totals, breakers, queue }
}

/// One scrape round's change for one service.
#[derive(Debug, Clone)]
struct Delta {
    at_ms: i64,
    totals: Totals,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Green,
    Yellow,
    Red,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ServiceHealth {
    pub service: String,
    pub status: Status,
    /// Why it is not green.
    pub reasons: Vec<String>,
    pub instances: usize,
    pub instances_scraped: usize,
    pub requests_per_sec: f64,
    pub error_ratio: f64,
    pub p50_ms: Option<f64>,
    pub p95_ms: Option<f64>,
    pub baseline_p95_ms: Option<f64>,
    /// This service's breakers toward its dependencies, by state name.
    pub breakers: BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Alert {
    /// HighErrorRate, LatencyAboveBaseline or NoTraffic.
    pub name: String,
    pub service: String,
    /// pending until the condition has held for `alert_for_ms`, then firing.
    pub state: String,
    pub since_ms: i64,
    pub summary: String,
}

pub fn breaker_state_name(value: f64) -> &'static str {
    match value as i64 {
        0 => "closed",
        1 => "half-open",
        2 => "open",
        3 => "throttling",
        _ => "unknown",
    }
}

/// The history of every service and the alerts' pending clocks.
#[derive(Debug, Default)]
pub struct Monitor {
    config: HealthConfig,
    last: HashMap<String, Totals>,
    history: BTreeMap<String, VecDeque<Delta>>,
    latest: BTreeMap<String, Vec<InstanceScrape>>,
    pending: HashMap<(String, String), (i64, String)>,
    /// The queue's gauges at each round (as long as the history is kept).
    queue: VecDeque<(i64, BTreeMap<String, f64>)>,
}

/// One point of a service's series: over the step ending at `at_ms`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Point {
    pub at_ms: i64,
    pub requests_per_sec: f64,
    pub error_ratio: f64,
    pub p95_ms: Option<f64>,
}

/// Time series for the console's charts.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Series {
    pub step_ms: i64,
    pub services: BTreeMap<String, Vec<Point>>,
    /// Gauge → (time, the largest value any instance reported in the step).
    pub queue: BTreeMap<String, Vec<(i64, f64)>>,
}

impl Monitor {
    pub fn new(config: HealthConfig) -> Self {
        Self { config, ..Default::default() }
    }

    /// Takes one scrape round (every registered instance, scraped or not).
    pub fn observe(&mut self, now_ms: i64, scrapes: Vec<InstanceScrape>) {
        let mut deltas: BTreeMap<String, Totals> = BTreeMap::new();
        for scrape in &scrapes {
            let delta = deltas.entry(scrape.service.clone()).or_default();
            if let Some(totals) = &scrape.totals {
                if let Some(earlier) = self.last.get(&scrape.instance_id) {
                    delta.add(&totals.since(earlier));
                }
                self.last.insert(scrape.instance_id.clone(), totals.clone());
            }
        }
        // Instances gone from the registry are forgotten.
        self.last.retain(|id, _| scrapes.iter().any(|s| &s.instance_id == id));
        let keep_ms = (self.config.baseline_ms + self.config.baseline_gap_ms + self.config.window_ms) as i64;
        let mut queue: BTreeMap<String, f64> = BTreeMap::new();
        for scrape in &scrapes {
            for (name, value) in &scrape.queue {
                let seen = queue.entry(name.clone()).or_insert(*value);
                *seen = seen.max(*value);
            }
        }
        if !queue.is_empty() {
            self.queue.push_back((now_ms, queue));
        }
        while self.queue.front().is_some_and(|(at, _)| *at < now_ms - keep_ms) {
            self.queue.pop_front();
        }
        for (service, totals) in deltas {
            let history = self.history.entry(service).or_default();
            history.push_back(Delta { at_ms: now_ms, totals });
            while history.front().is_some_and(|d| d.at_ms < now_ms - keep_ms) {
                history.pop_front();
            }
        }
        self.latest = BTreeMap::new();
        for scrape in scrapes {
            self.latest.entry(scrape.service.clone()).or_default().push(scrape);
        }
        self.evaluate_alerts(now_ms);
    }

    /// The sum of a service's changes in (from, to].
    fn sum(&self, service: &str, from_ms: i64, to_ms: i64) -> Totals {
        let mut sum = Totals::default();
        for delta in self.history.get(service).into_iter().flatten() {
            if delta.at_ms > from_ms && delta.at_ms <= to_ms {
                sum.add(&delta.totals);
            }
        }
        sum
    }

    fn baseline_p95_ms(&self, service: &str, now_ms: i64) -> Option<f64> {
        let end = now_ms - self.config.baseline_gap_ms as i64;
        let base = self.sum(service, end - self.config.baseline_ms as i64, end);
        if base.requests < self.config.baseline_min_requests {
            return None;
        }
        quantile(&base.buckets, 0.95).map(|s| s * 1e3)
    }

    /// Every service's rate, error ratio and p95, and the queue's gauges,
    /// over the `span_ms` before `now_ms` in steps of `step_ms`.
    pub fn series(&self, now_ms: i64, span_ms: i64, step_ms: i64) -> Series {
        let step_ms = step_ms.max(1);
        let steps = (span_ms / step_ms).clamp(1, 1_000);
        let start = now_ms - steps * step_ms;
        let mut services = BTreeMap::new();
        for service in self.history.keys() {
            let points = (1..=steps)
                .map(|n| {
                    let to = start + n * step_ms;
                    let window = self.sum(service, to - step_ms, to);
                    Point {
                        at_ms: to,
                        requests_per_sec: window.requests * 1e3 / step_ms as f64,
                        error_ratio: if window.requests > 0.0 { window.errors / window.requests } else { 0.0 },
                        p95_ms: quantile(&window.buckets, 0.95).map(|s| s * 1e3),
                    }
                })
                .collect();
            services.insert(service.clone(), points);
        }
        let mut queue: BTreeMap<String, Vec<(i64, f64)>> = BTreeMap::new();
        for n in 1..=steps {
            let to = start + n * step_ms;
            for (_, gauges) in self.queue.iter().filter(|(at, _)| *at > to - step_ms && *at <= to) {
                for (name, value) in gauges {
                    let points = queue.entry(name.clone()).or_default();
                    match points.last_mut() {
                        Some((at, seen)) if *at == to => *seen = seen.max(*value),
                        _ => points.push((to, *value)),
                    }
                }
            }
        }
        Series { step_ms, services, queue }
    }

    /// Health of every service seen in the last round.
    pub fn overview(&self, now_ms: i64) -> Vec<ServiceHealth> {
        let window_secs = self.config.window_ms as f64 / 1e3;
        // Breakers held toward each service, by the callers that hold them.
        let mut held: BTreeMap<&str, Vec<(String, f64)>> = BTreeMap::new();
        for scrapes in self.latest.values() {
            for scrape in scrapes {
                for (dependency, state) in &scrape.breakers {
                    held.entry(dependency.as_str()).or_default().push((scrape.service.clone(), *state));
                }
            }
        }
        self.latest
            .iter()
            .map(|(service, scrapes)| {
                let window = self.sum(service, now_ms - self.config.window_ms as i64, now_ms);
                let error_ratio = if window.requests > 0.0 { window.errors / window.requests } else { 0.0 };
                let p50_ms = quantile(&window.buckets, 0.50).map(|s| s * 1e3);
                let p95_ms = quantile(&window.buckets, 0.95).map(|s| s * 1e3);
                let scraped = scrapes.iter().filter(|s| s.totals.is_some()).count();
                let mut breakers = BTreeMap::new();
                for scrape in scrapes {
                    for (dependency, state) in &scrape.breakers {
                        // The worst state among this service's instances.
                        let worst = breakers.get(dependency).copied().unwrap_or(0.0_f64).max(*state);
                        breakers.insert(dependency.clone(), worst);
                    }
                }
                let mut red = Vec::new();
                let mut yellow = Vec::new();
                let c = &self.config;
                if error_ratio > c.error_ratio_alert {
                    red.push(format!("{:.1} % errors", error_ratio * 100.0));
                } else if error_ratio >= c.error_ratio_warn && window.errors > 0.0 {
                    yellow.push(format!("{:.1} % errors", error_ratio * 100.0));
                }
                match p95_ms {
                    Some(p) if p >= c.p95_bad_ms => red.push(format!("p95 {p:.0} ms")),
                    Some(p) if p >= c.p95_warn_ms => yellow.push(format!("p95 {p:.0} ms")),
                    _ => {}
                }
                if scraped == 0 {
                    red.push("no instance answers /metrics".into());
                } else if scraped < scrapes.len() {
                    yellow.push(format!("{} of {} instances not scraped", scrapes.len() - scraped, scrapes.len()));
                }
                for (caller, state) in held.get(service.as_str()).into_iter().flatten() {
                    match *state as i64 {
                        2 => red.push(format!("breaker open in {caller}")),
                        1 | 3 => yellow.push(format!("breaker {} in {caller}", breaker_state_name(*state))),
                        _ => {}
                    }
                }
                let status = if !red.is_empty() {
                    Status::Red
                } else if !yellow.is_empty() {
                    Status::Yellow
                } else {
                    Status::Green
                };
                red.extend(yellow);
                red.dedup();
                ServiceHealth {
                    service: service.clone(),
                    status,
                    reasons: red,
                    instances: scrapes.len(),
                    instances_scraped: scraped,
                    requests_per_sec: window.requests / window_secs,
                    error_ratio,
                    p50_ms,
                    p95_ms,
                    baseline_p95_ms: self.baseline_p95_ms(service, now_ms),
                    breakers: breakers.into_iter().map(|(d, s)| (d, breaker_state_name(s).to_string())).collect(),
                }
            })
            .collect()
    }

    fn evaluate_alerts(&mut self, now_ms: i64) {
        let c = self.config.clone();
        let mut holding: Vec<((String, String), String)> = Vec::new();
        for service in self.latest.keys() {
            let window = self.sum(service, now_ms - c.window_ms as i64, now_ms);
            if window.requests > 0.0 && window.errors / window.requests > c.error_ratio_alert {
                let summary = format!(
                    "{service}: {:.1} % of requests failed over the last {} s (threshold {:.0} %)",
                    window.errors / window.requests * 100.0,
                    c.window_ms / 1000,
                    c.error_ratio_alert * 100.0
                );
                holding.push((("HighErrorRate".into(), service.clone()), summary));
            }
            if let (Some(p95), Some(baseline)) =
                (quantile(&window.buckets, 0.95).map(|s| s * 1e3), self.baseline_p95_ms(service, now_ms))
                && p95 > c.latency_factor * baseline
            {
                let summary = format!(
                    "{service}: p95 {p95:.0} ms is above {}× its baseline of {baseline:.0} ms",
                    c.latency_factor
                );
                holding.push((("LatencyAboveBaseline".into(), service.clone()), summary));
            }
            let earlier = self.sum(service, i64::MIN, now_ms - c.window_ms as i64);
            if window.requests == 0.0 && earlier.requests > 0.0 {
                let summary = format!("{service}: no requests for {} s after earlier traffic", c.window_ms / 1000);
                holding.push((("NoTraffic".into(), service.clone()), summary));
            }
        }
        let mut pending = HashMap::new();
        for (key, summary) in holding {
            let since = self.pending.get(&key).map(|(since, _)| *since).unwrap_or(now_ms);
            pending.insert(key, (since, summary));
        }
        self.pending = pending;
    }

    /// Conditions that hold now: firing once held for `alert_for_ms`.
    pub fn alerts(&self, now_ms: i64) -> Vec<Alert> {
        let mut alerts: Vec<Alert> = self
            .pending
            .iter()
            .map(|((name, service), (since, summary))| Alert {
                name: name.clone(),
                service: service.clone(),
                state: if now_ms - since >= self.config.alert_for_ms as i64 { "firing" } else { "pending" }.into(),
                since_ms: *since,
                summary: summary.clone(),
            })
            .collect();
        alerts.sort_by(|a, b| (&a.service, &a.name).cmp(&(&b.service, &b.name)));
        alerts
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BUCKETS: [f64; 4] = [0.01, 0.1, 1.0, f64::INFINITY];

    /// Cumulative totals: `fast` requests under 10 ms, `slow` between 0.1 and 1 s.
    fn totals(fast: f64, slow: f64, errors: f64) -> Totals {
        let counts = [fast, fast, fast + slow, fast + slow];
        Totals { requests: fast + slow, errors, buckets: BUCKETS.iter().copied().zip(counts).collect() }
    }

    fn scrape(service: &str, id: &str, totals: Option<Totals>) -> InstanceScrape {
        InstanceScrape {
            service: service.into(),
            instance_id: id.into(),
            totals,
            breakers: BTreeMap::new(),
            queue: BTreeMap::new(),
        }
    }

    fn config() -> HealthConfig {
        HealthConfig {
            window_ms: 10_000,
            alert_for_ms: 20_000,
            baseline_ms: 100_000,
            // Longer than window + alert_for, so a slowdown fires before the
            // baseline takes it in.
            baseline_gap_ms: 60_000,
            baseline_min_requests: 10.0,
            ..Default::default()
        }
    }

    #[test]
    fn series_chart_each_step_and_the_queue_gauges() {
        let mut m = Monitor::new(config());
        let mut worker = scrape("fulfilment", "w", Some(Totals::default()));
        for (n, depth) in [(0, 0.0), (1, 40.0), (2, 120.0), (3, 10.0)] {
            worker.queue =
                BTreeMap::from([("queue_depth".to_string(), depth), ("queue_lag_seconds".into(), depth / 10.0)]);
            let orders = scrape("orders", "a", Some(totals(100.0 * f64::from(n), f64::from(n), f64::from(n))));
            m.observe(i64::from(n) * 10_000, vec![orders, worker.clone()]);
        }
        let series = m.series(30_000, 30_000, 10_000);
        let orders = &series.services["orders"];
        assert_eq!(orders.len(), 3);
        // Each step: what changed in it (101 requests, 1 error, 10 s).
        assert!((orders[2].requests_per_sec - 10.1).abs() < 1e-9, "{orders:?}");
        assert!((orders[2].error_ratio - 1.0 / 101.0).abs() < 1e-9);
        assert!(orders[2].p95_ms.is_some());
        assert_eq!(series.queue["queue_depth"], vec![(10_000, 40.0), (20_000, 120.0), (30_000, 10.0)]);
        assert_eq!(series.queue["queue_lag_seconds"][1], (20_000, 12.0));
    }

    #[test]
    fn quantiles_interpolate_within_the_bucket() {
        let buckets = [(0.1, 50.0), (0.2, 100.0), (f64::INFINITY, 100.0)];
        assert!((quantile(&buckets, 0.5).unwrap() - 0.1).abs() < 1e-9);
        assert!((quantile(&buckets, 0.75).unwrap() - 0.15).abs() < 1e-9);
        assert_eq!(quantile(&[(0.1, 0.0), (f64::INFINITY, 0.0)], 0.5), None);
        // Everything beyond the last finite bound: that bound.
        assert_eq!(quantile(&[(0.1, 0.0), (f64::INFINITY, 4.0)], 0.5), Some(0.1));
    }

    #[test]
    fn red_figures_come_from_what_changed_in_the_window_across_instances() {
        let mut m = Monitor::new(config());
        m.observe(
            0,
            vec![
                scrape("orders", "a", Some(totals(100.0, 0.0, 0.0))),
                scrape("orders", "b", Some(totals(0.0, 0.0, 0.0))),
            ],
        );
        m.observe(
            5_000,
            vec![
                scrape("orders", "a", Some(totals(150.0, 0.0, 0.0))),
                scrape("orders", "b", Some(totals(50.0, 0.0, 0.0))),
            ],
        );
        let h = &m.overview(5_000)[0];
        // 100 new requests over a 10-s window: 10/s; the first round only sets the start.
        assert!((h.requests_per_sec - 10.0).abs() < 1e-9, "{h:?}");
        assert_eq!(h.status, Status::Green);
        assert!(h.p95_ms.unwrap() <= 10.0);
        assert_eq!(h.instances, 2);
    }

    #[test]
    fn a_restarted_instance_counts_from_zero_instead_of_going_negative() {
        let mut m = Monitor::new(config());
        m.observe(0, vec![scrape("users", "a", Some(totals(1000.0, 0.0, 0.0)))]);
        m.observe(5_000, vec![scrape("users", "a", Some(totals(30.0, 0.0, 0.0)))]);
        assert!((m.overview(5_000)[0].requests_per_sec - 3.0).abs() < 1e-9);
    }

    #[test]
    fn status_turns_yellow_then_red_with_errors_latency_and_missing_instances() {
        let mut m = Monitor::new(config());
        m.observe(0, vec![scrape("p", "a", Some(totals(0.0, 0.0, 0.0)))]);
        m.observe(1_000, vec![scrape("p", "a", Some(totals(98.0, 0.0, 2.0)))]);
        let h = &m.overview(1_000)[0];
        assert_eq!(h.status, Status::Yellow, "{h:?}");
        m.observe(2_000, vec![scrape("p", "a", Some(totals(98.0, 0.0, 12.0)))]);
        assert_eq!(m.overview(2_000)[0].status, Status::Red);
        // Slow requests: p95 inside (0.1, 1] s → above 500 ms warns.
        let mut slow = Monitor::new(config());
        slow.observe(0, vec![scrape("p", "a", Some(totals(0.0, 0.0, 0.0)))]);
        slow.observe(1_000, vec![scrape("p", "a", Some(totals(0.0, 100.0, 0.0)))]);
        let h = &slow.overview(1_000)[0];
        assert_eq!(h.status, Status::Yellow, "{h:?}");
        slow.observe(2_000, vec![scrape("p", "a", None)]);
        let h = &slow.overview(2_000)[0];
        assert_eq!(h.status, Status::Red);
        assert!(h.reasons.iter().any(|r| r.contains("no instance")), "{h:?}");
    }

    #[test]
    fn an_open_breaker_toward_a_service_turns_it_red() {
        let mut m = Monitor::new(config());
        let mut gateway = scrape("gateway", "g", Some(totals(0.0, 0.0, 0.0)));
        gateway.breakers.insert("products".into(), 2.0);
        m.observe(0, vec![gateway, scrape("products", "p", Some(totals(0.0, 0.0, 0.0)))]);
        let overview = m.overview(0);
        let products = overview.iter().find(|h| h.service == "products").unwrap();
        assert_eq!(products.status, Status::Red);
        assert_eq!(products.reasons, vec!["breaker open in gateway".to_string()]);
        let gateway = overview.iter().find(|h| h.service == "gateway").unwrap();
        assert_eq!(gateway.breakers["products"], "open");
    }

    #[test]
    fn an_error_alert_is_pending_then_fires_after_its_for_duration_and_clears() {
        let mut m = Monitor::new(config());
        let mut errors = 0.0;
        let mut requests = 0.0;
        for t in 0..=6 {
            requests += 100.0;
            errors += 10.0;
            m.observe(t * 5_000, vec![scrape("p", "a", Some(totals(requests, 0.0, errors)))]);
        }
        // Condition since t=5 s (the first change): firing from 25 s on.
        let alerts = m.alerts(30_000);
        assert_eq!(alerts.len(), 1, "{alerts:?}");
        assert_eq!((alerts[0].name.as_str(), alerts[0].state.as_str()), ("HighErrorRate", "firing"));
        assert_eq!(m.alerts(20_000)[0].state, "pending");
        // Clean traffic: the window forgets the errors and the alert goes.
        for t in 7..=10 {
            requests += 100.0;
            m.observe(t * 5_000, vec![scrape("p", "a", Some(totals(requests, 0.0, errors)))]);
        }
        assert!(m.alerts(50_000).is_empty());
    }

    #[test]
    fn silence_after_traffic_raises_no_traffic_but_a_service_never_used_does_not() {
        let mut m = Monitor::new(config());
        m.observe(
            0,
            vec![scrape("p", "a", Some(totals(0.0, 0.0, 0.0))), scrape("q", "b", Some(totals(0.0, 0.0, 0.0)))],
        );
        m.observe(
            5_000,
            vec![scrape("p", "a", Some(totals(10.0, 0.0, 0.0))), scrape("q", "b", Some(totals(0.0, 0.0, 0.0)))],
        );
        for t in 2..=9 {
            m.observe(
                t * 5_000,
                vec![scrape("p", "a", Some(totals(10.0, 0.0, 0.0))), scrape("q", "b", Some(totals(0.0, 0.0, 0.0)))],
            );
        }
        let alerts = m.alerts(45_000);
        assert_eq!(alerts.len(), 1, "{alerts:?}");
        assert_eq!(
            (alerts[0].name.as_str(), alerts[0].service.as_str(), alerts[0].state.as_str()),
            ("NoTraffic", "p", "firing")
        );
    }

    #[test]
    fn latency_twice_the_baseline_alerts() {
        let mut m = Monitor::new(config());
        let (mut fast, mut slow) = (0.0, 0.0);
        // 150 s of fast traffic, then slow traffic.
        for t in 0..=40 {
            if t <= 30 {
                fast += 50.0
            } else {
                slow += 50.0
            }
            m.observe(t * 5_000, vec![scrape("p", "a", Some(totals(fast, slow, 0.0)))]);
        }
        let alerts = m.alerts(200_000);
        let latency = alerts.iter().find(|a| a.name == "LatencyAboveBaseline").expect("latency alert");
        assert_eq!(latency.state, "firing");
        let h = &m.overview(200_000)[0];
        assert!(h.baseline_p95_ms.is_some() && h.p95_ms.unwrap() > 2.0 * h.baseline_p95_ms.unwrap(), "{h:?}");
    }

    #[test]
    fn exposition_text_gives_red_totals_and_breakers() {
        let text = "\
# TYPE grpc_server_requests_total counter
grpc_server_requests_total{service=\"orders\",method=\"/o/Create\",code=\"Ok\"} 90
grpc_server_requests_total{service=\"orders\",method=\"/o/Create\",code=\"Unavailable\"} 6
grpc_server_requests_total{service=\"orders\",method=\"/o/Create\",code=\"NotFound\"} 4
# TYPE grpc_server_request_duration_seconds histogram
grpc_server_request_duration_seconds_bucket{service=\"orders\",method=\"/o/Create\",code=\"Ok\",le=\"0.1\"} 80
grpc_server_request_duration_seconds_bucket{service=\"orders\",method=\"/o/Create\",code=\"Ok\",le=\"+Inf\"} 90
grpc_server_request_duration_seconds_sum{service=\"orders\",method=\"/o/Create\",code=\"Ok\"} 3
grpc_server_request_duration_seconds_count{service=\"orders\",method=\"/o/Create\",code=\"Ok\"} 90
grpc_server_request_duration_seconds_bucket{service=\"orders\",method=\"/o/Create\",code=\"Unavailable\",le=\"0.1\"} 10
grpc_server_request_duration_seconds_bucket{service=\"orders\",method=\"/o/Create\",code=\"Unavailable\",le=\"+Inf\"} 10
# TYPE circuit_breaker_state gauge
circuit_breaker_state{service=\"payments\"} 2
";
        let scrape = read_exposition("orders", "i1", text);
        let totals = scrape.totals.unwrap();
        assert_eq!((totals.requests, totals.errors), (100.0, 6.0));
        assert_eq!(totals.buckets, vec![(0.1, 90.0), (f64::INFINITY, 100.0)]);
        assert_eq!(scrape.breakers["payments"], 2.0);
        let gateway = read_exposition(
            "gateway",
            "g",
            "gateway_requests_total{route=\"a\",status=\"503\"} 2\ngateway_requests_total{route=\"a\",status=\"200\"} 8\n",
        );
        let totals = gateway.totals.unwrap();
        assert_eq!((totals.requests, totals.errors), (10.0, 2.0));
    }

    #[test]
    fn bad_thresholds_are_refused() {
        assert!(HealthConfig::default().check().is_ok());
        assert!(HealthConfig { error_ratio_warn: 0.5, error_ratio_alert: 0.1, ..Default::default() }.check().is_err());
        assert!(HealthConfig { window_ms: 0, ..Default::default() }.check().is_err());
        assert!(HealthConfig { latency_factor: 1.0, ..Default::default() }.check().is_err());
    }
}
