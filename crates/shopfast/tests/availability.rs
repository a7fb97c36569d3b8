//! Availability under failure, through the gateway of a real `shopfast up`:
//! one user cannot refuse service to everyone by tripping a breaker; a
//! service killed with SIGKILL (and restarted by `up`) serves again within
//! two seconds of being ready; a service that hangs opens its breaker and
//! callers fail fast instead of waiting, then recover when it is back.
#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

mod support;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::Value;
use support::{Shopper, Up, child_pids, eventually, instances, sample, signal};

/// One request the load made.
#[derive(Debug, Clone)]
struct Sent {
    kind: &'static str,
    at: Instant,
    took: Duration,
    status: Option<StatusCode>,
    retry_after: bool,
}

impl Sent {
    fn ok(&self) -> bool {
        self.status.is_some_and(|s| s.is_success())
    }
}

/// Steady open-loop load through the gateway: each kind at its rate, every
/// request on its own task so a hung one holds nothing up.
struct Load {
    sent: Arc<Mutex<Vec<Sent>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    fn start(kinds: Vec<(&'static str, u32, reqwest::RequestBuilder)>) -> Self {
        let sent = Arc::new(Mutex::new(Vec::new()));
        let tasks = kinds
            .into_iter()
            .map(|(kind, per_second, request)| {
                let sent = sent.clone();
                tokio::spawn(async move {
                    let mut tick = tokio::time::interval(Duration::from_secs(1) / per_second);
                    loop {
                        tick.tick().await;
                        let Some(request) = request.try_clone() else { return };
                        // Orders need a fresh idempotency key each.
                        let request = request.header("idempotency-key", uuid::Uuid::now_v7().to_string());
                        let sent = sent.clone();
                        tokio::spawn(async move {
                            let at = Instant::now();
                            let response = request.timeout(Duration::from_secs(15)).send().await;
                            let (status, retry_after) = match &response {
                                Ok(r) => (Some(r.status()), r.headers().contains_key("retry-after")),
                                Err(_) => (None, false),
                            };
                            sent.lock().unwrap().push(Sent { kind, at, took: at.elapsed(), status, retry_after });
                        });
                    }
                })
            })
            .collect();
        Self { sent, tasks }
    }

    fn sent(&self) -> Vec<Sent> {
        self.sent.lock().unwrap().clone()
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// The traffic generator's API key `up` keeps in the data dir: its tier is
/// not rate-limited like a user's key, so the load measures the services.
fn load_key(data: &std::path::Path) -> String {
    std::fs::read_to_string(data.join("secrets").join("loadgen_key")).unwrap().trim().to_string()
}

async fn gateway_metrics(gateway: &str) -> String {
    reqwest::get(format!("{gateway}/metrics")).await.unwrap().text().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_user_failing_their_own_orders_cannot_refuse_service_to_everyone() {
    let data = tempfile::tempdir().unwrap();
    let up = Up::start(data.path(), &["--no-loadgen", "--no-console"], &[]);
    let attacker = Shopper::sign_up(&up.gateway, &up.api_key, "attacker@example.com").await;
    let victim = Shopper::sign_up(&up.gateway, &up.api_key, "victim@example.com").await;
    let product = attacker.product_in_stock().await;

    // Five orders with the card whose processor always fails "try again",
    // at once: each is retried a bounded number of times, then refused with
    // the reason — promptly, not at the gateway's deadline.
    let attacks = (0..5).map(|_| {
        let request = attacker.request(reqwest::Method::POST, "/v1/orders");
        let order = Shopper::order_of(&product, "4000000000000119");
        async move {
            let started = Instant::now();
            let response = request.json(&order).send().await.unwrap();
            (response.status(), started.elapsed(), response.json::<Value>().await.unwrap())
        }
    });
    for (status, took, body) in futures::future::join_all(attacks).await {
        assert_eq!(status, StatusCode::CONFLICT, "{body}");
        assert_eq!(body["reason"], "PAYMENT_PROCESSING_FAILED", "a clear reason: {body}");
        assert!(took < Duration::from_secs(5), "answered in {took:?}");
    }
    let metrics = gateway_metrics(&up.gateway).await;
    assert_eq!(sample(&metrics, "circuit_breaker_state", r#"service="orders""#), Some(0.0), "orders' breaker closed");

    // Right after, another user's good order goes through.
    let order = Shopper::order_of(&product, "4242424242424242");
    let response = victim.request(reqwest::Method::POST, "/v1/orders").json(&order).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::CREATED, "{}", response.text().await.unwrap());
    assert!(up.stop().0);
}

/// The kind of request that needs `service`.
fn needs(service: &str) -> &'static str {
    match service {
        "products" => "product",
        "payments" => "order",
        _ => "orders",
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_service_serves_again_within_two_seconds_of_being_ready() {
    let data = tempfile::tempdir().unwrap();
    let up = Up::start(data.path(), &["--no-loadgen", "--no-console"], &[]);
    let key = load_key(data.path());
    let shopper = Shopper::sign_up(&up.gateway, &up.api_key, "steady@example.com").await;
    let product = shopper.product_in_stock().await;
    let http = reqwest::Client::new();
    let call = |method: reqwest::Method, path: &str| {
        http.request(method, format!("{}{path}", up.gateway)).header("x-api-key", &key).bearer_auth(&shopper.token)
    };
    let load = Load::start(vec![
        ("product", 30, call(reqwest::Method::GET, &format!("/v1/products/{product}"))),
        ("orders", 10, call(reqwest::Method::GET, "/v1/orders?pageSize=5")),
        ("order", 5, call(reqwest::Method::POST, "/v1/orders").json(&Shopper::order_of(&product, "4242424242424242"))),
    ]);
    // Every kind of call served since `from`: the load flows (or flows again).
    let all_served_since = |from: Instant| {
        let sent = load.sent();
        ["product", "orders", "order"].iter().all(|k| sent.iter().any(|s| s.kind == *k && s.at >= from && s.ok()))
    };
    let began = Instant::now();
    eventually(Duration::from_secs(10), "the load flowing", || async { all_served_since(began) }).await;

    let mut report = Vec::new();
    for victim in ["products", "payments", "orders"] {
        let pid = child_pids(data.path(), victim)[0];
        let killed_at = Instant::now();
        signal(pid, "-KILL");
        // `up` restarts it on the same ports; it is ready once registered again.
        let ready_at = loop {
            let restarted = instances(&up, victim).await.iter().any(|i| i["metadata"]["restarts"] == "1");
            if restarted {
                break Instant::now();
            }
            assert!(killed_at.elapsed() < Duration::from_secs(20), "{victim} not back");
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        // Serving again: every kind of call since it was ready (so the next
        // victim meets a stack that has settled).
        eventually(Duration::from_secs(10), &format!("{victim} serving again"), || async {
            all_served_since(ready_at)
        })
        .await;
        let kind = needs(victim);
        let sent = load.sent();
        let back = sent
            .iter()
            .filter(|s| s.kind == kind && s.at >= ready_at && s.ok())
            .map(|s| s.at + s.took)
            .min()
            .expect("a success after the restart");
        let gap = back.saturating_duration_since(ready_at);
        let refused = sent.iter().filter(|s| s.kind == kind && s.at >= killed_at && !s.ok()).count();
        report.push(format!(
            "{victim}: down → ready {:?}, ready → serving again {gap:?}, {refused} {kind} requests failed",
            ready_at - killed_at
        ));
        assert!(gap <= Duration::from_secs(2), "{victim}: serving again {gap:?} after it was ready");
    }
    let sent = load.sent();
    let failed: Vec<&Sent> = sent.iter().filter(|s| !s.ok()).collect();
    println!("{}\n{} requests, {} failed", report.join("\n"), sent.len(), failed.len());
    // What failed said so clearly: a status (no hang past the route timeout), 503s with Retry-After.
    for s in &failed {
        let status = s.status.unwrap_or_else(|| panic!("a request got no answer: {s:?}"));
        assert!([502, 503, 504].contains(&status.as_u16()), "{s:?}");
        if status == StatusCode::SERVICE_UNAVAILABLE {
            assert!(s.retry_after, "503 without Retry-After: {s:?}");
        }
    }
    assert!(up.stop().0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_service_opens_its_breaker_so_callers_fail_fast_and_recover_when_it_is_back() {
    let data = tempfile::tempdir().unwrap();
    let up = Up::start(data.path(), &["--no-loadgen", "--no-console"], &[]);
    let key = load_key(data.path());
    let http = reqwest::Client::new();
    let page: Value = http
        .get(format!("{}/v1/products?pageSize=1", up.gateway))
        .header("x-api-key", &key)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let product = page["products"][0]["id"].as_str().unwrap().to_string();
    let read = http.get(format!("{}/v1/products/{product}", up.gateway)).header("x-api-key", &key);
    let load = Load::start(vec![("product", 30, read)]);
    tokio::time::sleep(Duration::from_secs(1)).await;

    // Products stops answering (SIGSTOP: alive, connected, silent).
    let pid = child_pids(data.path(), "products")[0];
    let stopped_at = Instant::now();
    signal(pid, "-STOP");
    tokio::time::sleep(Duration::from_secs(9)).await;
    let metrics = gateway_metrics(&up.gateway).await;
    let opened =
        sample(&metrics, "circuit_breaker_state_transitions_total", r#"service="products",from="closed",to="open""#);
    assert_eq!(opened, Some(1.0), "the breaker opened once:\n{metrics}");
    // Once open, callers hear 503 with Retry-After at once instead of waiting 5 s.
    let late: Vec<Sent> = load.sent().into_iter().filter(|s| s.at >= stopped_at + Duration::from_secs(7)).collect();
    let fast = late
        .iter()
        .filter(|s| {
            s.status == Some(StatusCode::SERVICE_UNAVAILABLE) && s.took < Duration::from_millis(200) && s.retry_after
        })
        .count();
    assert!(late.len() >= 30, "{} requests sent", late.len());
    assert!(fast * 10 >= late.len() * 9, "{fast} of {} failed fast", late.len());

    // Back: requests succeed again within the breaker's current open time.
    let resumed_at = Instant::now();
    signal(pid, "-CONT");
    let back = loop {
        let served = load.sent().iter().filter(|s| s.at >= resumed_at && s.ok()).map(|s| s.at + s.took).min();
        if let Some(back) = served {
            break back - resumed_at;
        }
        assert!(resumed_at.elapsed() < Duration::from_secs(20), "not serving again");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    println!(
        "hung products: breaker open, {fast} of {} late calls failed fast; serving again {back:?} after it resumed",
        late.len()
    );
    assert!(back < Duration::from_secs(10), "serving again after {back:?}");
    drop(load);
    assert!(up.stop().0);
}
