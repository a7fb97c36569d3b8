//! The registry contract: the same rules hold over the in-memory store and over
//! a real etcd server (started here from the `etcd` binary, apt etcd-server).
#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

use std::collections::BTreeMap;
use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use kit_core::error::DomainError;
use registry::core::{Prober, Registry, RegistryError, Timing};
use registry::etcd::EtcdStore;
use registry::model::{Health, RegisterRequest};
use registry::store::{MemoryStore, Store, StoreError};
use registry_wire::traffic::{PolicyChange, Sticky};

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
        version: version.into(),
        track: String::new(),
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
    assert!(matches!(stolen, Err(RegistryError::Domain(kit_core::error::DomainError::AlreadyExists(_)))), "{stolen:?}");
    let bad = registry
        .register(RegisterRequest { address: "nowhere".into(), ..request("products", "p-9", "v1") }, 1_000)
        .await;
    assert!(matches!(bad, Err(RegistryError::Domain(kit_core::error::DomainError::Invalid(_)))), "{bad:?}");
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
    assert!(
        matches!(unknown, Err(RegistryError::Domain(kit_core::error::DomainError::NotFound(_)))),
        "re-register signal"
    );
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

/// Until a blocking query is parked on `registry` (so the change wakes it,
/// rather than being there already when it asks).
async fn parked(registry: &Registry) {
    let started = std::time::Instant::now();
    while registry.watchers() < 1 {
        assert!(started.elapsed() < Duration::from_secs(5), "the blocking query never parked");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

async fn watchers_wake_on_change(store: Arc<dyn Store>) {
    let registry = Registry::new(store.clone(), Arc::new(ScriptedProber::default()), TIMING);
    let before = store.revision().await.unwrap();
    let quiet = store.wait_for_change(before, Duration::from_millis(200)).await.unwrap();
    assert_eq!(quiet, before, "no change, no wake-up");
    let waiter = {
        let registry = registry.clone();
        tokio::spawn(async move { registry.wait_for_change(before, Duration::from_secs(10)).await })
    };
    parked(&registry).await;
    let started = std::time::Instant::now();
    registry.register(request("products", "p-1", "v1"), 1_000).await.unwrap();
    let after = waiter.await.unwrap().unwrap();
    assert!(after > before);
    assert!(started.elapsed() < Duration::from_secs(2), "woke at once, not at the timeout");
}

fn change(weights: &[(&str, u32)]) -> PolicyChange {
    PolicyChange {
        weights: weights.iter().map(|(v, w)| (v.to_string(), *w)).collect(),
        sticky: Sticky::User,
        overridable: None,
        reason: "test".into(),
        if_index: None,
    }
}

async fn policies_are_validated_stored_audited_and_wake_watchers(store: Arc<dyn Store>) {
    let registry = Registry::new(store.clone(), Arc::new(ScriptedProber::default()), TIMING);
    registry.register(request("products", "p-1", "v1"), 1_000).await.unwrap();
    registry.register(request("products", "p-2", "v2"), 1_000).await.unwrap();
    let instance = registry.lookup("products", &none(), false).await.unwrap();
    assert_eq!(instance.iter().map(|i| i.version.as_str()).collect::<Vec<_>>(), vec!["v1", "v2"]);
    assert_eq!(instance[0].track, "stable", "the default track");

    // Refused, and nothing stored.
    let refused = [
        ("orders", change(&[("v1", 100)]), "no instance of service orders"),
        ("products", change(&[("v1", 50), ("v3", 50)]), "no instance of version v3"),
        ("products", change(&[("v1", 50), ("v2", 49)]), "sum to 100"),
        ("Products!", change(&[("v1", 100)]), "service must be"),
    ];
    for (service, bad, why) in refused {
        let err = registry.set_policy(service, bad, "operator", 1_100).await.unwrap_err();
        assert!(err.to_string().contains(why), "{service}: {err}");
    }
    assert!(store.list_policies().await.unwrap().is_empty());

    let before = store.revision().await.unwrap();
    let waiter = {
        let registry = registry.clone();
        tokio::spawn(async move { registry.wait_for_change(before, Duration::from_secs(10)).await })
    };
    parked(&registry).await;
    let set = registry.set_policy("products", change(&[("v1", 90), ("v2", 10)]), "operator", 1_200).await.unwrap();
    assert!(waiter.await.unwrap().unwrap() > before, "a policy change wakes blocking queries");
    assert!(set.index > before, "versioned by the registry index");
    assert_eq!((set.overridable.clone(), set.updated_by.as_str()), (vec!["v1".into(), "v2".into()], "operator"));
    assert_eq!(store.get_policy("products").await.unwrap(), Some(set.clone()));

    // Compare-and-set: only on the index read.
    let stale = PolicyChange { if_index: Some(set.index - 1), ..change(&[("v2", 100)]) };
    assert!(matches!(
        registry.set_policy("products", stale, "operator", 1_300).await,
        Err(RegistryError::Store(StoreError::Conflict(_)))
    ));
    let fresh = PolicyChange { if_index: Some(set.index), ..change(&[("v1", 0), ("v2", 100)]) };
    let switched = registry.set_policy("products", fresh, "deployer", 1_300).await.unwrap();
    assert!(switched.index > set.index);
    let only_new = PolicyChange { if_index: Some(0), ..change(&[("v1", 100)]) };
    assert!(registry.set_policy("products", only_new, "operator", 1_300).await.is_err(), "0: only if none");
    assert_eq!(store.list_policies().await.unwrap(), vec![switched.clone()]);

    let events: Vec<String> =
        store.audit(0, 100).await.unwrap().into_iter().map(|e| format!("{} {}", e.event, e.detail)).collect();
    assert!(events.iter().any(|e| e == "policy v1=90 v2=10 sticky=user by operator: test"), "{events:?}");
    assert!(events.iter().any(|e| e.starts_with("policy v1=0 v2=100 sticky=user by deployer")), "{events:?}");

    registry.remove_policy("products", "operator", 1_400).await.unwrap();
    assert!(store.get_policy("products").await.unwrap().is_none());
    assert!(matches!(
        registry.remove_policy("products", "operator", 1_400).await,
        Err(RegistryError::Domain(DomainError::NotFound(_)))
    ));
}

/// The memory backend keeps policies in a file when told: a restarted
/// registry has them, and its index continues after theirs.
#[tokio::test]
async fn memory_policies_survive_a_restart_in_their_file() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("policies.json");
    let store: Arc<dyn Store> = Arc::new(MemoryStore::with_policy_file(file.clone()).unwrap());
    let registry = Registry::new(store.clone(), Arc::new(ScriptedProber::default()), TIMING);
    registry.register(request("products", "p-1", "v1"), 1_000).await.unwrap();
    let set = registry.set_policy("products", change(&[("v1", 100)]), "operator", 1_000).await.unwrap();
    drop((registry, store));

    let restarted = MemoryStore::with_policy_file(file.clone()).unwrap();
    assert_eq!(restarted.get_policy("products").await.unwrap(), Some(set.clone()));
    assert!(restarted.revision().await.unwrap() >= set.index);
    std::fs::write(&file, "not json").unwrap();
    assert!(matches!(MemoryStore::with_policy_file(file), Err(StoreError::Corrupt(_))), "a bad file stops the start");
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
    policies_are_validated_stored_audited_and_wake_watchers,
);
