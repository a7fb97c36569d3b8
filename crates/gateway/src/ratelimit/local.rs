//! Per-client GCRA in this process (governor), one keyed limiter per tier.
//! Idle clients are evicted periodically, so memory stays bounded.
use std::collections::BTreeMap;
use std::num::NonZeroU32;

use governor::clock::{Clock, DefaultClock};
use governor::middleware::StateInformationMiddleware;
use governor::state::keyed::DefaultKeyedStateStore;
use governor::{Quota, RateLimiter};

use super::{RateDecision, Tier};

type Keyed = RateLimiter<String, DefaultKeyedStateStore<String>, DefaultClock, StateInformationMiddleware>;

pub struct LocalLimiter {
    tiers: BTreeMap<String, (Keyed, Tier)>,
    clock: DefaultClock,
}

impl LocalLimiter {
    pub fn new(tiers: &BTreeMap<String, Tier>) -> Self {
        let tiers = tiers
            .iter()
            .map(|(name, tier)| {
                let per_minute = NonZeroU32::new(tier.per_minute.max(1)).unwrap_or(NonZeroU32::MIN);
                let burst = NonZeroU32::new(tier.burst.max(1)).unwrap_or(NonZeroU32::MIN);
                let limiter = RateLimiter::keyed(Quota::per_minute(per_minute).allow_burst(burst))
                    .with_middleware::<StateInformationMiddleware>();
                (name.clone(), (limiter, *tier))
            })
            .collect();
        Self { tiers, clock: DefaultClock::default() }
    }

    /// `None` for an unknown tier.
    pub fn check(&self, tier: &str, client: &str) -> Option<RateDecision> {
        let (limiter, config) = self.tiers.get(tier)?;
        let interval_ms = 60_000 / u64::from(config.per_minute.max(1));
        Some(match limiter.check_key(&client.to_string()) {
            Ok(snapshot) => {
                let remaining = snapshot.remaining_burst_capacity();
                RateDecision {
                    allowed: true,
                    limit: config.burst,
                    remaining,
                    reset_ms: u64::from(config.burst.saturating_sub(remaining)) * interval_ms,
                    retry_after_ms: 0,
                }
            }
            Err(not_until) => {
                let wait = not_until.wait_time_from(self.clock.now());
                RateDecision {
                    allowed: false,
                    limit: config.burst,
                    remaining: 0,
                    reset_ms: u64::from(config.burst) * interval_ms,
                    retry_after_ms: wait.as_millis() as u64,
                }
            }
        })
    }

    /// Forgets clients whose buckets are full again (idle); returns how many remain.
    pub fn evict_idle(&self) -> usize {
        self.tiers
            .values()
            .map(|(limiter, _)| {
                limiter.retain_recent();
                limiter.shrink_to_fit();
                limiter.len()
            })
            .sum()
    }
}
