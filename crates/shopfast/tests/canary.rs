//! Canary releases against a running `shopfast up`, as an operator runs them,
//! under an open-loop load through the gateway that counts every answer: a
//! healthy canary promoted through every step (shares checked at each, the
//! load paused and resumed, the operator pausing it, the controller killed
//! with -9), and bad canaries — failing, slow on one method, bad for Orders'
//! calls — rolled back on their own, while a canary 3 % slower is not.
#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{Value, json};
use support::rollouts::{Load, failures, loadgen_key, policy, rollout, shopfast, versions, wait_for_phase};
use support::{Shopper, Up, child_pids, eventually, signal};

/// Anonymous readers are routed at random (no sticky key), so their shares
/// measure the weights; the anonymous tier is widened for the load. The
/// analysis runs every second and judges after 100 requests a side here
/// (`[deployer.canary.products]` through the environment).
const ENV: &[(&str, &str)] = &[
    ("SHOPFAST_GATEWAY__TIERS__ANONYMOUS__PER_MINUTE", "6000000"),
    ("SHOPFAST_GATEWAY__TIERS__ANONYMOUS__BURST", "100000"),
    ("SHOPFAST_GATEWAY__TIERS__ANONYMOUS__MONTHLY_QUOTA", "0"),
    ("SHOPFAST_DEPLOYER__CANARY__PRODUCTS__MIN_SAMPLES", "100"),
    ("SHOPFAST_DEPLOYER__CANARY__PRODUCTS__ANALYSIS_INTERVAL", "1s"),
    ("SHOPFAST_PRODUCTS__FAULTS__ENABLED", "true"),
];

const GET_PRODUCT: &str = "/shopfast.products.v1.ProductService/GetProduct";

/// Anonymous reads of one product at `rate`/s.
async fn anonymous_reads(up: &Up, data: &std::path::Path, rate: u32) -> Load {
    static READERS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = READERS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let shopper = Shopper::sign_up(&up.gateway, &loadgen_key(data), &format!("reader-{n}@test.invalid")).await;
    let product = shopper.product_in_stock().await;
    let (http, url) = (reqwest::Client::new(), format!("{}/v1/products/{product}", up.gateway));
    Load::start_with(rate, Arc::new(move |_| http.get(&url)))
}

/// The canary's state in the service's rollout.
async fn canary(up: &Up) -> Value {
    rollout(up, "products").await["canary"].clone()
}

async fn wait_for(up: &Up, what: &str, within: Duration, check: impl Fn(&Value) -> bool) -> Value {
    let started = Instant::now();
    loop {
        let now = rollout(up, "products").await;
        if check(&now) {
            return now;
        }
        assert!(started.elapsed() < within, "{what} not within {within:?}: {now:#}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn at_step(rollout: &Value, index: u64) -> bool {
    rollout["phase"] == "progressing" && rollout["canary"]["step"] == index
}

fn step_time(rollout: &Value, event: &str) -> Option<i64> {
    let steps = rollout["steps"].as_array()?;
    steps.iter().find(|s| s["event"].as_str().is_some_and(|e| e.starts_with(event)))?["at_ms"].as_i64()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_healthy_canary_goes_through_every_step_with_pauses_and_a_killed_controller() {
    let _turn = support::rollouts::loaded_stack_turn().await;
    let data = tempfile::tempdir().unwrap();
    let up = Up::start(data.path(), &["--no-loadgen", "--no-console"], ENV);
    let stable = versions(&up, "products").await.remove(0);
    let load = anonymous_reads(&up, data.path(), 300).await;

    let out = shopfast(
        &up,
        &["deploy", "products", "--strategy", "canary", "--version", "v2", "--step-interval", "15s", "--detach"],
    )
    .await;
    assert!(out.status.success());

    // Step 2 (10 %): the controller killed; up restarts it; it resumes at
    // the same step with the same weights.
    wait_for(&up, "step 2", Duration::from_secs(90), |r| at_step(r, 1)).await;
    let pids = child_pids(data.path(), "deployer");
    assert_eq!(pids.len(), 1, "{pids:?}");
    signal(pids[0], "-KILL");
    let resumed = wait_for(&up, "resumed", Duration::from_secs(30), |r| step_time(r, "resumed").is_some()).await;
    assert_eq!(resumed["canary"]["step"], 1, "{resumed:#}");
    assert_eq!(policy(&up, "products").await["weights"], json!({ &stable: 90, "v2": 10 }));

    // Step 3 (25 %): no traffic → the step waits with the reason; traffic back → it goes on.
    wait_for(&up, "step 3", Duration::from_secs(90), |r| at_step(r, 2)).await;
    let first = load.finish().await;
    let idle = wait_for(&up, "a pause for no traffic", Duration::from_secs(20), |r| {
        r["canary"]["waiting"].as_str().is_some_and(|w| w.contains("no traffic"))
    })
    .await;
    assert!(at_step(&idle, 2), "{idle:#}");
    let out = shopfast(&up, &["rollout", "status", "products"]).await;
    let printed = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(printed.contains("waiting: no traffic") && printed.contains("step 3/6 at 25 %"), "{printed}");
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(at_step(&rollout(&up, "products").await, 2), "a step without traffic must not pass");
    let load = anonymous_reads(&up, data.path(), 300).await;
    wait_for(&up, "traffic back", Duration::from_secs(20), |r| r["canary"]["waiting"].is_null()).await;

    // Step 4 (50 %): the operator pauses it; its clock stops; resumed, it goes on.
    wait_for(&up, "step 4", Duration::from_secs(90), |r| at_step(r, 3)).await;
    let out = shopfast(&up, &["rollout", "pause", "products", "--reason", "looking at a dashboard"]).await;
    assert!(out.status.success());
    let paused = canary(&up).await["step_elapsed_ms"].clone();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let still = canary(&up).await;
    assert_eq!(still["step_elapsed_ms"], paused, "a paused step's clock stops: {still:#}");
    assert_eq!(still["paused"], "looking at a dashboard");
    assert!(shopfast(&up, &["rollout", "resume", "products"]).await.status.success());

    // Promoted: the canary takes everything, stable waits at 0 for a rollback.
    let promoted = wait_for(&up, "promotion", Duration::from_secs(120), |r| r["phase"] == "standby").await;
    assert_eq!(policy(&up, "products").await["weights"], json!({ &stable: 0, "v2": 100 }));
    let outcomes = [first, load.finish().await].concat();
    assert_eq!(failures(&outcomes, "load across a healthy canary"), 0);

    // Each step's observed share within 2 points of its weight.
    let done = promoted["canary"]["steps_done"].as_array().unwrap();
    let shares: Vec<(u64, f64, f64)> = done
        .iter()
        .map(|s| {
            let calls = s["canary_calls"].as_f64().unwrap() + s["stable_calls"].as_f64().unwrap();
            (s["weight"].as_u64().unwrap(), s["observed_share"].as_f64().unwrap(), calls)
        })
        .collect();
    eprintln!("weight, observed share, calls: {shares:?}");
    assert_eq!(shares.iter().map(|s| s.0).collect::<Vec<_>>(), [5, 10, 25, 50, 75]);
    for (weight, share, calls) in &shares {
        assert!((share - *weight as f64).abs() <= 2.0 && *calls >= 2_000.0, "{weight} %: {share:.2} % of {calls}");
    }
    // The history the console charts: both sides' figures, every analysis.
    let history = promoted["canary"]["history"].as_array().unwrap();
    assert!(history.len() > 30, "{}", history.len());
    assert!(history.iter().any(|p| p["canary_p95_ms"].is_number() && p["stable_p95_ms"].is_number()));

    // The operator ends the rollback window: stable retired.
    assert!(shopfast(&up, &["rollout", "promote", "products"]).await.status.success());
    wait_for_phase(&up, "products", &["succeeded"], Duration::from_secs(30)).await;
    eventually(Duration::from_secs(20), "stable retired", || async { versions(&up, "products").await == ["v2"] }).await;
}

/// A fault file for a canary's instances.
fn faults(data: &std::path::Path, name: &str, rules: &str) -> String {
    let path = data.join(format!("{name}.toml"));
    std::fs::write(&path, format!("[products.shedding]\nenabled = false\n[products.faults]\nenabled = true\n{rules}"))
        .unwrap();
    format!("--arg={}", path.display())
}

fn rule(method: &str, what: &str) -> String {
    format!("[[products.faults.rules]]\nmethod = \"{method}\"\n{what}\n")
}

/// `steps`, each held `interval`, with `extra` flags; followed to its end (or promotion).
async fn deploy_canary(up: &Up, version: &str, fault_arg: &str, steps: &str, interval: &str, extra: &[&str]) -> Value {
    let mut args = vec!["deploy", "products", "--strategy", "canary", "--version", version];
    args.extend_from_slice(&["--steps", steps, "--step-interval", interval, "--arg=--config", fault_arg]);
    args.extend_from_slice(extra);
    let out = shopfast(up, &args).await;
    let ended = rollout(up, "products").await;
    eprintln!("{version}: {} — {}", ended["phase"], ended["reason"]);
    assert_eq!(out.status.success(), ended["phase"] == "standby", "{ended:#}");
    ended
}

fn failed_check(rollout: &Value, name: &str) -> bool {
    let checks = rollout["canary"]["checks"].as_array().cloned().unwrap_or_default();
    checks.iter().any(|c| c["name"].as_str().is_some_and(|n| n.starts_with(name)) && c["verdict"] == "fail_fast")
}

/// Errors counted on stable's instances by their own server metrics.
async fn stable_server_errors(up: &Up, version: &str) -> f64 {
    let mut errors = 0.0;
    for instance in support::instances(up, "products").await.iter().filter(|i| i["version"] == version) {
        let url = format!("http://{}/metrics", instance["admin_address"].as_str().unwrap());
        let text = reqwest::get(url).await.unwrap().text().await.unwrap();
        let side = deployer::evidence::read_server(&text).unwrap_or_default();
        errors += side.server().errors;
    }
    errors
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_canaries_are_rolled_back_on_their_own_and_a_slightly_slower_one_is_not() {
    let _turn = support::rollouts::loaded_stack_turn().await;
    let data = tempfile::tempdir().unwrap();
    // Stable made slow below must not shed.
    let env = [ENV, &[("SHOPFAST_PRODUCTS__SHEDDING__ENABLED", "false")]].concat();
    let up = Up::start(data.path(), &["--no-loadgen"], &env);
    let stable = versions(&up, "products").await.remove(0);
    let load = anonymous_reads(&up, data.path(), 250).await;

    // Failing 10 % of its calls: rolled back within 10 s of the minimum sample.
    let bad = faults(data.path(), "failing", &rule("*", "error_rate = 0.1\nerror_code = \"INTERNAL\""));
    let ended = deploy_canary(&up, "v-failing", &bad, "10,50,100", "20s", &[]).await;
    assert_eq!(ended["phase"], "rolled_back", "{ended:#}");
    assert!(failed_check(&ended, "errors (server side)"), "{ended:#}");
    let sampled = step_time(&ended, "minimum sample reached").unwrap();
    let rolled_back = step_time(&ended, "switched back to stable").unwrap();
    assert!(rolled_back - sampled <= 10_000, "{} ms after the minimum sample", rolled_back - sampled);
    assert_eq!(policy(&up, "products").await["weights"][&stable], 100);
    // The load goes on a while after the rollback: no failure there.
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(stable_server_errors(&up, &stable).await, 0.0, "stable failed requests");
    let failing = load.finish().await;
    let after: Vec<_> = failing.iter().filter(|o| o.wall_ms > rolled_back + 1_000).copied().collect();
    let blast = failures(&failing, "load across the failing canary");
    assert_eq!(failures(&after, "after the rollback"), 0);
    assert!(blast > 0 && after.len() > 100, "the canary did fail some users: {blast}");

    // 200 ms slower on one method: rolled back on latency.
    let load = anonymous_reads(&up, data.path(), 250).await;
    let slow = faults(data.path(), "slow", &rule(GET_PRODUCT, "latency_ms = 200"));
    let ended = deploy_canary(&up, "v-slow", &slow, "10,50,100", "20s", &[]).await;
    assert_eq!(ended["phase"], "rolled_back", "{ended:#}");
    // On a latency check (in ms) that failed, not on errors.
    let failed: Vec<&Value> = ended["canary"]["checks"]
        .as_array()
        .map(|checks| checks.iter().filter(|c| matches!(c["verdict"].as_str(), Some("fail" | "fail_fast"))).collect())
        .unwrap_or_default();
    assert!(!failed.is_empty() && failed.iter().all(|c| c["unit"] == "ms"), "{ended:#}");
    assert_eq!(ended["cause"], "regressed", "{ended:#}");

    // The console's deployments panel: the canary's checks and its chart.
    let console = up.console.clone().unwrap();
    let panel: Value = reqwest::get(format!("{console}/api/deployments")).await.unwrap().json().await.unwrap();
    let shown = &panel["rollouts"][0];
    assert_eq!(shown["strategy"], "canary");
    assert!(shown["canary"]["history"].as_array().is_some_and(|h| h.len() > 2), "{shown:#}");
    let dom = tokio::task::block_in_place(|| support::chromium(&console, &["--dump-dom".to_string()]));
    if let Some(dom) = dom {
        for shown in ["data-chart=\"p95\"", "data-chart=\"error rate\"", "data-series=\"canary\"", "class=\"checks\""] {
            assert!(dom.contains(shown), "{shown} missing from the deployments panel");
        }
    }

    // 3 % slower on a busy box (stable's GetProduct made to take 98 ms, the
    // canary's 101 — across the 100 ms bucket edge, where the rank test sees
    // the shift): judged, promoted, not rolled back.
    for instance in support::instances(&up, "products").await.iter().filter(|i| i["version"] == stable.as_str()) {
        let url = format!("http://{}/admin/faults", instance["admin_address"].as_str().unwrap());
        let rules = json!({ "rules": [{ "method": GET_PRODUCT, "latency_ms": 98 }] });
        let response = reqwest::Client::new().put(url).json(&rules).send().await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
    }
    let near = faults(data.path(), "near", &rule(GET_PRODUCT, "latency_ms = 101"));
    let ended = deploy_canary(&up, "v-near", &near, "10,50,100", "10s", &[]).await;
    assert_eq!(ended["phase"], "standby", "a 3 % slower canary was judged a regression: {ended:#}");
    // In the rollback window after 100 %: a rollback puts stable back at once.
    assert!(shopfast(&up, &["rollback", "products", "--reason", "second thoughts"]).await.status.success());
    assert_eq!(policy(&up, "products").await["weights"][&stable], 100);
    wait_for_phase(&up, "products", &["rolled_back"], Duration::from_secs(30)).await;
    let outcomes = load.finish().await;
    assert_eq!(failures(&outcomes, "load across the slow and the near canaries and a rollback"), 0);

    // East-west: Orders' calls follow the weights, and a Products canary
    // failing Orders' calls is caught (Orders' client metrics included).
    let mut shoppers = Vec::new();
    for i in 0..30 {
        let email = format!("ew-{i}@test.invalid");
        shoppers.push(Arc::new(Shopper::sign_up(&up.gateway, &loadgen_key(data.path()), &email).await));
    }
    let product = shoppers[0].product_in_stock().await;
    let load = Load::start_with(
        40,
        Arc::new(move |n| {
            let shopper = &shoppers[(n % 30) as usize];
            shopper
                .request(reqwest::Method::POST, "/v1/orders")
                .header("idempotency-key", format!("ew-{n}-{}", std::process::id()))
                .json(&Shopper::order_of(&product, "4242424242424242"))
        }),
    );
    let east_west = faults(
        data.path(),
        "east-west",
        &rule("/shopfast.products.v1.ProductService/GetProducts", "error_rate = 0.5\nerror_code = \"INTERNAL\""),
    );
    let ended = deploy_canary(&up, "v-ew", &east_west, "50,100", "30s", &["--min-samples", "30"]).await;
    let outcomes = load.finish().await;
    failures(&outcomes, "orders across the east-west canary");
    assert_eq!(ended["phase"], "rolled_back", "{ended:#}");
    assert!(failed_check(&ended, "errors (callers' side)"), "{ended:#}");
    let orders = support::instances(&up, "orders").await;
    let url = format!("http://{}/metrics", orders[0]["admin_address"].as_str().unwrap());
    let text = reqwest::get(url).await.unwrap().text().await.unwrap();
    let calls = deployer::evidence::read_calls(&text, "products");
    let (canary, stable_calls) = (calls.get("v-ew").cloned().unwrap_or_default(), calls[&stable].clone());
    eprintln!(
        "Orders → Products: canary {} calls ({} failed), stable {}",
        canary.requests, canary.errors, stable_calls.requests
    );
    assert!(canary.errors > 0.0, "Orders saw the canary fail");
    let share = canary.requests / (canary.requests + stable_calls.requests);
    assert!(canary.requests > 10.0 && share < 0.9, "Orders' calls reached the canary: {share:.2}");
}

#[test]
fn canary_commands_refuse_garbage_clearly() {
    let run = |args: &[&str]| std::process::Command::new(support::SHOPFAST).args(args).output().unwrap();
    let cases: &[(&[&str], &str)] = &[
        (
            &["deploy", "products", "--strategy", "canary", "--version", "v2", "--step-interval", "soon"],
            "not a duration",
        ),
        (&["deploy", "products", "--strategy", "canary", "--version", "v2", "--steps", "5,x"], "invalid"),
        (&["deploy", "products", "--version", "v2", "--steps", "5,100"], "for --strategy canary"),
        (&["rollout", "pause"], "SERVICE"),
        (&["rollout", "jump", "products"], "unrecognized subcommand"),
        (&["rollout", "promote", "products", "--deployer-url", "http://127.0.0.1:1"], "cannot reach"),
    ];
    for (args, expected) in cases {
        let out = run(args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?}");
        assert!(stderr.contains(expected), "{args:?}: {stderr}");
    }
    // A canary table for a service that cannot be deployed, or with garbage: the controller refuses to start.
    let dir = tempfile::tempdir().unwrap();
    for (table, expected) in [
        ("[deployer.canary.gateway]\nmin_samples = 10\n", "not a deployable service"),
        ("[deployer.canary.products]\nerror_floor = 7\n", "error_floor"),
        ("[deployer.canary.products]\nsteps = \"fast\"\n", "steps"),
    ] {
        let config = dir.path().join("deployer.toml");
        std::fs::write(&config, table).unwrap();
        let out = run(&["deployer", "--config", config.to_str().unwrap()]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && stderr.contains(expected), "{table}: {stderr}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_canary_api_refuses_garbage_and_strangers() {
    let data = tempfile::tempdir().unwrap();
    let up = Up::start(data.path(), &["--no-loadgen", "--no-console"], &[]);
    let operator = up.registry_http();
    let rollouts = format!("{}/v1/rollouts", up.deployer);
    let canary =
        |settings: Value| json!({ "service": "products", "strategy": "canary", "version": "v2", "canary": settings });
    let bad: &[(Value, &str)] = &[
        (canary(json!({ "steps": [{ "weight": 50 }, { "weight": 10 }, { "weight": 100 }] })), "step weights"),
        (canary(json!({ "steps": [{ "weight": 10 }, { "weight": 90 }] })), "step weights"),
        (canary(json!({ "analysis_interval": "forever" })), "duration"),
        (canary(json!({ "error_floor": 2 })), "error_floor"),
        (canary(json!({ "alpha": -1 })), "alpha"),
        (canary(json!({ "latency_slack_ms": -1 })), "latency_slack_ms"),
        (canary(json!({ "nonsense": true })), "unknown field"),
        (canary(json!("fast")), "object"),
        (json!({ "service": "products", "strategy": "blue-green", "version": "v2", "canary": {} }), "canary settings"),
    ];
    for (body, expected) in bad {
        let response = operator.post(&rollouts).json(body).send().await.unwrap();
        let status = response.status();
        let text = response.text().await.unwrap();
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}: {text}");
        assert!(text.contains(expected), "{body}: {text}");
    }
    let act = |action: &str| format!("{}/v1/services/products/rollout/{action}", up.deployer);
    for action in ["pause", "resume", "promote", "abort"] {
        let response = operator.post(act(action)).send().await.unwrap();
        assert_eq!(response.status(), StatusCode::CONFLICT, "{action}: nothing in progress");
    }
    assert_eq!(operator.post(act("jump")).send().await.unwrap().status(), StatusCode::NOT_FOUND);
    let long = json!({ "reason": "x".repeat(300) });
    assert_eq!(operator.post(act("pause")).json(&long).send().await.unwrap().status(), StatusCode::BAD_REQUEST);
    let response = operator.post(act("pause")).body("{oops").header("content-type", "application/json").send().await;
    assert_eq!(response.unwrap().status(), StatusCode::BAD_REQUEST);
    assert_eq!(up.client_as(None).post(act("pause")).send().await.unwrap().status(), StatusCode::FORBIDDEN);
    // Nothing was started by any of it.
    assert_eq!(versions(&up, "products").await.len(), 1);
}

/// The figures of the note (scripts/bench-canary.sh): a failing canary's
/// blast radius and time to rollback, a slow one's time to rollback, and
/// ROUNDS canaries 3 % slower, counting false rollbacks.
#[tokio::test(flavor = "multi_thread")]
#[ignore = "a benchmark: scripts/bench-canary.sh runs it"]
async fn bench_canary_analysis() {
    let rounds: usize = std::env::var("ROUNDS").ok().and_then(|r| r.parse().ok()).unwrap_or(5);
    let rate: u32 = std::env::var("RATE").ok().and_then(|r| r.parse().ok()).unwrap_or(250);
    let data = tempfile::tempdir().unwrap();
    let env = [ENV, &[("SHOPFAST_PRODUCTS__SHEDDING__ENABLED", "false")]].concat();
    let up = Up::start(data.path(), &["--no-loadgen", "--no-console"], &env);
    let mut stable = versions(&up, "products").await.remove(0);
    println!("load: {rate} anonymous reads/s; min sample 100 a side; analysis every 1 s; steps 10,50,100");

    let load = anonymous_reads(&up, data.path(), rate).await;
    let bad = faults(data.path(), "failing", &rule("*", "error_rate = 0.1\nerror_code = \"INTERNAL\""));
    let ended = deploy_canary(&up, "v-failing", &bad, "10,50,100", "20s", &[]).await;
    let outcomes = load.finish().await;
    let rolled_back = step_time(&ended, "switched back to stable").unwrap_or_default();
    let sampled = step_time(&ended, "minimum sample reached").unwrap_or_default();
    let started = step_time(&ended, "entered progressing").unwrap_or_default();
    let failed: Vec<i64> = outcomes.iter().filter(|o| o.status == 0 || o.status >= 500).map(|o| o.wall_ms).collect();
    let first = failed.iter().min().copied().unwrap_or_default();
    let after = failed.iter().filter(|at| **at > rolled_back + 1_000).count();
    println!(
        "failing 10 %: {} — first user failure → rollback {} ms; minimum sample → rollback {} ms; canary at 10 % → rollback {} ms",
        ended["phase"],
        rolled_back - first,
        rolled_back - sampled,
        rolled_back - started
    );
    println!(
        "  blast radius: {} of {} requests failed ({:.2} %); after the rollback (+1 s): {after}; stable's server errors: {}",
        failed.len(),
        outcomes.len(),
        failed.len() as f64 / outcomes.len().max(1) as f64 * 100.0,
        stable_server_errors(&up, &stable).await
    );

    let load = anonymous_reads(&up, data.path(), rate).await;
    let slow = faults(data.path(), "slow", &rule(GET_PRODUCT, "latency_ms = 200"));
    let ended = deploy_canary(&up, "v-slow", &slow, "10,50,100", "20s", &[]).await;
    let rolled_back = step_time(&ended, "switched back to stable").unwrap_or_default();
    let started = step_time(&ended, "entered progressing").unwrap_or_default();
    println!("200 ms slower: {} in {} ms — {}", ended["phase"], rolled_back - started, ended["reason"]);
    load.finish().await;

    // Each round: stable's GetProduct 98 ms, the canary's 101 ms (3 % slower,
    // across the 100 ms bucket edge).
    let mut false_rollbacks = 0;
    for round in 0..rounds {
        for instance in support::instances(&up, "products").await.iter().filter(|i| i["version"] == stable.as_str()) {
            let url = format!("http://{}/admin/faults", instance["admin_address"].as_str().unwrap());
            let rules = json!({ "rules": [{ "method": GET_PRODUCT, "latency_ms": 98 }] });
            reqwest::Client::new().put(url).json(&rules).send().await.unwrap();
        }
        let load = anonymous_reads(&up, data.path(), rate).await;
        let version = format!("v-near-{round}");
        let near = faults(data.path(), &version, &rule(GET_PRODUCT, "latency_ms = 101"));
        let ended = deploy_canary(&up, &version, &near, "10,50,100", "10s", &[]).await;
        let outcomes = load.finish().await;
        let checks: Vec<String> = ended["canary"]["checks"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|c| c["name"] == "p95 latency")
            .map(|c| {
                format!(
                    "canary {:.1} ms vs stable {:.1} ms, p = {:.1e}",
                    c["canary"].as_f64().unwrap_or_default(),
                    c["stable"].as_f64().unwrap_or_default(),
                    c["p_value"].as_f64().unwrap_or(1.0)
                )
            })
            .collect();
        println!(
            "3 % slower, round {}: {} ({} requests, {} failed); last p95 check: {checks:?}",
            round + 1,
            ended["phase"],
            outcomes.len(),
            failures(&outcomes, "load")
        );
        if ended["phase"] == "standby" {
            shopfast(&up, &["rollout", "promote", "products"]).await;
            wait_for_phase(&up, "products", &["succeeded"], Duration::from_secs(60)).await;
            stable = version;
        } else {
            false_rollbacks += 1;
            wait_for_phase(&up, "products", &["rolled_back"], Duration::from_secs(60)).await;
        }
    }
    println!("3 % slower: {false_rollbacks} false rollbacks in {rounds} rounds");
}
