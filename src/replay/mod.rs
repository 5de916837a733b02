//! `walbox replay`: publish again every outbox event committed in an LSN range, from the
//! history the replay window keeps, while the live relay goes on untouched.
//!
//! A replay streams from a temporary copy of the bookmark slot ([`bookmark`]) made on its own
//! replication session, through the same decode → map → publish → confirm path as the live
//! relay ([`crate::pipeline`]), with the header `x-replay: true`. Nothing here acknowledges
//! anything to the live slot or moves the bookmark.

pub(crate) mod bookmark;
pub(crate) mod window;

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{Semaphore, mpsc, watch};

use crate::config::{Config, ReplayConfig};
use crate::control::Control;
use crate::error::{Error, Result};
use crate::lsn::Lsn;
use crate::pipeline::{Outlet, Shutdown, Stream, tracker_failure, tracker_reason};
use crate::sink::Sink;
use crate::sink::confirm::track;
use crate::source::{Change, Source};
use crate::telemetry::{Side, Telemetry};
use crate::watermark::Watermark;

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

/// How often the loop checks the broker connection.
const HEARTBEAT: Duration = Duration::from_secs(1);

/// Replay, reporting progress through `progress`, until the range is done, `shutdown` fires
/// or something fails. Failures name the LSN to resume from.
pub(crate) async fn replay(
    config: &Config,
    replay: &ReplayConfig,
    progress: watch::Sender<Progress>,
    mut shutdown: Shutdown,
) -> Result<Summary> {
    let began = Instant::now();
    let from = replay.from_lsn;
    let control = Control::connect(config).await?;
    control.check_wal_level().await?;
    control.check_table(config).await?;
    if !control
        .publication_tables(&config.publication)
        .await?
        .contains(&config.table.to_string())
    {
        return Err(Error::definite(format!(
            "publication {} does not exist or does not include {}; run `walbox setup` first",
            config.publication, config.table
        )));
    }
    let (bookmark, copy) = bookmark::names(&config.slot)?;
    let oldest = control
        .slot(&bookmark)
        .await?
        .and_then(|info| info.confirmed_flush())
        .ok_or_else(|| {
            Error::OutOfRange(format!(
                "no replay window is kept for slot {}: start `walbox run --replay-window <size \
                 or duration>` (e.g. 24h or 10GB); events committed from then on can be replayed",
                config.slot
            ))
        })?;
    let too_old = |oldest: Lsn| {
        Error::OutOfRange(format!(
            "--from-lsn {from} is older than the retained replay window: the oldest replayable \
             LSN is {oldest} (events that committed at or after it). Ask for a later LSN, or \
             keep a longer --replay-window"
        ))
    };
    if from < oldest {
        return Err(too_old(oldest));
    }
    let current = control.current_wal_lsn().await?;
    // Exclusive end: what committed before it is replayed. An explicit --to-lsn is inclusive;
    // nothing can have committed at or after the position the server had reached.
    let until = match replay.to_lsn {
        Some(to) => Lsn(to.as_u64().saturating_add(1)).min(current),
        None => current,
    };
    drop(control);
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

    let telemetry = Arc::new(Telemetry::default());
    let sink = match replay.dry_run {
        true => None,
        false => Some(Sink::connect(config).await?),
    };
    let (mut source, copied_from) = Source::start_copy(config, &bookmark, &copy, from).await?;
    // The live walbox may have moved the bookmark between the check and the copy.
    if from < copied_from {
        return Err(too_old(copied_from));
    }

    let (flush_tx, mut flush_rx) = watch::channel(from);
    let (pending_tx, pending_rx) = mpsc::channel(config.max_in_flight.max(64));
    let outlet = match &sink {
        Some(sink) => Outlet::Broker {
            sink,
            pending: pending_tx,
            window: Arc::new(Semaphore::new(config.max_in_flight)),
        },
        None => {
            drop(pending_tx);
            Outlet::Count
        }
    };
    let mut tracker = tokio::spawn(track(
        pending_rx,
        Watermark::new(from),
        flush_tx,
        Arc::clone(&telemetry),
    ));
    let mut stream = Stream::new(config, outlet, true, &telemetry);
    let mut heartbeat = tokio::time::interval(HEARTBEAT);
    // Inside a transaction (replayed or skipped): keepalives there say nothing about the end.
    let mut open = false;
    let mut replaying = false;
    let mut report = summary.progress.clone();

    let mut tracker_ended = false;
    let failure = loop {
        let change = tokio::select! {
            biased;
            _ = shutdown.wait_for(|stop| *stop) => {
                break Some((Side::Postgres, Error::definite("interrupted")));
            }
            tracker_end = &mut tracker, if sink.is_some() => {
                tracker_ended = true;
                break Some((Side::Amqp, tracker_failure(tracker_end)));
            }
            Ok(()) = flush_rx.changed() => {
                report.confirmed = *flush_rx.borrow_and_update();
                progress.send_replace(report.clone());
                continue;
            }
            _ = heartbeat.tick() => {
                if sink.as_ref().is_some_and(|sink| !sink.is_connected()) {
                    break Some((Side::Amqp, Error::transient("the connection to the broker closed")));
                }
                continue;
            }
            change = source.next() => change,
        };
        let change = match change {
            Ok(Some(change)) => change,
            Ok(None) => {
                break Some((
                    Side::Postgres,
                    Error::transient("the replication stream ended"),
                ));
            }
            Err(error) => break Some((Side::Postgres, error)),
        };
        let apply = match &change {
            Change::Begin(transaction) => {
                if transaction.commit_lsn >= until {
                    break None;
                }
                open = true;
                replaying = transaction.commit_lsn >= from;
                if replaying {
                    report.transactions += 1;
                    report.reached = Some(transaction.commit_lsn);
                    summary.first_commit.get_or_insert(transaction.commit_lsn);
                }
                replaying
            }
            Change::Commit { .. } => {
                open = false;
                std::mem::take(&mut replaying)
            }
            Change::Keepalive { wal_end } if !open && *wal_end >= until => break None,
            Change::Keepalive { .. } => !open,
            // A skipped transaction's Relation messages still describe the table.
            Change::Message(crate::pgoutput::Message::Relation(_)) => true,
            Change::Message(_) => replaying,
        };
        if apply && let Err(error) = stream.apply(change).await {
            break Some(error);
        }
        report.events = stream.events;
        if !open {
            progress.send_replace(report.clone());
        }
    };
    drop(stream);

    let outcome = match failure {
        None if sink.is_some() => match (&mut tracker).await {
            Ok(Ok(confirmed)) => {
                report.confirmed = confirmed.max(report.confirmed);
                Ok(())
            }
            Ok(Err(error)) => Err(error),
            Err(error) => Err(Error::transient(format!("confirm tracker: {error}"))),
        },
        None => Ok(()),
        Some(error) => {
            let (_, error) = match tracker_ended {
                true => error,
                false => tracker_reason(error, &mut tracker).await,
            };
            tracker.abort();
            report.confirmed = *flush_rx.borrow();
            Err(error)
        }
    };
    progress.send_replace(report.clone());
    if let Some(sink) = sink {
        sink.close().await;
    }
    drop(source);
    match outcome {
        Ok(()) => {
            report.confirmed = until;
            summary.progress = report;
            summary.elapsed = began.elapsed();
            Ok(summary)
        }
        Err(error) => Err(Error::definite(format!(
            "the replay stopped: {error}. Transactions that committed before {} were replayed \
             and confirmed; resume with `walbox replay --from-lsn {}`",
            report.confirmed, report.confirmed
        ))),
    }
}
