//! The host a shopfast service runs in: layered config, server bootstrap
//! (gRPC + health + reflection + admin HTTP + graceful shutdown), the database
//! layer, the idempotency layer, user tokens and access policy, and test
//! helpers. What it builds on lives in its own crates: `kit-core` (domain
//! vocabulary), `kit-telemetry`, `kit-resilience`, `kit-tls`, `kit-client`
//! and `registry-wire`.
pub mod access;
pub mod config;
pub mod db;
pub mod error;
pub mod idempotency;
pub mod reply;
pub mod server;
pub mod shutdown;
pub mod token;

#[cfg(feature = "testing")]
pub mod testing;

/// HELP text of the host's metrics (database pools, idempotency) and of
/// the kit crates it runs on. Every server calls it as it starts.
pub fn describe_metrics() {
    // Descriptions reach only an installed recorder.
    let _ = kit_telemetry::metrics::prometheus();
    kit_resilience::describe_metrics();
    kit_client::describe_metrics();
    use metrics::{describe_counter, describe_gauge};
    describe_gauge!("db_pool_connections", "Connections in the service's database pool, by state (in_use, idle).");
    describe_counter!(
        "idempotency_requests_total",
        "Requests carrying an idempotency key, by outcome (fresh, replayed, in_progress, mismatch)."
    );
}
