//! One backend service as the gateway calls it: its load-balanced channel
//! behind the resilience guard (bulkhead, circuit breaker, deadline), its retry
//! budget, and its fallback — the last good responses for `cached`, and the
//! deferred-call queue for `queue`.
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use kit_client::balance::Balancer;
use kit_client::guard::{Dependency, Guarded, guard_balancer};
use kit_resilience::{DependencyConfig, Fallback, Retries};

/// Last good responses kept per backend for the `cached` fallback.
const CACHE_ENTRIES: usize = 10_000;

pub struct Backend {
    pub channel: Guarded<Balancer>,
    pub dependency: Arc<Dependency>,
    pub retries: Retries,
    pub fallback: Fallback,
    pub cache: Option<ResponseCache>,
}

impl Backend {
    pub fn new(name: &str, balancer: Balancer, config: &DependencyConfig) -> Self {
        let dependency = Dependency::new(name, config);
        let cache = (config.fallback == Fallback::Cached)
            .then(|| ResponseCache::new(CACHE_ENTRIES, Duration::from_millis(config.fallback_max_age_ms)));
        Self {
            channel: guard_balancer(dependency.clone(), balancer),
            dependency,
            retries: Retries::new(name, &config.retry),
            fallback: config.fallback,
            cache,
        }
    }
}

/// Last good JSON bodies by request (method, path, query, user): an LRU of
/// at most `capacity` entries (O(1) to insert, look up and evict), served
/// only while younger than `max_age`.
pub struct ResponseCache {
    entries: Mutex<lru::LruCache<String, (Bytes, Instant)>>,
    max_age: Duration,
}

impl ResponseCache {
    pub fn new(capacity: usize, max_age: Duration) -> Self {
        let capacity = std::num::NonZeroUsize::new(capacity).unwrap_or(std::num::NonZeroUsize::MIN);
        Self { entries: Mutex::new(lru::LruCache::new(capacity)), max_age }
    }

    pub fn put(&self, key: String, body: Bytes) {
        let Ok(mut entries) = self.entries.lock() else { return };
        entries.put(key, (body, Instant::now()));
    }

    /// The stored body and its age, unless older than the limit.
    pub fn get(&self, key: &str) -> Option<(Bytes, Duration)> {
        let mut entries = self.entries.lock().ok()?;
        let (body, at) = entries.get(key)?;
        let age = at.elapsed();
        (age <= self.max_age).then(|| (body.clone(), age))
    }

    pub fn entries(&self) -> usize {
        self.entries.lock().map(|e| e.len()).unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flood_of_distinct_reads_keeps_the_cache_at_its_bound() {
        let cache = ResponseCache::new(1_000, Duration::from_secs(60));
        cache.put("hot".into(), Bytes::from_static(b"h"));
        for i in 0..100_000 {
            cache.put(format!("read-{i}"), Bytes::from_static(b"x"));
            if i % 100 == 0 {
                assert!(cache.get("hot").is_some(), "a read in use stays");
            }
        }
        assert_eq!(cache.entries(), 1_000);
    }

    #[test]
    fn the_cache_is_bounded_and_serves_only_fresh_entries() {
        let cache = ResponseCache::new(2, Duration::from_secs(60));
        cache.put("a".into(), Bytes::from_static(b"1"));
        cache.put("b".into(), Bytes::from_static(b"2"));
        cache.put("c".into(), Bytes::from_static(b"3"));
        assert!(cache.get("a").is_none(), "least recently used evicted");
        assert_eq!(cache.entries(), 2);
        assert_eq!(cache.get("c").map(|(b, _)| b), Some(Bytes::from_static(b"3")));
        let stale = ResponseCache::new(2, Duration::ZERO);
        stale.put("a".into(), Bytes::from_static(b"1"));
        std::thread::sleep(Duration::from_millis(2));
        assert!(stale.get("a").is_none());
    }
}
