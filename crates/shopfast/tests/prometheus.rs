//! A real Prometheus server (apt `prometheus`) configured with
//! `deploy/prometheus/prometheus.yml` finds every instance through the
//! registry's HTTP service discovery and scrapes it.
#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

mod support;

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::Value;
use support::{Proc, eventually};

const CONFIG: &str = include_str!("../../../deploy/prometheus/prometheus.yml");
const RULES: &str = include_str!("../../../deploy/prometheus/rules.yml");
const DEPLOY: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../deploy");

struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_discovers_and_scrapes_every_instance() {
    let Some(binary) =
        ["/usr/bin/prometheus", "/usr/local/bin/prometheus"].into_iter().find(|p| std::path::Path::new(p).exists())
    else {
        assert!(!kit::testing::running_in_ci(), "prometheus is required in CI (apt-get install prometheus)");
        eprintln!("SKIPPED: no prometheus binary (apt-get install prometheus)");
        return;
    };
    let data = tempfile::tempdir().unwrap();
    // As `shopfast up` runs it: the registry over TLS, certificates in <data>/tls.
    let tls_dir = data.path().join("tls");
    kit_tls::ensure_dev_certs(&tls_dir, &["registry", "users", "products"]).unwrap();
    let tls = tls_dir.to_str().unwrap();
    let registry = Proc::start(&[
        "registry",
        "--addr",
        "127.0.0.1:0",
        "--heartbeat-interval-ms",
        "500",
        "--ttl-ms",
        "5000",
        "--drain-grace-ms",
        "1000",
        "--tls-dir",
        tls,
    ]);
    let url = format!("https://{}", registry.addr("addr"));
    let _users = Proc::service("users", data.path(), &url, &["--tls-dir", tls]);
    let _products = Proc::service("products", data.path(), &url, &["--meta", "version=v1", "--tls-dir", tls]);

    let config = CONFIG
        .replace("127.0.0.1:8080", &registry.addr("addr"))
        .replace("../../data/tls/ca.pem", &tls_dir.join("ca.pem").display().to_string())
        .replace("5s", "1s");
    let config_path = data.path().join("prometheus.yml");
    std::fs::write(&config_path, config).unwrap();
    std::fs::write(data.path().join("rules.yml"), RULES).unwrap();
    let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let prometheus = KillOnDrop(
        Command::new(binary)
            .arg(format!("--config.file={}", config_path.display()))
            .arg(format!("--storage.tsdb.path={}", data.path().join("tsdb").display()))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );

    let api = format!("http://127.0.0.1:{port}/api/v1/targets");
    let last = std::sync::Arc::new(std::sync::Mutex::new(Value::Null));
    eventually(Duration::from_secs(60), "prometheus scrapes users, products and the registry", || {
        let (api, last) = (api.clone(), last.clone());
        async move {
            let Ok(response) = reqwest::get(&api).await else { return false };
            let Ok(body) = response.json::<Value>().await else { return false };
            let targets = body["data"]["activeTargets"].as_array().cloned().unwrap_or_default();
            *last.lock().unwrap() = body;
            let up = |job: &str| targets.iter().any(|t| t["labels"]["job"] == job && t["health"] == "up");
            up("users") && up("products") && up("shopfast-registry")
        }
    })
    .await;
    let last = last.lock().unwrap().clone();
    let targets = last["data"]["activeTargets"].as_array().unwrap();
    let products = targets.iter().find(|t| t["labels"]["job"] == "products").unwrap();
    assert_eq!(products["labels"]["meta_version"], "v1", "registry metadata becomes labels");
    // The recording and alert rules are loaded.
    let rules: Value =
        reqwest::get(format!("http://127.0.0.1:{port}/api/v1/rules")).await.unwrap().json().await.unwrap();
    let groups: Vec<&str> =
        rules["data"]["groups"].as_array().unwrap().iter().filter_map(|g| g["name"].as_str()).collect();
    assert!(groups.contains(&"shopfast-red") && groups.contains(&"shopfast-alerts"), "{rules}");
    drop(prometheus);
}

/// The config, the rules and the rules' own unit tests (alerts that must and
/// must not fire), as promtool checks them.
#[test]
fn promtool_accepts_the_config_and_the_rules_and_their_tests_pass() {
    let Some(promtool) =
        ["/usr/bin/promtool", "/usr/local/bin/promtool"].into_iter().find(|p| std::path::Path::new(p).exists())
    else {
        assert!(!kit::testing::running_in_ci(), "promtool is required in CI (apt-get install prometheus)");
        eprintln!("SKIPPED: no promtool (apt-get install prometheus)");
        return;
    };
    for args in [
        vec!["check", "config", "prometheus/prometheus.yml"],
        vec!["check", "rules", "prometheus/rules.yml"],
        vec!["test", "rules", "prometheus/rules_test.yml"],
    ] {
        let out = Command::new(promtool).args(&args).current_dir(DEPLOY).output().unwrap();
        let report = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert!(out.status.success(), "promtool {}: {report}", args.join(" "));
    }
    // The Grafana dashboard is JSON whose panels query Prometheus.
    let dashboard: Value =
        serde_json::from_str(&std::fs::read_to_string(format!("{DEPLOY}/grafana/shopfast.json")).unwrap()).unwrap();
    let panels = dashboard["panels"].as_array().unwrap();
    assert!(panels.iter().filter(|p| p["targets"].as_array().is_some_and(|t| !t.is_empty())).count() >= 10);
}
