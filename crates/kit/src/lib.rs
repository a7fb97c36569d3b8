//! The platform kit every shopfast service links: layered config, JSON logs,
//! server bootstrap (gRPC + health + reflection + admin HTTP + graceful
//! shutdown), the database layer, user tokens, and test helpers.
pub mod access;
pub mod balance;
pub mod build;
pub mod channel;
pub mod coalesce;
pub mod config;
pub mod db;
pub mod discovery;
pub mod error;
pub mod grpc_telemetry;
pub mod h2_client;
pub mod idempotency;
pub mod metrics;
pub mod otel;
pub mod pagination;
pub mod red;
pub mod reply;
pub mod resilience;
pub mod routing;
pub mod server;
pub mod shutdown;
pub mod telemetry;
pub mod time;
pub mod tls;
pub mod token;
pub mod trace_context;
pub mod traffic;

#[cfg(feature = "testing")]
pub mod testing;
