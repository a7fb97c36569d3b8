//! The built-in console (`shopfast console`): a small observability backend
//! for one machine.
//!
//! - receives OTLP/HTTP (protobuf) traces and logs on `POST /v1/traces` and
//!   `POST /v1/logs` — `shopfast up` points every service here unless
//!   `OTEL_EXPORTER_OTLP_ENDPOINT` names another collector — and keeps them in
//!   its own SQLite database for `retention_ms`;
//! - scrapes every instance the registry lists (`/metrics` on its admin
//!   address) and turns that into RED health, breaker states and alerts;
//! - serves a page (`GET /`) and its JSON API under `/api/`.
//!
//! `model` holds the records and the pure computations (waterfall, edges),
//! `otlp` decodes, `store` persists, `health` judges, `api` serves.
mod api;
pub mod health;
pub mod model;
pub mod otlp;
pub mod store;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::task::JoinHandle;

use kit::db::{Db, DbOptions};
use kit::shutdown::CancellationToken;
use kit_client::discovery::RegistryClient;

use crate::health::{HealthConfig, InstanceScrape, Monitor};
use crate::store::TraceStore;

pub const SERVICE: &str = "console";

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ConsoleConfig {
    pub addr: SocketAddr,
    /// The SQLite file goes here unless `database_url` says otherwise.
    pub data_dir: PathBuf,
    pub database_url: Option<String>,
    /// Where to find the instances to scrape; without it, no health.
    pub registry_url: Option<String>,
    /// The traffic generator's control URL, for its stats on the page.
    pub loadgen_url: Option<String>,
    /// Other control URLs `PUT /api/loadgen` may switch to. The console
    /// relays mode changes to its traffic generator: it must never fetch a
    /// URL a caller made up (server-side request forgery).
    pub loadgen_targets: Vec<String>,
    /// The deploy controller, for the deployments panel (its rollouts).
    pub deployer_url: Option<String>,
    /// Its identity towards the registry (mutual TLS); none in plain text.
    pub tls: kit_tls::TlsConfig,
    /// Spans and logs older than this are deleted.
    pub retention_ms: u64,
    /// And at most this many spans are kept (the oldest go first).
    pub max_spans: i64,
    pub scrape_interval_ms: u64,
    pub scrape_timeout_ms: u64,
    /// The largest OTLP request accepted.
    pub max_body_bytes: usize,
    pub health: HealthConfig,
}

impl Default for ConsoleConfig {
    fn default() -> Self {
        Self {
            addr: SocketAddr::from(([127, 0, 0, 1], 8090)),
            data_dir: PathBuf::from("data"),
            database_url: None,
            registry_url: None,
            loadgen_url: None,
            loadgen_targets: Vec::new(),
            deployer_url: None,
            tls: kit_tls::TlsConfig::default(),
            retention_ms: 3_600_000,
            max_spans: 500_000,
            scrape_interval_ms: 5_000,
            scrape_timeout_ms: 2_000,
            max_body_bytes: 16 * 1024 * 1024,
            health: HealthConfig::default(),
        }
    }
}

impl ConsoleConfig {
    fn check(&self) -> Result<(), String> {
        self.health.check()?;
        if self.retention_ms == 0 || self.max_spans <= 0 || self.scrape_interval_ms == 0 || self.scrape_timeout_ms == 0
        {
            return Err("retention_ms, max_spans, scrape_interval_ms and scrape_timeout_ms must be above 0".into());
        }
        for url in [&self.registry_url, &self.loadgen_url, &self.deployer_url]
            .into_iter()
            .flatten()
            .chain(&self.loadgen_targets)
        {
            check_http_url(url)?;
        }
        Ok(())
    }
}

impl ConsoleConfig {
    /// Whether `url` is a traffic generator this console was configured with.
    pub(crate) fn is_loadgen_target(&self, url: &str) -> bool {
        let same = |configured: &String| configured.trim_end_matches('/') == url;
        self.loadgen_url.iter().chain(&self.loadgen_targets).any(same)
    }
}

pub(crate) fn check_http_url(url: &str) -> Result<(), String> {
    match reqwest::Url::parse(url) {
        Ok(parsed) if matches!(parsed.scheme(), "http" | "https") && parsed.host().is_some() => Ok(()),
        _ => Err(format!("expected an http(s) URL, got {url:?}")),
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("invalid configuration: {0}")]
    Config(String),
    #[error("database: {0}")]
    Db(#[from] kit::db::DbError),
    #[error("cannot listen on {addr}: {source}")]
    Bind { addr: SocketAddr, source: std::io::Error },
}

/// What the API handlers and the background tasks share.
pub(crate) struct Console {
    pub(crate) config: ConsoleConfig,
    pub(crate) store: TraceStore,
    pub(crate) monitor: Mutex<Monitor>,
    pub(crate) loadgen_url: RwLock<Option<String>>,
    pub(crate) http: reqwest::Client,
    /// Versions and traffic policies, for the deployments panel.
    pub(crate) registry: Option<RegistryClient>,
    /// The deploy controller's URL and a client that trusts it.
    pub(crate) deployer: Option<(String, reqwest::Client)>,
}

pub struct RunningConsole {
    pub addr: SocketAddr,
    shutdown: CancellationToken,
    tasks: Vec<JoinHandle<()>>,
    db: Db,
}

impl RunningConsole {
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub async fn wait(self) {
        for task in self.tasks {
            let _ = task.await;
        }
        self.db.close().await;
        tracing::info!(service = SERVICE, "stopped");
    }

    pub async fn stop(self) {
        self.shutdown.cancel();
        self.wait().await;
    }
}

pub async fn start(config: ConsoleConfig, shutdown: CancellationToken) -> Result<RunningConsole, StartError> {
    describe_metrics();
    config.check().map_err(StartError::Config)?;
    let url = config.database_url.clone().unwrap_or_else(|| {
        let _ = std::fs::create_dir_all(&config.data_dir);
        kit::db::sqlite_file_url(&config.data_dir.join("console.db"))
    });
    let db = Db::open(&url, &DbOptions { max_connections: 4, ..DbOptions::default() }, &MIGRATOR).await?;
    let http = reqwest::Client::builder()
        .timeout(Duration::from_millis(config.scrape_timeout_ms))
        .build()
        .map_err(|e| StartError::Config(format!("HTTP client: {e}")))?;
    let tls = kit_tls::Tls::optional(&config.tls, SERVICE).map_err(|e| StartError::Config(e.to_string()))?;
    let registry = config.registry_url.as_ref().map(|url| RegistryClient::with_tls(url, tls.clone()));
    let deployer = match &config.deployer_url {
        None => None,
        Some(url) => {
            let builder = reqwest::Client::builder().timeout(Duration::from_millis(config.scrape_timeout_ms));
            let builder = match &tls {
                Some(tls) if url.starts_with("https://") => builder.tls_backend_preconfigured(
                    tls.client_config_for(kit_tls::DEPLOYER).map_err(|e| StartError::Config(e.to_string()))?,
                ),
                _ => builder,
            };
            let client = builder.build().map_err(|e| StartError::Config(format!("HTTP client: {e}")))?;
            Some((url.trim_end_matches('/').to_string(), client))
        }
    };
    let console = Arc::new(Console {
        store: TraceStore::new(db.clone()),
        monitor: Mutex::new(Monitor::new(config.health.clone())),
        loadgen_url: RwLock::new(config.loadgen_url.clone()),
        http,
        registry: registry.clone(),
        deployer,
        config: config.clone(),
    });

    let (addr, server) =
        kit::server::serve_http(config.addr, api::router(console.clone()), shutdown.clone(), "console")
            .await
            .map_err(|source| StartError::Bind { addr: config.addr, source })?;
    let mut tasks = vec![server, tokio::spawn(prune(console.clone(), shutdown.clone()))];
    if let Some(registry) = registry {
        tasks.push(tokio::spawn(scrape(console.clone(), registry, shutdown.clone())));
    }
    tracing::info!(service = SERVICE, %addr, registry = ?config.registry_url, "ready");
    Ok(RunningConsole { addr, shutdown, tasks, db })
}

/// Deletes what retention says is too old, every few seconds.
async fn prune(console: Arc<Console>, shutdown: CancellationToken) {
    let every = Duration::from_millis((console.config.retention_ms / 10).clamp(1_000, 60_000));
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
        let before_ns = (kit_core::time::now_millis() - console.config.retention_ms as i64).saturating_mul(1_000_000);
        match console.store.prune(before_ns, console.config.max_spans).await {
            Ok((spans, logs)) if spans + logs > 0 => tracing::debug!(spans, logs, "retention: deleted"),
            Ok(_) => {}
            Err(err) => tracing::warn!(error = %err, "retention pass failed"),
        }
    }
}

/// Every interval: the registry's instances, each one's `/metrics`, into the monitor.
async fn scrape(console: Arc<Console>, registry: RegistryClient, shutdown: CancellationToken) {
    let every = Duration::from_millis(console.config.scrape_interval_ms);
    let mut registry_down = false;
    loop {
        match registry.all_instances().await {
            Ok(list) => {
                if registry_down {
                    tracing::info!("registry reachable again");
                    registry_down = false;
                }
                let instances: Vec<_> =
                    list.instances.into_iter().filter(|i| i.health.routable() && !i.admin_address.is_empty()).collect();
                let scrapes = futures::future::join_all(instances.iter().map(|i| scrape_one(&console.http, i))).await;
                if let Ok(mut monitor) = console.monitor.lock() {
                    monitor.observe(kit_core::time::now_millis(), scrapes);
                }
            }
            Err(err) => {
                if !registry_down {
                    tracing::warn!(error = %err, "registry unreachable; health is not updated until it answers");
                    registry_down = true;
                }
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
    }
}

async fn scrape_one(http: &reqwest::Client, instance: &registry_wire::wire::InstanceInfo) -> InstanceScrape {
    let url = format!("http://{}/metrics", instance.admin_address);
    let text = match http.get(&url).send().await {
        Ok(response) if response.status().is_success() => response.text().await.ok(),
        _ => None,
    };
    metrics::counter!("console_scrapes_total", "outcome" => if text.is_some() { "ok" } else { "failed" }).increment(1);
    match text {
        Some(text) => health::read_exposition(&instance.name, &instance.id, &text),
        None => InstanceScrape {
            service: instance.name.clone(),
            instance_id: instance.id.clone(),
            totals: None,
            breakers: Default::default(),
            queue: Default::default(),
        },
    }
}

/// HELP text of the console's own metrics.
pub fn describe_metrics() {
    // Descriptions reach only an installed recorder.
    let _ = kit_telemetry::metrics::prometheus();
    use metrics::describe_counter;
    describe_counter!("console_spans_received_total", "Spans the console received over OTLP.");
    describe_counter!("console_logs_received_total", "Log records the console received over OTLP.");
    describe_counter!(
        "console_scrapes_total",
        "Scrapes of instances' /metrics by the console, by outcome (ok, failed)."
    );
}
