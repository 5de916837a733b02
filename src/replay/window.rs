//! The replay window: how much history `walbox run --replay-window` keeps decodable, and
//! where the bookmark slot should trail the live slot to keep exactly that.
//!
//! Pure: it turns the live slot's confirmed positions, sampled over time, into the position
//! the bookmark may be advanced to. Only ever forward, and never past what the window keeps.

use std::collections::VecDeque;
use std::fmt;
use std::str::FromStr;
use std::time::{Duration, SystemTime};

use crate::lsn::Lsn;

/// How far behind the live position replay must still reach.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReplayWindow {
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
pub struct ParseWindowError(String);

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

/// Where the bookmark slot should be, given what the live slot confirmed and when.
///
/// For a size window the answer follows from the live position alone. For an age window it
/// needs history: each sample records when the live slot had confirmed a position, and the
/// bookmark may move to the newest position confirmed at least `window` ago. Samples live in
/// memory only, so after a restart the bookmark holds still for one window length: it keeps
/// more than asked, never less.
#[derive(Debug)]
pub struct Trail {
    window: ReplayWindow,
    /// (when, the live slot's confirmed position then), oldest first.
    samples: VecDeque<(SystemTime, Lsn)>,
}

impl Trail {
    pub fn new(window: ReplayWindow) -> Self {
        Trail {
            window,
            samples: VecDeque::new(),
        }
    }

    /// The live slot had confirmed `live` at `now`. Returns the position the bookmark may
    /// advance to, if that is past `bookmark`.
    pub fn observe(&mut self, now: SystemTime, live: Lsn, bookmark: Lsn) -> Option<Lsn> {
        let target = match self.window {
            ReplayWindow::Bytes(bytes) => Lsn(live.as_u64().saturating_sub(bytes)),
            ReplayWindow::Age(age) => {
                // Positions only grow, so samples are kept in order of both time and LSN.
                if self.samples.back().is_none_or(|&(_, last)| live > last) {
                    self.samples.push_back((now, live));
                }
                let cutoff = now.checked_sub(age)?;
                let mut target = None;
                while let Some(&(when, position)) = self.samples.front() {
                    if when > cutoff {
                        break;
                    }
                    target = Some(position);
                    self.samples.pop_front();
                }
                // Keep the newest expired sample: it is the target until a newer one expires.
                let target = target?;
                self.samples.push_front((cutoff, target));
                target
            }
        };
        (target > bookmark).then_some(target)
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

    #[test]
    fn a_size_window_trails_the_live_position_by_that_size() {
        let mut trail = Trail::new(ReplayWindow::Bytes(1000));
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        assert_eq!(trail.observe(now, Lsn(500), Lsn(0)), None);
        assert_eq!(trail.observe(now, Lsn(5000), Lsn(0)), Some(Lsn(4000)));
        assert_eq!(trail.observe(now, Lsn(5000), Lsn(4000)), None);
    }

    #[test]
    fn an_age_window_moves_to_what_was_confirmed_that_long_ago() {
        let start = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let at = |seconds| start + Duration::from_secs(seconds);
        let mut trail = Trail::new(ReplayWindow::Age(Duration::from_secs(60)));
        assert_eq!(trail.observe(at(0), Lsn(100), Lsn(50)), None);
        assert_eq!(trail.observe(at(30), Lsn(200), Lsn(50)), None);
        assert_eq!(trail.observe(at(59), Lsn(300), Lsn(50)), None);
        assert_eq!(trail.observe(at(60), Lsn(400), Lsn(50)), Some(Lsn(100)));
        assert_eq!(trail.observe(at(89), Lsn(400), Lsn(100)), None);
        assert_eq!(trail.observe(at(95), Lsn(400), Lsn(100)), Some(Lsn(200)));
        assert_eq!(trail.observe(at(200), Lsn(400), Lsn(200)), Some(Lsn(400)));
    }

    proptest! {
        /// Whatever the sampling, the bookmark never moves past a position the live slot
        /// confirmed less than a window ago, and never backwards.
        #[test]
        fn an_age_window_never_releases_recent_history(
            steps in proptest::collection::vec((0u64..120, 0u64..10_000), 1..200),
            window in 1u64..300,
        ) {
            let start = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
            let mut trail = Trail::new(ReplayWindow::Age(Duration::from_secs(window)));
            let (mut now, mut live, mut bookmark) = (0u64, 0u64, 0u64);
            let mut history = Vec::new();
            for (elapsed, grown) in steps {
                now += elapsed;
                live += grown;
                history.push((now, live));
                if let Some(target) = trail.observe(start + Duration::from_secs(now), Lsn(live), Lsn(bookmark)) {
                    prop_assert!(target.as_u64() > bookmark);
                    // The newest position confirmed at least `window` ago bounds the target.
                    let allowed = history
                        .iter()
                        .filter(|(when, _)| *when + window <= now)
                        .map(|(_, position)| *position)
                        .max()
                        .unwrap_or(0);
                    prop_assert!(target.as_u64() <= allowed, "target {} > allowed {}", target.as_u64(), allowed);
                    bookmark = target.as_u64();
                }
            }
        }

        #[test]
        fn a_size_window_keeps_at_least_its_size(live in 0u64..1 << 40, size in 1u64..1 << 32, bookmark in 0u64..1 << 40) {
            let mut trail = Trail::new(ReplayWindow::Bytes(size));
            if let Some(target) = trail.observe(SystemTime::UNIX_EPOCH, Lsn(live), Lsn(bookmark)) {
                prop_assert!(target.as_u64() > bookmark);
                prop_assert!(live - target.as_u64() >= size);
            }
        }

        #[test]
        fn parsing_never_panics(text in ".{0,20}") {
            let _ = text.parse::<ReplayWindow>();
        }
    }
}
