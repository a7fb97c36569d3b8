//! Monthly quotas counted in this process and persisted to the gateway's
//! database, so a restart does not reset them. Counts are flushed every
//! second and on shutdown: a crash loses at most a second of counting.
//! At most `max_clients` clients are held in memory (an LRU): one pushed out
//! keeps its unflushed count for the next flush and is read back from the
//! database when it returns.
use std::collections::HashMap;
use std::num::NonZeroUsize;
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
/// and counts not flushed yet of months that ended or clients pushed out.
struct Counts {
    current: lru::LruCache<String, Usage>,
    /// (client, month) → count not flushed yet.
    ended: HashMap<(String, Arc<str>), u64>,
}

impl Counts {
    /// Inserts `usage` for `client`; a client pushed out (or a month that
    /// ended) keeps its unflushed count for the next flush.
    fn insert(&mut self, client: &str, usage: Usage) {
        if let Some((pushed_out, old)) = self.current.push(client.to_string(), usage)
            && old.unflushed > 0
        {
            *self.ended.entry((pushed_out, old.month)).or_default() += old.unflushed;
        }
    }
}

pub struct QuotaCounter {
    db: Db,
    counts: Mutex<Counts>,
}

impl QuotaCounter {
    pub fn new(db: Db, max_clients: usize) -> Self {
        let capacity = NonZeroUsize::new(max_clients).unwrap_or(NonZeroUsize::MIN);
        Self { db, counts: Mutex::new(Counts { current: lru::LruCache::new(capacity), ended: HashMap::new() }) }
    }

    /// Clients held in memory.
    pub fn clients(&self) -> usize {
        self.with_counts(|c| c.current.len())
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
                // Raced with another request that loaded it first: keep its counts.
                if c.current.peek(client).is_some_and(|u| u.month == *month) {
                    return;
                }
                // The count not flushed yet, as `stored` does not include it.
                let pending = c.ended.get(&(client.to_string(), month.clone())).copied().unwrap_or(0);
                let used = stored.max(0) as u64 + pending;
                c.insert(client, Usage { month: month.clone(), used, unflushed: 0 });
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
            let mut pending: Vec<_> = c.ended.drain().map(|((client, month), n)| (client, month, n)).collect();
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
                self.with_counts(|c| {
                    for (client, month, n) in &pending[i..] {
                        *c.ended.entry((client.clone(), month.clone())).or_default() += n;
                    }
                });
                return Err(err);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

    #[tokio::test]
    async fn a_flood_of_clients_keeps_the_counts_bounded_and_loses_no_count() {
        let db = kit::testing::TestDb::sqlite();
        let db = Db::open(&db.url, &kit::db::DbOptions::default(), &MIGRATOR).await.unwrap();
        let counter = QuotaCounter::new(db, 100);
        let month: Arc<str> = "2026-12".into();
        // 10,000 distinct clients, one request each, and one regular client throughout.
        for i in 0..10_000 {
            counter.take(&format!("ip:{i}"), &month, 1_000, 60).await.unwrap();
            if i % 50 == 0 {
                counter.take("regular", &month, 1_000, 60).await.unwrap();
            }
            if i % 1_000 == 0 {
                counter.flush().await.unwrap();
            }
            assert!(counter.clients() <= 100);
        }
        counter.flush().await.unwrap();
        // Every count reached the database, pushed out or not.
        assert_eq!(counter.stored("ip:0", &month).await.unwrap(), 1);
        assert_eq!(counter.stored("ip:9999", &month).await.unwrap(), 1);
        assert_eq!(counter.stored("regular", &month).await.unwrap(), 200);
        // A client pushed out and back continues from its count.
        let again = counter.take("ip:0", &month, 1_000, 60).await.unwrap();
        assert_eq!(again.used, 2);
    }
}
