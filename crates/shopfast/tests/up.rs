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

    let status = Command::new(SHOPFAST).args(["status", "--registry-url", &registry_url]).output().unwrap();
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
    assert!(
        Command::new(SHOPFAST).args(["status", "--registry-url", &registry_url]).output().unwrap().status.code()
            != Some(0)
    );
}

#[test]
fn up_refuses_bad_flags() {
    for bad in [["--replicas", "nope=2"], ["--replicas", "products=0"], ["--replicas", "products"]] {
        let out = Command::new(SHOPFAST).arg("up").args(bad).arg("--ephemeral").output().unwrap();
        assert!(!out.status.success(), "{bad:?} accepted");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("replicas") || stderr.contains("key=value"), "{bad:?}: {stderr}");
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
