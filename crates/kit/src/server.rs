//! Service bootstrap: binds the gRPC and admin listeners (port 0 allowed), serves
//! gRPC with tonic-health and reflection next to the service's own routes, the
//! admin HTTP endpoints, readiness gating, and graceful shutdown.
//!
//! Lifecycle: `Host::bind` starts the admin server at once (live = 200, ready =
//! 503); `Host::start` starts gRPC and only then reports ready. On shutdown the
//! host first reports not-ready and NOT_SERVING, then stops accepting and lets
//! in-flight requests finish, up to the configured grace.
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use futures::future::BoxFuture;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tonic::service::Routes;
use tonic_health::ServingStatus;

use crate::access::{AccessLayer, AccessPolicy};
use crate::config::ServiceCommon;
use crate::idempotency::{IdempotencyConfig, IdempotencyLayer, IdempotencyStore};
use kit_resilience::deadline::SpentDeadlineLayer;
use kit_resilience::faults::{FaultLayer, Faults};
use kit_resilience::shed::{ShedConfig, ShedLayer};
use kit_telemetry::grpc_telemetry::GrpcTelemetryLayer;

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("cannot bind {what} on {addr}: {source}")]
    Bind { what: &'static str, addr: SocketAddr, source: std::io::Error },
    #[error("reflection: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    #[error("gRPC server: {0}")]
    Transport(#[from] tonic::transport::Error),
    #[error("server task failed: {0}")]
    Join(#[from] tokio::task::JoinError),
    #[error("fault injection: {0}")]
    Faults(#[from] kit_resilience::faults::FaultError),
    #[error("{0}")]
    Tls(kit_tls::TlsError),
    #[error("{0}")]
    Access(#[from] crate::access::PolicyError),
    #[error("configuration: {0}")]
    Config(String),
}

/// What a service tells the host about itself.
#[derive(Debug, Clone)]
pub struct ServiceSpec {
    /// Short name used in logs, metrics and file names: "users".
    pub name: &'static str,
    /// Fully qualified gRPC service names, reported by the health service.
    pub grpc_services: &'static [&'static str],
    /// Encoded FileDescriptorSet served by reflection.
    pub descriptor_set: &'static [u8],
}

type Check = Arc<dyn Fn() -> BoxFuture<'static, Result<(), String>> + Send + Sync>;

/// Readiness: a flag the host flips, plus dependency checks run on every probe.
#[derive(Clone, Default)]
pub struct Readiness {
    ready: Arc<AtomicBool>,
    checks: Arc<std::sync::RwLock<Vec<(&'static str, Check)>>>,
}

impl Readiness {
    pub fn set(&self, ready: bool) {
        self.ready.store(ready, Ordering::SeqCst);
    }

    pub fn is_set(&self) -> bool {
        self.ready.load(Ordering::SeqCst)
    }

    /// Adds a dependency check (e.g. a database ping) that must pass for ready.
    pub fn add_check<F>(&self, name: &'static str, check: F)
    where
        F: Fn() -> BoxFuture<'static, Result<(), String>> + Send + Sync + 'static,
    {
        if let Ok(mut checks) = self.checks.write() {
            checks.push((name, Arc::new(check)));
        }
    }

    /// Ready only while `db` answers a ping.
    pub fn require_database(&self, db: &crate::db::Db) {
        let db = db.clone();
        self.add_check("database", move || {
            let db = db.clone();
            Box::pin(async move { db.ping().await.map_err(|e| e.to_string()) })
        });
    }

    /// Runs every check; returns the failures by name.
    pub async fn evaluate(&self) -> Vec<(&'static str, String)> {
        let mut failures = Vec::new();
        if !self.is_set() {
            failures.push(("started", "not serving yet or draining".to_string()));
        }
        let checks: Vec<_> = self.checks.read().map(|c| c.clone()).unwrap_or_default();
        for (name, check) in checks {
            match tokio::time::timeout(Duration::from_secs(2), check()).await {
                Ok(Ok(())) => {}
                Ok(Err(err)) => failures.push((name, err)),
                Err(_) => failures.push((name, "timed out".to_string())),
            }
        }
        failures
    }
}

/// A service process's listeners and lifecycle, before gRPC starts.
pub struct Host {
    spec: ServiceSpec,
    grpc_listener: TcpListener,
    grpc_addr: SocketAddr,
    admin_addr: SocketAddr,
    admin_task: JoinHandle<()>,
    readiness: Readiness,
    shutdown: CancellationToken,
    grace: Duration,
    registration: Option<(kit_client::discovery::RegistryClient, registry_wire::wire::RegisterRequest)>,
    shedding: ShedConfig,
    faults: Faults,
    idempotency: Option<std::sync::Arc<IdempotencyStore>>,
    /// Its identity (mutual TLS), or none in plain text.
    tls: Option<std::sync::Arc<kit_tls::Tls>>,
    /// The version it registers and reports on every answer.
    version: String,
}

/// The address others should dial for a listener bound to `bound`.
pub fn advertised(bound: SocketAddr, host: Option<&str>) -> String {
    match host {
        Some(host) => format!("{host}:{}", bound.port()),
        None if bound.ip().is_unspecified() => format!("127.0.0.1:{}", bound.port()),
        None => bound.to_string(),
    }
}

impl Host {
    /// Binds both listeners and starts the admin server (not ready yet).
    pub async fn bind(
        spec: ServiceSpec,
        common: &ServiceCommon,
        shutdown: CancellationToken,
    ) -> Result<Self, ServerError> {
        crate::describe_metrics();
        let grpc_listener = TcpListener::bind(common.grpc_addr).await.map_err(|source| ServerError::Bind {
            what: "gRPC",
            addr: common.grpc_addr,
            source,
        })?;
        let admin_listener = TcpListener::bind(common.admin_addr).await.map_err(|source| ServerError::Bind {
            what: "admin HTTP",
            addr: common.admin_addr,
            source,
        })?;
        let bound =
            |l: &TcpListener, what, addr| l.local_addr().map_err(|source| ServerError::Bind { what, addr, source });
        let grpc_addr = bound(&grpc_listener, "gRPC", common.grpc_addr)?;
        let admin_addr = bound(&admin_listener, "admin HTTP", common.admin_addr)?;

        let tls = kit_tls::Tls::from_config(&common.tls, spec.name).map_err(ServerError::Tls)?;
        let version = common.version().map_err(ServerError::Config)?;
        let track = common.track().map_err(ServerError::Config)?;
        let readiness = Readiness::default();
        let faults = Faults::new(&common.faults)?;
        // Built here, not in the task: building it installs the metrics
        // recorder, which must exist before the first request is counted.
        let admin = admin_router(readiness.clone(), faults.clone());
        let admin_task = tokio::spawn(serve_admin(admin_listener, admin, shutdown.clone()));
        let registration = common.registry_url.as_deref().map(|url| {
            let request = registry_wire::wire::RegisterRequest {
                id: None,
                name: spec.name.to_string(),
                address: advertised(grpc_addr, common.advertise_host.as_deref()),
                admin_address: advertised(admin_addr, common.advertise_host.as_deref()),
                version: version.clone(),
                track,
                metadata: common.metadata.clone(),
                health: None,
            };
            (kit_client::discovery::RegistryClient::with_tls(url, tls.clone()), request)
        });
        tracing::info!(service = spec.name, %grpc_addr, %admin_addr, %version, "listeners bound");
        Ok(Self {
            spec,
            grpc_listener,
            grpc_addr,
            admin_addr,
            admin_task,
            readiness,
            shutdown,
            grace: Duration::from_millis(common.shutdown_grace_ms),
            registration,
            shedding: common.shedding.clone(),
            faults,
            idempotency: None,
            tls,
            version,
        })
    }

    /// Its identity, for its own calls to others (mutual TLS); none in plain text.
    pub fn tls(&self) -> Option<std::sync::Arc<kit_tls::Tls>> {
        self.tls.clone()
    }

    pub fn readiness(&self) -> &Readiness {
        &self.readiness
    }

    /// Enforces `idempotency-key` metadata on every method, with keys kept in
    /// the service's own database `db` (and swept while the service runs).
    pub async fn enforce_idempotency(&mut self, db: &crate::db::Db) -> Result<(), StartError> {
        let store = IdempotencyStore::open(db.clone(), IdempotencyConfig::default())
            .await
            .map_err(|e| StartError::Db(crate::db::DbError::from(e)))?;
        self.idempotency = Some(std::sync::Arc::new(store));
        Ok(())
    }

    /// Serves `routes` plus health and reflection, then reports ready.
    pub async fn start(self, routes: Routes) -> Result<RunningService, ServerError> {
        let (health, health_service) = tonic_health::server::health_reporter();
        // Advertise only what this process serves: the descriptor set holds
        // every shopfast service.
        let reflection = |reflection_service: &str| {
            let builder = tonic_reflection::server::Builder::configure()
                .register_encoded_file_descriptor_set(self.spec.descriptor_set)
                .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
                .with_service_name("grpc.health.v1.Health")
                .with_service_name(reflection_service);
            self.spec.grpc_services.iter().fold(builder, |b, name| b.with_service_name(*name))
        };
        let reflection_v1 = reflection("grpc.reflection.v1.ServerReflection").build_v1()?;
        let reflection_v1alpha = reflection("grpc.reflection.v1alpha.ServerReflection").build_v1alpha()?;
        let routes = routes.add_service(health_service).add_service(reflection_v1).add_service(reflection_v1alpha);

        // Mutual TLS (the caller's identity travels with each request as a
        // `tls::Peer`); answers ready together leave together (see `coalesce`).
        let accepted =
            kit_tls::accept(self.grpc_listener, self.tls.clone().map(|tls| (tls, kit_tls::ClientAuth::Required)));
        let incoming = tokio_stream::StreamExt::map(tokio_stream::wrappers::ReceiverStream::new(accepted), |conn| {
            Ok::<_, std::io::Error>(kit_client::coalesce::Coalescing(conn))
        });
        let access = AccessPolicy::from_descriptors(self.spec.name, self.spec.descriptor_set, self.spec.grpc_services)?;
        let shutdown = self.shutdown.clone();
        let readiness = self.readiness.clone();
        let services = self.spec.grpc_services;
        let drain_health = health.clone();
        // Registered only once serving; the registration is handed to the stop
        // signal, which deregisters first so clients stop routing here before
        // the server stops accepting.
        let (registered_tx, registered_rx) = tokio::sync::oneshot::channel::<kit_client::discovery::Registration>();
        let stop_signal = async move {
            shutdown.cancelled().await;
            if let Ok(registration) = registered_rx.await {
                registration.deregister(Duration::from_secs(1)).await;
            }
            readiness.set(false);
            set_status(&drain_health, services, ServingStatus::NotServing).await;
        };
        let shed = ShedLayer::new(self.spec.name, &self.shedding);
        let server = tonic::transport::Server::builder()
            // Outermost first: every call is counted, spent or shed calls
            // cost nothing more, a duplicate is answered before it runs,
            // injected faults look like the method's own (an injected
            // UNAVAILABLE frees an idempotency key like a real one) and
            // injected latency holds an in-flight slot like real slowness.
            // tonic itself enforces the caller's grpc-timeout.
            .layer(GrpcTelemetryLayer::new(self.spec.name))
            .layer(AccessLayer::new(access))
            .layer(kit_client::routing::RoutingLayer::new(&self.version))
            .layer(SpentDeadlineLayer)
            .layer(shed.clone())
            .layer(tower::util::option_layer(self.idempotency.clone().map(IdempotencyLayer::new)))
            .layer(FaultLayer::new(self.spec.name, self.faults.clone()))
            .add_routes(routes)
            .serve_with_incoming_shutdown(incoming, stop_signal);

        let name = self.spec.name;
        let grace = self.grace;
        let shutdown = self.shutdown.clone();
        let admin_task = self.admin_task;
        let task = tokio::spawn(async move {
            tokio::pin!(server);
            let result = tokio::select! {
                result = &mut server => result.map_err(ServerError::from),
                _ = async { shutdown.cancelled().await; tokio::time::sleep(grace).await } => {
                    tracing::warn!(service = name, grace_ms = grace.as_millis() as u64, "in-flight requests outlived the shutdown grace; closing");
                    Ok(())
                }
            };
            shutdown.cancel();
            let _ = admin_task.await;
            tracing::info!(service = name, "stopped");
            result
        });

        set_status(&health, services, ServingStatus::Serving).await;
        self.readiness.set(true);
        if let Some((client, request)) = self.registration {
            let _ = registered_tx.send(kit_client::discovery::Registration::start(client, request));
        }
        tracing::info!(service = name, grpc_addr = %self.grpc_addr, admin_addr = %self.admin_addr, "ready");
        let mut background: Vec<JoinHandle<()>> =
            self.idempotency.map(|store| store.spawn_sweeper(self.shutdown.clone())).into_iter().collect();
        // Rotated certificates are picked up without a restart.
        background.extend(self.tls.as_ref().map(|tls| tls.spawn_reload(self.shutdown.clone())));
        Ok(RunningService {
            name,
            grpc_addr: self.grpc_addr,
            admin_addr: self.admin_addr,
            shutdown: self.shutdown,
            task,
            background,
            databases: Vec::new(),
            shed,
        })
    }
}

async fn set_status(health: &tonic_health::server::HealthReporter, services: &[&str], status: ServingStatus) {
    health.set_service_status("", status).await;
    for service in services {
        health.set_service_status(*service, status).await;
    }
}

/// A started service: its real addresses and a handle to stop it.
pub struct RunningService {
    pub name: &'static str,
    pub grpc_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    shutdown: CancellationToken,
    task: JoinHandle<Result<(), ServerError>>,
    background: Vec<JoinHandle<()>>,
    databases: Vec<crate::db::Db>,
    /// Counts the calls in flight (when shedding is on).
    shed: ShedLayer,
}

impl RunningService {
    /// Calls being handled right now (None when shedding, which counts
    /// them, is off).
    pub fn in_flight(&self) -> Option<usize> {
        self.shed.in_flight()
    }

    /// Ties a background task (a reaper, a worker) to the service: it is awaited
    /// on stop; it must itself watch the shutdown token.
    pub fn attach(&mut self, task: JoinHandle<()>) {
        self.background.push(task);
    }

    /// Gives the service its database: its pool's connections (in use, idle)
    /// are gauges on `/metrics` while the service runs, and it is closed once
    /// the server has drained, not before (in-flight requests still need it).
    pub fn own_database(&mut self, db: crate::db::Db) {
        let (pool, shutdown, service) = (db.clone(), self.shutdown.clone(), self.name);
        self.background.push(tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tick.tick() => {}
                }
                let (size, idle) = (pool.pool().size() as f64, pool.pool().num_idle() as f64);
                metrics::gauge!("db_pool_connections", "service" => service, "state" => "idle").set(idle);
                metrics::gauge!("db_pool_connections", "service" => service, "state" => "in_use").set(size - idle);
            }
        }));
        self.databases.push(db);
    }

    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    pub fn grpc_url(&self) -> String {
        format!("http://{}", self.grpc_addr)
    }

    /// Waits until the service stops (after its shutdown token is cancelled).
    pub async fn wait(self) -> Result<(), ServerError> {
        let result = self.task.await?;
        for task in self.background {
            let _ = task.await;
        }
        for db in self.databases {
            db.close().await;
        }
        result
    }

    /// Drains and stops the service.
    pub async fn stop(self) -> Result<(), ServerError> {
        self.shutdown.cancel();
        self.wait().await
    }
}

fn admin_router(readiness: Readiness, faults: Faults) -> Router {
    Router::new()
        .route("/health/live", get(|| async { (StatusCode::OK, axum::Json(serde_json::json!({"status": "live"}))) }))
        .route("/health/ready", get(ready))
        .route("/metrics", kit_telemetry::metrics::route())
        .with_state(readiness)
        .merge(kit_resilience::faults::admin_routes(faults))
}

/// Binds `addr` and serves `app` on a task of its own until `shutdown`, then
/// lets requests in flight finish. The bound address (port 0 becomes the one
/// picked) and the task; `what` names the server in its failure log.
pub async fn serve_http(
    addr: std::net::SocketAddr,
    app: Router,
    shutdown: CancellationToken,
    what: &'static str,
) -> std::io::Result<(std::net::SocketAddr, tokio::task::JoinHandle<()>)> {
    crate::describe_metrics();
    let listener = TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    let task = tokio::spawn(async move {
        let stopped = async move { shutdown.cancelled().await };
        if let Err(err) = axum::serve(listener, app).with_graceful_shutdown(stopped).await {
            tracing::error!(error = %err, "{what} server failed");
        }
    });
    Ok((bound, task))
}

/// Like [`serve_http`], over TLS when `tls` is given, with each request
/// knowing who sent it: handlers take `ConnectInfo<tls::Peer>` (the
/// identity the caller's certificate proved, if any).
pub async fn serve_http_with_peers(
    addr: std::net::SocketAddr,
    app: Router,
    shutdown: CancellationToken,
    what: &'static str,
    tls: Option<(Arc<kit_tls::Tls>, kit_tls::ClientAuth)>,
) -> std::io::Result<(std::net::SocketAddr, tokio::task::JoinHandle<()>)> {
    crate::describe_metrics();
    let listener = TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    let listener = kit_tls::PeerListener::new(kit_tls::accept(listener, tls), bound);
    let task = tokio::spawn(async move {
        let stopped = async move { shutdown.cancelled().await };
        let app = app.into_make_service_with_connect_info::<kit_tls::Peer>();
        if let Err(err) = axum::serve(listener, app).with_graceful_shutdown(stopped).await {
            tracing::error!(error = %err, "{what} server failed");
        }
    });
    Ok((bound, task))
}

async fn serve_admin(listener: TcpListener, app: Router, shutdown: CancellationToken) {
    let stopped = async move { shutdown.cancelled().await };
    if let Err(err) = axum::serve(listener, app).with_graceful_shutdown(stopped).await {
        tracing::error!(error = %err, "admin server failed");
    }
}

async fn ready(State(readiness): State<Readiness>) -> impl IntoResponse {
    let failures = readiness.evaluate().await;
    if failures.is_empty() {
        (StatusCode::OK, axum::Json(serde_json::json!({"status": "ready"})))
    } else {
        let failing: serde_json::Map<String, serde_json::Value> =
            failures.into_iter().map(|(name, why)| (name.to_string(), why.into())).collect();
        (StatusCode::SERVICE_UNAVAILABLE, axum::Json(serde_json::json!({"status": "not_ready", "failing": failing})))
    }
}

/// Why a service could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("database: {0}")]
    Db(#[from] crate::db::DbError),
    #[error(transparent)]
    Server(#[from] ServerError),
    #[error("configuration: {0}")]
    Config(String),
}
