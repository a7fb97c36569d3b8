//! Orders, their line items, the saga records and the outbox in SQL. A status
//! change is a conditional update from the status the caller saw, and the
//! event that announces it is written in the same transaction.
use futures::future::BoxFuture;
use kit::db::Db;
use kit_core::error::DomainError;
use kit_core::time::now_millis;
use saga::{SagaRecord, SagaState, SagaStore, StoreError as SagaStoreError};
use sqlx::Row;
use sqlx::any::AnyRow;

use crate::domain::{Line, OrderStatus, Totals, check_transition};

pub use kit::error::StoreError;

/// Stored data that cannot be read back: a decode error (INTERNAL to callers).
fn corrupt(what: String) -> StoreError {
    StoreError::Db(sqlx::Error::Decode(what.into()))
}

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Order {
    pub id: String,
    pub user_id: String,
    pub status: OrderStatus,
    pub currency_code: String,
    pub lines: Vec<Line>,
    pub totals: Totals,
    /// JSON of the address snapshot.
    pub shipping_address: String,
    pub saga_id: String,
    pub payment_id: Option<String>,
    pub failure_reason: Option<String>,
    pub created_at: i64,
    pub updated_at: i64,
}

/// An event from the outbox.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    pub id: String,
    pub order_id: String,
    pub kind: String,
    pub payload: String,
    pub attempts: i64,
    /// The trace that wrote it (W3C `traceparent`), continued by its handling;
    /// empty outside any trace.
    pub traceparent: String,
}

/// What else a status change writes.
#[derive(Debug, Default)]
pub struct Change<'a> {
    pub payment_id: Option<&'a str>,
    pub failure_reason: Option<&'a str>,
    /// An outbox event (kind, payload, due in ms from now) in the same transaction.
    pub event: Option<(&'a str, &'a str, i64)>,
    /// The outbox event this change answers, marked handled in the same transaction.
    pub handles: Option<&'a str>,
}

#[derive(Clone)]
pub struct OrderStore {
    db: Db,
    /// Order reads for their owners (GetOrder) through the read cache; every
    /// change below invalidates the order once committed. The saga and the
    /// conditional transitions always read the database.
    cache: Option<std::sync::Arc<readcache::ReadCache>>,
}

impl OrderStore {
    pub fn new(db: Db) -> Self {
        Self { db, cache: None }
    }

    pub fn with_cache(mut self, cache: std::sync::Arc<readcache::ReadCache>) -> Self {
        self.cache = Some(cache);
        self
    }

    fn cache_key(id: &str) -> String {
        format!("order:{id}")
    }

    async fn invalidate(&self, id: &str) {
        if let Some(cache) = &self.cache {
            cache.invalidate(&[Self::cache_key(id)]).await;
        }
    }

    /// `get`, through the read cache.
    pub async fn get_cached(&self, id: &str) -> Result<Order, StoreError> {
        let Some(cache) = &self.cache else { return self.get(id).await };
        let ticket = match cache.lookup::<Order>(&Self::cache_key(id)).await {
            readcache::Lookup::Hit(order) => return Ok(order),
            readcache::Lookup::Miss(ticket) => ticket,
        };
        let order = self.get(id).await?;
        cache.fill(ticket, &order).await;
        Ok(order)
    }

    /// Inserts an order and its lines in one transaction.
    pub async fn create(&self, order: &Order) -> Result<(), StoreError> {
        let mut tx = self.db.begin_write().await?;
        sqlx::query(
            "INSERT INTO orders (id, user_id, status, currency_code, subtotal_minor, tax_minor, shipping_minor, \
             total_minor, shipping_address, saga_id, payment_id, failure_reason, created_at, updated_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $13)",
        )
        .bind(&order.id)
        .bind(&order.user_id)
        .bind(order.status.as_str())
        .bind(&order.currency_code)
        .bind(order.totals.subtotal)
        .bind(order.totals.tax)
        .bind(order.totals.shipping)
        .bind(order.totals.total)
        .bind(&order.shipping_address)
        .bind(&order.saga_id)
        .bind(order.payment_id.as_deref())
        .bind(order.failure_reason.as_deref())
        .bind(order.created_at)
        .execute(&mut *tx)
        .await
        .map_err(|e| match &e {
            sqlx::Error::Database(d) if d.is_unique_violation() => {
                StoreError::Domain(DomainError::AlreadyExists(format!("order {} exists", order.id)))
            }
            _ => StoreError::Db(e),
        })?;
        for line in &order.lines {
            sqlx::query(
                "INSERT INTO order_items (order_id, product_id, sku, name, quantity, unit_price_minor) \
                 VALUES ($1, $2, $3, $4, $5, $6)",
            )
            .bind(&order.id)
            .bind(&line.product_id)
            .bind(&line.sku)
            .bind(&line.name)
            .bind(line.quantity)
            .bind(line.unit_price_minor)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        // A saga's retry may write the order again: nothing stale stays.
        self.invalidate(&order.id).await;
        Ok(())
    }

    pub async fn get(&self, id: &str) -> Result<Order, StoreError> {
        let row = sqlx::query("SELECT * FROM orders WHERE id = $1")
            .bind(id)
            .fetch_optional(self.db.pool())
            .await?
            .ok_or_else(|| DomainError::NotFound(format!("no order {id}")))?;
        self.with_lines(&row).await
    }

    async fn with_lines(&self, row: &AnyRow) -> Result<Order, StoreError> {
        let status: String = row.try_get("status")?;
        let id: String = row.try_get("id")?;
        let currency_code: String = row.try_get("currency_code")?;
        let lines = sqlx::query(
            "SELECT product_id, sku, name, quantity, unit_price_minor FROM order_items WHERE order_id = $1 ORDER BY product_id",
        )
        .bind(&id)
        .fetch_all(self.db.pool())
        .await?
        .iter()
        .map(|r| {
            Ok(Line {
                product_id: r.try_get("product_id")?,
                sku: r.try_get("sku")?,
                name: r.try_get("name")?,
                quantity: r.try_get("quantity")?,
                unit_price_minor: r.try_get("unit_price_minor")?,
                currency_code: currency_code.clone(),
            })
        })
        .collect::<Result<Vec<_>, sqlx::Error>>()?;
        Ok(Order {
            status: OrderStatus::parse(&status).ok_or_else(|| corrupt(format!("order status {status}")))?,
            id,
            user_id: row.try_get("user_id")?,
            currency_code,
            lines,
            totals: Totals {
                subtotal: row.try_get("subtotal_minor")?,
                tax: row.try_get("tax_minor")?,
                shipping: row.try_get("shipping_minor")?,
                total: row.try_get("total_minor")?,
            },
            shipping_address: row.try_get("shipping_address")?,
            saga_id: row.try_get("saga_id")?,
            payment_id: row.try_get("payment_id")?,
            failure_reason: row.try_get("failure_reason")?,
            created_at: row.try_get("created_at")?,
            updated_at: row.try_get("updated_at")?,
        })
    }

    /// A user's orders, newest first, `limit` from `offset`, optionally of one status.
    pub async fn list(
        &self,
        user_id: &str,
        status: Option<OrderStatus>,
        offset: i64,
        limit: i64,
    ) -> Result<(Vec<Order>, i64), StoreError> {
        let status = status.map(OrderStatus::as_str).unwrap_or("");
        let total: i64 =
            sqlx::query("SELECT COUNT(*) AS n FROM orders WHERE user_id = $1 AND ($2 = '' OR status = $2)")
                .bind(user_id)
                .bind(status)
                .fetch_one(self.db.pool())
                .await?
                .try_get("n")?;
        let rows = sqlx::query(
            "SELECT * FROM orders WHERE user_id = $1 AND ($2 = '' OR status = $2) \
             ORDER BY created_at DESC, id DESC LIMIT $3 OFFSET $4",
        )
        .bind(user_id)
        .bind(status)
        .bind(limit)
        .bind(offset)
        .fetch_all(self.db.pool())
        .await?;
        let mut orders = Vec::with_capacity(rows.len());
        for row in &rows {
            orders.push(self.with_lines(row).await?);
        }
        Ok((orders, total))
    }

    /// Moves an order from `from` to `to` (refused unless it is still `from`),
    /// with the change's extra fields and outbox event, in one transaction.
    pub async fn transition(
        &self,
        id: &str,
        from: OrderStatus,
        to: OrderStatus,
        change: Change<'_>,
    ) -> Result<(), StoreError> {
        check_transition(from, to)?;
        let mut tx = self.db.begin_write().await?;
        let now = now_millis();
        let updated = sqlx::query(
            "UPDATE orders SET status = $1, updated_at = $2, payment_id = COALESCE($3, payment_id), \
             failure_reason = COALESCE($4, failure_reason) WHERE id = $5 AND status = $6",
        )
        .bind(to.as_str())
        .bind(now)
        .bind(change.payment_id)
        .bind(change.failure_reason)
        .bind(id)
        .bind(from.as_str())
        .execute(&mut *tx)
        .await?;
        if updated.rows_affected() != 1 {
            let current = sqlx::query("SELECT status FROM orders WHERE id = $1")
                .bind(id)
                .fetch_optional(&mut *tx)
                .await?
                .map(|r| r.try_get::<String, _>("status"))
                .transpose()?;
            return Err(match current {
                None => DomainError::NotFound(format!("no order {id}")),
                Some(status) => {
                    DomainError::FailedPrecondition(format!("order {id} is {status}, not {}", from.as_str()))
                }
            }
            .into());
        }
        if let Some((kind, payload, delay_ms)) = change.event {
            sqlx::query(
                "INSERT INTO outbox (id, order_id, kind, payload, available_at, created_at, traceparent) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7)",
            )
            .bind(uuid::Uuid::now_v7().to_string())
            .bind(id)
            .bind(kind)
            .bind(payload)
            .bind(now + delay_ms)
            .bind(now)
            // The trace of the change travels with its event.
            .bind(kit_telemetry::otel::current_traceparent().unwrap_or_default())
            .execute(&mut *tx)
            .await?;
        }
        if let Some(event_id) = change.handles {
            let marked =
                sqlx::query("UPDATE outbox SET handled_at = $1 WHERE id = $2 AND order_id = $3 AND handled_at IS NULL")
                    .bind(now)
                    .bind(event_id)
                    .bind(id)
                    .execute(&mut *tx)
                    .await?;
            // The step moved the order, so its event was still open: another
            // order's event (or a made-up id) must not move it, nor close an
            // event its own order still waits on. Dropped, the transaction
            // rolls back.
            if marked.rows_affected() != 1 {
                return Err(DomainError::invalid(format!("event {event_id} is not an open event of order {id}")).into());
            }
        }
        tx.commit().await?;
        self.invalidate(id).await;
        Ok(())
    }

    /// Outbox events of `kind` due by `now` and not published yet, oldest first.
    pub async fn due_events(&self, kind: &str, now: i64, limit: i64) -> Result<Vec<Event>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, order_id, kind, payload, attempts, traceparent FROM outbox \
             WHERE published_at IS NULL AND available_at <= $1 AND kind = $2 \
             ORDER BY available_at, id LIMIT $3",
        )
        .bind(now)
        .bind(kind)
        .bind(limit)
        .fetch_all(self.db.pool())
        .await?;
        decode_events(&rows)
    }

    /// Outbox events of any of `kinds` (at most two) due by `now` and not
    /// published yet, oldest first: one query for the relay's poll.
    pub async fn due_events_of(&self, kinds: &[&str], now: i64, limit: i64) -> Result<Vec<Event>, StoreError> {
        let (first, second) = match kinds {
            [one] => (*one, *one),
            [one, two] => (*one, *two),
            _ => return Err(DomainError::Invalid("due_events_of takes one or two kinds".into()).into()),
        };
        let rows = sqlx::query(
            "SELECT id, order_id, kind, payload, attempts, traceparent FROM outbox \
             WHERE published_at IS NULL AND available_at <= $1 AND (kind = $2 OR kind = $3) \
             ORDER BY available_at, id LIMIT $4",
        )
        .bind(now)
        .bind(first)
        .bind(second)
        .bind(limit)
        .fetch_all(self.db.pool())
        .await?;
        decode_events(&rows)
    }

    /// Events handled in this process: published and handled at once.
    pub async fn mark_published(&self, event_id: &str) -> Result<(), StoreError> {
        let now = now_millis();
        sqlx::query(
            "UPDATE outbox SET published_at = $1, handled_at = COALESCE(handled_at, $1) \
             WHERE id = $2 AND published_at IS NULL",
        )
        .bind(now)
        .bind(event_id)
        .execute(self.db.pool())
        .await?;
        Ok(())
    }

    /// Takes events for the relay to publish: only those no other relay took
    /// (an Orders replica beside this one) come back.
    pub async fn claim_for_publish(&self, events: Vec<Event>) -> Result<Vec<Event>, StoreError> {
        // No write transaction for nothing: the relay asks every 100 ms.
        if events.is_empty() {
            return Ok(events);
        }
        let now = now_millis();
        let mut claimed = Vec::with_capacity(events.len());
        let mut tx = self.db.begin_write().await?;
        for event in events {
            let updated = sqlx::query("UPDATE outbox SET published_at = $1 WHERE id = $2 AND published_at IS NULL")
                .bind(now)
                .bind(&event.id)
                .execute(&mut *tx)
                .await?;
            if updated.rows_affected() == 1 {
                claimed.push(event);
            }
        }
        tx.commit().await?;
        Ok(claimed)
    }

    /// Events the broker did not take: the next pass publishes them.
    pub async fn unclaim(&self, ids: &[String]) -> Result<(), StoreError> {
        if ids.is_empty() {
            return Ok(());
        }
        let mut tx = self.db.begin_write().await?;
        for id in ids {
            sqlx::query("UPDATE outbox SET published_at = NULL WHERE id = $1 AND handled_at IS NULL")
                .bind(id)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Events of `kind` published before `before` and not handled, republished
    /// fewer than `max_republish` times, oldest first.
    pub async fn unhandled(
        &self,
        kind: &str,
        before: i64,
        max_republish: i64,
        limit: i64,
    ) -> Result<Vec<Event>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, order_id, kind, payload, attempts, traceparent FROM outbox \
             WHERE handled_at IS NULL AND published_at IS NOT NULL AND published_at < $1 \
             AND republished < $2 AND kind = $3 ORDER BY published_at, id LIMIT $4",
        )
        .bind(before)
        .bind(max_republish)
        .bind(kind)
        .bind(limit)
        .fetch_all(self.db.pool())
        .await?;
        decode_events(&rows)
    }

    /// Events published again: counted, and their publish time moved on.
    pub async fn mark_republished(&self, ids: &[String]) -> Result<(), StoreError> {
        let now = now_millis();
        let mut tx = self.db.begin_write().await?;
        for id in ids {
            sqlx::query("UPDATE outbox SET republished = republished + 1, published_at = $1 WHERE id = $2")
                .bind(now)
                .bind(id)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// An event whose change was already made (a replay) or can no longer be.
    pub async fn mark_handled(&self, order_id: &str, event_id: &str) -> Result<(), StoreError> {
        sqlx::query("UPDATE outbox SET handled_at = $1 WHERE id = $2 AND order_id = $3 AND handled_at IS NULL")
            .bind(now_millis())
            .bind(event_id)
            .bind(order_id)
            .execute(self.db.pool())
            .await?;
        Ok(())
    }

    /// Outbox rows by state, for the relay's gauges: (due and unpublished, published and unhandled).
    pub async fn outbox_backlog(&self, now: i64) -> Result<(i64, i64), StoreError> {
        let row = sqlx::query(
            "SELECT \
             COALESCE(SUM(CASE WHEN published_at IS NULL AND available_at <= $1 THEN 1 ELSE 0 END), 0) AS due, \
             COALESCE(SUM(CASE WHEN published_at IS NOT NULL AND handled_at IS NULL THEN 1 ELSE 0 END), 0) AS open \
             FROM outbox WHERE handled_at IS NULL",
        )
        .bind(now)
        .fetch_one(self.db.pool())
        .await?;
        Ok((row.try_get("due")?, row.try_get("open")?))
    }

    /// A failed publish: try again after `delay_ms`.
    pub async fn retry_later(&self, event_id: &str, delay_ms: i64) -> Result<(), StoreError> {
        sqlx::query("UPDATE outbox SET attempts = attempts + 1, available_at = $1 WHERE id = $2")
            .bind(now_millis() + delay_ms)
            .bind(event_id)
            .execute(self.db.pool())
            .await?;
        Ok(())
    }

    /// Sagas, most recently updated first: only those a person must look at
    /// when `needs_intervention`, only one order's when `order_id` is set.
    pub async fn list_sagas(
        &self,
        needs_intervention: bool,
        order_id: Option<&str>,
        limit: i64,
    ) -> Result<Vec<SagaRecord>, StoreError> {
        let rows = sqlx::query(
            "SELECT record FROM sagas WHERE ($1 = 0 OR manual_intervention = 1) AND ($2 = '' OR order_id = $2) \
             ORDER BY updated_at DESC, id LIMIT $3",
        )
        .bind(i64::from(needs_intervention))
        .bind(order_id.unwrap_or_default())
        .bind(limit)
        .fetch_all(self.db.pool())
        .await?;
        rows.iter().map(decode_saga).collect()
    }

    /// The latest saga placing `order_id`, if any.
    pub async fn saga_for_order(&self, order_id: &str) -> Result<Option<SagaRecord>, StoreError> {
        let row = sqlx::query("SELECT record FROM sagas WHERE order_id = $1 ORDER BY created_at DESC, id LIMIT 1")
            .bind(order_id)
            .fetch_optional(self.db.pool())
            .await?;
        row.as_ref().map(decode_saga).transpose()
    }

    pub async fn saga(&self, id: &str) -> Result<SagaRecord, StoreError> {
        let row = sqlx::query("SELECT record FROM sagas WHERE id = $1")
            .bind(id)
            .fetch_optional(self.db.pool())
            .await?
            .ok_or_else(|| DomainError::NotFound(format!("no saga {id}")))?;
        decode_saga(&row)
    }
}

fn decode_events(rows: &[AnyRow]) -> Result<Vec<Event>, StoreError> {
    Ok(rows
        .iter()
        .map(|r| {
            Ok(Event {
                id: r.try_get("id")?,
                order_id: r.try_get("order_id")?,
                kind: r.try_get("kind")?,
                payload: r.try_get("payload")?,
                attempts: r.try_get("attempts")?,
                traceparent: r.try_get("traceparent")?,
            })
        })
        .collect::<Result<_, sqlx::Error>>()?)
}

fn decode_saga(row: &AnyRow) -> Result<SagaRecord, StoreError> {
    let text: String = row.try_get("record")?;
    serde_json::from_str(&text).map_err(|e| corrupt(format!("saga record: {e}")))
}

fn state_name(state: SagaState) -> &'static str {
    match state {
        SagaState::Running => "RUNNING",
        SagaState::Compensating => "COMPENSATING",
        SagaState::Completed => "COMPLETED",
        SagaState::Compensated => "COMPENSATED",
        SagaState::Failed => "FAILED",
    }
}

impl SagaStore for OrderStore {
    fn save<'a>(&'a self, saga: &'a SagaRecord) -> BoxFuture<'a, Result<(), SagaStoreError>> {
        Box::pin(async move {
            let record = serde_json::to_string(saga).map_err(|e| SagaStoreError(e.to_string()))?;
            sqlx::query(
                "INSERT INTO sagas (id, order_id, state, manual_intervention, record, created_at, updated_at) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (id) DO UPDATE SET state = $3, \
                 manual_intervention = $4, record = $5, updated_at = $7",
            )
            .bind(&saga.id)
            .bind(&saga.order_id)
            .bind(state_name(saga.state))
            .bind(i64::from(saga.manual_intervention))
            .bind(record)
            .bind(saga.created_at_ms)
            .bind(saga.updated_at_ms)
            .execute(self.db.pool())
            .await
            .map_err(|e| SagaStoreError(e.to_string()))?;
            Ok(())
        })
    }

    fn unfinished(&self) -> BoxFuture<'_, Result<Vec<SagaRecord>, SagaStoreError>> {
        Box::pin(async move {
            let rows =
                sqlx::query("SELECT record FROM sagas WHERE state IN ('RUNNING', 'COMPENSATING') ORDER BY created_at")
                    .fetch_all(self.db.pool())
                    .await
                    .map_err(|e| SagaStoreError(e.to_string()))?;
            rows.iter().map(|r| decode_saga(r).map_err(|e| SagaStoreError(e.to_string()))).collect()
        })
    }
}
