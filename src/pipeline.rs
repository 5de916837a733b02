//! Wires source → outbox → sink → confirm tracker → watermark → source, one direction, and
//! supervises it: transient failures restart the session with backoff from the slot's
//! confirmed position; definite failures stop walbox.
//!
//! Within a session, data flows down: changes from the slot become messages, messages go to
//! the broker, their confirm futures and the transaction boundaries go to the tracker. The only
//! thing that flows back is the watermark's flush LSN, through a `watch` channel, to
//! [`Source::acknowledge`].
//!
//! Poison events (one event the broker refuses every time) are told apart and handled by
//! [`poison`]; the supervisor keeps its state across sessions.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Semaphore, mpsc, watch};
use tokio::task::JoinHandle;
use tracing::{info, warn};

use crate::config::{Config, RunConfig};
use crate::control::{Control, Ensured};
use crate::error::{Error, Result};
use crate::lsn::Lsn;
use crate::outbox::{OutboxShape, Transaction};
use crate::pgoutput::Message;
use crate::sink::Sink;
use crate::sink::confirm::{Pending, track};
use crate::source::{Change, Source};
use crate::telemetry::{RelayState, Side, Telemetry};
use crate::watermark::Watermark;

pub(crate) mod backoff;
pub(crate) mod poison;

use backoff::Backoff;
use poison::{DeadLetter, Poison};

/// Resolves when walbox is asked to stop.
pub(crate) type Shutdown = watch::Receiver<bool>;

/// Relay until `shutdown` fires (Ok) or a definite error (Err).
pub(crate) async fn run(
    config: &Config,
    run: &RunConfig,
    mut shutdown: Shutdown,
    telemetry: Arc<Telemetry>,
) -> Result<()> {
    let mut backoff = Backoff::new(Duration::from_millis(200), run.max_retry_delay);
    let mut first = true;
    let mut standing_by = false;
    // What this process saw the broker confirm, kept across sessions: PostgreSQL before 17
    // saves a logical slot's confirmed position only at some checkpoints, so after a server
    // restart the slot can be behind what was already confirmed. Resuming from here instead
    // avoids re-sending those events.
    let mut confirmed_here = Lsn::ZERO;
    let mut poison = Poison::new(run.poison_after, run.dead_letter_exchange.clone());
    loop {
        let outcome = session(
            config,
            run,
            first,
            &mut confirmed_here,
            &mut poison,
            &mut shutdown,
            &mut backoff,
            &telemetry,
        )
        .await;
        telemetry.metrics.session_ended();
        let delay = match outcome {
            Ok(()) => return Ok(()),
            Err((_, error @ (Error::Definite(_) | Error::OutOfRange(_) | Error::Usage(_)))) => {
                return Err(error);
            }
            Err((_, Error::SlotInUse(reason))) => {
                if !standing_by {
                    info!(%reason, "standing by: another walbox holds the slot; taking over when it is released");
                    standing_by = true;
                }
                telemetry.health.set_state(RelayState::StandingBy);
                STANDBY_POLL
            }
            Err((side, Error::Transient(reason))) => {
                standing_by = false;
                telemetry.health.set_state(match poison.halted_on() {
                    Some(_) => RelayState::Halted,
                    None => RelayState::Reconnecting,
                });
                telemetry.metrics.reconnect(side);
                let delay = backoff.next_delay();
                warn!(%reason, side = side.name(), retry_in_ms = delay.as_millis() as u64, "session ended; reconnecting");
                delay
            }
            Err((side, Error::Refused(refusal))) => {
                standing_by = false;
                telemetry.metrics.reconnect(side);
                telemetry.metrics.poison_refusal();
                let delay = backoff.next_delay();
                telemetry
                    .health
                    .set_state(poison.handle_refusal(refusal, delay));
                delay
            }
        };
        let waited = tokio::time::sleep(delay);
        tokio::pin!(waited);
        let mut heartbeat = tokio::time::interval(HEARTBEAT);
        loop {
            tokio::select! {
                _ = &mut waited => break,
                _ = heartbeat.tick() => telemetry.health.beat(),
                _ = shutdown.wait_for(|stop| *stop) => return Ok(()),
            }
        }
        first = false;
    }
}

/// How often a standby walbox tries to take the slot over.
const STANDBY_POLL: Duration = Duration::from_secs(1);
/// How often the loops prove they turn (/healthz) and check that the broker is still there.
const HEARTBEAT: Duration = Duration::from_secs(1);

/// How long a session whose AMQP side failed waits for the confirm tracker to say why.
const REFUSAL_GRACE: Duration = Duration::from_secs(1);

/// Why a session ended, and which connection's failure ended it.
pub(crate) type SessionResult = std::result::Result<(), (Side, Error)>;

fn on(side: Side) -> impl Fn(Error) -> (Side, Error) + Copy {
    move |error| (side, error)
}

/// Why the confirm tracker ended while the session still ran.
pub(crate) fn tracker_failure(
    end: std::result::Result<Result<Lsn>, tokio::task::JoinError>,
) -> Error {
    end.unwrap_or_else(|e| Err(Error::transient(format!("confirm tracker: {e}"))))
        .err()
        .unwrap_or_else(|| Error::transient("confirm tracker stopped"))
}

/// The reason to report for a session's failure. When the AMQP side fails (a publish or a
/// hand-over to the tracker failed, or the heartbeat saw the channel closed), the confirm
/// tracker knows why: a nack, a return, or the broker refusing one event. Its reason arrives a
/// moment later; wait briefly for it, so that a refused event is told from a broker that went
/// away. `tracker` must not have been awaited to its end already.
pub(crate) async fn tracker_reason(
    error: (Side, Error),
    tracker: &mut JoinHandle<Result<Lsn>>,
) -> (Side, Error) {
    match error {
        (Side::Amqp, error @ Error::Transient(_)) => {
            match tokio::time::timeout(REFUSAL_GRACE, tracker).await {
                Ok(Ok(Err(why))) => (Side::Amqp, why),
                _ => (Side::Amqp, error),
            }
        }
        other => other,
    }
}

/// One connected session: both connections, the tracker task, the stream loop.
#[allow(clippy::too_many_arguments)]
async fn session(
    config: &Config,
    run: &RunConfig,
    first: bool,
    confirmed_here: &mut Lsn,
    poison: &mut Poison,
    shutdown: &mut Shutdown,
    backoff: &mut Backoff,
    telemetry: &Arc<Telemetry>,
) -> SessionResult {
    let postgres = on(Side::Postgres);
    let control = Control::connect(config).await.map_err(postgres)?;
    let prepared = control.prepare(config, first).await.map_err(postgres)?;
    if first {
        if prepared.publication == Ensured::Created {
            info!(publication = %config.publication, table = %config.table, "created publication");
        }
        if prepared.slot == Ensured::Created {
            info!(slot = %config.slot, "created replication slot");
        }
    }
    let confirmed = prepared.slot_info.confirmed_flush().unwrap_or(Lsn::ZERO);
    let start = match run.start_lsn {
        Some(skip_to) if first && skip_to < confirmed => {
            return Err(postgres(Error::definite(format!(
                "--start-lsn {skip_to} is behind the slot's confirmed position {confirmed}; a \
                 logical slot cannot go back. Omit --start-lsn to resume from {confirmed}"
            ))));
        }
        Some(skip_to) => skip_to.max(confirmed),
        None => confirmed,
    };
    let start = if *confirmed_here > start {
        info!(slot_position = %confirmed, resume_from = %*confirmed_here,
            "the slot's saved position is behind what this walbox saw confirmed (PostgreSQL restarted, or the last session was cut short); resuming from the confirmed position");
        *confirmed_here
    } else {
        start
    };
    drop(control);

    let sink = Sink::connect(config).await.map_err(on(Side::Amqp))?;
    if let Some(dead_letter_exchange) = &run.dead_letter_exchange {
        sink.declare_dead_letter(dead_letter_exchange, config.mapping.exchange_spec.mode)
            .await
            .map_err(on(Side::Amqp))?;
    }
    let mut source = Source::start(config, start).await.map_err(postgres)?;
    if first && run.start_lsn.is_some_and(|skip_to| skip_to > confirmed) {
        warn!(from = %confirmed, to = %start, "skipping ahead: events committed before --start-lsn are not relayed");
    }
    if telemetry.health.state() == RelayState::StandingBy {
        info!(slot = %config.slot, "took over: the other walbox released the slot");
    }
    info!(slot = %config.slot, from = %start, exchange = %config.mapping.exchange, "streaming");
    // Halted stays halted (not ready) while walbox retries its poison event.
    let streaming = |poison: &Poison| match poison.halted_on() {
        Some(_) => RelayState::Halted,
        None => RelayState::Streaming,
    };
    telemetry.health.set_state(streaming(&*poison));
    telemetry.metrics.flushed(start);

    let (flush_tx, mut flush_rx) = watch::channel(start);
    let (pending_tx, pending_rx) = mpsc::channel(config.max_in_flight.max(64));
    let mut tracker = tokio::spawn(track(
        pending_rx,
        Watermark::new(start),
        flush_tx,
        Arc::clone(telemetry),
    ));
    // While isolating a refused message, one in flight at a time; the full window once the
    // flush LSN is past it.
    let mut careful = poison.careful();
    let window = Arc::new(Semaphore::new(if careful {
        1
    } else {
        config.max_in_flight
    }));
    let outlet = Outlet::Broker {
        sink: &sink,
        pending: pending_tx,
        window: Arc::clone(&window),
    };
    let mut stream = Stream::new(config, outlet, false, telemetry);
    stream.dead_letter = poison.dead_letter();
    stream.unencodable_to = run.dead_letter_exchange.clone();
    let mut heartbeat = tokio::time::interval(HEARTBEAT);
    let mut tracker_ended = false;

    let outcome = loop {
        tokio::select! {
            biased;
            _ = shutdown.wait_for(|stop| *stop) => break Ok(()),
            tracker_end = &mut tracker => {
                tracker_ended = true;
                break Err((Side::Amqp, tracker_failure(tracker_end)));
            }
            Ok(()) = flush_rx.changed() => {
                let flushed = *flush_rx.borrow_and_update();
                source.acknowledge(flushed);
                telemetry.metrics.flushed(flushed);
                let progress = poison.progressed(flushed);
                if let Some(passed) = progress.passed {
                    info!(event_id = %passed.event_id, commit_lsn = %passed.commit_lsn,
                        "past the event the broker had refused");
                    telemetry.health.set_state(streaming(&*poison));
                }
                if progress.careful_ended && careful {
                    careful = false;
                    window.add_permits(config.max_in_flight.saturating_sub(1));
                }
            }
            _ = heartbeat.tick() => {
                telemetry.health.beat();
                if !sink.is_connected() {
                    break Err((Side::Amqp, Error::transient("the connection to the broker closed")));
                }
            }
            change = source.next() => match change {
                Ok(Some(change)) => {
                    if let Err(error) = stream.apply(change).await {
                        // Why the AMQP side failed is asked of the tracker below.
                        break Err(error);
                    }
                }
                Ok(None) => break Err(postgres(Error::transient("the replication stream ended"))),
                Err(error) => break Err(postgres(error)),
            },
        }
    };

    let outcome = match outcome {
        Err(error) if !tracker_ended => Err(tracker_reason(error, &mut tracker).await),
        other => other,
    };
    poison.note_published(stream.published_through);
    // A session that moved the flush position made progress: the next failure is a new one,
    // retried quickly. One that failed before confirming anything keeps backing off, so an
    // unroutable or refused event does not turn into a reconnect storm.
    if *flush_rx.borrow() > start {
        backoff.reset();
    }
    *confirmed_here = (*confirmed_here).max(*flush_rx.borrow());
    match outcome {
        Ok(()) => {
            // Graceful stop: no more reading; wait (bounded) for outstanding confirms, then
            // tell PostgreSQL the final position.
            drop(stream);
            telemetry.health.set_state(RelayState::Stopping);
            info!(
                grace_secs = run.shutdown_grace.as_secs(),
                "stopping: waiting for outstanding confirms"
            );
            let final_lsn = match tokio::time::timeout(run.shutdown_grace, &mut tracker).await {
                Ok(Ok(Ok(lsn))) => lsn,
                Ok(Ok(Err(error))) => {
                    warn!(%error, "a message was refused while stopping");
                    *flush_rx.borrow()
                }
                _ => {
                    warn!(
                        "confirms still outstanding at the end of the grace period; they will be sent again on restart"
                    );
                    tracker.abort();
                    *flush_rx.borrow()
                }
            };
            source.finish(final_lsn, Duration::from_secs(3)).await;
            sink.close().await;
            info!(flushed = %final_lsn, "stopped");
            Ok(())
        }
        Err(error) => {
            tracker.abort();
            drop(source);
            sink.close().await;
            Err(error)
        }
    }
}

/// Where a stream's messages go.
pub(crate) enum Outlet<'a> {
    /// Published on the sink; each message's confirm and each boundary go to the confirm
    /// tracker through `pending`, within the in-flight `window`.
    Broker {
        sink: &'a Sink,
        pending: mpsc::Sender<Pending>,
        window: Arc<Semaphore>,
    },
    /// Only counted (`walbox replay --dry-run`): nothing is published or acknowledged.
    Count,
}

/// The per-session state of the stream loop: relations seen, the open transaction, the
/// outbox table's current shape.
pub(crate) struct Stream<'a> {
    config: &'a Config,
    outlet: Outlet<'a>,
    telemetry: &'a Telemetry,
    /// The outbox table's shape, from its latest Relation message.
    shape: Option<OutboxShape>,
    transaction: Option<Transaction>,
    /// The next outbox event's index in the open transaction (its id when the table has no
    /// id column is derived from the commit LSN and this index).
    index_in_transaction: u32,
    routing_key: String,
    /// A poison event to replace by its dead-letter record when it comes by.
    dead_letter: Option<DeadLetter>,
    /// Where a row that cannot become a message goes (the dead-letter exchange); None: walbox
    /// stops on it.
    pub(crate) unencodable_to: Option<String>,
    /// The highest commit LSN of an event handed to the broker.
    published_through: Lsn,
    /// Republished messages (`walbox replay`) carry the header `x-replay: true`.
    replaying: bool,
    /// Outbox events handed to the outlet in this session.
    pub(crate) events: u64,
}

impl<'a> Stream<'a> {
    pub(crate) fn new(
        config: &'a Config,
        outlet: Outlet<'a>,
        replaying: bool,
        telemetry: &'a Telemetry,
    ) -> Self {
        Stream {
            config,
            outlet,
            telemetry,
            shape: None,
            transaction: None,
            index_in_transaction: 0,
            routing_key: String::new(),
            dead_letter: None,
            unencodable_to: None,
            published_through: Lsn::ZERO,
            replaying,
            events: 0,
        }
    }

    /// Apply one change; an error says which side failed.
    pub(crate) async fn apply(&mut self, change: Change) -> SessionResult {
        let postgres = on(Side::Postgres);
        tracing::trace!(?change, "change");
        match change {
            Change::Begin(transaction) => {
                self.transaction = Some(transaction);
                self.index_in_transaction = 0;
            }
            Change::Commit { end_lsn } => {
                self.transaction = None;
                self.telemetry.metrics.transaction();
                self.telemetry.metrics.received(end_lsn);
                self.boundary(end_lsn).await?;
            }
            // Between transactions, the server has sent everything before `wal_end`; once
            // what came before is confirmed, PostgreSQL may release it. This keeps an idle
            // outbox on a busy database from pinning WAL.
            Change::Keepalive { wal_end } if self.transaction.is_none() => {
                self.telemetry.metrics.received(wal_end);
                self.boundary(wal_end).await?;
            }
            Change::Keepalive { .. } => {}
            Change::Message(Message::Relation(relation)) => {
                let table = &self.config.table;
                let named = relation.namespace == table.schema.as_str()
                    && relation.name == table.name.as_str();
                // A rename keeps the relation id: the table is still the outbox being relayed.
                let same_table = self
                    .shape
                    .as_ref()
                    .is_some_and(|s| s.relation_id() == relation.relation_id);
                if named || same_table {
                    let shape = OutboxShape::from_relation(&relation, &self.config.mapping)
                        .map_err(|problem| {
                            postgres(Error::definite(format!(
                                "the outbox table changed so that it can no longer be relayed: \
                             {problem}. Nothing after this point was acknowledged"
                            )))
                        })?;
                    self.shape = Some(shape);
                }
            }
            Change::Message(Message::Insert(insert)) => {
                let Some(shape) = self
                    .shape
                    .as_ref()
                    .filter(|s| s.relation_id() == insert.relation_id)
                else {
                    return Ok(());
                };
                let transaction = self.transaction.ok_or_else(|| {
                    postgres(Error::definite(
                        "an insert arrived outside a transaction (a walbox bug)",
                    ))
                })?;
                let index = self.index_in_transaction;
                self.index_in_transaction += 1;
                let built = shape.message(
                    &insert.new_tuple,
                    &transaction,
                    index,
                    &mut self.routing_key,
                );
                // A row that cannot become a message is handled like a poison event: with a
                // dead-letter exchange its record goes there in its place; without one walbox
                // stops on it rather than skip it.
                let (mut message, unencodable) = match (built, &self.unencodable_to) {
                    (Ok(message), _) => (message, false),
                    (Err(problem), Some(exchange)) => {
                        let event = shape.fallback(&insert.new_tuple, &transaction, index);
                        warn!(event_id = %event.id, commit_lsn = %transaction.commit_lsn,
                            %exchange, %problem,
                            "an outbox row cannot become a message; sending its dead-letter record in its place");
                        let plan = DeadLetter {
                            event_id: event.id.clone(),
                            commit_lsn: transaction.commit_lsn,
                            reason: format!("the row cannot become a message: {problem}"),
                            failures: 0,
                            exchange: exchange.clone(),
                            include_payload: true,
                        };
                        let record =
                            plan.record(&event, &transaction, &self.config.mapping.exchange_text());
                        (record, true)
                    }
                    (Err(problem), None) => {
                        return Err(postgres(Error::definite(format!(
                            "an outbox row in the transaction committed at {} cannot become an \
                             AMQP message: {problem}. walbox stops here rather than skip it; fix \
                             the row's data, skip past it with `walbox run --start-lsn` (after \
                             that commit), or give --dead-letter-exchange to send such rows there",
                            transaction.commit_lsn
                        ))));
                    }
                };
                if let Some(warning) = &message.headers_warning {
                    warn!(event_id = %message.id, "{warning}");
                }
                if self.replaying {
                    message.mark_replayed();
                }
                self.events += 1;
                let Outlet::Broker {
                    sink,
                    pending,
                    window,
                } = &self.outlet
                else {
                    return Ok(());
                };
                let (message, dead_letter) = match &self.dead_letter {
                    _ if unencodable => (message, true),
                    Some(plan) if plan.is(&message.id, transaction.commit_lsn) => {
                        warn!(event_id = %message.id, commit_lsn = %transaction.commit_lsn,
                            exchange = %plan.exchange, "sending the poison event's dead-letter record in its place");
                        (
                            plan.record(
                                &message,
                                &transaction,
                                &self.config.mapping.exchange_text(),
                            ),
                            true,
                        )
                    }
                    _ => (message, false),
                };
                let amqp = on(Side::Amqp);
                let permit = Arc::clone(window)
                    .acquire_owned()
                    .await
                    .map_err(|_| amqp(Error::transient("in-flight window closed")))?;
                let event_id = message.id.clone();
                self.published_through = self.published_through.max(transaction.commit_lsn);
                let sending = sink.publish(message).await.map_err(amqp)?;
                self.telemetry.metrics.published();
                pending
                    .send(Pending::Published {
                        sending,
                        permit,
                        event_id,
                        commit_lsn: transaction.commit_lsn,
                        commit_time_micros: transaction.commit_time_micros,
                        dead_letter,
                    })
                    .await
                    .map_err(|_| amqp(Error::transient("the confirm tracker stopped")))?;
            }
            // Updates, deletes, truncates, types, origins, messages: not outbox events.
            Change::Message(_) => {}
        }
        Ok(())
    }

    /// Tell the tracker that everything handed over so far lies before `lsn`.
    async fn boundary(&self, lsn: Lsn) -> SessionResult {
        match &self.outlet {
            Outlet::Broker { pending, .. } => pending
                .send(Pending::Boundary(lsn))
                .await
                .map_err(|_| (Side::Amqp, Error::transient("the confirm tracker stopped"))),
            Outlet::Count => Ok(()),
        }
    }
}
