//! The outbox table's guard: once a second it proves that the publication still covers the
//! table walbox decodes, and no acknowledgement to the slot passes the WAL position of the last
//! proof.
//!
//! A broker's confirm proves that the events walbox saw arrived. It cannot speak for rows
//! PostgreSQL never sent: a table dropped and created again outside a `FOR TABLE` publication,
//! a publication altered not to publish inserts, a table set UNLOGGED. Between transactions the
//! flush position moves on keepalives, with nothing seen at all. So every acknowledgement,
//! after commits and keepalives alike, is capped at the WAL position of the last reading of the
//! catalogs ([`crate::control::publication`]) that found the publication and the table as they
//! were pinned at start. Each reading:
//!
//! - holds: the proof moves on to the reading's WAL position;
//! - is pending (a DDL transaction on them is still open): the proof stays;
//! - found a change: walbox stops with a definite error naming it and the WAL range (last proof
//!   → this reading) whose rows may not have reached walbox; nothing past the last proof was
//!   acknowledged;
//! - could not run (connection lost, a timeout): transient; not ready; retried with backoff;
//!   the proof stays. When the guard cannot even connect to the primary (it is shutting down,
//!   or gone), the session also ends: a clean shutdown waits until the logical replication
//!   client has confirmed all WAL sent, which walbox cannot do without a proof, so it lets go
//!   of the replication connection instead and resumes from what it had acknowledged.
//!
//! The guard lives as long as the process, across sessions, so the proof has no gap while
//! walbox runs. A proof belongs to one server history (cluster and timeline): after a failover
//! a WAL position read on the old primary says nothing about the new one's WAL, so when a
//! session reaches another server ([`Guard::follow`]) the proof starts again from nothing, and
//! only readings taken on the session's server count. (While walbox is stopped nothing watches: see docs "When the outbox table or
//! the publication changes".)

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;
use tracing::{info, warn};

use super::backoff::Backoff;
use crate::config::Config;
use crate::control::Control;
use crate::control::publication::{Change, Names, Pinned, Reading, Verdict};
use crate::error::{Error, Result};
use crate::lsn::Lsn;
use crate::source::Origin;
use crate::telemetry::Telemetry;

/// How often the guard reads the catalogs: the longest an acknowledgement waits for a proof.
pub(crate) const PERIOD: Duration = Duration::from_secs(1);
/// A reading that takes longer (catalogs locked, a server in trouble) counts as failed.
const STATEMENT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a pending reading is quietly waited out before walbox says why it holds back.
const PENDING_WARNING: Duration = Duration::from_secs(10);

/// What the guard has proven so far.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Proof {
    /// Every commit before it is proven to have been published to walbox. ZERO until the
    /// first reading passed.
    pub(crate) through: Lsn,
    /// The outbox table as the last passing reading found it.
    pub(crate) outbox: Option<Outbox>,
    /// Why walbox must stop (a definite change).
    pub(crate) tripped: Option<String>,
    /// The guard cannot connect to the primary (shutting down, gone): the session must let go
    /// of the slot.
    pub(crate) going_away: bool,
    /// The server `through` was read on (None before the first reading).
    pub(crate) on: Option<Origin>,
    /// The server the current session streams from, and where it resumed there.
    pub(crate) session: Option<Following>,
}

/// The server a session streams from: only readings taken on it prove anything for it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Following {
    pub(crate) on: Origin,
    /// Where the session resumed on it: the start of what is unproven there.
    pub(crate) from: Lsn,
}

impl Proof {
    /// A session streams from `on`, resuming at `from`. A proof read on another server
    /// vouches for nothing there: it drops to ZERO until a reading on `on` passes. True when
    /// it dropped.
    pub(crate) fn follow(&mut self, on: Origin, from: Lsn) -> bool {
        let reset = self.on.as_ref() != Some(&on) && self.through > Lsn::ZERO;
        if reset {
            self.through = Lsn::ZERO;
        }
        self.session = Some(Following { on, from });
        reset
    }

    /// Whether a reading taken on `origin` speaks for the session's server (any server
    /// before the first session).
    fn speaks_for(&self, origin: Option<&Origin>) -> bool {
        self.session
            .as_ref()
            .is_none_or(|session| Some(&session.on) == origin)
    }

    /// Whether the proof was read on the session's server (any, before the first session).
    fn is_current(&self) -> bool {
        self.speaks_for(self.on.as_ref())
    }

    /// A reading on `origin` at `wal` passed: the proof moves on (starts over, when it was
    /// read on another server). Nothing changes for a reading on a server the session does
    /// not stream from.
    fn advance(&mut self, wal: Lsn, origin: Option<&Origin>) {
        if !self.speaks_for(origin) {
            return;
        }
        self.through = if self.on.as_ref() == origin {
            self.through.max(wal)
        } else {
            wal
        };
        self.on = origin.cloned();
    }
}

/// The outbox table a session follows, as the guard knows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Outbox {
    pub(crate) oid: u32,
    /// Its partitions (any depth), for telling a partition's Relation from another table's.
    pub(crate) partitions: Vec<u32>,
    /// The publication covers the table by name (FOR ALL TABLES, FOR TABLES IN SCHEMA), so a
    /// table of the same name made anew is covered from its creation: following it loses
    /// nothing.
    pub(crate) follows_recreation: bool,
}

impl Outbox {
    /// The outbox table as `reading`, compared with `pinned`, found it.
    pub(crate) fn proven(pinned: &Pinned, reading: &Reading) -> Outbox {
        Outbox {
            oid: pinned.table(),
            partitions: reading.partitions(),
            follows_recreation: pinned.follows_recreation(),
        }
    }
}

/// A handle on the guard's proof. The guard's task ends with the last handle.
#[derive(Clone, Debug)]
pub(crate) struct Guard {
    proof: watch::Receiver<Proof>,
    /// The proof's sender, shared with the guard's task (None for a fixed guard).
    sender: Option<Arc<watch::Sender<Proof>>>,
    fresh: Arc<Notify>,
    _task: Option<Arc<Task>>,
}

/// The guard's task, aborted when dropped.
#[derive(Debug)]
struct Task(JoinHandle<()>);

impl Drop for Task {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl Guard {
    /// Start guarding the configured publication and table.
    pub(crate) fn spawn(config: &Config, telemetry: Arc<Telemetry>) -> Guard {
        let (sender, proof) = watch::channel(Proof::default());
        let sender = Arc::new(sender);
        let fresh = Arc::new(Notify::new());
        let runner = Runner {
            config: config.clone(),
            telemetry,
            sender: Arc::clone(&sender),
            fresh: Arc::clone(&fresh),
            pinned: None,
            last_good: None,
            pending_since: None,
        };
        let task = Task(tokio::spawn(runner.run()));
        Guard {
            proof,
            sender: Some(sender),
            fresh,
            _task: Some(Arc::new(task)),
        }
    }

    /// A guard that only tells the apply step which table is the outbox, as one reading found
    /// it (a replay, which acknowledges nothing).
    pub(crate) fn fixed(outbox: Outbox) -> Guard {
        let (_, proof) = watch::channel(Proof {
            through: Lsn::ZERO,
            outbox: Some(outbox),
            tripped: None,
            going_away: false,
            on: None,
            session: None,
        });
        Guard {
            proof,
            sender: None,
            fresh: Arc::new(Notify::new()),
            _task: None,
        }
    }

    /// A guard whose proof a test sets by hand.
    #[cfg(test)]
    pub(crate) fn manual(proof: Proof) -> (Guard, Arc<watch::Sender<Proof>>) {
        let (sender, receiver) = watch::channel(proof);
        let sender = Arc::new(sender);
        let guard = Guard {
            proof: receiver,
            sender: Some(Arc::clone(&sender)),
            fresh: Arc::new(Notify::new()),
            _task: None,
        };
        (guard, sender)
    }

    /// A session streams from `on`, resuming at `from`: from now on only readings taken on
    /// it prove anything, and a proof read on another server (before a failover) is dropped
    /// until one passes (asked for now). True when the proof dropped.
    pub(crate) fn follow(&self, on: Origin, from: Lsn) -> bool {
        let Some(sender) = &self.sender else {
            return false;
        };
        let mut reset = false;
        sender.send_modify(|proof| reset = proof.follow(on, from));
        self.fresh.notify_one();
        reset
    }

    /// How far acknowledgements may go.
    pub(crate) fn through(&self) -> Lsn {
        self.proof.borrow().through
    }

    /// The outbox table as last proven (None before the first proof).
    pub(crate) fn outbox(&self) -> Option<Outbox> {
        self.proof.borrow().outbox.clone()
    }

    fn verdict(&self) -> Result<()> {
        match &self.proof.borrow().tripped {
            Some(message) => Err(Error::definite(message)),
            None => Ok(()),
        }
    }

    /// Resolves when the proof moved on (Ok), the guard tripped (the definite error) or the
    /// server started going away (a transient error that ends the session).
    pub(crate) async fn changed(&mut self) -> Result<()> {
        let running = self.proof.changed().await.is_ok();
        self.verdict()?;
        if self.proof.borrow().going_away {
            return Err(Error::transient(
                "the guard cannot connect to the primary (shutting down, or gone): letting go \
                 of the replication connection (a shutdown waits for a client that confirmed \
                 everything sent, and nothing past the guard's last proof is acknowledged)",
            ));
        }
        if running {
            Ok(())
        } else {
            Err(Error::definite(
                "the outbox table's guard stopped without a reason (a walbox bug)",
            ))
        }
    }

    /// Wait until a first reading passed (Ok) or the guard tripped.
    pub(crate) async fn established(&mut self) -> Result<()> {
        let _ = self
            .proof
            .wait_for(|proof| proof.outbox.is_some() || proof.tripped.is_some())
            .await;
        self.verdict()
    }

    /// Whether this guard reads the catalogs itself (the live relay), not one fixed reading.
    pub(crate) fn is_live(&self) -> bool {
        self._task.is_some()
    }

    /// Wait until a reading at or past `lsn` passed, so that [`Guard::outbox`] knows every
    /// partition and inheritance child made before a commit at `lsn`. Asks for a reading now.
    /// An error when the guard tripped, the primary is going away, or no reading passed
    /// within `within` (transient: the session ends and decodes the commit again).
    pub(crate) async fn proven_to(&mut self, lsn: Lsn, within: Duration) -> Result<()> {
        if self.through() >= lsn {
            return Ok(());
        }
        self.fresh.notify_one();
        let reached = self
            .proof
            .wait_for(|proof| proof.through >= lsn || proof.tripped.is_some() || proof.going_away);
        let timed_out = tokio::time::timeout(within, reached).await.is_err();
        self.verdict()?;
        if self.through() >= lsn {
            return Ok(());
        }
        Err(Error::transient(if timed_out {
            format!(
                "no reading of the catalogs passed within {} s, so walbox cannot tell whether a \
                 table in the transaction committed at {lsn} belongs to the outbox",
                within.as_secs()
            )
        } else {
            "the guard cannot connect to the primary (shutting down, or gone)".to_owned()
        }))
    }

    /// Ask for a reading now, and wait at most `within` for the proof to reach `target`
    /// (the last position walbox would acknowledge when it stops). Returns the proof then.
    pub(crate) async fn fresh(&mut self, target: Lsn, within: Duration) -> Lsn {
        self.fresh.notify_one();
        let reached = self
            .proof
            .wait_for(|proof| proof.through >= target || proof.tripped.is_some());
        let _ = tokio::time::timeout(within, reached).await;
        self.through()
    }
}

/// The guard's task: the readings, their verdicts, and the proof.
struct Runner {
    config: Config,
    telemetry: Arc<Telemetry>,
    sender: Arc<watch::Sender<Proof>>,
    fresh: Arc<Notify>,
    pinned: Option<Pinned>,
    /// The last reading that passed: its WAL position, the database's clock then, and the
    /// server it was taken on.
    last_good: Option<(Lsn, String, Option<Origin>)>,
    /// Since when readings have been pending, and whether that was said.
    pending_since: Option<(Instant, bool)>,
}

impl Runner {
    async fn run(mut self) {
        let mut control = None;
        let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(5));
        loop {
            let wait = match self.step(&mut control).await {
                Ok(()) => {
                    backoff.reset();
                    // A reading that raced a session's move to another server proved nothing.
                    let current = self.sender.borrow().is_current();
                    self.telemetry.health.set_unproven(!current);
                    self.going_away(false);
                    PERIOD
                }
                Err(error) if error.is_transient() => {
                    control = None;
                    self.telemetry.health.set_unproven(true);
                    let delay = backoff.next_delay();
                    warn!(%error, retry_in_ms = delay.as_millis() as u64,
                        "cannot check the publication and the outbox table; acknowledging nothing more until a check passes");
                    delay
                }
                Err(error) => {
                    let message = error.to_string();
                    self.sender
                        .send_modify(|proof| proof.tripped = Some(message));
                    return;
                }
            };
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = self.fresh.notified() => {}
            }
        }
    }

    /// Tell the sessions whether the server is going away (only when that changes).
    fn going_away(&self, going_away: bool) {
        self.sender.send_if_modified(|proof| {
            let changed = proof.going_away != going_away;
            proof.going_away = going_away;
            changed
        });
    }

    fn names(&self) -> Names<'_> {
        Names {
            publication: &self.config.publication,
            table: &self.config.table,
        }
    }

    /// One reading and what follows from it. A definite error trips the guard.
    async fn step(&mut self, control: &mut Option<Control>) -> Result<()> {
        let control = match control {
            Some(control) => control,
            None => {
                let connected = connect(&self.config).await;
                // A reading that fails on a connection says nothing about the primary; not
                // reaching one at all does.
                self.going_away(connected.as_ref().is_err_and(Error::is_transient));
                control.insert(connected?)
            }
        };
        let names = self.names();
        let pinned_table = self.pinned.as_ref().map(Pinned::table);
        let reading = control.read_catalog(names, pinned_table).await?;
        self.same_server(&reading)?;
        let verdict = match &self.pinned {
            None => {
                control
                    .refuse_problems(&reading, names, &self.config.mapping)
                    .await?;
                first_verdict(&reading)?
            }
            Some(pinned) => {
                let kept = control
                    .column_list_check(&reading, names.table, &self.config.mapping)
                    .await?;
                pinned.judge(&reading, kept)
            }
        };
        match verdict {
            Verdict::Holds(pinned) => self.proved(pinned, &reading),
            Verdict::Pending(what) => self.pending(&what),
            Verdict::Changed(change) => {
                return Err(Error::definite(self.tripped(&change, &reading)));
            }
        }
        Ok(())
    }

    fn proved(&mut self, pinned: Pinned, reading: &Reading) {
        if let Some(before) = &self.pinned
            && before.table() != pinned.table()
        {
            info!(table = %self.config.table, before = before.table(), after = pinned.table(),
                "the outbox table was dropped and created again; the publication covers it by name, so walbox follows the new table");
        }
        if self.pending_since.take().is_some_and(|(_, said)| said) {
            info!("the open transaction ended; acknowledging again");
        }
        let outbox = Outbox::proven(&pinned, reading);
        self.pinned = Some(pinned);
        self.last_good = Some((reading.wal, reading.at.clone(), reading.origin.clone()));
        self.telemetry.metrics.proven(reading.wal);
        self.sender.send_if_modified(|proof| {
            let before = proof.clone();
            // Checked again here: a session may have reached another server meanwhile.
            proof.advance(reading.wal, reading.origin.as_ref());
            proof.outbox = Some(outbox);
            *proof != before
        });
    }

    /// A reading proves nothing for a session on another server (the guard's connection
    /// still on the old primary, or already on a new one the session has not reached):
    /// transient, so the guard reconnects and reads again.
    fn same_server(&self, reading: &Reading) -> Result<()> {
        let proof = self.sender.borrow();
        match &proof.session {
            Some(session) if !proof.speaks_for(reading.origin.as_ref()) => {
                let read_on = reading.origin.as_ref().map_or_else(
                    || "unknown".to_owned(),
                    |origin| format!("system {}, timeline {}", origin.system_id, origin.timeline),
                );
                Err(Error::transient(format!(
                    "the guard's reading was taken on another server ({read_on}) than the one \
                     the session streams from (system {}, timeline {})",
                    session.on.system_id, session.on.timeline
                )))
            }
            _ => Ok(()),
        }
    }

    fn pending(&mut self, what: &str) {
        let (since, said) = self.pending_since.get_or_insert((Instant::now(), false));
        if !*said && since.elapsed() >= PENDING_WARNING {
            *said = true;
            warn!(pending = what, proven_through = %self.sender.borrow().through,
                "a transaction that changes the publication or the outbox table is still open: walbox relays on but acknowledges nothing more until it ends");
        }
    }

    /// The definite error for a change: what changed, which rows may be lost, how to recover.
    fn tripped(&self, change: &Change, reading: &Reading) -> String {
        let what = change.explain(self.names());
        let Some((good, good_at, good_on)) = &self.last_good else {
            return what;
        };
        // In the terms of the server the session streams from: after a failover, a position
        // read on the old primary means nothing there; what is unproven on the new one starts
        // where the session resumed.
        let session = self.sender.borrow().session.clone();
        let good = match session {
            Some(session) if good_on.as_ref() != Some(&session.on) => session.from,
            _ => *good,
        };
        format!(
            "{what}. Outbox rows committed between {good} (last proven at {good_at}) and {now} \
             (read at {now_at}) may never have reached walbox: PostgreSQL decodes past them \
             without sending them, also after a restart. walbox acknowledged nothing past \
             {good}. To recover: put the table and the publication right (`walbox setup` says \
             what is still wrong) and start walbox again (should it stop at this change again, \
             start it once with --start-lsn {now}); then re-send the rows: `walbox backfill \
             --created-from '{good_at}'`, earlier if your transactions run long (a row's \
             created_at is its transaction's start; see the docs' \"When the outbox table or \
             the publication changes\")",
            now = reading.wal,
            now_at = reading.at,
        )
    }
}

/// The verdict on the first reading, whose problems were already refused.
fn first_verdict(reading: &Reading) -> Result<Verdict> {
    if let Some(what) = reading.pending() {
        return Ok(Verdict::Pending(what));
    }
    Pinned::pin(reading).map(Verdict::Holds).ok_or_else(|| {
        Error::definite("the publication or the table vanished between two reads (a walbox bug)")
    })
}

/// The guard's own control connection, with a statement timeout so a blocked reading fails
/// instead of holding the proof forever, and a name that shows it in pg_stat_activity.
async fn connect(config: &Config) -> Result<Control> {
    let control = Control::connect(config).await?;
    control
        .name_session(&format!("walbox-guard/{}", config.slot), STATEMENT_TIMEOUT)
        .await?;
    Ok(control)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn on(timeline: u32) -> Origin {
        Origin {
            system_id: "7716301900226987530".into(),
            timeline,
        }
    }

    #[test]
    fn a_proof_belongs_to_the_server_it_was_read_on() {
        let mut proof = Proof::default();
        // Before any session, any reading counts.
        proof.advance(Lsn(0x5000), Some(&on(1)));
        assert!(
            !proof.follow(on(1), Lsn(0x4000)),
            "same server: the proof stays"
        );
        assert_eq!(proof.through, Lsn(0x5000));
        // A failover: the new primary forked at 0x3000, the session resumed there.
        assert!(proof.follow(on(2), Lsn(0x3000)));
        assert_eq!(proof.through, Lsn::ZERO);
        // A late reading on the old primary proves nothing for the new one.
        proof.advance(Lsn(0x6000), Some(&on(1)));
        assert_eq!(proof.through, Lsn::ZERO);
        assert!(
            !proof.is_current(),
            "not ready until a reading on the new primary"
        );
        // The first reading on the new primary: its own position, not the old one's maximum.
        proof.advance(Lsn(0x3800), Some(&on(2)));
        assert_eq!(
            (proof.through, proof.on.clone()),
            (Lsn(0x3800), Some(on(2)))
        );
        proof.advance(Lsn(0x3900), Some(&on(2)));
        assert_eq!(proof.through, Lsn(0x3900));
    }
}
