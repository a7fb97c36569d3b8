//! Payments in SQL: every state change is a conditional update from the state
//! the caller saw (`… WHERE status = $from`), every step is a row in
//! `payment_attempts`, and nothing is deleted.
use kit::db::Db;
use kit_core::error::DomainError;
use kit_core::time::now_millis;
use sqlx::Row;
use sqlx::any::AnyRow;

use crate::domain::{Status, check_transition};

pub use kit::error::StoreError;

#[derive(Debug, Clone, PartialEq)]
pub struct Refund {
    pub id: String,
    pub amount_minor: i64,
    pub reason: String,
    pub created_at: i64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Payment {
    pub id: String,
    pub order_id: String,
    pub user_id: String,
    pub status: Status,
    pub amount_minor: i64,
    pub currency_code: String,
    pub refunded_minor: i64,
    pub card_brand: String,
    pub card_last4: String,
    pub authorization_id: Option<String>,
    pub failure_code: Option<String>,
    pub failure_message: Option<String>,
    pub retryable: bool,
    pub refunds: Vec<Refund>,
    pub created_at: i64,
    pub updated_at: i64,
    /// While in flight: when the call working on it is certainly gone.
    pub abandon_at: i64,
}

/// A payment about to be attempted.
pub struct NewPayment<'a> {
    pub order_id: &'a str,
    pub user_id: &'a str,
    pub amount_minor: i64,
    pub currency_code: &'a str,
    pub card_brand: &'a str,
    pub card_last4: &'a str,
    pub abandon_at: i64,
}

/// Fields a transition may set besides the status.
#[derive(Default)]
pub struct Change<'a> {
    pub authorization_id: Option<&'a str>,
    pub failure: Option<(&'a str, &'a str, bool)>,
    /// A new call takes the payment over until then.
    pub abandon_at: Option<i64>,
}

#[derive(Clone)]
pub struct PaymentStore {
    db: Db,
}

fn unique_violation(err: &sqlx::Error) -> bool {
    matches!(err, sqlx::Error::Database(e) if e.is_unique_violation())
}

impl PaymentStore {
    pub fn new(db: Db) -> Self {
        Self { db }
    }

    pub async fn create(&self, new: &NewPayment<'_>) -> Result<Payment, StoreError> {
        let id = uuid::Uuid::now_v7().to_string();
        let now = now_millis();
        sqlx::query(
            "INSERT INTO payments (id, order_id, user_id, status, amount_minor, currency_code, card_brand, card_last4, \
             created_at, updated_at, abandon_at) VALUES ($1, $2, $3, 'PENDING', $4, $5, $6, $7, $8, $8, $9)",
        )
        .bind(&id)
        .bind(new.order_id)
        .bind(new.user_id)
        .bind(new.amount_minor)
        .bind(new.currency_code)
        .bind(new.card_brand)
        .bind(new.card_last4)
        .bind(now)
        .bind(new.abandon_at)
        .execute(self.db.pool())
        .await?;
        self.attempt(&id, "create", "ok", "payment created").await?;
        self.get(&id).await
    }

    /// Moves `id` from `from` to `to`, or fails if it is no longer in `from`.
    pub async fn transition(&self, id: &str, from: Status, to: Status, change: Change<'_>) -> Result<(), StoreError> {
        check_transition(from, to)?;
        let (code, message, retryable) = change.failure.unwrap_or(("", "", false));
        let result = sqlx::query(
            "UPDATE payments SET status = $1, updated_at = $2, \
             authorization_id = COALESCE($3, authorization_id), \
             failure_code = CASE WHEN $4 = '' THEN failure_code ELSE $4 END, \
             failure_message = CASE WHEN $4 = '' THEN failure_message ELSE $5 END, \
             retryable = $6, abandon_at = COALESCE($7, abandon_at) WHERE id = $8 AND status = $9",
        )
        .bind(to.as_str())
        .bind(now_millis())
        .bind(change.authorization_id)
        .bind(code)
        .bind(message)
        .bind(i64::from(retryable))
        .bind(change.abandon_at)
        .bind(id)
        .bind(from.as_str())
        .execute(self.db.pool())
        .await;
        match result {
            Ok(done) if done.rows_affected() == 1 => Ok(()),
            Ok(_) => {
                Err(DomainError::FailedPrecondition(format!("payment {id} is no longer {}", from.as_str())).into())
            }
            Err(err) if unique_violation(&err) => {
                Err(DomainError::AlreadyExists("this order has already been paid".into()).into())
            }
            Err(err) => Err(err.into()),
        }
    }

    pub async fn attempt(&self, payment_id: &str, step: &str, outcome: &str, detail: &str) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO payment_attempts (id, payment_id, step, outcome, detail, created_at) VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(uuid::Uuid::now_v7().to_string())
        .bind(payment_id)
        .bind(step)
        .bind(outcome)
        .bind(detail)
        .bind(now_millis())
        .execute(self.db.pool())
        .await?;
        Ok(())
    }

    /// (step, outcome) of every attempt of a payment, oldest first.
    pub async fn attempts(&self, payment_id: &str) -> Result<Vec<(String, String)>, StoreError> {
        let rows =
            sqlx::query("SELECT step, outcome FROM payment_attempts WHERE payment_id = $1 ORDER BY created_at, id")
                .bind(payment_id)
                .fetch_all(self.db.pool())
                .await?;
        Ok(rows.iter().map(|r| Ok((r.try_get("step")?, r.try_get("outcome")?))).collect::<Result<_, sqlx::Error>>()?)
    }

    /// Records a refund and moves REFUNDING on: REFUNDED when all is back, else COMPLETED.
    pub async fn complete_refund(&self, id: &str, amount_minor: i64, reason: &str) -> Result<(), StoreError> {
        let mut tx = self.db.begin_write().await?;
        let now = now_millis();
        let updated = sqlx::query(
            "UPDATE payments SET refunded_minor = refunded_minor + $1, updated_at = $2, \
             status = CASE WHEN refunded_minor + $1 = amount_minor THEN 'REFUNDED' ELSE 'COMPLETED' END \
             WHERE id = $3 AND status = 'REFUNDING' AND refunded_minor + $1 <= amount_minor",
        )
        .bind(amount_minor)
        .bind(now)
        .bind(id)
        .execute(&mut *tx)
        .await?;
        if updated.rows_affected() != 1 {
            return Err(DomainError::FailedPrecondition(format!("payment {id} is not refunding that amount")).into());
        }
        sqlx::query(
            "INSERT INTO refunds (id, payment_id, amount_minor, reason, created_at) VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(uuid::Uuid::now_v7().to_string())
        .bind(id)
        .bind(amount_minor)
        .bind(reason)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    pub async fn get(&self, id: &str) -> Result<Payment, StoreError> {
        let row = sqlx::query("SELECT * FROM payments WHERE id = $1")
            .bind(id)
            .fetch_optional(self.db.pool())
            .await?
            .ok_or_else(|| DomainError::NotFound(format!("no payment {id}")))?;
        let mut payment = payment_of(&row)?;
        let refunds = sqlx::query(
            "SELECT id, amount_minor, reason, created_at FROM refunds WHERE payment_id = $1 ORDER BY created_at, id",
        )
        .bind(id)
        .fetch_all(self.db.pool())
        .await?;
        payment.refunds = refunds
            .iter()
            .map(|r| {
                Ok(Refund {
                    id: r.try_get("id")?,
                    amount_minor: r.try_get("amount_minor")?,
                    reason: r.try_get("reason")?,
                    created_at: r.try_get("created_at")?,
                })
            })
            .collect::<Result<_, sqlx::Error>>()?;
        Ok(payment)
    }

    /// Marks an order voided (once; later calls keep the first reason).
    pub async fn void_order(&self, order_id: &str, reason: &str) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO voided_orders (order_id, reason, created_at) VALUES ($1, $2, $3) ON CONFLICT (order_id) DO NOTHING",
        )
        .bind(order_id)
        .bind(reason)
        .bind(now_millis())
        .execute(self.db.pool())
        .await?;
        Ok(())
    }

    pub async fn is_voided(&self, order_id: &str) -> Result<bool, StoreError> {
        let row = sqlx::query("SELECT 1 AS voided FROM voided_orders WHERE order_id = $1")
            .bind(order_id)
            .fetch_optional(self.db.pool())
            .await?;
        Ok(row.is_some())
    }

    /// COMPLETED payments, not fully refunded, of orders that were voided.
    pub async fn charged_but_voided(&self, limit: i64) -> Result<Vec<Payment>, StoreError> {
        let rows = sqlx::query(
            "SELECT p.* FROM payments p JOIN voided_orders v ON v.order_id = p.order_id \
             WHERE p.status = 'COMPLETED' AND p.refunded_minor < p.amount_minor ORDER BY p.updated_at, p.id LIMIT $1",
        )
        .bind(limit)
        .fetch_all(self.db.pool())
        .await?;
        rows.iter().map(payment_of).collect()
    }

    /// Payments still in flight whose call is certainly gone by `now`, oldest first.
    pub async fn abandoned(&self, now: i64, limit: i64) -> Result<Vec<Payment>, StoreError> {
        let rows = sqlx::query(
            "SELECT * FROM payments WHERE status IN ('PENDING', 'AUTHORIZED', 'PROCESSING', 'REFUNDING') \
             AND abandon_at < $1 ORDER BY updated_at, id LIMIT $2",
        )
        .bind(now)
        .bind(limit)
        .fetch_all(self.db.pool())
        .await?;
        rows.iter().map(payment_of).collect()
    }

    /// Every payment of an order, oldest first.
    pub async fn for_order(&self, order_id: &str) -> Result<Vec<Payment>, StoreError> {
        let ids = sqlx::query("SELECT id FROM payments WHERE order_id = $1 ORDER BY created_at, id")
            .bind(order_id)
            .fetch_all(self.db.pool())
            .await?;
        let mut payments = Vec::with_capacity(ids.len());
        for row in ids {
            payments.push(self.get(&row.try_get::<String, _>("id")?).await?);
        }
        Ok(payments)
    }
}

fn payment_of(row: &AnyRow) -> Result<Payment, StoreError> {
    let status: String = row.try_get("status")?;
    Ok(Payment {
        id: row.try_get("id")?,
        order_id: row.try_get("order_id")?,
        user_id: row.try_get("user_id")?,
        status: Status::parse(&status).ok_or_else(|| sqlx::Error::Decode(format!("status {status}").into()))?,
        amount_minor: row.try_get("amount_minor")?,
        currency_code: row.try_get("currency_code")?,
        refunded_minor: row.try_get("refunded_minor")?,
        card_brand: row.try_get("card_brand")?,
        card_last4: row.try_get("card_last4")?,
        authorization_id: row.try_get("authorization_id")?,
        failure_code: row.try_get("failure_code")?,
        failure_message: row.try_get("failure_message")?,
        retryable: row.try_get::<i64, _>("retryable")? != 0,
        refunds: Vec::new(),
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
        abandon_at: row.try_get("abandon_at")?,
    })
}

/// A tokenized card as stored: sealed, with what may be shown of it.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredMethod {
    pub token: String,
    pub user_id: String,
    pub sealed: String,
    pub card_brand: String,
    pub card_last4: String,
    pub expires_at: i64,
}

impl PaymentStore {
    pub async fn save_method(&self, method: &StoredMethod, now: i64) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO payment_methods (token, user_id, sealed, card_brand, card_last4, created_at, expires_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(&method.token)
        .bind(&method.user_id)
        .bind(&method.sealed)
        .bind(&method.card_brand)
        .bind(&method.card_last4)
        .bind(now)
        .bind(method.expires_at)
        .execute(self.db.pool())
        .await?;
        Ok(())
    }

    /// The method under `token` unless it expired by `now`.
    pub async fn method(&self, token: &str, now: i64) -> Result<Option<StoredMethod>, StoreError> {
        let row = sqlx::query(
            "SELECT token, user_id, sealed, card_brand, card_last4, expires_at FROM payment_methods \
             WHERE token = $1 AND expires_at > $2",
        )
        .bind(token)
        .bind(now)
        .fetch_optional(self.db.pool())
        .await?;
        let Some(row) = row else { return Ok(None) };
        Ok(Some(StoredMethod {
            token: row.try_get("token")?,
            user_id: row.try_get("user_id")?,
            sealed: row.try_get("sealed")?,
            card_brand: row.try_get("card_brand")?,
            card_last4: row.try_get("card_last4")?,
            expires_at: row.try_get("expires_at")?,
        }))
    }

    /// Deletes expired payment methods; returns how many.
    pub async fn sweep_methods(&self, now: i64) -> Result<u64, StoreError> {
        let done =
            sqlx::query("DELETE FROM payment_methods WHERE expires_at <= $1").bind(now).execute(self.db.pool()).await?;
        Ok(done.rows_affected())
    }
}

/// Sweeps expired payment methods every minute until `shutdown`: the table
/// holds at most a retention period's worth of cards.
pub fn spawn_method_sweeper(
    store: PaymentStore,
    shutdown: kit::shutdown::CancellationToken,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(std::time::Duration::from_secs(60));
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tick.tick() => match store.sweep_methods(now_millis()).await {
                    Ok(0) => {}
                    Ok(n) => tracing::debug!(deleted = n, "expired payment methods swept"),
                    Err(err) => tracing::warn!(error = %err, "payment method sweep failed; retrying next minute"),
                },
            }
        }
    })
}
