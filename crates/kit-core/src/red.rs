//! RED figures (rate, errors, duration) out of an instance's Prometheus
//! exposition: cumulative totals, their differences between two scrapes, and
//! quantiles from histogram buckets as Prometheus' `histogram_quantile`
//! computes them. For whoever judges health from the outside: the console's
//! health view, the deploy controller's analysis. Pure.
use std::collections::BTreeMap;

/// gRPC codes that are the server's fault (the rest are the caller's).
pub const SERVER_SIDE_CODES: &[&str] =
    &["Unknown", "DeadlineExceeded", "ResourceExhausted", "Internal", "Unavailable", "DataLoss"];

/// Cumulative request counters and latency buckets of one instance (or sums).
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Totals {
    pub requests: f64,
    pub errors: f64,
    /// (upper bound in seconds, cumulative count), ascending, +Inf last.
    #[serde(with = "bounds")]
    pub buckets: Vec<(f64, f64)>,
}

/// Buckets in JSON, where +Inf has no number: its bound is written `null`.
mod bounds {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub fn serialize<S: Serializer>(buckets: &[(f64, f64)], serializer: S) -> Result<S::Ok, S::Error> {
        let finite: Vec<(Option<f64>, f64)> =
            buckets.iter().map(|&(le, count)| (le.is_finite().then_some(le), count)).collect();
        finite.serialize(serializer)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<(f64, f64)>, D::Error> {
        let finite: Vec<(Option<f64>, f64)> = Vec::deserialize(deserializer)?;
        Ok(finite.into_iter().map(|(le, count)| (le.unwrap_or(f64::INFINITY), count)).collect())
    }
}

impl Totals {
    /// `self - earlier`, or `self` when a counter went down (the process restarted).
    pub fn since(&self, earlier: &Totals) -> Totals {
        let reset = self.requests < earlier.requests
            || self.errors < earlier.errors
            || self.buckets.len() != earlier.buckets.len() && !earlier.buckets.is_empty();
        if reset {
            return self.clone();
        }
        let buckets = if earlier.buckets.is_empty() {
            self.buckets.clone()
        } else {
            self.buckets
                .iter()
                .zip(&earlier.buckets)
                .map(|(&(le, now), &(_, then))| (le, (now - then).max(0.0)))
                .collect()
        };
        Totals { requests: self.requests - earlier.requests, errors: self.errors - earlier.errors, buckets }
    }

    pub fn add(&mut self, other: &Totals) {
        self.requests += other.requests;
        self.errors += other.errors;
        add_buckets(&mut self.buckets, &other.buckets);
    }
}

fn add_buckets(into: &mut Vec<(f64, f64)>, from: &[(f64, f64)]) {
    for &(le, count) in from {
        match into.iter_mut().find(|(l, _)| *l == le) {
            Some((_, c)) => *c += count,
            None => into.push((le, count)),
        }
    }
    into.sort_by(|a, b| a.0.total_cmp(&b.0));
}

/// The q-quantile of cumulative buckets, interpolated within the bucket as
/// Prometheus' `histogram_quantile` does; `None` without observations.
pub fn quantile(buckets: &[(f64, f64)], q: f64) -> Option<f64> {
    let total = buckets.last()?.1;
    if total <= 0.0 {
        return None;
    }
    let rank = q * total;
    let mut previous = (0.0, 0.0);
    for &(le, count) in buckets {
        if count >= rank {
            if le.is_infinite() {
                return Some(previous.0);
            }
            let width = count - previous.1;
            let fraction = if width > 0.0 { (rank - previous.1) / width } else { 1.0 };
            return Some(previous.0 + (le - previous.0) * fraction);
        }
        previous = (le, count);
    }
    Some(previous.0)
}

/// What one exposition says: RED totals and the breakers' states
/// (dependency → 0 closed, 1 half-open, 2 open, 3 throttling).
#[derive(Debug, Clone, PartialEq)]
pub struct Exposition {
    pub totals: Totals,
    pub breakers: BTreeMap<String, f64>,
    /// The queue's gauges (`queue_depth`, `queue_lag_seconds`, …), the
    /// largest across label sets.
    pub queue: BTreeMap<String, f64>,
}

/// The queue gauges a console charts.
pub const QUEUE_GAUGES: &[&str] = &["queue_depth", "queue_pending", "queue_lag_messages", "queue_lag_seconds"];

/// Reads the exposition of an instance of `service` (the gateway counts HTTP
/// requests, the services gRPC calls); `None` if it is not one.
pub fn read_exposition(service: &str, text: &str) -> Option<Exposition> {
    let lines = text.lines().map(|l| Ok(l.to_string()));
    let scrape = prometheus_parse::Scrape::parse(lines).ok()?;
    let gateway = service == "gateway";
    let (requests, duration) = if gateway {
        ("gateway_requests_total", "gateway_request_duration_seconds")
    } else {
        ("grpc_server_requests_total", "grpc_server_request_duration_seconds")
    };
    let mut totals = Totals::default();
    let mut breakers = BTreeMap::new();
    let mut queue: BTreeMap<String, f64> = BTreeMap::new();
    for sample in &scrape.samples {
        match (&sample.value, sample.metric.as_str()) {
            (prometheus_parse::Value::Counter(v) | prometheus_parse::Value::Untyped(v), name) if name == requests => {
                totals.requests += v;
                let failed = if gateway {
                    sample.labels.get("status").is_some_and(|s| s.starts_with('5'))
                } else {
                    sample.labels.get("code").is_some_and(|c| SERVER_SIDE_CODES.contains(&c))
                };
                if failed {
                    totals.errors += v;
                }
            }
            (prometheus_parse::Value::Histogram(counts), name) if name == duration => {
                let buckets: Vec<(f64, f64)> = counts.iter().map(|c| (c.less_than, c.count)).collect();
                add_buckets(&mut totals.buckets, &buckets);
            }
            (prometheus_parse::Value::Gauge(v) | prometheus_parse::Value::Untyped(v), "circuit_breaker_state") => {
                if let Some(dependency) = sample.labels.get("service") {
                    breakers.insert(dependency.to_string(), *v);
                }
            }
            (prometheus_parse::Value::Gauge(v) | prometheus_parse::Value::Untyped(v), name)
                if QUEUE_GAUGES.contains(&name) =>
            {
                let seen = queue.entry(name.to_string()).or_insert(*v);
                *seen = seen.max(*v);
            }
            _ => {}
        }
    }
    Some(Exposition { totals, breakers, queue })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn totals_go_through_json_with_their_infinite_bucket() {
        let totals =
            Totals { requests: 3.0, errors: 1.0, buckets: vec![(0.005, 1.0), (0.1, 2.0), (f64::INFINITY, 3.0)] };
        let json = serde_json::to_string(&totals).unwrap_or_default();
        assert_eq!(serde_json::from_str::<Totals>(&json).ok(), Some(totals));
    }
}
