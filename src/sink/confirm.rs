//! The confirm tracker: waits for the broker's answer to every published message, in order,
//! and feeds positive confirms to the [`Watermark`].
//!
//! It runs as its own task so publishing never waits for a round trip: the pipeline hands over
//! each message's confirm future and each boundary, in stream order, and moves on. An ack that
//! carries a returned message (unroutable with mandatory set), a nack, or a channel error ends
//! the tracker with an error: nothing after that message is ever confirmed to PostgreSQL.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Instant;

use futures_util::StreamExt;
use futures_util::stream::FuturesOrdered;
use lapin::Confirmation;
use tokio::sync::{OwnedSemaphorePermit, mpsc, watch};

use crate::error::{Error, Result};
use crate::lsn::Lsn;
use crate::sink::Sending;
use crate::telemetry::{Metrics, Telemetry};
use crate::watermark::Watermark;

/// What the pipeline hands to the tracker, in stream order.
pub enum Pending {
    /// A message was published; `permit` holds its place in the in-flight window.
    Published {
        sending: Sending,
        permit: OwnedSemaphorePermit,
        event_id: String,
        commit_lsn: Lsn,
        /// The transaction's commit timestamp (microseconds since 2000-01-01), for the
        /// commit-to-confirm latency.
        commit_time_micros: i64,
    },
    /// Everything handed over before this lies before `lsn` in the WAL.
    Boundary(Lsn),
}

/// Run until the sender is dropped and every confirm is in (returns the final flush LSN), or
/// until the broker refuses a message (returns why).
pub async fn track(
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
                Some(Pending::Published { sending, permit, event_id, commit_lsn, commit_time_micros }) => {
                    let sequence = watermark.publish();
                    published_at.push_back(Instant::now());
                    in_flight.push_back(async move {
                        let answer = sending.answer().await;
                        drop(permit);
                        (sequence, answer, event_id, commit_lsn, commit_time_micros)
                    });
                }
                Some(Pending::Boundary(lsn)) => {
                    if let Some(lsn) = watermark.boundary(lsn) {
                        flush.send_replace(lsn);
                    }
                }
                None => sender_open = false,
            },
            Some((sequence, answer, event_id, commit_lsn, commit_time_micros)) = in_flight.next(), if !in_flight.is_empty() => {
                let sent_at = published_at.pop_front().unwrap_or_else(Instant::now);
                metrics.answered(published_at.front().copied());
                count(metrics, &answer);
                refused(answer, &event_id, commit_lsn)?;
                metrics.confirmed(sent_at, commit_time_micros);
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
        Err(error) => Err(Error::from_amqp(
            &format!("waiting for the confirm of event {event_id} (commit {commit_lsn})"),
            &error,
        )),
    }
}
