//! The registry's HTTP API over a real socket: the happy path, blocking
//! queries, Prometheus SD, and garbage on every endpoint.
#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

use std::time::{Duration, Instant};

use kit::shutdown::CancellationToken;
use registry::core::Timing;
use registry::{RegistryConfig, RunningRegistry};
use reqwest::StatusCode;
use serde_json::{Value, json};

async fn start() -> (RunningRegistry, reqwest::Client) {
    let config = RegistryConfig {
        addr: "127.0.0.1:0".parse().unwrap(),
        tls: kit_tls::TlsConfig::insecure(),
        timing: Timing { heartbeat_interval_ms: 1_000, ttl_ms: 3_000, drain_grace_ms: 1_000 },
        ..Default::default()
    };
    (registry::start(config, CancellationToken::new()).await.unwrap(), reqwest::Client::new())
}

/// Until one blocking query is parked (so a change wakes it, rather than
/// being there already when it asks).
async fn parked(watchers: impl Fn() -> usize) {
    let started = Instant::now();
    while watchers() < 1 {
        assert!(started.elapsed() < Duration::from_secs(5), "the blocking query never parked");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn instance(id: &str) -> Value {
    json!({ "id": id, "name": "products", "address": "127.0.0.1:9002", "admin_address": "127.0.0.1:9102",
            "version": "v1", "track": "blue", "metadata": { "version": "v1", "zone": "eu-1" } })
}

#[tokio::test]
async fn register_heartbeat_lookup_drain_deregister() {
    let (registry, http) = start().await;
    let url = registry.url();
    let reply: Value =
        http.post(format!("{url}/v1/register")).json(&instance("p-1")).send().await.unwrap().json().await.unwrap();
    assert_eq!(reply, json!({ "id": "p-1", "heartbeat_interval_ms": 1000, "ttl_ms": 3000 }));

    let beat = http.put(format!("{url}/v1/heartbeat/p-1")).json(&json!({ "health": "degraded" })).send().await.unwrap();
    assert_eq!(beat.status(), StatusCode::OK);
    let bare = http.put(format!("{url}/v1/heartbeat/p-1")).send().await.unwrap();
    assert_eq!(bare.status(), StatusCode::OK, "a heartbeat body is optional");

    let found = http.get(format!("{url}/v1/services/products?zone=eu-1")).send().await.unwrap();
    assert!(found.headers().contains_key("x-registry-index"));
    let found: Value = found.json().await.unwrap();
    assert_eq!(found["instances"][0]["health"], "degraded");
    let none: Value =
        http.get(format!("{url}/v1/services/products?zone=us-1")).send().await.unwrap().json().await.unwrap();
    assert_eq!(none["instances"], json!([]));

    let services: Value = http.get(format!("{url}/v1/services")).send().await.unwrap().json().await.unwrap();
    assert_eq!(
        services["services"],
        json!([{ "name": "products", "instances": 1, "routable": 1, "versions": { "v1": 1 } }])
    );
    assert_eq!(
        (found["instances"][0]["version"].as_str(), found["instances"][0]["track"].as_str()),
        (Some("v1"), Some("blue"))
    );

    let targets: Value = http.get(format!("{url}/v1/prometheus/targets")).send().await.unwrap().json().await.unwrap();
    assert_eq!(targets[0]["targets"], json!(["127.0.0.1:9102"]));
    assert_eq!(targets[0]["labels"]["service"], "products");
    assert_eq!(targets[0]["labels"]["meta_version"], "v1");

    let drained = http.post(format!("{url}/v1/instances/p-1/drain")).send().await.unwrap();
    assert_eq!(drained.status(), StatusCode::OK);
    let routable: Value = http.get(format!("{url}/v1/services/products")).send().await.unwrap().json().await.unwrap();
    assert_eq!(routable["instances"], json!([]), "draining is not routable");
    let all: Value =
        http.get(format!("{url}/v1/services/products?all=true")).send().await.unwrap().json().await.unwrap();
    assert_eq!(all["instances"][0]["health"], "draining");

    assert_eq!(http.delete(format!("{url}/v1/instances/p-1")).send().await.unwrap().status(), StatusCode::NO_CONTENT);
    assert_eq!(http.delete(format!("{url}/v1/instances/p-1")).send().await.unwrap().status(), StatusCode::NOT_FOUND);
    let audit: Value = http.get(format!("{url}/v1/audit")).send().await.unwrap().json().await.unwrap();
    let events: Vec<&str> = audit["entries"].as_array().unwrap().iter().map(|e| e["event"].as_str().unwrap()).collect();
    assert_eq!(events, vec!["registered", "health", "draining", "deregistered"]);
    assert_eq!(http.get(format!("{url}/health/ready")).send().await.unwrap().status(), StatusCode::OK);
    let metrics = http.get(format!("{url}/metrics")).send().await.unwrap().text().await.unwrap();
    assert!(metrics.contains("registry_changes_total"), "{metrics}");
    registry.stop().await;
}

#[tokio::test]
async fn blocking_queries_wait_for_a_change() {
    let (registry, http) = start().await;
    let url = registry.url();
    let first: Value = http.get(format!("{url}/v1/services/products")).send().await.unwrap().json().await.unwrap();
    let index = first["index"].as_u64().unwrap();

    let started = Instant::now();
    let quiet: Value = http
        .get(format!("{url}/v1/services/products?index={index}&wait=300ms"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(started.elapsed() >= Duration::from_millis(290), "waited for a change");
    assert_eq!(quiet["index"].as_u64(), Some(index));

    let waiter = {
        let http = http.clone();
        let url = url.clone();
        tokio::spawn(async move {
            let started = Instant::now();
            let body: Value = http
                .get(format!("{url}/v1/services/products?index={index}&wait=20s"))
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            (started.elapsed(), body)
        })
    };
    parked(|| registry.watchers()).await;
    http.post(format!("{url}/v1/register")).json(&instance("p-1")).send().await.unwrap();
    let (took, body) = waiter.await.unwrap();
    assert!(took < Duration::from_secs(5), "woke on the change, took {took:?}");
    assert_eq!(body["instances"].as_array().unwrap().len(), 1);

    // An index from before a registry restart (ahead of ours) answers at once.
    let ahead = Instant::now();
    http.get(format!("{url}/v1/services/products?index=999999&wait=20s")).send().await.unwrap();
    assert!(ahead.elapsed() < Duration::from_secs(2));
    registry.stop().await;
}

#[tokio::test]
async fn garbage_gets_clear_errors_and_changes_nothing() {
    let (registry, http) = start().await;
    let url = registry.url();
    let bodies = [
        ("not json", "application/json"),
        ("{}", "application/json"),
        (r#"{"name":"products"}"#, "application/json"),
        (r#"{"name":"Bad Name","address":"127.0.0.1:1"}"#, "application/json"),
        (r#"{"name":"products","address":"no-port"}"#, "application/json"),
        (r#"{"name":"products","address":"h:1","health":"draining"}"#, "application/json"),
        (r#"{"name":"products","address":"h:1","health":"sleepy"}"#, "application/json"),
        (r#"{"name":"products","address":"h:1","metadata":{"bad key":"v"}}"#, "application/json"),
        (r#"{"name":"products","address":"h:1"}"#, "text/plain"),
    ];
    for (body, content_type) in bodies {
        let response = http
            .post(format!("{url}/v1/register"))
            .header("content-type", content_type)
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{body}");
        let error: Value = response.json().await.unwrap();
        assert_eq!(error["code"], "INVALID_ARGUMENT", "{body}");
        assert!(!error["message"].as_str().unwrap().is_empty());
    }
    let huge = json!({ "name": "products", "address": "h:1", "metadata": { "k": "x".repeat(100_000) } });
    let too_big = http.post(format!("{url}/v1/register")).json(&huge).send().await.unwrap();
    assert!(too_big.status().is_client_error(), "{}", too_big.status());

    assert_eq!(http.put(format!("{url}/v1/heartbeat/ghost")).send().await.unwrap().status(), StatusCode::NOT_FOUND);
    let bad_beat = http
        .put(format!("{url}/v1/heartbeat/ghost"))
        .header("content-type", "application/json")
        .body("[")
        .send()
        .await
        .unwrap();
    assert!(bad_beat.status().is_client_error());
    assert_eq!(
        http.post(format!("{url}/v1/instances/ghost/drain")).send().await.unwrap().status(),
        StatusCode::NOT_FOUND
    );
    for query in ["index=abc", "index=1&wait=soon", "index=-1"] {
        let response = http.get(format!("{url}/v1/services/products?{query}")).send().await.unwrap();
        assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{query}");
    }
    for query in ["after=x", "limit=-5"] {
        assert_eq!(http.get(format!("{url}/v1/audit?{query}")).send().await.unwrap().status(), StatusCode::BAD_REQUEST);
    }
    assert_eq!(http.get(format!("{url}/v1/nothing")).send().await.unwrap().status(), StatusCode::NOT_FOUND);
    assert_eq!(http.get(format!("{url}/v1/register")).send().await.unwrap().status(), StatusCode::METHOD_NOT_ALLOWED);

    let all: Value = http.get(format!("{url}/v1/instances")).send().await.unwrap().json().await.unwrap();
    assert_eq!(all["instances"], json!([]), "nothing was registered by garbage");
    let audit: Value = http.get(format!("{url}/v1/audit")).send().await.unwrap().json().await.unwrap();
    assert_eq!(audit["entries"], json!([]));
    registry.stop().await;
}

/// Traffic policies over HTTP: set, read, delivered with lookups, removed;
/// garbage refused with the right status and nothing changed.
#[tokio::test]
async fn traffic_policies_over_http() {
    let (registry, http) = start().await;
    let url = registry.url();
    for (id, version) in [("p-1", "v1"), ("p-2", "v2")] {
        let body = json!({ "id": id, "name": "products", "address": "127.0.0.1:9002", "version": version });
        assert_eq!(http.post(format!("{url}/v1/register")).json(&body).send().await.unwrap().status(), StatusCode::OK);
    }
    let put = |service: &str, body: Value| http.put(format!("{url}/v1/policies/{service}")).json(&body).send();
    let garbage = [
        ("products", json!({}), StatusCode::BAD_REQUEST, "INVALID_ARGUMENT"),
        ("products", json!({ "weights": { "v1": 50, "v2": 40 } }), StatusCode::BAD_REQUEST, "INVALID_ARGUMENT"),
        ("products", json!({ "weights": { "v1": -1, "v2": 101 } }), StatusCode::BAD_REQUEST, "INVALID_ARGUMENT"),
        ("products", json!({ "weights": { "v9": 100 } }), StatusCode::BAD_REQUEST, "INVALID_ARGUMENT"),
        (
            "products",
            json!({ "weights": { "v1": 100 }, "sticky": "sometimes" }),
            StatusCode::BAD_REQUEST,
            "INVALID_ARGUMENT",
        ),
        ("products", json!({ "weights": { "v1": 100 }, "colour": "red" }), StatusCode::BAD_REQUEST, "INVALID_ARGUMENT"),
        ("products", json!({ "weights": "all" }), StatusCode::BAD_REQUEST, "INVALID_ARGUMENT"),
        ("orders", json!({ "weights": { "v1": 100 } }), StatusCode::NOT_FOUND, "NOT_FOUND"),
        ("products", json!({ "weights": { "v1": 100 }, "if_index": 12345 }), StatusCode::CONFLICT, "ABORTED"),
    ];
    for (service, body, status, code) in garbage {
        let response = put(service, body.clone()).await.unwrap();
        assert_eq!(response.status(), status, "{body}");
        let error: Value = response.json().await.unwrap();
        assert_eq!(error["code"], code, "{body}: {error}");
    }
    let not_json = http
        .put(format!("{url}/v1/policies/products"))
        .header("content-type", "application/json")
        .body("{weights")
        .send()
        .await
        .unwrap();
    assert_eq!(not_json.status(), StatusCode::BAD_REQUEST);
    let none: Value = http.get(format!("{url}/v1/policies")).send().await.unwrap().json().await.unwrap();
    assert_eq!(none["policies"], json!([]), "nothing stored by garbage");
    assert_eq!(http.get(format!("{url}/v1/policies/products")).send().await.unwrap().status(), StatusCode::NOT_FOUND);

    let body = json!({ "weights": { "v1": 75, "v2": 25 }, "sticky": "none", "reason": "canary" });
    let set: Value = put("products", body).await.unwrap().json().await.unwrap();
    assert_eq!(set["weights"], json!({ "v1": 75, "v2": 25 }));
    assert_eq!(set["sticky"], "none");
    assert_eq!(set["updated_by"], "anonymous", "a registry in plain text knows no identities");
    let lookup: Value = http.get(format!("{url}/v1/services/products")).send().await.unwrap().json().await.unwrap();
    assert_eq!(lookup["policy"], set, "delivered with the instances");
    assert_eq!(lookup["warming"], true, "a fresh registry without durable storage says it is warming up");
    let summary: Value = http.get(format!("{url}/v1/services")).send().await.unwrap().json().await.unwrap();
    assert_eq!(summary["services"][0]["weights"], json!({ "v1": 75, "v2": 25 }));
    let metrics = http.get(format!("{url}/metrics")).send().await.unwrap().text().await.unwrap();
    assert!(metrics.contains(r#"traffic_policy_weight{service="products",version="v2"} 25"#), "{metrics}");

    assert_eq!(
        http.delete(format!("{url}/v1/policies/products")).send().await.unwrap().status(),
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        http.delete(format!("{url}/v1/policies/products")).send().await.unwrap().status(),
        StatusCode::NOT_FOUND
    );
    let audit: Value = http.get(format!("{url}/v1/audit")).send().await.unwrap().json().await.unwrap();
    let events: Vec<&str> = audit["entries"].as_array().unwrap().iter().map(|e| e["event"].as_str().unwrap()).collect();
    assert_eq!(events, vec!["registered", "registered", "policy", "policy_removed"]);
    registry.stop().await;
}

#[tokio::test]
async fn bad_timing_is_refused() {
    let config = RegistryConfig {
        addr: "127.0.0.1:0".parse().unwrap(),
        tls: kit_tls::TlsConfig::insecure(),
        timing: Timing { heartbeat_interval_ms: 5_000, ttl_ms: 1_000, drain_grace_ms: 1_000 },
        ..Default::default()
    };
    assert!(registry::start(config, CancellationToken::new()).await.is_err());
}

/// A call inside a trace is a span of it (the response names the trace);
/// background calls (no `traceparent`) make none.
#[tokio::test]
async fn a_traced_call_continues_its_trace_and_an_untraced_one_makes_none() {
    let (registry, http) = start().await;
    let url = format!("{}/v1/services", registry.url());
    let traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let traced = http.get(&url).header("traceparent", traceparent).send().await.unwrap();
    assert_eq!(traced.status(), StatusCode::OK);
    assert_eq!(traced.headers()["x-trace-id"], "4bf92f3577b34da6a3ce929d0e0e4736");
    let untraced = http.get(&url).send().await.unwrap();
    assert_eq!(untraced.status(), StatusCode::OK);
    assert!(untraced.headers().get("x-trace-id").is_none());
    // A malformed traceparent starts a trace of its own rather than failing the call.
    let garbage = http.get(&url).header("traceparent", "00-garbage").send().await.unwrap();
    assert_eq!(garbage.status(), StatusCode::OK);
    assert_eq!(garbage.headers()["x-trace-id"].len(), 32);
}
