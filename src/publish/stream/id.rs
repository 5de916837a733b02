//! The publishing id scheme: an event's WAL position → the (producer name, publishing id) the
//! stream deduplicates on.
//!
//! # Why it is safe
//!
//! A RabbitMQ stream keeps, per producer name, the highest publishing id it stored, and drops
//! any later message from that name whose id is not above it. walbox derives both from the
//! event's position, which is the same every time the event is read from the slot:
//!
//! - PostgreSQL starts every WAL record on an 8-byte boundary (MAXALIGN), so a commit
//!   record's LSN has its low 3 bits zero and `commit_lsn >> 3` loses nothing
//!   (tests/stream.rs checks it on the events it sees).
//! - id = `((commit_lsn mod 2^48) >> 3) << 19 | index`, where `index` is the event's place
//!   among the outbox rows and logical decoding messages of its transaction (every message
//!   counts, relayed or not, so which prefixes are relayed never shifts a row's index). 45
//!   bits of position, 19 of index: 64 bits.
//! - A non-transactional logical message belongs to no transaction. PostgreSQL reports the
//!   *end* of its WAL record as its LSN, and that can be the commit LSN of the very next
//!   transaction (the pitfall Debezium met: resuming at a message's LSN skipped or repeated
//!   what shares it). So its position is `(end − 8, 2^19 − 1)` ([`Position::of_message`]):
//!   every record is 8-byte aligned and longer than 8 bytes, so any commit before the
//!   message starts below `end − 8`, and any commit after it at or above `end`; the
//!   message's id lies strictly between the ids of the events around it in WAL order, which
//!   is the order walbox publishes in (PostgreSQL decodes a non-transactional message where
//!   its record is, a transaction at its commit).
//! - The generation `commit_lsn >> 48` goes into the producer name,
//!   `walbox-<slot>-g<generation>`: it changes only after 256 TiB of WAL, and a new name
//!   starts a new sequence, so ids never wrap.
//!
//! Transactions are decoded in commit order and their commit LSNs strictly increase, so within
//! a generation ids strictly increase in the order walbox publishes: a republished event
//! (after a crash) has an id at or below the stored one and the broker drops it; a new one is
//! above it and is stored. Zero duplicates, nothing lost.
//!
//! The limits: a transaction with more than 2^19 (524 288) outbox rows cannot be numbered;
//! walbox stops on it with a definite error (use the AMQP target for it, or split the
//! transaction). And the scheme assumes the LSNs never go back: a PostgreSQL failover to a
//! standby that lacked WAL walbox had already published would reuse positions and the broker
//! would drop new events as duplicates. `synchronized_standby_slots` prevents that (docs,
//! operations/postgres-failover.md); walbox checks at start that the stream's stored id is not beyond
//! what the server has written (see [`super::StreamPublisher::connect`]).

use crate::lsn::Lsn;

/// Bits of the id holding the event's index in its transaction.
pub(crate) const INDEX_BITS: u32 = 19;
/// Events one transaction may hold on the stream target.
pub(crate) const MAX_EVENTS_PER_TRANSACTION: u64 = 1 << INDEX_BITS;
/// Bits of the commit LSN inside one generation.
const GENERATION_SHIFT: u32 = 48;
/// WAL records start 8-byte aligned: the low bits of a commit LSN are zero.
const ALIGNMENT_BITS: u32 = 3;

/// Where an event lies in the WAL: its transaction's commit LSN and its place among that
/// transaction's outbox rows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Position {
    pub(crate) commit_lsn: Lsn,
    pub(crate) index: u32,
}

/// A position as the stream sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct PublishingId {
    /// `commit_lsn >> 48`, part of the producer's name.
    pub(crate) generation: u16,
    pub(crate) id: u64,
}

/// Why a position has no publishing id.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub(crate) enum Unnumbered {
    #[error(
        "the transaction committed at {0} holds more than {MAX_EVENTS_PER_TRANSACTION} outbox \
         rows, more than the stream target can number (19 bits of the publishing id); relay it \
         with --target amqp, or split such transactions"
    )]
    TooManyEvents(Lsn),
    #[error(
        "commit LSN {0} is not 8-byte aligned, which PostgreSQL's WAL guarantees; the \
         publishing id cannot be derived from it (a walbox bug or a server that is not \
         PostgreSQL)"
    )]
    Unaligned(Lsn),
}

impl Position {
    /// The position of a non-transactional logical message whose WAL record ends at `end`
    /// (the LSN PostgreSQL reports for it): see the module doc.
    pub(crate) fn of_message(end: Lsn) -> Position {
        Position {
            commit_lsn: Lsn(end.as_u64().saturating_sub(1 << ALIGNMENT_BITS)),
            index: (MAX_EVENTS_PER_TRANSACTION - 1) as u32,
        }
    }

    /// The publishing id of this position.
    pub(crate) fn publishing_id(self) -> Result<PublishingId, Unnumbered> {
        let lsn = self.commit_lsn.as_u64();
        if u64::from(self.index) >= MAX_EVENTS_PER_TRANSACTION {
            return Err(Unnumbered::TooManyEvents(self.commit_lsn));
        }
        if lsn & ((1 << ALIGNMENT_BITS) - 1) != 0 {
            return Err(Unnumbered::Unaligned(self.commit_lsn));
        }
        let in_generation = lsn & ((1 << GENERATION_SHIFT) - 1);
        Ok(PublishingId {
            generation: (lsn >> GENERATION_SHIFT) as u16,
            id: (in_generation >> ALIGNMENT_BITS) << INDEX_BITS | u64::from(self.index),
        })
    }
}

impl PublishingId {
    /// The position this id was made from.
    pub(crate) fn position(self) -> Position {
        let in_generation = (self.id >> INDEX_BITS) << ALIGNMENT_BITS;
        Position {
            commit_lsn: Lsn(u64::from(self.generation) << GENERATION_SHIFT | in_generation),
            index: (self.id & (MAX_EVENTS_PER_TRANSACTION - 1)) as u32,
        }
    }
}

/// The producer name of one generation of a slot's events: stable across restarts and
/// standbys (the slot name is the same on a promoted standby).
pub(crate) fn producer_name(slot: &str, generation: u16) -> String {
    format!("walbox-{slot}-g{generation}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn position(lsn: u64, index: u32) -> Position {
        Position {
            commit_lsn: Lsn(lsn),
            index,
        }
    }

    #[test]
    fn limits() {
        let last = position(!7, (MAX_EVENTS_PER_TRANSACTION - 1) as u32);
        let id = last.publishing_id().unwrap();
        assert_eq!(id.generation, u16::MAX);
        assert_eq!(id.id, u64::MAX);
        assert_eq!(
            position(0x10, MAX_EVENTS_PER_TRANSACTION as u32).publishing_id(),
            Err(Unnumbered::TooManyEvents(Lsn(0x10)))
        );
        assert_eq!(
            position(0x14, 0).publishing_id(),
            Err(Unnumbered::Unaligned(Lsn(0x14)))
        );
        // The last position of generation 0 and the first of generation 1.
        let end = position((1 << 48) - 8, 0).publishing_id().unwrap();
        let next = position(1 << 48, 0).publishing_id().unwrap();
        assert_eq!((end.generation, next.generation), (0, 1));
        assert_eq!(next.id, 0);
        assert_eq!(producer_name("orders", 1), "walbox-orders-g1");
    }

    #[test]
    fn a_message_whose_end_is_the_next_commit_lsn_keeps_its_own_id() {
        // A message ending at 0/16B3750, and the next transaction's commit record starting there.
        let message = Position::of_message(Lsn(0x16B_3750));
        assert_eq!(message.commit_lsn, Lsn(0x16B_3748));
        let message = message.publishing_id().unwrap();
        let commit = position(0x16B_3750, 0).publishing_id().unwrap();
        assert!(message.id < commit.id);
        assert_eq!(
            Position::of_message(Lsn(0x16B_3754)).publishing_id(),
            Err(Unnumbered::Unaligned(Lsn(0x16B_374C)))
        );
    }

    #[test]
    fn a_real_position() {
        // 0/16B3748, the third event of its transaction.
        let id = position(0x16B_3748, 2).publishing_id().unwrap();
        assert_eq!(id.generation, 0);
        assert_eq!(id.id, (0x16B_3748 >> 3) << 19 | 2);
    }

    fn aligned() -> impl Strategy<Value = u64> {
        any::<u64>().prop_map(|lsn| lsn & !7)
    }

    fn index() -> impl Strategy<Value = u32> {
        0..MAX_EVENTS_PER_TRANSACTION as u32
    }

    proptest! {
        #[test]
        fn round_trip(lsn in aligned(), index in index()) {
            let original = position(lsn, index);
            prop_assert_eq!(original.publishing_id().unwrap().position(), original);
        }

        #[test]
        fn a_message_sorts_between_the_commits_around_it(
            end in aligned().prop_filter("room for a record", |lsn| *lsn >= 32),
            before in 0..u64::MAX,
            after in 0..u64::MAX,
            index in index(),
        ) {
            // A record is 8-byte aligned and longer than 8 bytes (its header alone is 24):
            // a commit before the message starts at most at `end - 32`; one after it starts
            // at `end` or later (even at `end`: Debezium's pitfall).
            let earlier = position((before % (end - 24)) & !7, index).publishing_id().unwrap();
            let later_lsn = end.saturating_add(after % (1 << 40)) & !7;
            prop_assume!(later_lsn >= end);
            let later = position(later_lsn, index).publishing_id().unwrap();
            let message = Position::of_message(Lsn(end)).publishing_id().unwrap();
            let key = |id: PublishingId| (id.generation, id.id);
            prop_assert!(key(earlier) < key(message));
            prop_assert!(key(message) < key(position(later_lsn, 0).publishing_id().unwrap()));
            prop_assert!(key(message) < key(later));
        }

        #[test]
        fn strictly_increasing_in_commit_order(
            a in (aligned(), index()),
            b in (aligned(), index()),
        ) {
            let (a, b) = (position(a.0, a.1), position(b.0, b.1));
            prop_assume!(a != b);
            let (earlier, later) = if a < b { (a, b) } else { (b, a) };
            let (earlier, later) = (
                earlier.publishing_id().unwrap(),
                later.publishing_id().unwrap(),
            );
            // A later generation is a new producer; within one, ids strictly increase.
            prop_assert!(
                later.generation > earlier.generation
                    || (later.generation == earlier.generation && later.id > earlier.id)
            );
        }
    }
}
