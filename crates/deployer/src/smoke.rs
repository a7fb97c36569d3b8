//! The smoke suite: a customer's journey through the gateway, sent to one
//! version of the service being deployed by the override
//! (`x-shopfast-version: service=version`, admin API key) before any user is:
//! the catalogue, a sign-up and login, one full order with a test card (then
//! cancelled, so nothing is left behind), and a latency probe of the
//! service's own read path on the new version and on the old.
use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::{Value, json};

use kit::config::Secret;

/// A card the simulated processor always accepts.
const TEST_CARD: &str = "4242424242424242";
/// How long a smoke order may stay pending before the suite calls it failed.
const ORDER_SETTLES_WITHIN: Duration = Duration::from_secs(20);

#[derive(Clone)]
pub struct Smoke {
    http: reqwest::Client,
    gateway: String,
    api_key: Secret,
}

/// Times a shed or rate-limited smoke request is sent again.
const SHED_RETRIES: u32 = 3;

/// A signed-in smoke customer and a product to buy.
pub struct Session {
    token: String,
    user_id: String,
    product_id: String,
}

/// What the suite did, and the customer it did it as (for the latency probe).
pub struct Passed {
    pub steps: Vec<String>,
    pub session: Session,
}

impl Smoke {
    pub fn new(gateway: &str, api_key: Secret) -> Self {
        let http = reqwest::Client::builder().timeout(Duration::from_secs(10)).build().unwrap_or_default();
        Self { http, gateway: gateway.trim_end_matches('/').to_string(), api_key }
    }

    fn request(&self, method: Method, path: &str, target: &str, token: Option<&str>) -> reqwest::RequestBuilder {
        let mut request = self
            .http
            .request(method, format!("{}{path}", self.gateway))
            .header("x-api-key", self.api_key.expose())
            .header(registry_wire::traffic::VERSION_OVERRIDE, target);
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        request
    }

    /// Sends a request; its JSON if the status is one of `ok`. A request the
    /// platform shed or rate-limited (503, 429: "retry with backoff") is sent
    /// again, up to `SHED_RETRIES` times: a busy machine is not a broken version.
    async fn expect(&self, step: &str, request: reqwest::RequestBuilder, ok: &[u16]) -> Result<Value, String> {
        let mut backoff = Duration::from_millis(250);
        let mut request = Some(request);
        for attempt in 0..=SHED_RETRIES {
            let Some(current) = request.take() else { break };
            // Kept for another attempt when the body can be cloned (JSON can).
            request = current.try_clone();
            let sent = current;
            let response = sent.send().await.map_err(|e| format!("{step}: {e}"))?;
            let status = response.status().as_u16();
            let body: Value = response.json().await.unwrap_or(Value::Null);
            if ok.contains(&status) {
                return Ok(body);
            }
            if !matches!(status, 429 | 503) || attempt == SHED_RETRIES || request.is_none() {
                return Err(format!("{step}: HTTP {status} {body}"));
            }
            tokio::time::sleep(backoff).await;
            backoff *= 2;
        }
        Err(format!("{step}: no answer"))
    }

    /// The whole suite against `service` at `version`; what failed, if anything.
    pub async fn run(&self, service: &str, version: &str, run_id: &str) -> Result<Passed, String> {
        let target = format!("{service}={version}");
        let mut done = Vec::new();
        let session = self.sign_in(&target, run_id, &mut done).await?;
        let order = json!({
            "items": [{ "productId": session.product_id, "quantity": "1" }],
            "paymentMethod": { "cardNumber": TEST_CARD, "expiryMonth": 12, "expiryYear": 2040, "cvc": "123" },
            "shippingAddress": { "line1": "1 Smoke Test Way", "city": "Springfield", "countryCode": "US" },
        });
        let placed = self
            .expect(
                "place an order",
                self.request(Method::POST, "/v1/orders", &target, Some(&session.token))
                    .header("idempotency-key", format!("smoke-{run_id}"))
                    .json(&order),
                &[200, 201, 202],
            )
            .await?;
        let order_id = placed["id"].as_str().ok_or("place an order: no order id in the answer")?.to_string();
        self.await_paid(&target, &session.token, &order_id).await?;
        done.push(format!("order {order_id} paid"));
        let path = format!("/v1/orders/{order_id}:cancel");
        let cancel =
            self.request(Method::POST, &path, &target, Some(&session.token)).json(&json!({ "reason": "smoke test" }));
        self.expect("cancel the smoke order", cancel, &[200, 202]).await?;
        done.push("order cancelled".into());
        let user = format!("/v1/users/{}", session.user_id);
        self.expect("read the profile", self.request(Method::GET, &user, &target, Some(&session.token)), &[200])
            .await?;
        done.push("profile read".into());
        Ok(Passed { steps: done, session })
    }

    async fn sign_in(&self, target: &str, run_id: &str, done: &mut Vec<String>) -> Result<Session, String> {
        let page = self
            .expect(
                "list products",
                self.request(Method::GET, "/v1/products?pageSize=20&inStockOnly=true", target, None),
                &[200],
            )
            .await?;
        let product_id = most_available(&page).ok_or("list products: no product in stock to order")?;
        self.expect(
            "read a product",
            self.request(Method::GET, &format!("/v1/products/{product_id}"), target, None),
            &[200],
        )
        .await?;
        done.push("catalogue read".into());
        // The local part stays within 64 bytes; the rollout is in the domain.
        let email = format!("smoke-{}@{run_id}.deploy.shopfast.invalid", uuid::Uuid::now_v7().simple());
        let password = format!("smoke-{}", uuid::Uuid::now_v7().simple());
        let signup = json!({ "email": email, "password": password, "name": "Smoke Test" });
        let user = self
            .expect("sign up", self.request(Method::POST, "/v1/users", target, None).json(&signup), &[200, 201])
            .await?;
        let user_id = user["id"].as_str().ok_or("sign up: no user id in the answer")?.to_string();
        let login = json!({ "email": email, "password": password });
        let token = self
            .expect("log in", self.request(Method::POST, "/v1/auth/login", target, None).json(&login), &[200])
            .await?;
        let token = token["accessToken"].as_str().ok_or("log in: no token in the answer")?.to_string();
        done.push("signed up and logged in".into());
        Ok(Session { token, user_id, product_id })
    }

    /// Polls the order until it is paid (or later), or fails.
    async fn await_paid(&self, target: &str, token: &str, order_id: &str) -> Result<(), String> {
        let started = Instant::now();
        loop {
            let path = format!("/v1/orders/{order_id}");
            let order =
                self.expect("read the order", self.request(Method::GET, &path, target, Some(token)), &[200]).await?;
            let status = order["status"].as_str().unwrap_or_default().trim_start_matches("ORDER_STATUS_");
            match status {
                "PAID" | "SHIPPED" | "DELIVERED" => return Ok(()),
                "PENDING" | "CREATED" if started.elapsed() < ORDER_SETTLES_WITHIN => {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                "PENDING" | "CREATED" => {
                    let within = ORDER_SETTLES_WITHIN.as_secs();
                    return Err(format!("the smoke order {order_id} was still {status} after {within} s"));
                }
                other => {
                    let reason = order["failureReason"].as_str().unwrap_or_default();
                    return Err(format!("the smoke order {order_id} ended {other}: {reason}"));
                }
            }
        }
    }

    /// p95 of `reads` reads of `service`'s own read path at `version`, in ms.
    pub async fn read_p95(&self, service: &str, version: &str, reads: u32, session: &Session) -> Result<f64, String> {
        let target = format!("{service}={version}");
        let card = json!({ "card": { "number": TEST_CARD, "expiryMonth": 12, "expiryYear": 2040, "cvc": "123" } });
        let token = Some(session.token.as_str());
        let mut took = Vec::with_capacity(reads as usize);
        for _ in 0..reads {
            let request = match service {
                "payments" => self.request(Method::POST, "/v1/payments:validateMethod", &target, None).json(&card),
                "users" => self.request(Method::GET, &format!("/v1/users/{}", session.user_id), &target, token),
                "orders" => self.request(Method::GET, "/v1/orders?pageSize=5", &target, token),
                _ => self.request(Method::GET, &format!("/v1/products/{}", session.product_id), &target, None),
            };
            let started = Instant::now();
            self.expect("latency probe", request, &[200]).await?;
            took.push(started.elapsed().as_secs_f64() * 1e3);
        }
        took.sort_by(f64::total_cmp);
        let at = ((took.len() as f64 * 0.95).ceil() as usize).clamp(1, took.len()) - 1;
        Ok(took[at])
    }
}

/// The product with the most units available on the page: traffic running beside the smoke suite may be buying
/// the first in-stock product's last unit while the suite orders it.
fn most_available(page: &Value) -> Option<String> {
    let units = |product: &Value| match &product["available"] {
        Value::String(s) => s.parse::<i64>().unwrap_or(0),
        other => other.as_i64().unwrap_or(0),
    };
    page["products"].as_array()?.iter().filter(|p| units(p) > 0).max_by_key(|p| units(p))?["id"]
        .as_str()
        .map(str::to_string)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_smoke_order_takes_the_product_with_most_units_left() {
        let page = json!({ "products": [
            { "id": "a", "available": "1" },
            { "id": "b", "available": "40" },
            { "id": "c", "available": 7 },
            { "id": "d", "available": "0" },
        ]});
        assert_eq!(most_available(&page).as_deref(), Some("b"));
        assert_eq!(most_available(&json!({ "products": [{ "id": "d", "available": "0" }] })), None);
        assert_eq!(most_available(&json!({})), None);
    }
}
