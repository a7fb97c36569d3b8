//! `shopfast up`: the registry and every service as child processes of this
//! executable. Waits until each instance is registered and ready, prints a
//! table, writes each child's JSON log to `<data-dir>/logs/<name>.log` and a
//! merged, coloured view to the terminal, and on Ctrl-C stops the services and
//! then the registry, each with SIGTERM (SIGKILL after a grace).
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Args;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::mpsc;

use kit::discovery::RegistryClient;

/// Services in start order, with their default gRPC and admin ports.
const SERVICES: &[(&str, u16, u16)] =
    &[("users", 9001, 9101), ("products", 9002, 9102), ("payments", 9004, 9104), ("orders", 9003, 9103)];
const REGISTRY_PORT: u16 = 8080;
const GATEWAY_PORT: u16 = 8000;
const LOADGEN_PORT: u16 = 8089;
const CONSOLE_PORT: u16 = 8090;
const STOP_GRACE: Duration = Duration::from_secs(15);
const COLOURS: &[&str] = &["\x1b[36m", "\x1b[33m", "\x1b[35m", "\x1b[32m", "\x1b[34m", "\x1b[31m"];

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
}

/// A child process, owned by a supervising task that reports when it exits on
/// its own and stops it (SIGTERM, then SIGKILL after a grace) when asked.
struct Proc {
    log: PathBuf,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    done: tokio::task::JoinHandle<()>,
}

impl Proc {
    fn supervise(label: &str, log: PathBuf, mut child: Child, exited: mpsc::UnboundedSender<String>) -> Self {
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let name = label.to_string();
        let done = tokio::spawn(async move {
            tokio::select! {
                status = child.wait() => {
                    let status = status.map(|s| s.to_string()).unwrap_or_else(|e| e.to_string());
                    let _ = exited.send(format!("{name} ({status})"));
                }
                _ = stop_rx => {
                    if let Some(pid) = child.id() {
                        let _ = kill(Pid::from_raw(pid as i32), Signal::SIGTERM);
                    }
                    match tokio::time::timeout(STOP_GRACE, child.wait()).await {
                        Ok(Ok(status)) => eprintln!("shopfast up: {name} stopped ({status})"),
                        _ => {
                            eprintln!("shopfast up: {name} did not stop within {STOP_GRACE:?}; killing it");
                            let _ = child.kill().await;
                        }
                    }
                }
            }
        });
        Self { log, stop: Some(stop_tx), done }
    }

    async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let _ = self.done.await;
    }
}

pub async fn run(args: UpArgs) -> anyhow::Result<()> {
    let replicas = replica_counts(&args.replicas)?;
    let logs_dir = args.data_dir.join("logs");
    std::fs::create_dir_all(&logs_dir).with_context(|| format!("cannot create {}", logs_dir.display()))?;
    let exe = std::env::current_exe().context("cannot find the shopfast executable")?;
    let shutdown = kit::shutdown::on_signals();
    let (exited_tx, mut exited_rx) = mpsc::unbounded_channel::<String>();

    let secrets = Secrets::generate();
    let registry_port = if args.ephemeral { 0 } else { REGISTRY_PORT };
    let supervisor = Supervisor { exe: &exe, logs_dir: &logs_dir, quiet: args.quiet, exited: exited_tx.clone() };
    let registry = ChildSpec {
        command: "registry",
        label: "registry",
        flags: vec!["--addr".into(), format!("127.0.0.1:{registry_port}")],
        colour: 0,
        env: &[],
        ready: None,
    };
    let (registry, registry_url) =
        spawn_listening(&supervisor, registry, "the registry", args.ready_timeout_secs).await?;
    let data_dir = args.data_dir.display().to_string();

    // The console first, so the services' first spans have somewhere to go.
    let console = if args.no_console {
        None
    } else {
        match start_console(&supervisor, &registry_url, &data_dir, args.ephemeral, args.ready_timeout_secs).await {
            Ok(started) => Some(started),
            Err(err) => {
                stop_all(Vec::new(), vec![registry]).await;
                return Err(err);
            }
        }
    };
    let mut infrastructure: Vec<Proc> = Vec::new();
    let console_url = console.map(|(proc, url)| {
        infrastructure.push(proc);
        url
    });
    infrastructure.push(registry);
    let telemetry = telemetry_env(console_url.as_deref());
    let service_env: Vec<(String, String)> = secrets.env.iter().cloned().chain(telemetry.iter().cloned()).collect();
    let loadgen_env: Vec<(String, String)> = secrets.loadgen_env.iter().cloned().chain(telemetry).collect();

    let mut services = Vec::new();
    for (index, (name, grpc_port, admin_port)) in SERVICES.iter().enumerate() {
        let count = replicas.get(*name).copied().unwrap_or(1);
        for replica in 1..=count {
            // Only the first replica can have the fixed ports.
            let (grpc, admin) = if args.ephemeral || replica > 1 { (0, 0) } else { (*grpc_port, *admin_port) };
            let mut flags: Vec<String> = vec![
                "--grpc-addr".into(),
                format!("127.0.0.1:{grpc}"),
                "--admin-addr".into(),
                format!("127.0.0.1:{admin}"),
                "--data-dir".into(),
                data_dir.clone(),
                "--registry-url".into(),
                registry_url.clone(),
                "--meta".into(),
                format!("replica={replica}"),
            ];
            if args.enable_fault_injection {
                flags.push("--enable-fault-injection".into());
            }
            let label = format!("{name}-{replica}");
            let spec =
                ChildSpec { command: name, label: &label, flags, colour: index + 1, env: &service_env, ready: None };
            services.push(spawn(&supervisor, spec)?);
        }
    }
    let gateway_port = if args.ephemeral { 0 } else { GATEWAY_PORT };
    let gateway_flags = vec![
        "--addr".into(),
        format!("127.0.0.1:{gateway_port}"),
        "--registry-url".into(),
        registry_url.clone(),
        "--data-dir".into(),
        data_dir.clone(),
    ];
    let spec = ChildSpec {
        command: "gateway",
        label: "gateway-1",
        flags: gateway_flags,
        colour: SERVICES.len() + 1,
        env: &service_env,
        ready: None,
    };
    services.push(spawn(&supervisor, spec)?);

    let client = RegistryClient::new(&registry_url);
    let mut expected: BTreeMap<&str, usize> =
        SERVICES.iter().map(|(name, ..)| (*name, replicas.get(*name).copied().unwrap_or(1))).collect();
    expected.insert("gateway", 1);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(args.ready_timeout_secs);
    let outcome = loop {
        tokio::select! {
            _ = shutdown.cancelled() => break Err(anyhow::anyhow!("interrupted while starting")),
            Some(which) = exited_rx.recv() => break Err(anyhow::anyhow!("{which} exited while starting; see the logs in {}", logs_dir.display())),
            _ = tokio::time::sleep(Duration::from_millis(100)) => {}
        }
        if let Ok(list) = client.all_instances().await {
            let all_up = expected.iter().all(|(name, want)| {
                list.instances.iter().filter(|i| i.name == *name && i.health.routable()).count() >= *want
            });
            if all_up {
                break Ok(list);
            }
        }
        if tokio::time::Instant::now() > deadline {
            break Err(anyhow::anyhow!("not every service was ready within {} s", args.ready_timeout_secs));
        }
    };
    let list = match outcome {
        Ok(list) => list,
        Err(err) => {
            stop_all(services, infrastructure).await;
            return Err(err);
        }
    };

    let log_of = |i: &kit::discovery::wire::InstanceInfo| {
        let replica = i.metadata.get("replica").cloned().unwrap_or_else(|| "1".into());
        logs_dir.join(format!("{}-{replica}.log", i.name)).display().to_string()
    };
    let gateway_url = list
        .instances
        .iter()
        .find(|i| i.name == "gateway")
        .map(|i| format!("http://{}", i.address))
        .unwrap_or_default();
    let loadgen = if args.no_loadgen {
        None
    } else {
        match start_loadgen(&supervisor, &gateway_url, &loadgen_env, args.ephemeral, args.ready_timeout_secs).await {
            Ok(started) => Some(started),
            Err(err) => {
                stop_all(services, infrastructure).await;
                return Err(err);
            }
        }
    };
    if let (Some(console), Some((_, loadgen))) = (&console_url, &loadgen) {
        // The console shows the generator's live numbers; it started first.
        let told = reqwest::Client::new()
            .put(format!("{console}/api/loadgen"))
            .json(&serde_json::json!({ "url": loadgen }))
            .send()
            .await
            .map(|r| r.status().is_success());
        if !matches!(told, Ok(true)) {
            eprintln!("shopfast up: could not tell the console where the traffic generator is ({told:?})");
        }
    }
    println!("\nshopfast is up. Registry: {registry_url}");
    println!("Gateway: {gateway_url}   API key (professional tier, admin): {}", secrets.api_key);
    println!("Try: curl -H 'X-API-Key: {}' '{gateway_url}/v1/products?category=books&pageSize=3'\n", secrets.api_key);
    if let Some(url) = &console_url {
        println!("Console: {url}   traces, logs, health, dependency map (OTLP in at {url}/v1/traces)");
    }
    if let Some((_, url)) = &loadgen {
        println!("Loadgen: {url}   steady; POST {url}/mode/{{steady|burst|overload|pause}}");
    }
    print!("{}", crate::status::table(&list.instances, log_of));
    println!("\nLogs: {}   Status: shopfast status --registry-url {registry_url}   Stop: Ctrl-C\n", logs_dir.display());

    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            Some(which) = exited_rx.recv() => {
                eprintln!("shopfast up: {which} exited; the others keep running (Ctrl-C stops all)");
            }
        }
    }
    eprintln!("shopfast up: stopping services, then the console and the registry");
    // The traffic stops first.
    if let Some((proc, _)) = loadgen {
        proc.stop().await;
    }
    stop_all(services, infrastructure).await;
    Ok(())
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
    supervisor: &Supervisor<'_>,
    registry_url: &str,
    data_dir: &str,
    ephemeral: bool,
    ready_timeout_secs: u64,
) -> anyhow::Result<(Proc, String)> {
    let port = if ephemeral { 0 } else { CONSOLE_PORT };
    let spec = ChildSpec {
        command: "console",
        label: "console",
        flags: vec![
            "--addr".into(),
            format!("127.0.0.1:{port}"),
            "--registry-url".into(),
            registry_url.to_string(),
            "--data-dir".into(),
            data_dir.to_string(),
        ],
        colour: SERVICES.len() + 3,
        env: &[],
        ready: None,
    };
    spawn_listening(supervisor, spec, "the console", ready_timeout_secs).await
}

/// The traffic generator against the gateway, with its own API key; its
/// process and control URL once it is ready.
async fn start_loadgen(
    supervisor: &Supervisor<'_>,
    gateway_url: &str,
    env: &[(String, String)],
    ephemeral: bool,
    ready_timeout_secs: u64,
) -> anyhow::Result<(Proc, String)> {
    let port = if ephemeral { 0 } else { LOADGEN_PORT };
    let spec = ChildSpec {
        command: "loadgen",
        label: "loadgen-1",
        flags: vec!["--addr".into(), format!("127.0.0.1:{port}"), "--gateway-url".into(), gateway_url.to_string()],
        colour: SERVICES.len() + 2,
        env,
        ready: None,
    };
    spawn_listening(supervisor, spec, "the traffic generator", ready_timeout_secs).await
}

/// Starts a child that logs the `addr` it listens on in its `ready` line:
/// its process and URL once it has.
async fn spawn_listening(
    supervisor: &Supervisor<'_>,
    spec: ChildSpec<'_>,
    what: &str,
    timeout_secs: u64,
) -> anyhow::Result<(Proc, String)> {
    let (ready_tx, mut ready_rx) = mpsc::unbounded_channel::<Value>();
    let child = spawn(supervisor, ChildSpec { ready: Some(ready_tx), ..spec })?;
    tokio::select! {
        line = ready_rx.recv() => match line.and_then(|l| l["addr"].as_str().map(str::to_string)) {
            Some(addr) => Ok((child, format!("http://{addr}"))),
            None => bail!("{what} exited before it was ready; see {}", child.log.display()),
        },
        _ = tokio::time::sleep(Duration::from_secs(timeout_secs)) => bail!("{what} did not start"),
    }
}

/// Per-run secrets shared by the children: the token secret Users signs with
/// and the gateway checks, and an API key to try the API with.
struct Secrets {
    api_key: String,
    env: Vec<(String, String)>,
    /// The traffic generator's: its own key, on a tier of its own.
    loadgen_env: Vec<(String, String)>,
}

impl Secrets {
    fn generate() -> Self {
        use rand::Rng;
        let hex = |n: usize| -> String { (0..n).map(|_| format!("{:02x}", rand::rng().random::<u8>())).collect() };
        let token_secret = hex(32);
        // Lower case: config keys from the environment are lower-cased.
        let api_key = format!("sf{}", hex(16));
        let loadgen_key = format!("sf{}", hex(16));
        let key_var =
            |key: &str, field: &str| format!("SHOPFAST_GATEWAY__API_KEYS__{}__{field}", key.to_ascii_uppercase());
        // The generator's own tier: its overload mode is meant to overload the
        // services, not to measure the rate limiter.
        let tier_var = |field: &str| format!("SHOPFAST_GATEWAY__TIERS__LOADGEN__{field}");
        let env = vec![
            ("SHOPFAST_USERS__TOKEN_SECRET".to_string(), token_secret.clone()),
            ("SHOPFAST_GATEWAY__TOKEN_SECRET".to_string(), token_secret),
            (key_var(&api_key, "CLIENT"), "shopfast-up".to_string()),
            (key_var(&api_key, "TIER"), "professional".to_string()),
            (key_var(&api_key, "ADMIN"), "true".to_string()),
            (key_var(&loadgen_key, "CLIENT"), "loadgen".to_string()),
            (key_var(&loadgen_key, "TIER"), "loadgen".to_string()),
            (key_var(&loadgen_key, "ADMIN"), "false".to_string()),
            (tier_var("PER_MINUTE"), "600000".to_string()),
            (tier_var("BURST"), "20000".to_string()),
            (tier_var("MONTHLY_QUOTA"), "0".to_string()),
        ];
        let loadgen_env = vec![("SHOPFAST_LOADGEN_API_KEY".to_string(), loadgen_key)];
        Self { api_key, env, loadgen_env }
    }
}

fn replica_counts(pairs: &[(String, String)]) -> anyhow::Result<BTreeMap<String, usize>> {
    let mut counts = BTreeMap::new();
    for (name, count) in pairs {
        if !SERVICES.iter().any(|(s, ..)| s == name) {
            bail!("unknown service {name:?} in --replicas");
        }
        let n: usize = count
            .parse()
            .ok()
            .filter(|n| (1..=16).contains(n))
            .with_context(|| format!("--replicas {name}={count}: the count must be 1 to 16"))?;
        counts.insert(name.clone(), n);
    }
    Ok(counts)
}

/// One child to start.
struct ChildSpec<'a> {
    /// The subcommand: `users`, `registry`, …
    command: &'a str,
    /// Its name in logs and the table: `products-2`.
    label: &'a str,
    flags: Vec<String>,
    colour: usize,
    env: &'a [(String, String)],
    /// Where to send its first `ready` log line, if wanted.
    ready: Option<mpsc::UnboundedSender<Value>>,
}

/// Where children's output goes and who hears of their exits.
struct Supervisor<'a> {
    exe: &'a Path,
    logs_dir: &'a Path,
    quiet: bool,
    exited: mpsc::UnboundedSender<String>,
}

/// Starts `exe <command> <flags>`; its stdout and stderr go to the log file
/// and (unless quiet) to the terminal.
fn spawn(supervisor: &Supervisor<'_>, spec: ChildSpec<'_>) -> anyhow::Result<Proc> {
    let Supervisor { exe, logs_dir, quiet, .. } = *supervisor;
    let ChildSpec { command, label, flags, colour, env, ready } = spec;
    let log = logs_dir.join(format!("{label}.log"));
    let mut child = Command::new(exe)
        .arg(command)
        .args(&flags)
        .envs(env.iter().cloned())
        .envs(ready_lines_logged())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        // Its own process group: a terminal's Ctrl-C reaches only `up`, which
        // then stops the children in order.
        .process_group(0)
        .spawn()
        .with_context(|| format!("cannot start {label}"))?;
    let file = std::fs::OpenOptions::new().create(true).append(true).open(&log)?;
    let file = tokio::fs::File::from_std(file);
    let (lines_tx, mut lines_rx) = mpsc::unbounded_channel::<String>();
    for stream in [
        child.stdout.take().map(|s| Box::new(s) as Box<dyn tokio::io::AsyncRead + Unpin + Send>),
        child.stderr.take().map(|s| Box::new(s) as _),
    ]
    .into_iter()
    .flatten()
    {
        let tx = lines_tx.clone();
        tokio::spawn(async move {
            let mut lines = BufReader::new(stream).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
    }
    drop(lines_tx);
    let colour = COLOURS[colour % COLOURS.len()];
    let prefix = format!("{colour}{label:<11}\x1b[0m |");
    tokio::spawn(async move {
        let mut file = file;
        let mut ready = ready;
        while let Some(line) = lines_rx.recv().await {
            let _ = file.write_all(format!("{line}\n").as_bytes()).await;
            let parsed = serde_json::from_str::<Value>(&line).ok();
            if let Some(json) = &parsed
                && json["message"] == "ready"
                && let Some(tx) = ready.take()
            {
                let _ = tx.send(json.clone());
            }
            if !quiet {
                println!("{prefix} {}", render(parsed.as_ref(), &line));
            }
        }
    });
    Ok(Proc::supervise(label, log, child, supervisor.exited.clone()))
}

/// `up` learns where the registry, the console and the traffic generator
/// listen from their `ready` log line (info): a `RUST_LOG` that is quieter
/// (`warn`) keeps its level for everything else but not for those three.
fn ready_lines_logged() -> Option<(String, String)> {
    let filter = std::env::var("RUST_LOG").ok().filter(|f| !f.trim().is_empty())?;
    Some(("RUST_LOG".to_string(), format!("{filter},registry=info,console=info,loadgen=info")))
}

/// A JSON log line as `LEVEL message key=value …`.
fn render(json: Option<&Value>, raw: &str) -> String {
    let Some(Value::Object(fields)) = json else { return raw.to_string() };
    let level = fields.get("level").and_then(Value::as_str).unwrap_or("");
    let message = fields.get("message").and_then(Value::as_str).unwrap_or("");
    let rest: Vec<String> = fields
        .iter()
        .filter(|(k, _)| !matches!(k.as_str(), "level" | "message" | "timestamp" | "service" | "target"))
        .map(|(k, v)| match v {
            Value::String(s) => format!("{k}={s}"),
            other => format!("{k}={other}"),
        })
        .collect();
    format!("{level:<5} {message} {}", rest.join(" "))
}

/// Stops the services together, then `infrastructure` one by one in order.
async fn stop_all(services: Vec<Proc>, infrastructure: Vec<Proc>) {
    futures::future::join_all(services.into_iter().map(Proc::stop)).await;
    for proc in infrastructure {
        proc.stop().await;
    }
}
