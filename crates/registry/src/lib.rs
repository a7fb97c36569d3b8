//! The service registry: instances register when ready, heartbeat, drain and
//! deregister; silent instances are probed, drained and removed; every change
//! is audited; clients long-poll for changes. Storage is in memory or in etcd.
pub mod api;
pub mod core;
pub mod etcd;
pub mod model;
pub mod store;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::task::JoinHandle;

use kit::shutdown::CancellationToken;

pub const SERVICE: &str = "registry";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    #[default]
    Memory,
    Etcd,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct RegistryConfig {
    pub addr: SocketAddr,
    pub backend: Backend,
    pub etcd_endpoints: Vec<String>,
    pub etcd_prefix: String,
    /// With the memory backend: where traffic policies are kept, so a
    /// restarted registry still has them (instances register again by
    /// themselves; policies would not). Unset: policies live in memory only.
    pub policy_file: Option<std::path::PathBuf>,
    #[serde(flatten)]
    pub timing: core::Timing,
    /// Its identity (TLS) and the CA whose certificates name who may register.
    pub tls: kit_tls::TlsConfig,
}

impl Default for RegistryConfig {
    fn default() -> Self {
        Self {
            addr: SocketAddr::from(([127, 0, 0, 1], 8080)),
            backend: Backend::Memory,
            etcd_endpoints: vec!["http://127.0.0.1:2379".into()],
            etcd_prefix: "shopfast/registry".into(),
            policy_file: None,
            timing: core::Timing::default(),
            tls: kit_tls::TlsConfig::default(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot bind {addr}: {source}")]
    Bind { addr: SocketAddr, source: std::io::Error },
    #[error("configuration: {0}")]
    Config(String),
    #[error(transparent)]
    Store(#[from] store::StoreError),
}

pub struct RunningRegistry {
    pub addr: SocketAddr,
    registry: core::Registry,
    shutdown: CancellationToken,
    server: JoinHandle<()>,
    sweeper: JoinHandle<()>,
}

impl RunningRegistry {
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// How many blocking queries are parked right now.
    pub fn watchers(&self) -> usize {
        self.registry.watchers()
    }

    pub async fn wait(self) {
        let _ = self.server.await;
        let _ = self.sweeper.await;
        tracing::info!(service = SERVICE, "stopped");
    }

    pub async fn stop(self) {
        self.shutdown.cancel();
        self.wait().await;
    }
}

pub fn build_store(config: &RegistryConfig) -> Result<Arc<dyn store::Store>, StartError> {
    Ok(match config.backend {
        Backend::Memory => match &config.policy_file {
            Some(path) => Arc::new(store::MemoryStore::with_policy_file(path.clone())?),
            None => Arc::new(store::MemoryStore::default()),
        },
        Backend::Etcd => Arc::new(etcd::EtcdStore::new(config.etcd_endpoints.clone(), &config.etcd_prefix)?),
    })
}

pub async fn start(config: RegistryConfig, shutdown: CancellationToken) -> Result<RunningRegistry, StartError> {
    describe_metrics();
    let t = &config.timing;
    if t.heartbeat_interval_ms == 0 || t.ttl_ms < t.heartbeat_interval_ms || t.drain_grace_ms == 0 {
        return Err(StartError::Config("need 0 < heartbeat_interval_ms <= ttl_ms and drain_grace_ms > 0".into()));
    }
    let store = build_store(&config)?;
    let prober = Arc::new(core::HttpProber::new(Duration::from_millis(t.heartbeat_interval_ms.clamp(100, 2_000))));
    let tls =
        kit_tls::Tls::from_config(&config.tls, kit_tls::REGISTRY).map_err(|e| StartError::Config(e.to_string()))?;
    let mut registry = core::Registry::new(store, prober, config.timing.clone());
    if config.backend == Backend::Memory {
        registry = registry.warming_from(kit_core::time::now_millis());
    }
    if tls.is_some() {
        registry = registry.requiring_identities();
    }
    // Readers (dashboards, Prometheus, people) may come without a
    // certificate; a registration needs one naming the service.
    let listen = tls.clone().map(|tls| (tls, kit_tls::ClientAuth::Optional));
    let (addr, server) = kit::server::serve_http_with_peers(
        config.addr,
        api::router(registry.clone()),
        shutdown.clone(),
        "registry HTTP",
        listen,
    )
    .await
    .map_err(|source| StartError::Bind { addr: config.addr, source })?;
    if let Some(tls) = &tls {
        tls.spawn_reload(shutdown.clone());
    }
    let sweeper = tokio::spawn(sweep_forever(registry.clone(), shutdown.clone()));
    tracing::info!(service = SERVICE, %addr, backend = ?config.backend, "ready");
    Ok(RunningRegistry { addr, registry, shutdown, server, sweeper })
}

async fn sweep_forever(registry: core::Registry, shutdown: CancellationToken) {
    let t = registry.timing();
    let every = Duration::from_millis((t.ttl_ms.min(t.drain_grace_ms) / 4).max(10));
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        if let Err(err) = registry.sweep(kit_core::time::now_millis()).await {
            tracing::warn!(error = %err, "registry sweep failed; retrying");
        }
    }
}

impl std::str::FromStr for Backend {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "memory" => Ok(Self::Memory),
            "etcd" => Ok(Self::Etcd),
            other => Err(format!("unknown backend {other:?}: memory or etcd")),
        }
    }
}

/// HELP text of the registry's own metrics.
pub fn describe_metrics() {
    // Descriptions reach only an installed recorder.
    let _ = kit_telemetry::metrics::prometheus();
    use metrics::{describe_counter, describe_gauge};
    describe_gauge!("registry_instances", "Registered instances, by service and health.");
    describe_counter!("registry_changes_total", "Registry changes, by kind.");
    describe_gauge!("registry_watchers", "Blocking queries (long polls) parked, waiting for a change.");
}
