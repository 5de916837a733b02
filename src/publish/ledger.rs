//! walbox's own publisher-confirm bookkeeping for one AMQP confirm-mode channel, whichever
//! client carries the frames: each published message gets the next delivery tag, in order; a
//! `basic.return` is credited to the message whose `message_id` it carries (a return has no
//! delivery tag, so no tag order can tell which message it was); a `basic.ack` or
//! `basic.nack` with `multiple` resolves every tag up to its own, oldest first.
//!
//! RabbitMQ sends a message's return before the ack of that message, so when the ack
//! arrives the return mark is already on its entry. lapin 4.12 instead hands returns out in
//! the hash order of its pending map (issue #19 item 5): a returned event could be confirmed
//! and a routed one blamed.

use std::collections::VecDeque;

use tokio::sync::oneshot;

use super::{Outcome, Refused};
use crate::error::Error;

/// What a `basic.return` said about the message it carried.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Return {
    pub(crate) reply_code: u16,
    pub(crate) reply_text: String,
    pub(crate) exchange: String,
    pub(crate) routing_key: String,
}

/// One message awaiting the broker's verdict.
struct Entry {
    tag: u64,
    message_id: Option<String>,
    returned: Option<Return>,
    answer: oneshot::Sender<Outcome>,
}

/// The channel's unconfirmed messages, oldest (lowest tag) first.
#[derive(Default)]
pub(crate) struct Ledger {
    last_tag: u64,
    pending: VecDeque<Entry>,
}

/// A return or a confirm walbox cannot place: the channel's bookkeeping is no longer sound,
/// so the session must end (every pending message is then failed as lost).
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Unplaced(pub(crate) String);

impl Ledger {
    /// Record the next message published on the channel; its verdict arrives on the receiver.
    /// Call it in the order the messages' frames are queued for the wire.
    pub(crate) fn publish(
        &mut self,
        message_id: Option<String>,
    ) -> (u64, oneshot::Receiver<Outcome>) {
        self.last_tag += 1;
        let (answer, verdict) = oneshot::channel();
        self.pending.push_back(Entry {
            tag: self.last_tag,
            message_id,
            returned: None,
            answer,
        });
        (self.last_tag, verdict)
    }

    /// A `basic.return` carrying a message with `message_id`: mark the oldest unconfirmed,
    /// not yet returned message with that id (a message returned twice in one session is
    /// returned in the order it was published).
    ///
    /// A return whose id names no such message (an event without a `message_id`, say) is
    /// marked on every unconfirmed message without an id: re-sending a routed message is a
    /// duplicate, crediting the return to none of them could be a loss.
    pub(crate) fn returned(
        &mut self,
        message_id: Option<&str>,
        returned: Return,
    ) -> Result<(), Unplaced> {
        let unreturned = |entry: &&mut Entry| entry.returned.is_none();
        let exact = message_id.and_then(|id| {
            self.pending
                .iter_mut()
                .filter(unreturned)
                .find(|entry| entry.message_id.as_deref() == Some(id))
        });
        if let Some(entry) = exact {
            entry.returned = Some(returned);
            return Ok(());
        }
        let mut marked = 0;
        for entry in self.pending.iter_mut().filter(unreturned) {
            if entry.message_id.is_none() {
                entry.returned = Some(returned.clone());
                marked += 1;
            }
        }
        if marked > 0 {
            return Ok(());
        }
        Err(Unplaced(format!(
            "the broker returned a message (message_id {message_id:?}) that is not among \
             this channel's unconfirmed ones"
        )))
    }

    /// A `basic.ack` (`acked`) or `basic.nack` for `tag`, or for every tag up to it with
    /// `multiple`. An ack of a returned message means unroutable, never confirmed.
    pub(crate) fn confirmed(
        &mut self,
        tag: u64,
        multiple: bool,
        acked: bool,
    ) -> Result<(), Unplaced> {
        if tag == 0 || tag > self.last_tag {
            return Err(Unplaced(format!(
                "the broker confirmed delivery tag {tag}, beyond the {} published on the channel",
                self.last_tag
            )));
        }
        if multiple {
            while self.pending.front().is_some_and(|entry| entry.tag <= tag) {
                let entry = self.pending.pop_front().expect("front checked");
                answer(entry, acked);
            }
            return Ok(());
        }
        match self.pending.binary_search_by_key(&tag, |entry| entry.tag) {
            Ok(index) => {
                let entry = self.pending.remove(index).expect("index found");
                answer(entry, acked);
                Ok(())
            }
            Err(_) => Err(Unplaced(format!(
                "the broker confirmed delivery tag {tag} twice"
            ))),
        }
    }

    /// The channel or connection ended: every unconfirmed message is refused with `why`.
    pub(crate) fn fail_all(&mut self, why: impl Fn() -> Refused) {
        for entry in self.pending.drain(..) {
            let _ = entry.answer.send(Outcome::Refused(why()));
        }
    }

    /// Messages awaiting a verdict.
    #[cfg(test)]
    pub(crate) fn in_flight(&self) -> usize {
        self.pending.len()
    }
}

fn answer(entry: Entry, acked: bool) {
    let outcome = match (acked, entry.returned) {
        (true, None) => Outcome::Confirmed,
        (true, Some(returned)) => Outcome::Refused(Refused::Returned {
            reply_code: returned.reply_code,
            reply_text: returned.reply_text,
            exchange: returned.exchange,
            routing_key: returned.routing_key,
        }),
        (false, _) => Outcome::Refused(Refused::Nacked),
    };
    // The receiver may be gone (the session ended): nothing waits for this verdict then.
    let _ = entry.answer.send(outcome);
}

/// A verdict receiver whose sender was dropped unanswered: lost, never confirmed.
pub(crate) fn unanswered() -> Outcome {
    Outcome::Refused(Refused::Lost(Error::transient(
        "the channel's confirm bookkeeping ended before the broker answered",
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unroutable() -> Return {
        Return {
            reply_code: 312,
            reply_text: "NO_ROUTE".into(),
            exchange: "outbox".into(),
            routing_key: "order.created".into(),
        }
    }

    fn verdict(receiver: &mut oneshot::Receiver<Outcome>) -> &'static str {
        match receiver.try_recv() {
            Ok(Outcome::Confirmed) => "confirmed",
            Ok(Outcome::Refused(Refused::Returned { .. })) => "returned",
            Ok(Outcome::Refused(Refused::Nacked)) => "nacked",
            Ok(Outcome::Refused(_)) => "refused",
            Err(_) => "waiting",
        }
    }

    /// The frame order of issue #19 item 5, 12 events: the return of an unroutable event,
    /// then one ack(multiple) covering it and the next, routed, event. Every returned event is
    /// returned, every routed one confirmed: none lost, none blamed wrongly.
    #[test]
    fn a_return_then_an_ack_multiple_credits_the_returned_message() {
        let mut ledger = Ledger::default();
        let mut sent: Vec<_> = (0..12)
            .map(|n| ledger.publish(Some(format!("event-{n}"))))
            .collect();
        for pair in 0..6 {
            let (returned, routed) = (2 * pair, 2 * pair + 1);
            ledger
                .returned(Some(&format!("event-{returned}")), unroutable())
                .unwrap();
            ledger.confirmed(sent[routed].0, true, true).unwrap();
        }
        let verdicts: Vec<_> = sent.iter_mut().map(|(_, r)| verdict(r)).collect();
        let expected: Vec<_> = (0..12)
            .map(|n| if n % 2 == 0 { "returned" } else { "confirmed" })
            .collect();
        assert_eq!(verdicts, expected);
        assert_eq!(ledger.in_flight(), 0);
    }

    #[test]
    fn a_return_is_credited_by_message_id_not_by_tag() {
        let mut ledger = Ledger::default();
        let mut sent: Vec<_> = ["a", "b", "c"]
            .iter()
            .map(|id| ledger.publish(Some((*id).into())))
            .collect();
        // The middle one comes back; one ack covers all three.
        ledger.returned(Some("b"), unroutable()).unwrap();
        ledger.confirmed(3, true, true).unwrap();
        let verdicts: Vec<_> = sent.iter_mut().map(|(_, r)| verdict(r)).collect();
        assert_eq!(verdicts, ["confirmed", "returned", "confirmed"]);
    }

    #[test]
    fn single_and_multiple_nacks_and_acks_resolve_exactly_their_tags() {
        let mut ledger = Ledger::default();
        let mut sent: Vec<_> = (0..5)
            .map(|n| ledger.publish(Some(n.to_string())))
            .collect();
        ledger.confirmed(2, false, true).unwrap();
        assert_eq!(verdict(&mut sent[0].1), "waiting");
        assert_eq!(verdict(&mut sent[1].1), "confirmed");
        ledger.confirmed(3, true, false).unwrap();
        assert_eq!(verdict(&mut sent[0].1), "nacked");
        assert_eq!(verdict(&mut sent[2].1), "nacked");
        assert_eq!(
            ledger.confirmed(2, false, true),
            Err(Unplaced("the broker confirmed delivery tag 2 twice".into()))
        );
        assert!(ledger.confirmed(9, true, true).is_err());
        ledger.fail_all(|| Refused::Lost(Error::transient("connection lost")));
        assert_eq!(verdict(&mut sent[3].1), "refused");
        assert_eq!(verdict(&mut sent[4].1), "refused");
    }

    #[test]
    fn a_return_nobody_waits_for_is_unplaced() {
        let mut ledger = Ledger::default();
        let _kept = ledger.publish(Some("a".into()));
        assert!(ledger.returned(Some("z"), unroutable()).is_err());
        assert!(ledger.returned(None, unroutable()).is_err());
        // The same id returned twice is credited to two publishes, oldest first.
        let _again = ledger.publish(Some("a".into()));
        ledger.returned(Some("a"), unroutable()).unwrap();
        ledger.returned(Some("a"), unroutable()).unwrap();
        assert!(ledger.returned(Some("a"), unroutable()).is_err());
    }

    /// A return no id can place is credited to every message without an id: the routed ones
    /// among them are re-sent (a duplicate), the returned one is never confirmed.
    #[test]
    fn a_return_without_an_id_marks_every_message_without_one() {
        let mut ledger = Ledger::default();
        let mut sent: Vec<_> = [None, Some("b".to_owned()), None]
            .into_iter()
            .map(|id| ledger.publish(id))
            .collect();
        ledger.returned(None, unroutable()).unwrap();
        ledger.confirmed(3, true, true).unwrap();
        let verdicts: Vec<_> = sent.iter_mut().map(|(_, r)| verdict(r)).collect();
        assert_eq!(verdicts, ["returned", "confirmed", "returned"]);
    }
}
