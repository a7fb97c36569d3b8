//! Rate limits before routing: each client (API key, else IP) gets its tier's
//! per-minute GCRA with burst and a monthly quota. Local (a bounded GCRA
//! table + the gateway's database) by default; with Redis, one Lua script enforces both
//! across every gateway, and if Redis fails the gateway falls back to local
//! limits (and says so in logs and `ratelimit_redis_up`).
pub mod calendar;
pub mod local;
pub mod quota;
pub mod redis;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tier {
    pub per_minute: u32,
    pub burst: u32,
    /// Requests per calendar month (UTC); 0 = unlimited.
    pub monthly_quota: u64,
}

/// The brief's tiers.
pub fn default_tiers() -> BTreeMap<String, Tier> {
    [
        ("anonymous", Tier { per_minute: 10, burst: 20, monthly_quota: 10_000 }),
        ("free", Tier { per_minute: 100, burst: 200, monthly_quota: 100_000 }),
        ("professional", Tier { per_minute: 1_000, burst: 2_000, monthly_quota: 2_000_000 }),
        ("enterprise", Tier { per_minute: 10_000, burst: 20_000, monthly_quota: 50_000_000 }),
    ]
    .into_iter()
    .map(|(name, tier)| (name.to_string(), tier))
    .collect()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateDecision {
    pub allowed: bool,
    /// The burst capacity.
    pub limit: u32,
    pub remaining: u32,
    /// Until the bucket is full again.
    pub reset_ms: u64,
    pub retry_after_ms: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QuotaDecision {
    pub allowed: bool,
    pub limit: u64,
    pub used: u64,
    pub reset_secs: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    pub rate: RateDecision,
    pub quota: Option<QuotaDecision>,
    /// Which store decided.
    pub shared: bool,
}

impl Decision {
    pub fn allowed(&self) -> bool {
        self.rate.allowed && self.quota.is_none_or(|q| q.allowed)
    }
}

pub struct Limiter {
    /// The current month and when it ends (epoch seconds), computed once a month.
    month: std::sync::RwLock<(std::sync::Arc<str>, i64)>,
    tiers: BTreeMap<String, Tier>,
    local: local::LocalLimiter,
    quota: quota::QuotaCounter,
    redis: Option<redis::RedisLimiter>,
}

impl Limiter {
    pub fn new(
        tiers: BTreeMap<String, Tier>,
        max_clients: usize,
        quota: quota::QuotaCounter,
        redis: Option<redis::RedisLimiter>,
    ) -> Self {
        Self {
            local: local::LocalLimiter::new(&tiers, max_clients),
            tiers,
            quota,
            redis,
            month: std::sync::RwLock::new((std::sync::Arc::from(""), 0)),
        }
    }

    /// The current month and the seconds left in it.
    fn month(&self) -> (std::sync::Arc<str>, i64) {
        let now = kit_core::time::now_millis() / 1000;
        if let Ok(cached) = self.month.read()
            && now < cached.1
        {
            return (cached.0.clone(), cached.1 - now);
        }
        let (name, left) = calendar::month(now);
        let name: std::sync::Arc<str> = name.into();
        if let Ok(mut cached) = self.month.write() {
            *cached = (name.clone(), now + left);
        }
        (name, left)
    }

    /// Decides one request of `client` in `tier` (which must exist).
    pub async fn check(&self, tier_name: &str, client: &str) -> Result<Decision, local::Refusal> {
        let tier = self.tiers.get(tier_name).ok_or(local::Refusal::UnknownTier)?;
        let (month, month_left) = self.month();
        if let Some(redis) = &self.redis
            // Boxed: the Redis client's future is large, and every request's
            // future would carry its size (copied on each move) otherwise.
            && let Some(shared) = Box::pin(redis.check(tier_name, tier, client, &month, month_left)).await
        {
            return Ok(Decision { rate: shared.rate, quota: shared.quota, shared: true });
        }
        let rate = self.local.check(tier_name, client)?;
        let quota = if rate.allowed && tier.monthly_quota > 0 {
            match self.quota.take(client, &month, tier.monthly_quota, month_left).await {
                Ok(q) => Some(q),
                Err(err) => {
                    // Failing open: a broken quota store must not take the API down.
                    tracing::error!(error = %err, "quota store failed; request allowed");
                    None
                }
            }
        } else {
            None
        };
        Ok(Decision { rate, quota, shared: false })
    }

    /// Forgets idle clients' local buckets (a walk over every client, so
    /// it runs far less often than the quota flush).
    pub fn evict_idle(&self) {
        let clients = self.local.evict_idle();
        metrics::gauge!("ratelimit_local_clients").set(clients as f64);
    }

    /// Clients whose rate the local limiter tracks.
    pub fn local_clients(&self) -> usize {
        self.local.clients()
    }

    /// Clients whose quota counts are held in memory.
    pub fn quota_clients(&self) -> usize {
        self.quota.clients()
    }

    /// Persists quota counts.
    pub async fn flush_quotas(&self) {
        if let Err(err) = self.quota.flush().await {
            tracing::warn!(error = %err, "persisting quota counts failed; will retry");
        }
    }
}
