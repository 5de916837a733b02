//! Sending rows that are already in the outbox table: the cut-over backfill, which runs before
//! the live relay when walbox creates its slot, and `walbox backfill`, which re-sends rows
//! later (after a lost slot or a recreated table).
//!
//! ```text
//!   CREATE_REPLICATION_SLOT … SNAPSHOT 'export' ──▶ consistent point C, snapshot S
//!        │                                              │
//!        ▼                                              ▼
//!   the slot streams what commits after C     rows selected in S (committed before C),
//!   (the live relay, started once the         in creation order ──▶ OutboxShape ──▶ broker
//!    backfill is done)                        progress ──▶ record (walbox_backfill)
//! ```
//!
//! The two sides meet at C, so a row is either in the snapshot or in the stream, never both
//! and never neither. The promise holds through a kill because of [`record`]: it is written
//! before the slot exists and says `done` only once every selected row was confirmed, and
//! while it does not, every start of walbox finishes the backfill before it relays anything
//! from the slot, so the slot's position cannot pass C with rows owed. A later attempt has
//! lost S (a snapshot lives as long as the session holding it): it reads in a new snapshot the
//! rows the predicate selects after the last confirmed row's key and up to the last key S
//! selected. Rows confirmed before are not sent again; rows that changed since S are read as
//! they are now: one the old publisher has since published and marked is not sent (it was
//! sent), one deleted since is gone (the guide says not to delete unsent rows during a
//! cut-over).

mod query;
mod reader;
pub(crate) mod record;
mod relay;

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::sync::watch;
use tokio_postgres::Client;
use tracing::{info, warn};

use crate::config::{BackfillConfig, Config, ResendConfig};
use crate::control::{Control, SlotCreation, connect_client};
use crate::error::{Error, Result};
use crate::outbox::template::TemplateError;
use crate::outbox::{Field, OutboxShape, ShapeError};
use crate::publish::Publisher;
use crate::publish::counting::CountingPublisher;
use crate::publish::target::Target;
use crate::shutdown::Shutdown;
use crate::telemetry::{RelayState, Telemetry};
use query::{Query, Range, Selection, Table};
use reader::Reader;
use record::{Record, Records, State, show_key};
pub(crate) use relay::Progress;
use relay::{End, Relay};

/// How often the record's progress is written while rows are confirmed.
const PROGRESS_EVERY: Duration = Duration::from_millis(250);

/// What the supervisor does after [`cut_over`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Phase {
    /// Nothing (more) is owed: relay from the slot.
    Live,
    /// Shutdown was asked for during the backfill.
    Stopped,
}

/// What [`cut_over`] has to do, decided from the slot and the record alone.
#[derive(Debug, PartialEq, Eq)]
enum Plan {
    /// Nothing to send first.
    Live,
    /// Create the slot with its exported snapshot and send what `predicate` selects in it.
    Fresh { predicate: String },
    /// The slot exists and its backfill is unfinished: finish it in a new snapshot.
    Resume,
    /// The slot of an unfinished backfill is gone, and this walbox may not make one.
    Lost,
}

/// Decide. `asked` is the configured backfill's predicate; `create` who may make the slot.
fn plan(
    slot_exists: bool,
    record: Option<&Record>,
    asked: Option<&str>,
    create: SlotCreation,
) -> Plan {
    let state = record.map(|record| record.state);
    match (slot_exists, state) {
        (true, Some(State::Creating | State::Sending)) => Plan::Resume,
        (true, _) => Plan::Live,
        // The cut-over began and its slot was never made: making it now skips nothing.
        (false, Some(State::Creating)) => Plan::Fresh {
            predicate: record.map(|r| r.predicate.clone()).unwrap_or_default(),
        },
        // The slot of an unfinished backfill vanished. A first start may begin the cut-over
        // again (a new slot, a new snapshot: what the predicate selects now is sent); a relay
        // that was running stops, as it does for any vanished slot.
        (false, Some(State::Sending)) if create != SlotCreation::Never => Plan::Fresh {
            predicate: asked
                .map(str::to_owned)
                .or_else(|| record.map(|r| r.predicate.clone()))
                .unwrap_or_default(),
        },
        (false, Some(State::Sending)) => Plan::Lost,
        (false, _) => match asked {
            Some(predicate) if create != SlotCreation::Never => Plan::Fresh {
                predicate: predicate.to_owned(),
            },
            _ => Plan::Live,
        },
    }
}

/// Before the live relay: send what a cut-over backfill owes, if anything. `create` says who
/// may make a missing slot, as for [`Control::prepare`].
pub(crate) async fn cut_over(
    config: &Config,
    asked: Option<&BackfillConfig>,
    create: SlotCreation,
    grace: Duration,
    shutdown: &mut Shutdown,
    telemetry: &Telemetry,
) -> Result<Phase> {
    let client = connect_client(config).await?;
    let records = Records {
        client: &client,
        table: record::table_of(&config.table),
    };
    let control = Control::connect(config).await?;
    let slot = control.slot(&config.slot).await?;
    // Read with or without the flags: a record this role may not read can be another role's
    // unfinished cut-over of this very slot (`walbox setup --backfill` run as the table's
    // owner), and relaying from the slot past it would skip the rows it owes.
    let record = records.get(config.slot.as_str()).await?;
    if let Some(error) = being_made(slot.as_ref(), record.as_ref(), &config.slot) {
        return Err(error);
    }
    let predicate = asked.map(|backfill| backfill.predicate.sql.as_str());
    let work = Work {
        config,
        records: &records,
        telemetry,
        grace,
    };
    match plan(slot.is_some(), record.as_ref(), predicate, create) {
        Plan::Live => {
            if asked.is_some() && slot.is_some() && create != SlotCreation::Never {
                info!(slot = %config.slot, "the slot exists, so there is no cut-over backfill (it runs when walbox creates the slot); `walbox backfill` re-sends rows from the table");
            }
            Ok(Phase::Live)
        }
        Plan::Lost => Err(Error::definite(format!(
            "replication slot {} disappeared while its cut-over backfill was unfinished: \
             someone dropped it. walbox does not recreate it by itself, because events \
             committed since then would be skipped without notice. Run `walbox setup` (with \
             the backfill's flags) to begin the cut-over again once you have accounted for \
             those events",
            config.slot
        ))),
        Plan::Fresh { predicate } => {
            if record.as_ref().is_some_and(|r| r.state == State::Sending) {
                warn!(slot = %config.slot, "the slot of an unfinished cut-over backfill is gone; beginning the cut-over again with a new slot");
            }
            work.fresh(&control, &predicate, create, shutdown).await
        }
        Plan::Resume => {
            let record = record.expect("a record to resume");
            drop(control);
            work.resume(record, shutdown).await
        }
    }
}

/// A slot of a cut-over still `creating` that some session holds may still be in the making:
/// a walbox killed while CREATE_REPLICATION_SLOT waited for the transactions running when it
/// began leaves its walsender waiting on them, not on its client, and that walsender makes the
/// slot (its consistent point later than now) or drops it only once they end. Taking it for
/// made would read the rows in a snapshot older than its consistent point (the rows committed
/// in between in neither) and then relay from a slot that may vanish, so stand by until it is
/// released.
fn being_made(
    slot: Option<&crate::control::SlotInfo>,
    record: Option<&Record>,
    name: &crate::config::Identifier,
) -> Option<Error> {
    let slot = slot.filter(|slot| slot.active)?;
    record.filter(|record| record.state == State::Creating)?;
    Some(Error::stand_by(format!(
        "replication slot {name} of an unfinished cut-over backfill is held by server process \
         {} (an earlier walbox's CREATE_REPLICATION_SLOT, still waiting for the transactions \
         running when it began?); waiting until it is made and released, or dropped",
        slot.active_pid
            .map_or("?".to_owned(), |pid| pid.to_string())
    )))
}

/// What one attempt works with.
struct Work<'a> {
    config: &'a Config,
    records: &'a Records<'a>,
    telemetry: &'a Telemetry,
    grace: Duration,
}

impl Work<'_> {
    /// Wait for `work` (a step that can take long: waiting for the slot's consistent point,
    /// counting and sorting a big table, a broker node that does not answer), proving the loop
    /// turns meanwhile. None when a stop is asked for first: nothing was sent in this attempt
    /// yet, and the record says what the next start does.
    async fn beating<T>(
        &self,
        shutdown: &mut Shutdown,
        work: impl std::future::Future<Output = Result<T>>,
    ) -> Result<Option<T>> {
        tokio::pin!(work);
        let mut heartbeat = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                done = &mut work => return done.map(Some),
                _ = heartbeat.tick() => self.telemetry.health.beat(),
                _ = shutdown.wait_for(|stop| *stop) => return Ok(None),
            }
        }
    }

    /// Take the slot's backfill for this process, or stand by.
    async fn lock(&self) -> Result<()> {
        if self.records.lock(self.config.slot.as_str()).await? {
            return Ok(());
        }
        Err(Error::stand_by(format!(
            "another walbox is running the backfill of slot {}",
            self.config.slot
        )))
    }

    /// The cut-over: create the slot exporting its snapshot, read the rows in it, send them.
    async fn fresh(
        &self,
        control: &Control,
        predicate: &str,
        create: SlotCreation,
        shutdown: &mut Shutdown,
    ) -> Result<Phase> {
        let (config, slot) = (self.config, self.config.slot.as_str());
        control.prepare_publication(config).await?;
        if create == SlotCreation::UnlessPromoted
            && let Some(error) =
                Control::refuse_slot_on_promoted_server(config, control.timeline().await?)
        {
            return Err(error);
        }
        self.records.ensure_table().await?;
        self.lock().await?;
        // Written before the slot exists: from the moment it does, a start finds the record.
        self.records.begin(slot, predicate).await?;
        let version = control.server_version_num().await?;
        let exporting = crate::source::create_slot_exporting_snapshot(config, version);
        let Some(exported) = self.beating(shutdown, exporting).await? else {
            return Ok(Phase::Stopped);
        };
        let consistent = exported.consistent_point;
        info!(%slot, consistent_point = %consistent, "created replication slot; its exported snapshot holds the rows committed before the consistent point, the slot streams the rest");
        let reader = Reader::open(config, Some(&exported.snapshot)).await?;
        // The reader's transaction holds the snapshot now; the exporting session may go.
        drop(exported);
        let (table, shape, key) = self.shape(&reader).await?;
        let selection = Selection {
            predicate: Some(predicate.to_owned()),
            ..Selection::default()
        };
        let query = Query {
            table: &table,
            key: &key,
            selection: &selection,
        };
        let counted = async { Ok((reader.count(&query).await?, reader.last_key(&query).await?)) };
        let Some((expected, end_key)) = self.beating(shutdown, counted).await? else {
            return Ok(Phase::Stopped);
        };
        let snapshot = reader.snapshot().await?;
        self.records
            .sending(
                slot,
                &consistent.to_string(),
                &snapshot,
                end_key.as_ref(),
                expected,
            )
            .await?;
        info!(%slot, rows = expected, predicate, %snapshot, "backfill: sending the rows the cut-over's snapshot selects, in creation order");
        self.send(reader, &query, &shape, 0, expected, shutdown)
            .await
    }

    /// An unfinished backfill after a restart: the rest, read in a new snapshot.
    async fn resume(&self, record: Record, shutdown: &mut Shutdown) -> Result<Phase> {
        let slot = self.config.slot.as_str();
        self.lock().await?;
        let nothing_owed = record.state == State::Sending
            && record.rows_expected == Some(0)
            && record.end_key.is_none();
        if nothing_owed {
            self.records.done(slot).await?;
            return Ok(Phase::Live);
        }
        self.records.attempt(slot).await?;
        let reader = Reader::open(self.config, None).await?;
        let (table, shape, key) = self.shape(&reader).await?;
        let selection = Selection {
            predicate: Some(record.predicate.clone()),
            after: record.last_key.clone(),
            through: record.end_key.clone(),
            ranges: Vec::new(),
        };
        let query = Query {
            table: &table,
            key: &key,
            selection: &selection,
        };
        let Some(remaining) = self.beating(shutdown, reader.count(&query)).await? else {
            return Ok(Phase::Stopped);
        };
        let before = record.rows_confirmed;
        match (&record.last_key, &record.end_key) {
            (Some(after), _) => {
                info!(%slot, attempt = record.attempts + 1, confirmed_before = before, resume_after = %show_key(after), through = %record.end_key.as_ref().map_or("the end".to_owned(), show_key), rows = remaining,
                "resuming the unfinished backfill in a new snapshot (the cut-over's is gone): the rows after the last confirmed one")
            }
            (None, _) => {
                info!(%slot, attempt = record.attempts + 1, through = %record.end_key.as_ref().map_or("the end".to_owned(), show_key), rows = remaining,
                "redoing the unfinished backfill from its first row in a new snapshot (the cut-over's is gone; no row had been confirmed)")
            }
        }
        self.send(reader, &query, &shape, before, before + remaining, shutdown)
            .await
    }

    /// The table, the shape its rows become messages through, and the order key.
    async fn shape(&self, reader: &Reader) -> Result<(Table, OutboxShape, Vec<usize>)> {
        let table = reader.table(&self.config.table).await?;
        let shape = shape_of(self.config, &table)?;
        let key = order_key(&shape)?;
        Ok((table, shape, key))
    }

    /// Publish what `query` selects, keeping the record's progress; `before` rows were
    /// confirmed by earlier attempts, `expected` is the total.
    async fn send(
        &self,
        reader: Reader,
        query: &Query<'_>,
        shape: &OutboxShape,
        before: i64,
        expected: i64,
        shutdown: &mut Shutdown,
    ) -> Result<Phase> {
        let (config, slot, telemetry) = (self.config, self.config.slot.as_str(), self.telemetry);
        let Some(publisher) = self
            .beating(shutdown, Target::connect_amqp(config, None))
            .await?
        else {
            return Ok(Phase::Stopped);
        };
        telemetry.health.set_state(RelayState::Backfilling);
        telemetry.metrics.backfill_started(expected, before);
        let began = Instant::now();
        let (progress, watched) = watch::channel(Progress::default());
        let relay = Relay {
            shape,
            publisher: &publisher,
            max_in_flight: config.max_in_flight,
            read_at_micros: postgres_now_micros(),
            unroutable: &config.unroutable,
            telemetry,
            progress: &progress,
            dropped_on: Default::default(),
        };
        let id = shape.whole_column(Field::Id).expect("checked by order_key");
        let (batches, reading) = reader.read(query, id);
        let outcome = tokio::select! {
            end = relay.run(batches, shutdown, self.grace) => end,
            failed = keep(self.records, slot, before, watched) => failed.map(|()| End::Stopped),
        };
        let end = finish_reading(outcome, reading).await;
        telemetry.metrics.backfill_ended();
        let done = progress.borrow().clone();
        if let Some(key) = &done.last_key {
            self.records
                .progress(slot, key, before + done.rows_confirmed)
                .await?;
        }
        close(publisher).await;
        match end? {
            End::Finished => {
                self.records.done(slot).await?;
                info!(%slot, rows = done.rows_confirmed, seconds = began.elapsed().as_secs_f64(), confirmed_in_all = before + done.rows_confirmed, "backfill done: every row it owed was confirmed; the live relay starts");
                Ok(Phase::Live)
            }
            End::Stopped => {
                info!(%slot, confirmed = before + done.rows_confirmed, "stopped during the backfill; the next start resumes it");
                Ok(Phase::Stopped)
            }
        }
    }
}

/// Close the broker connection, waiting at most [`CLOSING`]: a broker that blocks publishers
/// (a memory alarm) answers no close either.
async fn close(publisher: Target) {
    if tokio::time::timeout(CLOSING, publisher.close())
        .await
        .is_err()
    {
        warn!("the broker connection did not close in time; leaving it");
    }
}

/// How long closing the broker connection may take after the backfill stopped.
const CLOSING: Duration = Duration::from_secs(3);

/// The relay's end, checked against the reading task: rows that stopped coming because the
/// read failed are a failure, not the end of the table.
async fn finish_reading(
    outcome: Result<End>,
    reading: tokio::task::JoinHandle<Result<()>>,
) -> Result<End> {
    match outcome {
        Ok(End::Finished) => match reading.await {
            Ok(Ok(())) => Ok(End::Finished),
            Ok(Err(error)) => Err(error),
            Err(error) => Err(Error::transient(format!("the backfill's reader: {error}"))),
        },
        other => {
            reading.abort();
            other
        }
    }
}

/// Write the progress to the record about four times a second while the relay runs (what a
/// kill makes walbox send again is what the broker confirmed since the last write). Returns
/// only when a write fails.
async fn keep(
    records: &Records<'_>,
    slot: &str,
    before: i64,
    mut progress: watch::Receiver<Progress>,
) -> Result<()> {
    let mut tick = tokio::time::interval(PROGRESS_EVERY);
    loop {
        tick.tick().await;
        if !progress.has_changed().unwrap_or(false) {
            continue;
        }
        let now = progress.borrow_and_update().clone();
        if let Some(key) = &now.last_key {
            records
                .progress(slot, key, before + now.rows_confirmed)
                .await?;
        }
    }
}

/// The message shape of the table's rows, as the live relay would build it.
fn shape_of(config: &Config, table: &Table) -> Result<OutboxShape> {
    OutboxShape::from_relation(&table.relation(), &config.mapping).map_err(
        |problem| match problem {
            ShapeError::Template {
                error: TemplateError::UnknownPlaceholder { .. },
                ..
            } => Error::usage(format!("{problem} {}", config.table)),
            other => Error::definite(other),
        },
    )
}

/// The order key: created_at (when mapped to a whole column), then the id. A backfilled
/// message must carry the `message_id` the row has live, so the id must be a column.
fn order_key(shape: &OutboxShape) -> Result<Vec<usize>> {
    let id = shape.whole_column(Field::Id).ok_or_else(|| {
        Error::usage(
            "the backfill needs the table's id as a column of its own (--columns id=…): a \
             backfilled message carries the message_id the row has live, and without an id \
             column that is derived from the insert's WAL position, which a row read from the \
             table does not have",
        )
    })?;
    Ok(match shape.whole_column(Field::CreatedAt) {
        Some(created_at) if created_at != id => vec![created_at, id],
        _ => vec![id],
    })
}

/// Now, in PostgreSQL's microseconds (since 2000-01-01), as commit times are.
fn postgres_now_micros() -> i64 {
    const POSTGRES_EPOCH_UNIX_SECONDS: i64 = 946_684_800;
    let unix = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_micros() as i64);
    unix - POSTGRES_EPOCH_UNIX_SECONDS * 1_000_000
}

/// How far a re-send got, for its display and summary.
#[derive(Clone, Debug, Default)]
pub(crate) struct ResendProgress {
    pub(crate) expected: i64,
    pub(crate) progress: Progress,
}

/// `walbox backfill`: send again the rows `resend` selects, in a snapshot of their own, in
/// creation order; the slot and the live relay are not involved. Failures name where to
/// resume.
pub(crate) async fn resend(
    config: &Config,
    resend: &ResendConfig,
    shown: watch::Sender<ResendProgress>,
    mut shutdown: Shutdown,
) -> Result<ResendProgress> {
    let reader = Reader::open(config, None).await?;
    let table = reader.table(&config.table).await?;
    let shape = shape_of(config, &table)?;
    let key = order_key(&shape)?;
    let selection = resend_selection(resend, &shape)?;
    let query = Query {
        table: &table,
        key: &key,
        selection: &selection,
    };
    let expected = reader.count(&query).await?;
    shown.send_modify(|shown| shown.expected = expected);
    let (progress, watched) = watch::channel(Progress::default());
    let resending = Resending {
        config,
        shape: &shape,
        query: &query,
        progress: &progress,
        shown: &shown,
    };
    let outcome = if resend.dry_run {
        resending
            .publish(
                reader,
                &CountingPublisher::default(),
                watched,
                &mut shutdown,
            )
            .await
    } else {
        let publisher = Target::connect_amqp(config, None).await?;
        let end = resending
            .publish(reader, &publisher, watched, &mut shutdown)
            .await;
        publisher.close().await;
        end
    };
    let done = ResendProgress {
        expected,
        progress: progress.borrow().clone(),
    };
    shown.send_replace(done.clone());
    match outcome {
        Ok(End::Finished) => Ok(done),
        Ok(End::Stopped) => Err(Error::definite(format!(
            "interrupted; {}",
            resume_hint(&done.progress, &key, &table)
        ))),
        Err(error) => Err(Error::definite(format!(
            "the backfill stopped: {error}. {}",
            resume_hint(&done.progress, &key, &table)
        ))),
    }
}

/// A re-send's parts, for publishing with either publisher.
struct Resending<'a> {
    config: &'a Config,
    shape: &'a OutboxShape,
    query: &'a Query<'a>,
    progress: &'a watch::Sender<Progress>,
    shown: &'a watch::Sender<ResendProgress>,
}

impl Resending<'_> {
    /// Publish every selected row through `publisher`, forwarding the progress to the display.
    async fn publish<P: Publisher>(
        &self,
        reader: Reader,
        publisher: &P,
        mut watched: watch::Receiver<Progress>,
        shutdown: &mut Shutdown,
    ) -> Result<End> {
        let telemetry = Telemetry::default();
        let relay = Relay {
            shape: self.shape,
            publisher,
            max_in_flight: self.config.max_in_flight,
            read_at_micros: postgres_now_micros(),
            unroutable: &self.config.unroutable,
            telemetry: &telemetry,
            progress: self.progress,
            dropped_on: Default::default(),
        };
        let id = self
            .shape
            .whole_column(Field::Id)
            .expect("checked by order_key");
        let (batches, reading) = reader.read(self.query, id);
        let relayed = async {
            let end = relay.run(batches, shutdown, Duration::from_secs(10)).await;
            finish_reading(end, reading).await
        };
        let forward = async {
            while watched.changed().await.is_ok() {
                let now = watched.borrow_and_update().clone();
                self.shown.send_modify(|shown| shown.progress = now);
            }
        };
        tokio::select! {
            end = relayed => end,
            () = forward => Err(Error::transient("the progress channel closed")),
        }
    }
}

/// `walbox backfill`'s selectors as a selection over `shape`'s columns.
fn resend_selection(resend: &ResendConfig, shape: &OutboxShape) -> Result<Selection> {
    let mut ranges = Vec::new();
    let id = shape.whole_column(Field::Id).expect("checked by order_key");
    for (value, at_least) in [(&resend.id_from, true), (&resend.id_to, false)] {
        if let Some(value) = value {
            ranges.push(Range {
                column: id,
                at_least,
                value: value.clone(),
            });
        }
    }
    for (value, at_least) in [(&resend.created_from, true), (&resend.created_to, false)] {
        let Some(value) = value else { continue };
        let column = shape.whole_column(Field::CreatedAt).ok_or_else(|| {
            Error::usage(
                "--created-from and --created-to need a created_at column (--columns \
                 created_at=…)",
            )
        })?;
        ranges.push(Range {
            column,
            at_least,
            value: value.clone(),
        });
    }
    Ok(Selection {
        predicate: resend
            .predicate
            .as_ref()
            .map(|predicate| predicate.sql.clone()),
        ranges,
        ..Selection::default()
    })
}

/// What a failed re-send confirmed, and how to go on without losing a row.
fn resume_hint(progress: &Progress, key: &[usize], table: &Table) -> String {
    let Some(last) = &progress.last_key else {
        return "no row was confirmed; run it again".to_owned();
    };
    let columns: Vec<&str> = key
        .iter()
        .map(|index| table.columns[*index].name.as_str())
        .collect();
    let confirmed = format!(
        "{} rows were confirmed, in creation order up to the row with ({}) = ({})",
        progress.rows_confirmed,
        columns.join(", "),
        show_key(last)
    );
    // The first key column is created_at when there are two, else the id.
    let flag = if key.len() > 1 {
        "--created-from"
    } else {
        "--id-from"
    };
    match &last[0] {
        Some(value) => format!(
            "{confirmed}; to go on, run it again with {flag} '{value}' (rows at that value are \
             sent again)"
        ),
        None => format!("{confirmed}; run it again to go on"),
    }
}

/// `walbox status`'s view of the slot's cut-over backfill.
pub(crate) async fn status(config: &Config) -> Result<Option<Record>> {
    let client: Client = connect_client(config).await?;
    Records {
        client: &client,
        table: record::table_of(&config.table),
    }
    .get_readable(config.slot.as_str())
    .await
}

/// `walbox teardown`: forget the slot's record, so a new slot is a new cut-over.
pub(crate) async fn forget(config: &Config) -> Result<bool> {
    let client: Client = connect_client(config).await?;
    Records {
        client: &client,
        table: record::table_of(&config.table),
    }
    .forget(config.slot.as_str())
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(state: State) -> Record {
        Record {
            slot: "s".into(),
            state,
            predicate: "recorded".into(),
            consistent_lsn: None,
            snapshot: None,
            end_key: None,
            rows_expected: None,
            rows_confirmed: 0,
            last_key: None,
            attempts: 1,
            started_at: String::new(),
            updated_at: String::new(),
            finished_at: None,
        }
    }

    #[test]
    fn an_unfinished_record_is_finished_before_anything_else() {
        use SlotCreation::*;
        for create in [Always, UnlessPromoted, Never] {
            for state in [State::Creating, State::Sending] {
                // Slot there, record unfinished: whatever was asked, resume.
                assert_eq!(plan(true, Some(&record(state)), None, create), Plan::Resume);
                assert_eq!(
                    plan(true, Some(&record(state)), Some("asked"), create),
                    Plan::Resume
                );
            }
            // A slot made before its snapshot was read: make it again, with the recorded
            // predicate.
            assert_eq!(
                plan(false, Some(&record(State::Creating)), Some("asked"), create),
                Plan::Fresh {
                    predicate: "recorded".into()
                }
            );
            // A finished backfill, or none: the slot decides.
            for existing in [None, Some(record(State::Done))] {
                assert_eq!(
                    plan(true, existing.as_ref(), Some("asked"), create),
                    Plan::Live
                );
            }
        }
    }

    #[test]
    fn a_cut_over_begins_only_where_the_slot_may_be_made() {
        use SlotCreation::*;
        let done = record(State::Done);
        for existing in [None, Some(&done)] {
            assert_eq!(
                plan(false, existing, Some("asked"), UnlessPromoted),
                Plan::Fresh {
                    predicate: "asked".into()
                }
            );
            assert_eq!(plan(false, existing, Some("asked"), Never), Plan::Live);
            assert_eq!(plan(false, existing, None, Always), Plan::Live);
        }
        // The slot of an unfinished backfill vanished under a running relay: stop.
        assert_eq!(
            plan(false, Some(&record(State::Sending)), None, Never),
            Plan::Lost
        );
        assert_eq!(
            plan(false, Some(&record(State::Sending)), None, UnlessPromoted),
            Plan::Fresh {
                predicate: "recorded".into()
            }
        );
    }
}
