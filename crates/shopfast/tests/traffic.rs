//! Versions and traffic policy, end to end with real processes: two versions
//! of Products side by side, a policy in the registry, and every client —
//! the gateway and Orders — following it: how fast a change arrives, sticky
//! users, exact shares, overrides, and a version that dies.
#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{Value, json};
use support::{Proc, Shopper, eventually, sample};

const ADMIN_KEY: &str = "traffic-admin-key";

/// The registry, Users, Products at each of `versions` (sharing one
/// database, as blue and green do), Payments, Orders and the gateway.
struct Shop {
    registry: Proc,
    products: BTreeMap<String, Proc>,
    orders: Proc,
    gateway: String,
    http: reqwest::Client,
    _others: Vec<Proc>,
    _dir: tempfile::TempDir,
}

impl Shop {
    async fn start(versions: &[&str]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("shopfast.toml");
        // Limits the tests do not reach: anonymous callers too.
        std::fs::write(
            &config,
            format!(
                r#"
[gateway.tiers.anonymous]
per_minute = 6000000
burst = 100000
monthly_quota = 0

[gateway.tiers.test]
per_minute = 6000000
burst = 100000
monthly_quota = 0

[gateway.api_keys.{ADMIN_KEY}]
client = "traffic-test"
tier = "test"
admin = true
"#
            ),
        )
        .unwrap();
        let config = config.to_str().unwrap().to_string();
        let registry = Proc::registry("127.0.0.1:0", 300, 3_000, 1_000);
        let url = registry.url();
        let with_config = |extra: &[&str]| -> Vec<String> {
            let mut args: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
            args.extend(["--config".to_string(), config.clone()]);
            args
        };
        let service = |name: &str, extra: &[&str]| {
            let args = with_config(extra);
            Proc::service(name, dir.path(), &url, &args.iter().map(String::as_str).collect::<Vec<_>>())
        };
        let mut others = vec![service("users", &[]), service("payments", &[])];
        let mut products = BTreeMap::new();
        for version in versions {
            products.insert(version.to_string(), service("products", &["--version", version]));
        }
        let orders = service("orders", &[]);
        let gateway_dir = dir.path().join("gateway");
        std::fs::create_dir_all(&gateway_dir).unwrap();
        let gateway = Proc::start(&[
            "gateway",
            "--addr",
            "127.0.0.1:0",
            "--registry-url",
            &url,
            "--data-dir",
            gateway_dir.to_str().unwrap(),
            "--config",
            &config,
        ]);
        let gateway_url = gateway.url();
        others.push(gateway);
        let shop = Self {
            registry,
            products,
            orders,
            gateway: gateway_url,
            http: reqwest::Client::new(),
            _others: others,
            _dir: dir,
        };
        let expected = versions.len();
        eventually(Duration::from_secs(10), "every products version registered", || async {
            shop.lookup("products").await["instances"].as_array().map_or(0, Vec::len) == expected
        })
        .await;
        shop
    }

    async fn lookup(&self, service: &str) -> Value {
        let url = format!("{}/v1/services/{service}", self.registry.url());
        self.http.get(url).send().await.unwrap().json().await.unwrap()
    }

    /// PUTs a policy; the registry's answer.
    async fn put_policy(&self, body: Value) -> Value {
        let url = format!("{}/v1/policies/products", self.registry.url());
        let response = self.http.put(url).json(&body).send().await.unwrap();
        assert_eq!(response.status(), StatusCode::OK, "policy {body}");
        response.json().await.unwrap()
    }

    /// PUTs a policy and waits until the gateway applies it.
    async fn set_policy(&self, body: Value) -> Value {
        let policy = self.put_policy(body).await;
        let index = policy["index"].as_f64().unwrap();
        eventually(Duration::from_secs(2), "the gateway applies the policy", || async {
            let metrics =
                self.http.get(format!("{}/metrics", self.gateway)).send().await.unwrap().text().await.unwrap();
            sample(&metrics, "client_traffic_policy_index", r#"service="products""#) == Some(index)
        })
        .await;
        policy
    }

    async fn a_product(&self) -> String {
        let page: Value = self
            .http
            .get(format!("{}/v1/products?pageSize=5&inStockOnly=true", self.gateway))
            .header("x-api-key", ADMIN_KEY)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        page["products"][0]["id"].as_str().unwrap().to_string()
    }

    /// One admin read of a product: the version that served it.
    async fn served_by(&self, product: &str, token: Option<&str>, version: Option<&str>) -> String {
        served_by(&self.http, &self.gateway, product, token, version).await
    }

    /// How many calls of `method` each products version served, from their /metrics.
    async fn served_counts(&self, method: &str) -> BTreeMap<String, u64> {
        let mut counts = BTreeMap::new();
        for (version, proc) in &self.products {
            let text = self
                .http
                .get(format!("http://{}/metrics", proc.addr("admin_addr")))
                .send()
                .await
                .unwrap()
                .text()
                .await
                .unwrap();
            let served: f64 = text
                .lines()
                .filter(|l| l.starts_with("grpc_server_requests_total{") && l.contains(method))
                .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                .sum();
            counts.insert(version.clone(), served as u64);
        }
        counts
    }

    async fn orders_metrics(&self) -> String {
        let url = format!("http://{}/metrics", self.orders.addr("admin_addr"));
        self.http.get(url).send().await.unwrap().text().await.unwrap()
    }
}

/// One admin read of a product through `gateway`: the version that served it.
async fn served_by(
    http: &reqwest::Client,
    gateway: &str,
    product: &str,
    token: Option<&str>,
    version: Option<&str>,
) -> String {
    let mut request = http.get(format!("{gateway}/v1/products/{product}")).header("x-api-key", ADMIN_KEY);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    if let Some(version) = version {
        request = request.header("x-shopfast-version", version);
    }
    let response = request.send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    response.headers()["x-shopfast-served-version"].to_str().unwrap().to_string()
}

fn token(user: &str) -> String {
    let signer = kit::token::TokenSigner::new(kit::testing::TEST_TOKEN_SECRET.as_bytes()).unwrap();
    signer.issue(user, &format!("{user}@example.com"), kit_core::time::now_millis() / 1000, 3_600).0
}

fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

/// Time from a policy's PUT to the first gateway request served by the new
/// version, and to Orders applying it, median of 20 switches.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_policy_change_reaches_the_gateway_and_orders_within_a_second() {
    let shop = Shop::start(&["v1", "v2"]).await;
    let product = shop.a_product().await;
    // Orders resolves Products on its first order.
    let shopper = Shopper::sign_up(&shop.gateway, ADMIN_KEY, "switch@example.com").await;
    let placed = shopper
        .request(reqwest::Method::POST, "/v1/orders")
        .json(&Shopper::order_of(&product, "4242424242424242"))
        .send()
        .await
        .unwrap();
    assert!(placed.status().is_success(), "{}", placed.text().await.unwrap());

    let (mut gateway_took, mut orders_took) = (Vec::new(), Vec::new());
    for round in 0..20 {
        let (to, from) = if round % 2 == 0 { ("v2", "v1") } else { ("v1", "v2") };
        let put_at = Instant::now();
        let policy = shop.put_policy(json!({ "weights": { to: 100, from: 0 } })).await;
        let index = policy["index"].as_u64().unwrap() as f64;
        let gateway = async {
            while shop.served_by(&product, None, None).await != to {}
            put_at.elapsed()
        };
        let orders = async {
            loop {
                let metrics = shop.orders_metrics().await;
                if sample(&metrics, "client_traffic_policy_index", r#"service="products""#) == Some(index) {
                    return put_at.elapsed();
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        };
        let (g, o) = tokio::time::timeout(Duration::from_secs(10), futures::future::join(gateway, orders))
            .await
            .expect("the change arrived within 10 s");
        gateway_took.push(g);
        orders_took.push(o);
    }
    let (g, o) = (median(gateway_took.clone()), median(orders_took.clone()));
    println!("policy change → first gateway request served by the new version: median {g:?}, all {gateway_took:?}");
    println!("policy change → Orders applies it: median {o:?}, all {orders_took:?}");
    assert!(g < Duration::from_secs(1) && o < Duration::from_secs(1), "gateway {g:?}, orders {o:?}");

    // And Orders' calls to Products follow it: the last policy sent all to v1.
    let before = shop.served_counts("ReserveInventory").await;
    let placed = shopper
        .request(reqwest::Method::POST, "/v1/orders")
        .json(&Shopper::order_of(&product, "4242424242424242"))
        .send()
        .await
        .unwrap();
    assert!(placed.status().is_success());
    let after = shop.served_counts("ReserveInventory").await;
    assert_eq!((after["v1"] - before["v1"], after["v2"] - before["v2"]), (1, 0), "Orders reserved on v1");
    let metrics = shop.orders_metrics().await;
    assert!(
        sample(&metrics, "grpc_client_requests_total", r#"service="products",version="v1",outcome="ok""#).is_some(),
        "client metrics by destination version"
    );
}

/// 200 users × 20 requests at 25 % / 75 %: every user sees one version, and
/// the users split within ±5 points of the weights. Then 10,000 anonymous
/// requests at 10 / 90 split within ±2 points.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_keep_one_version_and_anonymous_requests_split_exactly() {
    let shop = Shop::start(&["v1", "v2"]).await;
    let product = Arc::new(shop.a_product().await);
    let gateway = Arc::new(shop.gateway.clone());
    shop.set_policy(json!({ "weights": { "v1": 25, "v2": 75 }, "sticky": "user" })).await;

    let users: Vec<String> = (0..200).map(|i| format!("sticky-user-{i}")).collect();
    let seen = Arc::new(std::sync::Mutex::new(BTreeMap::<String, BTreeSet<String>>::new()));
    let next = Arc::new(AtomicUsize::new(0));
    let workers: Vec<_> = (0..8)
        .map(|_| {
            let (http, gateway, product, users, seen, next) =
                (shop.http.clone(), gateway.clone(), product.clone(), users.clone(), seen.clone(), next.clone());
            tokio::spawn(async move {
                loop {
                    let i = next.fetch_add(1, Ordering::SeqCst);
                    if i >= users.len() * 20 {
                        return;
                    }
                    let user = &users[i % users.len()];
                    let version = served_by(&http, &gateway, &product, Some(&token(user)), None).await;
                    seen.lock().unwrap().entry(user.clone()).or_default().insert(version);
                }
            })
        })
        .collect();
    for worker in workers {
        worker.await.unwrap();
    }
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 200);
    let switched: Vec<_> = seen.iter().filter(|(_, versions)| versions.len() != 1).collect();
    assert!(switched.is_empty(), "users who saw two versions: {switched:?}");
    let on_v1 = seen.values().filter(|v| v.contains("v1")).count();
    let share = on_v1 as f64 / 2.0;
    println!("sticky split 25/75: {on_v1} of 200 users on v1 ({share:.1} %)");
    assert!((20.0..=30.0).contains(&share), "{share} % of users on the 25 % version");

    // Without a key to stick to: each request drawn by itself.
    shop.set_policy(json!({ "weights": { "v1": 10, "v2": 90 } })).await;
    let before = shop.served_counts("GetProduct\"").await;
    let next = Arc::new(AtomicUsize::new(0));
    let failed = Arc::new(AtomicUsize::new(0));
    let workers: Vec<_> = (0..8)
        .map(|_| {
            let (http, gateway, product, next, failed) =
                (shop.http.clone(), gateway.clone(), product.clone(), next.clone(), failed.clone());
            tokio::spawn(async move {
                while next.fetch_add(1, Ordering::SeqCst) < 10_000 {
                    let response = http.get(format!("{gateway}/v1/products/{product}")).send().await.unwrap();
                    if response.status() != StatusCode::OK {
                        failed.fetch_add(1, Ordering::SeqCst);
                    }
                    assert!(response.headers().get("x-shopfast-served-version").is_none(), "not told to anyone");
                }
            })
        })
        .collect();
    for worker in workers {
        worker.await.unwrap();
    }
    assert_eq!(failed.load(Ordering::SeqCst), 0);
    let after = shop.served_counts("GetProduct\"").await;
    let (v1, v2) = (after["v1"] - before["v1"], after["v2"] - before["v2"]);
    let share = v1 as f64 * 100.0 / (v1 + v2) as f64;
    println!("anonymous split 10/90: v1 served {v1}, v2 {v2} ({share:.2} % on v1)");
    assert_eq!(v1 + v2, 10_000);
    assert!((8.0..=12.0).contains(&share), "{share} % on the 10 % version");
}

/// An override reaches a version no user is sent to, through Orders too;
/// only admin keys may use it; garbage and versions the policy does not
/// allow are refused. A version that dies falls back to the other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overrides_reach_a_version_at_weight_zero_and_a_dead_version_falls_back() {
    let mut shop = Shop::start(&["v1", "v2"]).await;
    let product = shop.a_product().await;
    shop.set_policy(json!({ "weights": { "v1": 100, "v2": 0 } })).await;
    assert_eq!(shop.served_by(&product, None, None).await, "v1");
    assert_eq!(shop.served_by(&product, None, Some("products=v2")).await, "v2");
    assert_eq!(shop.served_by(&product, None, Some("v2")).await, "v2");

    // An order placed by an admin smoke test with the override reserves on v2.
    let shopper = Shopper::sign_up(&shop.gateway, ADMIN_KEY, "smoke@example.com").await;
    let before = shop.served_counts("ReserveInventory").await;
    let placed = shopper
        .request(reqwest::Method::POST, "/v1/orders")
        .header("x-shopfast-version", "products=v2")
        .json(&Shopper::order_of(&product, "4242424242424242"))
        .send()
        .await
        .unwrap();
    assert!(placed.status().is_success(), "{}", placed.text().await.unwrap());
    let after = shop.served_counts("ReserveInventory").await;
    assert_eq!((after["v1"] - before["v1"], after["v2"] - before["v2"]), (0, 1), "the override went through Orders");

    // Who may, and what.
    let url = format!("{}/v1/products/{product}", shop.gateway);
    let anonymous = shop.http.get(&url).header("x-shopfast-version", "v2").send().await.unwrap();
    assert_eq!(anonymous.status(), StatusCode::FORBIDDEN);
    for garbage in ["v 2", "products=", "=v2", "products=v2,", &"v".repeat(100)] {
        let response =
            shop.http.get(&url).header("x-api-key", ADMIN_KEY).header("x-shopfast-version", garbage).send().await;
        assert_eq!(response.unwrap().status(), StatusCode::BAD_REQUEST, "{garbage}");
    }
    let missing =
        shop.http.get(&url).header("x-api-key", ADMIN_KEY).header("x-shopfast-version", "products=v9").send().await;
    assert_eq!(missing.unwrap().status(), StatusCode::BAD_REQUEST, "v9 is not a version the policy allows");
    shop.set_policy(json!({ "weights": { "v1": 100, "v2": 0 }, "overridable": ["v1"] })).await;
    let closed =
        shop.http.get(&url).header("x-api-key", ADMIN_KEY).header("x-shopfast-version", "products=v2").send().await;
    assert_eq!(closed.unwrap().status(), StatusCode::BAD_REQUEST, "v2 may no longer be asked for");

    // The version with all the weight dies: the other serves, nothing fails.
    shop.set_policy(json!({ "weights": { "v1": 0, "v2": 100 } })).await;
    assert_eq!(shop.served_by(&product, None, None).await, "v2");
    shop.products.remove("v2").unwrap().kill9();
    let mut failures = 0;
    let mut versions = BTreeSet::new();
    for _ in 0..200 {
        let response = shop.http.get(&url).header("x-api-key", ADMIN_KEY).send().await.unwrap();
        if response.status() == StatusCode::OK {
            versions.insert(response.headers()["x-shopfast-served-version"].to_str().unwrap().to_string());
        } else {
            failures += 1;
        }
    }
    assert_eq!((failures, versions), (0, BTreeSet::from(["v1".to_string()])));
}
