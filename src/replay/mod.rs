//! `walbox replay`: publish again every outbox event committed in an LSN range, from the
//! history the replay window keeps, while the live relay goes on untouched.
//!
//! A replay streams from a temporary copy of the bookmark slot ([`bookmark`]) made on its own
//! replication session, through the same session engine as the live relay
//! ([`crate::engine::session`]), with the header `x-replay: true`. What is replay's own is
//! the preflight checks and a [`Policy`] that applies only the transactions in range and
//! reports the flush LSN as progress: nothing here acknowledges anything to the live slot or
//! moves the bookmark. A dry run uses the counting publisher.

pub(crate) mod bookmark;
pub(crate) mod window;

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{Semaphore, watch};

use crate::config::{Config, Identifier, ReplayConfig};
use crate::control::Control;
use crate::control::publication::{Names, Pinned};
use crate::engine::guard::{Guard, Outbox};
use crate::engine::session::{Admit, End, Policy, Session};
use crate::engine::{Changes, Shutdown};
use crate::error::{Error, Result};
use crate::lsn::Lsn;
use crate::publish::Publisher;
use crate::publish::counting::CountingPublisher;
use crate::publish::target::Target;
use crate::source::{Change, Source};
use crate::telemetry::Telemetry;

/// How far a replay got, as it goes and at the end.
#[derive(Clone, Debug, Default)]
pub(crate) struct Progress {
    /// The range being replayed: `[from, until)`, in LSN.
    pub(crate) from: Lsn,
    pub(crate) until: Lsn,
    pub(crate) transactions: u64,
    pub(crate) events: u64,
    /// The commit LSN of the latest transaction read.
    pub(crate) reached: Option<Lsn>,
    /// Transactions that committed before this position are confirmed by the broker (or, in a
    /// dry run, counted): a failed replay resumes here.
    pub(crate) confirmed: Lsn,
}

/// The result of a finished replay.
#[derive(Clone, Debug)]
pub(crate) struct Summary {
    pub(crate) progress: Progress,
    pub(crate) from: Lsn,
    /// Transactions that committed before this position were considered.
    pub(crate) until: Lsn,
    /// The commit LSN of the first and the last transaction replayed.
    pub(crate) first_commit: Option<Lsn>,
    pub(crate) elapsed: Duration,
}

/// Replay, reporting progress through `progress`, until the range is done, `shutdown` fires
/// or something fails. Failures name the LSN to resume from.
pub(crate) async fn replay(
    config: &Config,
    replay: &ReplayConfig,
    progress: watch::Sender<Progress>,
    shutdown: Shutdown,
) -> Result<Summary> {
    let began = Instant::now();
    let from = replay.from_lsn;
    let Preflight {
        outbox,
        bookmark,
        copy,
        until,
    } = preflight(config, replay).await?;
    let mut summary = Summary {
        progress: Progress {
            from,
            until,
            confirmed: from,
            ..Progress::default()
        },
        from,
        until,
        first_commit: None,
        elapsed: Duration::ZERO,
    };
    if from >= until {
        summary.elapsed = began.elapsed();
        return Ok(summary);
    }

    let (source, copied_from) =
        Source::start_copy(config, &bookmark, &copy, stream_from(config, from)).await?;
    // The live walbox may have moved the bookmark between the check and the copy.
    if from < copied_from {
        return Err(too_old(from, copied_from));
    }
    let mut policy = InRange {
        from,
        until,
        open: false,
        replaying: false,
        report: summary.progress.clone(),
        first_commit: None,
        progress,
    };
    let outcome = match replay.dry_run {
        true => {
            let publisher = CountingPublisher::default();
            publish(config, source, publisher, outbox, &mut policy, shutdown).await
        }
        false => {
            let publisher = Target::connect_amqp(config, None).await?;
            publish(config, source, publisher, outbox, &mut policy, shutdown).await
        }
    };
    conclude(outcome, policy, summary, began)
}

/// What the checks before a replay found.
struct Preflight {
    outbox: Outbox,
    /// The bookmark slot and the name of its temporary copy.
    bookmark: Identifier,
    copy: Identifier,
    /// The range's exclusive end.
    until: Lsn,
}

/// The server, the table and the publication are fit, the replay window reaches back to
/// `--from-lsn`, and where the range ends. The control connection closes before the copy is
/// made.
async fn preflight(config: &Config, replay: &ReplayConfig) -> Result<Preflight> {
    let from = replay.from_lsn;
    let control = Control::connect(config).await?;
    control.check_server_version().await?;
    control.check_wal_level().await?;
    control.check_table(config).await?;
    let outbox = outbox(&control, config).await?;
    let (bookmark, copy) = bookmark::names(&config.slot)?;
    let oldest = control
        .slot(&bookmark)
        .await?
        .and_then(|info| info.confirmed_flush())
        .ok_or_else(|| {
            Error::usage(format!(
                "no replay window is kept for slot {}: start `walbox run --replay-window <size \
                 or duration>` (e.g. 24h or 10GB); events committed from then on can be replayed",
                config.slot
            ))
        })?;
    if from < oldest {
        return Err(too_old(from, oldest));
    }
    let current = control.current_wal_lsn().await?;
    // Exclusive end: what committed before it is replayed. An explicit --to-lsn is inclusive;
    // nothing can have committed at or after the position the server had reached.
    let until = match replay.to_lsn {
        Some(to) => Lsn(to.as_u64().saturating_add(1)).min(current),
        None => current,
    };
    Ok(Preflight {
        outbox,
        bookmark,
        copy,
        until,
    })
}

fn too_old(from: Lsn, oldest: Lsn) -> Error {
    Error::usage(format!(
        "--from-lsn {from} is older than the retained replay window: the oldest replayable \
         LSN is {oldest} (events that committed at or after it). Ask for a later LSN, or \
         keep a longer --replay-window"
    ))
}

/// The summary of a replay that ended with `outcome`, its last progress reported; a failure
/// names the LSN to resume from.
fn conclude(
    outcome: Result<()>,
    policy: InRange,
    mut summary: Summary,
    began: Instant,
) -> Result<Summary> {
    let mut report = policy.report;
    summary.first_commit = policy.first_commit;
    match outcome {
        Ok(()) => {
            report.confirmed = summary.until;
            policy.progress.send_replace(report.clone());
            summary.progress = report;
            summary.elapsed = began.elapsed();
            Ok(summary)
        }
        Err(error) => {
            policy.progress.send_replace(report.clone());
            Err(Error::definite(format!(
                "the replay stopped: {error}. Transactions that committed before {} were \
                 replayed and confirmed; resume with `walbox replay --from-lsn {}`",
                report.confirmed, report.confirmed
            )))
        }
    }
}

/// The outbox table and its partitions as the catalogs show them now, for telling its
/// Relation messages from other tables'; the publication must still deliver every insert.
async fn outbox(control: &Control, config: &Config) -> Result<Outbox> {
    let names = Names {
        publication: &config.publication,
        table: &config.table,
    };
    let reading = control.read_catalog(names, None).await?;
    control
        .refuse_problems(&reading, names, &config.mapping)
        .await
        .map_err(|error| Error::definite(format!("{error}; run `walbox setup` first")))?;
    let pinned = Pinned::pin(&reading)
        .ok_or_else(|| Error::definite("the publication or the table vanished while read"))?;
    Ok(Outbox::proven(&pinned, &reading))
}

/// Where the copy is streamed from for a replay from `from`. PostgreSQL leaves out every
/// change whose record starts before the position streaming starts at. A transaction is placed
/// by its commit record, which starts at its commit LSN, so `from` loses none of the range; but
/// a non-transactional logical message is placed 8 bytes before the *end* of its record
/// (publish::stream::id), and its record starts earlier still: streamed from `from` = its
/// x-commit-lsn, the server would leave it out. So with `--messages` the copy is streamed from
/// its own start (Lsn 0: the copy's confirmed position) and [`InRange`] leaves out what comes
/// before `from`; PostgreSQL then sends the window's outbox rows before `from` too, which walbox
/// reads and skips.
fn stream_from(config: &Config, from: Lsn) -> Lsn {
    match config.messages.is_empty() {
        true => from,
        false => Lsn::ZERO,
    }
}

/// Run the session engine over the copy until the range is done (every confirm in), the
/// replay is interrupted, or something fails.
async fn publish<S: Changes, P: Publisher>(
    config: &Config,
    source: S,
    publisher: P,
    outbox: Outbox,
    policy: &mut InRange,
    mut shutdown: Shutdown,
) -> Result<()> {
    let telemetry = Arc::new(Telemetry::default());
    let window = Arc::new(Semaphore::new(config.max_in_flight));
    let mut session = Session::start(
        config,
        source,
        publisher,
        policy.from,
        window,
        true,
        &telemetry,
    );
    session.stream_mut().guard = Some(Guard::fixed(outbox));
    let end = session.run(policy, &mut shutdown).await;
    let outcome = match end {
        End::Finished => {
            let drained = session.drain(None).await;
            let outcome = drained.verdict.map(|confirmed| {
                policy.report.confirmed = confirmed.max(policy.report.confirmed);
            });
            drained.publisher.close().await;
            return outcome;
        }
        End::Stopped => Error::definite("interrupted"),
        End::Failed(failure) => failure.error,
    };
    policy.report.confirmed = session.flushed().max(policy.report.confirmed);
    let (source, publisher) = session.abort();
    publisher.close().await;
    drop(source);
    Err(outcome)
}

/// Replay's policy: apply the transactions that committed in `[from, until)` and the
/// non-transactional logical messages whose position lies there (and every Relation message, which
/// describes the table whatever transaction carries it); end at the first of those, or idle
/// keepalive, at or past `until`; report the flush LSN as progress.
struct InRange {
    from: Lsn,
    until: Lsn,
    /// Inside a transaction (replayed or skipped): keepalives there say nothing about the end.
    open: bool,
    /// The open transaction is in range.
    replaying: bool,
    report: Progress,
    first_commit: Option<Lsn>,
    progress: watch::Sender<Progress>,
}

impl Policy for InRange {
    const ACKNOWLEDGES: bool = false;

    fn admit(&mut self, change: &Change) -> Admit {
        let apply = match change {
            Change::Begin(transaction) => {
                if transaction.commit_lsn >= self.until {
                    return Admit::End;
                }
                self.open = true;
                self.replaying = transaction.commit_lsn >= self.from;
                if self.replaying {
                    self.report.transactions += 1;
                    self.report.reached = Some(transaction.commit_lsn);
                    self.first_commit.get_or_insert(transaction.commit_lsn);
                }
                self.replaying
            }
            Change::Commit { .. } => {
                self.open = false;
                std::mem::take(&mut self.replaying)
            }
            Change::Keepalive { wal_end } if !self.open && *wal_end >= self.until => {
                return Admit::End;
            }
            Change::Keepalive { .. } => !self.open,
            // A skipped transaction's Relation messages still describe the table.
            Change::Message(crate::pgoutput::Message::Relation(_)) => true,
            // A non-transactional logical message stands between transactions at its
            // position's LSN (8 bytes before the end of its record, which is what PostgreSQL
            // reports; see publish::stream::id): replayed when that lies in the range.
            Change::Message(crate::pgoutput::Message::Message(message))
                if !message.transactional() =>
            {
                let at = crate::publish::Position::of_message(message.lsn).commit_lsn;
                if at >= self.until {
                    return Admit::End;
                }
                at >= self.from
            }
            Change::Message(_) => self.replaying,
        };
        match apply {
            true => Admit::Apply,
            false => Admit::Skip,
        }
    }

    fn applied(&mut self, events: u64) {
        self.report.events = events;
        if !self.open {
            self.progress.send_replace(self.report.clone());
        }
    }

    fn flushed(&mut self, lsn: Lsn) {
        self.report.confirmed = lsn;
        self.progress.send_replace(self.report.clone());
    }
}
