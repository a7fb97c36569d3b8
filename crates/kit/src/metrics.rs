//! The process-wide Prometheus recorder behind every `/metrics`.
use std::sync::OnceLock;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Installs the recorder on first use (several services in one test process
/// share it) and returns the handle that renders the exposition text.
pub fn prometheus() -> PrometheusHandle {
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new()
                .set_buckets(&[0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0])
                .map(|b| b.build_recorder())
                .unwrap_or_else(|_| PrometheusBuilder::new().build_recorder());
            let handle = recorder.handle();
            // Fails only when another recorder is installed; ours still renders.
            let _ = metrics::set_global_recorder(recorder);
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
