//! Real processes of the `shopfast` binary for tests: start one, learn its
//! addresses from its `ready` log line, SIGTERM or SIGKILL it.
#![allow(dead_code)] // each test binary uses its own part of this

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::Value;

pub const SHOPFAST: &str = env!("CARGO_BIN_EXE_shopfast");

/// A child process; killed if the test ends without stopping it.
pub struct Proc {
    pub child: Child,
    /// The `ready` log line: `grpc_addr`/`admin_addr` for services, `addr` for the registry.
    pub ready: Value,
    lines: mpsc::Receiver<Value>,
}

impl Proc {
    pub fn start(args: &[&str]) -> Self {
        let mut child = Command::new(SHOPFAST)
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn shopfast");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Ok(value) = serde_json::from_str::<Value>(&line) {
                    let _ = tx.send(value);
                }
            }
        });
        let mut proc = Self { child, ready: Value::Null, lines };
        proc.ready = proc.wait_for_message("ready", Duration::from_secs(30));
        proc
    }

    /// The registry with test timings, on `addr` (port 0 for a free one).
    pub fn registry(addr: &str, heartbeat_ms: u64, ttl_ms: u64, grace_ms: u64) -> Self {
        Self::start(&[
            "registry",
            "--addr",
            addr,
            "--heartbeat-interval-ms",
            &heartbeat_ms.to_string(),
            "--ttl-ms",
            &ttl_ms.to_string(),
            "--drain-grace-ms",
            &grace_ms.to_string(),
        ])
    }

    /// A service on free ports, registered with `registry_url`.
    pub fn service(name: &str, data_dir: &std::path::Path, registry_url: &str, extra: &[&str]) -> Self {
        let data_dir = data_dir.to_str().expect("utf-8 path");
        let mut args = vec![
            name,
            "--grpc-addr",
            "127.0.0.1:0",
            "--admin-addr",
            "127.0.0.1:0",
            "--data-dir",
            data_dir,
            "--registry-url",
            registry_url,
        ];
        args.extend_from_slice(extra);
        Self::start(&args)
    }

    pub fn addr(&self, field: &str) -> String {
        self.ready[field].as_str().unwrap_or_else(|| panic!("no {field} in {}", self.ready)).to_string()
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr("addr"))
    }

    pub fn wait_for_message(&mut self, message: &str, within: Duration) -> Value {
        let deadline = Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) if line["message"] == message => return line,
                Ok(_) => {}
                Err(_) => panic!("no {message:?} log line within {within:?}"),
            }
        }
    }

    fn signal(&self, signal: &str) {
        let pid = self.child.id().to_string();
        Command::new("kill").args([signal, &pid]).status().expect("kill");
    }

    /// SIGTERM; waits for the clean exit.
    pub fn terminate(mut self) -> std::process::ExitStatus {
        self.signal("-TERM");
        self.wait_for_message("stopped", Duration::from_secs(15));
        self.child.wait().expect("wait")
    }

    /// SIGKILL: no goodbye, no deregistration.
    pub fn kill9(mut self) {
        self.signal("-KILL");
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Polls `check` every 20 ms until it holds or `within` passes; returns how long it took.
pub async fn eventually<F, Fut>(within: Duration, what: &str, mut check: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let started = Instant::now();
    while started.elapsed() < within {
        if check().await {
            return started.elapsed();
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("{what}: not within {within:?}");
}

/// `shopfast up --ephemeral --quiet` as a user runs it; killed if the test
/// ends without stopping it.
pub struct Up {
    child: Child,
    pub gateway: String,
    /// The admin API key `up` prints.
    pub api_key: String,
    /// The traffic generator's control URL, unless started with `--no-loadgen`.
    pub loadgen: Option<String>,
    stderr: Option<std::thread::JoinHandle<String>>,
}

impl Up {
    /// Starts it in `data` with `extra` flags and `env`, and reads its banner.
    pub fn start(data: &std::path::Path, extra: &[&str], env: &[(&str, &str)]) -> Self {
        let mut command = Command::new(SHOPFAST);
        command.args(["up", "--ephemeral", "--quiet"]).args(extra).arg("--data-dir").arg(data);
        command.envs(env.iter().copied()).stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = command.spawn().expect("spawn shopfast up");
        let stderr = child.stderr.take().expect("stderr");
        let stderr = std::thread::spawn(move || std::io::read_to_string(stderr).unwrap_or_default());
        let mut stdout = BufReader::new(child.stdout.take().expect("stdout")).lines();
        let (mut gateway, mut api_key, mut loadgen) = (String::new(), String::new(), None);
        let started = Instant::now();
        loop {
            let line = stdout.next().expect("up exited before it was ready").expect("stdout line");
            if let Some(rest) = line.strip_prefix("Gateway: ") {
                gateway = rest.split_whitespace().next().unwrap_or_default().to_string();
                api_key = rest.split("admin): ").nth(1).unwrap_or_default().trim().to_string();
            } else if let Some(rest) = line.strip_prefix("Loadgen: ") {
                loadgen = rest.split_whitespace().next().map(str::to_string);
            } else if line.starts_with("Logs:") {
                break;
            }
            assert!(started.elapsed() < Duration::from_secs(60), "not up within a minute");
        }
        // Keep draining stdout so the child never blocks on a full pipe.
        std::thread::spawn(move || for _ in stdout {});
        Self { child, gateway, api_key, loadgen, stderr: Some(stderr) }
    }

    /// Ctrl-C, as a user stops it: whether it exited cleanly, and what it said on stderr.
    pub fn stop(mut self) -> (bool, String) {
        Command::new("kill").args(["-INT", &self.child.id().to_string()]).status().expect("kill");
        let clean = self.child.wait().expect("wait").success();
        let stderr = self.stderr.take().map(|t| t.join().unwrap_or_default()).unwrap_or_default();
        (clean, stderr)
    }
}

impl Drop for Up {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
