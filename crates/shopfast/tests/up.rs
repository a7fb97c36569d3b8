//! `shopfast up` as a user runs it: the whole stack from one command, a status
//! table, logs per child, and an orderly stop on Ctrl-C.
#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

mod support;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use support::SHOPFAST;

#[test]
fn up_runs_the_stack_and_stops_it_in_order() {
    let data = tempfile::tempdir().unwrap();
    let mut up = Command::new(SHOPFAST)
        .args(["up", "--ephemeral", "--quiet", "--replicas", "products=3", "--data-dir"])
        .arg(data.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = BufReader::new(up.stdout.take().unwrap()).lines();
    let started = Instant::now();
    let registry_url = loop {
        let line = stdout.next().expect("up exited before it was ready").unwrap();
        if let Some(url) = line.strip_prefix("shopfast is up. Registry: ") {
            break url.trim().to_string();
        }
        assert!(started.elapsed() < Duration::from_secs(60), "not up within a minute");
    };
    let mut table = Vec::new();
    for line in stdout.by_ref() {
        let line = line.unwrap();
        if line.starts_with("Logs:") {
            break;
        }
        table.push(line);
    }
    let rows = |name: &str| table.iter().filter(|l| l.starts_with(name)).count();
    assert_eq!((rows("products"), rows("users"), rows("payments"), rows("orders")), (3, 1, 1, 1), "{table:#?}");
    assert!(table.iter().all(|l| !l.starts_with("products") || l.contains("healthy")), "{table:#?}");

    let tls_dir = data.path().join("tls");
    let status_args = ["status", "--registry-url", &registry_url, "--tls-dir", tls_dir.to_str().unwrap()];
    let status = Command::new(SHOPFAST).args(status_args).output().unwrap();
    assert!(status.status.success());
    let status = String::from_utf8(status.stdout).unwrap();
    assert_eq!(status.lines().filter(|l| l.starts_with("products")).count(), 3, "{status}");

    Command::new("kill").args(["-INT", &up.id().to_string()]).status().unwrap();
    let exit = up.wait().unwrap();
    assert!(exit.success(), "up exits cleanly");
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut up.stderr.take().unwrap(), &mut stderr).unwrap();
    for child in
        ["users-1", "products-1", "products-2", "products-3", "payments-1", "orders-1", "loadgen-1", "registry"]
    {
        assert!(
            stderr.contains(&format!("{child} stopped (exit status: 0)")),
            "{child} did not stop cleanly:\n{stderr}"
        );
        assert!(data.path().join("logs").join(format!("{child}.log")).exists());
    }
    let registry_stop = stderr.find("registry stopped").unwrap();
    assert!(stderr.find("products-1 stopped").unwrap() < registry_stop, "services stop before the registry");
    assert!(Command::new(SHOPFAST).args(status_args).output().unwrap().status.code() != Some(0));
}

#[test]
fn up_refuses_bad_flags() {
    for bad in [["--replicas", "nope=2"], ["--replicas", "products=0"], ["--replicas", "products"]] {
        let out = Command::new(SHOPFAST).arg("up").args(bad).arg("--ephemeral").output().unwrap();
        assert!(!out.status.success(), "{bad:?} accepted");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("replicas") || stderr.contains("key=value"), "{bad:?}: {stderr}");
    }
    // One embedded queue (its streams live in one process); a broker URL that is not Redis.
    for (bad, said) in [
        (["--replicas", "queue=2"], "the embedded queue is one process"),
        (["--redis-url", "http://127.0.0.1:6379"], "--redis-url must be a redis://"),
    ] {
        let data = tempfile::tempdir().unwrap();
        let out = Command::new(SHOPFAST)
            .arg("up")
            .args(bad)
            .arg("--ephemeral")
            .arg("--data-dir")
            .arg(data.path())
            .output()
            .unwrap();
        assert!(!out.status.success(), "{bad:?} accepted");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(said), "{bad:?}: {stderr}");
    }
}

/// A quiet `RUST_LOG` on `up` does not hide the lines it starts by.
#[test]
fn up_starts_with_a_quiet_log_level() {
    let data = tempfile::tempdir().unwrap();
    let up = support::Up::start(data.path(), &["--no-loadgen"], &[("RUST_LOG", "warn")]);
    assert!(up.console.is_some() && !up.registry.is_empty());
    let (clean, stderr) = up.stop();
    assert!(clean, "{stderr}");
}

/// The environment of a running process, as `NAME=value` entries.
fn environment_of(pid: u32) -> Vec<String> {
    let raw = std::fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
    raw.split(|b| *b == 0).map(|e| String::from_utf8_lossy(e).into_owned()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn up_restarts_a_dead_child_keeps_secrets_to_those_that_use_them_and_takes_its_children_along() {
    let data = tempfile::tempdir().unwrap();
    let up = support::Up::start(data.path(), &["--no-loadgen", "--no-console"], &[]);

    // Secrets are made once per data directory, owner-only, and each child
    // gets only its own: the card key reaches Payments alone, the token
    // secret Users and the gateway, never Products or Orders.
    use std::os::unix::fs::PermissionsExt;
    let card_key_file = data.path().join("secrets").join("card_key");
    assert_eq!(std::fs::metadata(&card_key_file).unwrap().permissions().mode() & 0o777, 0o600);
    let card_key = std::fs::read_to_string(&card_key_file).unwrap();
    let has = |service: &str, var: &str| {
        let pid = support::child_pids(data.path(), service)[0];
        environment_of(pid).iter().any(|e| e.starts_with(&format!("{var}=")))
    };
    assert!(has("payments", "SHOPFAST_PAYMENTS__CARD_KEY"));
    assert!(has("users", "SHOPFAST_USERS__TOKEN_SECRET") && has("gateway", "SHOPFAST_GATEWAY__TOKEN_SECRET"));
    for other in ["products", "orders", "users", "gateway"] {
        assert!(!has(other, "SHOPFAST_PAYMENTS__CARD_KEY"), "{other} has the card key");
    }
    for other in ["products", "orders", "payments"] {
        assert!(!has(other, "SHOPFAST_USERS__TOKEN_SECRET"), "{other} has the token secret");
        assert!(!has(other, "SHOPFAST_GATEWAY__TOKEN_SECRET"), "{other} has the token secret");
    }
    // Never on a command line, where `ps` shows it, nor in a variable's name.
    let ps = Command::new("ps").args(["-eo", "args"]).output().unwrap();
    assert!(!String::from_utf8_lossy(&ps.stdout).contains(card_key.trim()));
    for service in ["users", "products", "payments", "orders", "gateway"] {
        let pid = support::child_pids(data.path(), service)[0];
        let names: Vec<String> =
            environment_of(pid).iter().map(|e| e.split('=').next().unwrap_or("").to_string()).collect();
        assert!(
            names.iter().all(|n| !n.to_ascii_lowercase().contains(&up.api_key.to_ascii_lowercase())),
            "{service}: an API key in a variable's name: {names:?}"
        );
    }

    // A child killed with SIGKILL is restarted, on its ports, and says so in `shopfast status`.
    let products = support::child_pids(data.path(), "products")[0];
    let before = support::instances(&up, "products").await[0]["address"].clone();
    support::signal(products, "-KILL");
    let started = Instant::now();
    loop {
        let listed = support::instances(&up, "products").await;
        if listed.iter().any(|i| i["metadata"]["restarts"] == "1") {
            assert_eq!(listed[0]["address"], before, "the same address");
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(15), "products not restarted: {listed:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let tls_dir = up.tls_dir.to_str().unwrap();
    let status =
        Command::new(SHOPFAST).args(["status", "--registry-url", &up.registry, "--tls-dir", tls_dir]).output().unwrap();
    let status = String::from_utf8(status.stdout).unwrap();
    assert!(status.lines().any(|l| l.starts_with("products") && l.contains("restarts=1")), "{status}");

    // `up` killed with SIGKILL: its children go too (parent-death signal),
    // none is left holding a port.
    let mut children: Vec<u32> = ["users", "products", "payments", "orders", "gateway"]
        .iter()
        .flat_map(|s| support::child_pids(data.path(), s))
        .collect();
    let up_pid = up.pid().to_string();
    let registry = Command::new("pgrep").args(["-P", &up_pid, "-f", "shopfast registry"]).output().unwrap();
    children.extend(String::from_utf8_lossy(&registry.stdout).lines().filter_map(|l| l.trim().parse::<u32>().ok()));
    assert_eq!(children.len(), 6, "{children:?}");
    up.kill9();
    let started = Instant::now();
    while children.iter().any(|pid| std::path::Path::new(&format!("/proc/{pid}")).exists()) {
        assert!(started.elapsed() < Duration::from_secs(20), "orphans left: {children:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}
