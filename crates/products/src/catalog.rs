//! The catalog's reads through the read cache (cache-aside), and every write
//! that changes what the cache holds — product rows, stock moves of
//! reservations — followed by its invalidation once committed: the product's
//! own key, and every search page at once (a new generation).
//!
//! Reservations themselves never read through the cache: ReserveInventory,
//! CheckAvailability and the saga's steps go to the database (`ProductStore`),
//! so a stale cached stock figure can only be shown, never sold.
use std::sync::Arc;

use kit_core::pagination::Page;
use readcache::{Lookup, ReadCache};

use crate::domain::{NewProduct, Product, Reservation, SearchFilter};
use crate::store::{ProductStore, Result};

#[derive(Clone)]
pub struct Catalog {
    pub store: ProductStore,
    cache: Arc<ReadCache>,
}

fn product_key(id: &str) -> String {
    format!("product:{id}")
}

impl Catalog {
    pub fn new(store: ProductStore, cache: Arc<ReadCache>) -> Self {
        Self { store, cache }
    }

    pub async fn get(&self, id: &str) -> Result<Option<Product>> {
        let ticket = match self.cache.lookup::<Product>(&product_key(id)).await {
            Lookup::Hit(product) => return Ok(Some(product)),
            Lookup::Miss(ticket) => ticket,
        };
        let product = self.store.get(id).await?;
        if let Some(product) = &product {
            self.cache.fill(ticket, product).await;
        }
        Ok(product)
    }

    pub async fn get_many(&self, ids: &[String]) -> Result<Vec<Product>> {
        let mut found = Vec::with_capacity(ids.len());
        let mut missing = Vec::new();
        let mut tickets = std::collections::HashMap::new();
        for id in ids {
            match self.cache.lookup::<Product>(&product_key(id)).await {
                Lookup::Hit(product) => found.push(product),
                Lookup::Miss(ticket) => {
                    missing.push(id.clone());
                    tickets.insert(id.clone(), ticket);
                }
            }
        }
        if !missing.is_empty() {
            for product in self.store.get_many(&missing).await? {
                if let Some(ticket) = tickets.remove(&product.id) {
                    self.cache.fill(ticket, &product).await;
                }
                found.push(product);
            }
        }
        // In the order asked for, as the store answers.
        found.sort_by_key(|p| ids.iter().position(|id| *id == p.id));
        found.dedup_by(|a, b| a.id == b.id);
        Ok(found)
    }

    pub async fn search(&self, filter: &SearchFilter, page: Page) -> Result<(Vec<Product>, i64)> {
        // The whole filter in the key (not its 64-bit fingerprint): a crafted
        // collision must not serve one search's page for another.
        let generation = self.cache.generation().await;
        let key = format!("search:{generation}:{filter:?}:{}:{}", page.offset, page.limit);
        let ticket = match self.cache.lookup::<(Vec<Product>, i64)>(&key).await {
            Lookup::Hit(page) => return Ok(page),
            Lookup::Miss(ticket) => ticket,
        };
        let result = self.store.search(filter, page).await?;
        self.cache.fill(ticket, &result).await;
        Ok(result)
    }

    /// What changed these products' rows: their keys and every page go.
    async fn changed(&self, keys: Vec<String>) {
        self.cache.invalidate(&keys).await;
        self.cache.bump_generation().await;
    }

    async fn moved(&self, reservation: Reservation) -> Reservation {
        self.changed(reservation.items.iter().map(|(id, _)| product_key(id)).collect()).await;
        reservation
    }

    pub async fn create(&self, product: NewProduct, now: i64) -> Result<Product> {
        let created = self.store.create(product, now).await?;
        self.changed(vec![product_key(&created.id)]).await;
        Ok(created)
    }

    pub async fn reserve(&self, order_id: &str, items: &[(String, i64)], ttl_ms: i64, now: i64) -> Result<Reservation> {
        let reservation = self.store.reserve(order_id, items, ttl_ms, now).await?;
        Ok(self.moved(reservation).await)
    }

    pub async fn release(&self, order_id: &str, now: i64) -> Result<Reservation> {
        let reservation = self.store.release(order_id, now).await?;
        Ok(self.moved(reservation).await)
    }

    pub async fn commit(&self, order_id: &str, now: i64) -> Result<Reservation> {
        let reservation = self.store.commit(order_id, now).await?;
        Ok(self.moved(reservation).await)
    }

    pub async fn restock(&self, order_id: &str, now: i64) -> Result<Reservation> {
        let reservation = self.store.restock(order_id, now).await?;
        Ok(self.moved(reservation).await)
    }

    /// Expires reservations past their deadline; returns how many.
    pub async fn expire_due(&self, now: i64, limit: i64) -> Result<usize> {
        let expired = self.store.expire_due_reservations(now, limit).await?;
        if !expired.is_empty() {
            self.changed(expired.iter().flat_map(|r| r.items.iter().map(|(id, _)| product_key(id))).collect()).await;
        }
        Ok(expired.len())
    }
}
