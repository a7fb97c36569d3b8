//! The children of `shopfast up` and what keeps them running: each child is
//! started from this executable with its command and flags, its JSON log
//! written to `<logs>/<name>.log` and a coloured view to the terminal, and a
//! supervising task restarts it when it dies on its own once the stack is up,
//! on the addresses it announced. `up` (start order, readiness, the banner)
//! and `control` (scaling, replacing) start children through here.
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use anyhow::{Context, bail};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::{mpsc, watch};

const STOP_GRACE: Duration = Duration::from_secs(15);
const COLOURS: &[&str] = &["\x1b[36m", "\x1b[33m", "\x1b[35m", "\x1b[32m", "\x1b[34m", "\x1b[31m"];

/// A child process, owned by a supervising task that restarts it when it
/// dies on its own once the stack is up (with a backoff: 1 s, doubling to
/// 30 s, back to 1 s after it ran for a minute — compose's `restart:
/// unless-stopped`), on the addresses it announced so its callers and the
/// terminal's URLs stay right, and stops it (SIGTERM, then SIGKILL after a
/// grace) when asked. Exits and restarts are reported and logged.
pub struct Proc {
    log: PathBuf,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    done: tokio::task::JoinHandle<()>,
}

/// Delay before the `n`th restart in a row (1-based).
fn restart_backoff(n: u32) -> Duration {
    Duration::from_secs(1u64 << n.saturating_sub(1).min(5)).min(Duration::from_secs(30))
}

/// A child that ran this long before dying was healthy: its backoff starts over.
const HEALTHY_RUN: Duration = Duration::from_secs(60);

impl Proc {
    fn supervise(owned: OwnedSpec, first: Launched) -> Self {
        let (stop_tx, mut stop_rx) = tokio::sync::oneshot::channel::<()>();
        let name = owned.label.clone();
        let log = owned.logs_dir.join(format!("{name}.log"));
        let done = tokio::spawn(async move {
            let Launched { mut child, mut announced } = first;
            let (mut restarts, mut in_a_row) = (0u32, 0u32);
            let mut started = tokio::time::Instant::now();
            loop {
                tokio::select! {
                    status = child.wait() => {
                        let status = status.map(|s| s.to_string()).unwrap_or_else(|e| e.to_string());
                        let _ = owned.exited.send(format!("{name} ({status})"));
                        if !owned.restart.load(std::sync::atomic::Ordering::SeqCst) {
                            break;
                        }
                        in_a_row = if started.elapsed() >= HEALTHY_RUN { 1 } else { in_a_row + 1 };
                        let pause = restart_backoff(in_a_row);
                        eprintln!("shopfast up: {name} exited ({status}); restarting in {pause:?}");
                        tokio::select! {
                            _ = tokio::time::sleep(pause) => {}
                            _ = &mut stop_rx => break,
                        }
                        restarts += 1;
                        let flags = owned.restart_flags(&announced.borrow(), restarts);
                        match owned.launch(&flags) {
                            Ok(launched) => {
                                eprintln!("shopfast up: {name} restarted (restart {restarts})");
                                child = launched.child;
                                announced = launched.announced;
                                started = tokio::time::Instant::now();
                            }
                            Err(err) => {
                                eprintln!("shopfast up: {name} could not be restarted: {err:#}");
                                break;
                            }
                        }
                    }
                    _ = &mut stop_rx => {
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
                        break;
                    }
                }
            }
        });
        Self { log, stop: Some(stop_tx), done }
    }

    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let _ = self.done.await;
    }
}

/// One child to start.
pub struct ChildSpec<'a> {
    /// The subcommand: `users`, `registry`, …
    pub command: &'a str,
    /// Its name in logs and the table: `products-2`.
    pub label: &'a str,
    pub flags: Vec<String>,
    pub colour: usize,
    pub env: &'a [(String, String)],
}

/// Where children's output goes and who hears of their exits.
#[derive(Clone)]
pub struct Supervisor {
    exe: PathBuf,
    logs_dir: PathBuf,
    quiet: bool,
    exited: mpsc::UnboundedSender<String>,
    /// Set once the stack is up: from then on a child that dies is restarted
    /// (while starting, an exit fails `up` with its log instead).
    restart: Arc<AtomicBool>,
}

impl Supervisor {
    pub fn new(exe: PathBuf, logs_dir: PathBuf, quiet: bool, exited: mpsc::UnboundedSender<String>) -> Self {
        Self { exe, logs_dir, quiet, exited, restart: Arc::new(AtomicBool::new(false)) }
    }

    /// The stack is up: from now on a child that dies is restarted.
    pub fn restart_from_now(&self) {
        self.restart.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

/// A child as it started, and the `ready` line it announces (`Null` until then).
struct Launched {
    child: Child,
    announced: watch::Receiver<Value>,
}

/// What a supervising task keeps to start its child again.
struct OwnedSpec {
    exe: PathBuf,
    logs_dir: PathBuf,
    quiet: bool,
    command: String,
    label: String,
    flags: Vec<String>,
    colour: usize,
    env: Vec<(String, String)>,
    exited: mpsc::UnboundedSender<String>,
    restart: Arc<AtomicBool>,
}

/// Commands that take `--meta key=value` for their registry entry.
const TAKES_META: &[&str] = &["users", "products", "payments", "orders", "gateway"];

impl OwnedSpec {
    fn from(supervisor: &Supervisor, spec: &ChildSpec<'_>) -> Self {
        Self {
            exe: supervisor.exe.clone(),
            logs_dir: supervisor.logs_dir.clone(),
            quiet: supervisor.quiet,
            command: spec.command.to_string(),
            label: spec.label.to_string(),
            flags: spec.flags.clone(),
            colour: spec.colour,
            env: spec.env.to_vec(),
            exited: supervisor.exited.clone(),
            restart: supervisor.restart.clone(),
        }
    }

    /// The flags of a restart: the addresses the first run announced (a
    /// port 0 would move it, and its callers and the printed URLs with it),
    /// and its restart count as registry metadata (`shopfast status` shows it).
    fn restart_flags(&self, announced: &Value, restarts: u32) -> Vec<String> {
        let mut flags = self.flags.clone();
        for (flag, field) in [("--addr", "addr"), ("--grpc-addr", "grpc_addr"), ("--admin-addr", "admin_addr")] {
            if let (Some(at), Some(addr)) = (flags.iter().position(|f| f == flag), announced[field].as_str()) {
                flags[at + 1] = addr.to_string();
            }
        }
        if TAKES_META.contains(&self.command.as_str()) {
            flags.extend(["--meta".to_string(), format!("restarts={restarts}")]);
        }
        flags
    }

    /// Starts `exe <command> <flags>`; its stdout and stderr go to the log
    /// file and (unless quiet) to the terminal. It gets SIGTERM if `up` dies,
    /// even by SIGKILL (PR_SET_PDEATHSIG), so no orphan keeps its ports.
    fn launch(&self, flags: &[String]) -> anyhow::Result<Launched> {
        let label = &self.label;
        let log = self.logs_dir.join(format!("{label}.log"));
        let up_pid = std::process::id();
        let mut command = Command::new(&self.exe);
        command
            .arg(&self.command)
            .args(flags)
            .envs(self.env.iter().cloned())
            .envs(ready_lines_logged())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            // Its own process group: a terminal's Ctrl-C reaches only `up`,
            // which then stops the children in order.
            .process_group(0);
        // SAFETY: between fork and exec only async-signal-safe calls: prctl
        // and getppid. The parent-death signal follows the forking thread,
        // a tokio worker that lives as long as `up`.
        unsafe {
            command.pre_exec(move || {
                nix::sys::prctl::set_pdeathsig(Signal::SIGTERM).map_err(std::io::Error::from)?;
                // `up` died before the signal was armed: do not run orphaned.
                if nix::unistd::getppid().as_raw() as u32 != up_pid {
                    return Err(std::io::Error::other("shopfast up is gone"));
                }
                Ok(())
            });
        }
        let mut child = command.spawn().with_context(|| format!("cannot start {label}"))?;
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
        let colour = COLOURS[self.colour % COLOURS.len()];
        let prefix = format!("{colour}{label:<11}\x1b[0m |");
        let quiet = self.quiet;
        let (announce, announced) = watch::channel(Value::Null);
        tokio::spawn(async move {
            let mut file = file;
            while let Some(line) = lines_rx.recv().await {
                let _ = file.write_all(format!("{line}\n").as_bytes()).await;
                let parsed = serde_json::from_str::<Value>(&line).ok();
                if let Some(json) = &parsed
                    && json["message"] == "ready"
                {
                    announce.send_replace(json.clone());
                }
                if !quiet {
                    println!("{prefix} {}", render(parsed.as_ref(), &line));
                }
            }
        });
        Ok(Launched { child, announced })
    }
}

/// Starts a child under supervision.
pub fn spawn(supervisor: &Supervisor, spec: ChildSpec<'_>) -> anyhow::Result<Proc> {
    spawn_from(supervisor, spec, None)
}

/// Starts a child under supervision, from `binary` instead of this executable if given.
pub fn spawn_from(supervisor: &Supervisor, spec: ChildSpec<'_>, binary: Option<&Path>) -> anyhow::Result<Proc> {
    let mut owned = OwnedSpec::from(supervisor, &spec);
    if let Some(binary) = binary {
        owned.exe = binary.to_path_buf();
    }
    let launched = owned.launch(&spec.flags)?;
    Ok(Proc::supervise(owned, launched))
}

/// `up` learns where the registry, the console and the traffic generator
/// listen from their `ready` log line (info): a `RUST_LOG` that is quieter
/// (`warn`) keeps its level for everything else but not for those three.
fn ready_lines_logged() -> Option<(String, String)> {
    let filter = std::env::var("RUST_LOG").ok().filter(|f| !f.trim().is_empty())?;
    Some(("RUST_LOG".to_string(), format!("{filter},registry=info,console=info,loadgen=info,deployer=info")))
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

/// Starts a child that logs the `addr` it listens on in its `ready` line:
/// its process and that address once it has.
pub async fn spawn_listening(
    supervisor: &Supervisor,
    spec: ChildSpec<'_>,
    what: &str,
    timeout_secs: u64,
) -> anyhow::Result<(Proc, String)> {
    let owned = OwnedSpec::from(supervisor, &spec);
    let launched = owned.launch(&spec.flags)?;
    let mut announced = launched.announced.clone();
    let child = Proc::supervise(owned, launched);
    let addr = tokio::time::timeout(Duration::from_secs(timeout_secs), async {
        loop {
            if let Some(addr) = announced.borrow_and_update()["addr"].as_str() {
                return Some(addr.to_string());
            }
            // The sender goes when the child's output ends: it exited first.
            announced.changed().await.ok()?;
        }
    })
    .await;
    match addr {
        Ok(Some(addr)) => Ok((child, addr)),
        Ok(None) => bail!("{what} exited before it was ready; see {}", child.log.display()),
        Err(_) => bail!("{what} did not start"),
    }
}
