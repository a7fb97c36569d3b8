//! How one process calls another: discovery through the registry
//! (`discovery`), the power-of-two-choices balancer with outlier ejection
//! (`balance`) over HTTP/2 connections (`h2_client`, `coalesce`), the guard
//! every call goes through (`guard`: deadline, bulkhead, breaker), call
//! routing by version (`routing`) and a tonic channel over all of it
//! (`channel`).
pub mod balance;
pub mod channel;
pub mod coalesce;
pub mod discovery;
pub mod guard;
pub mod h2_client;
pub mod routing;

/// HELP text of the client metrics: calls per dependency, breakers,
/// bulkheads, balancing, traffic policies and discovery.
pub fn describe_metrics() {
    // Descriptions reach only an installed recorder.
    let _ = kit_telemetry::metrics::prometheus();
    use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
    describe_counter!(
        "grpc_client_requests_total",
        "Calls to a dependency that reached it, by service, the version that answered, and outcome (error = a server-side failure)."
    );
    describe_histogram!(
        "grpc_client_request_duration_seconds",
        Unit::Seconds,
        "Latency of calls to a dependency until their status, by service, version and outcome."
    );
    describe_gauge!(
        "circuit_breaker_state",
        "Breaker state per dependency: 0 closed, 1 half-open, 2 open, 3 throttling (adaptive)."
    );
    describe_counter!("circuit_breaker_state_transitions_total", "Breaker state changes, by service, from and to.");
    describe_counter!("circuit_breaker_failures_total", "Calls the breaker counted as server-side failures.");
    describe_counter!("circuit_breaker_probe_attempts_total", "Probe calls let through while half-open or throttling.");
    describe_counter!("circuit_breaker_rejected_total", "Calls refused by an open or throttling breaker.");
    describe_counter!("bulkhead_rejected_total", "Calls refused because a dependency's concurrency limit was reached.");
    describe_counter!(
        "client_deadline_spent_total",
        "Calls not started because the caller's deadline was already spent."
    );
    describe_counter!("client_ejections_total", "Instances ejected from client-side load balancing.");
    describe_counter!("client_no_instance_total", "Calls with no healthy instance to go to.");
    describe_gauge!("client_instances", "Instances in a client's load-balancing pool.");
    describe_gauge!(
        "client_traffic_policy_index",
        "The registry index of the traffic policy a client applies, by service."
    );
    describe_gauge!(
        "client_traffic_weight_percent",
        "The share of traffic a client's policy gives each version of a service (0 = reachable by override only)."
    );
    describe_counter!("discovery_registrations_total", "Registrations with the registry, by outcome.");
    describe_counter!("discovery_heartbeat_failures_total", "Heartbeats the registry did not accept.");
    describe_counter!("discovery_lookup_failures_total", "Registry lookups that failed (the stale cache answered).");
    describe_gauge!("discovery_registry_reachable", "1 while the registry answers this process.");
}
