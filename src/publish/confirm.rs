//! The confirm tracker: waits for the broker's verdict on every published message, in order,
//! and feeds positive confirms to the [`Watermark`].
//!
//! It runs as its own task so publishing never waits for a round trip: the engine hands over
//! each message's confirm and each boundary, in stream order, and moves on. Any verdict but
//! `Confirmed` (a nack, a return, a closed channel, a lost link) ends the tracker with an
//! error: nothing after that message is ever confirmed to PostgreSQL. A channel the broker
//! closed with PRECONDITION_FAILED comes back as [`Error::Refused`], naming the event, so the
//! supervisor can tell a poison event from a broker that is away.

use std::collections::{HashSet, VecDeque};
use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

use futures_util::StreamExt;
use futures_util::stream::FuturesOrdered;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, watch};

use tracing::{debug, info};

use super::{Outcome, Refused};
use crate::config::Unroutable;
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

/// What the tracker works with besides the engine's hand-overs.
pub(crate) struct Tracking {
    pub(crate) watermark: Watermark,
    /// Where the flush LSN goes each time it moves.
    pub(crate) flush: watch::Sender<Lsn>,
    /// The in-flight window, closed at the first verdict that is not a confirm.
    pub(crate) window: Arc<Semaphore>,
    /// What a return of an event means.
    pub(crate) unroutable: Unroutable,
    pub(crate) telemetry: Arc<Telemetry>,
}

/// Run until the sender is dropped and every verdict is in (returns the final flush LSN), or
/// until a message is not confirmed (returns why). A message not confirmed closes the window
/// first: the engine publishes nothing more in a session that is over, so a held event is
/// not overtaken by, nor retried with, events the engine would otherwise still send.
pub(crate) async fn track<C>(
    mut pending: mpsc::Receiver<Pending<C>>,
    mut tracking: Tracking,
) -> Result<Lsn>
where
    C: Future<Output = Outcome> + Send + 'static,
{
    let mut in_flight = FuturesOrdered::new();
    // When each message in `in_flight` was published, oldest first (verdicts come in order).
    let mut published_at = VecDeque::new();
    let mut drops = Drops::default();
    let mut sender_open = true;
    loop {
        tokio::select! {
            item = pending.recv(), if sender_open => match item {
                Some(Pending::Published(Published { confirm, permit, event })) => {
                    let sequence = tracking.watermark.publish();
                    published_at.push_back(Instant::now());
                    in_flight.push_back(async move {
                        let outcome = confirm.await;
                        Verdict { sequence, outcome, event, permit }
                    });
                }
                Some(Pending::Boundary(lsn)) => {
                    if let Some(lsn) = tracking.watermark.boundary(lsn) {
                        tracking.flush.send_replace(lsn);
                    }
                }
                None => sender_open = false,
            },
            Some(verdict) = in_flight.next(), if !in_flight.is_empty() => {
                let sent_at = published_at.pop_front().unwrap_or_else(Instant::now);
                tracking.telemetry.metrics.answered(published_at.front().copied());
                tracking.settle(verdict, sent_at, &mut drops)?;
            }
            else => return Ok(tracking.watermark.flush_lsn()),
        }
    }
}

impl Tracking {
    /// Act on one verdict: a confirm, or a return `--unroutable drop` lets go, moves the
    /// watermark; anything else closes the window and ends the tracker with why.
    fn settle(&mut self, verdict: Verdict, sent_at: Instant, drops: &mut Drops) -> Result<()> {
        let metrics = &self.telemetry.metrics;
        let dropping = drops_returns(&self.unroutable, &verdict.event);
        count(metrics, &verdict.outcome, dropping);
        match verdict.outcome {
            Outcome::Refused(Refused::Returned {
                exchange,
                routing_key,
                ..
            }) if dropping => drops.dropped(&verdict.event, exchange, routing_key),
            outcome => {
                if let Err(error) = confirmed(outcome, &verdict.event, &self.unroutable) {
                    self.window.close();
                    return Err(error);
                }
                metrics.confirmed(sent_at, verdict.event.commit_time_micros);
                if verdict.event.dead_letter {
                    metrics.dead_lettered();
                }
            }
        }
        drop(verdict.permit);
        if let Some(lsn) = self.watermark.confirm(verdict.sequence) {
            self.flush.send_replace(lsn);
        }
        Ok(())
    }
}

/// Whether a return of `event` is let go: with `--unroutable drop`, an event nobody
/// subscribes to. Never a poison event's dead-letter record: a dead-letter exchange without a
/// queue is a mistake to wait out, and dropping the record would lose the event it stands for.
fn drops_returns(unroutable: &Unroutable, event: &EventRef) -> bool {
    *unroutable == Unroutable::Drop && !event.dead_letter
}

/// The routes (exchange, routing key) events were dropped on in this session: the first drop
/// on each is logged at info level, the others at debug.
#[derive(Default)]
struct Drops {
    routes: HashSet<(String, String)>,
}

impl Drops {
    fn dropped(&mut self, event: &EventRef, exchange: String, routing_key: String) {
        let EventRef {
            event_id,
            commit_lsn,
            ..
        } = event;
        let first = !self
            .routes
            .contains(&(exchange.clone(), routing_key.clone()));
        if first {
            info!(%event_id, %commit_lsn, %exchange, %routing_key,
                "dropping an event no queue takes (--unroutable drop); further drops on this exchange and routing key are logged at debug level");
            self.routes.insert((exchange, routing_key));
        } else {
            debug!(%event_id, %commit_lsn, %exchange, %routing_key, "dropped an event no queue takes");
        }
    }
}

fn count(metrics: &Metrics, outcome: &Outcome, dropping: bool) {
    match outcome {
        Outcome::Refused(Refused::Returned { .. }) => {
            metrics.returned();
            match dropping {
                true => metrics.unroutable_dropped(),
                false => metrics.unroutable_held(),
            }
        }
        Outcome::Refused(Refused::Nacked) => metrics.nacked(),
        _ => {}
    }
}

/// AMQP's reply code for a request the broker will not carry out as it stands.
const PRECONDITION_FAILED: u16 = 406;

/// `Ok` only for a positive confirm.
fn confirmed(outcome: Outcome, event: &EventRef, unroutable: &Unroutable) -> Result<()> {
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
                 routing key `{routing_key}`{}; holding it and retrying",
                match unroutable.alternate_exchange() {
                    Some(alternate) => {
                        format!(", nor to its alternate exchange `{alternate}`")
                    }
                    None => String::new(),
                }
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
    use crate::telemetry::Telemetry;

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
        match confirmed(outcome, &event(), &Unroutable::Hold) {
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
            confirmed(rejected, &event(), &Unroutable::Hold),
            Err(Error::Refused(refusal)) if refusal.reason == "too large"
        ));
        let error = Outcome::Refused(Refused::StreamError {
            code: "PublisherDoesNotExist".into(),
        });
        assert!(
            confirmed(error, &event(), &Unroutable::Hold)
                .unwrap_err()
                .is_transient()
        );
    }

    #[test]
    fn only_a_positive_confirm_confirms() {
        assert!(confirmed(Outcome::Confirmed, &event(), &Unroutable::Hold).is_ok());
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
            let error = confirmed(outcome, &event(), &Unroutable::Hold).expect_err("not confirmed");
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
            match confirmed(outcome, &event(), &Unroutable::Hold) {
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
        assert!(!matches!(
            confirmed(lost, &event(), &Unroutable::Hold),
            Err(Error::Held(_))
        ));
    }

    fn returned() -> Outcome {
        Outcome::Refused(Refused::Returned {
            reply_code: 312,
            reply_text: "NO_ROUTE".into(),
            exchange: "Contracts:OrderShipped".into(),
            routing_key: "".into(),
        })
    }

    /// Run the tracker over events each in its own transaction (commit at 0x100 · n, end
    /// 0x100 · n + 0x20), answered with `outcomes` (and whether the message is a dead-letter
    /// record). How it ended, the flush LSN reached, and whether the window was closed.
    fn tracked(unroutable: Unroutable, outcomes: Vec<(Outcome, bool)>) -> (Result<Lsn>, Lsn, bool) {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            let window = Arc::new(Semaphore::new(outcomes.len()));
            let (flush, flushed) = watch::channel(Lsn(0x10));
            let (sender, receiver) = mpsc::channel(64);
            let tracker = tokio::spawn(track(
                receiver,
                Tracking {
                    watermark: Watermark::new(Lsn(0x10)),
                    flush,
                    window: Arc::clone(&window),
                    unroutable,
                    telemetry: Arc::new(Telemetry::default()),
                },
            ));
            for (n, (outcome, dead_letter)) in outcomes.into_iter().enumerate() {
                let commit_lsn = Lsn(0x100 * (n as u64 + 1));
                let permit = Arc::clone(&window).acquire_owned().await.unwrap();
                let event = EventRef {
                    event_id: format!("e-{n}"),
                    commit_lsn,
                    commit_time_micros: 0,
                    dead_letter,
                };
                let confirm = std::future::ready(outcome);
                let _ = sender
                    .send(Pending::Published(Published {
                        confirm,
                        permit,
                        event,
                    }))
                    .await;
                let _ = sender
                    .send(Pending::Boundary(Lsn(commit_lsn.0 + 0x20)))
                    .await;
            }
            drop(sender);
            let end = tracker.await.unwrap();
            let reached = *flushed.borrow();
            (end, reached, window.is_closed())
        })
    }

    #[test]
    fn drop_lets_a_return_go_and_nothing_else() {
        // A return, then a confirm: both are behind the flush LSN.
        let (end, flushed, window_closed) = tracked(
            Unroutable::Drop,
            vec![(returned(), false), (Outcome::Confirmed, false)],
        );
        assert_eq!(end.unwrap(), Lsn(0x220));
        assert_eq!(flushed, Lsn(0x220));
        assert!(!window_closed);
        // A nack, a lost link, a closed channel are never dropped: held or failed, and the
        // flush LSN stays before them.
        for refused in [
            Outcome::Refused(Refused::Nacked),
            Outcome::Refused(Refused::Lost(Error::transient("reset"))),
            closed(
                406,
                "PRECONDITION_FAILED - message size 70000 is larger than configured max size 65536",
            ),
        ] {
            let (end, flushed, window_closed) = tracked(
                Unroutable::Drop,
                vec![
                    (Outcome::Confirmed, false),
                    (refused, false),
                    (Outcome::Confirmed, false),
                ],
            );
            assert!(end.is_err());
            assert_eq!(flushed, Lsn(0x120), "stopped before the refused event");
            assert!(
                window_closed,
                "the window closes at the first verdict not a confirm"
            );
        }
        // A poison event's dead-letter record returned is held, not dropped.
        let (end, flushed, _) = tracked(Unroutable::Drop, vec![(returned(), true)]);
        assert!(matches!(end, Err(Error::Held(_))));
        assert_eq!(flushed, Lsn(0x10));
    }

    #[test]
    fn hold_and_an_alternate_exchange_hold_a_returned_event() {
        for unroutable in [Unroutable::Hold, Unroutable::AlternateExchange("ae".into())] {
            let alternate = unroutable.alternate_exchange().is_some();
            let (end, flushed, closed) = tracked(
                unroutable,
                vec![
                    (Outcome::Confirmed, false),
                    (returned(), false),
                    (Outcome::Confirmed, false),
                ],
            );
            match end {
                Err(Error::Held(held)) => {
                    assert_eq!(held.event_id, "e-1");
                    assert_eq!(held.message.contains("alternate exchange `ae`"), alternate);
                }
                other => panic!("expected the returned event held, got {other:?}"),
            }
            assert_eq!(flushed, Lsn(0x120));
            assert!(closed);
        }
    }
}
