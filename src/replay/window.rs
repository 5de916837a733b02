//! Where the bookmark slot should trail the live slot to keep exactly the replay window.
//!
//! Pure: it turns the live slot's confirmed positions, sampled over time, into the position
//! the bookmark may be advanced to. Only ever forward, and never past what the window keeps.

use std::collections::VecDeque;
use std::time::SystemTime;

use crate::config::ReplayWindow;
use crate::lsn::Lsn;

/// Where the bookmark slot should be, given what the live slot confirmed and when.
///
/// For a size window the answer follows from the live position alone. For an age window it
/// needs history: each sample records when the live slot had confirmed a position, and the
/// bookmark may move to the newest position confirmed at least `window` ago. Samples live in
/// memory only, so after a restart the bookmark holds still for one window length: it keeps
/// more than asked, never less.
#[derive(Debug)]
pub(crate) struct Trail {
    window: ReplayWindow,
    /// (when, the live slot's confirmed position then), oldest first.
    samples: VecDeque<(SystemTime, Lsn)>,
}

impl Trail {
    pub(crate) fn new(window: ReplayWindow) -> Self {
        Trail {
            window,
            samples: VecDeque::new(),
        }
    }

    /// The live slot had confirmed `live` at `now`. Returns the position the bookmark may
    /// advance to, if that is past `bookmark`.
    pub(crate) fn observe(&mut self, now: SystemTime, live: Lsn, bookmark: Lsn) -> Option<Lsn> {
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
    use std::time::Duration;

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
    }
}
