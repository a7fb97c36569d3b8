//! The gateway's per-request RED metrics. Their handles are registered once
//! per (route, status) and kept: looking them up by labels on every request
//! (building the key, hashing it, finding it in the recorder) showed in the
//! gateway's profile. Both labels come from bounded sets (route templates,
//! status labels), so the table stays small.
use std::collections::HashMap;
use std::sync::RwLock;
use std::time::Duration;

use metrics::{Counter, Histogram};

#[derive(Clone)]
struct Meter {
    requests: Counter,
    duration: Histogram,
}

#[derive(Default)]
pub struct RequestMeters {
    known: RwLock<HashMap<(&'static str, &'static str), Meter>>,
}

impl RequestMeters {
    /// Counts one request to `route` answered with `status`, and its duration.
    pub fn record(&self, route: &'static str, status: &'static str, elapsed: Duration) {
        let known = self.known.read().ok().and_then(|known| known.get(&(route, status)).cloned());
        let meter = known.unwrap_or_else(|| self.register(route, status));
        meter.requests.increment(1);
        meter.duration.record(elapsed.as_secs_f64());
    }

    fn register(&self, route: &'static str, status: &'static str) -> Meter {
        let meter = Meter {
            requests: metrics::counter!("gateway_requests_total", "route" => route, "status" => status),
            duration: metrics::histogram!("gateway_request_duration_seconds", "route" => route, "status" => status),
        };
        if let Ok(mut known) = self.known.write() {
            known.insert((route, status), meter.clone());
        }
        meter
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use metrics_exporter_prometheus::PrometheusBuilder;

    #[test]
    fn requests_are_counted_per_route_and_status_with_their_durations() {
        let recorder = PrometheusBuilder::new().build_recorder();
        let handle = recorder.handle();
        metrics::with_local_recorder(&recorder, || {
            let meters = RequestMeters::default();
            meters.record("GET /v1/products/{id}", "200", Duration::from_millis(3));
            meters.record("GET /v1/products/{id}", "200", Duration::from_millis(5));
            meters.record("GET /v1/products/{id}", "404", Duration::from_millis(1));
        });
        let text = handle.render();
        assert!(text.contains(r#"gateway_requests_total{route="GET /v1/products/{id}",status="200"} 2"#), "{text}");
        assert!(text.contains(r#"gateway_requests_total{route="GET /v1/products/{id}",status="404"} 1"#), "{text}");
        assert!(
            text.contains(r#"gateway_request_duration_seconds_count{route="GET /v1/products/{id}",status="200"} 2"#),
            "{text}"
        );
    }
}
