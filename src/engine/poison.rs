//! Poison events: tells an event the broker will never accept from a broker that is merely
//! away, across sessions, and decides what the next session does about it.
//!
//! Only one kind of failure counts: the broker closing the channel with PRECONDITION_FAILED in
//! answer to one event's publish ([`Refusal`]: message larger than its maximum, a header it
//! rejects). Unroutable returns, nacks from a full queue and lost connections heal when the
//! other side is fixed; they are retried forever and never make an event poison. A return or
//! a nack names its event, though: walbox is careful (below) until that event is confirmed,
//! so retrying it does not send the events after it again and again.
//!
//! With many messages in flight, the broker's channel close fails every unconfirmed one, and
//! the first of them need not be the culprit. So a refusal first makes walbox *careful*: the
//! following sessions publish one message at a time until the flush LSN passes everything the
//! failing session had published, and only a refusal while careful is counted against its
//! event. After `--poison-after` such refusals in a row of the same event (same id, same
//! commit LSN), the event is condemned: with a dead-letter exchange the next session sends a
//! [`DeadLetter`] record in its place (the event counts as confirmed only once that record is
//! confirmed, through the same confirm tracker and watermark as every message); without one,
//! walbox stays halted on the event and keeps retrying it.

use std::time::Duration;

use amq_protocol::types::{AMQPValue, FieldTable, LongString, ShortString};
use bytes::Bytes;
use serde_json::json;
use tracing::{error, warn};

use crate::error::Refusal;
use crate::lsn::Lsn;
use crate::outbox::{OutboxMessage, Transaction, contract, headers};
use crate::telemetry::RelayState;

/// Payloads up to this size are copied into the dead-letter record; larger ones are left out
/// (the record says so and gives the size).
pub(crate) const DEAD_LETTER_PAYLOAD_LIMIT: usize = 16 * 1024;

/// The event the broker refused last, and how many times in a row.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Suspect {
    pub(crate) event_id: String,
    pub(crate) commit_lsn: Lsn,
    /// Refusals while publishing it alone, in a row.
    pub(crate) failures: u32,
    /// What the broker said the last time.
    pub(crate) reason: String,
}

impl Suspect {
    fn is(&self, event_id: &str, commit_lsn: Lsn) -> bool {
        self.event_id == event_id && self.commit_lsn == commit_lsn
    }

    /// The first LSN whose `--start-lsn` skips this event's transaction.
    pub(crate) fn skip_to(&self) -> Lsn {
        Lsn(self.commit_lsn.0 + 1)
    }
}

/// What a refusal led to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Several messages were in flight: not yet known which one the broker refused.
    Isolating,
    /// Counted against the event, below the limit: retry it.
    Counted { failures: u32 },
    /// Poison: the next session sends a dead-letter record in its place.
    DeadLetter,
    /// Poison and no dead-letter exchange: stay on it.
    Halted,
}

/// The poison bookkeeping of one `walbox run`, kept across sessions by the supervisor.
#[derive(Debug)]
pub(crate) struct Poison {
    after: u32,
    dead_letter_exchange: Option<String>,
    suspect: Option<Suspect>,
    /// While set, sessions publish one message at a time until the flush LSN passes it, so
    /// a refusal can only be about the one message in flight.
    careful_until: Option<Lsn>,
    /// The highest commit LSN the last session handed to the broker.
    last_published: Lsn,
}

impl Poison {
    pub(crate) fn new(after: u32, dead_letter_exchange: Option<String>) -> Self {
        Poison {
            after: after.max(1),
            dead_letter_exchange,
            suspect: None,
            careful_until: None,
            last_published: Lsn::ZERO,
        }
    }

    /// A session ended having handed events up to commit `lsn` to the broker.
    pub(crate) fn note_published(&mut self, lsn: Lsn) {
        self.last_published = lsn;
    }

    /// Publish one message at a time (the in-flight window is 1).
    pub(crate) fn careful(&self) -> bool {
        self.careful_until.is_some()
    }

    #[cfg(test)]
    fn suspect(&self) -> Option<&Suspect> {
        self.suspect.as_ref()
    }

    fn condemned(&self) -> Option<&Suspect> {
        self.suspect.as_ref().filter(|s| s.failures >= self.after)
    }

    /// The poison event walbox is halted on (condemned, and no dead-letter exchange).
    pub(crate) fn halted_on(&self) -> Option<&Suspect> {
        self.condemned()
            .filter(|_| self.dead_letter_exchange.is_none())
    }

    /// What the next session must send in place of a condemned event.
    pub(crate) fn dead_letter(&self) -> Option<DeadLetter> {
        let suspect = self.condemned()?;
        let exchange = self.dead_letter_exchange.clone()?;
        Some(DeadLetter {
            event_id: suspect.event_id.clone(),
            commit_lsn: suspect.commit_lsn,
            reason: suspect.reason.clone(),
            failures: suspect.failures,
            exchange,
            // A dead-letter record refused in turn (the payload copy made it too large?)
            // goes again without the payload.
            include_payload: suspect.failures == self.after,
        })
    }

    /// A session ended with the broker refusing `refusal`'s event: count it, log what it
    /// means (the next attempt is in `retry_in`), and return the relay's state meanwhile.
    pub(crate) fn handle_refusal(&mut self, refusal: Refusal, retry_in: Duration) -> RelayState {
        let retry_in_ms = retry_in.as_millis() as u64;
        let reason = refusal.to_string();
        let (event_id, commit_lsn) = (refusal.event_id.clone(), refusal.commit_lsn);
        let was_halted = self.halted_on().is_some();
        let poison_after = self.after;
        match self.refused(refusal, self.last_published) {
            Verdict::Isolating => {
                warn!(%reason, retry_in_ms, "the broker refused a message; publishing one at a time to find which");
                RelayState::Reconnecting
            }
            Verdict::Counted { failures } => {
                warn!(%reason, %event_id, %commit_lsn, failures, poison_after, retry_in_ms,
                    "the broker refused this event; retrying it");
                RelayState::Reconnecting
            }
            Verdict::DeadLetter => {
                warn!(%reason, %event_id, %commit_lsn, dead_letter_exchange = self.dead_letter_exchange.as_deref().unwrap_or_default(),
                    "poison event: the broker refused it {poison_after} times; sending a dead-letter record in its place");
                RelayState::Reconnecting
            }
            Verdict::Halted if was_halted => {
                warn!(%reason, %event_id, %commit_lsn, retry_in_ms, "still halted on a poison event; retrying it");
                RelayState::Halted
            }
            Verdict::Halted => {
                let skip_to = self.halted_on().map_or(commit_lsn, Suspect::skip_to);
                error!(%reason, %event_id, %commit_lsn, retry_in_ms,
                    "halted on a poison event: the broker refused event {event_id} (commit {commit_lsn}) \
                     {poison_after} times in a row. walbox keeps retrying it and acknowledges nothing after it. \
                     Ways out: fix the cause on the broker, skip the event with `walbox run --start-lsn {skip_to}` \
                     (its whole transaction is not relayed), or set --dead-letter-exchange to send a record of it \
                     there and go on");
                RelayState::Halted
            }
        }
    }

    /// A session ended with the broker returning or nacking the event committed at
    /// `commit_lsn`. The events published after it may have reached their queues already;
    /// sending them again on every retry of the held event would repeat up to a window of
    /// duplicates each time (and let them overtake it again), so the next sessions publish one
    /// message at a time until the flush LSN is past it.
    pub(crate) fn held(&mut self, commit_lsn: Lsn) {
        self.careful_until = self.careful_until.max(Some(commit_lsn));
    }

    /// A session ended with the broker refusing `refusal`'s event. `published_through` is the
    /// highest commit LSN that session handed to the broker.
    pub(crate) fn refused(&mut self, refusal: Refusal, published_through: Lsn) -> Verdict {
        if !self.careful() {
            // The close failed every message in flight; which one caused it is learnt by
            // publishing them again one at a time.
            self.careful_until = Some(published_through.max(refusal.commit_lsn));
            return Verdict::Isolating;
        }
        let failures = match &self.suspect {
            Some(suspect) if suspect.is(&refusal.event_id, refusal.commit_lsn) => {
                suspect.failures + 1
            }
            _ => 1,
        };
        // Stay careful at least until this event is behind the flush LSN.
        self.careful_until = self.careful_until.max(Some(refusal.commit_lsn));
        self.suspect = Some(Suspect {
            event_id: refusal.event_id,
            commit_lsn: refusal.commit_lsn,
            failures,
            reason: refusal.reason,
        });
        if failures < self.after {
            Verdict::Counted { failures }
        } else if self.dead_letter_exchange.is_some() {
            Verdict::DeadLetter
        } else {
            Verdict::Halted
        }
    }

    /// The flush LSN reached `flushed`. Returns what changed.
    pub(crate) fn progressed(&mut self, flushed: Lsn) -> Progress {
        let mut progress = Progress::default();
        // The flush LSN passes a commit only once every event of that transaction was
        // confirmed (or its dead-letter record was): the suspect is behind us.
        if let Some(suspect) = self.suspect.take_if(|s| flushed > s.commit_lsn) {
            progress.passed = Some(suspect);
        }
        if self.careful_until.is_some_and(|until| flushed > until) {
            self.careful_until = None;
            progress.careful_ended = true;
        }
        progress
    }
}

/// What [`Poison::progressed`] changed.
#[derive(Debug, Default)]
pub(crate) struct Progress {
    /// The suspect event is confirmed (healed, or dead-lettered).
    pub(crate) passed: Option<Suspect>,
    /// Back to the full in-flight window.
    pub(crate) careful_ended: bool,
}

/// A condemned event, to be replaced by a record on the dead-letter exchange.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct DeadLetter {
    pub(crate) event_id: String,
    pub(crate) commit_lsn: Lsn,
    pub(crate) reason: String,
    pub(crate) failures: u32,
    pub(crate) exchange: String,
    pub(crate) include_payload: bool,
}

impl DeadLetter {
    pub(crate) fn is(&self, event_id: &str, commit_lsn: Lsn) -> bool {
        self.event_id == event_id && self.commit_lsn == commit_lsn
    }

    /// The record published instead of `event`: a small JSON document saying what the event
    /// was and why the broker refused it, under the same message contract as every event
    /// (built by [`contract`]): persistent, the event's message id (consumers deduplicate it
    /// like any event) and timestamp, `app_id`, and walbox's own headers (`x-commit-lsn`,
    /// `x-xid`, `x-aggregate-*`, `x-replay`) as the event had them. Its content type and type
    /// are the record's own (`application/json`, `walbox.dead_letter`); the event's, its
    /// exchange and routing key, and the reason travel in `x-original-*` and
    /// `x-dead-letter-reason` headers. The event's other headers (its headers column,
    /// `--header`, the body encoding's) go as one JSON object in `x-original-headers`, not as
    /// headers: one of them may be what the broker refused.
    pub(crate) fn record(
        &self,
        event: &OutboxMessage,
        transaction: &Transaction,
        default_exchange: &str,
    ) -> OutboxMessage {
        let exchange = event
            .exchange
            .as_ref()
            .map_or(default_exchange, ShortString::as_str);
        let event_type = event.properties.kind().as_ref().map(ShortString::as_str);
        let mut record = self.summary(event, transaction, exchange, event_type);
        let (mut headers, others) = split_headers(event);
        // Even with --no-walbox-headers: the record says where its event stands in the WAL.
        contract::add_position_headers(&mut headers, transaction);
        set(&mut headers, "x-dead-letter-reason", &self.reason);
        set(&mut headers, "x-original-exchange", exchange);
        set(
            &mut headers,
            "x-original-routing-key",
            event.routing_key.as_str(),
        );
        if let Some(kind) = event_type {
            set(&mut headers, "x-original-type", kind);
        }
        if let Some(content_type) = event.properties.content_type() {
            set(
                &mut headers,
                "x-original-content-type",
                content_type.as_str(),
            );
        }
        if !others.inner().is_empty() {
            // Capped like the payload: a header too large for the frame may be why the event
            // was refused, and the record must fit where the event did not.
            let original = headers::to_json(&others).to_string();
            if original.len() <= DEAD_LETTER_PAYLOAD_LIMIT {
                set(&mut headers, "x-original-headers", &original);
            } else {
                record["original_headers_size"] = json!(original.len());
            }
        }
        let properties = contract::Properties {
            message_id: event.properties.message_id().clone(),
            content_type: Some("application/json".into()),
            timestamp: event
                .properties
                .timestamp()
                .unwrap_or_else(|| contract::commit_timestamp(transaction)),
            message_type: Some("walbox.dead_letter".into()),
        }
        .build(headers);
        OutboxMessage {
            exchange: Some(ShortString::from(self.exchange.as_str())),
            routing_key: event.routing_key.clone(),
            body: Bytes::from(record.to_string()),
            properties,
            id: event.id.clone(),
            headers_warning: None,
            // A super stream keeps the record in its event's partition.
            partition_key: event.partition_key.clone(),
        }
    }

    /// The record's body: what the event was, why it was refused, and its payload when asked
    /// for and small enough.
    fn summary(
        &self,
        event: &OutboxMessage,
        transaction: &Transaction,
        exchange: &str,
        event_type: Option<&str>,
    ) -> serde_json::Value {
        let mut record = json!({
            "id": event.id,
            "commit_lsn": transaction.commit_lsn.to_string(),
            "xid": transaction.xid,
            "reason": self.reason,
            "refusals": self.failures,
            "exchange": exchange,
            "routing_key": event.routing_key.as_str(),
            "event_type": event_type,
            "payload_size": event.body.len(),
            "payload_included": false,
        });
        if self.include_payload && event.body.len() <= DEAD_LETTER_PAYLOAD_LIMIT {
            record["payload_included"] = json!(true);
            match std::str::from_utf8(&event.body) {
                Ok(text) => record["payload"] = json!(text),
                Err(_) => record["payload_hex"] = json!(hex(&event.body)),
            }
        }
        record
    }
}

/// The event's headers in two tables: walbox's own (kept as headers on the record) and the
/// others (their headers column, `--header`, the encoding's), one of which may be what the
/// broker refused.
fn split_headers(event: &OutboxMessage) -> (FieldTable, FieldTable) {
    let mut headers = FieldTable::default();
    let mut others = FieldTable::default();
    if let Some(event_headers) = event.properties.headers() {
        for (name, value) in event_headers {
            let table = match contract::WALBOX_HEADERS.contains(&name.as_str()) {
                true => &mut headers,
                false => &mut others,
            };
            table.insert(name.clone(), value.clone());
        }
    }
    (headers, others)
}

/// One of the record's own headers, a long string.
fn set(headers: &mut FieldTable, name: &str, value: &str) {
    headers.insert(
        name.into(),
        AMQPValue::LongString(LongString::from(value.as_bytes())),
    );
}

fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    bytes
        .iter()
        .flat_map(|b| [DIGITS[usize::from(b >> 4)], DIGITS[usize::from(b & 15)]])
        .map(char::from)
        .collect()
}

#[cfg(test)]
mod tests {
    use amq_protocol::protocol::BasicProperties;

    use super::*;
    use crate::outbox::{Mapping, OutboxShape};
    use crate::pgoutput::fixture::{outbox_relation, outbox_row, row};

    fn refusal(id: &str, commit: u64) -> Refusal {
        Refusal {
            event_id: id.into(),
            commit_lsn: Lsn(commit),
            reason:
                "PRECONDITION_FAILED - message size 70000 is larger than configured max size 65536"
                    .into(),
        }
    }

    #[test]
    fn a_held_event_makes_walbox_careful_until_it_is_confirmed_and_is_never_counted() {
        let mut poison = Poison::new(1, None);
        poison.held(Lsn(100));
        assert!(poison.careful());
        assert_eq!(poison.suspect(), None);
        assert_eq!(poison.halted_on(), None, "a held event is never poison");
        // Held again (still no queue): still careful, until the flush LSN passes it.
        poison.held(Lsn(100));
        assert!(!poison.progressed(Lsn(100)).careful_ended);
        assert!(poison.progressed(Lsn(120)).careful_ended);
        assert!(!poison.careful());
    }

    #[test]
    fn a_refusal_among_many_in_flight_only_makes_walbox_careful() {
        let mut poison = Poison::new(3, None);
        assert!(!poison.careful());
        assert_eq!(
            poison.refused(refusal("a", 100), Lsn(500)),
            Verdict::Isolating
        );
        assert!(poison.careful());
        assert_eq!(poison.suspect(), None, "nothing counted yet");
        // Careful until everything the failing session published is behind the flush LSN.
        assert!(!poison.progressed(Lsn(400)).careful_ended);
        assert!(poison.progressed(Lsn(501)).careful_ended);
        assert!(!poison.careful());
    }

    #[test]
    fn the_same_event_refused_alone_n_times_halts_without_a_dead_letter_exchange() {
        let mut poison = Poison::new(3, None);
        poison.refused(refusal("a", 100), Lsn(100));
        assert_eq!(
            poison.refused(refusal("a", 100), Lsn(100)),
            Verdict::Counted { failures: 1 }
        );
        assert_eq!(
            poison.refused(refusal("a", 100), Lsn(100)),
            Verdict::Counted { failures: 2 }
        );
        assert_eq!(poison.halted_on(), None);
        assert_eq!(poison.refused(refusal("a", 100), Lsn(100)), Verdict::Halted);
        let halted = poison.halted_on().expect("halted");
        assert_eq!(halted.event_id, "a");
        assert_eq!(halted.skip_to(), Lsn(101));
        assert_eq!(poison.dead_letter(), None);
        // Still refused: still halted, still careful.
        assert_eq!(poison.refused(refusal("a", 100), Lsn(100)), Verdict::Halted);
        assert!(poison.careful());
        // The broker took it after all (its limit was raised): no longer halted.
        let progress = poison.progressed(Lsn(150));
        assert_eq!(progress.passed.map(|s| s.failures), Some(4));
        assert!(progress.careful_ended);
        assert_eq!(poison.halted_on(), None);
    }

    #[test]
    fn another_event_or_the_same_id_at_another_commit_starts_the_count_again() {
        let mut poison = Poison::new(2, Some("dlx".into()));
        poison.refused(refusal("a", 100), Lsn(300));
        assert_eq!(
            poison.refused(refusal("a", 100), Lsn(100)),
            Verdict::Counted { failures: 1 }
        );
        assert_eq!(
            poison.refused(refusal("b", 200), Lsn(200)),
            Verdict::Counted { failures: 1 }
        );
        assert_eq!(
            poison.refused(refusal("b", 250), Lsn(250)),
            Verdict::Counted { failures: 1 },
            "same id, other commit: another event"
        );
        assert_eq!(
            poison.refused(refusal("b", 250), Lsn(250)),
            Verdict::DeadLetter
        );
    }

    #[test]
    fn a_condemned_event_is_dead_lettered_once_then_without_its_payload() {
        let mut poison = Poison::new(1, Some("dlx".into()));
        poison.refused(refusal("a", 100), Lsn(100));
        assert_eq!(
            poison.refused(refusal("a", 100), Lsn(100)),
            Verdict::DeadLetter
        );
        let plan = poison.dead_letter().expect("dead-letter plan");
        assert!(plan.is("a", Lsn(100)) && !plan.is("a", Lsn(101)) && !plan.is("b", Lsn(100)));
        assert_eq!(plan.exchange, "dlx");
        assert!(plan.include_payload);
        assert_eq!(poison.halted_on(), None);
        // The record itself was refused: next time without the payload.
        poison.refused(refusal("a", 100), Lsn(100));
        assert!(!poison.dead_letter().unwrap().include_payload);
        // Its record was confirmed: the flush LSN moved past the commit.
        assert!(poison.progressed(Lsn(120)).passed.is_some());
        assert_eq!(poison.dead_letter(), None);
    }

    #[test]
    fn progress_before_the_event_keeps_the_count() {
        let mut poison = Poison::new(5, None);
        poison.refused(refusal("a", 100), Lsn(100));
        poison.refused(refusal("a", 100), Lsn(100));
        assert!(poison.progressed(Lsn(90)).passed.is_none());
        assert_eq!(poison.suspect().map(|s| s.failures), Some(1));
    }

    #[test]
    fn the_record_describes_the_event_and_carries_small_payloads() {
        let transaction = Transaction {
            xid: 7,
            commit_lsn: Lsn(0x16B3748),
            commit_time_micros: 0,
        };
        let event = OutboxMessage {
            exchange: None,
            routing_key: "order.created".into(),
            body: Bytes::from_static(br#"{"n": 1}"#),
            properties: BasicProperties::default()
                .with_message_id("e-1".into())
                .with_type("created".into()),
            id: "e-1".into(),
            headers_warning: None,
            partition_key: None,
        };
        let mut plan = DeadLetter {
            event_id: "e-1".into(),
            commit_lsn: transaction.commit_lsn,
            reason: "too large".into(),
            failures: 5,
            exchange: "dlx".into(),
            include_payload: true,
        };
        let record = plan.record(&event, &transaction, "outbox");
        assert_eq!(
            record.exchange.as_ref().map(ShortString::as_str),
            Some("dlx")
        );
        assert_eq!(record.routing_key.as_str(), "order.created");
        assert_eq!(
            record
                .properties
                .message_id()
                .as_ref()
                .map(ShortString::as_str),
            Some("e-1")
        );
        let body: serde_json::Value = serde_json::from_slice(&record.body).unwrap();
        assert_eq!(body["id"], "e-1");
        assert_eq!(body["commit_lsn"], "0/16B3748");
        assert_eq!(body["xid"], 7);
        assert_eq!(body["reason"], "too large");
        assert_eq!(body["exchange"], "outbox");
        assert_eq!(body["routing_key"], "order.created");
        assert_eq!(body["event_type"], "created");
        assert_eq!(body["payload_size"], 8);
        assert_eq!(body["payload"], r#"{"n": 1}"#);

        let binary = OutboxMessage {
            body: Bytes::from_static(&[0, 255]),
            ..event
        };
        let body: serde_json::Value =
            serde_json::from_slice(&plan.record(&binary, &transaction, "outbox").body).unwrap();
        assert_eq!(body["payload_hex"], "00ff");

        plan.include_payload = false;
        let large = OutboxMessage {
            body: Bytes::from(vec![b'x'; 10]),
            ..binary
        };
        let body: serde_json::Value =
            serde_json::from_slice(&plan.record(&large, &transaction, "outbox").body).unwrap();
        assert_eq!(body["payload_included"], false);
        assert!(body.get("payload").is_none());
        assert_eq!(body["payload_size"], 10);
    }

    /// An event as walbox builds it from a row of sql/outbox.sql (headers column, every
    /// walbox header), sent again by `walbox replay`.
    fn event(transaction: &Transaction) -> OutboxMessage {
        let shape = OutboxShape::from_relation(
            &outbox_relation(),
            &Mapping::with_columns("", "{aggregate_type}.{event_type}"),
        )
        .unwrap();
        let mut event = shape
            .message(
                &outbox_row(r#"{"CC": "oops", "trace": "t1", "n": 3}"#),
                transaction,
                0,
                &mut String::new(),
            )
            .unwrap();
        event.mark_replayed();
        event
    }

    fn text(value: &str) -> AMQPValue {
        AMQPValue::LongString(value.into())
    }

    #[test]
    fn the_record_carries_every_property_and_header_of_the_event() {
        let transaction = Transaction {
            xid: 742,
            commit_lsn: Lsn(0x16B3748),
            commit_time_micros: 1_000_000,
        };
        let event = event(&transaction);
        let plan = DeadLetter {
            event_id: event.id.clone(),
            commit_lsn: transaction.commit_lsn,
            reason: "PRECONDITION_FAILED - invalid message".into(),
            failures: 3,
            exchange: "dlx".into(),
            include_payload: true,
        };
        let record = plan.record(&event, &transaction, "outbox");
        let (ours, theirs) = (&record.properties, &event.properties);

        // The contract's properties: the same values as the event's...
        assert_eq!(ours.message_id(), theirs.message_id());
        assert_eq!(ours.timestamp(), theirs.timestamp());
        assert_eq!(ours.delivery_mode(), theirs.delivery_mode());
        assert_eq!(ours.app_id(), theirs.app_id());
        // ...but content type and type are the record's, the event's in x-original-*.
        assert_eq!(
            ours.content_type().as_ref().map(ShortString::as_str),
            Some("application/json")
        );
        assert_eq!(
            ours.kind().as_ref().map(ShortString::as_str),
            Some("walbox.dead_letter")
        );
        // No property of the event is missing from the record.
        let set = |p: &BasicProperties| {
            [
                p.content_type().is_some(),
                p.content_encoding().is_some(),
                p.headers().is_some(),
                p.delivery_mode().is_some(),
                p.priority().is_some(),
                p.correlation_id().is_some(),
                p.reply_to().is_some(),
                p.expiration().is_some(),
                p.message_id().is_some(),
                p.timestamp().is_some(),
                p.kind().is_some(),
                p.user_id().is_some(),
                p.app_id().is_some(),
                p.cluster_id().is_some(),
            ]
        };
        for (index, (record_has, event_has)) in set(ours).into_iter().zip(set(theirs)).enumerate() {
            assert!(
                record_has || !event_has,
                "property #{index} of the event is missing"
            );
        }

        let headers = ours.headers().as_ref().unwrap().inner();
        let event_headers = theirs.headers().as_ref().unwrap().inner();
        // walbox's own headers, as the event had them.
        for name in contract::WALBOX_HEADERS {
            assert!(event_headers.contains_key(name), "the event lacks {name}");
            assert_eq!(headers.get(name), event_headers.get(name), "{name}");
        }
        // Every other header of the event, as JSON text (CC is one the broker refuses).
        let originals: serde_json::Value = match headers.get("x-original-headers") {
            Some(AMQPValue::LongString(text)) => serde_json::from_slice(text.as_bytes()).unwrap(),
            other => panic!("x-original-headers is {other:?}"),
        };
        assert_eq!(
            originals,
            json!({"CC": "oops", "trace": "t1", "n": 3}),
            "the event's other headers"
        );
        assert!(
            !headers.contains_key("CC"),
            "a refused header is not sent again"
        );
        for name in event_headers.keys() {
            assert!(
                headers.contains_key(name) || originals.get(name.as_str()).is_some(),
                "header {name} of the event is missing"
            );
        }
        // The record's own headers.
        assert_eq!(
            headers.get("x-dead-letter-reason"),
            Some(&text("PRECONDITION_FAILED - invalid message"))
        );
        assert_eq!(headers.get("x-original-exchange"), Some(&text("outbox")));
        assert_eq!(
            headers.get("x-original-routing-key"),
            Some(&text("order.created"))
        );
        assert_eq!(headers.get("x-original-type"), Some(&text("created")));
        assert_eq!(
            headers.get("x-original-content-type"),
            Some(&text("application/json"))
        );
    }

    #[test]
    fn the_record_of_an_unencodable_row_carries_the_contract_too() {
        let transaction = Transaction {
            xid: 9,
            commit_lsn: Lsn(0x100),
            commit_time_micros: 1_000_000,
        };
        let shape = OutboxShape::from_relation(
            &outbox_relation(),
            &Mapping::with_columns("", "{aggregate_type}.{event_type}"),
        )
        .unwrap();
        let event = shape.fallback(
            &row(&[
                None,
                Some("order"),
                Some("o-1"),
                Some("created"),
                Some("{}"),
                None,
                None,
            ]),
            &transaction,
            4,
        );
        let plan = DeadLetter {
            event_id: event.id.clone(),
            commit_lsn: transaction.commit_lsn,
            reason: "the row cannot become a message".into(),
            failures: 0,
            exchange: "dlx".into(),
            include_payload: true,
        };
        let record = plan.record(&event, &transaction, "outbox");
        let properties = &record.properties;
        assert_eq!(properties.message_id(), event.properties.message_id());
        assert!(properties.message_id().is_some(), "the WAL-position id");
        assert_eq!(properties.delivery_mode(), &Some(contract::PERSISTENT));
        assert_eq!(
            properties.timestamp(),
            &Some(946_684_801),
            "the commit time"
        );
        let headers = properties.headers().as_ref().unwrap().inner();
        assert_eq!(headers.get("x-commit-lsn"), Some(&text("0/100")));
        assert_eq!(headers.get("x-xid"), Some(&AMQPValue::LongLongInt(9)));
        assert_eq!(headers.get("x-aggregate-type"), Some(&text("order")));
        assert_eq!(headers.get("x-aggregate-id"), Some(&text("o-1")));
    }
}
