//! The process-wide Prometheus recorder behind every `/metrics`.
use std::sync::OnceLock;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// The servers' latency buckets, about 25 % apart from 0.25 ms to 10 s: the
/// canary analysis compares versions' quantiles, and a histogram cannot tell
/// apart two latencies inside one bucket (the default, 2-2.5× apart, would
/// hide a 50 % regression).
pub const FINE_BUCKETS: &[f64] = &[
    0.00025, 0.0003, 0.0004, 0.0005, 0.0006, 0.00075, 0.001, 0.0012, 0.0015, 0.002, 0.0025, 0.003, 0.004, 0.005, 0.006,
    0.0075, 0.01, 0.012, 0.015, 0.02, 0.025, 0.03, 0.04, 0.05, 0.06, 0.075, 0.1, 0.12, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5,
    0.6, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0,
];

/// Installs the recorder on first use (several services in one test process
/// share it) and returns the handle that renders the exposition text.
pub fn prometheus() -> PrometheusHandle {
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new()
                .set_buckets(&[0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0])
                .and_then(|b| {
                    b.set_buckets_for_metric(Matcher::Full("grpc_server_request_duration_seconds".into()), FINE_BUCKETS)
                })
                .map(|b| b.build_recorder())
                .unwrap_or_else(|_| PrometheusBuilder::new().build_recorder());
            let handle = recorder.handle();
            // Fails only when another recorder is installed; ours still renders.
            let _ = metrics::set_global_recorder(recorder);
            describe_all();
            handle
        })
        .clone()
}

/// `GET /metrics` in the Prometheus text format, for any axum router.
pub fn route<S: Clone + Send + Sync + 'static>() -> axum::routing::MethodRouter<S> {
    let handle = prometheus();
    axum::routing::get(move || {
        let handle = handle.clone();
        async move { ([("content-type", "text/plain; version=0.0.4")], handle.render()) }
    })
}

/// HELP text of the servers' own metrics. Every crate describes the metrics
/// it exports itself (`describe_metrics` beside its code; `promtool check
/// metrics` wants HELP on each), once the recorder is installed.
fn describe_all() {
    use metrics::{Unit, describe_counter, describe_histogram};
    describe_counter!("grpc_server_requests_total", "gRPC requests handled, by service, method and status code.");
    describe_histogram!(
        "grpc_server_request_duration_seconds",
        Unit::Seconds,
        "gRPC request duration, by service, method and status code."
    );
}
