//! What the deploy tests share: an open-loop load through the gateway that
//! counts every answer, the operator's `shopfast` commands, and reads of the
//! controller's rollouts and the registry's policies.
use std::process::Output;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::Value;

use super::{SHOPFAST, Shopper, Up};

/// One answer of the load.
#[derive(Clone, Copy)]
pub struct Outcome {
    pub at: Instant,
    /// When it was sent, wall clock (to line up with a rollout's steps).
    pub wall_ms: i64,
    /// 0: no answer (connection error or timeout).
    pub status: u16,
    pub took: Duration,
}

/// An open-loop load through the gateway: `rate` requests/s whatever the
/// answers do, nine reads for each order.
pub struct Load {
    stop: Arc<AtomicBool>,
    done: tokio::task::JoinHandle<Vec<Outcome>>,
}

/// Makes the `n`th request of a load.
pub type MakeRequest = Arc<dyn Fn(u64) -> reqwest::RequestBuilder + Send + Sync>;

impl Load {
    /// Nine reads of one product for each order, as one signed-up shopper.
    pub async fn start(up: &Up, key: &str, rate: u32) -> Self {
        Self::start_mixed(up, key, rate, 10).await
    }

    /// `orders_every`: one request in that many is an order.
    pub async fn start_mixed(up: &Up, key: &str, rate: u32, orders_every: u64) -> Self {
        let shopper =
            Arc::new(Shopper::sign_up(&up.gateway, key, &format!("load-{}@test.invalid", std::process::id())).await);
        let product = shopper.product_in_stock().await;
        Self::start_with(
            rate,
            Arc::new(move |n| {
                if n.is_multiple_of(orders_every) {
                    shopper
                        .request(Method::POST, "/v1/orders")
                        .header("idempotency-key", format!("load-{n}-{}", std::process::id()))
                        .json(&Shopper::order_of(&product, "4242424242424242"))
                } else {
                    shopper.request(Method::GET, &format!("/v1/products/{product}"))
                }
            }),
        )
    }

    /// `rate` requests/s of `make`, whatever the answers do.
    pub fn start_with(rate: u32, make: MakeRequest) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let done = tokio::spawn(async move {
            let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
            let mut tick = tokio::time::interval(Duration::from_secs(1) / rate);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
            let mut n = 0u64;
            while !flag.load(Ordering::SeqCst) {
                tick.tick().await;
                n += 1;
                let (request, tx) = (make(n), tx.clone());
                tokio::spawn(async move {
                    let (at, wall_ms) = (Instant::now(), kit_core::time::now_millis());
                    let status = match request.timeout(Duration::from_secs(10)).send().await {
                        Ok(response) => response.status().as_u16(),
                        Err(_) => 0,
                    };
                    let _ = tx.send(Outcome { at, wall_ms, status, took: at.elapsed() });
                });
            }
            drop(tx);
            let mut outcomes = Vec::new();
            while let Some(outcome) = rx.recv().await {
                outcomes.push(outcome);
            }
            outcomes
        });
        Self { stop, done }
    }

    pub async fn finish(self) -> Vec<Outcome> {
        self.stop.store(true, Ordering::SeqCst);
        self.done.await.unwrap()
    }
}

/// Failures (5xx, no answer) and a summary line.
/// Answers, the statuses of the failed ones, p50 and p99 in ms.
pub struct Summary {
    pub answers: usize,
    pub failed: Vec<u16>,
    pub p50_ms: f64,
    pub p99_ms: f64,
}

impl Summary {
    pub fn of<'a>(outcomes: impl Iterator<Item = &'a Outcome>) -> Self {
        let (mut took, mut failed) = (Vec::new(), Vec::new());
        for outcome in outcomes {
            took.push(outcome.took.as_secs_f64() * 1e3);
            if outcome.status == 0 || outcome.status >= 500 {
                failed.push(outcome.status);
            }
        }
        took.sort_by(f64::total_cmp);
        let at = |q: f64| took.get(((took.len() as f64 * q) as usize).min(took.len().saturating_sub(1))).copied();
        Self { answers: took.len(), failed, p50_ms: at(0.5).unwrap_or(0.0), p99_ms: at(0.99).unwrap_or(0.0) }
    }
}

pub fn failures(outcomes: &[Outcome], what: &str) -> usize {
    let summary = Summary::of(outcomes.iter());
    let span = match (outcomes.iter().map(|o| o.at).min(), outcomes.iter().map(|o| o.at).max()) {
        (Some(first), Some(last)) => last.duration_since(first).as_secs_f64().max(0.001),
        _ => 0.001,
    };
    eprintln!(
        "{what}: {} answers in {span:.1} s ({:.0}/s), {} failed {:?}, p50 {:.1} ms p99 {:.1} ms",
        summary.answers,
        summary.answers as f64 / span,
        summary.failed.len(),
        &summary.failed[..summary.failed.len().min(10)],
        summary.p50_ms,
        summary.p99_ms
    );
    summary.failed.len()
}

pub fn loadgen_key(data: &std::path::Path) -> String {
    std::fs::read_to_string(data.join("secrets/loadgen_key")).unwrap().trim().to_string()
}

/// `shopfast <args> --deployer-url … --tls-dir …` to its end.
pub async fn shopfast(up: &Up, args: &[&str]) -> Output {
    let mut command = tokio::process::Command::new(SHOPFAST);
    command.args(args).args(["--deployer-url", &up.deployer, "--tls-dir", up.tls_dir.to_str().unwrap()]);
    let out = command.output().await.unwrap();
    eprintln!(
        "$ shopfast {}\n{}{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// The service's rollout, as the deploy controller tells it (waiting while
/// the controller is away: a test kills it).
pub async fn rollout(up: &Up, service: &str) -> Value {
    let url = format!("{}/v1/services/{service}/rollout", up.deployer);
    let started = Instant::now();
    loop {
        match up.registry_http().get(&url).send().await {
            Ok(response) => return response.json().await.unwrap(),
            Err(err) if started.elapsed() < Duration::from_secs(30) => {
                eprintln!("deploy controller away ({err}); asking again");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(err) => panic!("the deploy controller is gone: {err}"),
        }
    }
}

pub async fn policy(up: &Up, service: &str) -> Value {
    let url = format!("{}/v1/policies/{service}", up.registry);
    up.registry_http().get(url).send().await.unwrap().json().await.unwrap()
}

/// The versions of `service`'s registered instances.
pub async fn versions(up: &Up, service: &str) -> Vec<String> {
    let mut versions: Vec<String> = super::instances(up, service)
        .await
        .iter()
        .map(|i| i["version"].as_str().unwrap_or_default().to_string())
        .collect();
    versions.sort();
    versions.dedup();
    versions
}

pub async fn wait_for_phase(up: &Up, service: &str, phases: &[&str], within: Duration) -> Value {
    let mut last = Value::Null;
    let found = tokio::time::timeout(within, async {
        loop {
            last = rollout(up, service).await;
            if phases.contains(&last["phase"].as_str().unwrap_or_default()) {
                return last.clone();
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    found.unwrap_or_else(|_| panic!("{service} not {phases:?} within {within:?}: {last:#}"))
}

/// The turn of a test that runs a stack under a load it counts failures of:
/// one such test at a time in a test binary. Four stacks of a dozen debug
/// processes each, started at once on two cores, shed requests for the
/// machine's sake, which says nothing about a rollout.
pub async fn loaded_stack_turn() -> tokio::sync::MutexGuard<'static, ()> {
    static TURN: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    TURN.lock().await
}
