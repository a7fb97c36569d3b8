//! The deploy controller (`shopfast deployer`): blue-green and canary
//! rollouts driven through the registry's traffic policy. Green starts beside
//! blue at weight 0 (through the supervisor — `shopfast up`'s control API — or
//! by whoever runs the instances). Blue-green: validated and smoke-tested
//! through the version override, all traffic at once, watched against blue's
//! baseline and rolled back automatically on regression; blue stays on
//! standby, then is retired. Canary: a growing share step by step, each step
//! judged on live metrics against stable (`analysis`), rolled back the moment
//! it is worse. Every step is persisted: a controller killed mid-deploy resumes.
pub mod analysis;
pub mod api;
pub mod canary;
pub mod canary_state;
pub mod controller;
pub mod evidence;
pub mod model;
pub mod platform;
pub mod smoke;
pub mod store;

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use tokio::task::JoinHandle;

use kit::config::Secret;
use kit::shutdown::CancellationToken;

pub const SERVICE: &str = "deployer";

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct DeployerConfig {
    /// Its API (HTTPS with `tls`).
    pub addr: SocketAddr,
    pub registry_url: String,
    /// The gateway the smoke suite goes through.
    pub gateway_url: String,
    /// An admin API key of the gateway: only admin keys may ask for a version by name.
    pub api_key: Option<Secret>,
    /// The supervisor that starts and stops instances (`shopfast up`'s
    /// control API); unset: deploys wait for instances someone else starts.
    pub supervisor_url: Option<String>,
    /// Where rollouts are kept: `sqlite://…`/`postgres://…`; default a SQLite
    /// file in `data_dir`.
    pub database_url: Option<String>,
    pub data_dir: PathBuf,
    /// Its identity (`deployer`) towards the registry and the supervisor.
    pub tls: kit_tls::TlsConfig,
    /// Canary steps and thresholds per service (`[deployer.canary.products]`);
    /// a service without a table takes the defaults.
    pub canary: std::collections::BTreeMap<String, canary::CanaryConfig>,
}

impl Default for DeployerConfig {
    fn default() -> Self {
        Self {
            addr: SocketAddr::from(([127, 0, 0, 1], 8070)),
            registry_url: "http://127.0.0.1:8080".into(),
            gateway_url: "http://127.0.0.1:8000".into(),
            api_key: None,
            supervisor_url: None,
            database_url: None,
            data_dir: PathBuf::from("data"),
            tls: kit_tls::TlsConfig::default(),
            canary: std::collections::BTreeMap::new(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("configuration: {0}")]
    Config(String),
    #[error(transparent)]
    Store(#[from] store::StoreError),
    #[error("cannot bind {addr}: {source}")]
    Bind { addr: SocketAddr, source: std::io::Error },
}

pub struct RunningDeployer {
    pub addr: SocketAddr,
    shutdown: CancellationToken,
    server: JoinHandle<()>,
}

impl RunningDeployer {
    pub async fn wait(self) {
        let _ = self.server.await;
        tracing::info!(service = SERVICE, "stopped");
    }

    pub async fn stop(self) {
        self.shutdown.cancel();
        self.wait().await;
    }
}

/// HELP text of the deployer's own metrics (the recorder first: a
/// description given before it exists is lost).
fn describe_metrics() {
    kit_telemetry::metrics::prometheus();
    metrics::describe_counter!(
        "deploy_events_total",
        "Rollout events by service, strategy and event (started, switched, promoted, succeeded, rolled_back, aborted)."
    );
    metrics::describe_gauge!("deploy_rollouts_active", "Rollouts in progress.");
}

pub async fn start(config: DeployerConfig, shutdown: CancellationToken) -> Result<RunningDeployer, StartError> {
    describe_metrics();
    for (service, canary) in &config.canary {
        if !model::DEPLOYABLE.contains(&service.as_str()) {
            return Err(StartError::Config(format!("[deployer.canary.{service}]: not a deployable service")));
        }
        canary.check().map_err(|e| StartError::Config(format!("[deployer.canary.{service}]: {e}")))?;
    }
    let api_key = config.api_key.clone().ok_or_else(|| {
        StartError::Config(
            "no api_key: the smoke suite needs an admin API key of the gateway \
             (SHOPFAST_DEPLOYER__API_KEY; `shopfast up` gives it one)"
                .into(),
        )
    })?;
    let tls = kit_tls::Tls::from_config(&config.tls, SERVICE).map_err(|e| StartError::Config(e.to_string()))?;
    let url =
        config.database_url.clone().unwrap_or_else(|| kit::db::sqlite_file_url(&config.data_dir.join("deployer.db")));
    let store = store::RolloutStore::open(&url).await?;
    let registry =
        platform::Registry::new(kit_client::discovery::RegistryClient::with_tls(&config.registry_url, tls.clone()));
    let supervisor = config
        .supervisor_url
        .as_deref()
        .map(|url| platform::Supervisor::new(url, tls.as_ref()))
        .transpose()
        .map_err(StartError::Config)?;
    let smoke = smoke::Smoke::new(&config.gateway_url, api_key);
    let controller =
        controller::Controller::new(store, registry, supervisor, smoke, config.canary.clone(), shutdown.clone());
    let resumed = controller.resume().await?;
    let state = api::ApiState { controller, secured: tls.is_some() };
    let listen = tls.clone().map(|tls| (tls, kit_tls::ClientAuth::Optional));
    let (addr, server) =
        kit::server::serve_http_with_peers(config.addr, api::router(state), shutdown.clone(), "deployer API", listen)
            .await
            .map_err(|source| StartError::Bind { addr: config.addr, source })?;
    if let Some(tls) = &tls {
        tls.spawn_reload(shutdown.clone());
    }
    tracing::info!(service = SERVICE, %addr, resumed, "ready");
    Ok(RunningDeployer { addr, shutdown, server })
}
