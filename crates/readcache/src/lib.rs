//! Cache-aside for read paths. A reader asks the cache, and on a miss reads
//! the database and puts what it read; every write that changes a cached
//! value invalidates its key after committing. Lists (search pages) are keyed
//! under a generation that any write bumps, so a write never has to know
//! which pages showed what it changed.
//!
//! A miss hands out a `Ticket` taken before the database read, and `fill`
//! puts the value only if no invalidation of that key came in between: a
//! reader that read the row before a write committed cannot put the old row
//! back after the write's invalidation (the classic cache-aside race). Keys
//! fall into `STRIPES` version counters; an invalidation bumps its key's
//! counter before dropping the key, and a fill that sees the counter moved
//! puts nothing (in Redis, one script checks and sets atomically; in
//! process, the fill inserts, checks again, and drops what it inserted).
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

/// Version counters keys are spread over (a bound: not one per key).
const STRIPES: u64 = 256;

/// Sets KEYS[1] to ARGV[1] (for ARGV[3] ms) only if the stripe's version,
/// KEYS[2], is still ARGV[2].
const FILL_SCRIPT: &str = "if (redis.call('GET', KEYS[2]) or '0') == ARGV[2] then \
                           redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[3]) return 1 end return 0";

/// The stripe of `key`: FNV-1a, the same in every process and build (the
/// standard hasher promises neither).
fn stripe(key: &str) -> u64 {
    let hash = key.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3));
    hash % STRIPES
}

/// What a miss hands out: `fill` puts the value read after it only if no
/// invalidation of the key came in between.
#[must_use]
pub struct Ticket {
    key: String,
    /// None: nothing will be put (the cache is off or failing).
    version: Option<u64>,
}

/// A lookup's answer.
pub enum Lookup<T> {
    Hit(T),
    Miss(Ticket),
}

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
    Local { entries: moka::sync::Cache<String, Arc<str>>, generation: AtomicU64, versions: Box<[AtomicU64]> },
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
                let versions = (0..STRIPES).map(|_| AtomicU64::new(0)).collect();
                Backend::Local { entries, generation: AtomicU64::new(0), versions }
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

    fn version_key(&self, key: &str) -> String {
        format!("shopfast:cache:{}:version:{}", self.name, stripe(key))
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

    async fn redis_pipe(&self, pipe: &redis::Pipeline) -> Option<()> {
        let mut conn = self.redis().await?;
        match tokio::time::timeout(REDIS_TIMEOUT, pipe.query_async::<redis::Value>(&mut conn)).await {
            Ok(Ok(_)) => Some(()),
            _ => None,
        }
    }

    /// The cached value of `key`, or a ticket to fill it with what the
    /// database says (read after this call).
    pub async fn lookup<T: DeserializeOwned>(&self, key: &str) -> Lookup<T> {
        let miss = |version| Lookup::Miss(Ticket { key: key.to_string(), version });
        let (text, version) = match &self.backend {
            Backend::Off => return miss(None),
            Backend::Local { entries, versions, .. } => {
                // The version first: a value put after it was read is checked against it.
                let version = versions[stripe(key) as usize].load(Ordering::Acquire);
                (entries.get(key).map(|v| v.to_string()), version)
            }
            Backend::Redis { .. } => {
                let cmd = redis::cmd("MGET").arg(self.key(key)).arg(self.version_key(key)).to_owned();
                match self.redis_call::<(Option<String>, Option<u64>)>(&cmd).await {
                    Some((text, version)) => (text, version.unwrap_or(0)),
                    None => {
                        self.count("error");
                        return miss(None);
                    }
                }
            }
        };
        match text.and_then(|t| serde_json::from_str(&t).ok()) {
            Some(value) => {
                self.count("hit");
                Lookup::Hit(value)
            }
            None => {
                self.count("miss");
                miss(Some(version))
            }
        }
    }

    /// Puts `value`, read from the database after `ticket`'s lookup, unless
    /// the key was invalidated since.
    pub async fn fill<T: Serialize>(&self, ticket: Ticket, value: &T) {
        let Some(version) = ticket.version else { return };
        let Ok(text) = serde_json::to_string(value) else { return };
        let key = ticket.key;
        match &self.backend {
            Backend::Off => {}
            Backend::Local { entries, versions, .. } => {
                entries.insert(key.clone(), Arc::from(text));
                // An invalidation that bumped the version before this check drops
                // the key after it, or was missed here: either way the value goes.
                if versions[stripe(&key) as usize].load(Ordering::Acquire) != version {
                    entries.invalidate(&key);
                }
                metrics::gauge!("cache_entries", "cache" => self.name).set(entries.entry_count() as f64);
            }
            Backend::Redis { ttl_ms, .. } => {
                let cmd = redis::cmd("EVAL")
                    .arg(FILL_SCRIPT)
                    .arg(2)
                    .arg(self.key(&key))
                    .arg(self.version_key(&key))
                    .arg(text)
                    .arg(version)
                    .arg(*ttl_ms)
                    .to_owned();
                let _ = self.redis_call::<i64>(&cmd).await;
            }
        }
    }

    /// Drops `keys` (after the write that changed them committed).
    pub async fn invalidate(&self, keys: &[String]) {
        match &self.backend {
            Backend::Off => {}
            Backend::Local { entries, versions, .. } => {
                for key in keys {
                    versions[stripe(key) as usize].fetch_add(1, Ordering::AcqRel);
                    entries.invalidate(key);
                }
            }
            Backend::Redis { .. } if !keys.is_empty() => {
                // The versions first: a fill between the two finds its version
                // moved; one before them is deleted with the rest.
                let mut pipe = redis::pipe();
                for key in keys {
                    pipe.cmd("INCR").arg(self.version_key(key)).ignore();
                }
                let del = pipe.cmd("DEL");
                for key in keys {
                    del.arg(self.key(key));
                }
                if self.redis_pipe(&pipe).await.is_none() {
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
    let _ = kit_telemetry::metrics::prometheus();
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

    async fn get(cache: &ReadCache, key: &str) -> Option<u32> {
        match cache.lookup(key).await {
            Lookup::Hit(value) => Some(value),
            Lookup::Miss(_) => None,
        }
    }

    async fn put(cache: &ReadCache, key: &str, value: u32) {
        if let Lookup::Miss(ticket) = cache.lookup::<u32>(key).await {
            cache.fill(ticket, &value).await;
        }
    }

    /// A reader missed and read the row; a write committed and invalidated;
    /// the reader's fill (the old row) must not land.
    async fn a_fill_that_raced_a_write_puts_nothing(cache: &ReadCache) {
        let Lookup::Miss(ticket) = cache.lookup::<u32>("race").await else { panic!("a fresh key is a miss") };
        cache.invalidate(&["race".into()]).await;
        cache.fill(ticket, &1).await;
        assert_eq!(get(cache, "race").await, None, "the row read before the write was put back");
        put(cache, "race", 2).await;
        assert_eq!(get(cache, "race").await, Some(2), "the next reader fills it");
        // Another key's invalidation in another stripe leaves a fill alone.
        let Lookup::Miss(ticket) = cache.lookup::<u32>("other").await else { panic!("a fresh key is a miss") };
        let elsewhere = (0..).map(|n| format!("k{n}")).find(|k| stripe(k) != stripe("other")).unwrap_or_default();
        cache.invalidate(&[elsewhere]).await;
        cache.fill(ticket, &3).await;
        assert_eq!(get(cache, "other").await, Some(3));
    }

    #[tokio::test]
    async fn a_fill_that_raced_a_write_puts_nothing_in_process() {
        a_fill_that_raced_a_write_puts_nothing(&ReadCache::new("race", &CacheConfig::default()).unwrap()).await;
    }

    /// Redis (`SHOPFAST_TEST_REDIS_URL`, default 127.0.0.1:6379; required when CI=true).
    #[tokio::test]
    async fn a_fill_that_raced_a_write_puts_nothing_in_redis() {
        let url = std::env::var("SHOPFAST_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379/0".into());
        let host = url.trim_start_matches("redis://").split('/').next().unwrap_or_default().to_string();
        if std::net::TcpStream::connect(&host).is_err() {
            assert_ne!(std::env::var("CI").as_deref(), Ok("true"), "Redis is required when CI=true ({url})");
            eprintln!("SKIPPED: no Redis at {url}");
            return;
        }
        // A name of its own: parallel runs share the Redis.
        let name: &'static str =
            Box::leak(format!("race-{}-{}", std::process::id(), kit_core::time::now_millis()).into());
        let config = CacheConfig { redis_url: Some(kit::config::Secret::new(url)), ..Default::default() };
        let cache = ReadCache::new(name, &config).unwrap();
        a_fill_that_raced_a_write_puts_nothing(&cache).await;
    }

    #[tokio::test]
    async fn a_value_is_served_until_invalidated_and_lists_follow_the_generation() {
        let cache = ReadCache::new("t", &CacheConfig::default()).unwrap();
        assert_eq!(get(&cache, "a").await, None);
        put(&cache, "a", 7).await;
        assert_eq!(get(&cache, "a").await, Some(7));
        cache.invalidate(&["a".into()]).await;
        assert_eq!(get(&cache, "a").await, None);
        let before = cache.generation().await;
        cache.bump_generation().await;
        assert_eq!(cache.generation().await, before + 1);
    }

    #[tokio::test]
    async fn entries_expire_and_the_bound_holds() {
        let config = CacheConfig { max_entries: 10, ttl_ms: 50, ..Default::default() };
        let cache = ReadCache::new("bounded", &config).unwrap();
        for n in 0..100u32 {
            put(&cache, &n.to_string(), n).await;
        }
        if let Backend::Local { entries, .. } = &cache.backend {
            entries.run_pending_tasks();
            assert!(entries.entry_count() <= 10, "{}", entries.entry_count());
        }
        tokio::time::sleep(Duration::from_millis(80)).await;
        assert_eq!(get(&cache, "99").await, None, "expired");
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
        put(&cache, "a", 1).await;
        assert_eq!(get(&cache, "a").await, None);
        cache.invalidate(&["a".into()]).await;
        cache.bump_generation().await;
    }
}
