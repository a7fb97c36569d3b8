//! Monthly quotas counted in this process and persisted to the gateway's
//! database, so a restart does not reset them. Counts are flushed every
//! second and on shutdown: a crash loses at most a second of counting.
use std::collections::HashMap;
use std::sync::Mutex;

use sqlx::Row;

use kit::db::Db;

use super::QuotaDecision;

#[derive(Default)]
struct Usage {
    /// Requests counted this month, persisted or not.
    used: u64,
    /// Of those, not yet written to the database.
    unflushed: u64,
}

pub struct QuotaCounter {
    db: Db,
    usage: Mutex<HashMap<(String, String), Usage>>,
}

impl QuotaCounter {
    pub fn new(db: Db) -> Self {
        Self { db, usage: Mutex::new(HashMap::new()) }
    }

    fn with_usage<T>(&self, f: impl FnOnce(&mut HashMap<(String, String), Usage>) -> T) -> T {
        match self.usage.lock() {
            Ok(mut usage) => f(&mut usage),
            Err(poisoned) => f(&mut poisoned.into_inner()),
        }
    }

    /// Counts one request of `client` in `month` unless the quota is used up.
    pub async fn take(
        &self,
        client: &str,
        month: &str,
        limit: u64,
        reset_secs: i64,
    ) -> Result<QuotaDecision, sqlx::Error> {
        let key = (client.to_string(), month.to_string());
        if !self.with_usage(|u| u.contains_key(&key)) {
            let stored: i64 = sqlx::query("SELECT used FROM quota_usage WHERE client = $1 AND month = $2")
                .bind(client)
                .bind(month)
                .fetch_optional(self.db.pool())
                .await?
                .map(|row| row.try_get("used"))
                .transpose()?
                .unwrap_or(0);
            self.with_usage(|u| {
                u.entry(key.clone()).or_insert(Usage { used: stored.max(0) as u64, unflushed: 0 });
            });
        }
        Ok(self.with_usage(|u| {
            let usage = u.entry(key).or_default();
            let allowed = usage.used < limit;
            if allowed {
                usage.used += 1;
                usage.unflushed += 1;
            }
            QuotaDecision { allowed, limit, used: usage.used, reset_secs: reset_secs.max(0) as u64 }
        }))
    }

    /// Writes unflushed counts; drops months that are over.
    pub async fn flush(&self, current_month: &str) -> Result<(), sqlx::Error> {
        let pending: Vec<((String, String), u64)> = self.with_usage(|u| {
            let pending = u
                .iter_mut()
                .filter(|(_, usage)| usage.unflushed > 0)
                .map(|(key, usage)| (key.clone(), std::mem::take(&mut usage.unflushed)))
                .collect();
            u.retain(|(_, month), usage| month.as_str() >= current_month || usage.unflushed > 0);
            pending
        });
        for ((client, month), delta) in pending {
            let written = sqlx::query(
                "INSERT INTO quota_usage (client, month, used) VALUES ($1, $2, $3) \
                 ON CONFLICT (client, month) DO UPDATE SET used = quota_usage.used + excluded.used",
            )
            .bind(&client)
            .bind(&month)
            .bind(delta as i64)
            .execute(self.db.pool())
            .await;
            if let Err(err) = written {
                // Keep the count for the next flush.
                self.with_usage(|u| u.entry((client, month)).or_default().unflushed += delta);
                return Err(err);
            }
        }
        Ok(())
    }
}
