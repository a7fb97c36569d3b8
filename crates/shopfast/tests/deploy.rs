//! Blue-green deploys against a running `shopfast up`, as an operator runs
//! them: `shopfast deploy`, `shopfast rollout status`, `shopfast rollback`,
//! under a steady open-loop load through the gateway that counts every
//! answer (any 5xx, connection error or timeout is a failure). A green that
//! fails its smoke suite, a green that is slow under real traffic, a
//! controller killed mid-deploy, a registry killed mid-deploy, and garbage.
#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

mod support;

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};
use support::rollouts::{
    Load, Outcome, Summary, failures, loadgen_key, policy, rollout, shopfast, versions, wait_for_phase,
};
use support::{Up, child_pids, eventually, signal};

/// Thresholds that CPU noise on a shared test box cannot trip; regressions
/// the tests plant (hundreds of ms) still do.
const CALM: &[&str] = &["--watch-secs", "3", "--standby-secs", "1", "--p95-tolerance", "3", "--p95-slack-ms", "50"];

/// `shopfast deploy` with the `CALM` settings that `extra` does not set itself.
fn deploy_args<'a>(service: &'a str, version: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec!["deploy", service, "--strategy", "blue-green", "--version", version];
    for pair in CALM.chunks(2) {
        if !extra.contains(&pair[0]) {
            args.extend_from_slice(pair);
        }
    }
    args.extend_from_slice(extra);
    args
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blue_green_switches_and_rolls_back_without_a_failed_request() {
    let _turn = support::rollouts::loaded_stack_turn().await;
    let data = tempfile::tempdir().unwrap();
    let up = Up::start(data.path(), &["--no-loadgen", "--no-console"], &[]);
    let blue = versions(&up, "products").await;
    assert_eq!(blue.len(), 1, "{blue:?}");
    let load = Load::start(&up, &loadgen_key(data.path()), 200).await;

    // A switch: green started beside blue, smoke-tested, all traffic moved.
    let out = shopfast(&up, &deploy_args("products", "v2", &["--replicas", "2"])).await;
    assert!(out.status.success());
    let printed = String::from_utf8_lossy(&out.stdout);
    for step in ["pinned blue", "started green", "smoke passed", "switched to green", "window passed", "stopped"] {
        assert!(printed.contains(step), "{step} missing from:\n{printed}");
    }
    let now = policy(&up, "products").await;
    assert_eq!(now["weights"], json!({ "v2": 100 }), "{now:#}");
    eventually(Duration::from_secs(20), "blue retired", || async { versions(&up, "products").await == ["v2"] }).await;
    // The gateway's view: the live weights, and calls counted by the version that answered.
    let gateway = reqwest::get(format!("{}/metrics", up.gateway)).await.unwrap().text().await.unwrap();
    let weight = support::sample(&gateway, "client_traffic_weight_percent", r#"version="v2""#);
    assert_eq!(weight, Some(100.0), "{gateway}");
    let by_version = support::sample(&gateway, "grpc_client_requests_total", r#"version="v2",outcome="ok""#);
    let client_lines: Vec<&str> = gateway.lines().filter(|l| l.starts_with("grpc_client_requests_total")).collect();
    assert!(by_version.is_some_and(|n| n > 0.0), "{client_lines:#?}");

    // A rollback on request while v3 is watched: back to v2 at once.
    let out = shopfast(&up, &deploy_args("products", "v3", &["--watch-secs", "120", "--detach"])).await;
    assert!(out.status.success());
    wait_for_phase(&up, "products", &["watching"], Duration::from_secs(60)).await;
    let out = shopfast(&up, &["rollback", "products", "--reason", "operator changed their mind"]).await;
    assert!(out.status.success());
    // Back at once, in the rollback's own request (v3 leaves the policy once stopped).
    assert_eq!(policy(&up, "products").await["weights"]["v2"], 100);
    let ended = wait_for_phase(&up, "products", &["rolled_back"], Duration::from_secs(30)).await;
    assert_eq!(ended["cause"], "requested", "{ended:#}");
    assert!(
        ended["reason"].as_str().unwrap().contains("operator changed their mind"),
        "the operator's words kept: {ended:#}"
    );
    eventually(Duration::from_secs(20), "green retired", || async { versions(&up, "products").await == ["v2"] }).await;

    // A green that is slow under real traffic (it passes the smoke suite,
    // only warned about) is rolled back automatically in the window.
    let slow = data.path().join("slow.toml");
    std::fs::write(
        &slow,
        // (Shedding off: this green is meant to be slow, not to refuse.)
        "[products.shedding]\nenabled = false\n[products.faults]\nenabled = true\n[[products.faults.rules]]\n\
         method = \"/shopfast.products.v1.ProductService/GetProduct\"\nlatency_ms = 150\n",
    )
    .unwrap();
    let slow_arg = format!("--arg={}", slow.display());
    let out = shopfast(
        &up,
        &deploy_args("products", "v4", &["--watch-secs", "60", "--min-requests", "30", "--arg=--config", &slow_arg]),
    )
    .await;
    assert!(!out.status.success(), "a slow green must not succeed");
    let ended = rollout(&up, "products").await;
    assert_eq!(ended["phase"], "rolled_back", "{ended:#}");
    assert_eq!(ended["cause"], "regressed", "rolled back automatically: {ended:#}");
    assert_eq!(policy(&up, "products").await["weights"], json!({ "v2": 100 }));

    let outcomes = load.finish().await;
    assert_eq!(failures(&outcomes, "load across switch, rollback and automatic rollback"), 0);
    assert!(outcomes.len() > 1_000, "the load ran: {}", outcomes.len());

    // The record: status from the CLI, events in the metrics.
    let out = shopfast(&up, &["rollout", "status", "products"]).await;
    assert!(String::from_utf8_lossy(&out.stdout).contains("rolled_back"));
    let metrics =
        up.registry_http().get(format!("{}/metrics", up.deployer)).send().await.unwrap().text().await.unwrap();
    for event in ["started", "switched", "succeeded", "rolled_back"] {
        let counted = metrics.lines().any(|l| {
            l.starts_with("deploy_events_total{")
                && l.contains(r#"service="products""#)
                && l.contains(&format!(r#"event="{event}""#))
        });
        assert!(counted, "{event}: {metrics}");
    }
    support::promtool_accepts(&metrics);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_green_never_gets_users_and_deploys_survive_crashes_and_garbage() {
    let _turn = support::rollouts::loaded_stack_turn().await;
    let data = tempfile::tempdir().unwrap();
    let up = Up::start(data.path(), &["--no-loadgen", "--no-console"], &[]);
    let blue = versions(&up, "products").await.remove(0);
    let load = Load::start(&up, &loadgen_key(data.path()), 100).await;
    let operator = up.registry_http();
    let rollouts = format!("{}/v1/rollouts", up.deployer);

    // Garbage: clear errors, nothing started.
    let bad: &[(Value, &str)] = &[
        (json!({ "service": "nope", "strategy": "blue-green", "version": "v2" }), "service must be one of"),
        (json!({ "service": "products", "strategy": "blue-green", "version": "v 2" }), "version must be"),
        (json!({ "service": "products", "strategy": "yolo", "version": "v2" }), "strategy"),
        (json!({ "service": "products", "strategy": "blue-green", "version": "v2", "replicas": 99 }), "replicas"),
        (json!({ "service": "products", "strategy": "blue-green", "version": &blue }), "already serves"),
        (json!({ "service": "products", "strategy": "blue-green", "version": "v2", "extra": 1 }), "unknown field"),
    ];
    for (body, expected) in bad {
        let response = operator.post(&rollouts).json(body).send().await.unwrap();
        let status = response.status();
        let text = response.text().await.unwrap();
        assert!(status == StatusCode::BAD_REQUEST || status == StatusCode::CONFLICT, "{body}: {status} {text}");
        assert!(text.contains(expected), "{body}: {text}");
    }
    let response = operator.post(&rollouts).body("{not json").header("content-type", "application/json").send().await;
    assert_eq!(response.unwrap().status(), StatusCode::BAD_REQUEST);
    let rollback = format!("{}/v1/services/products/rollback", up.deployer);
    assert_eq!(operator.post(&rollback).send().await.unwrap().status(), StatusCode::CONFLICT, "nothing to roll back");
    // Without the operator's certificate: may read, may not deploy.
    let stranger = up.client_as(None);
    let body = json!({ "service": "products", "strategy": "blue-green", "version": "v2" });
    assert_eq!(stranger.post(&rollouts).json(&body).send().await.unwrap().status(), StatusCode::FORBIDDEN);
    assert_eq!(stranger.get(&rollouts).send().await.unwrap().status(), StatusCode::OK);
    for (path, status) in [("/v1/rollouts?limit=abc", 400), ("/v1/rollouts?limit=0", 400), ("/v1/rollouts/nope", 404)] {
        let response = operator.get(format!("{}{path}", up.deployer)).send().await.unwrap();
        assert_eq!(response.status().as_u16(), status, "{path}");
    }
    control_api_refuses_strangers_and_garbage(&up, data.path()).await;

    // A binary that is not there: refused by the supervisor, the rollout aborted.
    let out = shopfast(&up, &deploy_args("products", "v2", &["--binary", "/nonexistent/shopfast"])).await;
    assert!(!out.status.success());
    let refused = rollout(&up, "products").await;
    assert_eq!((&refused["phase"], &refused["cause"]), (&json!("aborted"), &json!("start_failed")), "{refused:#}");
    assert_eq!(versions(&up, "products").await, std::slice::from_ref(&blue));

    // A green whose orders fail: the smoke suite catches it, no user ever reaches it.
    let faulty = data.path().join("faulty.toml");
    std::fs::write(
        &faulty,
        "[products.faults]\nenabled = true\n[[products.faults.rules]]\n\
         method = \"/shopfast.products.v1.ProductService/ReserveInventory\"\nerror_rate = 1.0\nerror_code = \"INTERNAL\"\n",
    )
    .unwrap();
    let faulty_arg = format!("--arg={}", faulty.display());
    let out = shopfast(&up, &deploy_args("products", "v-bad", &["--arg=--config", &faulty_arg])).await;
    assert!(!out.status.success());
    let ended = rollout(&up, "products").await;
    assert_eq!(ended["phase"], "aborted", "{ended:#}");
    assert_eq!(ended["cause"], "validation_failed", "{ended:#}");
    let steps = ended["steps"].to_string();
    assert!(!steps.contains("switched to green"), "{ended:#}");
    assert_eq!(policy(&up, "products").await["weights"], json!({ &blue: 100 }));
    eventually(Duration::from_secs(20), "the bad green stopped", || async {
        versions(&up, "products").await == [blue.clone()]
    })
    .await;

    // One deploy at a time per service; the controller killed mid-deploy
    // comes back (up restarts it), resumes, and the deploy finishes.
    let out = shopfast(&up, &deploy_args("products", "v2", &["--watch-secs", "8", "--detach"])).await;
    assert!(out.status.success());
    let second = operator.post(&rollouts).json(&body).send().await.unwrap();
    assert_eq!(second.status(), StatusCode::CONFLICT, "{}", second.text().await.unwrap());
    wait_for_phase(&up, "products", &["validating", "smoke"], Duration::from_secs(30)).await;
    let pids = child_pids(data.path(), "deployer");
    assert_eq!(pids.len(), 1, "{pids:?}");
    signal(pids[0], "-KILL");
    let watching = wait_for_phase(&up, "products", &["watching"], Duration::from_secs(60)).await;
    // And the registry killed while green is watched: clients keep the last
    // policy they saw; up restarts it; the deploy goes on.
    let pattern = format!("shopfast registry .*{}", data.path().join("registry-policies.json").display());
    let found = std::process::Command::new("pgrep").args(["-f", &pattern]).output().unwrap();
    let registry: Vec<u32> =
        String::from_utf8_lossy(&found.stdout).lines().filter_map(|l| l.trim().parse().ok()).collect();
    assert_eq!(registry.len(), 1);
    signal(registry[0], "-KILL");
    let out = shopfast(&up, &["rollout", "status", "products", "--watch"]).await;
    assert!(out.status.success(), "{watching:#}");
    assert_eq!(rollout(&up, "products").await["phase"], "succeeded");
    eventually(Duration::from_secs(20), "v2 alone", || async { versions(&up, "products").await == ["v2"] }).await;

    let outcomes = load.finish().await;
    assert_eq!(failures(&outcomes, "load across aborts, controller and registry kills"), 0);
}

/// up's control API (it starts programs): only the operator and the deploy
/// controller, clear errors for garbage, nothing started by it.
async fn control_api_refuses_strangers_and_garbage(up: &Up, data: &std::path::Path) {
    let pid = child_pids(data, "deployer")[0];
    let cmdline = std::fs::read_to_string(format!("/proc/{pid}/cmdline")).unwrap();
    let args: Vec<&str> = cmdline.split('\0').collect();
    let at = args.iter().position(|a| *a == "--supervisor-url").unwrap();
    let instances = format!("{}/v1/instances", args[at + 1]);
    // No certificate: the handshake itself fails. Another service's: refused.
    let anonymous = up.client_as(None);
    assert!(anonymous.get(&instances).send().await.is_err(), "a client without a certificate got through");
    let gateway = up.client_as(Some("gateway"));
    let response = gateway.get(&instances).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::FORBIDDEN);
    let operator = up.registry_http();
    let listed: Value = operator.get(&instances).send().await.unwrap().json().await.unwrap();
    let before = listed["instances"].as_array().unwrap().len();
    assert!(before >= 4, "{listed:#}");
    let bad: &[(Value, &str)] = &[
        (json!({ "service": "gateway", "version": "v2", "key": "k" }), "service must be one of"),
        (json!({ "service": "products", "version": "../v2", "key": "k" }), "version must be"),
        (json!({ "service": "products", "version": "v2", "key": "k", "replicas": 0 }), "replicas"),
        (json!({ "service": "products", "version": "v2", "key": "k", "track": "Green!" }), "track"),
        (json!({ "service": "products", "version": "v2", "key": "" }), "key"),
        (json!({ "service": "products", "version": "v2" }), "key"),
        (json!({ "service": "products", "version": "v2", "key": "k", "args": ["a\u{0}b"] }), "args"),
    ];
    for (body, expected) in bad {
        let response = operator.post(&instances).json(body).send().await.unwrap();
        let status = response.status();
        let text = response.text().await.unwrap();
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}: {text}");
        assert!(text.contains(expected), "{body}: {text}");
    }
    let response = operator.post(&instances).body("[1,").header("content-type", "application/json").send().await;
    assert_eq!(response.unwrap().status(), StatusCode::BAD_REQUEST);
    assert_eq!(operator.delete(&instances).send().await.unwrap().status(), StatusCode::BAD_REQUEST);
    let gone = operator.delete(format!("{instances}?service=products&version=never-ran")).send().await.unwrap();
    assert_eq!(gone.json::<Value>().await.unwrap()["stopped"], json!([]));
    let after: Value = operator.get(&instances).send().await.unwrap().json().await.unwrap();
    assert_eq!(after["instances"].as_array().unwrap().len(), before, "garbage started or stopped something");
}

/// Where instances are started by someone else (compose, Kubernetes), a
/// deploy waits for instances of the version to register, then goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deploy_waits_for_instances_someone_else_starts() {
    let data = tempfile::tempdir().unwrap();
    let up = Up::start(data.path(), &["--no-loadgen"], &[]);
    let out = shopfast(&up, &deploy_args("products", "v9", &["--no-start", "--detach"])).await;
    assert!(out.status.success());
    let waiting = wait_for_phase(&up, "products", &["validating"], Duration::from_secs(20)).await;
    assert!(!waiting["steps"].to_string().contains("started green"), "{waiting:#}");
    // Someone else starts v9, as a deploy pipeline would.
    let tls = up.tls_dir.to_str().unwrap();
    let green = support::Proc::start(&[
        "products",
        "--grpc-addr",
        "127.0.0.1:0",
        "--admin-addr",
        "127.0.0.1:0",
        "--data-dir",
        data.path().to_str().unwrap(),
        "--registry-url",
        &up.registry,
        "--tls-dir",
        tls,
        "--version",
        "v9",
        "--track",
        "green",
    ]);
    let out = shopfast(&up, &["rollout", "status", "products", "--watch"]).await;
    assert!(out.status.success());
    assert_eq!(policy(&up, "products").await["weights"], json!({ "v9": 100 }));
    eventually(Duration::from_secs(20), "v9 alone", || async { versions(&up, "products").await == ["v9"] }).await;
    // The console's deployments panel: versions with their share, the rollout and its steps.
    let console = up.console.clone().unwrap();
    let panel: Value = reqwest::get(format!("{console}/api/deployments")).await.unwrap().json().await.unwrap();
    let rows = panel["versions"].as_array().unwrap();
    let v9 = rows.iter().find(|r| r["service"] == "products" && r["version"] == "v9").unwrap();
    assert_eq!((v9["weight"].as_u64(), v9["tracks"].clone()), (Some(100), json!(["green"])), "{panel:#}");
    assert_eq!(panel["rollouts"][0]["phase"], "succeeded", "{panel:#}");
    assert!(panel["rollouts"][0]["steps"].as_array().unwrap().len() > 5);
    drop(green);
}

/// The commands' garbage: clear errors, before anything is asked of anyone.
#[test]
fn deploy_commands_refuse_garbage_clearly() {
    let run = |args: &[&str], env: &[(&str, &str)]| {
        let out = std::process::Command::new(support::SHOPFAST).args(args).envs(env.iter().copied()).output().unwrap();
        assert!(!out.status.success(), "{args:?} succeeded");
        String::from_utf8_lossy(&out.stderr).to_string()
    };
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_str().unwrap();
    let no_key = run(&["deployer", "--addr", "127.0.0.1:0", "--data-dir", data, "--insecure"], &[]);
    assert!(no_key.contains("no api_key"), "{no_key}");
    let no_certs = ["--deployer-url", "https://127.0.0.1:1", "--tls-dir", "/nonexistent/tls"];
    let stderr = run(&[&["deploy", "products", "--version", "v2"][..], &no_certs].concat(), &[]);
    assert!(stderr.contains("certificates"), "{stderr}");
    let stderr = run(&["deploy", "products", "--version", "v2", "--deployer-url", "http://127.0.0.1:1"], &[]);
    assert!(stderr.contains("cannot reach the deploy controller"), "{stderr}");
    let stderr = run(&["deploy", "products", "--version", "v2", "--replicas", "many"], &[]);
    assert!(stderr.contains("--replicas"), "{stderr}");
    let stderr = run(&["rollout", "status"], &[]);
    assert!(stderr.contains("SERVICE") || stderr.contains("<SERVICE>"), "{stderr}");
    let stderr = run(&["rollback"], &[]);
    assert!(stderr.contains("SERVICE") || stderr.contains("<SERVICE>"), "{stderr}");
}

/// The answers sent in `[from, to)` (wall-clock ms): count, failures, p50/p99.
fn window(outcomes: &[Outcome], from: i64, to: i64) -> String {
    let s = Summary::of(outcomes.iter().filter(|o| (from..to).contains(&o.wall_ms)));
    let secs = ((to - from) as f64 / 1e3).max(0.001);
    format!(
        "{:>7} {:>7.0} {:>6} {:>8.1} {:>8.1}",
        s.answers,
        s.answers as f64 / secs,
        s.failed.len(),
        s.p50_ms,
        s.p99_ms
    )
}

/// When the rollout recorded `event` (wall-clock ms).
fn step_at(rollout: &Value, event: &str) -> i64 {
    rollout["steps"]
        .as_array()
        .and_then(|steps| steps.iter().find(|s| s["event"] == event))
        .and_then(|s| s["at_ms"].as_i64())
        .unwrap_or_else(|| panic!("no step {event:?} in {rollout:#}"))
}

/// The figures of scripts/bench-bluegreen.sh: a switch and a rollback under
/// BENCH_RATE requests/s (default 1000; one in BENCH_ORDERS_EVERY is an
/// order, default 20), every answer counted, p50/p99 before, during (the two
/// seconds around the policy change) and after. Run it from the script.
#[tokio::test(flavor = "multi_thread")]
#[ignore = "a benchmark: scripts/bench-bluegreen.sh runs it"]
async fn bench_blue_green_under_load() {
    let env = |name: &str, default: u64| std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default);
    let (rate, orders_every) = (env("BENCH_RATE", 1_000) as u32, env("BENCH_ORDERS_EVERY", 20));
    let data = tempfile::tempdir().unwrap();
    let up = Up::start(data.path(), &["--no-loadgen", "--no-console"], &[]);
    let load = Load::start_mixed(&up, &loadgen_key(data.path()), rate, orders_every).await;
    tokio::time::sleep(Duration::from_secs(10)).await;
    let args = ["deploy", "products", "--version", "v2", "--watch-secs", "10", "--standby-secs", "5"];
    assert!(shopfast(&up, &args).await.status.success());
    let switched = rollout(&up, "products").await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    let args = ["deploy", "products", "--version", "v3", "--watch-secs", "300", "--detach"];
    assert!(shopfast(&up, &args).await.status.success());
    wait_for_phase(&up, "products", &["watching"], Duration::from_secs(120)).await;
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert!(shopfast(&up, &["rollback", "products", "--reason", "bench"]).await.status.success());
    let rolled = wait_for_phase(&up, "products", &["rolled_back"], Duration::from_secs(60)).await;
    tokio::time::sleep(Duration::from_secs(10)).await;
    let outcomes = load.finish().await;
    let total_failed = failures(&outcomes, "the whole run");
    println!("\nrate {rate}/s, one order in {orders_every}; {} answers, {total_failed} failed", outcomes.len());
    println!("{:<22} {:>7} {:>7} {:>6} {:>8} {:>8}", "window", "answers", "req/s", "failed", "p50 ms", "p99 ms");
    for (what, rollout, event) in
        [("switch", &switched, "switched to green"), ("rollback", &rolled, "switched back to blue")]
    {
        let at = step_at(rollout, event);
        for (name, from, to) in [
            ("before", at - 5_000, at - 1_000),
            ("during (±1 s)", at - 1_000, at + 1_000),
            ("after", at + 1_000, at + 5_000),
        ] {
            println!("{:<22} {}", format!("{what} {name}"), window(&outcomes, from, to));
        }
    }
    assert_eq!(total_failed, 0);
}
