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
    /// blue-green: the new version beside the old at weight 0, tested, then
    /// all traffic at once. canary: a growing share step by step, each step
    /// judged against the old version on live metrics.
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
    /// Canary: the weights of its steps, ending at 100 (default 5,10,25,50,75,100).
    #[arg(long, value_delimiter = ',')]
    steps: Vec<u32>,
    /// Canary: how long each step is held with traffic (10m, 30s, 1500ms).
    #[arg(long)]
    step_interval: Option<String>,
    /// Canary: how often it is analysed (default 5s).
    #[arg(long)]
    analysis_interval: Option<String>,
    /// Canary: error rates at or below this never fail (0.001 = 0.1 %).
    #[arg(long)]
    error_floor: Option<f64>,
    /// Canary: requests each version needs before any verdict (default: ln(20) / error floor).
    #[arg(long)]
    min_samples: Option<u64>,
    /// Canary: its p95 may exceed the old version's by this share to pass a step (0.1 = 10 %).
    #[arg(long)]
    latency_margin: Option<f64>,
    /// Canary: how long the old version stays after 100 % for a rollback (default 24h).
    #[arg(long)]
    rollback_window: Option<String>,
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
    /// Hold a canary at its step (its clock stops; a gross regression still rolls back).
    Pause(ActArgs),
    /// Let a paused canary go on.
    Resume(ActArgs),
    /// Skip a canary's remaining steps (100 % now); in the rollback window, end it now.
    Promote(ActArgs),
    /// Roll back at once (the same as `shopfast rollback`).
    Abort(ActArgs),
}

/// `shopfast rollout pause|resume|promote|abort SERVICE`.
#[derive(Args)]
pub struct ActArgs {
    service: String,
    /// Why (recorded with the rollout).
    #[arg(long, default_value = "operator")]
    reason: String,
    #[command(flatten)]
    controller: Controller,
}

impl ActArgs {
    async fn run(self, action: &str) -> anyhow::Result<()> {
        let http = self.controller.client()?;
        let path = format!("/v1/services/{}/rollout/{action}", self.service);
        let request = http.post(self.controller.url(&path)).json(&json!({ "reason": self.reason }));
        let rollout = self.controller.ask(request).await?;
        println!(
            "{}: {action} — {} ({})",
            rollout["id"].as_str().unwrap_or_default(),
            rollout["phase"].as_str().unwrap_or_default(),
            rollout["steps"].as_array().and_then(|s| s.last()).map(step_line).unwrap_or_default()
        );
        Ok(())
    }
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
            let config = kit_tls::TlsConfig::in_dir(&self.tls_dir);
            let tls = kit_tls::Tls::from_config(&config, kit_tls::OPERATOR)
                .with_context(|| format!("the operator's certificates in {}", self.tls_dir.display()))?
                .context("TLS is configured off")?;
            builder.tls_backend_preconfigured(tls.client_config_for(kit_tls::DEPLOYER)?)
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
    let canary = canary_settings(&args)?;
    let request = json!({
        "service": args.service,
        "strategy": args.strategy,
        "version": args.version,
        "binary": args.binary,
        "replicas": args.replicas,
        "args": args.args,
        "start_instances": if args.no_start { Some(false) } else { None },
        "analysis": analysis,
        "canary": canary,
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

/// The canary flags as settings over the service's configured ones.
fn canary_settings(args: &DeployArgs) -> anyhow::Result<Option<Value>> {
    let mut settings = serde_json::Map::new();
    let interval = args.step_interval.as_deref().map(duration_ms).transpose()?;
    if !args.steps.is_empty() || interval.is_some() {
        let weights = if args.steps.is_empty() { vec![5, 10, 25, 50, 75, 100] } else { args.steps.clone() };
        let duration = interval.unwrap_or(600_000);
        let steps: Vec<Value> = weights.iter().map(|w| json!({ "weight": w, "duration": duration })).collect();
        settings.insert("steps".into(), json!(steps));
    }
    for (field, text) in [("analysis_interval", &args.analysis_interval), ("rollback_window", &args.rollback_window)] {
        if let Some(text) = text {
            settings.insert(field.into(), json!(duration_ms(text)?));
        }
    }
    if let Some(n) = args.min_samples {
        settings.insert("min_samples".into(), json!(n));
    }
    for (field, value) in [("error_floor", args.error_floor), ("latency_margin", args.latency_margin)] {
        if let Some(value) = value {
            settings.insert(field.into(), json!(value));
        }
    }
    match (args.strategy.as_str(), settings.is_empty()) {
        (_, true) => Ok(None),
        ("canary", false) => Ok(Some(Value::Object(settings))),
        (strategy, false) => {
            bail!("--steps, --step-interval and the other canary flags are for --strategy canary, not {strategy}")
        }
    }
}

fn duration_ms(text: &str) -> anyhow::Result<u64> {
    deployer::canary::parse_duration_ms(text).map_err(anyhow::Error::msg)
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
        // A promoted canary keeps stable for its rollback window (a day by
        // default): the deploy is done when the canary has all the traffic.
        if phase == "standby" && rollout["strategy"] == "canary" {
            println!(
                "{}: promoted — rollback possible until {}",
                rollout["id"].as_str().unwrap_or_default(),
                clock(rollout["standby_until_ms"].as_i64().unwrap_or_default())
            );
            return Ok(());
        }
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
    let clock = clock(step["at_ms"].as_i64().unwrap_or_default());
    let phase = step["phase"].as_str().unwrap_or_default();
    let event = step["event"].as_str().unwrap_or_default();
    match step["detail"].as_str().filter(|d| !d.is_empty()) {
        Some(detail) => format!("{clock}  {phase:<12} {event}: {detail}"),
        None => format!("{clock}  {phase:<12} {event}"),
    }
}

/// `12:00:01.250` (UTC) of a time in milliseconds.
fn clock(at_ms: i64) -> String {
    let (secs, millis) = (at_ms.div_euclid(1_000), at_ms.rem_euclid(1_000));
    format!("{:02}:{:02}:{:02}.{millis:03}", secs / 3_600 % 24, secs / 60 % 60, secs % 60)
}

/// A canary's step, weights, time to the next step and each check.
fn print_canary(rollout: &Value) {
    let canary = &rollout["canary"];
    let steps = canary["config"]["steps"].as_array().cloned().unwrap_or_default();
    let index = canary["step"].as_u64().unwrap_or_default() as usize;
    let weight = steps.get(index).and_then(|s| s["weight"].as_u64()).unwrap_or(100);
    let weights: Vec<String> = steps.iter().map(|s| s["weight"].to_string()).collect();
    println!(
        "canary step {}/{} at {weight} % ({} {} %, {} {} %); steps {}",
        index + 1,
        steps.len(),
        rollout["green"].as_str().unwrap_or_default(),
        weight,
        rollout["blue"].as_str().unwrap_or_default(),
        100 - weight,
        weights.join(" → ")
    );
    if rollout["phase"] == "progressing" {
        let duration = steps.get(index).and_then(|s| s["duration"].as_str()).unwrap_or("?");
        let elapsed = canary["step_elapsed_ms"].as_u64().unwrap_or_default();
        let step_ms = steps
            .get(index)
            .and_then(|s| s["duration"].as_str())
            .and_then(|d| deployer::canary::parse_duration_ms(d).ok())
            .unwrap_or_default();
        println!(
            "  step held {} s of {duration} with traffic; next step in {} s at the earliest",
            elapsed / 1_000,
            step_ms.saturating_sub(elapsed).div_ceil(1_000)
        );
    }
    for (label, field) in [("paused", "paused"), ("waiting", "waiting")] {
        if let Some(why) = canary[field].as_str() {
            println!("  {label}: {why}");
        }
    }
    for check in canary["checks"].as_array().into_iter().flatten() {
        let figure = |side: &str| check[side].as_f64().map_or_else(|| "-".into(), |v| format!("{v:.2}"));
        println!(
            "  {:<28} {:<9} canary {} / stable {} {}  (n {} / {}){}",
            check["name"].as_str().unwrap_or_default(),
            check["verdict"].as_str().unwrap_or_default(),
            figure("canary"),
            figure("stable"),
            check["unit"].as_str().unwrap_or_default(),
            check["canary_samples"],
            check["stable_samples"],
            check["p_value"].as_f64().map(|p| format!(", p = {p:.1e}")).unwrap_or_default()
        );
    }
}

pub async fn rollout(args: RolloutArgs) -> anyhow::Result<()> {
    let (service, watch, json, controller) = match args.command {
        RolloutCommand::Status { service, watch, json, controller } => (service, watch, json, controller),
        RolloutCommand::Pause(act) => return act.run("pause").await,
        RolloutCommand::Resume(act) => return act.run("resume").await,
        RolloutCommand::Promote(act) => return act.run("promote").await,
        RolloutCommand::Abort(act) => return act.run("abort").await,
    };
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
    if rollout["canary"].is_object() {
        print_canary(&rollout);
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
