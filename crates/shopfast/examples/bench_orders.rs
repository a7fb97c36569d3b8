//! The two halves of `scripts/bench-orders.sh`:
//!
//!   bench_orders commits <database url> [--seconds N] [--concurrency C]
//!     the raw commit rate: C writers each committing one-row INSERTs, through
//!     the same pool and settings the services use (`kit::db`) — the ceiling
//!     an order's many commits share.
//!   bench_orders orders <gateway url> <api key> [--seconds N] [--concurrency C]
//!     orders end to end: one signed-up user, C clients each POSTing
//!     /v1/orders (one unit of a random in-stock product, an approved card, a
//!     fresh Idempotency-Key) back to back.
//!
//! Each prints one line of JSON.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a bench tool: a panic is the report

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use kit::db::{Db, DbOptions};
use rand::Rng;
use serde_json::{Value, json};

fn flag(args: &[String], name: &str, default: u64) -> u64 {
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).map_or(default, |v| v.parse().unwrap())
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

async fn commits(url: &str, seconds: u64, concurrency: u64) -> Value {
    let db = Db::open(url, &DbOptions::default(), &sqlx::migrate::Migrator::DEFAULT).await.unwrap();
    sqlx::query(
        "CREATE TABLE IF NOT EXISTS bench_commits (id TEXT PRIMARY KEY, payload TEXT NOT NULL, at BIGINT NOT NULL)",
    )
    .execute(db.pool())
    .await
    .unwrap();
    let done = Arc::new(AtomicU64::new(0));
    let until = Instant::now() + Duration::from_secs(seconds);
    let writers: Vec<_> = (0..concurrency)
        .map(|_| {
            let (db, done) = (db.clone(), done.clone());
            tokio::spawn(async move {
                while Instant::now() < until {
                    sqlx::query("INSERT INTO bench_commits (id, payload, at) VALUES ($1, $2, $3)")
                        .bind(uuid::Uuid::now_v7().to_string())
                        .bind("{\"state\":\"RUNNING\",\"steps\":[]}")
                        .bind(kit_core::time::now_millis())
                        .execute(db.pool())
                        .await
                        .unwrap();
                    done.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    for writer in writers {
        writer.await.unwrap();
    }
    db.close().await;
    json!({ "commits_per_s": done.load(Ordering::Relaxed) as f64 / seconds as f64 })
}

async fn orders(gateway: &str, key: &str, seconds: u64, concurrency: u64) -> Value {
    let http = reqwest::Client::new();
    let email = format!("bench-{}@example.com", uuid::Uuid::now_v7().simple());
    let password = "bench password 12345";
    let signup = json!({ "email": email, "password": password, "name": "Bench" });
    let post = |path: &str| http.post(format!("{gateway}{path}")).header("x-api-key", key);
    let user: Value = post("/v1/users").json(&signup).send().await.unwrap().json().await.unwrap();
    assert!(user["id"].is_string(), "sign-up failed: {user}");
    let login = json!({ "email": email, "password": password });
    let token: Value = post("/v1/auth/login").json(&login).send().await.unwrap().json().await.unwrap();
    let token = token["accessToken"].as_str().expect("login failed").to_string();
    let page: Value = http
        .get(format!("{gateway}/v1/products?pageSize=100&inStockOnly=true"))
        .header("x-api-key", key)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let products: Vec<String> =
        page["products"].as_array().unwrap().iter().map(|p| p["id"].as_str().unwrap().to_string()).collect();
    assert!(!products.is_empty(), "no product in stock");

    let (ok, refused, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let until = Instant::now() + Duration::from_secs(seconds);
    let clients: Vec<_> = (0..concurrency)
        .map(|client| {
            let (http, gateway, key, token, products) =
                (http.clone(), gateway.to_string(), key.to_string(), token.clone(), products.clone());
            let (ok, refused, failed) = (ok.clone(), refused.clone(), failed.clone());
            tokio::spawn(async move {
                let mut latencies = Vec::new();
                let mut n = 0;
                while Instant::now() < until {
                    n += 1;
                    let product = &products[rand::rng().random_range(0..products.len())];
                    let body = json!({
                        "items": [{ "productId": product, "quantity": "1" }],
                        "paymentMethod": { "cardNumber": "4242424242424242", "expiryMonth": 12, "expiryYear": 2040, "cvc": "123" },
                        "shippingAddress": { "line1": "1 Bench St", "city": "Springfield", "countryCode": "US" },
                    });
                    let started = Instant::now();
                    let response = http
                        .post(format!("{gateway}/v1/orders"))
                        .header("x-api-key", &key)
                        .header("idempotency-key", format!("bench-{client}-{n}"))
                        .bearer_auth(&token)
                        .json(&body)
                        .send()
                        .await;
                    match response.map(|r| r.status().as_u16()) {
                        Ok(200) => {
                            ok.fetch_add(1, Ordering::Relaxed);
                            latencies.push(started.elapsed().as_secs_f64() * 1_000.0);
                        }
                        Ok(409) => {
                            refused.fetch_add(1, Ordering::Relaxed);
                        }
                        _ => {
                            failed.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
                latencies
            })
        })
        .collect();
    let mut latencies = Vec::new();
    for client in clients {
        latencies.extend(client.await.unwrap());
    }
    latencies.sort_by(f64::total_cmp);
    json!({
        "orders_per_s": ok.load(Ordering::Relaxed) as f64 / seconds as f64,
        "paid": ok.load(Ordering::Relaxed),
        "refused": refused.load(Ordering::Relaxed),
        "failed": failed.load(Ordering::Relaxed),
        "p50_ms": percentile(&latencies, 0.5),
        "p99_ms": percentile(&latencies, 0.99),
    })
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let seconds = flag(&args, "--seconds", 20);
    let concurrency = flag(&args, "--concurrency", 16);
    let result = match args.get(1).map(String::as_str) {
        Some("commits") => commits(&args[2], seconds, concurrency).await,
        Some("orders") => orders(&args[2], &args[3], seconds, concurrency).await,
        _ => panic!(
            "usage: bench_orders commits <db url> | orders <gateway url> <api key> [--seconds N] [--concurrency C]"
        ),
    };
    println!("{result}");
}
