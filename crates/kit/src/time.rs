//! Wall-clock helpers. Stores keep times as integer milliseconds since the epoch
//! (portable across SQLite and PostgreSQL); the API speaks protobuf Timestamps.
use std::time::{SystemTime, UNIX_EPOCH};

pub fn now_millis() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX)).unwrap_or(0)
}

pub fn timestamp_from_millis(millis: i64) -> prost_types::Timestamp {
    prost_types::Timestamp { seconds: millis.div_euclid(1000), nanos: (millis.rem_euclid(1000) * 1_000_000) as i32 }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn converts_negative_and_positive_millis() {
        assert_eq!(timestamp_from_millis(1_500), prost_types::Timestamp { seconds: 1, nanos: 500_000_000 });
        assert_eq!(timestamp_from_millis(-1), prost_types::Timestamp { seconds: -1, nanos: 999_000_000 });
    }
}
