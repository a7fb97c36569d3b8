//! Shop journeys through the gateway, as real customers make them: browse,
//! search, sign up, order, check their orders, order and cancel. Every HTTP
//! call is timed and classified into the stats; a journey that meets an
//! error simply ends, as a customer would leave.
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::Rng;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::stats::{Outcome, Stats};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Journey {
    Browse,
    Search,
    SignUp,
    Order,
    CheckOrders,
    OrderAndCancel,
}

/// How often each journey is picked, relative to the others.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Weights {
    pub browse: u32,
    pub search: u32,
    pub sign_up: u32,
    pub order: u32,
    pub check_orders: u32,
    pub order_and_cancel: u32,
}

impl Default for Weights {
    fn default() -> Self {
        Self { browse: 35, search: 25, sign_up: 5, order: 15, check_orders: 15, order_and_cancel: 5 }
    }
}

impl Weights {
    fn table(&self) -> [(Journey, u32); 6] {
        [
            (Journey::Browse, self.browse),
            (Journey::Search, self.search),
            (Journey::SignUp, self.sign_up),
            (Journey::Order, self.order),
            (Journey::CheckOrders, self.check_orders),
            (Journey::OrderAndCancel, self.order_and_cancel),
        ]
    }

    pub fn check(&self) -> Result<(), String> {
        if self.table().iter().map(|(_, w)| u64::from(*w)).sum::<u64>() == 0 {
            return Err("at least one journey weight must be above 0".into());
        }
        Ok(())
    }

    /// The journey a draw in [0, total weight) falls on.
    pub fn pick(&self, draw: u32) -> Journey {
        weighted(&self.table(), draw).unwrap_or(Journey::Browse)
    }

    pub fn total(&self) -> u32 {
        self.table().iter().map(|(_, w)| *w).sum()
    }
}

/// The entry of `table` a draw in [0, sum of weights) falls on.
fn weighted<T: Copy>(table: &[(T, u32)], mut draw: u32) -> Option<T> {
    for (item, weight) in table {
        if draw < *weight {
            return Some(*item);
        }
        draw -= weight;
    }
    None
}

struct Customer {
    token: String,
}

/// What journeys share: the HTTP client, signed-up customers, products seen.
pub struct Shop {
    http: reqwest::Client,
    gateway: String,
    api_key: String,
    customers: Mutex<Vec<Customer>>,
    products: Mutex<Vec<String>>,
    pub stats: Arc<Mutex<Stats>>,
}

const SEARCH_WORDS: [&str; 8] = ["book", "lamp", "shirt", "mug", "chair", "pen", "bag", "wireless"];
/// Most orders pay with a good card; some are declined, as in a real shop.
const CARDS: [(&str, u32); 2] = [("4242424242424242", 9), ("4000000000009995", 1)];
/// Customers kept to act again; older ones make room.
const MAX_CUSTOMERS: usize = 500;

impl Shop {
    pub fn new(
        gateway: &str,
        api_key: &str,
        timeout: Duration,
        stats: Arc<Mutex<Stats>>,
    ) -> Result<Self, reqwest::Error> {
        Ok(Self {
            http: reqwest::Client::builder().timeout(timeout).build()?,
            gateway: gateway.trim_end_matches('/').to_string(),
            api_key: api_key.to_string(),
            customers: Mutex::new(Vec::new()),
            products: Mutex::new(Vec::new()),
            stats,
        })
    }

    /// One call: timed, classified, its JSON body if it succeeded.
    async fn call(&self, request: reqwest::RequestBuilder) -> Option<Value> {
        let request = if self.api_key.is_empty() { request } else { request.header("x-api-key", &self.api_key) };
        let started = Instant::now();
        let response = request.send().await;
        let latency_ms = started.elapsed().as_secs_f64() * 1_000.0;
        let (outcome, body) = match response {
            Ok(response) => {
                let outcome = Outcome::of_status(response.status().as_u16());
                let body = if outcome == Outcome::Success { response.json::<Value>().await.ok() } else { None };
                (outcome, body)
            }
            Err(_) => (Outcome::Failed, None),
        };
        if let Ok(mut stats) = self.stats.lock() {
            stats.record(kit_core::time::now_millis(), latency_ms, outcome);
        }
        body
    }

    fn get(&self, path: &str) -> reqwest::RequestBuilder {
        self.http.get(format!("{}{path}", self.gateway))
    }

    fn post(&self, path: &str) -> reqwest::RequestBuilder {
        self.http.post(format!("{}{path}", self.gateway))
    }

    pub async fn run(&self, journey: Journey) {
        match journey {
            Journey::Browse => self.browse().await,
            Journey::Search => self.search().await,
            Journey::SignUp => {
                self.sign_up().await;
            }
            Journey::Order => {
                self.order().await;
            }
            Journey::CheckOrders => self.check_orders().await,
            Journey::OrderAndCancel => self.order_and_cancel().await,
        }
    }

    fn remember_products(&self, page: &Value) -> Option<String> {
        let ids: Vec<String> = page["products"]
            .as_array()?
            .iter()
            .filter(|p| p["available"].as_str().and_then(|a| a.parse::<i64>().ok()).unwrap_or(0) > 0)
            .filter_map(|p| p["id"].as_str().map(str::to_string))
            .collect();
        let pick = ids.get(rand::rng().random_range(0..ids.len().max(1))).cloned();
        if !ids.is_empty()
            && let Ok(mut products) = self.products.lock()
        {
            *products = ids;
        }
        pick
    }

    async fn browse(&self) {
        let Some(page) = self.call(self.get("/v1/products?pageSize=20&inStockOnly=true")).await else { return };
        if let Some(id) = self.remember_products(&page) {
            self.call(self.get(&format!("/v1/products/{id}"))).await;
        }
    }

    async fn search(&self) {
        let word = SEARCH_WORDS[rand::rng().random_range(0..SEARCH_WORDS.len())];
        self.call(self.get(&format!("/v1/products?query={word}&pageSize=10"))).await;
    }

    /// A new customer, signed in and remembered; their token.
    async fn sign_up(&self) -> Option<String> {
        let email = format!("shopper-{}@loadgen.example.com", uuid::Uuid::now_v7().simple());
        let password = "loadgen shopper password 1";
        let user = json!({ "email": email, "password": password, "name": "Load Shopper" });
        self.call(self.post("/v1/users").json(&user)).await?;
        let login = json!({ "email": email, "password": password });
        let token = self.call(self.post("/v1/auth/login").json(&login)).await?["accessToken"].as_str()?.to_string();
        if let Ok(mut customers) = self.customers.lock() {
            if customers.len() >= MAX_CUSTOMERS {
                customers.remove(0);
            }
            customers.push(Customer { token: token.clone() });
        }
        Some(token)
    }

    /// A known customer's token, or a new customer's.
    async fn customer(&self) -> Option<String> {
        let known = self.customers.lock().ok().and_then(|customers| {
            (!customers.is_empty()).then(|| customers[rand::rng().random_range(0..customers.len())].token.clone())
        });
        match known {
            Some(token) => Some(token),
            None => self.sign_up().await,
        }
    }

    async fn product(&self) -> Option<String> {
        let known = self.products.lock().ok().and_then(|products| {
            (!products.is_empty()).then(|| products[rand::rng().random_range(0..products.len())].clone())
        });
        match known {
            Some(id) => Some(id),
            None => self.remember_products(&self.call(self.get("/v1/products?pageSize=50&inStockOnly=true")).await?),
        }
    }

    /// Places an order; its id if it was paid.
    async fn order(&self) -> Option<(String, String)> {
        let token = self.customer().await?;
        let product = self.product().await?;
        let (card, quantity) = {
            let mut rng = rand::rng();
            let draw = rng.random_range(0..CARDS.iter().map(|c| c.1).sum::<u32>());
            (weighted(&CARDS, draw).unwrap_or(CARDS[0].0), rng.random_range(1..=2))
        };
        let body = json!({
            "items": [{ "productId": product, "quantity": quantity.to_string() }],
            "paymentMethod": { "cardNumber": card, "expiryMonth": 12, "expiryYear": 2040, "cvc": "123" },
            "shippingAddress": { "line1": "1 Load Street", "city": "Springfield", "countryCode": "US" },
        });
        let request = self
            .post("/v1/orders")
            .bearer_auth(&token)
            .header("idempotency-key", format!("loadgen-{}", uuid::Uuid::now_v7().simple()))
            .json(&body);
        let order = self.call(request).await?;
        Some((token, order["id"].as_str()?.to_string()))
    }

    async fn check_orders(&self) {
        let Some(token) = self.customer().await else { return };
        self.call(self.get("/v1/orders?pageSize=10").bearer_auth(&token)).await;
    }

    async fn order_and_cancel(&self) {
        let Some((token, order_id)) = self.order().await else { return };
        let reason = json!({ "reason": "changed my mind" });
        self.call(self.post(&format!("/v1/orders/{order_id}:cancel")).bearer_auth(&token).json(&reason)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn picks_follow_the_weights() {
        let weights = Weights { browse: 2, search: 0, sign_up: 1, order: 0, check_orders: 0, order_and_cancel: 1 };
        assert_eq!(weights.total(), 4);
        let picks: Vec<Journey> = (0..4).map(|draw| weights.pick(draw)).collect();
        assert_eq!(picks, [Journey::Browse, Journey::Browse, Journey::SignUp, Journey::OrderAndCancel]);
        assert!(weights.check().is_ok());
        let none = Weights { browse: 0, search: 0, sign_up: 0, order: 0, check_orders: 0, order_and_cancel: 0 };
        assert!(none.check().is_err());
    }
}
