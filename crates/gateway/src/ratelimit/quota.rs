//! Monthly quotas counted in this process and persisted to the gateway's
//! database, so a restart does not reset them. Counts are flushed every
//! second and on shutdown: a crash loses at most a second of counting.
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use sqlx::Row;

use kit::db::Db;

use super::QuotaDecision;

struct Usage {
    month: Arc<str>,
    /// Requests counted in `month`, persisted or not.
    used: u64,
    /// Of those, not yet written to the database.
    unflushed: u64,
}

/// Counts per client (the hot path looks up by `&str`, without allocating)
/// and counts of months that ended before they were flushed.
#[derive(Default)]
struct Counts {
    current: HashMap<String, Usage>,
    ended: Vec<(String, Arc<str>, u64)>,
}

pub struct QuotaCounter {
    db: Db,
    counts: Mutex<Counts>,
}

impl QuotaCounter {
    pub fn new(db: Db) -> Self {
        Self { db, counts: Mutex::new(Counts::default()) }
    }

    fn with_counts<T>(&self, f: impl FnOnce(&mut Counts) -> T) -> T {
        match self.counts.lock() {
            Ok(mut counts) => f(&mut counts),
            Err(poisoned) => f(&mut poisoned.into_inner()),
        }
    }

    /// The count persisted for `client` in `month`.
    async fn stored(&self, client: &str, month: &str) -> Result<i64, sqlx::Error> {
        Ok(sqlx::query("SELECT used FROM quota_usage WHERE client = $1 AND month = $2")
            .bind(client)
            .bind(month)
            .fetch_optional(self.db.pool())
            .await?
            .map(|row| row.try_get("used"))
            .transpose()?
            .unwrap_or(0))
    }

    /// Counts one request of `client` in `month` unless the quota is used up.
    pub async fn take(
        &self,
        client: &str,
        month: &Arc<str>,
        limit: u64,
        reset_secs: i64,
    ) -> Result<QuotaDecision, sqlx::Error> {
        let known = self.with_counts(|c| c.current.get(client).is_some_and(|u| u.month == *month));
        if !known {
            // Boxed: once per client and month, and the query's future is
            // large (every request's future would carry its size otherwise).
            let stored = Box::pin(self.stored(client, month)).await?;
            self.with_counts(|c| {
                let fresh = Usage { month: month.clone(), used: stored.max(0) as u64, unflushed: 0 };
                match c.current.insert(client.to_string(), fresh) {
                    // A month ended: keep its unflushed count for the next flush.
                    Some(old) if old.month != *month && old.unflushed > 0 => {
                        c.ended.push((client.to_string(), old.month, old.unflushed))
                    }
                    // Raced with another request that loaded it first: keep its counts.
                    Some(old) if old.month == *month => {
                        c.current.insert(client.to_string(), old);
                    }
                    _ => {}
                }
            });
        }
        Ok(self.with_counts(|c| {
            let decision = c.current.get_mut(client).map(|usage| {
                let allowed = usage.used < limit;
                if allowed {
                    usage.used += 1;
                    usage.unflushed += 1;
                }
                QuotaDecision { allowed, limit, used: usage.used, reset_secs: reset_secs.max(0) as u64 }
            });
            decision.unwrap_or(QuotaDecision { allowed: true, limit, used: 0, reset_secs: reset_secs.max(0) as u64 })
        }))
    }

    /// Writes unflushed counts.
    pub async fn flush(&self) -> Result<(), sqlx::Error> {
        let pending: Vec<(String, Arc<str>, u64)> = self.with_counts(|c| {
            let mut pending = std::mem::take(&mut c.ended);
            for (client, usage) in c.current.iter_mut().filter(|(_, u)| u.unflushed > 0) {
                pending.push((client.clone(), usage.month.clone(), std::mem::take(&mut usage.unflushed)));
            }
            pending
        });
        for (i, (client, month, delta)) in pending.iter().enumerate() {
            let written = sqlx::query(
                "INSERT INTO quota_usage (client, month, used) VALUES ($1, $2, $3) \
                 ON CONFLICT (client, month) DO UPDATE SET used = quota_usage.used + excluded.used",
            )
            .bind(client)
            .bind(month.as_ref())
            .bind(*delta as i64)
            .execute(self.db.pool())
            .await;
            if let Err(err) = written {
                // Keep what was not written for the next flush.
                self.with_counts(|c| c.ended.extend(pending[i..].iter().cloned()));
                return Err(err);
            }
        }
        Ok(())
    }
}
