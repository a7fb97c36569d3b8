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
