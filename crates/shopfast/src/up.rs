//! `shopfast up`: the registry and every service as child processes of this
//! executable. Waits until each instance is registered and ready, prints a
//! table, writes each child's JSON log to `<data-dir>/logs/<name>.log` and a
//! merged, coloured view to the terminal, and on Ctrl-C stops the services and
//! then the registry, each with SIGTERM (SIGKILL after a grace).
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Args;
use tokio::sync::mpsc;

use kit_client::discovery::RegistryClient;

use crate::supervisor::{ChildSpec, Proc, Supervisor, spawn, spawn_listening};

/// Services in start order, with their default gRPC and admin ports.
const SERVICES: &[(&str, u16, u16)] = &[
    ("users", 9001, 9101),
    ("products", 9002, 9102),
    ("payments", 9004, 9104),
    // The embedded broker, unless --redis-url names Redis.
    ("queue", 9006, 9106),
    ("orders", 9003, 9103),
    ("fulfilment", 9005, 9105),
];
const REGISTRY_PORT: u16 = 8080;
const GATEWAY_PORT: u16 = 8000;
const LOADGEN_PORT: u16 = 8089;
const CONSOLE_PORT: u16 = 8090;
const DEPLOYER_PORT: u16 = 8070;
const CONTROL_PORT: u16 = 8071;

#[derive(Args)]
pub struct UpArgs {
    /// Where SQLite files and logs go.
    #[arg(long, default_value = "data")]
    data_dir: PathBuf,
    /// Pick free ports for everything instead of the defaults (8080, 9001…).
    #[arg(long)]
    ephemeral: bool,
    /// Instances per service, e.g. --replicas products=3 (default 1 each).
    #[arg(long, value_delimiter = ',', value_parser = crate::parse_key_value)]
    replicas: Vec<(String, String)>,
    /// Only write logs to files, not to the terminal.
    #[arg(long)]
    quiet: bool,
    /// How long to wait for everything to be ready.
    #[arg(long, default_value_t = 60)]
    ready_timeout_secs: u64,
    /// Let every service take fault-injection rules (PUT /admin/faults on its admin port).
    #[arg(long)]
    enable_fault_injection: bool,
    /// Do not start the traffic generator (by default it runs in steady mode).
    #[arg(long)]
    no_loadgen: bool,
    /// Do not start the console (traces, logs, health, dependency map).
    #[arg(long)]
    no_console: bool,
    /// Redis for the queue between Orders and the fulfilment worker (Redis
    /// Streams) and for the read caches of Products and Orders, e.g.
    /// redis://127.0.0.1:6379/0. Unset: the embedded queue (`shopfast queue`)
    /// runs instead, and the caches are in process.
    #[arg(long, env = "SHOPFAST_REDIS_URL", hide_env_values = true)]
    redis_url: Option<String>,
}

/// What `up` started so far, stopped in the reverse of its start order: the
/// traffic and the deploy controller first, then the services, then the
/// console and the registry. A start that fails half way stops what it started.
#[derive(Default)]
struct Stack {
    infrastructure: Vec<Proc>,
    services: Vec<Proc>,
    fleet: Option<Arc<tokio::sync::Mutex<crate::control::Fleet>>>,
    loadgen: Option<Proc>,
    deployer: Option<Proc>,
}

impl Stack {
    async fn stop(mut self) {
        if let Some(proc) = self.loadgen.take() {
            proc.stop().await;
        }
        if let Some(proc) = self.deployer.take() {
            proc.stop().await;
        }
        if let Some(fleet) = &self.fleet {
            self.services.extend(fleet.lock().await.take_all());
        }
        stop_all(self.services, self.infrastructure).await;
    }
}

/// Where the stack answers, once it is up.
struct Started {
    list: registry_wire::wire::InstanceList,
    registry_url: String,
    gateway_url: String,
    console_url: Option<String>,
    loadgen_url: Option<String>,
    deployer_url: String,
}

pub async fn run(args: UpArgs) -> anyhow::Result<()> {
    let replicas = replica_counts(&args.replicas, args.redis_url.is_some())?;
    if let Some(url) = &args.redis_url
        && !(url.starts_with("redis://") || url.starts_with("rediss://"))
    {
        bail!("--redis-url must be a redis:// or rediss:// URL");
    }
    let logs_dir = args.data_dir.join("logs");
    std::fs::create_dir_all(&logs_dir).with_context(|| format!("cannot create {}", logs_dir.display()))?;
    let exe = std::env::current_exe().context("cannot find the shopfast executable")?;
    let shutdown = kit::shutdown::on_signals();
    let (exited_tx, mut exited_rx) = mpsc::unbounded_channel::<String>();
    let mut secrets = Secrets::for_data_dir(&args.data_dir)?;
    secrets.redis_url = args.redis_url.clone();
    let supervisor = Supervisor::new(exe, logs_dir.clone(), args.quiet, exited_tx);
    let mut stack = Stack::default();
    let ready = Ready { replicas: &replicas, shutdown: &shutdown, logs_dir: &logs_dir };
    let started = match start(&args, &supervisor, &secrets, ready, &mut exited_rx, &mut stack).await {
        Ok(started) => started,
        Err(err) => {
            stack.stop().await;
            return Err(err);
        }
    };
    // From here on a child that dies is restarted.
    supervisor.restart_from_now();
    let urls = Urls {
        registry: &started.registry_url,
        gateway: &started.gateway_url,
        console: started.console_url.as_deref(),
        loadgen: started.loadgen_url.as_deref(),
        deployer: &started.deployer_url,
    };
    print_banner(&started.list, &secrets, urls, &logs_dir);

    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            Some(which) = exited_rx.recv() => {
                eprintln!("shopfast up: {which} exited; the others keep running (Ctrl-C stops all)");
            }
        }
    }
    eprintln!("shopfast up: stopping services, then the console and the registry");
    stack.stop().await;
    Ok(())
}

/// What waiting for readiness needs.
#[derive(Clone, Copy)]
struct Ready<'a> {
    replicas: &'a BTreeMap<String, usize>,
    shutdown: &'a kit::shutdown::CancellationToken,
    logs_dir: &'a Path,
}

/// Starts the stack in order — registry and console, the services, the
/// traffic generator once the gateway is ready, the control API and the
/// deploy controller — recording each process in `stack` as it starts.
async fn start(
    args: &UpArgs,
    supervisor: &Supervisor,
    secrets: &Secrets,
    ready: Ready<'_>,
    exited: &mut mpsc::UnboundedReceiver<String>,
    stack: &mut Stack,
) -> anyhow::Result<Started> {
    // Mutual TLS between every process, with nothing to configure: a
    // development CA and a certificate per identity, made once.
    let tls_dir = args.data_dir.join("tls");
    kit_tls::ensure_dev_certs(&tls_dir, crate::IDENTITIES)?;
    let operator = kit_tls::Tls::from_config(&kit_tls::TlsConfig::in_dir(&tls_dir), kit_tls::OPERATOR)?;
    let data_dir = args.data_dir.display().to_string();
    // The traffic generator's address is settled first: the console is told
    // it at start and relays to it alone.
    let loadgen_addr = match (args.no_loadgen, args.ephemeral) {
        (true, _) => None,
        (false, false) => Some(format!("127.0.0.1:{LOADGEN_PORT}")),
        (false, true) => Some(free_loopback_addr()?),
    };
    // So is the deploy controller's: the console shows its rollouts.
    let deployer_addr = if args.ephemeral { free_loopback_addr()? } else { format!("127.0.0.1:{DEPLOYER_PORT}") };
    let tls_flag = vec!["--tls-dir".to_string(), tls_dir.display().to_string()];
    let peers = Peers { loadgen: loadgen_addr.as_deref(), deployer: &deployer_addr };
    let (infrastructure, registry_url, console_url) =
        start_infrastructure(supervisor, args, &data_dir, &tls_flag, peers).await?;
    stack.infrastructure = infrastructure;
    let telemetry = telemetry_env(console_url.as_deref());
    let launch = Launch { data_dir: &data_dir, registry_url: &registry_url, tls_flag: &tls_flag };
    let (members, gateway) = start_services(supervisor, args, ready.replicas, &launch, secrets, &telemetry)?;
    let fleet = Arc::new(tokio::sync::Mutex::new(crate::control::Fleet::new(members)));
    stack.fleet = Some(fleet.clone());
    stack.services.push(gateway);
    let registry = RegistryClient::with_tls(&registry_url, operator.clone());
    let list = wait_until_ready(args, ready.replicas, &registry, ready.shutdown, exited, ready.logs_dir).await?;
    let gateway_url = list
        .instances
        .iter()
        .find(|i| i.name == "gateway")
        .map(|i| format!("http://{}", i.address))
        .unwrap_or_default();
    let mut loadgen_url = None;
    if let Some(addr) = &loadgen_addr {
        let env: Vec<(String, String)> = secrets.loadgen_env().into_iter().chain(telemetry.iter().cloned()).collect();
        let (proc, url) = start_loadgen(supervisor, &gateway_url, &env, addr, args.ready_timeout_secs).await?;
        stack.loadgen = Some(proc);
        loadgen_url = Some(url);
    }
    // The control API (starting and stopping instances), then the deploy
    // controller that uses it.
    // The smoke suite asks for versions by name: only admin keys may.
    let deployer_env: Vec<(String, String)> = [("SHOPFAST_DEPLOYER__API_KEY".to_string(), secrets.api_key.clone())]
        .into_iter()
        .chain(telemetry.iter().cloned())
        .collect();
    let deployer_spec = DeployerSpec { gateway_url: &gateway_url, addr: &deployer_addr, env: &deployer_env };
    let control = crate::control::ControlState {
        launcher: Arc::new(launcher(supervisor, args, &launch, secrets, &telemetry)),
        fleet,
    };
    let (deployer, deployer_url) =
        start_deployer(args, &launch, control, operator, deployer_spec, ready.shutdown).await?;
    stack.deployer = Some(deployer);
    Ok(Started { list, registry_url, gateway_url, console_url, loadgen_url, deployer_url })
}

/// The registry, then the console (so the services' first spans have
/// somewhere to go): their processes (console first, stopped first), the
/// registry's URL and the console's.
async fn start_infrastructure(
    supervisor: &Supervisor,
    args: &UpArgs,
    data_dir: &str,
    tls_flag: &[String],
    peers: Peers<'_>,
) -> anyhow::Result<(Vec<Proc>, String, Option<String>)> {
    let registry_port = if args.ephemeral { 0 } else { REGISTRY_PORT };
    let mut flags = vec!["--addr".to_string(), format!("127.0.0.1:{registry_port}")];
    // Traffic policies outlive a restart of the registry (instances
    // register again by themselves).
    flags.extend(["--policy-file".to_string(), format!("{data_dir}/registry-policies.json")]);
    flags.extend(tls_flag.iter().cloned());
    let registry = ChildSpec { command: "registry", label: "registry", flags, colour: 0, env: &[] };
    let (registry, registry_addr) =
        spawn_listening(supervisor, registry, "the registry", args.ready_timeout_secs).await?;
    let registry_url = format!("https://{registry_addr}");
    if args.no_console {
        return Ok((vec![registry], registry_url, None));
    }
    let console =
        start_console(supervisor, &registry_url, data_dir, tls_flag, peers, args.ephemeral, args.ready_timeout_secs);
    match console.await {
        Ok((console, url)) => Ok((vec![console, registry], registry_url, Some(url))),
        Err(err) => {
            stop_all(Vec::new(), vec![registry]).await;
            Err(err)
        }
    }
}

/// Where the children started after the console will listen (it is told at start).
#[derive(Clone, Copy)]
struct Peers<'a> {
    loadgen: Option<&'a str>,
    deployer: &'a str,
}

/// Every service's instances, then the gateway; each gets only the secrets it uses.
/// Where every child finds its data, the registry and its certificates.
struct Launch<'a> {
    data_dir: &'a str,
    registry_url: &'a str,
    tls_flag: &'a [String],
}

/// The flags of every instance of a service, on the given ports (0 = any).
fn instance_flags(args: &UpArgs, launch: &Launch<'_>, grpc: u16, admin: u16) -> Vec<String> {
    let mut flags: Vec<String> = vec![
        "--grpc-addr".into(),
        format!("127.0.0.1:{grpc}"),
        "--admin-addr".into(),
        format!("127.0.0.1:{admin}"),
        "--data-dir".into(),
        launch.data_dir.to_string(),
        "--registry-url".into(),
        launch.registry_url.to_string(),
    ];
    flags.extend(launch.tls_flag.iter().cloned());
    if args.enable_fault_injection {
        flags.push("--enable-fault-injection".into());
    }
    flags
}

/// A service's environment: only its own secrets, and the telemetry settings.
fn service_env(secrets: &Secrets, service: &str, telemetry: &[(String, String)]) -> Vec<(String, String)> {
    secrets.env_of(service).into_iter().chain(telemetry.iter().cloned()).collect()
}

fn start_services(
    supervisor: &Supervisor,
    args: &UpArgs,
    replicas: &BTreeMap<String, usize>,
    launch: &Launch<'_>,
    secrets: &Secrets,
    telemetry: &[(String, String)],
) -> anyhow::Result<(Vec<crate::control::Member>, Proc)> {
    let Launch { data_dir, registry_url, tls_flag } = *launch;
    let version = kit_core::build::version();
    let mut members = Vec::new();
    for (index, (name, grpc_port, admin_port)) in SERVICES.iter().enumerate() {
        let env = service_env(secrets, name, telemetry);
        let count = replicas.get(*name).copied().unwrap_or(1);
        for replica in 1..=count {
            // Only the first replica can have the fixed ports.
            let (grpc, admin) = if args.ephemeral || replica > 1 { (0, 0) } else { (*grpc_port, *admin_port) };
            let mut flags = instance_flags(args, launch, grpc, admin);
            flags.extend(["--meta".to_string(), format!("replica={replica}")]);
            let label = format!("{name}-{replica}");
            let spec = ChildSpec { command: name, label: &label, flags, colour: index + 1, env: &env };
            let proc = spawn(supervisor, spec)?;
            members.push(crate::control::Member {
                service: name.to_string(),
                version: version.to_string(),
                track: registry_wire::wire::DEFAULT_TRACK.to_string(),
                label,
                proc,
            });
        }
    }
    let gateway_port = if args.ephemeral { 0 } else { GATEWAY_PORT };
    let mut flags = vec![
        "--addr".into(),
        format!("127.0.0.1:{gateway_port}"),
        "--registry-url".into(),
        registry_url.to_string(),
        "--data-dir".into(),
        data_dir.to_string(),
    ];
    flags.extend(tls_flag.iter().cloned());
    let env = service_env(secrets, "gateway", telemetry);
    let spec = ChildSpec { command: "gateway", label: "gateway-1", flags, colour: SERVICES.len() + 1, env: &env };
    let gateway = spawn(supervisor, spec)?;
    Ok((members, gateway))
}

/// What the control API needs to start more instances of any service.
fn launcher(
    supervisor: &Supervisor,
    args: &UpArgs,
    launch: &Launch<'_>,
    secrets: &Secrets,
    telemetry: &[(String, String)],
) -> crate::control::Launcher {
    crate::control::Launcher {
        supervisor: supervisor.clone(),
        common_flags: instance_flags(args, launch, 0, 0),
        env: SERVICES.iter().map(|(name, ..)| (name.to_string(), service_env(secrets, name, telemetry))).collect(),
        colour: SERVICES.iter().enumerate().map(|(index, (name, ..))| (name.to_string(), index + 1)).collect(),
    }
}

/// Where the deploy controller listens, the gateway its smoke suite uses, its environment.
struct DeployerSpec<'a> {
    gateway_url: &'a str,
    addr: &'a str,
    env: &'a [(String, String)],
}

/// The control API (HTTPS, client certificates required) and the deploy
/// controller pointed at it: its process and URL once ready.
async fn start_deployer(
    args: &UpArgs,
    launch: &Launch<'_>,
    control: crate::control::ControlState,
    operator: Option<Arc<kit_tls::Tls>>,
    deployer: DeployerSpec<'_>,
    shutdown: &kit::shutdown::CancellationToken,
) -> anyhow::Result<(Proc, String)> {
    let DeployerSpec { gateway_url, addr: deployer_addr, env } = deployer;
    let operator = operator.context("up runs everything over mutual TLS")?;
    let control_port = if args.ephemeral { 0 } else { CONTROL_PORT };
    let supervisor = control.launcher.supervisor.clone();
    let (control_addr, _server) = kit::server::serve_http_with_peers(
        std::net::SocketAddr::from(([127, 0, 0, 1], control_port)),
        crate::control::router(control),
        shutdown.child_token(),
        "up control API",
        Some((operator.clone(), kit_tls::ClientAuth::Required)),
    )
    .await
    .with_context(|| format!("cannot listen for the control API on port {control_port}"))?;
    operator.spawn_reload(shutdown.child_token());
    let mut flags = vec![
        "--addr".to_string(),
        deployer_addr.to_string(),
        "--registry-url".into(),
        launch.registry_url.to_string(),
        "--gateway-url".into(),
        gateway_url.to_string(),
        "--supervisor-url".into(),
        format!("https://{control_addr}"),
        "--data-dir".into(),
        launch.data_dir.to_string(),
    ];
    flags.extend(launch.tls_flag.iter().cloned());
    let spec = ChildSpec { command: "deployer", label: "deployer", flags, colour: SERVICES.len() + 4, env };
    let (deployer, addr) = spawn_listening(&supervisor, spec, "the deploy controller", args.ready_timeout_secs).await?;
    Ok((deployer, format!("https://{addr}")))
}

/// Waits until every instance is registered and routable; a child that
/// exits meanwhile fails the start (its log says why).
async fn wait_until_ready(
    args: &UpArgs,
    replicas: &BTreeMap<String, usize>,
    client: &RegistryClient,
    shutdown: &kit::shutdown::CancellationToken,
    exited: &mut mpsc::UnboundedReceiver<String>,
    logs_dir: &Path,
) -> anyhow::Result<registry_wire::wire::InstanceList> {
    let mut expected: BTreeMap<&str, usize> =
        SERVICES.iter().map(|(name, ..)| (*name, replicas.get(*name).copied().unwrap_or(1))).collect();
    expected.insert("gateway", 1);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(args.ready_timeout_secs);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => bail!("interrupted while starting"),
            Some(which) = exited.recv() => bail!("{which} exited while starting; see the logs in {}", logs_dir.display()),
            _ = tokio::time::sleep(Duration::from_millis(100)) => {}
        }
        if let Ok(list) = client.all_instances().await {
            let all_up = expected.iter().all(|(name, want)| {
                list.instances.iter().filter(|i| i.name == *name && i.health.routable()).count() >= *want
            });
            if all_up {
                return Ok(list);
            }
        }
        if tokio::time::Instant::now() > deadline {
            bail!("not every service was ready within {} s", args.ready_timeout_secs);
        }
    }
}

/// A loopback address free right now (for a child started a little later).
/// A free loopback address for a process started later (its peers are told
/// it first). Picked at random below the kernel's ephemeral range
/// (`ip_local_port_range`): a port there is never handed to a process that
/// binds port 0 meanwhile — another stack, another test — so the one race
/// left is two stacks picking alike, which checking it free now makes rare.
fn free_loopback_addr() -> anyhow::Result<String> {
    const LOWEST: u16 = 20_000;
    let ephemeral_from = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|range| range.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32_768);
    if ephemeral_from > LOWEST + 1_000 {
        for _ in 0..64 {
            let port = rand::random_range(LOWEST..ephemeral_from);
            if let Ok(listener) = std::net::TcpListener::bind(("127.0.0.1", port)) {
                return Ok(listener.local_addr()?.to_string());
            }
        }
    }
    let listener = std::net::TcpListener::bind("127.0.0.1:0").context("cannot find a free port")?;
    Ok(listener.local_addr()?.to_string())
}

/// Where a user reaches each part of the running stack.
struct Urls<'a> {
    registry: &'a str,
    gateway: &'a str,
    console: Option<&'a str>,
    loadgen: Option<&'a str>,
    deployer: &'a str,
}

fn print_banner(list: &registry_wire::wire::InstanceList, secrets: &Secrets, urls: Urls<'_>, logs_dir: &Path) {
    let Urls {
        registry: registry_url,
        gateway: gateway_url,
        console: console_url,
        loadgen: loadgen_url,
        deployer: deployer_url,
    } = urls;
    let log_of = |i: &registry_wire::wire::InstanceInfo| {
        let replica = i.metadata.get("replica").cloned().unwrap_or_else(|| "1".into());
        logs_dir.join(format!("{}-{replica}.log", i.name)).display().to_string()
    };
    println!("\nshopfast is up. Registry: {registry_url}");
    println!("Gateway: {gateway_url}   API key (professional tier, admin): {}", secrets.api_key);
    println!("Try: curl -H 'X-API-Key: {}' '{gateway_url}/v1/products?category=books&pageSize=3'\n", secrets.api_key);
    if let Some(url) = console_url {
        println!("Console: {url}   traces, logs, health, dependency map (OTLP in at {url}/v1/traces)");
    }
    if let Some(url) = loadgen_url {
        println!("Loadgen: {url}   steady; POST {url}/mode/{{steady|burst|overload|flood|pause}}");
    }
    let tls_dir = logs_dir.parent().unwrap_or(logs_dir).join("tls");
    println!(
        "Deployer: {deployer_url}   shopfast deploy SERVICE --version V --deployer-url {deployer_url} --tls-dir {}",
        tls_dir.display()
    );
    print!("{}", crate::status::table(&list.instances, log_of));
    println!(
        "\nLogs: {}   Status: shopfast status --registry-url {registry_url} --tls-dir {}   Stop: Ctrl-C\n",
        logs_dir.display(),
        tls_dir.display()
    );
}

/// Where the children send spans and logs: the console, unless an OTLP
/// endpoint is configured already (the children inherit it then). The batch
/// exporters send every second instead of every 5 s, so the console is live.
fn telemetry_env(console_url: Option<&str>) -> Vec<(String, String)> {
    let set = |name: &str| std::env::var(name).is_ok_and(|v| !v.trim().is_empty());
    let mut env = Vec::new();
    if let Some(url) = console_url
        && !set("OTEL_EXPORTER_OTLP_ENDPOINT")
        && !set("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
    {
        env.push(("OTEL_EXPORTER_OTLP_ENDPOINT".to_string(), url.to_string()));
    }
    for delay in ["OTEL_BSP_SCHEDULE_DELAY", "OTEL_BLRP_SCHEDULE_DELAY"] {
        if !set(delay) {
            env.push((delay.to_string(), "1000".to_string()));
        }
    }
    env
}

/// The console, scraping the registry's instances; its process and URL once ready.
async fn start_console(
    supervisor: &Supervisor,
    registry_url: &str,
    data_dir: &str,
    tls_flag: &[String],
    peers: Peers<'_>,
    ephemeral: bool,
    ready_timeout_secs: u64,
) -> anyhow::Result<(Proc, String)> {
    let port = if ephemeral { 0 } else { CONSOLE_PORT };
    let mut flags = vec![
        "--addr".into(),
        format!("127.0.0.1:{port}"),
        "--registry-url".into(),
        registry_url.to_string(),
        "--data-dir".into(),
        data_dir.to_string(),
    ];
    if let Some(addr) = peers.loadgen {
        flags.extend(["--loadgen-url".to_string(), format!("http://{addr}")]);
    }
    flags.extend(["--deployer-url".to_string(), format!("https://{}", peers.deployer)]);
    flags.extend(tls_flag.iter().cloned());
    let spec = ChildSpec { command: "console", label: "console", flags, colour: SERVICES.len() + 3, env: &[] };
    let (console, addr) = spawn_listening(supervisor, spec, "the console", ready_timeout_secs).await?;
    Ok((console, format!("http://{addr}")))
}

/// The traffic generator against the gateway, with its own API key; its
/// process and control URL once it is ready.
async fn start_loadgen(
    supervisor: &Supervisor,
    gateway_url: &str,
    env: &[(String, String)],
    addr: &str,
    ready_timeout_secs: u64,
) -> anyhow::Result<(Proc, String)> {
    let spec = ChildSpec {
        command: "loadgen",
        label: "loadgen-1",
        flags: vec!["--addr".into(), addr.to_string(), "--gateway-url".into(), gateway_url.to_string()],
        colour: SERVICES.len() + 2,
        env,
    };
    let (loadgen, addr) = spawn_listening(supervisor, spec, "the traffic generator", ready_timeout_secs).await?;
    Ok((loadgen, format!("http://{addr}")))
}

/// The stack's secrets, made once per data directory (kept in
/// `<data-dir>/secrets/`, readable by the owner only) so a restart of `up`
/// keeps users' tokens valid and stored cards readable: the token secret
/// Users signs with and the gateway checks, the key Payments seals cards
/// with, and the API keys. Each child gets only the ones it uses, in its
/// environment (never on its command line, where `ps` shows it).
struct Secrets {
    api_key: String,
    loadgen_key: String,
    token_secret: String,
    card_key: String,
    /// The gateway's API keys, as its `api_keys_file` (owner-only).
    api_keys_file: PathBuf,
    /// The queue's broker, when it is Redis (a URL may hold a password).
    redis_url: Option<String>,
}

impl Secrets {
    fn for_data_dir(data_dir: &Path) -> anyhow::Result<Self> {
        use base64::Engine;
        let dir = data_dir.join("secrets");
        std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let random = |n: usize| -> Vec<u8> { (0..n).map(|_| rand::random::<u8>()).collect() };
        let hex = |bytes: Vec<u8>| -> String { bytes.iter().map(|b| format!("{b:02x}")).collect() };
        let base64 = |bytes: Vec<u8>| base64::engine::general_purpose::STANDARD.encode(bytes);
        let api_key = kept_secret(&dir, "api_key", || format!("sf{}", hex(random(16))))?;
        let loadgen_key = kept_secret(&dir, "loadgen_key", || format!("sf{}", hex(random(16))))?;
        let keys = serde_json::json!({
            api_key.as_str(): { "client": "shopfast-up", "tier": "professional", "admin": true },
            loadgen_key.as_str(): { "client": "loadgen", "tier": "loadgen", "admin": false },
        });
        let api_keys_file = dir.join("gateway-api-keys.json");
        kit_tls::write_owner_only(&api_keys_file, &keys.to_string())
            .with_context(|| format!("cannot write {}", api_keys_file.display()))?;
        Ok(Self {
            token_secret: kept_secret(&dir, "token_secret", || hex(random(32)))?,
            card_key: kept_secret(&dir, "card_key", || base64(random(32)))?,
            api_key,
            loadgen_key,
            api_keys_file,
            redis_url: None,
        })
    }

    /// The environment of one service's processes: only its own secrets.
    fn env_of(&self, service: &str) -> Vec<(String, String)> {
        let var = |name: &str, value: &str| (name.to_string(), value.to_string());
        match service {
            "users" => vec![var("SHOPFAST_USERS__TOKEN_SECRET", &self.token_secret)],
            "payments" => vec![var("SHOPFAST_PAYMENTS__CARD_KEY", &self.card_key)],
            // Redis, when given: the queue's broker and the read caches.
            "products" => self.redis_for(service, &["CACHE"]),
            "orders" => self.redis_for(service, &["CACHE", "QUEUE"]),
            "fulfilment" => self.redis_for(service, &["QUEUE"]),
            "gateway" => {
                // The generator's own tier: its overload mode is meant to
                // overload the services, not to measure the rate limiter.
                let tier_var = |field: &str| format!("SHOPFAST_GATEWAY__TIERS__LOADGEN__{field}");
                vec![
                    var("SHOPFAST_GATEWAY__TOKEN_SECRET", &self.token_secret),
                    // The keys themselves in a file: an environment variable's
                    // name would show them to anything listing it.
                    var("SHOPFAST_GATEWAY__API_KEYS_FILE", &self.api_keys_file.display().to_string()),
                    (tier_var("PER_MINUTE"), "600000".to_string()),
                    (tier_var("BURST"), "20000".to_string()),
                    (tier_var("MONTHLY_QUOTA"), "0".to_string()),
                ]
            }
            _ => Vec::new(),
        }
    }

    /// `SHOPFAST_<SERVICE>__<SECTION>__REDIS_URL` for each section, when there is a Redis.
    fn redis_for(&self, service: &str, sections: &[&str]) -> Vec<(String, String)> {
        let Some(url) = &self.redis_url else { return Vec::new() };
        let service = service.to_uppercase();
        sections.iter().map(|section| (format!("SHOPFAST_{service}__{section}__REDIS_URL"), url.clone())).collect()
    }

    fn loadgen_env(&self) -> Vec<(String, String)> {
        vec![("SHOPFAST_LOADGEN_API_KEY".to_string(), self.loadgen_key.clone())]
    }
}

/// The stack's secrets in `<data_dir>/secrets` (made if missing), for a
/// stack `up` does not run (compose, Kubernetes).
pub fn make_secrets(data_dir: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(data_dir).with_context(|| format!("cannot create {}", data_dir.display()))?;
    Secrets::for_data_dir(data_dir).map(|_| ())
}

/// The secret in `dir/name`, made by `make` (and written, owner-only) the first time.
fn kept_secret(dir: &Path, name: &str, make: impl FnOnce() -> String) -> anyhow::Result<String> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let path = dir.join(name);
    match std::fs::read_to_string(&path) {
        Ok(kept) if !kept.trim().is_empty() => return Ok(kept.trim().to_string()),
        Ok(_) => bail!("{} is empty; delete it to make a new secret", path.display()),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
        Err(err) => return Err(err).with_context(|| format!("cannot read {}", path.display())),
    }
    let secret = make();
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    file.write_all(secret.as_bytes())?;
    Ok(secret)
}

fn replica_counts(pairs: &[(String, String)], redis: bool) -> anyhow::Result<BTreeMap<String, usize>> {
    let mut counts = BTreeMap::new();
    // Redis is the queue, or one embedded queue is (its streams live in one process).
    counts.insert("queue".to_string(), usize::from(!redis));
    for (name, count) in pairs {
        if !SERVICES.iter().any(|(s, ..)| s == name) {
            bail!("unknown service {name:?} in --replicas");
        }
        let n: usize = count
            .parse()
            .ok()
            .filter(|n| (1..=16).contains(n))
            .with_context(|| format!("--replicas {name}={count}: the count must be 1 to 16"))?;
        if name == "queue" && n > 1 {
            bail!("--replicas queue={n}: the embedded queue is one process (give --redis-url for a shared broker)");
        }
        if name != "queue" || !redis {
            counts.insert(name.clone(), n);
        }
    }
    Ok(counts)
}

/// Stops the services together, then `infrastructure` one by one in order.
async fn stop_all(services: Vec<Proc>, infrastructure: Vec<Proc>) {
    futures::future::join_all(services.into_iter().map(Proc::stop)).await;
    for proc in infrastructure {
        proc.stop().await;
    }
}
