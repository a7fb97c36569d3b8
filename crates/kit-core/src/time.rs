//! Wall-clock helpers. Stores keep times as integer milliseconds since the epoch
//! (portable across SQLite and PostgreSQL); the API speaks protobuf Timestamps
//! (`contracts::time` converts).
use std::time::{SystemTime, UNIX_EPOCH};

pub fn now_millis() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX)).unwrap_or(0)
}

/// (year, month) of a day count since the epoch, UTC (Howard Hinnant's
/// civil-from-days).
pub fn civil_from_days(days: i64) -> (i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn days_map_to_calendar_months() {
        assert_eq!(civil_from_days(0), (1970, 1));
        assert_eq!(civil_from_days(31), (1970, 2));
        assert_eq!(civil_from_days(-1), (1969, 12));
        assert_eq!(civil_from_days(20_417), (2025, 11)); // 2025-11-25
    }
}
