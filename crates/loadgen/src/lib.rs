//! The traffic generator (`shopfast loadgen`): shop journeys through the
//! gateway at the rate its mode asks for, open loop (arrivals do not wait
//! for answers, as customers do not), with live stats and a control port:
//!
//! - `GET /` a page with the live numbers and the mode buttons;
//! - `GET /stats` the numbers as JSON; `GET /mode` the mode;
//! - `POST /mode/{steady|burst|overload|flood|pause}` switches at once (flood: orders only).
//!
//! `mode` holds the rates, `journeys` the customers' paths, `stats` the
//! sliding window, `control` the HTTP side.
mod control;
pub mod journeys;
pub mod mode;
pub mod stats;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::Rng;
use serde::{Deserialize, Serialize};
use tokio::task::JoinHandle;

use kit::shutdown::CancellationToken;

pub use journeys::Weights;
pub use mode::{Mode, Rates};

pub const SERVICE: &str = "loadgen";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LoadgenConfig {
    /// The gateway to send the journeys to (required).
    pub gateway_url: Option<String>,
    /// Sent as `X-API-Key`; empty: anonymous (and its tight limits).
    pub api_key: String,
    /// The control port.
    pub addr: SocketAddr,
    /// The mode it starts in.
    pub mode: Mode,
    pub rates: Rates,
    pub weights: Weights,
    /// Journeys in flight at most; arrivals beyond are counted as skipped.
    pub max_in_flight: usize,
    pub request_timeout_ms: u64,
    /// The stats window.
    pub window_ms: u64,
}

impl Default for LoadgenConfig {
    fn default() -> Self {
        Self {
            gateway_url: None,
            api_key: String::new(),
            addr: SocketAddr::from(([127, 0, 0, 1], 8089)),
            mode: Mode::Steady,
            rates: Rates::default(),
            weights: Weights::default(),
            max_in_flight: 256,
            request_timeout_ms: 10_000,
            window_ms: 5_000,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("invalid configuration: {0}")]
    Config(String),
    #[error("cannot listen on {addr}: {source}")]
    Bind { addr: SocketAddr, source: std::io::Error },
}

/// The mode and since when it holds.
pub(crate) struct Current {
    mode: Mode,
    since: Instant,
}

/// What the driver and the control port share.
pub(crate) struct State {
    current: Mutex<Current>,
    rates: Rates,
    stats: Arc<Mutex<stats::Stats>>,
}

impl State {
    pub(crate) fn mode(&self) -> (Mode, Instant) {
        self.current.lock().map(|c| (c.mode, c.since)).unwrap_or((Mode::Pause, Instant::now()))
    }

    pub(crate) fn set_mode(&self, mode: Mode) {
        if let Ok(mut current) = self.current.lock() {
            if current.mode != mode {
                tracing::info!(from = current.mode.name(), to = mode.name(), "mode changed");
            }
            *current = Current { mode, since: Instant::now() };
        }
    }

    /// Journeys per second the mode asks for now.
    pub(crate) fn target_rate(&self) -> f64 {
        let (mode, since) = self.mode();
        self.rates.rate(mode, since.elapsed())
    }
}

pub struct RunningLoadgen {
    pub addr: SocketAddr,
    shutdown: CancellationToken,
    tasks: Vec<JoinHandle<()>>,
}

impl RunningLoadgen {
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub async fn wait(self) {
        for task in self.tasks {
            let _ = task.await;
        }
        tracing::info!(service = SERVICE, "stopped");
    }

    pub async fn stop(self) {
        self.shutdown.cancel();
        self.wait().await;
    }
}

pub async fn start(config: LoadgenConfig, shutdown: CancellationToken) -> Result<RunningLoadgen, StartError> {
    let gateway = config.gateway_url.clone().ok_or_else(|| StartError::Config("gateway_url is required".into()))?;
    if !(gateway.starts_with("http://") || gateway.starts_with("https://")) {
        return Err(StartError::Config(format!("gateway_url must be an http(s) URL, got {gateway:?}")));
    }
    config.rates.check().map_err(StartError::Config)?;
    config.weights.check().map_err(StartError::Config)?;
    if config.max_in_flight == 0 || config.window_ms == 0 || config.request_timeout_ms == 0 {
        return Err(StartError::Config("max_in_flight, window_ms and request_timeout_ms must be above 0".into()));
    }
    let stats = Arc::new(Mutex::new(stats::Stats::new(config.window_ms as i64)));
    let shop =
        journeys::Shop::new(&gateway, &config.api_key, Duration::from_millis(config.request_timeout_ms), stats.clone())
            .map_err(|e| StartError::Config(format!("HTTP client: {e}")))?;
    let state = Arc::new(State {
        current: Mutex::new(Current { mode: config.mode, since: Instant::now() }),
        rates: config.rates.clone(),
        stats,
    });

    let (addr, server) =
        kit::server::serve_http(config.addr, control::router(state.clone()), shutdown.clone(), "loadgen control")
            .await
            .map_err(|source| StartError::Bind { addr: config.addr, source })?;
    let driver =
        tokio::spawn(drive(Arc::new(shop), state, config.weights.clone(), config.max_in_flight, shutdown.clone()));
    tracing::info!(service = SERVICE, %addr, gateway, mode = config.mode.name(), "ready");
    Ok(RunningLoadgen { addr, shutdown, tasks: vec![server, driver] })
}

/// Starts journeys at the mode's rate until `shutdown`: one every 1/rate
/// seconds, whether earlier ones have finished or not.
async fn drive(
    shop: Arc<journeys::Shop>,
    state: Arc<State>,
    weights: Weights,
    max_in_flight: usize,
    shutdown: CancellationToken,
) {
    let in_flight = Arc::new(AtomicUsize::new(0));
    let mut next = tokio::time::Instant::now();
    loop {
        let rate = state.target_rate();
        if rate <= 0.0 {
            // Paused: look again shortly, and start afresh when resumed.
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(Duration::from_millis(100)) => {}
            }
            next = tokio::time::Instant::now();
            continue;
        }
        // After a slow stretch (or a switch to a higher rate) do not fire a
        // backlog all at once.
        let now = tokio::time::Instant::now();
        if next + Duration::from_secs(1) < now {
            next = now;
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep_until(next) => {}
        }
        next += Duration::from_secs_f64(1.0 / rate);
        if in_flight.load(Ordering::Relaxed) >= max_in_flight {
            if let Ok(mut stats) = state.stats.lock() {
                stats.journey_skipped();
            }
            continue;
        }
        // A flood is orders only: the queue behind Orders fills.
        let journey = match state.mode().0 {
            Mode::Flood => journeys::Journey::Order,
            _ => weights.pick(rand::rng().random_range(0..weights.total())),
        };
        if let Ok(mut stats) = state.stats.lock() {
            stats.journey_started();
        }
        in_flight.fetch_add(1, Ordering::Relaxed);
        let (shop, in_flight) = (shop.clone(), in_flight.clone());
        tokio::spawn(async move {
            shop.run(journey).await;
            in_flight.fetch_sub(1, Ordering::Relaxed);
        });
    }
}
