//! Per-client GCRA in this process, one bounded table per tier.
//!
//! GCRA keeps one number per client: the theoretical arrival time (TAT) of
//! its next request. A request at `t` is allowed when `max(TAT, t) + T − t`
//! fits in the burst (`burst · T`, with `T` the emission interval, 60 s /
//! per_minute); it then moves TAT on by `T`. A client whose TAT has passed
//! has a full bucket again: forgetting it loses nothing.
//!
//! The table holds at most `max_clients` clients (anonymous ones are keyed by
//! address, so a flood of addresses must not grow it without bound). It is
//! an LRU, sharded to keep the lock per request short: a new client takes
//! the least recently seen one's place if that one is idle (O(1)); when even
//! that one is still inside its window, the new client is refused — as
//! "too many clients right now", never by resetting someone's bucket.
use std::collections::BTreeMap;
use std::hash::{Hash, Hasher};
use std::num::NonZeroUsize;
use std::sync::Mutex;
use std::time::Instant;

use super::{RateDecision, Tier};

/// Locks the table is split under.
const SHARDS: usize = 16;

/// Why a request could not be decided here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    UnknownTier,
    /// The table is full of clients still inside their window.
    TooManyClients,
}

struct TierTable {
    tier: Tier,
    /// Emission interval and burst tolerance, in nanoseconds.
    interval: u64,
    capacity: u64,
    shards: Vec<Mutex<lru::LruCache<String, u64>>>,
}

impl TierTable {
    fn new(tier: Tier, max_clients: usize) -> Self {
        let interval = 60_000_000_000 / u64::from(tier.per_minute.max(1));
        let per_shard = NonZeroUsize::new(max_clients.div_ceil(SHARDS)).unwrap_or(NonZeroUsize::MIN);
        Self {
            tier,
            interval,
            capacity: interval * u64::from(tier.burst.max(1)),
            shards: (0..SHARDS).map(|_| Mutex::new(lru::LruCache::new(per_shard))).collect(),
        }
    }

    fn shard(&self, client: &str) -> &Mutex<lru::LruCache<String, u64>> {
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        client.hash(&mut hasher);
        &self.shards[hasher.finish() as usize % SHARDS]
    }

    /// One request of `client` at `now` (nanoseconds on the limiter's clock).
    fn check(&self, client: &str, now: u64) -> Result<RateDecision, Refusal> {
        let Ok(mut table) = self.shard(client).lock() else { return Err(Refusal::TooManyClients) };
        let tat = match table.get(client) {
            Some(tat) => *tat,
            None => {
                if table.len() == table.cap().get() {
                    // Full: the least recently seen client makes room if idle.
                    match table.peek_lru() {
                        Some((_, oldest)) if *oldest <= now => {
                            table.pop_lru();
                        }
                        _ => return Err(Refusal::TooManyClients),
                    }
                }
                now
            }
        };
        let next = tat.max(now) + self.interval;
        let used = next - now;
        let interval_ms = self.interval / 1_000_000;
        let burst = self.tier.burst.max(1);
        if used > self.capacity {
            table.put(client.to_string(), tat);
            return Ok(RateDecision {
                allowed: false,
                limit: burst,
                remaining: 0,
                reset_ms: (tat.saturating_sub(now)) / 1_000_000,
                retry_after_ms: (used - self.capacity).div_ceil(1_000_000),
            });
        }
        table.put(client.to_string(), next);
        let remaining = ((self.capacity - used) / self.interval) as u32;
        Ok(RateDecision {
            allowed: true,
            limit: burst,
            remaining,
            reset_ms: u64::from(burst.saturating_sub(remaining)) * interval_ms,
            retry_after_ms: 0,
        })
    }

    fn len(&self) -> usize {
        self.shards.iter().map(|s| s.lock().map(|t| t.len()).unwrap_or(0)).sum()
    }

    /// Forgets the clients whose bucket is full again, least recent first.
    fn evict_idle(&self, now: u64) {
        for shard in &self.shards {
            let Ok(mut table) = shard.lock() else { continue };
            while table.peek_lru().is_some_and(|(_, tat)| *tat <= now) {
                table.pop_lru();
            }
        }
    }
}

pub struct LocalLimiter {
    tiers: BTreeMap<String, TierTable>,
    started: Instant,
}

impl LocalLimiter {
    /// At most `max_clients` clients tracked per tier.
    pub fn new(tiers: &BTreeMap<String, Tier>, max_clients: usize) -> Self {
        let tiers = tiers.iter().map(|(name, tier)| (name.clone(), TierTable::new(*tier, max_clients))).collect();
        Self { tiers, started: Instant::now() }
    }

    fn now(&self) -> u64 {
        self.started.elapsed().as_nanos() as u64
    }

    pub fn check(&self, tier: &str, client: &str) -> Result<RateDecision, Refusal> {
        self.check_at(tier, client, self.now())
    }

    /// `check` at `now` nanoseconds on the limiter's clock (tests drive time).
    pub fn check_at(&self, tier: &str, client: &str, now: u64) -> Result<RateDecision, Refusal> {
        self.tiers.get(tier).ok_or(Refusal::UnknownTier)?.check(client, now)
    }

    /// Clients tracked, over every tier.
    pub fn clients(&self) -> usize {
        self.tiers.values().map(TierTable::len).sum()
    }

    /// Forgets idle clients (a walk over each table's idle tail); returns how many remain.
    pub fn evict_idle(&self) -> usize {
        let now = self.now();
        self.tiers
            .values()
            .map(|t| {
                t.evict_idle(now);
                t.len()
            })
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECOND: u64 = 1_000_000_000;

    fn limiter(per_minute: u32, burst: u32, max_clients: usize) -> LocalLimiter {
        let tiers = BTreeMap::from([("t".to_string(), Tier { per_minute, burst, monthly_quota: 0 })]);
        LocalLimiter::new(&tiers, max_clients)
    }

    #[test]
    fn a_burst_then_one_request_per_interval() {
        let l = limiter(60, 3, 100);
        let allowed = |now| l.check_at("t", "c", now).unwrap();
        for expected_left in [2, 1, 0] {
            let d = allowed(0);
            assert!(d.allowed);
            assert_eq!(d.remaining, expected_left);
        }
        let refused = allowed(0);
        assert!(!refused.allowed);
        assert_eq!(refused.retry_after_ms, 1_000, "one per second");
        assert!(!allowed(SECOND / 2).allowed);
        assert!(allowed(SECOND).allowed, "refilled one");
        assert!(!allowed(SECOND).allowed);
        // Idle long enough, the whole burst is back.
        let later = 10 * SECOND;
        assert_eq!((0..4).filter(|_| allowed(later).allowed).count(), 3);
        assert_eq!(l.check_at("none", "c", 0), Err(Refusal::UnknownTier));
    }

    #[test]
    fn a_flood_of_clients_keeps_the_table_bounded_and_refuses_rather_than_resets() {
        let l = limiter(10, 20, 1_600);
        // 100,000 distinct clients in one instant: none is idle, so once the
        // table is full the newcomers are refused, and those in it keep their counts.
        let mut refused = 0;
        for i in 0..100_000 {
            match l.check_at("t", &format!("ip:{i}"), 0) {
                Ok(d) => assert!(d.allowed),
                Err(Refusal::TooManyClients) => refused += 1,
                Err(other) => panic!("{other:?}"),
            }
        }
        let tracked = l.tiers["t"].len();
        assert!(tracked <= 1_600, "{tracked} clients tracked");
        assert_eq!(refused, 100_000 - tracked);
        let first =
            (0..100_000).find(|i| l.tiers["t"].shard(&format!("ip:{i}")).lock().unwrap().contains(&format!("ip:{i}")));
        let first = format!("ip:{}", first.expect("someone is tracked"));
        assert_eq!(l.check_at("t", &first, 0).unwrap().remaining, 18, "its bucket was not reset");
        // Later every bucket is full again: idle clients make room for new ones, O(1) each.
        let later = 120 * SECOND;
        let admitted = (200_000..300_000).filter(|i| l.check_at("t", &format!("ip:{i}"), later).is_ok()).count();
        assert!((1_000..=1_600).contains(&admitted), "{admitted} newcomers took idle clients' places");
        let shard = l.tiers["t"].shard(&first).lock().unwrap().contains(&first);
        assert!(!shard, "the idle client made room");
        assert!(l.tiers["t"].len() <= 1_600);
        l.evict_idle();
        assert!(l.tiers["t"].len() <= 1_600);
    }
}
