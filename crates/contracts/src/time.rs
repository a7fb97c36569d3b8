//! Protobuf Timestamps from the integer milliseconds stores keep.

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
