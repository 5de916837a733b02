//! The confirm tracker: waits for the broker's verdict on every published message, in order,
//! and feeds positive confirms to the [`Watermark`].
//!
//! It runs as its own task so publishing never waits for a round trip: the engine hands over
//! each message's confirm and each boundary, in stream order, and moves on. Any verdict but
//! `Confirmed` (a nack, a return, a closed channel, a lost link) ends the tracker with an
//! error: nothing after that message is ever confirmed to PostgreSQL. A channel the broker
//! closed with PRECONDITION_FAILED comes back as [`Error::Refused`], naming the event, so the
//! supervisor can tell a poison event from a broker that is away.

use std::collections::VecDeque;
use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

use futures_util::StreamExt;
use futures_util::stream::FuturesOrdered;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, watch};

use super::{Outcome, Refused};
use crate::error::{Error, Held, Refusal, Result};
use crate::lsn::Lsn;
use crate::telemetry::{Metrics, Telemetry};
use crate::watermark::{Sequence, Watermark};

/// Which event a message carries, for the tracker's errors and latency metrics.
#[derive(Clone, Debug)]
pub(crate) struct EventRef {
    pub(crate) event_id: String,
    pub(crate) commit_lsn: Lsn,
    /// The transaction's commit timestamp (microseconds since 2000-01-01), for the
    /// commit-to-confirm latency.
    pub(crate) commit_time_micros: i64,
    /// The message is the dead-letter record of a poison event, sent in its place.
    pub(crate) dead_letter: bool,
}

/// One message handed to the broker.
pub(crate) struct Published<C> {
    pub(crate) confirm: C,
    /// Holds the message's place in the in-flight window until its verdict is in.
    pub(crate) permit: OwnedSemaphorePermit,
    pub(crate) event: EventRef,
}

/// What the engine hands to the tracker, in stream order.
pub(crate) enum Pending<C> {
    Published(Published<C>),
    /// Everything handed over before this lies before `lsn` in the WAL.
    Boundary(Lsn),
}

/// A verdict, with what the tracker needs to act on it.
struct Verdict {
    sequence: Sequence,
    outcome: Outcome,
    event: EventRef,
    /// Given back to the window only once the verdict is a confirm.
    permit: OwnedSemaphorePermit,
}

/// Run until the sender is dropped and every verdict is in (returns the final flush LSN), or
/// until a message is not confirmed (returns why). A message not confirmed closes `window`
/// first: the engine publishes nothing more in a session that is over, so a held event is
/// not overtaken by, nor retried with, events the engine would otherwise still send.
pub(crate) async fn track<C>(
    mut pending: mpsc::Receiver<Pending<C>>,
    mut watermark: Watermark,
    flush: watch::Sender<Lsn>,
    window: Arc<Semaphore>,
    telemetry: Arc<Telemetry>,
) -> Result<Lsn>
where
    C: Future<Output = Outcome> + Send + 'static,
{
    let metrics = &telemetry.metrics;
    let mut in_flight = FuturesOrdered::new();
    // When each message in `in_flight` was published, oldest first (verdicts come in order).
    let mut published_at = VecDeque::new();
    let mut sender_open = true;
    loop {
        tokio::select! {
            item = pending.recv(), if sender_open => match item {
                Some(Pending::Published(Published { confirm, permit, event })) => {
                    let sequence = watermark.publish();
                    published_at.push_back(Instant::now());
                    in_flight.push_back(async move {
                        let outcome = confirm.await;
                        Verdict { sequence, outcome, event, permit }
                    });
                }
                Some(Pending::Boundary(lsn)) => {
                    if let Some(lsn) = watermark.boundary(lsn) {
                        flush.send_replace(lsn);
                    }
                }
                None => sender_open = false,
            },
            Some(verdict) = in_flight.next(), if !in_flight.is_empty() => {
                let sent_at = published_at.pop_front().unwrap_or_else(Instant::now);
                metrics.answered(published_at.front().copied());
                count(metrics, &verdict.outcome);
                if let Err(error) = confirmed(verdict.outcome, &verdict.event) {
                    window.close();
                    return Err(error);
                }
                drop(verdict.permit);
                metrics.confirmed(sent_at, verdict.event.commit_time_micros);
                if verdict.event.dead_letter {
                    metrics.dead_lettered();
                }
                if let Some(lsn) = watermark.confirm(verdict.sequence) {
                    flush.send_replace(lsn);
                }
            }
            else => return Ok(watermark.flush_lsn()),
        }
    }
}

fn count(metrics: &Metrics, outcome: &Outcome) {
    match outcome {
        Outcome::Refused(Refused::Returned { .. }) => metrics.returned(),
        Outcome::Refused(Refused::Nacked) => metrics.nacked(),
        _ => {}
    }
}

/// AMQP's reply code for a request the broker will not carry out as it stands.
const PRECONDITION_FAILED: u16 = 406;

/// `Ok` only for a positive confirm.
fn confirmed(outcome: Outcome, event: &EventRef) -> Result<()> {
    let EventRef {
        event_id,
        commit_lsn,
        ..
    } = event;
    let refused = match outcome {
        Outcome::Confirmed => return Ok(()),
        Outcome::Refused(refused) => refused,
    };
    Err(match refused {
        Refused::Returned {
            reply_code,
            reply_text,
            exchange,
            routing_key,
        } => held(
            event,
            format!(
                "the broker returned event {event_id} (commit {commit_lsn}) as unroutable: \
                 {reply_code} {reply_text} — no queue is bound for exchange `{exchange}` with \
                 routing key `{routing_key}`; holding it and retrying"
            ),
        ),
        Refused::Nacked => held(
            event,
            format!("the broker nacked event {event_id} (commit {commit_lsn}); retrying"),
        ),
        // On a publish channel PRECONDITION_FAILED is a verdict on one message (too large, a
        // header it rejects), not on the connection or the topology: those come with other
        // codes (404 no exchange, 403 access).
        Refused::ChannelClosed {
            reply_code: PRECONDITION_FAILED,
            reply_text,
        } => Error::Refused(Refusal {
            event_id: event_id.clone(),
            commit_lsn: *commit_lsn,
            reason: reply_text,
        }),
        Refused::ChannelClosed {
            reply_code,
            reply_text,
        } => Error::transient(format!(
            "the broker closed the channel while confirming event {event_id} (commit \
             {commit_lsn}): {reply_code} {reply_text}"
        )),
        Refused::StreamError { code } => Error::transient(format!(
            "the stream refused event {event_id} (commit {commit_lsn}): {code}; retrying"
        )),
        Refused::Rejected { reason } => Error::Refused(Refusal {
            event_id: event_id.clone(),
            commit_lsn: *commit_lsn,
            reason,
        }),
        Refused::Lost(error) => error,
    })
}

/// `event` is held: retried, one message at a time until it is confirmed.
fn held(event: &EventRef, message: String) -> Error {
    Error::Held(Held {
        event_id: event.event_id.clone(),
        commit_lsn: event.commit_lsn,
        message,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event() -> EventRef {
        EventRef {
            event_id: "e-1".into(),
            commit_lsn: Lsn(0x10),
            commit_time_micros: 0,
            dead_letter: false,
        }
    }

    fn closed(reply_code: u16, reply_text: &str) -> Outcome {
        Outcome::Refused(Refused::ChannelClosed {
            reply_code,
            reply_text: reply_text.into(),
        })
    }

    #[test]
    fn precondition_failed_names_the_refused_event() {
        let outcome = closed(
            406,
            "PRECONDITION_FAILED - message size 70000 is larger than configured max size 65536",
        );
        match confirmed(outcome, &event()) {
            Err(Error::Refused(refusal)) => {
                assert_eq!(refusal.event_id, "e-1");
                assert_eq!(refusal.commit_lsn, Lsn(0x10));
                assert!(refusal.reason.contains("larger than configured max size"));
            }
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    #[test]
    fn a_message_walbox_refused_to_send_is_a_refusal_and_a_stream_error_is_transient() {
        let rejected = Outcome::Refused(Refused::Rejected {
            reason: "too large".into(),
        });
        assert!(matches!(
            confirmed(rejected, &event()),
            Err(Error::Refused(refusal)) if refusal.reason == "too large"
        ));
        let error = Outcome::Refused(Refused::StreamError {
            code: "PublisherDoesNotExist".into(),
        });
        assert!(confirmed(error, &event()).unwrap_err().is_transient());
    }

    #[test]
    fn only_a_positive_confirm_confirms() {
        assert!(confirmed(Outcome::Confirmed, &event()).is_ok());
        for outcome in [
            closed(404, "NOT_FOUND - no exchange 'x' in vhost '/'"),
            Outcome::Refused(Refused::Nacked),
            Outcome::Refused(Refused::Returned {
                reply_code: 312,
                reply_text: "NO_ROUTE".into(),
                exchange: "outbox".into(),
                routing_key: "order.created".into(),
            }),
            Outcome::Refused(Refused::Lost(Error::transient("reset"))),
        ] {
            let error = confirmed(outcome, &event()).expect_err("not confirmed");
            assert!(error.is_transient() && !matches!(error, Error::Refused(_)));
        }
    }

    #[test]
    fn a_return_or_a_nack_holds_the_event_it_answered() {
        let returned = Outcome::Refused(Refused::Returned {
            reply_code: 312,
            reply_text: "NO_ROUTE".into(),
            exchange: "outbox".into(),
            routing_key: "order.created".into(),
        });
        for outcome in [returned, Outcome::Refused(Refused::Nacked)] {
            match confirmed(outcome, &event()) {
                Err(Error::Held(held)) => {
                    assert_eq!(
                        (held.event_id.as_str(), held.commit_lsn),
                        ("e-1", Lsn(0x10))
                    );
                }
                other => panic!("expected the event held, got {other:?}"),
            }
        }
        let lost = Outcome::Refused(Refused::Lost(Error::transient("reset")));
        assert!(!matches!(confirmed(lost, &event()), Err(Error::Held(_))));
    }
}
