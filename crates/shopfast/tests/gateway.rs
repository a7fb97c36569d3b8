//! The gateway end to end, with real processes: registry, users, products and
//! one or two gateways, configured from one TOML file as a user would.
#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

mod support;

use std::path::Path;
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{Value, json};
use support::{Proc, Shopper, eventually, json_reply};

/// A stack sharing one config file.
struct Stack {
    _registry: Proc,
    _users: Proc,
    products: Option<Proc>,
    registry_url: String,
    config: std::path::PathBuf,
    data: tempfile::TempDir,
}

/// `gateway_keys` go in the [gateway] table; `tables` are appended.
fn write_config(dir: &Path, gateway_keys: &str, tables: &str) -> std::path::PathBuf {
    let path = dir.join("shopfast.toml");
    let text = format!(
        r#"
[gateway]
{gateway_keys}

[gateway.tiers.tiny]
per_minute = 6000
burst = 100
monthly_quota = 5

[gateway.api_keys.free-key-1]
client = "acme"
tier = "free"

[gateway.api_keys.free-key-2]
client = "globex"
tier = "free"

[gateway.api_keys.admin-key]
client = "ops"
tier = "enterprise"
admin = true

[gateway.api_keys.tiny-key]
client = "tiny"
tier = "tiny"
{tables}
"#
    );
    std::fs::write(&path, text).unwrap();
    path
}

impl Stack {
    async fn start(gateway_keys: &str, tables: &str) -> Self {
        let data = tempfile::tempdir().unwrap();
        let config = write_config(data.path(), gateway_keys, tables);
        let registry = Proc::registry("127.0.0.1:0", 200, 1_000, 500);
        let url = registry.url();
        let cfg = config.to_str().unwrap().to_string();
        let users = Proc::service("users", data.path(), &url, &["--config", &cfg]);
        let products = Proc::service("products", data.path(), &url, &["--config", &cfg]);
        Self { _registry: registry, _users: users, products: Some(products), registry_url: url, config, data }
    }

    fn gateway(&self, dir_name: &str, extra: &[&str]) -> Proc {
        let dir = self.data.path().join(dir_name);
        std::fs::create_dir_all(&dir).unwrap();
        let mut args = vec![
            "gateway",
            "--addr",
            "127.0.0.1:0",
            "--registry-url",
            &self.registry_url,
            "--config",
            self.config.to_str().unwrap(),
            "--data-dir",
            dir.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        Proc::start(&args)
    }
}

fn base(gateway: &Proc) -> String {
    format!("http://{}", gateway.addr("addr"))
}

async fn body(response: reqwest::Response) -> (StatusCode, Value) {
    let (status, _, body) = json_reply(response).await;
    (status, body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shopper_journey_and_the_errors_around_it() {
    // Room for the many anonymous calls of this test.
    let mut stack =
        Stack::start("", "[gateway.tiers.anonymous]\nper_minute = 6000\nburst = 1000\nmonthly_quota = 0\n").await;
    let gateway = stack.gateway("gw", &[]);
    let url = base(&gateway);
    let http = reqwest::Client::new();
    let key = ("X-API-Key", "free-key-1");

    // Register, log in, browse, read one's own profile.
    let shopper = Shopper::sign_up(&url, key.1, "shopper@example.com").await;
    let (user_id, token) = (shopper.user_id.clone(), shopper.token.clone());

    let (status, page) = body(
        http.get(format!("{url}/v1/products?category=books&pageSize=3")).header(key.0, key.1).send().await.unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(page["products"].as_array().unwrap().len(), 3);
    assert_eq!(page["totalSize"], "10");
    let product_id = page["products"][0]["id"].as_str().unwrap().to_string();
    let (status, found) =
        body(http.get(format!("{url}/v1/products?query=rust%20programming")).send().await.unwrap()).await;
    assert_eq!((status, found["totalSize"].clone()), (StatusCode::OK, json!("1")));
    let (status, one) =
        body(http.get(format!("{url}/v1/products/{product_id}")).header(key.0, key.1).send().await.unwrap()).await;
    assert_eq!((status, one["id"].as_str()), (StatusCode::OK, Some(product_id.as_str())));
    let (status, batch) = body(
        http.post(format!("{url}/v1/products:batchGet"))
            .header(key.0, key.1)
            .json(&json!({ "productIds": [product_id, "nope"] }))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!((status, batch["missingIds"].clone()), (StatusCode::OK, json!(["nope"])));

    let bearer = format!("Bearer {token}");
    let (status, me) =
        body(http.get(format!("{url}/v1/users/{user_id}")).header("authorization", &bearer).send().await.unwrap())
            .await;
    assert_eq!((status, me["email"].as_str()), (StatusCode::OK, Some("shopper@example.com")));
    let (status, renamed) = body(
        http.patch(format!("{url}/v1/users/{user_id}"))
            .header("authorization", &bearer)
            .json(&json!({ "name": "Shopper Two" }))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!((status, renamed["name"].as_str()), (StatusCode::OK, Some("Shopper Two")));

    // Someone else's profile, no token, a bad token.
    let (status, denied) =
        body(http.get(format!("{url}/v1/users/someone-else")).header("authorization", &bearer).send().await.unwrap())
            .await;
    assert_eq!((status, denied["code"].as_str()), (StatusCode::FORBIDDEN, Some("PERMISSION_DENIED")));
    let (status, _) = body(http.get(format!("{url}/v1/users/{user_id}")).send().await.unwrap()).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, _) = body(
        http.get(format!("{url}/v1/users/{user_id}")).header("authorization", "Bearer x.y.z").send().await.unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, _) =
        body(http.get(format!("{url}/v1/products")).header("X-API-Key", "stolen").send().await.unwrap()).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "unknown API key");

    // Unknown route, wrong method, internal method, garbage bodies.
    let (status, missing) = body(http.get(format!("{url}/v1/nowhere")).send().await.unwrap()).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(missing["trace_id"].as_str().unwrap().len(), 32);
    let wrong = http.delete(format!("{url}/v1/products")).send().await.unwrap();
    assert_eq!(wrong.status(), StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(wrong.headers()["allow"], "GET, POST");
    let (status, _) =
        body(http.post(format!("{url}/v1/inventory/reservations")).json(&json!({})).send().await.unwrap()).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "service-only methods are not exposed");
    let (status, bad) =
        body(http.post(format!("{url}/v1/users")).json(&json!({ "email": 5 })).send().await.unwrap()).await;
    assert_eq!((status, bad["field"].as_str()), (StatusCode::BAD_REQUEST, Some("/email")));
    let (status, bad) = body(
        http.post(format!("{url}/v1/users"))
            .header("content-type", "application/json")
            .body(r#"{"address": {"city": [1]}}"#)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!((status, bad["field"].as_str()), (StatusCode::BAD_REQUEST, Some("/address/city")));
    let (status, _) = body(
        http.post(format!("{url}/v1/users"))
            .header("content-type", "application/json")
            .body("{not json")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, _) =
        body(http.post(format!("{url}/v1/users")).json(&json!({ "nonsense": true })).send().await.unwrap()).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "unknown fields are refused");
    let (status, _) = body(
        http.post(format!("{url}/v1/users")).header("content-type", "text/plain").body("hi").send().await.unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    let (status, _) = body(http.get(format!("{url}/v1/products?pageSize=abc")).send().await.unwrap()).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, _) = body(http.get(format!("{url}/v1/products?bogus=1")).send().await.unwrap()).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, _) = body(http.get(format!("{url}/v1/products?sort=SIDEWAYS")).send().await.unwrap()).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let huge = "x".repeat(2 * 1024 * 1024);
    // Over HTTP/2: the gateway answers 413 before reading the body; HTTP/1.1
    // would have to close the connection under a client still writing.
    let h2 = reqwest::Client::builder().http2_prior_knowledge().build().unwrap();
    let (status, _) = body(
        h2.post(format!("{url}/v1/users")).header("content-type", "application/json").body(huge).send().await.unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    // Over HTTP/2, a body sent to no route, or with the wrong method, gets its JSON answer, not a reset.
    for (method, path, status, code) in [
        (reqwest::Method::POST, "/v1/nowhere", StatusCode::NOT_FOUND, "NOT_FOUND"),
        (reqwest::Method::PUT, "/v1/users", StatusCode::METHOD_NOT_ALLOWED, "METHOD_NOT_ALLOWED"),
    ] {
        let sent = h2.request(method, format!("{url}{path}")).json(&json!({ "some": "x".repeat(900_000) })).send();
        let (got, answer) = body(sent.await.unwrap()).await;
        assert_eq!((got, answer["code"].as_str()), (status, Some(code)), "{path}: {answer}");
    }
    // A query that is not UTF-8 once percent-decoded: 400, not a search for something else.
    let (status, bad) = body(http.get(format!("{url}/v1/products?query=%FF")).send().await.unwrap()).await;
    assert_eq!((status, bad["code"].as_str()), (StatusCode::BAD_REQUEST, Some("INVALID_ARGUMENT")), "{bad}");
    let (status, _) =
        body(http.post(format!("{url}/v1/users")).header("Idempotency-Key", "").json(&json!({})).send().await.unwrap())
            .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, conflict) = body(
        http.post(format!("{url}/v1/users"))
            .json(&json!({ "email": "shopper@example.com", "password": "walk the aisles 1", "name": "Again" }))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!((status, conflict["code"].as_str()), (StatusCode::CONFLICT, Some("ALREADY_EXISTS")));

    // Admin-only: creating a product.
    let new_product = json!({ "sku": "GW-1", "name": "Gateway mug", "category": "home", "price": { "currencyCode": "USD", "minorUnits": "1200" }, "stock": "5" });
    let (status, _) =
        body(http.post(format!("{url}/v1/products")).header(key.0, key.1).json(&new_product).send().await.unwrap())
            .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, created) = body(
        http.post(format!("{url}/v1/products"))
            .header("X-API-Key", "admin-key")
            .json(&new_product)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!((status, created["sku"].as_str()), (StatusCode::OK, Some("GW-1")));

    // The caller's trace continues; the trace id comes back.
    let traced = http
        .get(format!("{url}/v1/products/{product_id}"))
        .header("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
        .send()
        .await
        .unwrap();
    assert_eq!(traced.headers()["x-trace-id"], "4bf92f3577b34da6a3ce929d0e0e4736");

    // The OpenAPI document comes from the same annotations.
    let (status, doc) = body(http.get(format!("{url}/openapi.json")).send().await.unwrap()).await;
    assert_eq!(status, StatusCode::OK);
    assert!(doc["paths"]["/v1/products/{product_id}"]["get"].is_object());
    assert!(doc["paths"]["/v1/users/{user_id}"]["patch"].is_object());
    assert!(doc["paths"].get("/v1/inventory/reservations").is_none(), "internal methods stay out");
    // Placing an order answers 201 or 202 (async request-reply), each with a Location; cancelling 200 or 202.
    let create = &doc["paths"]["/v1/orders"]["post"]["responses"];
    assert!(create["201"]["headers"]["Location"].is_object() && create["202"]["headers"]["Location"].is_object());
    assert!(create.get("200").is_none(), "{create}");
    let cancel = &doc["paths"]["/v1/orders/{order_id}:cancel"]["post"]["responses"];
    assert!(cancel["200"].is_object() && cancel["202"].is_object(), "{cancel}");
    // Every reason a refusal may carry is listed, so clients can branch on them.
    let reasons = &doc["components"]["schemas"]["Error"]["properties"]["reason"]["enum"];
    for reason in kit_core::reason::Reason::ALL {
        assert!(reasons.as_array().unwrap().iter().any(|r| r == reason.as_str()), "{reason} missing: {reasons}");
    }

    // No products instance left: 503 at once, not a hang.
    stack.products.take().unwrap().kill9();
    let started = Instant::now();
    let (status, down) = body(http.get(format!("{url}/v1/products/{product_id}")).send().await.unwrap()).await;
    assert_eq!((status, down["code"].as_str()), (StatusCode::SERVICE_UNAVAILABLE, Some("UNAVAILABLE")), "{down}");
    assert_eq!(down["reason"], "NO_INSTANCE", "{down}");
    assert!(started.elapsed() < Duration::from_secs(2), "took {:?}", started.elapsed());
    // Users still answer.
    let (status, _) =
        body(http.get(format!("{url}/v1/users/{user_id}")).header("authorization", &bearer).send().await.unwrap())
            .await;
    assert_eq!(status, StatusCode::OK);
}

/// Sends `n` requests as fast as one connection allows; returns the statuses and the last 429's headers.
async fn burst(url: &str, key: Option<&str>, n: usize) -> (usize, usize, Option<reqwest::header::HeaderMap>) {
    let http = reqwest::Client::new();
    let (mut ok, mut limited, mut last_429) = (0, 0, None);
    for _ in 0..n {
        let mut request = http.get(format!("{url}/v1/products?pageSize=1"));
        if let Some(key) = key {
            request = request.header("X-API-Key", key);
        }
        let response = request.send().await.unwrap();
        match response.status() {
            StatusCode::OK => ok += 1,
            StatusCode::TOO_MANY_REQUESTS => {
                limited += 1;
                last_429 = Some(response.headers().clone());
            }
            other => panic!("unexpected {other}"),
        }
    }
    (ok, limited, last_429)
}

/// Anonymous GETs as the client at `forwarded_for` (`X-Forwarded-For`); how many were allowed.
async fn anonymous_allowed(url: &str, forwarded_for: &str, n: usize) -> usize {
    let http = reqwest::Client::new();
    let mut ok = 0;
    for _ in 0..n {
        let request = http.get(format!("{url}/v1/products?pageSize=1")).header("x-forwarded-for", forwarded_for);
        match request.send().await.unwrap().status() {
            StatusCode::OK => ok += 1,
            StatusCode::TOO_MANY_REQUESTS => {}
            other => panic!("unexpected {other}"),
        }
    }
    ok
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anonymous_clients_behind_a_trusted_proxy_are_limited_by_their_own_address() {
    let tables = "[gateway.tiers.anonymous]\nper_minute = 1\nburst = 3\nmonthly_quota = 0\n";
    let stack = Stack::start("trusted_proxies = [\"127.0.0.1/32\"]", tables).await;
    let proxied = stack.gateway("proxied", &[]);
    let behind_proxy = base(&proxied);
    assert_eq!(anonymous_allowed(&behind_proxy, "198.51.100.1", 5).await, 3, "one client's burst");
    assert_eq!(anonymous_allowed(&behind_proxy, "198.51.100.2", 5).await, 3, "another client: its own bucket");
    // A client naming an address of its own left of what the proxy saw changes nothing.
    assert_eq!(anonymous_allowed(&behind_proxy, "203.0.113.7, 198.51.100.1", 2).await, 0);

    // Without trusted proxies the header is nobody's word: one bucket for the peer.
    let stack = Stack::start("", tables).await;
    let gateway = stack.gateway("direct", &[]);
    let direct = base(&gateway);
    assert_eq!(anonymous_allowed(&direct, "198.51.100.1", 5).await, 3);
    assert_eq!(anonymous_allowed(&direct, "198.51.100.2", 5).await, 0, "spoofing does not buy a fresh bucket");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_distinct_client_addresses_keeps_the_gateways_state_bounded() {
    // Every request a new anonymous client (behind a trusted proxy), each
    // with a rate bucket and a quota count; the gateway may track 1,000.
    let tables = "[gateway.tiers.anonymous]\nper_minute = 1\nburst = 1\nmonthly_quota = 1000000\n\n\
                  [gateway.limits]\nmax_clients = 1000\n";
    let stack = Stack::start("trusted_proxies = [\"127.0.0.1/32\"]", tables).await;
    let gateway = stack.gateway("flood", &[]);
    let url = base(&gateway);
    let http = reqwest::Client::new();
    let flood = 100_000;
    let statuses: Vec<u16> = {
        use futures::StreamExt;
        futures::stream::iter(0..flood)
            .map(|i: u32| {
                let request = http
                    .get(format!("{url}/v1/nowhere"))
                    .header("x-forwarded-for", std::net::Ipv4Addr::from(0x0a00_0000 + i).to_string());
                async move { request.send().await.unwrap().status().as_u16() }
            })
            .buffer_unordered(32)
            .collect()
            .await
    };
    let admitted = statuses.iter().filter(|s| **s == 404).count();
    let refused = statuses.iter().filter(|s| **s == 503).count();
    assert_eq!(admitted + refused, flood as usize, "every request answered: admitted (404 here) or refused");
    assert!((1_000..=1_008).contains(&admitted), "{admitted} clients admitted within the bound");
    // The sizes it exports (every second) stay at the bound: read once an
    // export shows the flood's clients.
    let read = || async { http.get(format!("{url}/metrics")).send().await.unwrap().text().await.unwrap() };
    let exported = |metrics: &str, name: &str| {
        metrics.lines().find(|l| l.starts_with(name)).and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
    };
    eventually(Duration::from_secs(5), "the flood's clients in the exported sizes", || async {
        exported(&read().await, "ratelimit_local_clients").is_some_and(|n| n >= 1_000.0)
    })
    .await;
    let metrics = read().await;
    let gauge = |name: &str| exported(&metrics, name).unwrap();
    assert!(gauge("ratelimit_local_clients") <= 1_008.0 + 10.0, "{metrics}");
    assert!(gauge("ratelimit_quota_clients") <= 1_000.0);
    // A refusal says why, and when to come back.
    let refusal = http.get(format!("{url}/v1/nowhere")).header("x-forwarded-for", "192.0.2.77").send().await.unwrap();
    assert_eq!(refusal.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(refusal.headers()["retry-after"], "1");
    let body: serde_json::Value = refusal.json().await.unwrap();
    assert_eq!(body["reason"], "TOO_MANY_CLIENTS", "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn free_tier_bursts_are_cut_at_the_configured_number() {
    let stack = Stack::start("", "").await;
    let gateway = stack.gateway("gw", &[]);
    let url = base(&gateway);
    let started = Instant::now();
    let (ok, limited, headers) = burst(&url, Some("free-key-1"), 250).await;
    // Burst 200; the bucket refills one request per 600 ms while we send.
    let refilled = (started.elapsed().as_millis() / 600) as usize;
    assert!((200..=200 + refilled).contains(&ok), "ok {ok}, refilled {refilled}");
    assert_eq!(ok + limited, 250);
    let headers = headers.unwrap();
    assert_eq!(headers["x-ratelimit-limit"], "200");
    assert_eq!(headers["x-ratelimit-remaining"], "0");
    assert_eq!(headers["ratelimit-limit"], "200");
    let retry: u64 = headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=60).contains(&retry), "retry-after {retry}");

    // Another key has its own bucket; anonymous callers get 20.
    let (ok, _, _) = burst(&url, Some("free-key-2"), 10).await;
    assert_eq!(ok, 10);
    let (ok, limited, _) = burst(&url, None, 25).await;
    assert!((20..=21).contains(&ok) && ok + limited == 25, "anonymous ok {ok}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_gateways_sharing_redis_enforce_one_limit() {
    let redis_url = std::env::var("SHOPFAST_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    let reachable =
        std::net::TcpStream::connect_timeout(&"127.0.0.1:6379".parse().unwrap(), Duration::from_secs(1)).is_ok();
    if !reachable {
        assert!(!kit::testing::running_in_ci(), "Redis is required when CI=true");
        eprintln!("SKIPPED: Redis unreachable");
        return;
    }
    // A prefix of its own, so reruns never share buckets.
    let prefix = format!("redis_prefix = \"shopfast-test:{}:{}:\"", std::process::id(), kit_core::time::now_millis());
    let stack = Stack::start(&prefix, "").await;
    let a = stack.gateway("a", &["--redis-url", &redis_url]);
    let b = stack.gateway("b", &["--redis-url", &redis_url]);
    let (url_a, url_b) = (base(&a), base(&b));
    let started = Instant::now();
    let (mut ok, mut limited) = (0, 0);
    for i in 0..250 {
        let (o, l, _) = burst(if i % 2 == 0 { &url_a } else { &url_b }, Some("free-key-1"), 1).await;
        ok += o;
        limited += l;
    }
    let refilled = (started.elapsed().as_millis() / 600) as usize;
    assert!((200..=200 + refilled).contains(&ok), "combined ok {ok} (refilled {refilled}), limited {limited}");
    let metrics = reqwest::get(format!("{url_a}/metrics")).await.unwrap().text().await.unwrap();
    assert!(metrics.contains("ratelimit_redis_up 1"), "decided in Redis: {metrics}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_redis_the_gateway_falls_back_to_local_limits() {
    let stack = Stack::start("", "").await;
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let gateway = stack.gateway("gw", &["--redis-url", &format!("redis://127.0.0.1:{closed}")]);
    let url = base(&gateway);
    let (ok, limited, _) = burst(&url, None, 25).await;
    assert!((20..=21).contains(&ok) && ok + limited == 25, "anonymous ok {ok}: still limited, locally");
    let metrics = reqwest::get(format!("{url}/metrics")).await.unwrap().text().await.unwrap();
    assert!(metrics.contains("ratelimit_redis_up 0"), "{metrics}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn monthly_quota_survives_a_restart() {
    let stack = Stack::start("", "").await;
    let gateway = stack.gateway("gw", &[]);
    let (ok, limited, headers) = burst(&base(&gateway), Some("tiny-key"), 7).await;
    assert_eq!((ok, limited), (5, 2));
    let headers = headers.unwrap();
    assert_eq!(headers["x-quota-remaining"], "0");
    assert!(gateway.terminate().success());

    let again = stack.gateway("gw", &[]);
    let url = base(&again);
    let (status, error) = body(
        reqwest::Client::new().get(format!("{url}/v1/products")).header("X-API-Key", "tiny-key").send().await.unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(error["reason"], "QUOTA_EXHAUSTED", "{error}");
    eventually(Duration::from_secs(1), "other keys unaffected", || async {
        burst(&url, Some("free-key-1"), 1).await.0 == 1
    })
    .await;
}
