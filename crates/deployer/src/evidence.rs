//! The figures a canary is judged on, out of the instances' own `/metrics`:
//! each version's server figures by method (its instances' counters), the
//! callers' figures by the version that answered (the gateway's and every
//! east-west caller's client metrics), and Orders' finished sagas. Pure.
use std::collections::BTreeMap;

use kit_core::red::{SERVER_SIDE_CODES, Totals};

use crate::analysis::Side;

/// What one instance of the deployed service says about itself.
pub fn read_server(text: &str) -> Option<Side> {
    let scrape = parse(text)?;
    let mut side = Side::default();
    let mut sagas: Option<(f64, f64)> = None;
    for sample in &scrape.samples {
        let method = sample.labels.get("method").unwrap_or("").to_string();
        match (&sample.value, sample.metric.as_str()) {
            (
                prometheus_parse::Value::Counter(v) | prometheus_parse::Value::Untyped(v),
                "grpc_server_requests_total",
            ) => {
                let totals = side.methods.entry(method).or_default();
                totals.requests += v;
                if sample.labels.get("code").is_some_and(|c| SERVER_SIDE_CODES.contains(&c)) {
                    totals.errors += v;
                }
            }
            (prometheus_parse::Value::Histogram(counts), "grpc_server_request_duration_seconds") => {
                add_histogram(side.methods.entry(method).or_default(), counts);
            }
            (prometheus_parse::Value::Counter(v) | prometheus_parse::Value::Untyped(v), "saga_finished_total") => {
                let (finished, completed) = sagas.get_or_insert((0.0, 0.0));
                *finished += v;
                if sample.labels.get("state") == Some("completed") {
                    *completed += v;
                }
            }
            _ => {}
        }
    }
    side.sagas = sagas;
    Some(side)
}

/// What a caller says about its calls to `service`, by the version that answered.
pub fn read_calls(text: &str, service: &str) -> BTreeMap<String, Totals> {
    let Some(scrape) = parse(text) else { return BTreeMap::new() };
    let mut by_version: BTreeMap<String, Totals> = BTreeMap::new();
    for sample in scrape.samples.iter().filter(|s| s.labels.get("service") == Some(service)) {
        let version = sample.labels.get("version").unwrap_or("").to_string();
        match (&sample.value, sample.metric.as_str()) {
            (
                prometheus_parse::Value::Counter(v) | prometheus_parse::Value::Untyped(v),
                "grpc_client_requests_total",
            ) => {
                let totals = by_version.entry(version).or_default();
                totals.requests += v;
                if sample.labels.get("outcome") == Some("error") {
                    totals.errors += v;
                }
            }
            (prometheus_parse::Value::Histogram(counts), "grpc_client_request_duration_seconds") => {
                add_histogram(by_version.entry(version).or_default(), counts);
            }
            _ => {}
        }
    }
    by_version
}

fn parse(text: &str) -> Option<prometheus_parse::Scrape> {
    prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_string()))).ok()
}

fn add_histogram(totals: &mut Totals, counts: &[prometheus_parse::HistogramCount]) {
    let buckets: Vec<(f64, f64)> = counts.iter().map(|c| (c.less_than, c.count)).collect();
    totals.add(&Totals { requests: 0.0, errors: 0.0, buckets });
}

/// Sums of several instances' sides.
pub fn sum(sides: impl IntoIterator<Item = Side>) -> Side {
    let mut total = Side::default();
    for side in sides {
        for (method, totals) in side.methods {
            total.methods.entry(method).or_default().add(&totals);
        }
        total.calls.add(&side.calls);
        if let Some((finished, completed)) = side.sagas {
            let (f, c) = total.sagas.get_or_insert((0.0, 0.0));
            *f += finished;
            *c += completed;
        }
    }
    total
}

/// `now - earlier`, method by method (a counter that went down — a restarted
/// instance — counts from zero).
pub fn since(now: &Side, earlier: &Side) -> Side {
    let methods = now
        .methods
        .iter()
        .map(|(method, totals)| {
            let delta = earlier.methods.get(method).map_or_else(|| totals.clone(), |e| totals.since(e));
            (method.clone(), delta)
        })
        .collect();
    let sagas = match (now.sagas, earlier.sagas) {
        (Some((f, c)), Some((ef, ec))) if f >= ef && c >= ec => Some((f - ef, c - ec)),
        (now, _) => now,
    };
    Side { methods, calls: now.calls.since(&earlier.calls), sagas }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SERVER: &str = r#"# TYPE grpc_server_requests_total counter
grpc_server_requests_total{service="products",method="/p.S/Get",code="OK"} 90
grpc_server_requests_total{service="products",method="/p.S/Get",code="Unavailable"} 10
grpc_server_requests_total{service="products",method="/p.S/List",code="NotFound"} 5
# TYPE grpc_server_request_duration_seconds histogram
grpc_server_request_duration_seconds_bucket{service="products",method="/p.S/Get",code="OK",le="0.005"} 80
grpc_server_request_duration_seconds_bucket{service="products",method="/p.S/Get",code="OK",le="+Inf"} 90
grpc_server_request_duration_seconds_sum{service="products",method="/p.S/Get",code="OK"} 0.5
grpc_server_request_duration_seconds_count{service="products",method="/p.S/Get",code="OK"} 90
# TYPE saga_finished_total counter
saga_finished_total{state="completed"} 8
saga_finished_total{state="compensated"} 2
"#;

    const CALLER: &str = r#"# TYPE grpc_client_requests_total counter
grpc_client_requests_total{service="products",version="v2",outcome="ok"} 19
grpc_client_requests_total{service="products",version="v2",outcome="error"} 1
grpc_client_requests_total{service="products",version="v1",outcome="ok"} 80
grpc_client_requests_total{service="users",version="v1",outcome="ok"} 7
"#;

    #[test]
    fn servers_are_read_by_method_and_callers_by_version() {
        let side = read_server(SERVER).unwrap_or_default();
        let get = &side.methods["/p.S/Get"];
        assert_eq!((get.requests, get.errors), (100.0, 10.0));
        assert_eq!(get.buckets.last().map(|b| b.1), Some(90.0));
        assert_eq!(side.methods["/p.S/List"].errors, 0.0, "NOT_FOUND is the caller's");
        assert_eq!(side.sagas, Some((10.0, 8.0)));
        let calls = read_calls(CALLER, "products");
        assert_eq!((calls["v2"].requests, calls["v2"].errors), (20.0, 1.0));
        assert_eq!(calls["v1"].requests, 80.0);
        assert!(!calls.contains_key(""), "users' calls are not products'");
    }

    #[test]
    fn sides_sum_and_subtract() {
        let one = read_server(SERVER).unwrap_or_default();
        let two = sum([one.clone(), one.clone()]);
        assert_eq!(two.methods["/p.S/Get"].requests, 200.0);
        assert_eq!(two.sagas, Some((20.0, 16.0)));
        let delta = since(&two, &one);
        assert_eq!(delta.methods["/p.S/Get"].requests, 100.0);
        assert_eq!(delta.sagas, Some((10.0, 8.0)));
        // A restart: the counters went down, so they count from zero.
        assert_eq!(since(&one, &two).methods["/p.S/Get"].requests, 100.0);
    }
}
