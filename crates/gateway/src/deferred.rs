//! The `queue` fallback: a write that could not reach its backend is stored in
//! the gateway's database and the caller gets 202 Accepted with an id; a
//! worker delivers stored calls in order once the backend's breaker lets calls
//! through again. Delivery carries an idempotency key (the caller's, or
//! `deferred:<id>`), so a redelivery after a gateway crash is recognisable by
//! the backend.
use std::collections::BTreeMap;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use sqlx::Row;

use kit::db::Db;
use kit_core::time::now_millis;

/// Attempts before a deferred call is marked failed.
pub const MAX_DELIVERY_ATTEMPTS: i64 = 20;

#[derive(Debug, Clone, PartialEq)]
pub struct DeferredCall {
    pub id: String,
    pub backend: String,
    pub grpc_path: String,
    pub message: Vec<u8>,
    pub metadata: BTreeMap<String, String>,
    pub attempts: i64,
}

#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    #[error(transparent)]
    Db(#[from] sqlx::Error),
    #[error("stored call {0} is unreadable: {1}")]
    Corrupt(String, String),
    #[error("the deferred-call queue is full ({0} calls pending)")]
    Full(i64),
}

/// The advisory lock key pushes take on PostgreSQL ("deferred" in ASCII).
const PUSH_LOCK: i64 = 0x6465_6665_7272_6564;

/// Settled calls are kept this long (for `status`), then deleted.
const SETTLED_RETENTION_MS: i64 = 24 * 3_600_000;

#[derive(Clone)]
pub struct DeferredQueue {
    db: Db,
    /// At most this many calls pending at once; more are refused.
    max_pending: i64,
}

impl DeferredQueue {
    pub fn new(db: Db, max_pending: usize) -> Self {
        Self { db, max_pending: i64::try_from(max_pending).unwrap_or(i64::MAX) }
    }

    pub async fn push(
        &self,
        backend: &str,
        grpc_path: &str,
        message: &[u8],
        metadata: &BTreeMap<String, String>,
    ) -> Result<String, QueueError> {
        let id = uuid::Uuid::now_v7().to_string();
        let now = now_millis();
        let metadata = serde_json::to_string(metadata).map_err(|e| QueueError::Corrupt(id.clone(), e.to_string()))?;
        // One statement checks the bound and inserts. SQLite runs one writer
        // at a time, so that is enough there; PostgreSQL lets concurrent
        // statements each see the count before the others' rows (a burst of
        // 20 at a bound of 5 kept more than 5 in 9 of 15 runs), so pushes take a
        // transaction-scoped advisory lock first: every gateway sharing the
        // database counts against the one bound.
        let mut tx = self.db.pool().begin().await?;
        if self.db.backend() == kit::db::Backend::Postgres {
            sqlx::query("SELECT pg_advisory_xact_lock($1)").bind(PUSH_LOCK).execute(&mut *tx).await?;
        }
        let inserted = sqlx::query(
            "INSERT INTO deferred_calls (id, backend, grpc_path, message, metadata, state, attempts, created_at_ms, updated_at_ms) \
             SELECT $1, $2, $3, $4, $5, 'pending', 0, $6, $6 \
             WHERE (SELECT COUNT(*) FROM deferred_calls WHERE state = 'pending') < $7",
        )
        .bind(&id)
        .bind(backend)
        .bind(grpc_path)
        .bind(STANDARD.encode(message))
        .bind(metadata)
        .bind(now)
        .bind(self.max_pending)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        if inserted.rows_affected() == 0 {
            metrics::counter!("deferred_calls_refused_total", "service" => backend.to_string()).increment(1);
            return Err(QueueError::Full(self.max_pending));
        }
        metrics::gauge!("deferred_calls_pending", "service" => backend.to_string()).increment(1.0);
        Ok(id)
    }

    /// The oldest pending calls for `backend`.
    pub async fn pending(&self, backend: &str, limit: i64) -> Result<Vec<DeferredCall>, QueueError> {
        let rows = sqlx::query(
            "SELECT id, backend, grpc_path, message, metadata, attempts FROM deferred_calls \
             WHERE state = 'pending' AND backend = $1 ORDER BY created_at_ms, id LIMIT $2",
        )
        .bind(backend)
        .bind(limit)
        .fetch_all(self.db.pool())
        .await?;
        rows.into_iter()
            .map(|row| {
                let id: String = row.try_get("id")?;
                let corrupt = |e: String| QueueError::Corrupt(id.clone(), e);
                let message =
                    STANDARD.decode(row.try_get::<String, _>("message")?).map_err(|e| corrupt(e.to_string()))?;
                let metadata =
                    serde_json::from_str(&row.try_get::<String, _>("metadata")?).map_err(|e| corrupt(e.to_string()))?;
                Ok(DeferredCall {
                    id: id.clone(),
                    backend: row.try_get("backend")?,
                    grpc_path: row.try_get("grpc_path")?,
                    message,
                    metadata,
                    attempts: row.try_get("attempts")?,
                })
            })
            .collect()
    }

    /// Records a delivery attempt: delivered, failed for good, or still pending.
    pub async fn settle(&self, call: &DeferredCall, outcome: Delivery) -> Result<(), QueueError> {
        let attempts = call.attempts + 1;
        let (state, error) = match &outcome {
            Delivery::Delivered => ("delivered", None),
            Delivery::Rejected(error) => ("failed", Some(error.as_str())),
            Delivery::Retry(error) if attempts >= MAX_DELIVERY_ATTEMPTS => ("failed", Some(error.as_str())),
            Delivery::Retry(error) => ("pending", Some(error.as_str())),
        };
        sqlx::query(
            "UPDATE deferred_calls SET state = $1, attempts = $2, last_error = $3, updated_at_ms = $4 \
             WHERE id = $5 AND state = 'pending'",
        )
        .bind(state)
        .bind(attempts)
        .bind(error)
        .bind(now_millis())
        .bind(&call.id)
        .execute(self.db.pool())
        .await?;
        if state != "pending" {
            metrics::gauge!("deferred_calls_pending", "service" => call.backend.clone()).decrement(1.0);
            metrics::counter!("deferred_calls_settled_total", "service" => call.backend.clone(), "state" => state)
                .increment(1);
            tracing::info!(deferred_id = %call.id, backend = %call.backend, state, attempts, error, "deferred call settled");
        }
        Ok(())
    }

    /// Deletes settled calls older than a day; returns how many.
    pub async fn prune(&self, now_ms: i64) -> Result<u64, QueueError> {
        let done = sqlx::query("DELETE FROM deferred_calls WHERE state <> 'pending' AND updated_at_ms < $1")
            .bind(now_ms - SETTLED_RETENTION_MS)
            .execute(self.db.pool())
            .await?;
        Ok(done.rows_affected())
    }

    /// (state, attempts, last_error) of one call.
    pub async fn status(&self, id: &str) -> Result<Option<(String, i64, Option<String>)>, QueueError> {
        let row = sqlx::query("SELECT state, attempts, last_error FROM deferred_calls WHERE id = $1")
            .bind(id)
            .fetch_optional(self.db.pool())
            .await?;
        Ok(match row {
            Some(row) => Some((row.try_get("state")?, row.try_get("attempts")?, row.try_get("last_error")?)),
            None => None,
        })
    }
}

/// How one delivery went.
#[derive(Debug, Clone, PartialEq)]
pub enum Delivery {
    Delivered,
    /// The backend answered with a client error: delivering again cannot help.
    Rejected(String),
    /// The backend is still unavailable.
    Retry(String),
}
