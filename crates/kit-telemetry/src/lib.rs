//! What every process reports about itself: JSON logs (`telemetry`),
//! OpenTelemetry traces and logs (`otel`) over W3C trace context
//! (`trace_context`), the Prometheus recorder (`metrics`), RED figures read
//! back from expositions (`red`), and the gRPC server layer that spans,
//! counts and times every call (`grpc_telemetry`).
pub mod grpc_telemetry;
pub mod metrics;
pub mod otel;
pub mod telemetry;
pub mod trace_context;
