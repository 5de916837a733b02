//! Event times as RFC 3339 text, as CloudEvents' `time` and MassTransit's `sentTime` want.

use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// Microseconds since the Unix epoch → `2026-11-22T14:59:17.123456Z`. A time outside what
/// RFC 3339 can write (before year 0, after 9999) becomes the epoch rather than an error: it
/// cannot come from PostgreSQL's commit times and is not worth failing an event for.
pub(crate) fn rfc3339(micros: i64) -> String {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(micros) * 1_000)
        .ok()
        .and_then(|time| time.format(&Rfc3339).ok())
        .unwrap_or_else(|| "1970-01-01T00:00:00Z".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_microseconds_in_utc() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(
            rfc3339(1_795_359_557_123_456),
            "2026-11-22T14:59:17.123456Z"
        );
        assert_eq!(rfc3339(i64::MAX), "1970-01-01T00:00:00Z");
    }
}
