//! GCRA and the monthly quota in Redis, in one Lua script (one round trip),
//! so several gateways enforce one combined limit per client.
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::time::Duration;

use redis::aio::ConnectionManager;
use tokio::sync::RwLock;

use super::{QuotaDecision, RateDecision, Tier};

/// KEYS: rate key, quota key. ARGV: emission interval in microseconds (a tier
/// of 600 000 a minute has 100 µs: in milliseconds it would be 0, and a TTL of
/// 0 is refused), burst, quota limit (0 = none), seconds until the quota
/// resets. Time is Redis's own clock, the same for every gateway; the stored
/// time is formatted whole (Lua would write 16 digits as 1.7e+15).
/// Returns {allowed (1/0), remaining, retry_after_ms, reset_ms, quota_used, denied_by_quota (1/0)}.
const GCRA: &str = r#"
local interval = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local quota = tonumber(ARGV[3])
local quota_ttl = tonumber(ARGV[4])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local used = tonumber(redis.call('GET', KEYS[2]) or '0')
if quota > 0 and used >= quota then
  return {0, 0, quota_ttl * 1000, 0, used, 1}
end
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then tat = now end
local tolerance = interval * burst
local new_tat = tat + interval
local allow_at = new_tat - tolerance
if now < allow_at then
  return {0, 0, math.ceil((allow_at - now) / 1000), math.ceil((tat - now) / 1000), used, 0}
end
redis.call('SET', KEYS[1], string.format('%.0f', new_tat), 'PX', math.max(1, math.ceil(tolerance / 1000)))
if quota > 0 then
  used = redis.call('INCR', KEYS[2])
  if used == 1 then redis.call('EXPIRE', KEYS[2], quota_ttl + 86400) end
end
local remaining = math.floor((tolerance - (new_tat - now)) / interval)
return {1, remaining, 0, math.ceil((new_tat - now) / 1000), used, 0}
"#;

/// After a failure, Redis is skipped (local limits apply) for this long.
const BACKOFF_MS: i64 = 2_000;
const CALL_TIMEOUT: Duration = Duration::from_millis(250);

pub struct RedisLimiter {
    client: redis::Client,
    connection: RwLock<Option<ConnectionManager>>,
    script: redis::Script,
    down_until_ms: AtomicI64,
    was_down: AtomicBool,
    prefix: String,
}

pub struct RedisDecision {
    pub rate: RateDecision,
    pub quota: Option<QuotaDecision>,
}

impl RedisLimiter {
    pub fn new(url: &str, prefix: &str) -> Result<Self, redis::RedisError> {
        Ok(Self {
            client: redis::Client::open(url)?,
            connection: RwLock::new(None),
            script: redis::Script::new(GCRA),
            down_until_ms: AtomicI64::new(0),
            was_down: AtomicBool::new(false),
            prefix: prefix.to_string(),
        })
    }

    async fn connection(&self) -> Result<ConnectionManager, redis::RedisError> {
        if let Some(conn) = self.connection.read().await.as_ref() {
            return Ok(conn.clone());
        }
        let conn = tokio::time::timeout(CALL_TIMEOUT * 4, ConnectionManager::new(self.client.clone()))
            .await
            .map_err(|_| redis::RedisError::from(std::io::Error::from(std::io::ErrorKind::TimedOut)))??;
        *self.connection.write().await = Some(conn.clone());
        Ok(conn)
    }

    /// `None` when Redis cannot answer now: the caller falls back to local limits.
    pub async fn check(
        &self,
        tier_name: &str,
        tier: &Tier,
        client: &str,
        month: &str,
        month_left_secs: i64,
    ) -> Option<RedisDecision> {
        let now = kit_core::time::now_millis();
        if self.down_until_ms.load(Ordering::Relaxed) > now {
            return None;
        }
        let interval_us = 60_000_000 / u64::from(tier.per_minute.max(1));
        let result: Result<Vec<i64>, redis::RedisError> = async {
            let mut conn = self.connection().await?;
            let mut invocation = self.script.prepare_invoke();
            invocation
                .key(format!("{}rate:{tier_name}:{client}", self.prefix))
                .key(format!("{}quota:{month}:{client}", self.prefix))
                .arg(interval_us)
                .arg(tier.burst.max(1))
                .arg(tier.monthly_quota)
                .arg(month_left_secs.max(1));
            tokio::time::timeout(CALL_TIMEOUT, invocation.invoke_async(&mut conn))
                .await
                .map_err(|_| redis::RedisError::from(std::io::Error::from(std::io::ErrorKind::TimedOut)))?
        }
        .await;
        match result {
            Ok(v) if v.len() == 6 => {
                if self.was_down.swap(false, Ordering::Relaxed) {
                    tracing::info!("Redis reachable again; shared rate limits restored");
                }
                metrics::gauge!("ratelimit_redis_up").set(1.0);
                let as_u64 = |x: i64| x.max(0) as u64;
                let quota = (tier.monthly_quota > 0).then(|| QuotaDecision {
                    allowed: v[5] == 0,
                    limit: tier.monthly_quota,
                    used: as_u64(v[4]),
                    reset_secs: as_u64(month_left_secs),
                });
                Some(RedisDecision {
                    rate: RateDecision {
                        allowed: v[0] == 1 || v[5] == 1,
                        limit: tier.burst,
                        remaining: u32::try_from(v[1].max(0)).unwrap_or(u32::MAX),
                        reset_ms: as_u64(v[3]),
                        retry_after_ms: if v[5] == 1 { 0 } else { as_u64(v[2]) },
                    },
                    quota,
                })
            }
            other => {
                self.down_until_ms.store(now + BACKOFF_MS, Ordering::Relaxed);
                *self.connection.write().await = None;
                if !self.was_down.swap(true, Ordering::Relaxed) {
                    let why = match other {
                        Err(e) => e.to_string(),
                        Ok(v) => format!("unexpected reply {v:?}"),
                    };
                    tracing::warn!(error = %why, "Redis unavailable: falling back to per-gateway rate limits");
                }
                metrics::gauge!("ratelimit_redis_up").set(0.0);
                metrics::counter!("ratelimit_redis_fallbacks_total").increment(1);
                None
            }
        }
    }
}
