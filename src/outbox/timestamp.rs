//! PostgreSQL's ISO text form of `timestamptz` / `timestamp` → seconds since the Unix epoch,
//! for the AMQP `timestamp` property.
//!
//! The replication session pins `DateStyle=ISO` and `TimeZone=UTC`, so values arrive as
//! `2026-11-22 14:59:17.123456+00` (or without an offset for `timestamp`, read as UTC).

/// Seconds between the Unix epoch and PostgreSQL's epoch (2000-01-01 00:00:00 UTC).
pub const POSTGRES_EPOCH_UNIX_SECONDS: i64 = 946_684_800;

/// Parse an ISO timestamp; `None` for anything it does not understand (infinity, BC dates,
/// instants before 1970), which then falls back to the commit time.
pub fn parse_unix_seconds(text: &str) -> Option<u64> {
    parse_unix_micros(text).map(|micros| micros / 1_000_000)
}

/// As [`parse_unix_seconds`], to the microsecond (PostgreSQL's own resolution).
pub fn parse_unix_micros(text: &str) -> Option<u64> {
    let (date, rest) = text.split_once(' ')?;
    let mut date_parts = date.splitn(3, '-');
    let year: i64 = date_parts.next()?.parse().ok()?;
    let month: u32 = date_parts.next()?.parse().ok()?;
    let day: u32 = date_parts.next()?.parse().ok()?;
    // The time runs up to an offset sign, if any.
    let offset_at = rest.find(['+', '-']).unwrap_or(rest.len());
    let (time, offset) = rest.split_at(offset_at);
    let mut time_parts = time.splitn(3, ':');
    let hour: i64 = time_parts.next()?.parse().ok()?;
    let minute: i64 = time_parts.next()?.parse().ok()?;
    let mut second_parts = time_parts.next()?.splitn(2, '.');
    let second: i64 = second_parts.next()?.parse().ok()?;
    let micros = match second_parts.next() {
        None => 0,
        Some(fraction) => {
            // Up to six digits (PostgreSQL's resolution), read without allocating.
            let digits = fraction.as_bytes();
            if digits.is_empty() || digits.len() > 6 || !digits.iter().all(u8::is_ascii_digit) {
                return None;
            }
            let value = digits
                .iter()
                .fold(0_i64, |value, digit| value * 10 + i64::from(digit - b'0'));
            value * 10_i64.pow(6 - digits.len() as u32)
        }
    };
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) || hour > 24 || minute > 59 {
        return None;
    }
    let offset_seconds = parse_offset(offset)?;
    let days = days_from_civil(year, month, day);
    let seconds = days * 86_400 + hour * 3_600 + minute * 60 + second - offset_seconds;
    u64::try_from(seconds.checked_mul(1_000_000)?.checked_add(micros)?).ok()
}

/// `+00`, `-03`, `+05:30`, `+05:30:15`, or empty (UTC).
fn parse_offset(offset: &str) -> Option<i64> {
    if offset.is_empty() {
        return Some(0);
    }
    let sign = if offset.starts_with('-') { -1 } else { 1 };
    let mut parts = offset[1..].splitn(3, ':');
    let hours: i64 = parts.next()?.parse().ok()?;
    let minutes: i64 = parts.next().map_or(Some(0), |m| m.parse().ok())?;
    let seconds: i64 = parts.next().map_or(Some(0), |s| s.parse().ok())?;
    Some(sign * (hours * 3_600 + minutes * 60 + seconds))
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let year_of_era = year - era * 400;
    let month = i64::from(month);
    let day_of_year =
        (153 * (if month > 2 { month - 3 } else { month + 9 }) + 2) / 5 + i64::from(day) - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

/// Microseconds since the PostgreSQL epoch (as in Begin and Commit messages) → Unix µs.
pub fn postgres_micros_to_unix_micros(micros: i64) -> i64 {
    micros.saturating_add(POSTGRES_EPOCH_UNIX_SECONDS * 1_000_000)
}

/// Now, in microseconds since the PostgreSQL epoch (for an event PostgreSQL sends no time
/// with: a non-transactional logical message).
pub fn now_postgres_micros() -> i64 {
    let unix = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |since| {
            i64::try_from(since.as_micros()).unwrap_or(i64::MAX)
        });
    unix.saturating_sub(POSTGRES_EPOCH_UNIX_SECONDS * 1_000_000)
}

/// Microseconds since the PostgreSQL epoch (as in Begin and Commit messages) → Unix seconds.
pub fn postgres_micros_to_unix_seconds(micros: i64) -> u64 {
    let seconds = micros.div_euclid(1_000_000) + POSTGRES_EPOCH_UNIX_SECONDS;
    u64::try_from(seconds).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_iso_timestamps_with_and_without_offsets() {
        assert_eq!(parse_unix_seconds("1970-01-01 00:00:00+00"), Some(0));
        assert_eq!(parse_unix_seconds("2000-01-01 00:00:00"), Some(946_684_800));
        assert_eq!(
            parse_unix_seconds("2026-11-22 14:59:17.123456+00"),
            Some(1_795_359_557)
        );
        assert_eq!(
            parse_unix_seconds("2026-11-22 16:59:17+02"),
            Some(1_795_359_557)
        );
        assert_eq!(
            parse_unix_seconds("2026-11-22 09:29:17-05:30"),
            Some(1_795_359_557)
        );
        assert_eq!(
            parse_unix_seconds("2024-02-29 12:00:00+00"),
            Some(1_709_208_000)
        );
    }

    #[test]
    fn keeps_microseconds() {
        assert_eq!(
            parse_unix_micros("2026-11-22 14:59:17.123456+00"),
            Some(1_795_359_557_123_456)
        );
        assert_eq!(
            parse_unix_micros("2026-11-22 14:59:17.5+00"),
            Some(1_795_359_557_500_000)
        );
        assert_eq!(parse_unix_micros("1970-01-01 00:00:01"), Some(1_000_000));
        assert_eq!(
            parse_unix_micros("1970-01-01 00:00:01.000001"),
            Some(1_000_001)
        );
        assert_eq!(parse_unix_micros("1970-01-01 00:00:01.x"), None);
    }

    #[test]
    fn unknown_forms_fall_back() {
        assert_eq!(parse_unix_seconds("infinity"), None);
        assert_eq!(parse_unix_seconds("0044-03-15 00:00:00+00 BC"), None);
        assert_eq!(parse_unix_seconds("1969-12-31 23:59:59+00"), None);
        assert_eq!(parse_unix_seconds("2026-13-01 00:00:00"), None);
        assert_eq!(parse_unix_seconds(""), None);
    }

    #[test]
    fn commit_time_converts_from_the_postgres_epoch() {
        assert_eq!(postgres_micros_to_unix_seconds(0), 946_684_800);
        assert_eq!(postgres_micros_to_unix_seconds(1_500_000), 946_684_801);
    }

    proptest::proptest! {
        #[test]
        fn never_panics(text in ".{0,40}") {
            let _ = parse_unix_seconds(&text);
        }
    }
}
