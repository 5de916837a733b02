//! Rows read from the table → messages → the publisher, for the backfill.
//!
//! Each row becomes its message through the same [`OutboxShape`] the live relay uses (so the
//! body, properties, headers and `message_id` are what the row gives live), marked
//! `x-backfill: true` in place of the WAL position headers. At most `--max-in-flight` messages
//! await the broker; their verdicts are taken in publishing order, so the rows confirmed so
//! far are always a prefix of the key order and the key of the last one is where a later
//! attempt resumes. Anything but a positive confirm ends the attempt: nothing after the last
//! confirmed row counts as sent.

use std::collections::{HashSet, VecDeque};
use std::future::Future;
use std::sync::Mutex;
use std::time::Duration;

use futures_util::StreamExt;
use futures_util::stream::FuturesOrdered;
use tokio::sync::{mpsc, watch};
use tracing::{debug, info, warn};

use super::query::Key;
use super::reader::{Batch, Row};
use super::record::show_key;
use crate::config::Unroutable;
use crate::error::{Error, Result};
use crate::lsn::Lsn;
use crate::outbox::{OutboxShape, Transaction};
use crate::publish::{Outcome, Position, Publisher, Refused};
use crate::shutdown::Shutdown;
use crate::telemetry::Telemetry;

/// How often the loop proves it turns and checks that the broker is still there.
const HEARTBEAT: Duration = Duration::from_secs(1);

/// How far an attempt got: rows confirmed in it, and the key of the last one.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Progress {
    pub(crate) rows_confirmed: i64,
    pub(crate) last_key: Option<Key>,
}

/// How an attempt ended, when it did not fail.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum End {
    /// Every row was read and confirmed.
    Finished,
    /// Shutdown was asked for; the rows after the last confirmed one were not all confirmed.
    Stopped,
}

/// What the loop needs besides the rows.
pub(crate) struct Relay<'a, P: Publisher> {
    pub(crate) shape: &'a OutboxShape,
    pub(crate) publisher: &'a P,
    pub(crate) max_in_flight: usize,
    /// The timestamp of a row without a created_at: when the backfill read it (PostgreSQL
    /// microseconds, as a commit time is).
    pub(crate) read_at_micros: i64,
    /// What a row the broker returns as unroutable becomes (`--unroutable`).
    pub(crate) unroutable: &'a Unroutable,
    pub(crate) telemetry: &'a Telemetry,
    pub(crate) progress: &'a watch::Sender<Progress>,
    /// The routes (exchange, routing key) rows were dropped on: the first drop on each is
    /// logged at info level, the rest at debug.
    pub(crate) dropped_on: Mutex<HashSet<(String, String)>>,
}

/// One message awaiting its verdict: the confirm, and which row it carries.
type Awaiting = std::pin::Pin<Box<dyn Future<Output = (Outcome, String, Key)> + Send>>;

impl<P: Publisher> Relay<'_, P> {
    /// Publish every row of `batches` until they end and all are confirmed, shutdown, or a
    /// failure. On a stop, waits up to `grace` for the verdicts already due.
    pub(crate) async fn run(
        &self,
        mut batches: mpsc::Receiver<Batch>,
        shutdown: &mut Shutdown,
        grace: Duration,
    ) -> Result<End> {
        let mut in_flight: FuturesOrdered<Awaiting> = FuturesOrdered::new();
        let mut pending: VecDeque<Row> = VecDeque::new();
        let mut reading = true;
        let mut heartbeat = tokio::time::interval(HEARTBEAT);
        let mut routing_key = String::new();
        loop {
            while in_flight.len() < self.max_in_flight
                && let Some(row) = pending.pop_front()
            {
                // A blocked broker can hold a publish: a stop ends the wait (the row was not
                // confirmed, so the next attempt sends it).
                tokio::select! {
                    biased;
                    _ = shutdown.wait_for(|stop| *stop) => {
                        self.drain(in_flight, grace).await;
                        return Ok(End::Stopped);
                    }
                    published = self.publish(row, &mut routing_key) => in_flight.push_back(published?),
                }
            }
            if !reading && pending.is_empty() && in_flight.is_empty() {
                return Ok(End::Finished);
            }
            tokio::select! {
                biased;
                _ = shutdown.wait_for(|stop| *stop) => {
                    self.drain(in_flight, grace).await;
                    return Ok(End::Stopped);
                }
                Some(verdict) = in_flight.next(), if !in_flight.is_empty() => {
                    self.confirmed(verdict)?;
                }
                _ = heartbeat.tick() => {
                    self.telemetry.health.beat();
                    if !self.publisher.is_connected() {
                        return Err(Error::transient("the connection to the broker closed during the backfill"));
                    }
                }
                batch = batches.recv(), if reading && pending.is_empty() => match batch {
                    Some(batch) => pending.extend(batch),
                    None => reading = false,
                },
            }
        }
    }

    /// Build and publish one row's message.
    async fn publish(&self, row: Row, routing_key: &mut String) -> Result<Awaiting> {
        let transaction = Transaction {
            xid: 0,
            commit_lsn: Lsn::ZERO,
            commit_time_micros: self.read_at_micros,
        };
        let mut message = self
            .shape
            .message(&row.tuple, &transaction, 0, routing_key)
            .map_err(|problem| {
                Error::definite(format!(
                    "the outbox row with key {} cannot become an AMQP message: {problem}. The \
                     backfill stops here rather than skip it; fix the row's data, or leave it out \
                     of the backfill's predicate (and send it another way)",
                    show_key(&row.key)
                ))
            })?;
        if let Some(warning) = &message.headers_warning {
            warn!(event_id = %message.id, "{warning}");
        }
        message.mark_backfilled();
        let id = message.id.clone();
        let position = Position {
            commit_lsn: Lsn::ZERO,
            index: 0,
        };
        let confirm = self.publisher.publish(message, position).await?;
        let key = row.key;
        Ok(Box::pin(async move { (confirm.await, id, key) }))
    }

    /// One verdict, in publishing order: a confirm moves the progress on, and so does a return
    /// `--unroutable drop` lets go (as the live relay does, and the framework would have);
    /// anything else ends the attempt.
    fn confirmed(&self, (outcome, id, key): (Outcome, String, Key)) -> Result<()> {
        match outcome {
            Outcome::Confirmed => {
                self.done(key);
                Ok(())
            }
            Outcome::Refused(Refused::Returned {
                exchange,
                routing_key,
                ..
            }) if *self.unroutable == Unroutable::Drop => {
                self.telemetry.metrics.unroutable_dropped();
                let route = (exchange, routing_key);
                if self
                    .dropped_on
                    .lock()
                    .expect("not poisoned")
                    .insert(route.clone())
                {
                    info!(row = %id, exchange = %route.0, routing_key = %route.1,
                        "dropping a backfilled row no queue takes (--unroutable drop); further drops on this exchange and routing key are logged at debug level");
                } else {
                    debug!(row = %id, exchange = %route.0, routing_key = %route.1, "dropped a backfilled row no queue takes");
                }
                self.done(key);
                Ok(())
            }
            // A lost link keeps the class it was given where it was born.
            Outcome::Refused(Refused::Lost(error)) => Err(error),
            Outcome::Refused(refused) => {
                if matches!(refused, Refused::Returned { .. }) {
                    self.telemetry.metrics.unroutable_held();
                }
                Err(Error::transient(format!(
                    "the broker did not confirm the backfilled row {id} (key {}): {}; the backfill \
                 resumes after the last confirmed row",
                    show_key(&key),
                    describe(&refused)
                )))
            }
        }
    }

    /// The row is through (confirmed, or dropped as unroutable): the progress moves on.
    fn done(&self, key: Key) {
        self.telemetry.metrics.backfill_confirmed();
        self.progress.send_modify(|progress| {
            progress.rows_confirmed += 1;
            progress.last_key = Some(key);
        });
    }

    /// After a stop: take the verdicts that come within `grace`, in order, so the progress
    /// covers every row confirmed before walbox exits.
    async fn drain(&self, mut in_flight: FuturesOrdered<Awaiting>, grace: Duration) {
        let deadline = tokio::time::Instant::now() + grace;
        while let Ok(Some(verdict)) = tokio::time::timeout_at(deadline, in_flight.next()).await {
            if self.confirmed(verdict).is_err() {
                return;
            }
        }
    }
}

/// Why the broker did not take a message, in words.
fn describe(refused: &Refused) -> String {
    match refused {
        Refused::Nacked => "nacked".to_owned(),
        Refused::Returned {
            reply_code,
            reply_text,
            exchange,
            routing_key,
        } => format!(
            "returned as unroutable ({reply_code} {reply_text}: no queue is bound for exchange \
             `{exchange}` with routing key `{routing_key}`)"
        ),
        Refused::ChannelClosed {
            reply_code,
            reply_text,
        } => format!("the broker closed the channel: {reply_code} {reply_text}"),
        Refused::StreamError { code } => format!("stream error {code}"),
        Refused::Rejected { reason } => reason.clone(),
        Refused::Lost(error) => error.to_string(),
    }
}
