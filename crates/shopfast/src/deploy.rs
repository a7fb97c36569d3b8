//! `shopfast deploy`, `shopfast rollout status` and `shopfast rollback`: the
//! deploy controller's API from a terminal, as the operator (mutual TLS with
//! the operator's certificate from `shopfast up`'s `<data-dir>/tls`).
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use serde_json::{Value, json};

/// Where the controller is and who asks it.
#[derive(Args)]
pub struct Controller {
    /// The deploy controller (`shopfast up` runs it on https://127.0.0.1:8070).
    #[arg(long, env = "SHOPFAST_DEPLOYER_URL", default_value = "https://127.0.0.1:8070")]
    deployer_url: String,
    /// The operator's certificates (`shopfast up` keeps them in <data-dir>/tls).
    #[arg(long, env = "SHOPFAST_TLS_DIR", default_value = "data/tls")]
    tls_dir: std::path::PathBuf,
}

#[derive(Args)]
pub struct DeployArgs {
    /// users, products, payments or orders.
    service: String,
    /// blue-green: the new version beside the old at weight 0, tested, then all traffic at once.
    #[arg(long, default_value = "blue-green")]
    strategy: String,
    /// The new version (its instances register with it).
    #[arg(long = "version")]
    version: String,
    /// The executable to start the new version from (default: the running shopfast).
    #[arg(long)]
    binary: Option<String>,
    /// Instances of the new version (default 1).
    #[arg(long)]
    replicas: Option<u32>,
    /// An extra flag for the new version's instances (repeatable), e.g. --arg=--config --arg=green.toml.
    #[arg(long = "arg", allow_hyphen_values = true)]
    args: Vec<String>,
    /// Wait for instances of the version someone else starts (compose,
    /// Kubernetes) instead of asking the supervisor to start them.
    #[arg(long)]
    no_start: bool,
    /// How long the new version may take to be ready.
    #[arg(long)]
    ready_timeout_secs: Option<u64>,
    /// The post-switch window, judged against the old version's baseline.
    #[arg(long)]
    watch_secs: Option<u64>,
    /// How long the old version stays on standby after the window.
    #[arg(long)]
    standby_secs: Option<u64>,
    /// Requests the new version must serve in the window before it is judged.
    #[arg(long)]
    min_requests: Option<u64>,
    /// The new version's p95 may exceed the old one's by this share (0.2 = 20 %) …
    #[arg(long)]
    p95_tolerance: Option<f64>,
    /// … plus this many milliseconds.
    #[arg(long)]
    p95_slack_ms: Option<f64>,
    /// Its server-side error rate may exceed the old one's by this much (0.01 = one point).
    #[arg(long)]
    max_error_rate_increase: Option<f64>,
    /// Start it and return at once (follow it with `shopfast rollout status`).
    #[arg(long)]
    detach: bool,
    #[command(flatten)]
    controller: Controller,
}

#[derive(Args)]
pub struct RolloutArgs {
    #[command(subcommand)]
    command: RolloutCommand,
}

#[derive(Subcommand)]
enum RolloutCommand {
    /// The service's rollout in progress (else its last one), every step so far.
    Status {
        service: String,
        /// Keep following it until it ends.
        #[arg(long)]
        watch: bool,
        /// Print the rollout as JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        controller: Controller,
    },
}

#[derive(Args)]
pub struct RollbackArgs {
    service: String,
    /// Why (recorded with the rollout and in the registry's audit).
    #[arg(long, default_value = "operator")]
    reason: String,
    #[command(flatten)]
    controller: Controller,
}

impl Controller {
    fn client(&self) -> anyhow::Result<reqwest::Client> {
        let builder =
            reqwest::Client::builder().connect_timeout(Duration::from_secs(3)).timeout(Duration::from_secs(30));
        let builder = if self.deployer_url.starts_with("https://") {
            let config = kit::tls::TlsConfig::in_dir(&self.tls_dir);
            let tls = kit::tls::Tls::from_config(&config, kit::tls::OPERATOR)
                .with_context(|| format!("the operator's certificates in {}", self.tls_dir.display()))?
                .context("TLS is configured off")?;
            builder.tls_backend_preconfigured(tls.client_config_for(kit::tls::DEPLOYER)?)
        } else {
            builder
        };
        Ok(builder.build()?)
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.deployer_url.trim_end_matches('/'))
    }

    /// Sends `request`; the controller's answer as JSON, or why not.
    async fn ask(&self, request: reqwest::RequestBuilder) -> anyhow::Result<Value> {
        let response = request
            .send()
            .await
            .with_context(|| format!("cannot reach the deploy controller at {}", self.deployer_url))?;
        answer(response).await
    }
}

/// The controller's answer as JSON, or its message as the error.
async fn answer(response: reqwest::Response) -> anyhow::Result<Value> {
    let status = response.status();
    let body: Value = response.json().await.unwrap_or_default();
    if status.is_success() {
        return Ok(body);
    }
    let message = body["message"].as_str().unwrap_or("(no message)");
    bail!("the deploy controller refused ({status}): {message}")
}

pub async fn deploy(args: DeployArgs) -> anyhow::Result<()> {
    let mut analysis = serde_json::Map::new();
    for (field, value) in [
        ("ready_timeout_ms", args.ready_timeout_secs),
        ("watch_ms", args.watch_secs),
        ("standby_ms", args.standby_secs),
    ] {
        if let Some(secs) = value {
            analysis.insert(field.into(), json!(secs.saturating_mul(1_000)));
        }
    }
    if let Some(n) = args.min_requests {
        analysis.insert("min_requests".into(), json!(n));
    }
    for (field, value) in [
        ("p95_tolerance", args.p95_tolerance),
        ("p95_slack_ms", args.p95_slack_ms),
        ("max_error_rate_increase", args.max_error_rate_increase),
    ] {
        if let Some(value) = value {
            analysis.insert(field.into(), json!(value));
        }
    }
    let request = json!({
        "service": args.service,
        "strategy": args.strategy,
        "version": args.version,
        "binary": args.binary,
        "replicas": args.replicas,
        "args": args.args,
        "start_instances": if args.no_start { Some(false) } else { None },
        "analysis": analysis,
    });
    let http = args.controller.client()?;
    let rollout = args.controller.ask(http.post(args.controller.url("/v1/rollouts")).json(&request)).await?;
    let id = rollout["id"].as_str().unwrap_or_default().to_string();
    println!("rollout {id}: {} {} → {}", rollout["service"], rollout["blue"], rollout["green"]);
    if args.detach {
        return Ok(());
    }
    follow(&http, &args.controller, &format!("/v1/rollouts/{id}")).await
}

/// Prints each new step until the rollout ends; fails unless it succeeded.
async fn follow(http: &reqwest::Client, controller: &Controller, path: &str) -> anyhow::Result<()> {
    let mut printed = 0;
    let mut unreachable_since: Option<std::time::Instant> = None;
    loop {
        let rollout = match http.get(controller.url(path)).send().await {
            Ok(response) => {
                unreachable_since = None;
                answer(response).await?
            }
            // A controller restarting (killed mid-deploy) comes back and resumes.
            Err(err) => {
                let since = *unreachable_since.get_or_insert_with(std::time::Instant::now);
                if since.elapsed() > Duration::from_secs(120) {
                    bail!("the deploy controller has been unreachable for 2 minutes: {err}");
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue;
            }
        };
        let steps = rollout["steps"].as_array().cloned().unwrap_or_default();
        for step in steps.iter().skip(printed) {
            println!("{}", step_line(step));
        }
        printed = printed.max(steps.len());
        let phase = rollout["phase"].as_str().unwrap_or_default();
        if matches!(phase, "succeeded" | "rolled_back" | "aborted") {
            let reason = rollout["reason"].as_str().unwrap_or_default();
            println!("{}: {phase} — {reason}", rollout["id"].as_str().unwrap_or_default());
            if phase == "succeeded" {
                return Ok(());
            }
            bail!("rollout {phase}: {reason}");
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// `12:00:01.250  smoke        smoke passed: …`
fn step_line(step: &Value) -> String {
    let at = step["at_ms"].as_i64().unwrap_or_default();
    let (secs, millis) = (at.div_euclid(1_000), at.rem_euclid(1_000));
    let clock = format!("{:02}:{:02}:{:02}.{millis:03}", secs / 3_600 % 24, secs / 60 % 60, secs % 60);
    let phase = step["phase"].as_str().unwrap_or_default();
    let event = step["event"].as_str().unwrap_or_default();
    match step["detail"].as_str().filter(|d| !d.is_empty()) {
        Some(detail) => format!("{clock}  {phase:<12} {event}: {detail}"),
        None => format!("{clock}  {phase:<12} {event}"),
    }
}

pub async fn rollout(args: RolloutArgs) -> anyhow::Result<()> {
    let RolloutCommand::Status { service, watch, json, controller } = args.command;
    let http = controller.client()?;
    let path = format!("/v1/services/{service}/rollout");
    if watch {
        return follow(&http, &controller, &path).await;
    }
    let rollout = controller.ask(http.get(controller.url(&path))).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&rollout)?);
        return Ok(());
    }
    println!(
        "{}  {}: {} → {}  phase {}{}",
        rollout["id"].as_str().unwrap_or_default(),
        rollout["service"].as_str().unwrap_or_default(),
        rollout["blue"].as_str().unwrap_or_default(),
        rollout["green"].as_str().unwrap_or_default(),
        rollout["phase"].as_str().unwrap_or_default(),
        rollout["reason"].as_str().map(|r| format!(" — {r}")).unwrap_or_default(),
    );
    for step in rollout["steps"].as_array().into_iter().flatten() {
        println!("{}", step_line(step));
    }
    Ok(())
}

pub async fn rollback(args: RollbackArgs) -> anyhow::Result<()> {
    let http = args.controller.client()?;
    let path = format!("/v1/services/{}/rollback", args.service);
    let request = http.post(args.controller.url(&path)).json(&json!({ "reason": args.reason }));
    let rollout = args.controller.ask(request).await?;
    println!(
        "{}: {} ({}); traffic on {}",
        rollout["id"].as_str().unwrap_or_default(),
        rollout["phase"].as_str().unwrap_or_default(),
        rollout["reason"].as_str().unwrap_or_default(),
        rollout["blue"].as_str().unwrap_or_default(),
    );
    Ok(())
}
