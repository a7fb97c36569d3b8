//! The API gateway: REST/JSON in front of the gRPC services, with routes,
//! request mapping and OpenAPI all derived from the protos' `google.api.http`
//! annotations; API keys and user tokens; tiered rate limits and quotas;
//! backends found through the registry and load balanced client-side.
pub mod auth;
pub mod backend;
pub mod deferred;
pub mod errors;
pub mod grpc_call;
pub mod meters;
pub mod openapi;
pub mod policy;
pub mod ratelimit;
pub mod routes;
pub mod server;
pub mod template;
pub mod tracecontext;
pub mod transcode;
pub mod wire_json;

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use kit::db::{Db, DbOptions};
use kit::shutdown::CancellationToken;
use kit_client::discovery::{Discovery, Registration, RegistryClient};

pub const SERVICE: &str = "gateway";
/// The gateway's schema (quota counts, deferred calls).
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// Every table a client can add to has a bound (a flood of addresses or
/// writes must not grow memory or a table without limit).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct StateLimits {
    /// Clients whose rate (per tier) and monthly quota counts are kept in
    /// memory; beyond it a new client takes an idle one's place, or is
    /// refused (503) when none is idle.
    pub max_clients: usize,
    /// Calls the `queue` fallback may hold undelivered; more are refused.
    pub max_deferred_calls: usize,
}

impl Default for StateLimits {
    fn default() -> Self {
        Self { max_clients: 100_000, max_deferred_calls: 10_000 }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct GatewayConfig {
    pub addr: SocketAddr,
    pub registry_url: String,
    /// Where quota counts persist: `sqlite://…`/`postgres://…`; default a
    /// SQLite file in `data_dir`.
    pub database_url: Option<String>,
    pub data_dir: PathBuf,
    /// HMAC secret for user tokens; must match the Users service's.
    pub token_secret: Option<kit::config::Secret>,
    /// Enables shared limits across gateways, e.g. `redis://127.0.0.1:6379`.
    pub redis_url: Option<String>,
    pub redis_prefix: String,
    pub tiers: BTreeMap<String, ratelimit::Tier>,
    /// API key → client, tier, admin.
    pub api_keys: auth::ApiKeys,
    /// More API keys, from a JSON file (`{"<key>": {"client": …, "tier": …,
    /// "admin": …}}`): keys kept out of the environment, where a variable's
    /// name (`…__API_KEYS__<KEY>__…`) would show them.
    pub api_keys_file: Option<PathBuf>,
    /// Bounds on what clients can make the gateway remember.
    pub limits: StateLimits,
    /// Its identity towards the registry and the services (mutual TLS). Its
    /// own port, the public edge, stays plain HTTP.
    pub tls: kit_tls::TlsConfig,
    /// Proxies (addresses or networks) whose `X-Forwarded-For` / `Forwarded`
    /// names the client: anonymous clients behind them are limited by their
    /// own address, not the proxy's. Nobody's header is believed otherwise.
    pub trusted_proxies: Vec<String>,
    /// Method full name → policy override.
    pub routes: BTreeMap<String, policy::PolicyOverride>,
    /// Backend name (`products`) → breaker, bulkhead, retries, fallback.
    pub dependencies: BTreeMap<String, kit_resilience::DependencyConfig>,
    pub max_body_bytes: usize,
    pub header_read_timeout_ms: u64,
    pub body_read_timeout_ms: u64,
    pub shutdown_grace_ms: u64,
    /// Labels registered with this instance.
    pub metadata: BTreeMap<String, String>,
    /// Host to advertise in the registry (a container's name); default the
    /// bound address (127.0.0.1 when bound to 0.0.0.0).
    pub advertise_host: Option<String>,
    /// The version it registers; unset: the build's own.
    pub version: Option<String>,
    /// The deployment track it registers; unset: `stable`.
    pub track: Option<String>,
    /// Serve `POST /test/tracecontext` for the W3C trace-context test suite.
    pub trace_context_test_endpoint: bool,
}

impl Default for GatewayConfig {
    fn default() -> Self {
        Self {
            addr: SocketAddr::from(([127, 0, 0, 1], 8000)),
            registry_url: "http://127.0.0.1:8080".into(),
            database_url: None,
            data_dir: PathBuf::from("data"),
            token_secret: None,
            redis_url: None,
            redis_prefix: "shopfast:ratelimit:".into(),
            tiers: ratelimit::default_tiers(),
            api_keys: auth::ApiKeys::default(),
            api_keys_file: None,
            trusted_proxies: Vec::new(),
            limits: StateLimits::default(),
            tls: kit_tls::TlsConfig::default(),
            routes: BTreeMap::new(),
            dependencies: BTreeMap::new(),
            max_body_bytes: 1024 * 1024,
            header_read_timeout_ms: 10_000,
            body_read_timeout_ms: 10_000,
            shutdown_grace_ms: 10_000,
            metadata: BTreeMap::new(),
            advertise_host: None,
            version: None,
            track: None,
            trace_context_test_endpoint: false,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("configuration: {0}")]
    Config(String),
    #[error(transparent)]
    Routes(#[from] routes::RouteError),
    #[error("database: {0}")]
    Db(#[from] kit::db::DbError),
    #[error("cannot bind {addr}: {source}")]
    Bind { addr: SocketAddr, source: std::io::Error },
}

pub struct RunningGateway {
    pub addr: SocketAddr,
    shutdown: CancellationToken,
    task: JoinHandle<()>,
}

impl RunningGateway {
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub async fn wait(self) {
        let _ = self.task.await;
    }

    pub async fn stop(self) {
        self.shutdown.cancel();
        self.wait().await;
    }
}

pub async fn start(mut config: GatewayConfig, shutdown: CancellationToken) -> Result<RunningGateway, StartError> {
    describe_metrics();
    if let Some(path) = &config.api_keys_file {
        let text = std::fs::read_to_string(path)
            .map_err(|e| StartError::Config(format!("api_keys_file {}: {e}", path.display())))?;
        let keys: std::collections::BTreeMap<String, auth::ApiKey> = serde_json::from_str(&text)
            .map_err(|e| StartError::Config(format!("api_keys_file {}: {e}", path.display())))?;
        config.api_keys.0.extend(keys);
    }
    for (key, api_key) in &config.api_keys.0 {
        if !config.tiers.contains_key(&api_key.tier) {
            let key = auth::redacted(key);
            return Err(StartError::Config(format!("API key {key} names unknown tier {:?}", api_key.tier)));
        }
    }
    if !config.tiers.contains_key(auth::ANONYMOUS_TIER) {
        return Err(StartError::Config("the anonymous tier must be configured".into()));
    }
    let signer =
        kit::token::signer_from_config(config.token_secret.as_ref()).map_err(|e| StartError::Config(e.to_string()))?;
    let trusted_proxies = auth::TrustedProxies::parse(&config.trusted_proxies).map_err(StartError::Config)?;
    let pool = prost_reflect::DescriptorPool::decode(contracts::FILE_DESCRIPTOR_SET)
        .map_err(|e| StartError::Config(format!("descriptor set: {e}")))?;
    let routes = routes::build(&pool, |method| policy::resolve(method, &config.routes))?;
    let openapi = Bytes::from(openapi::document(&routes).to_string());

    // The recorder first: backends set their breaker gauges as they are made.
    let metrics = kit_telemetry::metrics::prometheus();
    let tls = kit_tls::Tls::from_config(&config.tls, SERVICE).map_err(|e| StartError::Config(e.to_string()))?;
    if let Some(tls) = &tls {
        tls.spawn_reload(shutdown.clone());
    }
    let discovery = Discovery::new(&config.registry_url, tls.clone(), shutdown.clone());
    let mut backends = HashMap::new();
    for route in &routes {
        if !backends.contains_key(&route.backend) {
            let balancer = discovery.balancer(&route.backend, BTreeMap::new()).await;
            let dependency = config.dependencies.get(&route.backend).cloned().unwrap_or_default();
            backends.insert(route.backend.clone(), backend::Backend::new(&route.backend, balancer, &dependency));
        }
    }
    if let Some(unknown) = config.dependencies.keys().find(|name| !backends.contains_key(*name)) {
        let known: Vec<&String> = backends.keys().collect();
        return Err(StartError::Config(format!("dependencies.{unknown} is not a backend; known: {known:?}")));
    }

    let url =
        config.database_url.clone().unwrap_or_else(|| kit::db::sqlite_file_url(&config.data_dir.join("gateway.db")));
    let db = Db::open(&url, &DbOptions { max_connections: 4, ..DbOptions::default() }, &MIGRATOR).await?;
    let redis = match &config.redis_url {
        Some(url) => Some(
            ratelimit::redis::RedisLimiter::new(url, &config.redis_prefix)
                .map_err(|e| StartError::Config(format!("redis_url: {e}")))?,
        ),
        None => None,
    };
    let quotas = ratelimit::quota::QuotaCounter::new(db.clone(), config.limits.max_clients);
    let limiter = ratelimit::Limiter::new(config.tiers.clone(), config.limits.max_clients, quotas, redis);

    let gateway = Arc::new(server::Gateway {
        routes,
        backends,
        deferred: deferred::DeferredQueue::new(db.clone(), config.limits.max_deferred_calls),
        limiter,
        keys: config.api_keys.0.clone(),
        trusted_proxies,
        signer,
        openapi,
        limits: server::Limits {
            max_body_bytes: config.max_body_bytes,
            body_read_timeout: Duration::from_millis(config.body_read_timeout_ms),
        },
        metrics,
        meters: meters::RequestMeters::default(),
        trace_context_test: config.trace_context_test_endpoint.then(reqwest::Client::new),
    });

    let version = registry_wire::traffic::configured_version(config.version.as_deref()).map_err(StartError::Config)?;
    let track = registry_wire::traffic::configured_track(config.track.as_deref()).map_err(StartError::Config)?;
    let listener =
        TcpListener::bind(config.addr).await.map_err(|source| StartError::Bind { addr: config.addr, source })?;
    let addr = listener.local_addr().map_err(|source| StartError::Bind { addr: config.addr, source })?;
    let registration = Registration::start(
        RegistryClient::with_tls(&config.registry_url, tls.clone()),
        registry_wire::wire::RegisterRequest {
            id: None,
            name: SERVICE.into(),
            address: kit::server::advertised(addr, config.advertise_host.as_deref()),
            admin_address: kit::server::advertised(addr, config.advertise_host.as_deref()),
            version,
            track,
            metadata: config.metadata.clone(),
            health: None,
        },
    );
    tracing::info!(service = SERVICE, %addr, routes = gateway.routes.len(), "ready");
    let task = tokio::spawn(serve(listener, gateway, db, registration, config, shutdown.clone()));
    Ok(RunningGateway { addr, shutdown, task })
}

async fn serve(
    listener: TcpListener,
    gateway: Arc<server::Gateway>,
    db: Db,
    registration: Registration,
    config: GatewayConfig,
    shutdown: CancellationToken,
) {
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_millis(config.header_read_timeout_ms))
        .max_buf_size(64 * 1024)
        .keep_alive(true);
    builder.http2().timer(TokioTimer::new()).max_header_list_size(64 * 1024);
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();

    let maintenance = {
        let gateway = gateway.clone();
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            // Quota counts and deferred calls every second; idle rate-limit
            // buckets every minute.
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            let mut ticks: u64 = 0;
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = tick.tick() => {
                        gateway.limiter.flush_quotas().await;
                        gateway.deliver_deferred().await;
                        gateway.export_state_sizes();
                        ticks += 1;
                        if ticks.is_multiple_of(60) {
                            gateway.limiter.evict_idle();
                        }
                        if ticks.is_multiple_of(3_600) {
                            gateway.prune_deferred().await;
                        }
                    }
                }
            }
        })
    };

    // The public edge: plain HTTP (TLS is for a load balancer in front).
    let mut incoming = kit_tls::accept(listener, None);
    loop {
        let conn = tokio::select! {
            _ = shutdown.cancelled() => break,
            conn = incoming.recv() => match conn {
                Some(conn) => conn,
                None => break,
            },
        };
        let peer = conn.peer.addr;
        let gateway = gateway.clone();
        let service = hyper::service::service_fn(move |request| {
            let gateway = gateway.clone();
            async move { Ok::<_, std::convert::Infallible>(gateway.handle(request, peer).await) }
        });
        let connection =
            builder.serve_connection(TokioIo::new(kit_client::coalesce::Coalescing(conn)), service).into_owned();
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            if let Err(err) = connection.await {
                tracing::debug!(error = %err, "connection ended with an error");
            }
        });
    }

    // Leave the registry first, then drain connections, then persist counts.
    registration.deregister(Duration::from_secs(1)).await;
    drop(incoming);
    if tokio::time::timeout(Duration::from_millis(config.shutdown_grace_ms), graceful.shutdown()).await.is_err() {
        tracing::warn!("connections outlived the shutdown grace");
    }
    let _ = maintenance.await;
    gateway.limiter.flush_quotas().await;
    db.close().await;
    tracing::info!(service = SERVICE, "stopped");
}

/// HELP text of the gateway's own metrics.
pub fn describe_metrics() {
    // Descriptions reach only an installed recorder.
    let _ = kit_telemetry::metrics::prometheus();
    // The gateway's calls go through the kit's client: its metrics too.
    kit::describe_metrics();
    use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
    describe_counter!("gateway_requests_total", "HTTP requests handled by the gateway, by route and status.");
    describe_histogram!(
        "gateway_request_duration_seconds",
        Unit::Seconds,
        "Gateway request duration, by route and status."
    );
    describe_counter!("ratelimit_rejections_total", "Requests refused by rate limits or quotas, by tier and reason.");
    describe_counter!(
        "ratelimit_redis_fallbacks_total",
        "Rate-limit checks decided locally because Redis was unreachable."
    );
    describe_gauge!("ratelimit_redis_up", "1 while the shared (Redis) rate limiter is reachable.");
    describe_gauge!("ratelimit_local_clients", "Clients with a local rate-limit bucket.");
    describe_counter!("fallback_requests_total", "Requests answered by a dependency's fallback, by service and kind.");
    describe_histogram!("fallback_latency_seconds", Unit::Seconds, "Time to answer by fallback, by service and kind.");
    describe_gauge!("deferred_calls_pending", "Queued (deferred) calls not yet delivered, by service.");
    describe_counter!("deferred_calls_settled_total", "Deferred calls delivered or given up, by service and state.");
    describe_gauge!(
        "ratelimit_quota_clients",
        "Clients whose monthly quota counts the gateway holds in memory (bounded)."
    );
    describe_gauge!(
        "fallback_cache_entries",
        "Last good responses the gateway keeps for the cached fallback (bounded)."
    );
    describe_counter!(
        "ratelimit_refused_clients_total",
        "Requests refused because the gateway already tracks as many clients as it may."
    );
    describe_counter!("deferred_calls_refused_total", "Writes the queue fallback refused because the queue was full.");
}
