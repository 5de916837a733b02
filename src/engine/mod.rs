//! The live relay's supervisor: runs one session after another with the [`session`] engine,
//! and decides between them: transient failures restart with backoff from the slot's
//! confirmed position, a slot held by another walbox means standing by, a refused event goes
//! to [`poison`], definite failures stop walbox.
//!
//! Within a session, data flows down: changes from the slot become messages ([`stream`]),
//! messages go to the publisher, their confirms and the transaction boundaries go to the
//! tracker. The only thing that flows back is the watermark's flush LSN, which the live policy
//! acknowledges to the slot.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Semaphore;
use tracing::{info, warn};

use crate::backfill::{self, Phase};
use crate::config::{Config, RunConfig};
use crate::control::{Control, Ensured, SlotCreation};
use crate::error::{Disposition, Error, Result};
use crate::lsn::Lsn;
use crate::publish::Publisher;

use crate::publish::stream::{StreamPublisher, declare as declare_stream};
use crate::publish::target::Target;
use crate::source::{Change, Confirmed, Origin, Source, Started};
use crate::telemetry::{RelayState, Side, Telemetry};

pub(crate) mod backoff;
pub(crate) mod guard;
pub(crate) mod poison;
pub(crate) mod session;
pub(crate) mod stream;
pub(crate) mod tables;
#[cfg(test)]
mod tests;

use backoff::Backoff;
use guard::Guard;
use poison::Poison;
use session::{Admit, End, Policy, Session};
pub(crate) use session::{Changes, Shutdown};

/// Relay until `shutdown` fires (Ok) or a definite error (Err).
pub(crate) async fn run(
    config: &Config,
    run: &RunConfig,
    mut shutdown: Shutdown,
    telemetry: Arc<Telemetry>,
) -> Result<()> {
    let mut supervisor = Supervisor::new(config, run, &telemetry);
    loop {
        let outcome = supervisor.session(&mut shutdown).await;
        telemetry.metrics.session_ended();
        let Err(failure) = outcome else {
            return Ok(());
        };
        let delay = supervisor.delay_after(failure)?;
        if !wait(delay, &mut shutdown, &telemetry, &mut supervisor.guard).await? {
            return Ok(());
        }
        supervisor.first = false;
    }
}

/// Wait `delay` before the next session, proving the supervisor turns meanwhile; false when
/// shutdown was asked for instead, the guard's error when it tripped.
async fn wait(
    delay: Duration,
    shutdown: &mut Shutdown,
    telemetry: &Telemetry,
    guard: &mut Option<Guard>,
) -> Result<bool> {
    let waited = tokio::time::sleep(delay);
    tokio::pin!(waited);
    let mut heartbeat = tokio::time::interval(HEARTBEAT);
    loop {
        tokio::select! {
            _ = &mut waited => return Ok(true),
            _ = heartbeat.tick() => telemetry.health.beat(),
            _ = shutdown.wait_for(|stop| *stop) => return Ok(false),
            tripped = guard_tripped(guard) => return Err(tripped),
        }
    }
}

/// Resolves with the guard's definite error when it trips; never without a guard.
async fn guard_tripped(guard: &mut Option<Guard>) -> Error {
    if let Some(guard) = guard {
        loop {
            match guard.changed().await {
                Err(error) if !error.is_transient() => return error,
                _ => {}
            }
        }
    }
    std::future::pending().await
}

/// How often a standby walbox tries to take the slot over.
const STANDBY_POLL: Duration = Duration::from_secs(1);
/// How often the supervisor proves it turns (/healthz) while it waits to retry.
const HEARTBEAT: Duration = Duration::from_secs(1);

/// A session's failure, and which connection's failure ended it.
#[derive(Debug)]
pub(crate) struct Failure {
    pub(crate) side: Side,
    pub(crate) error: Error,
}

impl Failure {
    pub(crate) fn new(side: Side, error: Error) -> Self {
        Failure { side, error }
    }
}

/// Why a session ended.
pub(crate) type SessionResult = std::result::Result<(), Failure>;

impl Changes for Source {
    async fn next(&mut self) -> Result<Option<Change>> {
        Source::next(self).await
    }

    fn acknowledge(&self, lsn: Lsn) {
        Source::acknowledge(self, lsn)
    }
}

/// The live relay's policy: every change is applied; the flush LSN is acknowledged to the
/// slot and tells the poison bookkeeping how far the relay got.
struct Live<'a> {
    config: &'a Config,
    telemetry: &'a Telemetry,
    poison: &'a mut Poison,
    /// The in-flight window: 1 while isolating a refused message, widened once past it.
    window: Arc<Semaphore>,
    careful: bool,
}

impl Live<'_> {
    /// Halted stays halted (not ready) while walbox retries its poison event.
    fn streaming(&self) -> RelayState {
        match self.poison.halted_on() {
            Some(_) => RelayState::Halted,
            None => RelayState::Streaming,
        }
    }
}

impl Policy for Live<'_> {
    const ACKNOWLEDGES: bool = true;

    fn admit(&mut self, _change: &Change) -> Admit {
        Admit::Apply
    }

    fn flushed(&mut self, flushed: Lsn) {
        self.telemetry.metrics.flushed(flushed);
        let progress = self.poison.progressed(flushed);
        if let Some(passed) = progress.passed {
            info!(event_id = %passed.event_id, commit_lsn = %passed.commit_lsn,
                "past the event the broker had refused");
            self.telemetry.health.set_state(self.streaming());
        }
        if progress.careful_ended && self.careful {
            self.careful = false;
            self.window
                .add_permits(self.config.max_in_flight.saturating_sub(1));
        }
    }

    fn beat(&mut self) {
        self.telemetry.health.beat();
    }
}

/// What the supervisor keeps across the sessions of one `walbox run`.
struct Supervisor<'a> {
    config: &'a Config,
    run: &'a RunConfig,
    telemetry: &'a Arc<Telemetry>,
    /// The first session may create the slot and applies `--start-lsn`.
    first: bool,
    standing_by: bool,
    backoff: Backoff,
    /// What this process acknowledged (confirmed by the broker, and proven by the guard):
    /// PostgreSQL before 17 saves a logical slot's confirmed position only at some
    /// checkpoints, so after a server restart the slot can be behind what was already
    /// confirmed. Resuming from here instead avoids re-sending those events.
    confirmed_here: Lsn,
    /// The server history `confirmed_here` lies on: the cluster and timeline of the last
    /// session's server. After a failover it is checked against the new primary's history.
    confirmed_on: Option<Origin>,
    poison: Poison,
    /// One guard for the whole process, started once the first session found the publication
    /// in order, so the proof that it covers the table runs on without a gap from session to
    /// session.
    guard: Option<Guard>,
}

impl<'a> Supervisor<'a> {
    fn new(config: &'a Config, run: &'a RunConfig, telemetry: &'a Arc<Telemetry>) -> Self {
        Supervisor {
            config,
            run,
            telemetry,
            first: true,
            standing_by: false,
            backoff: Backoff::new(Duration::from_millis(200), run.max_retry_delay),
            confirmed_here: Lsn::ZERO,
            confirmed_on: None,
            poison: Poison::new(run.poison_after, run.dead_letter_exchange.clone()),
            guard: None,
        }
    }

    /// How long to wait before the next session after `failure`, or the error that stops
    /// walbox.
    fn delay_after(&mut self, Failure { side, error }: Failure) -> Result<Duration> {
        let telemetry = self.telemetry;
        Ok(match (error.disposition(), error) {
            (Disposition::Stop | Disposition::Usage, error) => return Err(error),
            (Disposition::StandBy, reason) => {
                if !self.standing_by {
                    info!(%reason, "standing by: another walbox holds the slot; taking over when it is released");
                    self.standing_by = true;
                }
                telemetry.health.set_state(RelayState::StandingBy);
                STANDBY_POLL
            }
            (Disposition::Poison, Error::Refused(refusal)) => {
                self.standing_by = false;
                telemetry.metrics.reconnect(side);
                telemetry.metrics.poison_refusal();
                let delay = self.backoff.next_delay();
                telemetry
                    .health
                    .set_state(self.poison.handle_refusal(refusal, delay));
                delay
            }
            (Disposition::Retry | Disposition::Poison, reason) => {
                self.standing_by = false;
                if let Error::Held(held) = &reason {
                    self.poison.held(held.commit_lsn);
                }
                telemetry.health.set_state(match self.poison.halted_on() {
                    Some(_) => RelayState::Halted,
                    None => RelayState::Reconnecting,
                });
                telemetry.metrics.reconnect(side);
                let delay = self.backoff.next_delay();
                warn!(%reason, side = side.name(), retry_in_ms = delay.as_millis() as u64, "session ended; reconnecting");
                delay
            }
        })
    }

    /// One connected session: the cut-over backfill if one is owed, both connections, then
    /// the engine until it ends.
    async fn session(&mut self, shutdown: &mut Shutdown) -> SessionResult {
        if self.cut_over(shutdown).await? == Phase::Stopped {
            return Ok(());
        }
        // Connecting can take long (a node that does not answer, a server starting up); a
        // stop request ends it. Nothing was published yet, so nothing is lost.
        let connected = tokio::select! {
            connected = self.connect() => connected?,
            _ = shutdown.wait_for(|stop| *stop) => return Ok(()),
        };
        let (source, publisher, start) = connected;
        self.relay(source, publisher, start, shutdown).await
    }

    /// Send what a cut-over backfill owes before anything is relayed from the slot (nothing,
    /// unless walbox creates the slot with `--backfill` or an earlier backfill is unfinished).
    async fn cut_over(&mut self, shutdown: &mut Shutdown) -> std::result::Result<Phase, Failure> {
        let create = self.slot_creation();
        let (backfill, grace) = (self.run.backfill.as_ref(), self.run.shutdown_grace);
        backfill::cut_over(
            self.config,
            backfill,
            create,
            grace,
            shutdown,
            self.telemetry,
        )
        .await
        .map_err(|error| match error {
            Error::Amqp(_) => amqp(error),
            _ => postgres(error),
        })
    }

    /// Who may make a missing slot: the first session, unless the server was promoted.
    fn slot_creation(&self) -> SlotCreation {
        if self.first {
            SlotCreation::UnlessPromoted
        } else {
            SlotCreation::Never
        }
    }

    /// Prepare the publication and slot, connect the publisher, and start replication from
    /// where this session resumes (returned).
    async fn connect(&mut self) -> std::result::Result<(Source, Target, Lsn), Failure> {
        let (config, first) = (self.config, self.first);
        let control = Control::connect(config).await.map_err(postgres)?;
        let prepared = control
            .prepare(config, self.slot_creation())
            .await
            .map_err(postgres)?;
        if first {
            if prepared.publication == Ensured::Created {
                info!(publication = %config.publication, table = %config.table, "created publication");
            }
            if prepared.slot == Ensured::Created {
                info!(slot = %config.slot, "created replication slot");
            }
        }
        // The apply step needs the outbox table the guard proved before the first Relation.
        let telemetry = self.telemetry;
        let mut guard = self
            .guard
            .get_or_insert_with(|| Guard::spawn(config, Arc::clone(telemetry)))
            .clone();
        guard.established().await.map_err(postgres)?;
        let confirmed = prepared.slot_info.confirmed_flush().unwrap_or(Lsn::ZERO);
        let start = self.resume_from(confirmed)?;
        let dead_letter_exchange = self.run.dead_letter_exchange.as_deref();
        let publisher =
            connect_publisher(config, dead_letter_exchange, control, first, self.telemetry).await?;
        let (source, start) = self.start_source(start).await?;
        if first
            && self
                .run
                .start_lsn
                .is_some_and(|skip_to| skip_to > confirmed)
        {
            warn!(from = %confirmed, to = %start, "skipping ahead: events committed before --start-lsn are not relayed");
        }
        if self.telemetry.health.state() == RelayState::StandingBy {
            info!(slot = %config.slot, "took over: the other walbox released the slot");
        }
        if !config.messages.is_empty() {
            info!(prefixes = ?config.messages.patterns(), "relaying logical decoding messages");
        }
        match &config.stream {
            None => {
                info!(slot = %config.slot, from = %start, exchange = %config.mapping.exchange, "streaming")
            }
            Some(target) => {
                info!(slot = %config.slot, from = %start, stream = %target.stream, "streaming")
            }
        }
        Ok((source, publisher, start))
    }

    /// What this process saw confirmed, and on which server history (None before anything).
    fn known(&self) -> Option<Confirmed> {
        let on = self.confirmed_on.clone()?;
        (self.confirmed_here > Lsn::ZERO).then_some(Confirmed {
            through: self.confirmed_here,
            on,
        })
    }

    /// Start streaming from `start`; or, when a failover forked the server's history before
    /// it, from the slot's own position on the new primary (said in the log). Returns where
    /// the session streams from.
    async fn start_source(&mut self, start: Lsn) -> std::result::Result<(Source, Lsn), Failure> {
        let config = self.config;
        let known = self.known();
        let started = Source::start(config, start, known.as_ref());
        let (source, origin, start) = match started.await.map_err(postgres)? {
            Started::Streaming(source, origin) => (source, origin, start),
            Started::Forked(fork) => {
                warn!(slot = %config.slot, forked_at = %fork.at.map_or_else(|| "none".to_owned(), |at| at.to_string()), confirmed_before = %fork.confirmed,
                    resume_from = %fork.slot, "{}", fork.describe());
                // What this process confirmed on the old history says nothing on the new one.
                self.confirmed_here = Lsn::ZERO;
                let here = Confirmed {
                    through: fork.slot,
                    on: fork.now.clone(),
                };
                match Source::start(config, fork.slot, Some(&here))
                    .await
                    .map_err(postgres)?
                {
                    Started::Streaming(source, origin) => (source, origin, fork.slot),
                    Started::Forked(again) => {
                        return Err(postgres(Error::transient(format!(
                            "the primary changed again while walbox resumed after a failover: {}",
                            again.describe()
                        ))));
                    }
                }
            }
        };
        self.follow(&origin, start);
        self.confirmed_on = Some(origin);
        Ok((source, start))
    }

    /// Tell the guard which server the session streams from: a proof read on another one
    /// (the primary before a failover) acknowledges nothing here until a reading on this one
    /// passes, and walbox is not ready meanwhile.
    fn follow(&self, origin: &Origin, start: Lsn) {
        let Some(guard) = &self.guard else {
            return;
        };
        if guard.follow(origin.clone(), start) {
            self.telemetry.health.set_unproven(true);
            info!(system_id = %origin.system_id, timeline = origin.timeline, resume_from = %start,
                "the session reached another server than the guard's last reading: acknowledging nothing until a reading on it passes");
        }
    }

    /// Where this session starts reading, given the slot's `confirmed` position: `--start-lsn`
    /// on the first session, and never before what this process saw confirmed.
    fn resume_from(&self, confirmed: Lsn) -> std::result::Result<Lsn, Failure> {
        // A --start-lsn behind the slot skips nothing: the slot has already passed it (usually a
        // WALBOX_START_LSN left in a deployment after the skip it was for). Refusing it would
        // make every later start fail; resuming from the slot loses nothing.
        if self.first
            && let Some(skip_to) = self.run.start_lsn.filter(|skip_to| *skip_to < confirmed)
        {
            warn!(start_lsn = %skip_to, slot_position = %confirmed,
                "--start-lsn is behind the slot's confirmed position, so there is nothing to skip: resuming from the slot's position (a logical slot cannot go back; `walbox replay` publishes past events again). Remove --start-lsn / WALBOX_START_LSN once the skip it was for is done");
        }
        let start = self
            .run
            .start_lsn
            .map_or(confirmed, |skip_to| skip_to.max(confirmed));
        if self.confirmed_here > start {
            info!(slot_position = %confirmed, resume_from = %self.confirmed_here,
                "the slot's saved position is behind what this walbox saw confirmed (PostgreSQL restarted, or the last session was cut short); resuming from the confirmed position");
            return Ok(self.confirmed_here);
        }
        Ok(start)
    }

    /// The next session's in-flight window, and whether it is careful: while isolating a
    /// refused message or retrying a held one, one message at a time; the full window once
    /// the flush LSN is past it.
    fn window(&self) -> (Arc<Semaphore>, bool) {
        let careful = self.poison.careful();
        let permits = if careful {
            1
        } else {
            self.config.max_in_flight
        };
        (Arc::new(Semaphore::new(permits)), careful)
    }

    /// Run the engine over the connected session until it stops or fails, then tear it down.
    async fn relay(
        &mut self,
        source: Source,
        publisher: Target,
        start: Lsn,
        shutdown: &mut Shutdown,
    ) -> SessionResult {
        let (config, telemetry) = (self.config, self.telemetry);
        telemetry.metrics.flushed(start);
        let (window, careful) = self.window();
        let mut session = Session::start(
            config,
            source,
            publisher,
            start,
            Arc::clone(&window),
            false,
            telemetry,
        );
        let mut guard = self.guard.clone().ok_or_else(|| {
            postgres(Error::definite(
                "a session started without the guard (a walbox bug)",
            ))
        })?;
        session.guard_with(guard.clone());
        session.stream_mut().dead_letter = self.poison.dead_letter();
        session.stream_mut().unencodable_to = self.run.dead_letter_exchange.clone();
        let mut live = Live {
            config,
            telemetry,
            poison: &mut self.poison,
            window,
            careful,
        };
        telemetry.health.set_state(live.streaming());
        let end = session.run(&mut live, shutdown).await;
        self.poison
            .note_published(session.stream().published_through);
        // A session that moved the flush position made progress: the next failure is a new
        // one, retried quickly. One that failed before confirming anything keeps backing off,
        // so an unroutable or refused event does not turn into a reconnect storm.
        if session.flushed() > start {
            self.backoff.reset();
        }
        // What was acknowledged, not what was confirmed: past the guard's proof nothing is
        // known.
        self.confirmed_here = self.confirmed_here.max(session.acknowledged());
        match end {
            End::Stopped | End::Finished => {
                let final_lsn = stop(session, self.run.shutdown_grace, &mut guard, telemetry).await;
                self.confirmed_here = self.confirmed_here.max(final_lsn);
                Ok(())
            }
            End::Failed(failure) => {
                let (source, publisher) = session.abort();
                drop(source);
                // A broker that blocks publishers answers no close: do not wait for it
                // (the next session, or a stop request, must not hang here).
                let _ = tokio::time::timeout(CLOSING, publisher.close()).await;
                Err(failure)
            }
        }
    }
}

/// Connect the session's publisher (declaring the dead-letter exchange or the stream it
/// needs); `control` is closed before, or once the stream target read the end of WAL.
async fn connect_publisher(
    config: &Config,
    dead_letter_exchange: Option<&str>,
    control: Control,
    first: bool,
    telemetry: &Telemetry,
) -> std::result::Result<Target, Failure> {
    let Some(target) = &config.stream else {
        drop(control);
        return Target::connect_amqp(config, dead_letter_exchange)
            .await
            .map_err(amqp);
    };
    // The end of this server's WAL, for the rewound-LSN check.
    let ceiling = control.current_wal_lsn().await.map_err(postgres)?;
    drop(control);
    if first && target.declare && declare_stream(target).await.map_err(amqp)? {
        info!(stream = %target.stream, "created stream");
    }
    let publisher = StreamPublisher::connect(
        target,
        config.slot.as_str(),
        ceiling,
        telemetry.metrics.stream_deduplicated(),
    )
    .await
    .map_err(amqp)?;
    telemetry.metrics.stream_stored(publisher.stored_through());
    Ok(Target::Stream(publisher))
}

/// Graceful stop: no more reading; wait (at most `grace`) for outstanding confirms and a last
/// proof of the guard's, then tell PostgreSQL the final position, which is returned.
async fn stop(
    session: Session<'_, Source, Target>,
    grace: Duration,
    guard: &mut Guard,
    telemetry: &Telemetry,
) -> Lsn {
    telemetry.health.set_state(RelayState::Stopping);
    info!(
        grace_secs = grace.as_secs(),
        "stopping: waiting for outstanding confirms"
    );
    let drained = session.drain(Some(grace)).await;
    let confirmed = match drained.verdict {
        Ok(lsn) => lsn,
        Err(error) => {
            warn!(%error, "not every outstanding message was confirmed while stopping; they will be sent again on restart");
            drained.flushed
        }
    };
    // One more reading, so that the stop acknowledges all that was confirmed.
    let final_lsn = confirmed.min(guard.fresh(confirmed, FINAL_PROOF_WAIT).await);
    // A broker that blocks publishers does not answer a close either: both goodbyes together
    // take at most CLOSING. Cut short, PostgreSQL may not have heard the final position: the
    // events after its saved one are sent again on restart, never lost.
    let goodbyes = futures_util::future::join(
        drained.source.finish(final_lsn, CLOSING),
        drained.publisher.close(),
    );
    if tokio::time::timeout(CLOSING, goodbyes).await.is_err() {
        warn!(
            closing_secs = CLOSING.as_secs(),
            "the connections did not close in time; leaving them"
        );
    }
    info!(flushed = %final_lsn, %confirmed, "stopped");
    final_lsn
}

/// How long a stopping relay waits for the guard's last reading.
const FINAL_PROOF_WAIT: Duration = Duration::from_secs(1);

/// How long a graceful stop may take to close both connections, after the grace for
/// outstanding confirms.
const CLOSING: Duration = Duration::from_secs(3);

fn postgres(error: Error) -> Failure {
    Failure::new(Side::Postgres, error)
}

fn amqp(error: Error) -> Failure {
    Failure::new(Side::Amqp, error)
}
