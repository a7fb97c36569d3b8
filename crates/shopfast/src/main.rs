//! `shopfast <command>`: every service of the platform from one binary, each run
//! as its own process; `shopfast up` runs them all.
mod control;
mod deploy;
mod status;
mod supervisor;
mod up;

// The request paths allocate a lot of small objects (HTTP/2 frames, headers,
// dynamic messages); mimalloc serves them markedly cheaper than glibc malloc
// (measured with scripts/bench-gateway.sh).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Parser, Subcommand, ValueEnum};
use serde::Serialize;

use kit::server::RunningService;
use kit_telemetry::telemetry::LogFormat;

#[derive(Parser)]
#[command(name = "shopfast", version = env!("SHOPFAST_BUILD_VERSION"), about = "A microservices platform and the shop that runs on it")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the whole stack: registry and every service, each its own process.
    Up(up::UpArgs),
    /// Print the registry's view of the running services.
    Status(status::StatusArgs),
    /// Make a development CA and a certificate per service identity (mutual TLS).
    Certs(CertsArgs),
    /// Make the stack's secrets (token secret, card key, API keys) in <data-dir>/secrets, as `up` does.
    Secrets(SecretsArgs),
    /// Exit 0 if URL answers 2xx within the timeout (container health checks: no curl needed).
    Healthcheck(HealthcheckArgs),
    /// Run the service registry.
    Registry(RegistryArgs),
    /// Run the API gateway (REST/JSON in front of the gRPC services).
    Gateway(GatewayArgs),
    /// Run the Users service (accounts, login, profiles).
    Users(ServiceArgs),
    /// Run the Products service (catalog, search, inventory reservations).
    Products(ServiceArgs),
    /// Run the Payments service (a simulated card processor; charges, refunds).
    Payments(ServiceArgs),
    /// Run the Orders service (orders, the order saga, fulfilment); needs --registry-url.
    Orders(ServiceArgs),
    /// Run the embedded message queue (Redis Streams' semantics in one process, for a stack without Redis).
    Queue(ServiceArgs),
    /// Run the fulfilment worker: order events from the queue, orders shipped and delivered through Orders.
    Fulfilment(ServiceArgs),
    /// Run the traffic generator: shop journeys through a gateway, modes on its control port.
    Loadgen(LoadgenArgs),
    /// Run the console: OTLP traces and logs in, health from the registry's instances, a web page.
    Console(ConsoleArgs),
    /// Run the deploy controller: blue-green and canary rollouts through the registry's traffic policy.
    Deployer(DeployerArgs),
    /// Deploy a new version of a service (blue-green or canary) and follow it to its end.
    Deploy(deploy::DeployArgs),
    /// A service's rollout: where it is, every step so far; pause, resume, promote or abort a canary.
    Rollout(deploy::RolloutArgs),
    /// Send a service's traffic back to the version it had before its rollout, at once.
    Rollback(deploy::RollbackArgs),
}

#[derive(Args)]
struct HealthcheckArgs {
    /// e.g. http://127.0.0.1:9002/health/ready, or https://… with --tls-dir.
    url: String,
    /// For https://: the certificates to connect with (the CA, and this identity's certificate).
    #[arg(long)]
    tls_dir: Option<PathBuf>,
    /// For https://: who connects (its certificate in --tls-dir) …
    #[arg(long, default_value = kit_tls::OPERATOR)]
    identity: String,
    /// … and who must answer.
    #[arg(long)]
    server: Option<String>,
    #[arg(long, default_value_t = 2_000)]
    timeout_ms: u64,
}

/// `shopfast healthcheck`: one GET, 2xx or a non-zero exit with the reason.
async fn healthcheck(args: HealthcheckArgs) -> anyhow::Result<()> {
    let timeout = std::time::Duration::from_millis(args.timeout_ms.clamp(1, 60_000));
    let builder = reqwest::Client::builder().timeout(timeout).connect_timeout(timeout);
    let builder = match (&args.tls_dir, args.url.starts_with("https://")) {
        (Some(dir), true) => {
            let tls = kit_tls::Tls::from_config(&kit_tls::TlsConfig::in_dir(dir), &args.identity)?
                .context("TLS is configured off")?;
            let server = args.server.as_deref().context("--server: the identity that must answer")?;
            builder.tls_backend_preconfigured(tls.client_config_for(server)?)
        }
        (None, true) => anyhow::bail!("an https:// URL needs --tls-dir and --server"),
        _ => builder,
    };
    let response = builder.build()?.get(&args.url).send().await.with_context(|| format!("GET {}", args.url))?;
    let status = response.status();
    anyhow::ensure!(status.is_success(), "GET {} answered {status}", args.url);
    Ok(())
}

#[derive(Args)]
struct SecretsArgs {
    /// The secrets go to <data-dir>/secrets (kept if already there; owner-only files).
    #[arg(long)]
    data_dir: PathBuf,
}

#[derive(Args)]
struct CertsArgs {
    /// Where ca.pem, ca-key.pem, <identity>.pem and <identity>-key.pem go (kept if already there).
    #[arg(long)]
    dir: PathBuf,
    /// Identities to make certificates for (default: every process of the stack, and `operator`).
    #[arg(long = "identity")]
    identities: Vec<String>,
}

/// Every identity of the stack: the processes, and `operator` for people and their tools.
pub const IDENTITIES: &[&str] = &[
    "registry",
    "users",
    "products",
    "payments",
    "orders",
    "queue",
    "fulfilment",
    "gateway",
    "console",
    "deployer",
    kit_tls::OPERATOR,
];

#[derive(Clone, Copy, ValueEnum)]
enum LogFormatArg {
    Json,
    Pretty,
}

impl From<LogFormatArg> for LogFormat {
    fn from(arg: LogFormatArg) -> Self {
        match arg {
            LogFormatArg::Json => LogFormat::Json,
            LogFormatArg::Pretty => LogFormat::Pretty,
        }
    }
}

fn parse_key_value(text: &str) -> Result<(String, String), String> {
    text.split_once('=')
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .filter(|(k, _)| !k.is_empty())
        .ok_or_else(|| format!("expected key=value, got {text:?}"))
}

fn is_empty_map(map: &BTreeMap<String, String>) -> bool {
    map.is_empty()
}

/// Flags every service takes; they override the config file and `SHOPFAST_*` env.
#[derive(Args, Serialize)]
struct ServiceArgs {
    /// TOML file with a table per service ([users], [products], …).
    #[arg(long, env = "SHOPFAST_CONFIG")]
    #[serde(skip)]
    config: Option<PathBuf>,
    /// gRPC listen address (port 0 = pick a free port).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    grpc_addr: Option<SocketAddr>,
    /// Admin HTTP address: /health/live, /health/ready, /metrics.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    admin_addr: Option<SocketAddr>,
    /// sqlite://path?mode=rwc or postgres://user@host/db (default: <data-dir>/<service>.db).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    database_url: Option<String>,
    /// Where SQLite files live.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    data_dir: Option<PathBuf>,
    /// Register with this registry once ready (e.g. http://127.0.0.1:8080).
    #[arg(long, env = "SHOPFAST_REGISTRY_URL")]
    #[serde(skip_serializing_if = "Option::is_none")]
    registry_url: Option<String>,
    /// Host to advertise in the registry (default: the bound address).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    advertise_host: Option<String>,
    #[command(flatten)]
    #[serde(flatten)]
    release: ReleaseArgs,
    /// Instance metadata for the registry, e.g. --meta zone=a.
    #[arg(long = "meta", value_parser = parse_key_value)]
    #[serde(skip)]
    meta: Vec<(String, String)>,
    #[serde(skip_serializing_if = "is_empty_map")]
    #[arg(skip)]
    metadata: BTreeMap<String, String>,
    /// Allow fault injection (rules from config and the admin endpoint /admin/faults).
    #[arg(long)]
    #[serde(skip)]
    enable_fault_injection: bool,
    #[arg(skip)]
    #[serde(skip_serializing_if = "Option::is_none")]
    faults: Option<EnableFaults>,
    #[command(flatten)]
    #[serde(skip_serializing_if = "TlsArgs::is_unset")]
    tls: TlsArgs,
    #[arg(long, value_enum, default_value = "json")]
    #[serde(skip)]
    log_format: LogFormatArg,
}

/// What an instance registers as, for traffic policies and deploys.
#[derive(Args, Serialize, Default)]
struct ReleaseArgs {
    /// The version to register (default: the build's, e.g. 0.1.0+1a2b3c4d5e6f);
    /// traffic policies route by it. 1-64 of [A-Za-z0-9._+-].
    #[arg(long = "version", env = "SHOPFAST_VERSION")]
    #[serde(skip_serializing_if = "Option::is_none")]
    version: Option<String>,
    /// The deployment track to register: stable (default), blue, green, canary, …
    #[arg(long, env = "SHOPFAST_TRACK")]
    #[serde(skip_serializing_if = "Option::is_none")]
    track: Option<String>,
}

#[derive(Clone, Serialize)]
struct EnableFaults {
    enabled: bool,
}

/// Mutual TLS between processes: where the certificates are, or plain text.
#[derive(Args, Clone, Default)]
struct TlsArgs {
    /// Certificates for mutual TLS: ca.pem, <identity>.pem and <identity>-key.pem
    /// (`shopfast certs --dir DIR` makes a development set).
    #[arg(long, env = "SHOPFAST_TLS_DIR")]
    tls_dir: Option<PathBuf>,
    /// Plain text between processes: no service identity, no encryption
    /// (for tests and debugging; logged as a warning at start).
    #[arg(long)]
    insecure: bool,
}

/// What the TLS flags set in the config's `tls` table (only what was given).
impl Serialize for TlsArgs {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut map = serializer.serialize_map(None)?;
        if let Some(dir) = &self.tls_dir {
            map.serialize_entry("dir", dir)?;
        }
        if self.insecure {
            map.serialize_entry("insecure", &true)?;
        }
        map.end()
    }
}

impl TlsArgs {
    fn is_unset(&self) -> bool {
        self.tls_dir.is_none() && !self.insecure
    }
}

impl ServiceArgs {
    /// Loads the service's configuration with these flags on top.
    fn load<T>(mut self, service: &str) -> anyhow::Result<T>
    where
        T: Default + Serialize + for<'de> serde::Deserialize<'de>,
    {
        kit_telemetry::telemetry::init_logging(service, "info", self.log_format.into());
        self.metadata = self.meta.iter().cloned().collect();
        if self.enable_fault_injection {
            self.faults = Some(EnableFaults { enabled: true });
        }
        Ok(kit::config::load(service, self.config.as_deref(), &self)?)
    }
}

#[derive(Args, Serialize)]
struct RegistryArgs {
    #[arg(long, env = "SHOPFAST_CONFIG")]
    #[serde(skip)]
    config: Option<PathBuf>,
    /// HTTP listen address (port 0 = pick a free port).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    addr: Option<SocketAddr>,
    /// Where instances live: memory (default) or etcd.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    backend: Option<registry::Backend>,
    /// etcd endpoints, comma-separated (with --backend etcd).
    #[arg(long, value_delimiter = ',')]
    #[serde(skip_serializing_if = "Option::is_none")]
    etcd_endpoints: Option<Vec<String>>,
    /// With the memory backend: keep traffic policies in this file across restarts.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    policy_file: Option<PathBuf>,
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    heartbeat_interval_ms: Option<u64>,
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    ttl_ms: Option<u64>,
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    drain_grace_ms: Option<u64>,
    #[command(flatten)]
    #[serde(skip_serializing_if = "TlsArgs::is_unset")]
    tls: TlsArgs,
    #[arg(long, value_enum, default_value = "json")]
    #[serde(skip)]
    log_format: LogFormatArg,
}

#[derive(Args, Serialize)]
struct GatewayArgs {
    #[arg(long, env = "SHOPFAST_CONFIG")]
    #[serde(skip)]
    config: Option<PathBuf>,
    /// HTTP listen address (port 0 = pick a free port).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    addr: Option<SocketAddr>,
    /// The registry that finds the backends.
    #[arg(long, env = "SHOPFAST_REGISTRY_URL")]
    #[serde(skip_serializing_if = "Option::is_none")]
    registry_url: Option<String>,
    /// Share rate limits with other gateways through Redis, e.g. redis://127.0.0.1:6379.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    redis_url: Option<String>,
    /// Host to advertise in the registry (a container's name; default the bound address).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    advertise_host: Option<String>,
    /// Where quota counts persist (default: a SQLite file in --data-dir).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    database_url: Option<String>,
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    data_dir: Option<PathBuf>,
    #[command(flatten)]
    #[serde(flatten)]
    release: ReleaseArgs,
    /// Instance metadata for the registry, e.g. --meta zone=a.
    #[arg(long = "meta", value_parser = parse_key_value)]
    #[serde(skip)]
    meta: Vec<(String, String)>,
    #[serde(skip_serializing_if = "is_empty_map")]
    #[arg(skip)]
    metadata: BTreeMap<String, String>,
    /// Serve POST /test/tracecontext for the W3C trace-context test suite
    /// (scripts/w3c-trace-context.sh); off by default.
    #[arg(long = "enable-trace-context-test-endpoint")]
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    trace_context_test_endpoint: bool,
    /// Runtime threads: 1 = a single-threaded event loop (like one nginx
    /// worker), 0 = one per core.
    #[arg(long, default_value_t = 0)]
    #[serde(skip)]
    threads: usize,
    #[command(flatten)]
    #[serde(skip_serializing_if = "TlsArgs::is_unset")]
    tls: TlsArgs,
    #[arg(long, value_enum, default_value = "json")]
    #[serde(skip)]
    log_format: LogFormatArg,
}

#[derive(Args, Serialize)]
struct LoadgenArgs {
    /// TOML file; the [loadgen] table (rates, weights, …).
    #[arg(long, env = "SHOPFAST_CONFIG")]
    #[serde(skip)]
    config: Option<PathBuf>,
    /// The gateway to send journeys to, e.g. http://127.0.0.1:8000.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    gateway_url: Option<String>,
    /// Sent as X-API-Key (without one: the anonymous tier's limits).
    #[arg(long, env = "SHOPFAST_LOADGEN_API_KEY")]
    #[serde(skip_serializing_if = "Option::is_none")]
    api_key: Option<String>,
    /// Control port: GET / (page), GET /stats, POST /mode/{steady|burst|overload|flood|pause}.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    addr: Option<SocketAddr>,
    /// The mode to start in: steady, burst, overload, flood (orders only) or pause.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    mode: Option<String>,
    #[arg(long, value_enum, default_value = "json")]
    #[serde(skip)]
    log_format: LogFormatArg,
}

#[derive(Args, Serialize)]
struct ConsoleArgs {
    /// TOML file; the [console] table (retention, thresholds, …).
    #[arg(long, env = "SHOPFAST_CONFIG")]
    #[serde(skip)]
    config: Option<PathBuf>,
    /// The page, the API and the OTLP receiver (POST /v1/traces, /v1/logs).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    addr: Option<SocketAddr>,
    /// The registry whose instances are scraped for health.
    #[arg(long, env = "SHOPFAST_REGISTRY_URL")]
    #[serde(skip_serializing_if = "Option::is_none")]
    registry_url: Option<String>,
    /// The traffic generator's control URL (its stats on the page).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    loadgen_url: Option<String>,
    /// The deploy controller, for the deployments panel.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    deployer_url: Option<String>,
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    data_dir: Option<PathBuf>,
    /// Where spans and logs are kept (default: a SQLite file in --data-dir).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    database_url: Option<String>,
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    retention_ms: Option<u64>,
    #[command(flatten)]
    #[serde(skip_serializing_if = "TlsArgs::is_unset")]
    tls: TlsArgs,
    #[arg(long, value_enum, default_value = "json")]
    #[serde(skip)]
    log_format: LogFormatArg,
}

#[derive(Args, Serialize)]
struct DeployerArgs {
    /// TOML file; the [deployer] table (addresses, database).
    #[arg(long, env = "SHOPFAST_CONFIG")]
    #[serde(skip)]
    config: Option<PathBuf>,
    /// Its API: POST/GET /v1/rollouts, POST /v1/services/{service}/rollback.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    addr: Option<SocketAddr>,
    #[arg(long, env = "SHOPFAST_REGISTRY_URL")]
    #[serde(skip_serializing_if = "Option::is_none")]
    registry_url: Option<String>,
    /// The gateway the smoke suite goes through (with an admin key, in
    /// SHOPFAST_DEPLOYER__API_KEY).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    gateway_url: Option<String>,
    /// The supervisor that starts and stops instances (`shopfast up`'s
    /// control API); without one, deploys wait for instances others start.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    supervisor_url: Option<String>,
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    data_dir: Option<PathBuf>,
    /// Where rollouts are kept (default: a SQLite file in --data-dir).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    database_url: Option<String>,
    #[command(flatten)]
    #[serde(skip_serializing_if = "TlsArgs::is_unset")]
    tls: TlsArgs,
    #[arg(long, value_enum, default_value = "json")]
    #[serde(skip)]
    log_format: LogFormatArg,
}

fn main() -> anyhow::Result<()> {
    kit_core::build::set_version(env!("SHOPFAST_BUILD_VERSION"));
    let cli = Cli::parse();
    // One thread runs the gateway the way one nginx worker runs: no wake-ups
    // across threads on the request path. More threads, more cores.
    let threads = match &cli.command {
        Command::Gateway(args) => args.threads,
        _ => 0,
    };
    let runtime = match threads {
        1 => tokio::runtime::Builder::new_current_thread().enable_all().build()?,
        0 => tokio::runtime::Builder::new_multi_thread().enable_all().build()?,
        n => tokio::runtime::Builder::new_multi_thread().worker_threads(n).enable_all().build()?,
    };
    runtime.block_on(run(cli))
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let outcome = run_command(cli).await;
    // Spans still buffered for the OTLP exporter go out before the exit.
    kit_telemetry::otel::flush().await;
    outcome
}

async fn run_command(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Up(args) => up::run(args).await,
        Command::Status(args) => status::run(args).await,
        Command::Healthcheck(args) => healthcheck(args).await,
        Command::Secrets(args) => {
            up::make_secrets(&args.data_dir)?;
            println!("secrets in {}", args.data_dir.join("secrets").display());
            Ok(())
        }
        Command::Certs(args) => {
            for identity in &args.identities {
                let valid = !identity.is_empty()
                    && identity.len() <= 63
                    && identity.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
                anyhow::ensure!(valid, "identity {identity:?}: use 1-63 lower-case letters, digits and dashes");
            }
            let identities: Vec<&str> = if args.identities.is_empty() {
                IDENTITIES.to_vec()
            } else {
                args.identities.iter().map(String::as_str).collect()
            };
            kit_tls::ensure_dev_certs(&args.dir, &identities)?;
            println!("certificates for {} in {}", identities.join(", "), args.dir.display());
            Ok(())
        }
        // The platform's own processes: logs, config, start, run until a signal.
        Command::Registry(args) => {
            let config = platform_config(registry::SERVICE, args.config.as_deref(), args.log_format, &args);
            launch(registry::SERVICE, config, registry::start).await?.wait().await;
            Ok(())
        }
        Command::Gateway(mut args) => {
            args.metadata = args.meta.iter().cloned().collect();
            let config = platform_config(gateway::SERVICE, args.config.as_deref(), args.log_format, &args);
            launch(gateway::SERVICE, config, gateway::start).await?.wait().await;
            Ok(())
        }
        Command::Loadgen(args) => {
            let config = platform_config(loadgen::SERVICE, args.config.as_deref(), args.log_format, &args);
            launch(loadgen::SERVICE, config, loadgen::start).await?.wait().await;
            Ok(())
        }
        Command::Console(args) => {
            let config = platform_config(console::SERVICE, args.config.as_deref(), args.log_format, &args);
            launch(console::SERVICE, config, console::start).await?.wait().await;
            Ok(())
        }
        Command::Deployer(args) => {
            let config = platform_config(deployer::SERVICE, args.config.as_deref(), args.log_format, &args);
            launch(deployer::SERVICE, config, deployer::start).await?.wait().await;
            Ok(())
        }
        // The services: the same flags each (`ServiceArgs`), served until a signal.
        Command::Users(args) => serve(launch(users::SERVICE, args.load(users::SERVICE), users::start).await?).await,
        Command::Products(args) => {
            serve(launch(products::SERVICE, args.load(products::SERVICE), products::start).await?).await
        }
        Command::Orders(args) => serve(launch(orders::SERVICE, args.load(orders::SERVICE), orders::start).await?).await,
        Command::Payments(args) => {
            serve(launch(payments::SERVICE, args.load(payments::SERVICE), payments::start).await?).await
        }
        Command::Queue(args) => {
            serve(launch(queue::SERVICE, args.load(queue::SERVICE), queue::service::start).await?).await
        }
        Command::Fulfilment(args) => {
            serve(launch(fulfilment::SERVICE, args.load(fulfilment::SERVICE), fulfilment::start).await?).await
        }
        Command::Deploy(args) => deploy::deploy(args).await,
        Command::Rollout(args) => deploy::rollout(args).await,
        Command::Rollback(args) => deploy::rollback(args).await,
    }
}

/// Loads a platform process's config (file, environment, these flags) with its logs set up.
fn platform_config<A: Serialize, C: Default + Serialize + for<'de> serde::Deserialize<'de>>(
    name: &str,
    file: Option<&std::path::Path>,
    log_format: LogFormatArg,
    flags: &A,
) -> anyhow::Result<C> {
    kit_telemetry::telemetry::init_logging(name, "info", log_format.into());
    Ok(kit::config::load(name, file, flags)?)
}

/// Starts one long-running process with `config`, watching the process's
/// shutdown signals.
async fn launch<C, T, E, Started>(
    name: &str,
    config: anyhow::Result<C>,
    start: impl FnOnce(C, kit::shutdown::CancellationToken) -> Started,
) -> anyhow::Result<T>
where
    Started: std::future::Future<Output = Result<T, E>>,
    E: std::error::Error + Send + Sync + 'static,
{
    let config = config?;
    start(config, kit::shutdown::on_signals()).await.with_context(|| format!("{name} failed to start"))
}

async fn serve(service: RunningService) -> anyhow::Result<()> {
    let name = service.name;
    service.wait().await.with_context(|| format!("{name} stopped with an error"))
}
