//! The registry, registration and discovery with real processes: the registry
//! and services run as `shopfast` processes; the client side is kit's
//! `Discovery` and `Balancer`, as every service uses them.
#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

mod support;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use contracts::products::v1 as pb;
use contracts::products::v1::product_service_client::ProductServiceClient;
use kit::shutdown::CancellationToken;
use kit_client::balance::Balancer;
use kit_client::discovery::{Discovery, RegistryClient};
use support::{Proc, eventually};

async fn routable(registry: &str, name: &str) -> usize {
    RegistryClient::new(registry)
        .lookup(name, &BTreeMap::new(), None, Duration::ZERO)
        .await
        .map(|l| l.instances.len())
        .unwrap_or(usize::MAX)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registration_expiry_and_graceful_deregistration() {
    let data = tempfile::tempdir().unwrap();
    let (heartbeat, ttl, grace) = (100, 600, 300);
    let registry = Proc::registry("127.0.0.1:0", heartbeat, ttl, grace);
    let url = registry.url();

    let doomed = Proc::service("products", data.path(), &url, &["--meta", "version=v1"]);
    let graceful = Proc::service("users", data.path(), &url, &[]);
    eventually(Duration::from_secs(5), "both registered", || async {
        routable(&url, "products").await == 1 && routable(&url, "users").await == 1
    })
    .await;
    let v1 = RegistryClient::new(&url)
        .lookup("products", &[("version".to_string(), "v1".to_string())].into(), None, Duration::ZERO)
        .await
        .unwrap();
    assert_eq!(v1.instances[0].address, doomed.addr("grpc_addr"), "registered with its real address");

    // kill -9: no deregistration; gone once the TTL passes and the probe fails.
    let killed_at = Instant::now();
    doomed.kill9();
    eventually(Duration::from_millis(ttl + 1_000), "killed instance leaves lookups", || async {
        routable(&url, "products").await == 0
    })
    .await;
    let gone_after = killed_at.elapsed();
    assert!(gone_after >= Duration::from_millis(ttl - 2 * heartbeat), "not before the TTL: {gone_after:?}");

    // SIGTERM: deregistered before the process exits.
    assert!(graceful.terminate().success());
    assert_eq!(routable(&url, "users").await, 0, "removed at once on graceful stop");

    let audit: serde_json::Value =
        reqwest::get(format!("{url}/v1/audit?limit=100")).await.unwrap().json().await.unwrap();
    let events: Vec<&str> = audit["entries"].as_array().unwrap().iter().map(|e| e["event"].as_str().unwrap()).collect();
    for expected in ["registered", "draining", "deregistered"] {
        assert!(events.contains(&expected), "{expected} missing from {events:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn services_reregister_after_a_registry_restart_and_clients_survive_its_absence() {
    let data = tempfile::tempdir().unwrap();
    let heartbeat = 300;
    let registry = Proc::registry("127.0.0.1:0", heartbeat, 5_000, 5_000);
    let addr = registry.addr("addr");
    let url = registry.url();
    let _users = Proc::service("users", data.path(), &url, &[]);
    let _products = Proc::service("products", data.path(), &url, &[]);
    eventually(Duration::from_secs(5), "registered", || async {
        routable(&url, "products").await == 1 && routable(&url, "users").await == 1
    })
    .await;

    let shutdown = CancellationToken::new();
    let discovery = Discovery::new(&url, None, shutdown.clone());
    let balancer = discovery.balancer("products", BTreeMap::new()).await;
    let mut client = ProductServiceClient::new(balancer.clone());

    // Registry gone: the cached instances keep serving.
    registry.kill9();
    for _ in 0..50 {
        client.search_products(pb::SearchProductsRequest { page_size: 1, ..Default::default() }).await.unwrap();
    }
    assert_eq!(balancer.instances().len(), 1, "stale cache kept");

    // A new, empty registry on the same address: everyone is back within a heartbeat.
    let restarted = Proc::registry(&addr, heartbeat, 5_000, 5_000);
    let took = eventually(Duration::from_secs(5), "re-registered", || async {
        routable(&url, "products").await == 1 && routable(&url, "users").await == 1
    })
    .await;
    assert!(took <= Duration::from_millis(heartbeat + 200), "re-registration took {took:?}");
    client.search_products(pb::SearchProductsRequest::default()).await.unwrap();
    shutdown.cancel();
    drop(restarted);
}

/// Requests each instance served for a method, read from its /metrics.
async fn served(admin: &str, method: &str) -> u64 {
    let text = reqwest::get(format!("http://{admin}/metrics")).await.unwrap().text().await.unwrap();
    text.lines()
        .filter(|l| l.starts_with("grpc_server_requests_total{") && l.contains(method) && l.contains("code=\"Ok\""))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

async fn run_calls<F, Fut>(total: usize, concurrency: usize, call: F) -> (usize, usize)
where
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = bool> + Send,
{
    let next = Arc::new(AtomicUsize::new(0));
    let ok = Arc::new(AtomicUsize::new(0));
    let failed = Arc::new(AtomicUsize::new(0));
    let call = Arc::new(call);
    let workers: Vec<_> = (0..concurrency)
        .map(|_| {
            let (next, ok, failed, call) = (next.clone(), ok.clone(), failed.clone(), call.clone());
            tokio::spawn(async move {
                loop {
                    let i = next.fetch_add(1, Ordering::SeqCst);
                    if i >= total {
                        return;
                    }
                    if call(i).await {
                        ok.fetch_add(1, Ordering::SeqCst)
                    } else {
                        failed.fetch_add(1, Ordering::SeqCst)
                    };
                }
            })
        })
        .collect();
    for worker in workers {
        worker.await.unwrap();
    }
    (ok.load(Ordering::SeqCst), failed.load(Ordering::SeqCst))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn balancing_spreads_load_and_a_killed_instance_loses_no_silent_call() {
    let data = tempfile::tempdir().unwrap();
    // A long TTL: the registry keeps listing a killed instance, so only the
    // client's own ejection can keep calls off it.
    let registry = Proc::registry("127.0.0.1:0", 1_000, 60_000, 5_000);
    let url = registry.url();
    let mut instances: Vec<Proc> = (0..3).map(|_| Proc::service("products", data.path(), &url, &[])).collect();
    eventually(Duration::from_secs(10), "three registered", || async { routable(&url, "products").await == 3 }).await;

    let shutdown = CancellationToken::new();
    let discovery = Discovery::new(&url, None, shutdown.clone());
    let balancer: Balancer = discovery.balancer("products", BTreeMap::new()).await;
    assert_eq!(balancer.instances().len(), 3);

    // 3,000 calls reach every instance. p2c on in-flight counts favours the
    // instance that answers fastest (on a busy 2-core box one often does), so
    // the spread is not exact: each gets between half and double its even share.
    let client = ProductServiceClient::new(balancer.clone());
    let search = client.clone();
    let (ok, failed) = run_calls(3_000, 12, move |_| {
        let mut c = search.clone();
        async move { c.search_products(pb::SearchProductsRequest { page_size: 1, ..Default::default() }).await.is_ok() }
    })
    .await;
    assert_eq!((ok, failed), (3_000, 0));
    let mut per_instance = Vec::new();
    for instance in &instances {
        per_instance.push(served(&instance.addr("admin_addr"), "SearchProducts").await);
    }
    assert_eq!(per_instance.iter().sum::<u64>(), 3_000);
    for n in &per_instance {
        assert!((500..=2_000).contains(n), "uneven spread {per_instance:?}");
    }

    // Reservations with unique order ids while one instance is killed mid-run.
    let mut admin = client.clone();
    let product = admin
        .create_product(pb::CreateProductRequest {
            product: Some(pb::Product {
                sku: "LB-1".into(),
                name: "Load balanced".into(),
                category: "test".into(),
                price: Some(contracts::common::v1::Money { currency_code: "USD".into(), minor_units: 100 }),
                stock: 1_000_000,
                ..Default::default()
            }),
        })
        .await
        .unwrap()
        .into_inner();
    let succeeded = Arc::new(std::sync::Mutex::new(Vec::new()));
    let victim = instances.remove(1);
    let victim_id_addr = victim.addr("grpc_addr");
    let killer = {
        let succeeded = succeeded.clone();
        tokio::spawn(async move {
            // Mid-run: once a fifth of the calls went through.
            eventually(Duration::from_secs(30), "the calls under way", || {
                let count = succeeded.lock().map(|s| s.len()).unwrap_or(0);
                async move { count >= 300 }
            })
            .await;
            victim.kill9();
        })
    };
    let (reserve, record, product_id) = (client.clone(), succeeded.clone(), product.id.clone());
    let (ok, failed) = run_calls(1_500, 12, move |i| {
        let (mut c, record, product_id) = (reserve.clone(), record.clone(), product_id.clone());
        async move {
            let order_id = format!("lb-order-{i}");
            let request = pb::ReserveInventoryRequest {
                order_id: order_id.clone(),
                items: vec![pb::LineItem { product_id, quantity: 1 }],
                ttl_seconds: 3_600,
            };
            let done = c.reserve_inventory(request).await.is_ok();
            if done {
                record.lock().unwrap().push(order_id);
            }
            done
        }
    })
    .await;
    killer.await.unwrap();
    assert_eq!(ok + failed, 1_500, "every call accounted for");
    assert!(failed <= 12, "at most the calls in flight on the killed instance fail: {failed}");

    // Every call the caller saw succeed really happened.
    let confirmed = succeeded.lock().unwrap().clone();
    assert_eq!(confirmed.len(), ok);
    let mut check = client.clone();
    for order_id in &confirmed {
        let r =
            check.get_reservation(pb::GetReservationRequest { order_id: order_id.clone() }).await.unwrap().into_inner();
        assert_eq!(r.state, pb::ReservationState::Active as i32);
    }
    let p = check.get_product(pb::GetProductRequest { product_id: product.id }).await.unwrap().into_inner();
    // A failed call is ambiguous (the instance may have committed it just
    // before dying): reserved units cover every success and at most the failures.
    let reserved = p.reserved as usize;
    assert!((ok..=ok + failed).contains(&reserved), "reserved {reserved}, ok {ok}, failed {failed}");

    // The dead instance is out of the pool (ejected) though the registry still lists it.
    assert_eq!(routable(&url, "products").await, 3, "registry has not expired it yet");
    let pool = balancer.instances();
    let dead = pool.iter().find(|m| m.address == victim_id_addr).unwrap();
    // Ejected now, or ejected and not answered since (a call the victim had
    // answered just before dying can land after the ejection and reset its
    // count, while the ejection itself stands).
    assert!(dead.ejected || dead.consecutive_ejections >= 1, "killed instance was ejected: {pool:?}");
    assert!(pool.iter().filter(|m| m.address != victim_id_addr).all(|m| m.consecutive_ejections == 0), "{pool:?}");
    shutdown.cancel();
}
