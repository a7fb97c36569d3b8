//! Open-loop overload against one products instance: first its capacity
//! (closed loop), then a fixed arrival rate of `--factor` × capacity, each
//! request its own task — arrivals do not wait for answers, as real users do
//! not. Prints one line of JSON: offered, served, shed, latency of the served.
//!
//!   cargo run --release --example overload -- http://127.0.0.1:9002 [--factor 3] [--seconds 10]
//!
//! `scripts/bench-overload.sh` runs it against shedding on and off.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a bench tool: a panic is the report

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use contracts::products::v1::SearchProductsRequest;
use contracts::products::v1::product_service_client::ProductServiceClient;
use tonic::transport::Channel;

fn request() -> tonic::Request<SearchProductsRequest> {
    let mut request =
        tonic::Request::new(SearchProductsRequest { query: "a".into(), page_size: 50, ..Default::default() });
    // Callers give up after 5 s, as a gateway would.
    request.set_timeout(Duration::from_secs(5));
    request
}

async fn capacity(channel: &Channel, seconds: u64) -> f64 {
    let done = Arc::new(AtomicU64::new(0));
    let until = Instant::now() + Duration::from_secs(seconds);
    let workers: Vec<_> = (0..32)
        .map(|_| {
            let mut client = ProductServiceClient::new(channel.clone());
            let done = done.clone();
            tokio::spawn(async move {
                while Instant::now() < until {
                    if client.search_products(request()).await.is_ok() {
                        done.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    for worker in workers {
        worker.await.unwrap();
    }
    done.load(Ordering::Relaxed) as f64 / seconds as f64
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let url = args.get(1).expect("usage: overload <grpc url> [--factor N] [--seconds N]").clone();
    let flag = |name: &str, default: f64| {
        args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).map_or(default, |v| v.parse().unwrap())
    };
    let factor = flag("--factor", 3.0);
    let seconds = flag("--seconds", 10.0) as u64;
    // Several connections, as several clients would open.
    let endpoint = Channel::from_shared(url.clone()).unwrap();
    let channels: Vec<Channel> =
        futures::future::join_all((0..4).map(|_| endpoint.connect())).await.into_iter().map(Result::unwrap).collect();

    let capacity = capacity(&channels[0], 3).await;
    tokio::time::sleep(Duration::from_secs(2)).await; // let the CPU reading settle back
    let rate = capacity * factor;
    let interval = Duration::from_secs_f64(1.0 / rate);
    let started = Instant::now();
    // (sent at, latency, code)
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(Duration, Duration, tonic::Code)>();
    let mut sent = 0u64;
    let mut next = started;
    while started.elapsed() < Duration::from_secs(seconds) {
        let mut client = ProductServiceClient::new(channels[sent as usize % channels.len()].clone());
        let tx = tx.clone();
        tokio::spawn(async move {
            let t = Instant::now();
            let code = match client.search_products(request()).await {
                Ok(_) => tonic::Code::Ok,
                Err(status) => status.code(),
            };
            let _ = tx.send((t - started, t.elapsed(), code));
        });
        sent += 1;
        next += interval;
        if let Some(wait) = next.checked_duration_since(Instant::now()) {
            tokio::time::sleep(wait).await;
        }
    }
    drop(tx);
    let mut served = Vec::new();
    // Sent after the first two seconds: the state shedding settles into.
    let mut settled = Vec::new();
    let (mut shed, mut other) = (0u64, 0u64);
    while let Some((sent_at, latency, code)) = rx.recv().await {
        match code {
            tonic::Code::Ok => {
                served.push(latency);
                if sent_at >= Duration::from_secs(2) {
                    settled.push(latency);
                }
            }
            tonic::Code::ResourceExhausted => shed += 1,
            _ => other += 1,
        }
    }
    served.sort();
    settled.sort();
    let pct = |v: &[Duration], p: f64| {
        v.get(((v.len().max(1) - 1) as f64 * p) as usize).map_or(0.0, |d| d.as_secs_f64() * 1000.0)
    };
    let elapsed = started.elapsed().as_secs_f64();
    println!(
        "{}",
        serde_json::json!({
            "capacity_rps": capacity.round(),
            "offered_rps": (sent as f64 / seconds as f64).round(),
            "served_rps": (served.len() as f64 / elapsed).round(),
            "shed": shed,
            "failed_other": other,
            "served_p50_ms": pct(&served, 0.5),
            "served_p99_ms": pct(&served, 0.99),
            "settled_p50_ms": pct(&settled, 0.5),
            "settled_p99_ms": pct(&settled, 0.99),
        })
    );
}
