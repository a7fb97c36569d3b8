//! Adaptive load shedding on every server, after go-zero's shedder: when the
//! machine's CPU is above a threshold (or was, in the last second), refuse
//! calls beyond what the server has shown it can carry — its best throughput
//! times its best latency (Little's law) — with RESOURCE_EXHAUSTED, at once,
//! instead of queueing them into a latency collapse.
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};
use tower::{Layer, Service};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ShedConfig {
    pub enabled: bool,
    /// Machine CPU use (0-1) from which the server may shed.
    pub cpu_threshold: f64,
    pub window_ms: u64,
    pub window_buckets: usize,
    /// Never shed with fewer calls than this in flight: at low concurrency
    /// shedding saves nothing, and on a busy machine (hot CPU from other
    /// processes) it would refuse ordinary bursts.
    pub min_in_flight: usize,
    /// Refuse above this many in-flight calls whatever the CPU.
    pub max_in_flight: Option<usize>,
}

impl Default for ShedConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            cpu_threshold: 0.9,
            window_ms: 5_000,
            window_buckets: 50,
            min_in_flight: 32,
            max_in_flight: None,
        }
    }
}

const COOL_OFF: Duration = Duration::from_secs(1);
const FLYING_BETA: f64 = 0.9;
const CPU_BETA: f64 = 0.6;

#[derive(Debug, Clone, Copy, Default)]
struct Bucket {
    slot: u64,
    passes: u64,
    rt_sum: Duration,
}

/// The decision logic, pure: the caller passes CPU use and time.
#[derive(Debug)]
pub struct Shedder {
    config: ShedConfig,
    origin: Instant,
    bucket_width: Duration,
    buckets: Vec<Bucket>,
    avg_flying: f64,
    last_drop: Option<Instant>,
}

impl Shedder {
    pub fn new(config: ShedConfig, now: Instant) -> Self {
        let n = config.window_buckets.max(2);
        let bucket_width = (Duration::from_millis(config.window_ms) / n as u32).max(Duration::from_millis(1));
        Self {
            config,
            origin: now,
            bucket_width,
            buckets: vec![Bucket::default(); n],
            avg_flying: 0.0,
            last_drop: None,
        }
    }

    fn slot(&self, now: Instant) -> u64 {
        (now.saturating_duration_since(self.origin).as_nanos() / self.bucket_width.as_nanos()) as u64 + 1
    }

    /// Completed buckets still in the window (the current one is partial).
    fn past(&self, now: Instant) -> impl Iterator<Item = &Bucket> {
        let current = self.slot(now);
        let len = self.buckets.len() as u64;
        self.buckets.iter().filter(move |b| b.slot != 0 && b.slot < current && b.slot + len > current)
    }

    /// In-flight calls the server has shown it can carry:
    /// best passes per second × best mean latency.
    pub fn max_flight(&self, now: Instant) -> f64 {
        let max_pass = self.past(now).map(|b| b.passes).max().unwrap_or(0).max(1) as f64;
        let min_rt = self
            .past(now)
            .filter(|b| b.passes > 0)
            .map(|b| b.rt_sum.as_secs_f64() / b.passes as f64)
            .fold(f64::INFINITY, f64::min);
        let min_rt = if min_rt.is_finite() { min_rt } else { 1.0 };
        let per_sec = max_pass / self.bucket_width.as_secs_f64();
        (per_sec * min_rt).max(1.0)
    }

    /// Whether a new call, with `in_flight` already running, should be refused.
    pub fn should_drop(&mut self, in_flight: usize, cpu: f64, now: Instant) -> bool {
        if self.config.max_in_flight.is_some_and(|max| in_flight >= max) {
            self.last_drop = Some(now);
            return true;
        }
        let hot = cpu >= self.config.cpu_threshold || self.last_drop.is_some_and(|t| now - t < COOL_OFF);
        if !hot || in_flight < self.config.min_in_flight {
            return false;
        }
        let max_flight = self.max_flight(now);
        let drop = in_flight as f64 > max_flight && self.avg_flying > max_flight;
        if drop {
            self.last_drop = Some(now);
        }
        drop
    }

    /// A call finished after `rt`, leaving `in_flight` running.
    pub fn finished(&mut self, rt: Duration, in_flight: usize, now: Instant) {
        let slot = self.slot(now);
        let len = self.buckets.len() as u64;
        let bucket = &mut self.buckets[(slot % len) as usize];
        if bucket.slot != slot {
            *bucket = Bucket { slot, passes: 0, rt_sum: Duration::ZERO };
        }
        bucket.passes += 1;
        bucket.rt_sum += rt;
        self.avg_flying = self.avg_flying * FLYING_BETA + in_flight as f64 * (1.0 - FLYING_BETA);
    }
}

/// CPU use (0-1), the higher of the machine's (/proc/stat) and this
/// process's share of the CPUs it may run on (/proc/self/stat against
/// `available_parallelism`, which follows affinity and cgroup quotas — a
/// process pinned to one core of two is saturated at 50 % machine use).
/// Sampled every 100 ms and smoothed with β = 0.6: from idle to saturated it
/// crosses 90 % in half a second. (go-zero samples every 250 ms with β = 0.95
/// and takes over 10 s: a burst has queued seconds of work by then.)
/// 0 where /proc does not exist.
pub fn cpu_usage() -> f64 {
    static USAGE: OnceLock<Arc<AtomicU64>> = OnceLock::new();
    let usage = USAGE.get_or_init(|| {
        let usage = Arc::new(AtomicU64::new(0f64.to_bits()));
        let writer = usage.clone();
        let spawned = std::thread::Builder::new().name("cpu-sampler".into()).spawn(move || {
            let period = Duration::from_millis(100);
            let ticks_per_sec = 100.0; // USER_HZ on Linux
            let mut previous = (read_proc_stat(), read_own_ticks());
            let mut smoothed = 0.0f64;
            loop {
                std::thread::sleep(period);
                let current = (read_proc_stat(), read_own_ticks());
                let machine = match (previous.0, current.0) {
                    (Some((busy0, total0)), Some((busy1, total1))) if total1 > total0 => {
                        (busy1 - busy0) as f64 / (total1 - total0) as f64
                    }
                    _ => 0.0,
                };
                let cpus = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
                let own = match (previous.1, current.1) {
                    (Some(t0), Some(t1)) => {
                        (t1.saturating_sub(t0) as f64 / ticks_per_sec) / (period.as_secs_f64() * cpus)
                    }
                    _ => 0.0,
                };
                smoothed = smoothed * CPU_BETA + machine.max(own).min(1.0) * (1.0 - CPU_BETA);
                writer.store(smoothed.to_bits(), Ordering::Relaxed);
                previous = current;
            }
        });
        if let Err(err) = spawned {
            tracing::warn!(error = %err, "no CPU sampler; load shedding sees 0 % CPU");
        }
        usage
    });
    f64::from_bits(usage.load(Ordering::Relaxed))
}

/// (busy, total) jiffies of all CPUs.
fn read_proc_stat() -> Option<(u64, u64)> {
    let text = std::fs::read_to_string("/proc/stat").ok()?;
    let line = text.lines().next()?.strip_prefix("cpu ")?;
    let values: Vec<u64> = line.split_whitespace().filter_map(|v| v.parse().ok()).collect();
    let total: u64 = values.iter().take(8).sum();
    let idle = values.get(3).copied().unwrap_or(0) + values.get(4).copied().unwrap_or(0);
    Some((total.saturating_sub(idle), total))
}

/// User + system clock ticks this process has used.
fn read_own_ticks() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name (which may hold spaces) start at ")".
    let fields: Vec<&str> = text.rsplit_once(')')?.1.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// The shedding layer for a gRPC server.
#[derive(Clone)]
pub struct ShedLayer {
    state: Option<Arc<ShedState>>,
    service: &'static str,
}

struct ShedState {
    shedder: Mutex<Shedder>,
    in_flight: AtomicUsize,
}

impl ShedLayer {
    pub fn new(service: &'static str, config: &ShedConfig) -> Self {
        let state = config.enabled.then(|| {
            cpu_usage(); // start sampling now, not on the first call
            Arc::new(ShedState {
                shedder: Mutex::new(Shedder::new(config.clone(), Instant::now())),
                in_flight: AtomicUsize::new(0),
            })
        });
        Self { state, service }
    }

    /// Calls running past this layer right now; None when shedding is off
    /// (nothing counts them then).
    pub fn in_flight(&self) -> Option<usize> {
        self.state.as_ref().map(|state| state.in_flight.load(Ordering::Acquire))
    }
}

impl<S> Layer<S> for ShedLayer {
    type Service = Shed<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Shed { inner, state: self.state.clone(), service: self.service }
    }
}

#[derive(Clone)]
pub struct Shed<S> {
    inner: S,
    state: Option<Arc<ShedState>>,
    service: &'static str,
}

/// Counts a call out of flight however it ends.
struct InFlight {
    state: Arc<ShedState>,
    started: Instant,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let left = self.state.in_flight.fetch_sub(1, Ordering::AcqRel).saturating_sub(1);
        if let Ok(mut shedder) = self.state.shedder.lock() {
            shedder.finished(self.started.elapsed(), left, Instant::now());
        }
    }
}

impl<S, B, ResBody> Service<http::Request<B>> for Shed<S>
where
    S: Service<http::Request<B>, Response = http::Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    B: Send + 'static,
    ResBody: Default + Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let Some(state) = self.state.clone() else { return Box::pin(inner.call(request)) };
        // Take the slot first, so concurrent arrivals cannot all see room for one.
        let in_flight = state.in_flight.fetch_add(1, Ordering::AcqRel);
        let shed =
            state.shedder.lock().map(|mut s| s.should_drop(in_flight, cpu_usage(), Instant::now())).unwrap_or(false);
        if shed {
            state.in_flight.fetch_sub(1, Ordering::AcqRel);
            metrics::counter!("server_shed_total", "service" => self.service).increment(1);
            let status = tonic::Status::resource_exhausted("server overloaded; request shed, retry with backoff");
            let response =
                crate::signals::with_reason(status, kit_core::reason::Reason::Overloaded).into_http::<ResBody>();
            return Box::pin(async move { Ok(response) });
        }
        let guard = InFlight { state, started: Instant::now() };
        Box::pin(async move {
            let result = inner.call(request).await;
            drop(guard);
            result
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    /// 100 calls per 100 ms bucket at 10 ms each: it carries 1000/s × 10 ms = 10.
    fn warmed() -> (Shedder, Instant) {
        let t0 = Instant::now();
        let mut s = Shedder::new(ShedConfig { min_in_flight: 0, ..Default::default() }, t0);
        let mut now = t0;
        for _ in 0..10 {
            for _ in 0..100 {
                s.finished(ms(10), 30, now);
            }
            now += ms(100);
        }
        (s, now)
    }

    #[test]
    fn capacity_is_best_throughput_times_best_latency() {
        let (s, now) = warmed();
        assert!((s.max_flight(now) - 10.0).abs() < 1e-6, "{}", s.max_flight(now));
    }

    #[test]
    fn sheds_only_when_hot_and_over_capacity() {
        let (mut s, now) = warmed();
        assert!(!s.should_drop(50, 0.5, now), "cool CPU: never shed");
        assert!(!s.should_drop(5, 0.95, now), "hot but within capacity");
        assert!(s.should_drop(50, 0.95, now), "hot and over capacity");
        // Still hot for a second after a drop, even if the CPU reading dips.
        assert!(s.should_drop(50, 0.5, now + ms(500)));
        assert!(!s.should_drop(50, 0.5, now + ms(1_600)));
    }

    #[test]
    fn never_sheds_below_the_floor() {
        let (mut s, now) = warmed();
        s.config.min_in_flight = 32;
        assert!(!s.should_drop(31, 1.0, now), "hot, over capacity, but under the floor");
        assert!(s.should_drop(40, 1.0, now));
    }

    #[test]
    fn a_hard_cap_applies_whatever_the_cpu() {
        let t0 = Instant::now();
        let mut s = Shedder::new(ShedConfig { max_in_flight: Some(3), ..Default::default() }, t0);
        assert!(!s.should_drop(2, 0.0, t0));
        assert!(s.should_drop(3, 0.0, t0));
    }

    #[test]
    fn cpu_reading_is_a_share() {
        let (busy, total) = read_proc_stat().expect("/proc/stat on Linux");
        assert!(busy <= total);
        let before = read_own_ticks().expect("/proc/self/stat on Linux");
        let spin = Instant::now();
        while spin.elapsed() < ms(50) {
            std::hint::black_box(spin.elapsed());
        }
        assert!(read_own_ticks().unwrap() > before, "50 ms of spinning shows up in our ticks");
        let usage = cpu_usage();
        assert!((0.0..=1.0).contains(&usage));
    }
}
