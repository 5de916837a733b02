//! Confirmed messages → the flush LSN. The one invariant of walbox lives here.
//!
//! Every published message gets a sequence number. Every transaction end (a Commit's end LSN)
//! and every idle keepalive becomes a *boundary*: "all messages published so far come before
//! this LSN". The flush LSN may move to a boundary only when every message published before
//! it has been positively confirmed by the broker. Nothing else moves the flush LSN; a nack,
//! a return or a lost connection never reaches this type: the session ends and the next one
//! starts from the slot's confirmed position, with a fresh watermark.

use std::collections::{BTreeSet, VecDeque};

use crate::lsn::Lsn;

/// Sequence number of a published message, from 1.
pub(crate) type Sequence = u64;

#[derive(Debug)]
pub(crate) struct Watermark {
    /// Messages published so far; the last one has this sequence number.
    published: Sequence,
    /// Every message up to and including this one was confirmed.
    confirmed_through: Sequence,
    /// Confirmed messages beyond a gap, should the broker confirm out of order.
    confirmed_ahead: BTreeSet<Sequence>,
    /// Boundaries not yet reached: (messages published before it, its LSN), oldest first.
    boundaries: VecDeque<(Sequence, Lsn)>,
    flush: Lsn,
}

impl Watermark {
    /// Start from the position the slot already confirmed.
    pub(crate) fn new(flushed: Lsn) -> Self {
        Watermark {
            published: 0,
            confirmed_through: 0,
            confirmed_ahead: BTreeSet::new(),
            boundaries: VecDeque::new(),
            flush: flushed,
        }
    }

    /// A message was handed to the broker; returns its sequence number.
    pub(crate) fn publish(&mut self) -> Sequence {
        self.published += 1;
        self.published
    }

    /// Everything published so far lies before `lsn`. Returns the new flush LSN if it moved.
    pub(crate) fn boundary(&mut self, lsn: Lsn) -> Option<Lsn> {
        match self.boundaries.back_mut() {
            // Consecutive boundaries with nothing published between them: keep the later one.
            Some((published, last)) if *published == self.published => *last = (*last).max(lsn),
            _ => self.boundaries.push_back((self.published, lsn)),
        }
        self.advance()
    }

    /// The broker positively confirmed message `sequence`. Returns the new flush LSN if it moved.
    pub(crate) fn confirm(&mut self, sequence: Sequence) -> Option<Lsn> {
        debug_assert!(
            sequence <= self.published,
            "confirm of a message never published"
        );
        if sequence == self.confirmed_through + 1 {
            self.confirmed_through = sequence;
            while self.confirmed_ahead.remove(&(self.confirmed_through + 1)) {
                self.confirmed_through += 1;
            }
        } else if sequence > self.confirmed_through {
            self.confirmed_ahead.insert(sequence);
        }
        self.advance()
    }

    /// The position PostgreSQL may forget up to.
    pub(crate) fn flush_lsn(&self) -> Lsn {
        self.flush
    }

    /// Messages published but not yet confirmed.
    #[cfg(test)]
    fn unconfirmed(&self) -> u64 {
        self.published - self.confirmed_through
    }

    fn advance(&mut self) -> Option<Lsn> {
        let before = self.flush;
        while let Some(&(published_before, lsn)) = self.boundaries.front() {
            if published_before > self.confirmed_through {
                break;
            }
            self.boundaries.pop_front();
            self.flush = self.flush.max(lsn);
        }
        (self.flush > before).then_some(self.flush)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn flush_waits_for_every_message_of_the_transaction() {
        let mut watermark = Watermark::new(Lsn(100));
        let first = watermark.publish();
        let second = watermark.publish();
        assert_eq!(watermark.boundary(Lsn(200)), None);
        assert_eq!(watermark.confirm(first), None);
        assert_eq!(watermark.flush_lsn(), Lsn(100));
        assert_eq!(watermark.confirm(second), Some(Lsn(200)));
        assert_eq!(watermark.unconfirmed(), 0);
    }

    #[test]
    fn idle_boundaries_move_at_once() {
        let mut watermark = Watermark::new(Lsn(100));
        assert_eq!(watermark.boundary(Lsn(150)), Some(Lsn(150)));
        assert_eq!(watermark.boundary(Lsn(120)), None, "never backwards");
        assert_eq!(watermark.flush_lsn(), Lsn(150));
    }

    #[test]
    fn out_of_order_confirms_wait_for_the_gap() {
        let mut watermark = Watermark::new(Lsn(0));
        let a = watermark.publish();
        watermark.boundary(Lsn(10));
        let b = watermark.publish();
        watermark.boundary(Lsn(20));
        assert_eq!(watermark.confirm(b), None);
        assert_eq!(watermark.confirm(a), Some(Lsn(20)));
    }

    #[derive(Clone, Debug)]
    enum Step {
        Publish,
        Boundary(u64),
        Confirm(usize),
    }

    fn steps() -> impl Strategy<Value = Vec<Step>> {
        proptest::collection::vec(
            prop_oneof![
                3 => Just(Step::Publish),
                2 => (1u64..50).prop_map(Step::Boundary),
                3 => any::<usize>().prop_map(Step::Confirm),
            ],
            0..200,
        )
    }

    proptest! {
        /// Against a simple model: the flush LSN is exactly the highest boundary all of whose
        /// earlier messages were confirmed, and never passes one that has an unconfirmed message.
        #[test]
        fn flush_never_passes_an_unconfirmed_message(steps in steps()) {
            let mut watermark = Watermark::new(Lsn(0));
            let mut next_lsn = 0u64;
            let mut confirmed: Vec<bool> = Vec::new();
            let mut boundaries: Vec<(usize, Lsn)> = Vec::new();
            let mut last_flush = Lsn(0);
            for step in steps {
                match step {
                    Step::Publish => {
                        watermark.publish();
                        confirmed.push(false);
                    }
                    Step::Boundary(gap) => {
                        next_lsn += gap;
                        watermark.boundary(Lsn(next_lsn));
                        boundaries.push((confirmed.len(), Lsn(next_lsn)));
                    }
                    Step::Confirm(pick) => {
                        let open: Vec<usize> =
                            (0..confirmed.len()).filter(|&i| !confirmed[i]).collect();
                        if let Some(&index) = open.get(pick % open.len().max(1)) {
                            confirmed[index] = true;
                            watermark.confirm(index as u64 + 1);
                        }
                    }
                }
                let expected = boundaries
                    .iter()
                    .filter(|(before, _)| confirmed[..*before].iter().all(|&c| c))
                    .map(|&(_, lsn)| lsn)
                    .max()
                    .unwrap_or(Lsn(0));
                prop_assert_eq!(watermark.flush_lsn(), expected);
                prop_assert!(watermark.flush_lsn() >= last_flush);
                last_flush = watermark.flush_lsn();
                for &(before, lsn) in &boundaries {
                    if confirmed[..before].iter().any(|&c| !c) {
                        prop_assert!(watermark.flush_lsn() < lsn);
                    }
                }
            }
        }
    }
}
