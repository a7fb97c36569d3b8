//! Orders through the gateway, with the whole stack `shopfast up` starts:
//! sign up, log in, order with an Idempotency-Key (retries — sequential or 20
//! at once — give the same order and one charge), stock taken, the order
//! shipped and delivered by the outbox worker, read it and the list, cancel it
//! (refunded), a declined card (stock back exactly, nothing charged), out of
//! stock (refused before payment) and ordering for someone else (403).
#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

mod support;

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{Value, json};
use support::{Shopper, Up};

/// Sends a request and reads its JSON body.
async fn json_of(request: reqwest::RequestBuilder) -> Value {
    support::json_reply(request.send().await.unwrap()).await.2
}

/// The statuses of an order's payments, read from the Payments database `up`
/// keeps in the data dir.
async fn payment_statuses(data: &std::path::Path, order_id: &str) -> Vec<String> {
    sqlx::any::install_default_drivers();
    let pool = sqlx::AnyPool::connect(&kit::db::sqlite_file_url(&data.join("payments.db"))).await.unwrap();
    let rows: Vec<(String,)> = sqlx::query_as("SELECT status FROM payments WHERE order_id = $1 ORDER BY created_at")
        .bind(order_id)
        .fetch_all(&pool)
        .await
        .unwrap();
    rows.into_iter().map(|r| r.0).collect()
}

/// Charges (completed, refunding or refunded payments) for an order.
async fn completed_charges(data: &std::path::Path, order_id: &str) -> usize {
    let charged = ["COMPLETED", "REFUNDING", "REFUNDED"];
    payment_statuses(data, order_id).await.iter().filter(|s| charged.contains(&s.as_str())).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_order_through_the_gateway() {
    let data = tempfile::tempdir().unwrap();
    let up = Up::start(data.path(), &["--no-loadgen"], &[]);
    let (gateway, key) = (up.gateway.clone(), up.api_key.clone());
    let http = reqwest::Client::new();
    let call = |method: reqwest::Method, path: &str| {
        http.request(method, format!("{gateway}{path}")).header("x-api-key", &key)
    };

    let buyer = Shopper::sign_up(&gateway, &key, "buyer@example.com").await;
    let token = buyer.token.clone();
    let page: Value = json_of(call(reqwest::Method::GET, "/v1/products?pageSize=50&inStockOnly=true")).await;
    let product = page["products"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["available"].as_str().unwrap().parse::<i64>().unwrap() > 5)
        .unwrap();
    let product_id = product["id"].as_str().unwrap();
    let available_of = |id: String| async move {
        let product: Value = json_of(call(reqwest::Method::GET, &format!("/v1/products/{id}"))).await;
        product["available"].as_str().unwrap().parse::<i64>().unwrap()
    };
    let available = || available_of(product_id.to_string());
    let stock_before = available().await;
    let order_of = |card: &str, product_id: &str, quantity: i64| {
        json!({
            "items": [{ "productId": product_id, "quantity": quantity.to_string() }],
            "paymentMethod": { "cardNumber": card, "expiryMonth": 12, "expiryYear": 2040, "cvc": "123" },
            "shippingAddress": { "line1": "1 Main St", "city": "Springfield", "countryCode": "US" },
        })
    };
    let order = |card: &str| order_of(card, product_id, 1);

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
        // Created (201) with where it lives — the replay too.
        assert_eq!(response.status(), StatusCode::CREATED);
        let location = response.headers()["location"].to_str().unwrap().to_string();
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["status"], "ORDER_STATUS_PAID", "{body}");
        assert_eq!(location, format!("/v1/orders/{}", body["id"].as_str().unwrap()));
        assert_eq!(body["userId"], buyer.user_id.as_str());
        ids.push(body["id"].as_str().unwrap().to_string());
    }
    assert_eq!(ids[0], ids[1], "a retry returns the same order");
    assert_eq!(available().await, stock_before - 1, "one unit sold");
    assert_eq!(completed_charges(data.path(), &ids[0]).await, 1);

    // The same key sent 20 times at once: one order, one charge; the rest
    // hear the answer or "in progress" (409), never a second order.
    let concurrent = futures::future::join_all((0..20).map(|_| {
        call(reqwest::Method::POST, "/v1/orders")
            .bearer_auth(&token)
            .header("idempotency-key", "twenty-at-once")
            .json(&order("4242424242424242"))
            .send()
    }))
    .await;
    let mut same = std::collections::BTreeSet::new();
    for response in concurrent {
        let response = response.unwrap();
        let status = response.status();
        let body: Value = response.json().await.unwrap();
        match status {
            StatusCode::CREATED => {
                same.insert(body["id"].as_str().unwrap().to_string());
            }
            StatusCode::CONFLICT => assert_eq!(body["reason"], "IDEMPOTENCY_IN_PROGRESS", "{body}"),
            other => panic!("{other}: {body}"),
        }
    }
    assert_eq!(same.len(), 1, "one order for one key: {same:?}");
    let list: Value = json_of(call(reqwest::Method::GET, "/v1/orders").bearer_auth(&token)).await;
    let orders = list["orders"].as_array().unwrap();
    assert_eq!(orders.len(), 2, "the first order and one more: {list}");
    let second = orders.iter().find(|o| o["id"] != ids[0].as_str()).unwrap()["id"].as_str().unwrap().to_string();
    assert!(same.iter().all(|id| *id == second));
    assert_eq!(completed_charges(data.path(), &second).await, 1, "charged once");
    assert_eq!(available().await, stock_before - 2);

    // Fulfilment from the outbox: PAID → SHIPPED → DELIVERED on its own.
    let started = Instant::now();
    loop {
        let order: Value =
            json_of(call(reqwest::Method::GET, &format!("/v1/orders/{second}")).bearer_auth(&token)).await;
        if order["status"] == "ORDER_STATUS_DELIVERED" {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(30), "not delivered: {order}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // Out of stock: refused at the reservation, before any payment; nothing recorded.
    let scarce = page["products"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["id"] != product_id && p["available"].as_str().unwrap().parse::<i64>().unwrap() < 100)
        .unwrap()["id"]
        .as_str()
        .unwrap();
    let scarce_before = available_of(scarce.to_string()).await;
    let greedy = call(reqwest::Method::POST, "/v1/orders")
        .bearer_auth(&token)
        .json(&order_of("4242424242424242", scarce, scarce_before + 1))
        .send()
        .await
        .unwrap();
    assert_eq!(greedy.status(), StatusCode::CONFLICT);
    let body: Value = greedy.json().await.unwrap();
    assert_eq!(body["reason"], "INSUFFICIENT_STOCK", "{body}");
    assert_eq!(available_of(scarce.to_string()).await, scarce_before, "nothing held");

    // Ordering for another user: 403, nothing recorded.
    let mut for_other = order("4242424242424242");
    for_other["userId"] = json!("someone-else");
    let refused = call(reqwest::Method::POST, "/v1/orders").bearer_auth(&token).json(&for_other).send().await.unwrap();
    assert_eq!(refused.status(), StatusCode::FORBIDDEN);
    let list: Value = json_of(call(reqwest::Method::GET, "/v1/orders").bearer_auth(&token)).await;
    assert_eq!(list["orders"].as_array().unwrap().len(), 2, "neither refusal recorded an order");
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
    assert_eq!(body["reason"], "CARD_DECLINED", "{body}");
    assert!(
        body["message"].as_str().unwrap().contains("insufficient_funds"),
        "the message names the decline code: {body}"
    );
    assert_eq!(available().await, stock_before - 2, "the declined order's unit is back");
    let list: Value = json_of(call(reqwest::Method::GET, "/v1/orders").bearer_auth(&token)).await;
    let cancelled: Vec<&Value> =
        list["orders"].as_array().unwrap().iter().filter(|o| o["status"] == "ORDER_STATUS_CANCELLED").collect();
    assert_eq!(cancelled.len(), 1, "the declined order is recorded CANCELLED: {list}");
    assert!(cancelled[0]["failureReason"].as_str().unwrap().contains("insufficient_funds"));
    let declined_id = cancelled[0]["id"].as_str().unwrap();
    assert_eq!(completed_charges(data.path(), declined_id).await, 0, "nothing charged");

    // A delivered order cannot be cancelled.
    let late = call(reqwest::Method::POST, &format!("/v1/orders/{second}:cancel")).bearer_auth(&token).json(&json!({}));
    assert_eq!(late.send().await.unwrap().status(), StatusCode::CONFLICT);

    // Cancel a paid order (before it ships): refunded and CANCELLED.
    let paid: Value =
        json_of(call(reqwest::Method::POST, "/v1/orders").bearer_auth(&token).json(&order("4242424242424242"))).await;
    let paid_id = paid["id"].as_str().unwrap();
    let cancelled = call(reqwest::Method::POST, &format!("/v1/orders/{paid_id}:cancel"))
        .bearer_auth(&token)
        .json(&json!({ "reason": "changed my mind" }))
        .send()
        .await
        .unwrap();
    assert_eq!(cancelled.status(), StatusCode::OK);
    let body: Value = cancelled.json().await.unwrap();
    assert_eq!(body["status"], "ORDER_STATUS_CANCELLED", "{body}");
    assert_eq!(payment_statuses(data.path(), paid_id).await, ["REFUNDED"]);

    assert!(up.stop().0, "up stops cleanly");
}
