//! An order through the gateway, with the whole stack `shopfast up` starts:
//! sign up, log in, order with an Idempotency-Key (retries give the same
//! order), read it and the list, cancel it (refunded), and a declined card.
#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

mod support;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{Value, json};
use support::SHOPFAST;

/// The `shopfast up` process; killed if the test ends without stopping it.
struct Up(std::process::Child);

impl Drop for Up {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `shopfast up` on free ports: (process, gateway URL, API key).
fn up(data: &std::path::Path) -> (Up, String, String) {
    let mut up = Up(Command::new(SHOPFAST)
        .args(["up", "--ephemeral", "--quiet", "--data-dir"])
        .arg(data)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap());
    let mut stdout = BufReader::new(up.0.stdout.take().unwrap()).lines();
    let started = Instant::now();
    loop {
        let line = stdout.next().expect("up exited before it was ready").unwrap();
        if let Some(rest) = line.strip_prefix("Gateway: ") {
            let gateway = rest.split_whitespace().next().unwrap().to_string();
            let key = rest.split("admin): ").nth(1).unwrap().trim().to_string();
            // Keep draining stdout so the child never blocks on a full pipe.
            std::thread::spawn(move || for _ in stdout {});
            return (up, gateway, key);
        }
        assert!(started.elapsed() < Duration::from_secs(60), "not up within a minute");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_order_through_the_gateway() {
    let data = tempfile::tempdir().unwrap();
    let (mut child, gateway, key) = up(data.path());
    let http = reqwest::Client::new();
    let call = |method: reqwest::Method, path: &str| {
        http.request(method, format!("{gateway}{path}")).header("x-api-key", &key)
    };

    let signup = json!({ "email": "buyer@example.com", "password": "buy all the things 1", "name": "Buyer" });
    let user: Value =
        call(reqwest::Method::POST, "/v1/users").json(&signup).send().await.unwrap().json().await.unwrap();
    let login = json!({ "email": "buyer@example.com", "password": "buy all the things 1" });
    let token: Value =
        call(reqwest::Method::POST, "/v1/auth/login").json(&login).send().await.unwrap().json().await.unwrap();
    let token = token["accessToken"].as_str().unwrap().to_string();
    let page: Value = call(reqwest::Method::GET, "/v1/products?pageSize=50&inStockOnly=true")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let product = page["products"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["available"].as_str().unwrap().parse::<i64>().unwrap() > 5)
        .unwrap();
    let product_id = product["id"].as_str().unwrap();
    let order = |card: &str| {
        json!({
            "items": [{ "productId": product_id, "quantity": "1" }],
            "paymentMethod": { "cardNumber": card, "expiryMonth": 12, "expiryYear": 2040, "cvc": "123" },
            "shippingAddress": { "line1": "1 Main St", "city": "Springfield", "countryCode": "US" },
        })
    };

    // The same Idempotency-Key twice: one order.
    let mut ids = Vec::new();
    for _ in 0..2 {
        let response = call(reqwest::Method::POST, "/v1/orders")
            .bearer_auth(&token)
            .header("idempotency-key", "first-order")
            .json(&order("4242424242424242"))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["status"], "ORDER_STATUS_PAID", "{body}");
        assert_eq!(body["userId"], user["id"]);
        ids.push(body["id"].as_str().unwrap().to_string());
    }
    assert_eq!(ids[0], ids[1], "a retry returns the same order");
    let list: Value =
        call(reqwest::Method::GET, "/v1/orders").bearer_auth(&token).send().await.unwrap().json().await.unwrap();
    assert_eq!(list["orders"].as_array().unwrap().len(), 1);
    let one = call(reqwest::Method::GET, &format!("/v1/orders/{}", ids[0])).bearer_auth(&token).send().await.unwrap();
    assert_eq!(one.status(), StatusCode::OK);
    // Without a token: 401.
    assert_eq!(call(reqwest::Method::GET, "/v1/orders").send().await.unwrap().status(), StatusCode::UNAUTHORIZED);

    // A declined card: 409 with the reason.
    let declined = call(reqwest::Method::POST, "/v1/orders")
        .bearer_auth(&token)
        .json(&order("4000000000009995"))
        .send()
        .await
        .unwrap();
    assert_eq!(declined.status(), StatusCode::CONFLICT);
    let body: Value = declined.json().await.unwrap();
    assert!(body["message"].as_str().unwrap().contains("insufficient_funds"), "{body}");

    // Cancel the paid order: refunded and CANCELLED.
    let cancelled = call(reqwest::Method::POST, &format!("/v1/orders/{}:cancel", ids[0]))
        .bearer_auth(&token)
        .json(&json!({ "reason": "changed my mind" }))
        .send()
        .await
        .unwrap();
    assert_eq!(cancelled.status(), StatusCode::OK);
    let body: Value = cancelled.json().await.unwrap();
    assert_eq!(body["status"], "ORDER_STATUS_CANCELLED", "{body}");

    Command::new("kill").args(["-INT", &child.0.id().to_string()]).status().unwrap();
    assert!(child.0.wait().unwrap().success(), "up stops cleanly");
}
