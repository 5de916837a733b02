//! The confirm tracker: waits for the broker's answer to every published message, in order,
//! and feeds positive confirms to the [`Watermark`].
//!
//! It runs as its own task so publishing never waits for a round trip: the pipeline hands over
//! each message's confirm future and each boundary, in stream order, and moves on. An ack that
//! carries a returned message (unroutable with mandatory set), a nack, or a channel error ends
//! the tracker with an error: nothing after that message is ever confirmed to PostgreSQL.
//! A channel the broker closed with PRECONDITION_FAILED comes back as [`Error::Refused`],
//! naming the event, so the supervisor can tell a poison event from a broker that is away.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Instant;

use futures_util::StreamExt;
use futures_util::stream::FuturesOrdered;
use lapin::Confirmation;
use tokio::sync::{OwnedSemaphorePermit, mpsc, watch};

use crate::error::{Error, Refusal, Result};
use crate::lsn::Lsn;
use crate::sink::Sending;
use crate::telemetry::{Metrics, Telemetry};
use crate::watermark::Watermark;

/// What the pipeline hands to the tracker, in stream order.
pub(crate) enum Pending {
    /// A message was published; `permit` holds its place in the in-flight window.
    Published {
        sending: Sending,
        permit: OwnedSemaphorePermit,
        event_id: String,
        commit_lsn: Lsn,
        /// The transaction's commit timestamp (microseconds since 2000-01-01), for the
        /// commit-to-confirm latency.
        commit_time_micros: i64,
        /// The message is the dead-letter record of a poison event, sent in its place.
        dead_letter: bool,
    },
    /// Everything handed over before this lies before `lsn` in the WAL.
    Boundary(Lsn),
}

/// Run until the sender is dropped and every confirm is in (returns the final flush LSN), or
/// until the broker refuses a message (returns why).
pub(crate) async fn track(
    mut pending: mpsc::Receiver<Pending>,
    mut watermark: Watermark,
    flush: watch::Sender<Lsn>,
    telemetry: Arc<Telemetry>,
) -> Result<Lsn> {
    let metrics = &telemetry.metrics;
    let mut in_flight = FuturesOrdered::new();
    // When each message in `in_flight` was published, oldest first (answers come in order).
    let mut published_at = VecDeque::new();
    let mut sender_open = true;
    loop {
        tokio::select! {
            item = pending.recv(), if sender_open => match item {
                Some(Pending::Published { sending, permit, event_id, commit_lsn, commit_time_micros, dead_letter }) => {
                    let sequence = watermark.publish();
                    published_at.push_back(Instant::now());
                    in_flight.push_back(async move {
                        let answer = sending.answer().await;
                        drop(permit);
                        (sequence, answer, event_id, commit_lsn, commit_time_micros, dead_letter)
                    });
                }
                Some(Pending::Boundary(lsn)) => {
                    if let Some(lsn) = watermark.boundary(lsn) {
                        flush.send_replace(lsn);
                    }
                }
                None => sender_open = false,
            },
            Some((sequence, answer, event_id, commit_lsn, commit_time_micros, dead_letter)) = in_flight.next(), if !in_flight.is_empty() => {
                let sent_at = published_at.pop_front().unwrap_or_else(Instant::now);
                metrics.answered(published_at.front().copied());
                count(metrics, &answer);
                refused(answer, &event_id, commit_lsn)?;
                metrics.confirmed(sent_at, commit_time_micros);
                if dead_letter {
                    metrics.dead_lettered();
                }
                if let Some(lsn) = watermark.confirm(sequence) {
                    flush.send_replace(lsn);
                }
            }
            else => return Ok(watermark.flush_lsn()),
        }
    }
}

fn count(metrics: &Metrics, answer: &lapin::Result<Confirmation>) {
    match answer {
        Ok(Confirmation::Ack(Some(_))) => metrics.returned(),
        Ok(Confirmation::Nack(_)) => metrics.nacked(),
        _ => {}
    }
}

/// `Ok` only for a plain ack.
fn refused(answer: lapin::Result<Confirmation>, event_id: &str, commit_lsn: Lsn) -> Result<()> {
    match answer {
        Ok(Confirmation::Ack(None)) => Ok(()),
        Ok(Confirmation::Ack(Some(returned))) => Err(Error::transient(format!(
            "the broker returned event {event_id} (commit {commit_lsn}) as unroutable: {} {} — \
             no queue is bound for exchange `{}` with routing key `{}`; holding it and retrying",
            returned.reply_code,
            returned.reply_text,
            returned.delivery.exchange,
            returned.delivery.routing_key
        ))),
        Ok(Confirmation::Nack(_)) => Err(Error::transient(format!(
            "the broker nacked event {event_id} (commit {commit_lsn}); retrying"
        ))),
        Ok(Confirmation::NotRequested) => Err(Error::definite(
            "publisher confirms are not enabled on the channel (a walbox bug)",
        )),
        Err(error) => match precondition_failed(&error) {
            Some(reason) => Err(Error::Refused(Refusal {
                event_id: event_id.to_owned(),
                commit_lsn,
                reason,
            })),
            None => Err(Error::from_amqp(
                &format!("waiting for the confirm of event {event_id} (commit {commit_lsn})"),
                &error,
            )),
        },
    }
}

/// AMQP's reply code for a request the broker will not carry out as it stands.
const PRECONDITION_FAILED: u16 = 406;

/// The broker's text, when it closed the channel with PRECONDITION_FAILED. On a publish
/// channel that is a verdict on one message (too large, a header it rejects), not on the
/// connection or the topology: those come with other codes (404 no exchange, 403 access).
fn precondition_failed(error: &lapin::Error) -> Option<String> {
    match error.kind() {
        lapin::ErrorKind::ProtocolError(amqp) if amqp.get_id() == PRECONDITION_FAILED => {
            Some(amqp.get_message().to_string())
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lapin::protocol::{AMQPError, AMQPErrorKind, AMQPSoftError};

    fn closed_with(kind: AMQPSoftError, text: &str) -> lapin::Result<Confirmation> {
        Err(
            lapin::ErrorKind::ProtocolError(AMQPError::new(AMQPErrorKind::Soft(kind), text.into()))
                .into(),
        )
    }

    #[test]
    fn precondition_failed_names_the_refused_event() {
        let answer = closed_with(
            AMQPSoftError::PRECONDITIONFAILED,
            "PRECONDITION_FAILED - message size 70000 is larger than configured max size 65536",
        );
        match refused(answer, "e-1", Lsn(0x10)) {
            Err(Error::Refused(refusal)) => {
                assert_eq!(refusal.event_id, "e-1");
                assert_eq!(refusal.commit_lsn, Lsn(0x10));
                assert!(refusal.reason.contains("larger than configured max size"));
            }
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    #[test]
    fn other_channel_closures_are_plain_transient_failures() {
        let answer = closed_with(AMQPSoftError::NOTFOUND, "NOT_FOUND - no exchange 'x'");
        assert!(matches!(
            refused(answer, "e-1", Lsn(0x10)),
            Err(Error::Transient(_))
        ));
        let io: lapin::Result<Confirmation> = Err(lapin::ErrorKind::IOError(std::sync::Arc::new(
            std::io::Error::other("reset"),
        ))
        .into());
        assert!(matches!(
            refused(io, "e-1", Lsn(0x10)),
            Err(Error::Transient(_))
        ));
        assert!(refused(Ok(Confirmation::Ack(None)), "e-1", Lsn(0x10)).is_ok());
        assert!(matches!(
            refused(Ok(Confirmation::Nack(None)), "e-1", Lsn(0x10)),
            Err(Error::Transient(_))
        ));
    }
}
