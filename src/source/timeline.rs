//! Whether a position walbox confirmed on one server still lies in the history of the server a
//! new session reached.
//!
//! WAL positions are only comparable along one history. A promoted standby starts a new
//! timeline that forks from the old primary's at the end of the WAL the standby had replayed;
//! what the old primary wrote past that point is not in the new primary's history, and the new
//! primary writes its own, different WAL at those same positions. A position this process saw
//! confirmed on the old timeline beyond the fork point therefore vouches for nothing on the new
//! one: streaming from it would make PostgreSQL skip every transaction the new primary
//! committed below it. The server's timeline history (`TIMELINE_HISTORY`) says where each
//! ancestor timeline ended; the judgement here uses it, and nothing else.

use crate::error::{Error, Result};
use crate::lsn::Lsn;

/// Which server history a position belongs to: the cluster (`IDENTIFY_SYSTEM`'s system
/// identifier, shared by a primary and its physical standbys) and its timeline.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Origin {
    pub(crate) system_id: String,
    pub(crate) timeline: u32,
}

/// A position this process saw confirmed, and the history it was confirmed on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Confirmed {
    pub(crate) through: Lsn,
    pub(crate) on: Origin,
}

/// A resume position the new server's history does not vouch for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Fork {
    /// Where the position was confirmed.
    pub(crate) before: Origin,
    /// The server the session reached.
    pub(crate) now: Origin,
    /// Where `before`'s timeline ends in `now`'s history; None when it is not an ancestor
    /// (another cluster, or a sibling timeline).
    pub(crate) at: Option<Lsn>,
    /// The position this process had confirmed on `before`.
    pub(crate) confirmed: Lsn,
    /// The slot's confirmed position on the new server: where to resume instead.
    pub(crate) slot: Lsn,
}

impl Fork {
    /// What happened, for the log: the events past the fork point were delivered, and the
    /// database lost them, not walbox.
    pub(crate) fn describe(&self) -> String {
        let (before, now) = (self.before.timeline, self.now.timeline);
        let forked = match self.at {
            Some(at) => format!(
                "the new primary's timeline {now} forked from timeline {before} at {at}, before \
                 {confirmed}, the position walbox had seen confirmed on timeline {before}. The \
                 events committed on the old primary between {at} and {confirmed} were \
                 delivered (the broker confirmed them), but the new primary never received \
                 them (its standby was behind): they are gone from the database, not lost by \
                 walbox, and consumers hold events whose rows no longer exist",
                confirmed = self.confirmed
            ),
            None => format!(
                "the server walbox reached (system {}, timeline {now}) does not have timeline \
                 {before} of system {} in its history, so the position {} walbox had seen \
                 confirmed there says nothing about this server's WAL",
                self.now.system_id, self.before.system_id, self.confirmed
            ),
        };
        format!(
            "PostgreSQL failed over: {forked}. Resuming from the replication slot's own \
             position {} on the new primary, which its history covers: events committed after \
             it are sent again (duplicates), and none committed on the new primary is skipped",
            self.slot
        )
    }
}

/// The switch points of a timeline history file: (ancestor timeline, where it ended).
/// Lines are `parent<TAB>switchpoint<TAB>reason`; blank lines and `#` comments are skipped.
pub(crate) fn parse_history(content: &[u8]) -> Result<Vec<(u32, Lsn)>> {
    let text = std::str::from_utf8(content)
        .map_err(|_| Error::definite("the timeline history file is not UTF-8"))?;
    let mut switches = Vec::new();
    for line in text.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let bad = || Error::definite(format!("unreadable timeline history line {line:?}"));
        let mut fields = line.split_whitespace();
        let timeline = fields.next().and_then(|t| t.parse::<u32>().ok());
        let end = fields.next().and_then(|lsn| lsn.parse::<Lsn>().ok());
        switches.push(timeline.zip(end).ok_or_else(bad)?);
    }
    Ok(switches)
}

/// Whether `known` still holds on the server `now` (whose history is `history`, empty on
/// timeline 1), for a session that would stream from `start` while the server's slot stands at
/// `slot`. None: streaming from `start` skips nothing of `now`'s history.
pub(crate) fn judge(
    known: &Confirmed,
    now: &Origin,
    history: &[(u32, Lsn)],
    start: Lsn,
    slot: Lsn,
) -> Option<Fork> {
    if known.on == *now || start <= slot {
        // Same history; or the session starts from the slot's own position, which the server
        // keeps along its own history (a synchronized copy is never ahead of the WAL its
        // standby had: PostgreSQL skips syncing a position the standby has not received).
        return None;
    }
    let at = (known.on.system_id == now.system_id)
        .then(|| end_of(history, known.on.timeline, now.timeline))
        .flatten();
    if at.is_some_and(|at| start <= at) {
        // Everything up to `start` is WAL the two timelines share.
        return None;
    }
    Some(Fork {
        before: known.on.clone(),
        now: now.clone(),
        at,
        confirmed: known.through,
        slot,
    })
}

/// Where `timeline` ends in the history of timeline `current` (`Lsn(u64::MAX)` when it is
/// `current` itself); None when it is not one of its ancestors.
fn end_of(history: &[(u32, Lsn)], timeline: u32, current: u32) -> Option<Lsn> {
    if timeline == current {
        return Some(Lsn(u64::MAX));
    }
    history
        .iter()
        .find(|(ancestor, _)| *ancestor == timeline)
        .map(|(_, end)| *end)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn on(system_id: &str, timeline: u32) -> Origin {
        Origin {
            system_id: system_id.into(),
            timeline,
        }
    }

    fn lsn(text: &str) -> Lsn {
        text.parse().unwrap()
    }

    #[test]
    fn reads_a_history_file() {
        let file = b"1\t0/3446558\tno recovery target specified\n\n# note\n2\t0/5000000\tbefore 2026-12-06\n";
        assert_eq!(
            parse_history(file).unwrap(),
            [(1, lsn("0/3446558")), (2, lsn("0/5000000"))]
        );
        assert!(parse_history(b"1 nowhere\n").is_err());
        assert_eq!(parse_history(b"").unwrap(), []);
    }

    #[test]
    fn a_position_past_the_fork_point_is_not_vouched_for() {
        let history = [(1, lsn("0/3446558"))];
        let known = Confirmed {
            through: lsn("0/345AB90"),
            on: on("7", 1),
        };
        let now = on("7", 2);
        // The case: resuming from what was confirmed on timeline 1 would skip the new
        // primary's commits below 0/345AB90; resume from the slot instead.
        let fork = judge(&known, &now, &history, known.through, lsn("0/3446558")).unwrap();
        assert_eq!(fork.at, Some(lsn("0/3446558")));
        assert_eq!(fork.slot, lsn("0/3446558"));
        let text = fork.describe();
        assert!(
            text.contains("forked from timeline 1 at 0/3446558"),
            "{text}"
        );
        assert!(text.contains("not lost by walbox"), "{text}");
        assert!(text.contains("Resuming from the replication slot's own position 0/3446558"));
    }

    #[test]
    fn a_position_the_histories_share_or_the_slot_itself_is_kept() {
        let history = [(1, lsn("0/5000000")), (2, lsn("0/6000000"))];
        let known = Confirmed {
            through: lsn("0/4000000"),
            on: on("7", 1),
        };
        // At or before where timeline 1 ended: shared WAL.
        assert_eq!(
            judge(&known, &on("7", 3), &history, known.through, Lsn(0)),
            None
        );
        let at_fork = Confirmed {
            through: lsn("0/5000000"),
            ..known.clone()
        };
        assert_eq!(
            judge(&at_fork, &on("7", 3), &history, at_fork.through, Lsn(0)),
            None
        );
        // Same server history: nothing to check.
        assert_eq!(judge(&known, &on("7", 1), &[], known.through, Lsn(0)), None);
        // Starting from the slot (it is ahead): the server keeps that along its own history.
        assert_eq!(
            judge(&known, &on("8", 1), &[], lsn("0/7000000"), lsn("0/7000000")),
            None
        );
    }

    #[test]
    fn another_cluster_or_a_sibling_timeline_vouches_for_nothing() {
        let known = Confirmed {
            through: lsn("0/4000000"),
            on: on("7", 2),
        };
        let other = judge(
            &known,
            &on("8", 2),
            &[(1, lsn("0/1000000"))],
            known.through,
            Lsn(1),
        );
        assert_eq!(other.as_ref().and_then(|fork| fork.at), None);
        assert!(other.unwrap().describe().contains("says nothing"));
        // Timeline 3 forked from 1, not from 2: a sibling.
        let sibling = judge(
            &known,
            &on("7", 3),
            &[(1, lsn("0/1000000"))],
            known.through,
            Lsn(1),
        );
        assert!(sibling.is_some());
    }
}
