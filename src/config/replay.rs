//! `walbox replay`'s settings and the replay window `walbox run --replay-window` keeps: a WAL
//! size or an age, parsed and shown in the units people write.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use crate::lsn::Lsn;

/// What to replay.
#[derive(Clone, Debug)]
pub(crate) struct ReplayConfig {
    /// Transactions that committed at or after this LSN…
    pub(crate) from_lsn: Lsn,
    /// …and at or before this one (default: the WAL position when the replay starts).
    pub(crate) to_lsn: Option<Lsn>,
    /// Count what would be replayed; publish nothing.
    pub(crate) dry_run: bool,
}

/// How far behind the live position replay must still reach.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ReplayWindow {
    /// This many bytes of WAL behind the live slot's confirmed position.
    Bytes(u64),
    /// Everything the live slot confirmed within this long.
    Age(Duration),
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error(
    "`{0}` is not a replay window: give a size (e.g. 512MB, 10GB; units B, kB, MB, GB, TB, \
     powers of 1024) or a duration (e.g. 90s, 30m, 24h, 7d)"
)]
pub(crate) struct ParseWindowError(String);

const BYTE_UNITS: [(&str, u64); 5] = [
    ("tb", 1 << 40),
    ("gb", 1 << 30),
    ("mb", 1 << 20),
    ("kb", 1 << 10),
    ("b", 1),
];

const AGE_UNITS: [(&str, u64); 4] = [("d", 86_400), ("h", 3_600), ("m", 60), ("s", 1)];

impl FromStr for ReplayWindow {
    type Err = ParseWindowError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let error = || ParseWindowError(text.to_owned());
        let trimmed = text.trim();
        let digits = trimmed
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(trimmed.len());
        let (number, unit) = trimmed.split_at(digits);
        let number: u64 = number.parse().map_err(|_| error())?;
        let unit = unit.trim().to_ascii_lowercase();
        if number == 0 {
            return Err(error());
        }
        if let Some((_, scale)) = BYTE_UNITS.iter().find(|(name, _)| *name == unit) {
            return number
                .checked_mul(*scale)
                .map(ReplayWindow::Bytes)
                .ok_or_else(error);
        }
        if let Some((_, scale)) = AGE_UNITS.iter().find(|(name, _)| *name == unit) {
            return number
                .checked_mul(*scale)
                .map(|seconds| ReplayWindow::Age(Duration::from_secs(seconds)))
                .ok_or_else(error);
        }
        Err(error())
    }
}

impl fmt::Display for ReplayWindow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ReplayWindow::Bytes(bytes) => {
                let (name, scale) = BYTE_UNITS
                    .iter()
                    .find(|(_, scale)| bytes % scale == 0)
                    .expect("1 divides everything");
                write!(f, "{}{}", bytes / scale, name.to_ascii_uppercase())
            }
            ReplayWindow::Age(age) => {
                let seconds = age.as_secs();
                let (name, scale) = AGE_UNITS
                    .iter()
                    .find(|(_, scale)| seconds % scale == 0)
                    .expect("1 divides everything");
                write!(f, "{}{}", seconds / scale, name)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses_sizes_and_durations() {
        assert_eq!("10GB".parse(), Ok(ReplayWindow::Bytes(10 << 30)));
        assert_eq!("64kB".parse(), Ok(ReplayWindow::Bytes(64 << 10)));
        assert_eq!("512 mb".parse(), Ok(ReplayWindow::Bytes(512 << 20)));
        assert_eq!("100B".parse(), Ok(ReplayWindow::Bytes(100)));
        assert_eq!(
            "24h".parse(),
            Ok(ReplayWindow::Age(Duration::from_secs(86_400)))
        );
        assert_eq!(
            "90s".parse(),
            Ok(ReplayWindow::Age(Duration::from_secs(90)))
        );
        assert_eq!(
            "7d".parse(),
            Ok(ReplayWindow::Age(Duration::from_secs(7 * 86_400)))
        );
        for bad in [
            "",
            "GB",
            "10",
            "0h",
            "-1GB",
            "10 parsecs",
            "1.5GB",
            "99999999999999TB",
        ] {
            assert!(bad.parse::<ReplayWindow>().is_err(), "{bad:?} parsed");
        }
    }

    #[test]
    fn displays_in_the_largest_exact_unit() {
        assert_eq!(ReplayWindow::Bytes(10 << 30).to_string(), "10GB");
        assert_eq!(ReplayWindow::Bytes(1500).to_string(), "1500B");
        assert_eq!(
            ReplayWindow::Age(Duration::from_secs(7200)).to_string(),
            "2h"
        );
    }

    proptest! {
        #[test]
        fn parsing_never_panics(text in ".{0,20}") {
            let _ = text.parse::<ReplayWindow>();
        }
    }
}
