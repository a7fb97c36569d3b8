//! The registry contract: the same rules hold over the in-memory store and over
//! a real etcd server (started here from the `etcd` binary, apt etcd-server).
#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

use std::collections::BTreeMap;
use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use registry::core::{Prober, Registry, RegistryError, Timing};
use registry::etcd::EtcdStore;
use registry::model::{Health, RegisterRequest};
use registry::store::{MemoryStore, Store};

/// Answers probes as told, so expiry can be driven both ways.
#[derive(Default)]
struct ScriptedProber(AtomicBool);

#[async_trait::async_trait]
impl Prober for ScriptedProber {
    async fn ready(&self, _admin_address: &str) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}

const TIMING: Timing = Timing { heartbeat_interval_ms: 100, ttl_ms: 300, drain_grace_ms: 200 };

fn request(name: &str, id: &str, version: &str) -> RegisterRequest {
    RegisterRequest {
        id: Some(id.into()),
        name: name.into(),
        address: "127.0.0.1:9002".into(),
        admin_address: "127.0.0.1:9102".into(),
        metadata: [("version".to_string(), version.to_string())].into(),
        health: None,
    }
}

fn none() -> BTreeMap<String, String> {
    BTreeMap::new()
}

async fn register_lookup_and_filters(store: Arc<dyn Store>) {
    let registry = Registry::new(store, Arc::new(ScriptedProber::default()), TIMING);
    let reply = registry.register(request("products", "p-1", "v1"), 1_000).await.unwrap();
    assert_eq!((reply.id.as_str(), reply.heartbeat_interval_ms, reply.ttl_ms), ("p-1", 100, 300));
    registry.register(request("products", "p-2", "v2"), 1_000).await.unwrap();
    registry.register(request("users", "u-1", "v1"), 1_000).await.unwrap();
    let generated = registry.register(RegisterRequest { id: None, ..request("users", "", "v1") }, 1_000).await.unwrap();
    assert!(generated.id.starts_with("users-"), "{}", generated.id);

    assert_eq!(registry.lookup("products", &none(), false).await.unwrap().len(), 2);
    let v2 = registry.lookup("products", &[("version".to_string(), "v2".to_string())].into(), false).await.unwrap();
    assert_eq!(v2.iter().map(|i| i.id.as_str()).collect::<Vec<_>>(), vec!["p-2"]);
    assert!(registry.lookup("orders", &none(), false).await.unwrap().is_empty());
    let summary = registry.services().await.unwrap();
    assert_eq!(
        summary.iter().map(|s| (s.name.as_str(), s.instances)).collect::<Vec<_>>(),
        vec![("products", 2), ("users", 2)]
    );

    // An id cannot move to another service; bad input is refused.
    let stolen = registry.register(request("users", "p-1", "v1"), 1_000).await;
    assert!(matches!(stolen, Err(RegistryError::Domain(kit::error::DomainError::AlreadyExists(_)))), "{stolen:?}");
    let bad = registry
        .register(RegisterRequest { address: "nowhere".into(), ..request("products", "p-9", "v1") }, 1_000)
        .await;
    assert!(matches!(bad, Err(RegistryError::Domain(kit::error::DomainError::Invalid(_)))), "{bad:?}");
}

async fn heartbeats_health_and_deregistration(store: Arc<dyn Store>) {
    let registry = Registry::new(store, Arc::new(ScriptedProber::default()), TIMING);
    registry.register(request("products", "p-1", "v1"), 1_000).await.unwrap();
    let seen = registry.heartbeat("p-1", None, 1_100).await.unwrap();
    assert_eq!(seen.last_seen_ms, 1_100);
    registry.heartbeat("p-1", Some(Health::Unhealthy), 1_150).await.unwrap();
    assert!(registry.lookup("products", &none(), false).await.unwrap().is_empty(), "unhealthy is not routable");
    assert_eq!(registry.lookup("products", &none(), true).await.unwrap().len(), 1, "but still listed");
    registry.heartbeat("p-1", Some(Health::Degraded), 1_200).await.unwrap();
    assert_eq!(registry.lookup("products", &none(), false).await.unwrap().len(), 1, "degraded still serves");

    let unknown = registry.heartbeat("ghost", None, 1_200).await;
    assert!(matches!(unknown, Err(RegistryError::Domain(kit::error::DomainError::NotFound(_)))), "re-register signal");
    registry.deregister("p-1", 1_300).await.unwrap();
    assert!(registry.lookup("products", &none(), true).await.unwrap().is_empty(), "removed at once");
    assert!(registry.deregister("p-1", 1_400).await.is_err());
}

async fn silent_instances_are_probed_drained_and_removed(store: Arc<dyn Store>) {
    let prober = Arc::new(ScriptedProber::default());
    let registry = Registry::new(store, prober.clone(), TIMING);
    registry.register(request("products", "p-1", "v1"), 1_000).await.unwrap();
    registry.register(request("products", "p-2", "v1"), 1_000).await.unwrap();
    registry.heartbeat("p-2", None, 1_250).await.unwrap();

    registry.sweep(1_299).await.unwrap();
    assert_eq!(registry.lookup("products", &none(), false).await.unwrap().len(), 2, "not yet");

    // p-1 went silent but still answers /health/ready: kept.
    prober.0.store(true, Ordering::SeqCst);
    registry.sweep(1_300).await.unwrap();
    assert_eq!(registry.lookup("products", &none(), false).await.unwrap().len(), 2);

    // Silent again and not ready: draining, no longer routable.
    prober.0.store(false, Ordering::SeqCst);
    registry.sweep(1_600).await.unwrap();
    let routable = registry.lookup("products", &none(), false).await.unwrap();
    assert!(routable.is_empty(), "both silent and unready: {routable:?}");
    let all = registry.lookup("products", &none(), true).await.unwrap();
    assert!(all.iter().all(|i| i.health == Health::Draining));

    // A heartbeat during the drain revives the instance.
    registry.heartbeat("p-2", None, 1_650).await.unwrap();
    assert_eq!(registry.lookup("products", &none(), false).await.unwrap().len(), 1);

    // After the grace the silent one is gone.
    registry.sweep(1_800).await.unwrap();
    let left = registry.lookup("products", &none(), true).await.unwrap();
    assert_eq!(left.iter().map(|i| i.id.as_str()).collect::<Vec<_>>(), vec!["p-2"]);

    // An explicit drain is not undone by heartbeats.
    registry.drain("p-2", "requested", 1_900).await.unwrap();
    registry.heartbeat("p-2", None, 1_950).await.unwrap();
    assert!(registry.lookup("products", &none(), false).await.unwrap().is_empty());
}

async fn every_change_is_audited_in_order(store: Arc<dyn Store>) {
    let registry = Registry::new(store.clone(), Arc::new(ScriptedProber::default()), TIMING);
    registry.register(request("products", "p-1", "v1"), 1_000).await.unwrap();
    registry.register(request("products", "p-1", "v1"), 1_010).await.unwrap();
    registry.heartbeat("p-1", Some(Health::Degraded), 1_020).await.unwrap();
    registry.drain("p-1", "requested", 1_030).await.unwrap();
    registry.deregister("p-1", 1_040).await.unwrap();
    let entries = store.audit(0, 100).await.unwrap();
    let events: Vec<&str> = entries.iter().map(|e| e.event.as_str()).collect();
    assert_eq!(events, vec!["registered", "reregistered", "health", "draining", "deregistered"]);
    assert!(entries.windows(2).all(|w| w[0].seq < w[1].seq));
    let after_second = store.audit(entries[1].seq, 2).await.unwrap();
    assert_eq!(after_second.iter().map(|e| e.event.as_str()).collect::<Vec<_>>(), vec!["health", "draining"]);
}

async fn watchers_wake_on_change(store: Arc<dyn Store>) {
    let registry = Registry::new(store.clone(), Arc::new(ScriptedProber::default()), TIMING);
    let before = store.revision().await.unwrap();
    let quiet = store.wait_for_change(before, Duration::from_millis(200)).await.unwrap();
    assert_eq!(quiet, before, "no change, no wake-up");
    let waiter = {
        let store = store.clone();
        tokio::spawn(async move { store.wait_for_change(before, Duration::from_secs(10)).await })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    let started = std::time::Instant::now();
    registry.register(request("products", "p-1", "v1"), 1_000).await.unwrap();
    let after = waiter.await.unwrap().unwrap();
    assert!(after > before);
    assert!(started.elapsed() < Duration::from_secs(2), "woke at once, not at the timeout");
}

// ---- backends ----

fn memory() -> Arc<dyn Store> {
    Arc::new(MemoryStore::default())
}

/// A real etcd on ephemeral ports in a temp dir, for one test.
struct Etcd {
    child: Child,
    url: String,
    _dir: tempfile::TempDir,
}

impl Drop for Etcd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

async fn etcd() -> Option<Etcd> {
    let binary = ["/usr/bin/etcd", "/usr/local/bin/etcd"].into_iter().find(|p| std::path::Path::new(p).exists());
    let Some(binary) = binary else {
        assert!(!kit::testing::running_in_ci(), "etcd is required in CI (apt-get install etcd-server)");
        eprintln!("SKIPPED: no etcd binary (apt-get install etcd-server)");
        return None;
    };
    let dir = tempfile::tempdir().unwrap();
    let (client, peer) = (free_port(), free_port());
    let url = format!("http://127.0.0.1:{client}");
    let peer_url = format!("http://127.0.0.1:{peer}");
    let child = Command::new(binary)
        .args(["--name", "test", "--data-dir"])
        .arg(dir.path())
        .args(["--listen-client-urls", &url, "--advertise-client-urls", &url])
        .args(["--listen-peer-urls", &peer_url, "--initial-advertise-peer-urls", &peer_url])
        .args(["--initial-cluster", &format!("test={peer_url}")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let etcd = Etcd { child, url, _dir: dir };
    let http = reqwest::Client::new();
    for _ in 0..100 {
        if let Ok(r) = http.get(format!("{}/health", etcd.url)).send().await
            && r.status().is_success()
        {
            return Some(etcd);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("etcd did not become healthy at {}", etcd.url);
}

macro_rules! contract {
    ($($case:ident),* $(,)?) => {
        mod memory {
            $( #[tokio::test] async fn $case() { super::$case(super::memory()).await; } )*
        }
        mod etcd {
            $( #[tokio::test] async fn $case() {
                let Some(server) = super::etcd().await else { return };
                let store = super::EtcdStore::new(vec![server.url.clone()], concat!("test/", stringify!($case))).unwrap();
                super::$case(std::sync::Arc::new(store)).await;
            } )*
        }
    };
}

contract!(
    register_lookup_and_filters,
    heartbeats_health_and_deregistration,
    silent_instances_are_probed_drained_and_removed,
    every_change_is_audited_in_order,
    watchers_wake_on_change,
);
