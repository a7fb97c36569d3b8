//! A rolling window of call counts in time buckets: old buckets fall out as
//! time passes, so a burst of failures stops counting one window later.
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy, Default)]
struct Bucket {
    /// Which time slot the counts belong to; a stale slot reads as empty.
    slot: u64,
    total: u64,
    successes: u64,
}

/// Counts within `width`, kept in `buckets` slots.
#[derive(Debug, Clone)]
pub struct RollingWindow {
    origin: Instant,
    bucket_width: Duration,
    buckets: Vec<Bucket>,
}

/// What a window holds right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Counts {
    pub total: u64,
    pub successes: u64,
}

impl Counts {
    pub fn failures(&self) -> u64 {
        self.total - self.successes
    }
}

impl RollingWindow {
    pub fn new(width: Duration, buckets: usize, now: Instant) -> Self {
        let buckets = buckets.max(1);
        let bucket_width = (width / buckets as u32).max(Duration::from_millis(1));
        Self { origin: now, bucket_width, buckets: vec![Bucket::default(); buckets] }
    }

    fn slot(&self, now: Instant) -> u64 {
        // +1 so slot 0 (the default) never matches a live bucket.
        (now.saturating_duration_since(self.origin).as_nanos() / self.bucket_width.as_nanos()) as u64 + 1
    }

    pub fn record(&mut self, success: bool, now: Instant) {
        let slot = self.slot(now);
        let len = self.buckets.len() as u64;
        let bucket = &mut self.buckets[(slot % len) as usize];
        if bucket.slot != slot {
            *bucket = Bucket { slot, total: 0, successes: 0 };
        }
        bucket.total += 1;
        bucket.successes += u64::from(success);
    }

    pub fn counts(&self, now: Instant) -> Counts {
        let current = self.slot(now);
        let len = self.buckets.len() as u64;
        self.buckets.iter().filter(|b| b.slot != 0 && b.slot + len > current && b.slot <= current).fold(
            Counts::default(),
            |sum, b| Counts { total: sum.total + b.total, successes: sum.successes + b.successes },
        )
    }

    pub fn clear(&mut self) {
        self.buckets.iter_mut().for_each(|b| *b = Bucket::default());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_age_out_one_window_later() {
        let t0 = Instant::now();
        let mut window = RollingWindow::new(Duration::from_secs(10), 10, t0);
        window.record(false, t0);
        window.record(true, t0 + Duration::from_millis(500));
        window.record(false, t0 + Duration::from_secs(5));
        assert_eq!(window.counts(t0 + Duration::from_secs(5)), Counts { total: 3, successes: 1 });
        // The first second's bucket leaves at 10 s; the 5 s one stays until 15 s.
        assert_eq!(window.counts(t0 + Duration::from_millis(10_100)), Counts { total: 1, successes: 0 });
        assert_eq!(window.counts(t0 + Duration::from_secs(15)), Counts::default());
        // A reused bucket starts from zero.
        window.record(true, t0 + Duration::from_secs(20));
        assert_eq!(window.counts(t0 + Duration::from_secs(20)), Counts { total: 1, successes: 1 });
    }
}
