//! Cache-aside for read paths. A reader asks the cache, and on a miss reads
//! the database and puts what it read; every write that changes a cached
//! value invalidates its key after committing. Lists (search pages) are keyed
//! under a generation that any write bumps, so a write never has to know
//! which pages showed what it changed.
//!
//! In process by default (moka: bounded by entry count, each entry living at
//! most `ttl_ms`) or in Redis when `redis_url` is set, shared by every
//! instance. In process, an instance sees only its own writes: with several
//! instances a value may be stale on the others for up to `ttl_ms` (keep it
//! short); Redis has no such gap. A cache that fails (Redis down) is a miss,
//! never an error; an invalidation it could not make is bounded by the TTL.
//!
//! Metrics: `cache_requests_total{cache, result}` (hit, miss, error),
//! `cache_evictions_total{cache, cause}`, `cache_entries{cache}`.
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde::{Deserialize, Serialize, de::DeserializeOwned};

/// Deadline of each call to Redis: a slow cache is skipped, not waited for.
const REDIS_TIMEOUT: Duration = Duration::from_millis(150);

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct CacheConfig {
    pub enabled: bool,
    /// Entries kept in process, at most.
    pub max_entries: u64,
    /// How long an entry lives (in process and in Redis).
    pub ttl_ms: u64,
    /// Redis for a cache every instance shares; unset: in process.
    pub redis_url: Option<kit::config::Secret>,
}

impl Default for CacheConfig {
    fn default() -> Self {
        Self { enabled: true, max_entries: 10_000, ttl_ms: 5_000, redis_url: None }
    }
}

impl CacheConfig {
    pub fn validate(&self) -> Result<(), String> {
        if self.enabled && (self.max_entries == 0 || !(1..=86_400_000).contains(&self.ttl_ms)) {
            return Err("cache.max_entries must be positive and cache.ttl_ms 1 to 86400000".into());
        }
        Ok(())
    }
}

enum Backend {
    Off,
    Local { entries: moka::sync::Cache<String, Arc<str>>, generation: AtomicU64 },
    Redis { client: redis::Client, connection: tokio::sync::OnceCell<redis::aio::ConnectionManager>, ttl_ms: u64 },
}

/// One cache (`name` labels its metrics and prefixes its Redis keys).
pub struct ReadCache {
    name: &'static str,
    backend: Backend,
}

impl ReadCache {
    pub fn new(name: &'static str, config: &CacheConfig) -> Result<Self, String> {
        config.validate()?;
        let backend = match (&config.redis_url, config.enabled) {
            (_, false) => Backend::Off,
            (Some(url), true) => Backend::Redis {
                client: redis::Client::open(url.expose()).map_err(|e| format!("cache.redis_url: {e}"))?,
                connection: tokio::sync::OnceCell::new(),
                ttl_ms: config.ttl_ms,
            },
            (None, true) => {
                let entries = moka::sync::Cache::builder()
                    .max_capacity(config.max_entries)
                    .time_to_live(Duration::from_millis(config.ttl_ms))
                    .eviction_listener(move |_key, _value, cause| {
                        let cause = match cause {
                            moka::notification::RemovalCause::Expired => "expired",
                            moka::notification::RemovalCause::Size => "size",
                            moka::notification::RemovalCause::Explicit => "invalidated",
                            moka::notification::RemovalCause::Replaced => return,
                        };
                        metrics::counter!("cache_evictions_total", "cache" => name, "cause" => cause).increment(1);
                    })
                    .build();
                Backend::Local { entries, generation: AtomicU64::new(0) }
            }
        };
        Ok(Self { name, backend })
    }

    pub fn is_enabled(&self) -> bool {
        !matches!(self.backend, Backend::Off)
    }

    fn count(&self, result: &'static str) {
        metrics::counter!("cache_requests_total", "cache" => self.name, "result" => result).increment(1);
    }

    fn key(&self, key: &str) -> String {
        format!("shopfast:cache:{}:{key}", self.name)
    }

    async fn redis(&self) -> Option<redis::aio::ConnectionManager> {
        let Backend::Redis { client, connection, .. } = &self.backend else { return None };
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_response_timeout(Some(REDIS_TIMEOUT))
            .set_connection_timeout(Some(REDIS_TIMEOUT * 4))
            .set_number_of_retries(0);
        let made = connection
            .get_or_try_init(|| async {
                tokio::time::timeout(REDIS_TIMEOUT * 4, client.get_connection_manager_with_config(config))
                    .await
                    .map_err(|_| ())?
                    .map_err(|_| ())
            })
            .await;
        made.ok().cloned()
    }

    async fn redis_call<T: redis::FromRedisValue>(&self, cmd: &redis::Cmd) -> Option<T> {
        let mut conn = self.redis().await?;
        match tokio::time::timeout(REDIS_TIMEOUT, cmd.query_async::<T>(&mut conn)).await {
            Ok(Ok(value)) => Some(value),
            _ => None,
        }
    }

    /// The cached value of `key`, if any and readable.
    pub async fn get<T: DeserializeOwned>(&self, key: &str) -> Option<T> {
        let text: Option<String> = match &self.backend {
            Backend::Off => return None,
            Backend::Local { entries, .. } => entries.get(key).map(|v| v.to_string()),
            Backend::Redis { .. } => {
                match self.redis_call::<Option<String>>(redis::cmd("GET").arg(self.key(key))).await {
                    Some(value) => value,
                    None => {
                        self.count("error");
                        return None;
                    }
                }
            }
        };
        let value = text.and_then(|t| serde_json::from_str(&t).ok());
        self.count(if value.is_some() { "hit" } else { "miss" });
        value
    }

    pub async fn put<T: Serialize>(&self, key: &str, value: &T) {
        let Ok(text) = serde_json::to_string(value) else { return };
        match &self.backend {
            Backend::Off => {}
            Backend::Local { entries, .. } => {
                entries.insert(key.to_string(), Arc::from(text));
                metrics::gauge!("cache_entries", "cache" => self.name).set(entries.entry_count() as f64);
            }
            Backend::Redis { ttl_ms, .. } => {
                let cmd = redis::cmd("SET").arg(self.key(key)).arg(text).arg("PX").arg(*ttl_ms).to_owned();
                let _ = self.redis_call::<()>(&cmd).await;
            }
        }
    }

    /// Drops `keys` (after the write that changed them committed).
    pub async fn invalidate(&self, keys: &[String]) {
        match &self.backend {
            Backend::Off => {}
            Backend::Local { entries, .. } => keys.iter().for_each(|k| entries.invalidate(k)),
            Backend::Redis { .. } if !keys.is_empty() => {
                let mut cmd = redis::cmd("DEL");
                for key in keys {
                    cmd.arg(self.key(key));
                }
                if self.redis_call::<i64>(&cmd).await.is_none() {
                    tracing::warn!(cache = self.name, "cache invalidation failed; entries expire within their TTL");
                }
            }
            Backend::Redis { .. } => {}
        }
    }

    /// The generation list keys live under (see `bump_generation`).
    pub async fn generation(&self) -> u64 {
        match &self.backend {
            Backend::Off => 0,
            Backend::Local { generation, .. } => generation.load(Ordering::Acquire),
            Backend::Redis { .. } => {
                let got = self.redis_call::<Option<u64>>(redis::cmd("GET").arg(self.key("generation"))).await;
                got.flatten().unwrap_or(0)
            }
        }
    }

    /// Invalidates every list at once: the next reads use new keys (the old
    /// ones expire on their own).
    pub async fn bump_generation(&self) {
        match &self.backend {
            Backend::Off => {}
            Backend::Local { generation, .. } => {
                generation.fetch_add(1, Ordering::AcqRel);
            }
            Backend::Redis { .. } => {
                if self.redis_call::<u64>(redis::cmd("INCR").arg(self.key("generation"))).await.is_none() {
                    tracing::warn!(cache = self.name, "cache generation not bumped; lists expire within their TTL");
                }
            }
        }
    }
}

pub fn describe_metrics() {
    // Descriptions reach only an installed recorder.
    let _ = kit::metrics::prometheus();
    metrics::describe_counter!("cache_requests_total", "Read-cache lookups, by cache and result (hit, miss, error).");
    metrics::describe_counter!(
        "cache_evictions_total",
        "Entries leaving the in-process read cache, by cache and cause (expired, size, invalidated)."
    );
    metrics::describe_gauge!("cache_entries", "Entries in the in-process read cache, by cache.");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_value_is_served_until_invalidated_and_lists_follow_the_generation() {
        let cache = ReadCache::new("t", &CacheConfig::default()).unwrap();
        assert_eq!(cache.get::<u32>("a").await, None);
        cache.put("a", &7u32).await;
        assert_eq!(cache.get::<u32>("a").await, Some(7));
        cache.invalidate(&["a".into()]).await;
        assert_eq!(cache.get::<u32>("a").await, None);
        let before = cache.generation().await;
        cache.bump_generation().await;
        assert_eq!(cache.generation().await, before + 1);
    }

    #[tokio::test]
    async fn entries_expire_and_the_bound_holds() {
        let config = CacheConfig { max_entries: 10, ttl_ms: 50, ..Default::default() };
        let cache = ReadCache::new("bounded", &config).unwrap();
        for n in 0..100u32 {
            cache.put(&n.to_string(), &n).await;
        }
        if let Backend::Local { entries, .. } = &cache.backend {
            entries.run_pending_tasks();
            assert!(entries.entry_count() <= 10, "{}", entries.entry_count());
        }
        tokio::time::sleep(Duration::from_millis(80)).await;
        assert_eq!(cache.get::<u32>("99").await, None, "expired");
    }

    #[test]
    fn garbage_settings_are_refused_and_off_is_off() {
        assert!(CacheConfig { max_entries: 0, ..Default::default() }.validate().is_err());
        assert!(CacheConfig { ttl_ms: 0, ..Default::default() }.validate().is_err());
        let off = ReadCache::new("off", &CacheConfig { enabled: false, ..Default::default() }).unwrap();
        assert!(!off.is_enabled());
    }

    #[tokio::test]
    async fn an_unreachable_redis_is_a_miss_not_an_error() {
        let config =
            CacheConfig { redis_url: Some(kit::config::Secret::new("redis://127.0.0.1:1/0")), ..Default::default() };
        let cache = ReadCache::new("down", &config).unwrap();
        cache.put("a", &1u32).await;
        assert_eq!(cache.get::<u32>("a").await, None);
        cache.invalidate(&["a".into()]).await;
        cache.bump_generation().await;
    }
}
