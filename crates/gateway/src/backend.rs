//! One backend service as the gateway calls it: its load-balanced channel
//! behind the resilience guard (bulkhead, circuit breaker, deadline), its retry
//! budget, and its fallback — the last good responses for `cached`, and the
//! deferred-call queue for `queue`.
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use kit::balance::Balancer;
use kit::resilience::guard::{Guarded, guard_balancer};
use kit::resilience::{Dependency, DependencyConfig, Fallback, Retries};

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

/// Last good JSON bodies by request (method, path, query, user), bounded.
pub struct ResponseCache {
    entries: Mutex<HashMap<String, (Bytes, Instant)>>,
    capacity: usize,
    max_age: Duration,
}

impl ResponseCache {
    pub fn new(capacity: usize, max_age: Duration) -> Self {
        Self { entries: Mutex::new(HashMap::new()), capacity: capacity.max(1), max_age }
    }

    pub fn put(&self, key: String, body: Bytes) {
        let Ok(mut entries) = self.entries.lock() else { return };
        if entries.len() >= self.capacity && !entries.contains_key(&key) {
            // Make room: drop what is too old to serve, else the oldest.
            let max_age = self.max_age;
            entries.retain(|_, (_, at)| at.elapsed() <= max_age);
            if entries.len() >= self.capacity
                && let Some(oldest) = entries.iter().min_by_key(|(_, (_, at))| *at).map(|(k, _)| k.clone())
            {
                entries.remove(&oldest);
            }
        }
        entries.insert(key, (body, Instant::now()));
    }

    /// The stored body and its age, unless older than the limit.
    pub fn get(&self, key: &str) -> Option<(Bytes, Duration)> {
        let entries = self.entries.lock().ok()?;
        let (body, at) = entries.get(key)?;
        let age = at.elapsed();
        (age <= self.max_age).then(|| (body.clone(), age))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cache_is_bounded_and_serves_only_fresh_entries() {
        let cache = ResponseCache::new(2, Duration::from_secs(60));
        cache.put("a".into(), Bytes::from_static(b"1"));
        cache.put("b".into(), Bytes::from_static(b"2"));
        cache.put("c".into(), Bytes::from_static(b"3"));
        assert!(cache.get("a").is_none(), "oldest evicted");
        assert_eq!(cache.get("c").map(|(b, _)| b), Some(Bytes::from_static(b"3")));
        let stale = ResponseCache::new(2, Duration::ZERO);
        stale.put("a".into(), Bytes::from_static(b"1"));
        std::thread::sleep(Duration::from_millis(2));
        assert!(stale.get("a").is_none());
    }
}
