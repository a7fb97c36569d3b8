//! Shared limits in a real Redis: the burst and the rate, the monthly quota,
//! two gateways counting as one, and an unreachable Redis answering `None`
//! at once (the gateway then applies its local limits). Fails, not skips,
//! without Redis when `CI=true`.
#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

use gateway::ratelimit::Tier;
use gateway::ratelimit::redis::RedisLimiter;

fn redis_url() -> String {
    std::env::var("SHOPFAST_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

/// A limiter on a prefix of its own, or `None` (skip) without Redis outside CI.
async fn limiter(prefix: &str) -> Option<RedisLimiter> {
    let limiter = RedisLimiter::new(&redis_url(), prefix).unwrap();
    let probe = Tier { per_minute: 1_000, burst: 1_000, monthly_quota: 0 };
    if limiter.check("probe", &probe, "probe", "2026-12", 60).await.is_some() {
        return Some(RedisLimiter::new(&redis_url(), prefix).unwrap());
    }
    assert!(!kit::testing::running_in_ci(), "Redis is required when CI=true: nothing answers at {}", redis_url());
    eprintln!("SKIPPED: no Redis at {}", redis_url());
    None
}

fn prefix() -> String {
    format!("shopfast-test:{}:", uuid::Uuid::now_v7().simple())
}

#[tokio::test]
async fn the_burst_is_shared_by_every_gateway() {
    let prefix = prefix();
    let (Some(one), Some(two)) = (limiter(&prefix).await, limiter(&prefix).await) else { return };
    let tier = Tier { per_minute: 60, burst: 3, monthly_quota: 0 };
    let mut allowed = 0;
    for n in 0..4 {
        let gateway = if n % 2 == 0 { &one } else { &two };
        let decision = gateway.check("free", &tier, "client-a", "2026-12", 3_600).await.unwrap();
        assert!(decision.quota.is_none(), "no quota on this tier");
        if decision.rate.allowed {
            allowed += 1;
        } else {
            assert!(decision.rate.retry_after_ms > 0 && decision.rate.retry_after_ms <= 1_000, "one per second");
        }
    }
    assert_eq!(allowed, 3, "a burst of 3 across both gateways");
    // Another client has its own bucket.
    assert!(one.check("free", &tier, "client-b", "2026-12", 3_600).await.unwrap().rate.allowed);
}

#[tokio::test]
async fn a_tier_faster_than_a_request_a_millisecond_works() {
    // 600 000 a minute: 100 µs between requests. In milliseconds the interval
    // was 0 and Redis refused the key's TTL, so every call fell back to the
    // local limits (found by the compose redis profile's traffic generator).
    let Some(limiter) = limiter(&prefix()).await else { return };
    let tier = Tier { per_minute: 600_000, burst: 20_000, monthly_quota: 0 };
    for _ in 0..50 {
        let decision = limiter.check("loadgen", &tier, "client-fast", "2026-12", 3_600).await;
        assert!(decision.is_some_and(|d| d.rate.allowed), "a fast tier must be served by Redis and allowed");
    }
    let tight = Tier { per_minute: 120_000, burst: 2, monthly_quota: 0 };
    let verdicts: Vec<bool> = ten_checks(&limiter, &tight).await;
    assert!(verdicts.iter().filter(|a| **a).count() >= 2, "{verdicts:?}");
}

/// Ten checks as fast as they go on a tier of 2 000 a second and a burst of 2.
async fn ten_checks(limiter: &RedisLimiter, tier: &Tier) -> Vec<bool> {
    let mut verdicts = Vec::new();
    for _ in 0..10 {
        let decision = limiter.check("tight", tier, "client-tight", "2026-12", 3_600).await.unwrap();
        verdicts.push(decision.rate.allowed);
    }
    verdicts
}

#[tokio::test]
async fn the_monthly_quota_is_counted_once_for_all() {
    let prefix = prefix();
    let (Some(one), Some(two)) = (limiter(&prefix).await, limiter(&prefix).await) else { return };
    let tier = Tier { per_minute: 60_000, burst: 1_000, monthly_quota: 5 };
    let mut used = Vec::new();
    for n in 0..7 {
        let gateway = if n % 2 == 0 { &one } else { &two };
        let decision = gateway.check("paid", &tier, "client-q", "2026-12", 3_600).await.unwrap();
        let quota = decision.quota.unwrap();
        used.push((decision.rate.allowed && quota.allowed, quota.used));
    }
    let allowed = used.iter().filter(|(a, _)| *a).count();
    assert_eq!(allowed, 5, "{used:?}");
    assert!(used.iter().all(|(_, n)| *n <= 5), "refused calls are not counted: {used:?}");
    // A new month starts from zero.
    let next = one.check("paid", &tier, "client-q", "2027-01", 3_600).await.unwrap();
    assert!(next.quota.unwrap().allowed);
}

#[tokio::test]
async fn an_unreachable_redis_falls_back_at_once() {
    let limiter = RedisLimiter::new("redis://127.0.0.1:1", "x:").unwrap();
    let tier = Tier { per_minute: 60, burst: 3, monthly_quota: 0 };
    let started = std::time::Instant::now();
    assert!(limiter.check("free", &tier, "c", "2026-12", 60).await.is_none());
    assert!(started.elapsed() < std::time::Duration::from_secs(2), "{:?}", started.elapsed());
    // Within the back-off it does not even try.
    let again = std::time::Instant::now();
    assert!(limiter.check("free", &tier, "c", "2026-12", 60).await.is_none());
    assert!(again.elapsed() < std::time::Duration::from_millis(50));
    assert!(RedisLimiter::new("not a url", "x:").is_err());
}
