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

/// HELP text for every metric the platform exports, in one catalogue (and
/// `promtool check metrics` wants HELP on each). A metric not listed here has
/// no HELP line; add it when you add the metric.
fn describe_all() {
    use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
    // Servers
    describe_counter!("grpc_server_requests_total", "gRPC requests handled, by service, method and status code.");
    describe_histogram!(
        "grpc_server_request_duration_seconds",
        Unit::Seconds,
        "gRPC request duration, by service, method and status code."
    );
    describe_counter!("server_deadline_spent_total", "Requests not started because they arrived with no time left.");
    describe_counter!("server_shed_total", "Requests refused by adaptive load shedding (RESOURCE_EXHAUSTED).");
    describe_counter!("fault_injected_total", "Faults injected on purpose, by kind (error, abort).");
    describe_counter!("inventory_reservations_total", "Inventory reservation attempts, by result.");
    describe_gauge!("db_pool_connections", "Connections in the service's database pool, by state (in_use, idle).");
    // Clients (gateway → services, service → service), per dependency
    describe_counter!(
        "grpc_client_requests_total",
        "Calls to a dependency that reached it, by service, the version that answered, and outcome (error = a server-side failure)."
    );
    describe_histogram!(
        "grpc_client_request_duration_seconds",
        Unit::Seconds,
        "Latency of calls to a dependency until their status, by service, version and outcome."
    );
    describe_counter!(
        "idempotency_requests_total",
        "Requests carrying an idempotency key, by outcome (fresh, replayed, in_progress, mismatch)."
    );
    // Payments and the order saga
    describe_counter!("payments_total", "Payments finished, by outcome (completed or the failure code).");
    describe_counter!("payment_refunds_total", "Refunds completed.");
    describe_counter!(
        "payments_recovered_total",
        "Payments a crash or a spent deadline left in flight, settled by recovery, by the state they were in."
    );
    // The console
    describe_counter!("console_spans_received_total", "Spans the console received over OTLP.");
    describe_counter!("console_logs_received_total", "Log records the console received over OTLP.");
    describe_counter!(
        "console_scrapes_total",
        "Scrapes of instances' /metrics by the console, by outcome (ok, failed)."
    );
    describe_counter!("saga_started_total", "Sagas started.");
    describe_counter!("saga_finished_total", "Sagas finished, by final state (completed, compensated, failed).");
    describe_counter!(
        "saga_step_attempts_total",
        "Saga step attempts, by step and outcome (ok, transient, permanent)."
    );
    describe_counter!("saga_compensations_total", "Saga compensations, by step and outcome.");
    describe_counter!(
        "saga_compensation_passes_total",
        "Passes over a saga's compensations that left some still to do (a dependency was away); they are retried."
    );
    describe_counter!(
        "orders_cancelled_after_payment_total",
        "Paid orders cancelled: refunded and restocked, then CANCELLED."
    );
    describe_counter!(
        "saga_manual_intervention_total",
        "Sagas whose compensation gave up: a person must look (see the saga record)."
    );
    // Gateway
    describe_counter!("gateway_requests_total", "HTTP requests handled by the gateway, by route and status.");
    describe_histogram!(
        "gateway_request_duration_seconds",
        Unit::Seconds,
        "Gateway request duration, by route and status."
    );
    describe_counter!("ratelimit_rejections_total", "Requests refused by rate limits or quotas, by tier and reason.");
    describe_counter!(
        "ratelimit_redis_fallbacks_total",
        "Rate-limit checks decided locally because Redis was unreachable."
    );
    describe_gauge!("ratelimit_redis_up", "1 while the shared (Redis) rate limiter is reachable.");
    describe_gauge!("ratelimit_local_clients", "Clients with a local rate-limit bucket.");
    describe_counter!("fallback_requests_total", "Requests answered by a dependency's fallback, by service and kind.");
    describe_histogram!("fallback_latency_seconds", Unit::Seconds, "Time to answer by fallback, by service and kind.");
    describe_gauge!("deferred_calls_pending", "Queued (deferred) calls not yet delivered, by service.");
    describe_counter!("deferred_calls_settled_total", "Deferred calls delivered or given up, by service and state.");
    // Clients: breakers, retries, bulkheads, balancing
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
    describe_counter!("retries_total", "Retries made, by service.");
    describe_counter!("retry_budget_exhausted_total", "Retries not made because the retry budget was spent.");
    describe_counter!("client_ejections_total", "Instances ejected from client-side load balancing.");
    describe_gauge!(
        "ratelimit_quota_clients",
        "Clients whose monthly quota counts the gateway holds in memory (bounded)."
    );
    describe_gauge!(
        "fallback_cache_entries",
        "Last good responses the gateway keeps for the cached fallback (bounded)."
    );
    describe_counter!(
        "ratelimit_refused_clients_total",
        "Requests refused because the gateway already tracks as many clients as it may."
    );
    describe_counter!("deferred_calls_refused_total", "Writes the queue fallback refused because the queue was full.");
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
    // Discovery and registry
    describe_counter!("discovery_registrations_total", "Registrations with the registry, by outcome.");
    describe_counter!("discovery_heartbeat_failures_total", "Heartbeats the registry did not accept.");
    describe_counter!("discovery_lookup_failures_total", "Registry lookups that failed (the stale cache answered).");
    describe_gauge!("discovery_registry_reachable", "1 while the registry answers this process.");
    describe_gauge!("registry_instances", "Registered instances, by service and health.");
    describe_counter!("registry_changes_total", "Registry changes, by kind.");
}
