//! The resilience kit with real processes: breakers that open when a service
//! dies and close when it returns, isolation between backends, the adaptive
//! breaker under injected errors, the retry budget, fallbacks, fault injection
//! refused unless enabled, and metrics that promtool accepts.
#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

mod support;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{Value, json};
use support::{Proc, Shopper, eventually, json_reply, promtool_accepts};

const GET_PRODUCT: &str = "/shopfast.products.v1.ProductService/GetProduct";

/// Registry, users, products (fault injection enabled) and a gateway, from
/// one config file whose gateway part is `gateway_tables`.
struct Stack {
    _registry: Proc,
    _users: Proc,
    products: Option<Proc>,
    gateway: Proc,
    registry_url: String,
    config: PathBuf,
    data: tempfile::TempDir,
    http: reqwest::Client,
}

fn write_config(dir: &Path, gateway_tables: &str) -> PathBuf {
    let path = dir.join("shopfast.toml");
    let text = format!(
        r#"
[gateway]

[gateway.tiers.anonymous]
per_minute = 600000
burst = 100000
monthly_quota = 0

[gateway.api_keys.admin-key]
client = "ops"
tier = "enterprise"
admin = true
{gateway_tables}
"#
    );
    std::fs::write(&path, text).unwrap();
    path
}

fn products_process(data: &Path, registry_url: &str, config: &str) -> Proc {
    Proc::service("products", data, registry_url, &["--config", config, "--enable-fault-injection"])
}

impl Stack {
    fn start(gateway_tables: &str) -> Self {
        let data = tempfile::tempdir().unwrap();
        let config = write_config(data.path(), gateway_tables);
        let registry = Proc::registry("127.0.0.1:0", 200, 1_000, 300);
        let registry_url = registry.url();
        let config_arg = config.to_str().unwrap();
        let users = Proc::service("users", data.path(), &registry_url, &["--config", config_arg]);
        let products = products_process(data.path(), &registry_url, config_arg);
        let dir = data.path().join("gateway");
        std::fs::create_dir_all(&dir).unwrap();
        let gateway = Proc::start(&[
            "gateway",
            "--addr",
            "127.0.0.1:0",
            "--registry-url",
            &registry_url,
            "--config",
            config_arg,
            "--data-dir",
            dir.to_str().unwrap(),
        ]);
        Self {
            _registry: registry,
            _users: users,
            products: Some(products),
            gateway,
            registry_url,
            config,
            data,
            http: reqwest::Client::new(),
        }
    }

    fn start_products(&self) -> Proc {
        let config = self.config.to_str().unwrap();
        Proc::service(
            "products",
            self.data.path(),
            &self.registry_url,
            &["--config", config, "--enable-fault-injection"],
        )
    }

    fn url(&self) -> String {
        format!("http://{}", self.gateway.addr("addr"))
    }

    fn products_admin(&self) -> String {
        format!("http://{}", self.products.as_ref().unwrap().addr("admin_addr"))
    }

    async fn get(&self, path: &str) -> (StatusCode, Value, reqwest::header::HeaderMap) {
        let response = self.http.get(format!("{}{path}", self.url())).send().await.unwrap();
        let (status, headers, body) = json_reply(response).await;
        (status, body, headers)
    }

    /// A product id, once the gateway routes to products.
    async fn product_id(&self) -> String {
        eventually(Duration::from_secs(10), "gateway reaches products", || async {
            self.get("/v1/products?pageSize=2").await.0 == StatusCode::OK
        })
        .await;
        let (_, page, _) = self.get("/v1/products?pageSize=2").await;
        page["products"][0]["id"].as_str().unwrap().to_string()
    }

    async fn set_faults(&self, rules: Value) {
        let response = self
            .http
            .put(format!("{}/admin/faults", self.products_admin()))
            .json(&json!({ "rules": rules }))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK, "{}", response.text().await.unwrap());
    }

    /// `n` GETs of `path` at once while GetProduct takes `latency_ms`:
    /// (served, refused as RESOURCE_EXHAUSTED → 503 for `reason`). Nothing
    /// else allowed.
    async fn slow_gets_at_once(&self, path: &str, n: usize, latency_ms: u64, reason: &str) -> (usize, usize) {
        self.set_faults(json!([{ "method": GET_PRODUCT, "latency_ms": latency_ms }])).await;
        let results = futures::future::join_all((0..n).map(|_| self.get(path))).await;
        let mut counts = (0, 0);
        for (status, body, headers) in &results {
            match *status {
                StatusCode::OK => counts.0 += 1,
                StatusCode::SERVICE_UNAVAILABLE if body["code"] == "RESOURCE_EXHAUSTED" => {
                    assert_eq!(body["reason"], reason, "{body}");
                    assert_eq!(headers["retry-after"], "1");
                    counts.1 += 1
                }
                other => panic!("{other}: {body}"),
            }
        }
        counts
    }

    async fn metrics(&self, base: &str) -> String {
        self.http.get(format!("{base}/metrics")).send().await.unwrap().text().await.unwrap()
    }

    /// The products service's count of GetProduct calls it received.
    async fn products_calls(&self) -> f64 {
        let text = self.metrics(&self.products_admin()).await;
        text.lines()
            .filter(|l| l.starts_with("grpc_server_requests_total{") && l.contains(GET_PRODUCT))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }
}

fn median(mut values: Vec<Duration>) -> Duration {
    values.sort();
    values[values.len() / 2]
}

fn percentile(mut values: Vec<Duration>, p: f64) -> Duration {
    values.sort();
    values[((values.len() - 1) as f64 * p).round() as usize]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_service_opens_its_breaker_fast_and_leaves_others_alone() {
    let stack = Stack::start(
        r#"
[gateway.dependencies.products.breaker]
policy = "classic"
failure_threshold = 5
success_threshold = 2
open_ms = 1500
"#,
    );
    let id = stack.product_id().await;
    let url = stack.url();

    // A user, to show users' calls keep working.
    let user = Shopper::sign_up_anonymous(&url, "iso@example.com").await;

    let mut stack = stack;
    stack.products.take().unwrap().kill9();

    // Failures until the breaker opens: at most the threshold reach the dead service.
    let mut failures_before_open = 0;
    loop {
        let (status, body, _) = stack.get(&format!("/v1/products/{id}")).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
        if body["reason"] == "CIRCUIT_OPEN" {
            break;
        }
        failures_before_open += 1;
        assert!(failures_before_open <= 5, "still not open after {failures_before_open} failures: {body}");
    }

    // Open: every call is refused at once.
    let mut open_latencies = Vec::new();
    for _ in 0..50 {
        let started = Instant::now();
        let (status, body, headers) = stack.get(&format!("/v1/products/{id}")).await;
        open_latencies.push(started.elapsed());
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        let retry_after: u64 = headers["retry-after"].to_str().unwrap().parse().unwrap();
        assert!((1..=2).contains(&retry_after), "the breaker probes again within open_ms: {retry_after}");
        assert_eq!(body["code"], "UNAVAILABLE");
        assert_eq!(body["reason"], "CIRCUIT_OPEN", "{body}");
        assert!(body["message"].as_str().unwrap().contains("products"), "the message names the service: {body}");
        assert!(body["trace_id"].is_string());
    }
    let p90 = percentile(open_latencies.clone(), 0.9);
    eprintln!("breaker open: p50 {:?}, p90 {p90:?} per call (HTTP round trip)", median(open_latencies));
    assert!(p90 < Duration::from_millis(5), "refusals take {p90:?} at p90");

    // Isolation: users' breaker is closed and its calls work.
    let profile = user.request(reqwest::Method::GET, &format!("/v1/users/{}", user.user_id)).send().await.unwrap();
    assert_eq!(profile.status(), StatusCode::OK);

    // Back: closed again within the open timeout plus a probe or two.
    let restarted = Instant::now();
    stack.products = Some(stack.start_products());
    let took = eventually(Duration::from_secs(10), "products served again", || {
        let stack = &stack;
        let id = &id;
        async move { stack.get(&format!("/v1/products/{id}")).await.0 == StatusCode::OK }
    })
    .await;
    eprintln!("served again {:?} after restart ({:?} after the service was ready)", restarted.elapsed(), took);
    assert!(took < Duration::from_millis(1_500 + 1_000), "{took:?}");
    // The first good answer was a half-open probe; with success_threshold 2
    // the next closes the circuit.
    assert_eq!(stack.get(&format!("/v1/products/{id}")).await.0, StatusCode::OK);
    let metrics = stack.metrics(&url).await;
    for expected in [
        r#"circuit_breaker_state{service="products"} 0"#,
        r#"circuit_breaker_state{service="users"} 0"#,
        r#"circuit_breaker_state_transitions_total{service="products",from="closed",to="open"}"#,
        r#"circuit_breaker_state_transitions_total{service="products",from="half_open",to="closed"}"#,
        r#"circuit_breaker_rejected_total{service="products",state="open"}"#,
        r#"circuit_breaker_failures_total{service="products"}"#,
        r#"circuit_breaker_probe_attempts_total{service="products"}"#,
    ] {
        assert!(
            metrics.contains(expected),
            "missing {expected} in\n{}",
            metrics.lines().filter(|l| l.contains("circuit") || l.contains("client")).collect::<Vec<_>>().join("\n")
        );
    }
    // Client calls by the version that answered (`none`: no instance did).
    for (name, outcome) in [
        ("grpc_client_requests_total", "ok"),
        ("grpc_client_requests_total", "error"),
        ("grpc_client_request_duration_seconds_count", "ok"),
    ] {
        let counted = metrics.lines().any(|l| {
            l.starts_with(&format!(r#"{name}{{service="products",version=""#))
                && l.contains(&format!(r#"outcome="{outcome}""#))
                && !l.ends_with(" 0")
        });
        assert!(counted, "no {name} with outcome {outcome} in\n{metrics}");
    }
    promtool_accepts(&metrics);
    let products_metrics = stack.metrics(&stack.products_admin()).await;
    assert!(products_metrics.contains(r#"db_pool_connections{service="products",state="idle"}"#), "{products_metrics}");
    promtool_accepts(&products_metrics);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_adaptive_breaker_lets_through_what_the_backend_can_serve() {
    let stack = Stack::start(
        r#"
[gateway.dependencies.products]
retry = { max_attempts = 1 }

[gateway.dependencies.products.breaker]
policy = "adaptive"
window_ms = 4000
window_buckets = 40
"#,
    );
    let id = stack.product_id().await;
    stack.set_faults(json!([{ "method": GET_PRODUCT, "error_rate": 0.5 }])).await;
    let (mut served, mut failed, mut dropped) = (0u32, 0u32, 0u32);
    let started = Instant::now();
    let before = stack.products_calls().await;
    let mut counted_from = None;
    while started.elapsed() < Duration::from_secs(8) {
        let (status, body, _) = stack.get(&format!("/v1/products/{id}")).await;
        // Judge the settled state: the second half.
        if started.elapsed() < Duration::from_secs(4) {
            continue;
        }
        counted_from.get_or_insert(stack.products_calls().await);
        match status {
            StatusCode::OK => served += 1,
            StatusCode::SERVICE_UNAVAILABLE if body["reason"] == "CIRCUIT_OPEN" => dropped += 1,
            StatusCode::SERVICE_UNAVAILABLE => failed += 1,
            other => panic!("unexpected {other}: {body}"),
        }
    }
    let offered = served + failed + dropped;
    let admitted = f64::from(served + failed) / f64::from(offered);
    eprintln!(
        "adaptive breaker, 50 % injected errors: {offered} calls, {served} served, {failed} failed, {dropped} dropped; admitted {admitted:.2} (k·s = 0.75)"
    );
    assert!(offered > 200, "too few calls to judge: {offered}");
    assert!((0.6..=0.9).contains(&admitted), "admitted share {admitted:.2}");
    // What the gateway thinks it sent is what products received.
    let received = stack.products_calls().await - counted_from.unwrap();
    assert!((received - f64::from(served + failed)).abs() <= 2.0, "{received} received vs {} sent", served + failed);
    assert!(stack.products_calls().await > before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_stay_within_the_budget_when_a_backend_always_fails() {
    let stack = Stack::start(
        r#"
[gateway.routes."shopfast.products.v1.ProductService.GetProduct"]
attempts = 5

[gateway.dependencies.products]
retry = { max_attempts = 5, budget_ratio = 0.2, min_retries_per_sec = 0, base_backoff_ms = 1, max_backoff_ms = 2 }

[gateway.dependencies.products.breaker]
policy = "classic"
failure_threshold = 1000000
volume_threshold = 1000000
"#,
    );
    let id = stack.product_id().await;
    stack.set_faults(json!([{ "method": GET_PRODUCT, "error_rate": 1.0 }])).await;
    let before = stack.products_calls().await;
    let requests = 200;
    for _ in 0..requests {
        let (status, _, _) = stack.get(&format!("/v1/products/{id}")).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    }
    let attempts = stack.products_calls().await - before;
    eprintln!("{requests} requests, backend failing 100 %: {attempts} attempts");
    assert!(attempts > f64::from(requests), "some retries happen: {attempts}");
    // The budget: 20 % of requests (+1 for the budget's rounding).
    assert!(attempts <= f64::from(requests) * 1.2 + 1.0, "{attempts} attempts for {requests} requests");
    let metrics = stack.metrics(&stack.url()).await;
    assert!(metrics.contains(r#"retry_budget_exhausted_total{service="products"}"#));
    assert!(metrics.contains(r#"retries_total{service="products"}"#));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cached_fallback_answers_reads_while_the_backend_is_down() {
    let stack = Stack::start(
        r#"
[gateway.dependencies.products]
fallback = "cached"
"#,
    );
    let id = stack.product_id().await;
    let (status, fresh, _) = stack.get(&format!("/v1/products/{id}")).await;
    assert_eq!(status, StatusCode::OK);
    let mut stack = stack;
    // Killed and reaped (`kill9` waits): every read from here on meets a dead backend.
    stack.products.take().unwrap().kill9();
    let mut latencies = Vec::new();
    for _ in 0..40 {
        let started = Instant::now();
        let (status, cached, headers) = stack.get(&format!("/v1/products/{id}")).await;
        latencies.push(started.elapsed());
        assert_eq!(status, StatusCode::OK, "{cached}");
        assert_eq!(cached, fresh, "the last good answer");
        assert_eq!(headers["x-fallback"], "cached");
        assert!(headers.contains_key("age"));
    }
    eprintln!("cached fallback: p50 {:?}", median(latencies));
    let metrics = stack.metrics(&stack.url()).await;
    assert!(metrics.contains(r#"fallback_requests_total{service="products",kind="cached"} 40"#));
    assert!(metrics.contains(r#"fallback_latency_seconds_count{service="products",kind="cached"} 40"#));
    // Never fetched: nothing to fall back on.
    let (status, body, _) = stack.get("/v1/products/00000000-0000-7000-8000-000000000000").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queued_writes_are_delivered_once_the_backend_is_back() {
    let stack = Stack::start(
        r#"
[gateway.dependencies.products]
fallback = "queue"

[gateway.dependencies.products.breaker]
policy = "classic"
failure_threshold = 2
open_ms = 500
success_threshold = 1

[gateway.limits]
max_deferred_calls = 3
"#,
    );
    stack.product_id().await;
    let mut stack = stack;
    stack.products.take().unwrap().kill9();
    let create = |sku: &str| {
        json!({ "name": format!("Queued {sku}"), "description": "made while products was down", "sku": sku,
                "price": { "minorUnits": "1234", "currencyCode": "USD" }, "stock": "7", "category": "queued", "active": true })
    };
    let (mut accepted, mut full) = (Vec::new(), 0);
    for n in 0..7 {
        let sku = format!("QUEUED-{n}");
        let response = stack
            .http
            .post(format!("{}/v1/products", stack.url()))
            .header("x-api-key", "admin-key")
            .json(&create(&sku))
            .send()
            .await
            .unwrap();
        let status = response.status();
        let headers = response.headers().clone();
        let body: Value = response.json().await.unwrap();
        if status == StatusCode::ACCEPTED {
            assert_eq!(headers["x-fallback"], "queue");
            assert!(body["deferred_id"].is_string(), "{body}");
            accepted.push(sku);
        } else {
            // A call that may have reached the dead instance is refused rather
            // than queued, and so is one past the queue's bound.
            assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
            if body["reason"] == "DEFERRED_QUEUE_FULL" {
                assert!(headers.contains_key("retry-after"));
                full += 1;
            }
        }
    }
    assert_eq!(accepted.len(), 3, "writes refused by the open breaker are queued, up to the bound: {accepted:?}");
    assert!(full >= 2, "the rest are refused as the queue is full ({full})");
    // Reads are never queued.
    let (status, _, _) = stack.get("/v1/products?pageSize=1").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);

    stack.products = Some(stack.start_products());
    for sku in &accepted {
        let query = format!("/v1/products?query={sku}&pageSize=5");
        eventually(Duration::from_secs(15), "queued write delivered", || {
            let stack = &stack;
            let query = &query;
            async move {
                let (status, page, _) = stack.get(query).await;
                status == StatusCode::OK
                    && page["products"].as_array().is_some_and(|p| p.iter().any(|x| x["sku"] == sku.as_str()))
            }
        })
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_injection_is_refused_unless_enabled_and_rejects_bad_rules() {
    let data = tempfile::tempdir().unwrap();
    let registry = Proc::registry("127.0.0.1:0", 200, 1_000, 300);
    let plain = Proc::service("products", data.path(), &registry.url(), &[]);
    let http = reqwest::Client::new();
    let admin = format!("http://{}/admin/faults", plain.addr("admin_addr"));
    let response =
        http.put(&admin).json(&json!({ "rules": [{ "method": "*", "error_rate": 1.0 }] })).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::FORBIDDEN);
    assert!(response.text().await.unwrap().contains("--enable-fault-injection"));
    let listing: Value = http.get(&admin).send().await.unwrap().json().await.unwrap();
    assert_eq!(listing, json!({ "enabled": false, "rules": [] }));

    let enabled = Proc::service("products", &data.path().join("b"), &registry.url(), &["--enable-fault-injection"]);
    let admin = format!("http://{}/admin/faults", enabled.addr("admin_addr"));
    for (body, expected) in [
        (json!({ "rules": [{ "method": "*", "error_rate": 2 }] }), StatusCode::UNPROCESSABLE_ENTITY),
        (json!({ "rules": [{ "method": "GetProduct" }] }), StatusCode::UNPROCESSABLE_ENTITY),
        (json!({ "rules": [{ "method": "*", "error_code": "TEAPOT" }] }), StatusCode::UNPROCESSABLE_ENTITY),
        (json!({ "rules": [{ "method": "*", "bogus": 1 }] }), StatusCode::BAD_REQUEST),
        (json!({ "nothing": [] }), StatusCode::BAD_REQUEST),
        (json!([1, 2]), StatusCode::BAD_REQUEST),
    ] {
        let response = http.put(&admin).json(&body).send().await.unwrap();
        assert_eq!(response.status(), expected, "{body}");
    }
    let response = http.put(&admin).header("content-type", "application/json").body("{not json").send().await.unwrap();
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    let listing: Value = http.get(&admin).send().await.unwrap().json().await.unwrap();
    assert_eq!(listing["rules"], json!([]), "nothing applied from refused rule sets");

    let ok = http
        .put(&admin)
        .json(&json!({ "rules": [{ "method": "*", "latency_ms": 5, "abort_rate": 0.0 }] }))
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), StatusCode::OK);
    let cleared: Value = http.delete(&admin).send().await.unwrap().json().await.unwrap();
    assert_eq!(cleared["rules"], json!([]));
    drop(enabled);
    drop(plain);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bulkhead_caps_calls_to_one_backend_and_aborted_calls_count_as_failures() {
    let stack = Stack::start(
        r#"
[gateway.dependencies.products]
max_concurrency = 2
retry = { max_attempts = 1 }
"#,
    );
    let id = stack.product_id().await;
    let path = format!("/v1/products/{id}");
    let (served, refused) = stack.slow_gets_at_once(&path, 8, 500, "BULKHEAD_FULL").await;
    assert_eq!((served, refused), (2, 6), "two seats");

    stack.set_faults(json!([{ "method": GET_PRODUCT, "abort_rate": 1.0 }])).await;
    let (status, body, _) = stack.get(&path).await;
    assert!(status.is_server_error(), "{status}: {body}");
    assert_eq!(body["message"], "service unavailable", "no transport detail leaks");
    let metrics = stack.metrics(&stack.url()).await;
    assert!(metrics.contains(r#"bulkhead_rejected_total{service="products"} 6"#));
    assert!(metrics.contains(r#"circuit_breaker_failures_total{service="products"} 1"#), "the abort counted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_with_its_deadline_spent_is_not_started() {
    use contracts::products::v1 as pb;
    let stack = Stack::start("");
    let id = stack.product_id().await;
    let products = stack.products.as_ref().unwrap();
    let mut client =
        pb::product_service_client::ProductServiceClient::connect(format!("http://{}", products.addr("grpc_addr")))
            .await
            .unwrap();
    let reserve = |timeout: Duration| {
        let mut request = tonic::Request::new(pb::ReserveInventoryRequest {
            order_id: "deadline-test-1".into(),
            items: vec![pb::LineItem { product_id: id.clone(), quantity: 1 }],
            ..Default::default()
        });
        request.set_timeout(timeout);
        request
    };
    // tonic's client would not even send a spent call; send it by hand, as
    // any client may: HTTP/2, a gRPC frame, grpc-timeout 0.
    let message = prost::Message::encode_to_vec(&pb::ReserveInventoryRequest {
        order_id: "deadline-test-1".into(),
        items: vec![pb::LineItem { product_id: id.clone(), quantity: 1 }],
        ..Default::default()
    });
    let mut frame = vec![0u8];
    frame.extend_from_slice(&(message.len() as u32).to_be_bytes());
    frame.extend_from_slice(&message);
    let h2 = reqwest::Client::builder().http2_prior_knowledge().build().unwrap();
    let response = h2
        .post(format!("http://{}/shopfast.products.v1.ProductService/ReserveInventory", products.addr("grpc_addr")))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .header("grpc-timeout", "0n")
        .body(frame)
        .send()
        .await
        .unwrap();
    assert_eq!(response.headers()["grpc-status"], "4", "DEADLINE_EXCEEDED");
    let product = client.get_product(pb::GetProductRequest { product_id: id.clone() }).await.unwrap().into_inner();
    assert_eq!(product.reserved, 0, "nothing was reserved");
    // With time left the same call runs.
    client.reserve_inventory(reserve(Duration::from_secs(5))).await.unwrap();
    let product = client.get_product(pb::GetProductRequest { product_id: id }).await.unwrap().into_inner();
    assert_eq!(product.reserved, 1);
}

#[test]
fn bad_resilience_config_stops_the_gateway_with_a_clear_message() {
    let data = tempfile::tempdir().unwrap();
    for (tables, expected) in [
        ("[gateway.dependencies.nope]\nfallback = \"cached\"\n", "dependencies.nope is not a backend"),
        ("[gateway.dependencies.products.breaker]\npolicy = \"classic\"\nbogus = 1\n", "bogus"),
        ("[gateway.dependencies.products.breaker]\npolicy = \"sometimes\"\n", "sometimes"),
        ("[gateway.dependencies.products]\nfallback = \"pray\"\n", "pray"),
        ("[gateway.dependencies.products]\nretry = { max_attempts = -1 }\n", "max_attempts"),
    ] {
        let config = write_config(data.path(), tables);
        let out = std::process::Command::new(support::SHOPFAST)
            .env("SHOPFAST_GATEWAY__TOKEN_SECRET", kit::testing::TEST_TOKEN_SECRET)
            .args([
                "gateway",
                "--insecure",
                "--addr",
                "127.0.0.1:0",
                "--registry-url",
                "http://127.0.0.1:9",
                "--config",
            ])
            .arg(&config)
            .arg("--data-dir")
            .arg(data.path())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{tables}");
        assert!(stderr.contains(expected), "{tables}: {stderr}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_overloaded_service_sheds_instead_of_queueing() {
    // A hard cap of one call in flight makes shedding certain without burning CPU.
    let stack = Stack::start(
        r#"
[gateway.dependencies.products]
retry = { max_attempts = 1 }

[products.shedding]
max_in_flight = 1
"#,
    );
    let id = stack.product_id().await;
    let (served, shed) = stack.slow_gets_at_once(&format!("/v1/products/{id}"), 4, 300, "OVERLOADED").await;
    assert_eq!((served, shed), (1, 3));
    let metrics = stack.metrics(&stack.products_admin()).await;
    assert!(metrics.contains(r#"server_shed_total{service="products"} 3"#), "{metrics}");
    promtool_accepts(&metrics);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_default_fallback_answers_reads_with_an_empty_response_and_never_writes() {
    let stack = Stack::start(
        r#"
[gateway.dependencies.products]
fallback = "default"
"#,
    );
    stack.product_id().await;
    let mut stack = stack;
    stack.products.take().unwrap().kill9();
    let (status, page, headers) = stack.get("/v1/products?pageSize=5").await;
    assert_eq!(status, StatusCode::OK, "{page}");
    assert_eq!(headers["x-fallback"], "default");
    assert_eq!(page["products"], json!([]), "{page}");
    // A write must not pretend to have happened.
    let response = stack
        .http
        .post(format!("{}/v1/products", stack.url()))
        .header("x-api-key", "admin-key")
        .json(&json!({ "name": "Nope", "sku": "NOPE-1", "price": { "minorUnits": "1", "currencyCode": "USD" } }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(!response.headers().contains_key("x-fallback"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idempotency_key_makes_a_write_happen_once() {
    let stack = Stack::start("");
    stack.product_id().await;
    let create = |sku: &str| {
        json!({ "name": "Once only", "description": "idempotent", "sku": sku, "category": "idem",
                "price": { "minorUnits": "500", "currencyCode": "USD" }, "stock": "3", "active": true })
    };
    let post = |key: &'static str, body: Value| {
        stack
            .http
            .post(format!("{}/v1/products", stack.url()))
            .header("x-api-key", "admin-key")
            .header("idempotency-key", key)
            .json(&body)
            .send()
    };
    // 20 at once with one key, the method slowed so they overlap: one
    // product; the rest hear "in progress" (or, once done, get it replayed).
    stack
        .set_faults(json!([{ "method": "/shopfast.products.v1.ProductService/CreateProduct", "latency_ms": 300 }]))
        .await;
    let answers = futures::future::join_all((0..20).map(|_| post("create-once-1", create("ONCE-1")))).await;
    let mut ids = std::collections::BTreeSet::new();
    let mut in_progress = 0;
    for answer in answers {
        let answer = answer.unwrap();
        let status = answer.status();
        let body: Value = answer.json().await.unwrap();
        match status {
            StatusCode::OK => {
                ids.insert(body["id"].as_str().unwrap().to_string());
            }
            StatusCode::CONFLICT => {
                assert_eq!(body["code"], "ABORTED", "{body}");
                in_progress += 1;
            }
            other => panic!("{other}: {body}"),
        }
    }
    assert_eq!(ids.len(), 1, "one product, whoever answered");
    assert!(in_progress > 0, "the duplicates overlapped the first call");
    eprintln!(
        "20 concurrent duplicates: {} answered with the product, {in_progress} told in progress",
        20 - in_progress
    );
    // Later retries get the same answer.
    let again: Value = post("create-once-1", create("ONCE-1")).await.unwrap().json().await.unwrap();
    assert_eq!(ids.iter().next().unwrap(), again["id"].as_str().unwrap());
    let (_, page, _) = stack.get("/v1/products?query=ONCE-1").await;
    assert_eq!(page["products"].as_array().unwrap().len(), 1);
    // The same key for a different request is refused, and nothing is created.
    let reused = post("create-once-1", create("ONCE-2")).await.unwrap();
    assert_eq!(reused.status(), StatusCode::UNPROCESSABLE_ENTITY, "the IETF idempotency-key draft's answer");
    let (_, page, _) = stack.get("/v1/products?query=ONCE-2").await;
    assert_eq!(page["products"], json!([]));
}
