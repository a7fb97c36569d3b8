//! Calendar months in UTC without a date library: quotas reset on the 1st.

/// Days since 1970-01-01 of a civil date (Howard Hinnant's algorithm).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The month containing `epoch_secs` as `YYYY-MM`, and the seconds left in it.
pub fn month(epoch_secs: i64) -> (String, i64) {
    let (year, month) = kit_core::time::civil_from_days(epoch_secs.div_euclid(86_400));
    let (next_year, next_month) = if month == 12 { (year + 1, 1) } else { (year, month + 1) };
    let next_start = days_from_civil(next_year, next_month, 1) * 86_400;
    (format!("{year:04}-{month:02}"), next_start - epoch_secs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn months_and_their_ends() {
        assert_eq!(month(0), ("1970-01".to_string(), 31 * 86_400));
        // 2026-11-25T00:00:00Z; December starts in 6 days.
        assert_eq!(month(1_795_564_800), ("2026-11".to_string(), 6 * 86_400));
        // Leap day 2028-02-29T12:00:00Z.
        assert_eq!(month(1_835_438_400), ("2028-02".to_string(), 12 * 3_600));
        assert_eq!(month(1_798_761_599).0, "2026-12", "last second of 2026");
        assert_eq!(month(1_798_761_600).0, "2027-01");
    }
}
