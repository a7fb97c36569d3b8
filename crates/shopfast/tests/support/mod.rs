//! Real processes of the `shopfast` binary for tests: start one, learn its
//! addresses from its `ready` log line, SIGTERM or SIGKILL it.
#![allow(dead_code)] // each test binary uses its own part of this

pub mod rollouts;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::Value;

pub const SHOPFAST: &str = env!("CARGO_BIN_EXE_shopfast");

/// The binary processes are started from: `SHOPFAST_BIN` when set (to run a
/// test against another build — an A/B of a baseline), else this build's.
pub fn shopfast_bin() -> String {
    std::env::var("SHOPFAST_BIN").ok().filter(|b| !b.is_empty()).unwrap_or_else(|| SHOPFAST.to_string())
}
/// The card key test processes of Payments seal cards with (32 bytes,
/// base64): Payments has no built-in one and refuses to start without it.
pub const TEST_CARD_KEY: &str = "dGVzdCBjYXJkIGtleSwgMzIgYnl0ZXMgbG9uZyEhISE=";

/// The `insecure` setting of every process, as the environment sets it.
const PLAIN_TEXT: [&str; 7] = [
    "SHOPFAST_REGISTRY__TLS__INSECURE",
    "SHOPFAST_USERS__TLS__INSECURE",
    "SHOPFAST_PRODUCTS__TLS__INSECURE",
    "SHOPFAST_PAYMENTS__TLS__INSECURE",
    "SHOPFAST_ORDERS__TLS__INSECURE",
    "SHOPFAST_GATEWAY__TLS__INSECURE",
    "SHOPFAST_CONSOLE__TLS__INSECURE",
];

/// A child process; killed if the test ends without stopping it.
pub struct Proc {
    pub child: Child,
    /// The `ready` log line: `grpc_addr`/`admin_addr` for services, `addr` for the registry.
    pub ready: Value,
    lines: mpsc::Receiver<Value>,
}

impl Proc {
    pub fn start(args: &[&str]) -> Self {
        Self::try_start(args).unwrap_or_else(|| panic!("shopfast {args:?} exited before it was ready"))
    }

    /// Starts it and waits for its `ready` line; `None` if it exits first
    /// (say, a port picked for it was taken meanwhile).
    pub fn try_start(args: &[&str]) -> Option<Self> {
        let mut child = Command::new(shopfast_bin())
            .args(args)
            .env("SHOPFAST_PAYMENTS__CARD_KEY", TEST_CARD_KEY)
            // Users and the gateway have no built-in token secret either.
            .env("SHOPFAST_USERS__TOKEN_SECRET", kit::testing::TEST_TOKEN_SECRET)
            .env("SHOPFAST_GATEWAY__TOKEN_SECRET", kit::testing::TEST_TOKEN_SECRET)
            // Processes a test starts one by one talk plain text, unless it
            // gives them certificates (`--tls-dir`);
            // `shopfast up` runs with mutual TLS, and tests/identity.rs tests it.
            .envs(PLAIN_TEXT.iter().filter(|_| !args.contains(&"--tls-dir")).map(|name| (*name, "true")))
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
        proc.ready = proc.try_wait_for_message("ready", Duration::from_secs(30))?;
        Some(proc)
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
        self.try_wait_for_message(message, within)
            .unwrap_or_else(|| panic!("no {message:?} log line within {within:?}"))
    }

    /// The first log line with `message`; `None` if the process exited or
    /// `within` passed first.
    pub fn try_wait_for_message(&mut self, message: &str, within: Duration) -> Option<Value> {
        let deadline = Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) if line["message"] == message => return Some(line),
                Ok(_) => {}
                Err(_) => return None,
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
    /// The console's URL, unless started with `--no-console`.
    pub console: Option<String>,
    pub registry: String,
    /// The deploy controller's URL.
    pub deployer: String,
    /// Where `up` keeps its certificates (`<data>/tls`).
    pub tls_dir: std::path::PathBuf,
    stderr: Option<std::thread::JoinHandle<String>>,
}

impl Up {
    /// Starts it in `data` with `extra` flags and `env`, and reads its banner.
    pub fn start(data: &std::path::Path, extra: &[&str], env: &[(&str, &str)]) -> Self {
        let mut command = Command::new(SHOPFAST);
        command.args(["up", "--ephemeral", "--quiet"]).args(extra).arg("--data-dir").arg(data);
        // Several stacks start at once on two cores (and instrumented in CI):
        // more than `up`'s own minute, unless the test says otherwise.
        if !extra.contains(&"--ready-timeout-secs") {
            command.args(["--ready-timeout-secs", "150"]);
        }
        command.envs(env.iter().copied()).stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = command.spawn().expect("spawn shopfast up");
        let stderr = child.stderr.take().expect("stderr");
        let stderr = std::thread::spawn(move || std::io::read_to_string(stderr).unwrap_or_default());
        let mut stdout = BufReader::new(child.stdout.take().expect("stdout")).lines();
        let (mut gateway, mut api_key, mut loadgen, mut console) = (String::new(), String::new(), None, None);
        let (mut registry, mut deployer) = (String::new(), String::new());
        let started = Instant::now();
        loop {
            let Some(Ok(line)) = stdout.next() else {
                let said = stderr.join().unwrap_or_default();
                panic!(
                    "up exited before it was ready:\n{}",
                    said.lines().rev().take(30).collect::<Vec<_>>().join("\n")
                );
            };
            if let Some(rest) = line.strip_prefix("Gateway: ") {
                gateway = rest.split_whitespace().next().unwrap_or_default().to_string();
                api_key = rest.split("admin): ").nth(1).unwrap_or_default().trim().to_string();
            } else if let Some(rest) = line.strip_prefix("Loadgen: ") {
                loadgen = rest.split_whitespace().next().map(str::to_string);
            } else if let Some(rest) = line.strip_prefix("Console: ") {
                console = rest.split_whitespace().next().map(str::to_string);
            } else if let Some(rest) = line.strip_prefix("Deployer: ") {
                deployer = rest.split_whitespace().next().unwrap_or_default().to_string();
            } else if let Some(rest) = line.strip_prefix("shopfast is up. Registry: ") {
                registry = rest.trim().to_string();
            } else if line.starts_with("Logs:") {
                break;
            }
            assert!(started.elapsed() < Duration::from_secs(180), "not up within three minutes");
        }
        // Keep draining stdout so the child never blocks on a full pipe.
        std::thread::spawn(move || for _ in stdout {});
        let tls_dir = data.join("tls");
        Self { child, gateway, api_key, loadgen, console, registry, deployer, tls_dir, stderr: Some(stderr) }
    }

    /// An HTTP client that trusts the stack's CA and presents the operator's
    /// certificate (the registry is HTTPS, and writes need an identity).
    pub fn registry_http(&self) -> reqwest::Client {
        self.client_as(Some(kit_tls::OPERATOR))
    }

    /// An HTTP client that trusts the stack's CA and presents `identity`'s
    /// certificate from up's TLS directory (`None`: no certificate at all).
    pub fn client_as(&self, identity: Option<&str>) -> reqwest::Client {
        let read = |name: &str| std::fs::read(self.tls_dir.join(name)).expect("up's certificates");
        let ca = reqwest::Certificate::from_pem(&read("ca.pem")).expect("ca.pem");
        let builder = reqwest::Client::builder().add_root_certificate(ca);
        let builder = match identity {
            Some(identity) => {
                let pem = [read(&format!("{identity}.pem")), read(&format!("{identity}-key.pem"))].concat();
                builder.identity(reqwest::Identity::from_pem(&pem).expect("a certificate of up's"))
            }
            None => builder,
        };
        builder.build().expect("client")
    }

    /// The registry's client (`kit_client::discovery`), as the operator.
    pub fn registry_client(&self) -> kit_client::discovery::RegistryClient {
        let config = kit_tls::TlsConfig::in_dir(&self.tls_dir);
        let tls = kit_tls::Tls::from_config(&config, kit_tls::OPERATOR).expect("operator certificate");
        kit_client::discovery::RegistryClient::with_tls(&self.registry, tls)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILL of `up` alone: no orderly stop.
    pub fn kill9(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
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
    /// A test that failed still stops the whole stack: Ctrl-C lets `up` stop
    /// its children (in their own process groups, a SIGKILL of `up` alone
    /// would leave them running, load and all); SIGKILL only if it hangs.
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = Command::new("kill").args(["-INT", &self.child.id().to_string()]).status();
            let deadline = Instant::now() + Duration::from_secs(30);
            while Instant::now() < deadline && matches!(self.child.try_wait(), Ok(None)) {
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A customer of the shop, through the gateway: signed up and logged in.
#[derive(Clone)]
pub struct Shopper {
    pub http: reqwest::Client,
    pub gateway: String,
    /// None: the anonymous tier (limited by address).
    pub api_key: Option<String>,
    pub token: String,
    pub user_id: String,
}

impl Shopper {
    /// Signs up `email` with an API key and logs in.
    pub async fn sign_up(gateway: &str, api_key: &str, email: &str) -> Self {
        Self::register(gateway, Some(api_key), email).await
    }

    /// Signs up `email` without an API key (the anonymous tier) and logs in.
    pub async fn sign_up_anonymous(gateway: &str, email: &str) -> Self {
        Self::register(gateway, None, email).await
    }

    async fn register(gateway: &str, api_key: Option<&str>, email: &str) -> Self {
        let mut shopper = Self {
            http: reqwest::Client::new(),
            gateway: gateway.to_string(),
            api_key: api_key.map(str::to_string),
            token: String::new(),
            user_id: String::new(),
        };
        let password = "a long enough password 1";
        let signup = serde_json::json!({ "email": email, "password": password, "name": "Shopper" });
        let response = shopper.post("/v1/users").json(&signup).send().await.expect("sign up");
        let status = response.status();
        let user: Value = response.json().await.unwrap_or_default();
        assert!(status.is_success(), "sign up: {status} {user}");
        shopper.user_id = user["id"].as_str().expect("the new user's id").to_string();
        let login = serde_json::json!({ "email": email, "password": password });
        let token: Value =
            shopper.post("/v1/auth/login").json(&login).send().await.expect("log in").json().await.expect("token");
        shopper.token = token["accessToken"].as_str().expect("accessToken").to_string();
        shopper
    }

    /// A POST with the API key (if any) and no token.
    fn post(&self, path: &str) -> reqwest::RequestBuilder {
        let request = self.http.post(format!("{}{path}", self.gateway));
        match &self.api_key {
            Some(key) => request.header("x-api-key", key),
            None => request,
        }
    }

    /// A request with the API key (if any) and the shopper's token.
    pub fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let request = self.http.request(method, format!("{}{path}", self.gateway)).bearer_auth(&self.token);
        match &self.api_key {
            Some(key) => request.header("x-api-key", key),
            None => request,
        }
    }

    /// The id of a product in stock.
    pub async fn product_in_stock(&self) -> String {
        let page: Value = self
            .request(reqwest::Method::GET, "/v1/products?pageSize=20&inStockOnly=true")
            .send()
            .await
            .expect("products")
            .json()
            .await
            .expect("products page");
        page["products"][0]["id"].as_str().expect("a product in stock").to_string()
    }

    /// An order of one unit of `product_id` paid with `card`.
    pub fn order_of(product_id: &str, card: &str) -> Value {
        serde_json::json!({
            "items": [{ "productId": product_id, "quantity": "1" }],
            "paymentMethod": { "cardNumber": card, "expiryMonth": 12, "expiryYear": 2040, "cvc": "123" },
            "shippingAddress": { "line1": "1 Trace Way", "city": "Springfield", "countryCode": "US" },
        })
    }
}

/// A response's status, headers and JSON body; a body that is not JSON fails
/// the test, showing what came instead.
pub async fn json_reply(response: reqwest::Response) -> (reqwest::StatusCode, reqwest::header::HeaderMap, Value) {
    let status = response.status();
    let headers = response.headers().clone();
    let text = response.text().await.expect("a response body");
    let body = serde_json::from_str(&text).unwrap_or_else(|_| panic!("not JSON ({status}): {text}"));
    (status, headers, body)
}

/// `promtool check metrics` accepts the exposition (skipped without promtool, except in CI).
pub fn promtool_accepts(metrics: &str) {
    let Ok(mut child) = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
    else {
        assert!(!kit::testing::running_in_ci(), "promtool is missing (apt install prometheus)");
        eprintln!("promtool not installed; metrics format not checked");
        return;
    };
    use std::io::Write;
    child.stdin.take().unwrap().write_all(metrics.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    let report = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "promtool check metrics: {report}");
}

/// The pids of `shopfast <command>` children of an `up` whose data dir is `data`.
pub fn child_pids(data: &std::path::Path, command: &str) -> Vec<u32> {
    let pattern = format!("shopfast {command} .*--data-dir {}", data.display());
    let out = Command::new("pgrep").args(["-f", &pattern]).output().expect("pgrep");
    String::from_utf8_lossy(&out.stdout).lines().filter_map(|l| l.trim().parse().ok()).collect()
}

/// Sends `signal` (`-KILL`, `-STOP`, `-CONT`) to `pid`.
pub fn signal(pid: u32, signal: &str) {
    Command::new("kill").args([signal, &pid.to_string()]).status().expect("kill");
}

/// The value of the Prometheus sample `name{labels}` in `metrics` (labels as written, e.g. `service="orders"`).
pub fn sample(metrics: &str, name: &str, labels: &str) -> Option<f64> {
    metrics
        .lines()
        .filter(|l| !l.starts_with('#'))
        .find(|l| l.starts_with(&format!("{name}{{")) && l.contains(labels))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

/// The routable instances of `name` the registry of `up` lists, with their metadata.
pub async fn instances(up: &Up, name: &str) -> Vec<Value> {
    let url = format!("{}/v1/services/{name}", up.registry);
    let Ok(response) = up.registry_http().get(url).send().await else { return Vec::new() };
    let list: Value = response.json().await.unwrap_or_default();
    list["instances"].as_array().cloned().unwrap_or_default()
}

/// Runs headless Chromium on `url` with `extra` flags (`--dump-dom`,
/// `--screenshot=…`); its standard output. `None` without Chromium, which
/// fails instead in CI.
pub fn chromium(url: &str, extra: &[String]) -> Option<String> {
    let found = ["/usr/bin/chromium", "/usr/bin/chromium-browser"]
        .into_iter()
        .map(std::path::PathBuf::from)
        .find(|p| p.exists());
    let Some(chromium) = found else {
        assert!(!kit::testing::running_in_ci(), "chromium is required in CI (apt-get install chromium)");
        eprintln!("SKIPPED the browser part: no chromium (apt-get install chromium)");
        return None;
    };
    let profile = tempfile::tempdir().expect("a profile directory");
    let output = Command::new(&chromium)
        .args(["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run"])
        .args(["--disable-background-networking", "--disable-component-update", "--disable-sync"])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .args(["--window-size=1400,2400", "--virtual-time-budget=6000", "--run-all-compositor-stages-before-draw"])
        .args(extra)
        .arg(url)
        .output()
        .expect("run chromium");
    assert!(output.status.success(), "chromium: {}", String::from_utf8_lossy(&output.stderr));
    Some(String::from_utf8_lossy(&output.stdout).to_string())
}
