//! One session engine, for `walbox run` and `walbox replay` alike: the confirm tracker, the
//! in-flight window, the loop that reads changes and publishes them, and its teardown.
//!
//! ```text
//!   Changes ──change──▶ Stream::apply ──publish──▶ Publisher
//!      ▲                     │ confirm, boundary          │ verdict (later)
//!      │                     ▼                            ▼
//!      └──acknowledge── flush LSN ◀── Watermark ◀── confirm tracker
//! ```
//!
//! Data flows one way; the only thing that comes back is the flush LSN, through a `watch`
//! channel, and only the [`Policy`] decides what it means: the live relay acknowledges it
//! to the slot, a replay reports it as progress. The policy also decides which changes are
//! applied and when a session is complete. With a [`Guard`] (the live relay), what is
//! acknowledged is the flush LSN capped at the guard's proof that the publication still
//! covers the outbox table, and a tripped guard ends the session with its definite error.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Semaphore, mpsc, watch};
use tokio::task::JoinHandle;

use super::Failure;
use super::guard::Guard;
use super::stream::Stream;
use crate::config::Config;
use crate::error::{Error, Result};
use crate::lsn::Lsn;
use crate::publish::Publisher;
use crate::publish::confirm::{Tracking, track};
use crate::source::Change;
use crate::telemetry::{Side, Telemetry};
use crate::watermark::Watermark;

pub(crate) use crate::shutdown::Shutdown;

/// How often the loop proves it turns (/healthz) and checks that the broker is still there.
const HEARTBEAT: Duration = Duration::from_secs(1);

/// How long a session whose AMQP side failed waits for the confirm tracker to say why.
const REFUSAL_GRACE: Duration = Duration::from_secs(1);

/// What a session reads: the replication stream.
pub(crate) trait Changes {
    /// The next change, or `None` when the stream ended.
    fn next(&mut self) -> impl Future<Output = Result<Option<Change>>>;
    /// PostgreSQL may release WAL up to `lsn`. Only the watermark's flush LSN comes here.
    fn acknowledge(&self, lsn: Lsn);
}

/// What a policy says about a change before it is applied.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Admit {
    Apply,
    Skip,
    /// The session's work is complete: end it cleanly without applying this change.
    End,
}

/// What differs between relaying live and replaying.
pub(crate) trait Policy {
    /// Whether a flush LSN is acknowledged to the slot being read.
    const ACKNOWLEDGES: bool;
    /// Decide about a change before it is applied.
    fn admit(&mut self, change: &Change) -> Admit;
    /// After a change was applied or skipped.
    fn applied(&mut self, events: u64) {
        let _ = events;
    }
    /// The flush LSN moved to `lsn` (after it was acknowledged, if the policy acknowledges).
    fn flushed(&mut self, lsn: Lsn);
    /// Once a heartbeat.
    fn beat(&mut self) {}
}

/// How a session's loop ended.
#[derive(Debug)]
pub(crate) enum End {
    /// Shutdown was asked for.
    Stopped,
    /// The policy said the work is complete.
    Finished,
    Failed(Failure),
}

/// One running session: the source, the apply step with its publisher, and the tracker.
pub(crate) struct Session<'a, S: Changes, P: Publisher> {
    source: S,
    stream: Stream<'a, P>,
    tracker: JoinHandle<Result<Lsn>>,
    tracker_ended: bool,
    flush: watch::Receiver<Lsn>,
    /// Caps what is acknowledged (None: nothing does).
    guard: Option<Guard>,
    /// The last position acknowledged (or reported, for a policy that does not acknowledge).
    acknowledged: Lsn,
}

/// What is left once a session stopped publishing and its confirms are in (or given up on).
pub(crate) struct Drained<S, P> {
    pub(crate) source: S,
    pub(crate) publisher: P,
    /// The final flush LSN, or why the last confirms did not all come in.
    pub(crate) verdict: Result<Lsn>,
    /// The flush LSN reached.
    pub(crate) flushed: Lsn,
}

impl<'a, S: Changes, P: Publisher> Session<'a, S, P> {
    /// Start the tracker from `from` (the position already confirmed) and get ready to apply
    /// changes, at most `window`'s permits of messages in flight.
    pub(crate) fn start(
        config: &'a Config,
        source: S,
        publisher: P,
        from: Lsn,
        window: Arc<Semaphore>,
        replaying: bool,
        telemetry: &'a Arc<Telemetry>,
    ) -> Self {
        let (flush_tx, flush) = watch::channel(from);
        let (pending_tx, pending_rx) = mpsc::channel(config.max_in_flight.max(64));
        let tracker = tokio::spawn(track(
            pending_rx,
            Tracking {
                watermark: Watermark::new(from),
                flush: flush_tx,
                window: Arc::clone(&window),
                unroutable: config.unroutable.clone(),
                telemetry: Arc::clone(telemetry),
            },
        ));
        let stream = Stream::new(config, publisher, pending_tx, window, replaying, telemetry);
        Session {
            source,
            stream,
            tracker,
            tracker_ended: false,
            flush,
            guard: None,
            acknowledged: from,
        }
    }

    /// Cap acknowledgements at `guard`'s proof, and let the apply step know the outbox table
    /// the guard proved.
    pub(crate) fn guard_with(&mut self, guard: Guard) {
        self.stream.guard = Some(guard.clone());
        self.guard = Some(guard);
    }

    pub(crate) fn stream(&self) -> &Stream<'a, P> {
        &self.stream
    }

    pub(crate) fn stream_mut(&mut self) -> &mut Stream<'a, P> {
        &mut self.stream
    }

    /// The flush LSN reached so far.
    pub(crate) fn flushed(&self) -> Lsn {
        *self.flush.borrow()
    }

    /// The position acknowledged so far: the flush LSN, capped at the guard's proof.
    pub(crate) fn acknowledged(&self) -> Lsn {
        self.acknowledged
    }

    /// Acknowledge (or report) the flush LSN as far as the guard's proof allows.
    fn acknowledge<Pol: Policy>(&mut self, policy: &mut Pol) {
        let flushed = *self.flush.borrow_and_update();
        let ceiling = self.guard.as_ref().map_or(flushed, Guard::through);
        let acknowledged = flushed.min(ceiling);
        if acknowledged <= self.acknowledged {
            return;
        }
        self.acknowledged = acknowledged;
        if Pol::ACKNOWLEDGES {
            self.source.acknowledge(acknowledged);
        }
        policy.flushed(acknowledged);
    }

    /// Apply changes as `policy` admits them until shutdown, the policy's end, or a failure.
    pub(crate) async fn run<Pol: Policy>(
        &mut self,
        policy: &mut Pol,
        shutdown: &mut Shutdown,
    ) -> End {
        let mut heartbeat = tokio::time::interval(HEARTBEAT);
        // The same stop request, for waits inside the loop's branches.
        let mut stop = shutdown.clone();
        let end = loop {
            tokio::select! {
                biased;
                _ = shutdown.wait_for(|stop| *stop) => break End::Stopped,
                tracker_end = &mut self.tracker, if !self.tracker_ended => {
                    self.tracker_ended = true;
                    break End::Failed(Failure::new(Side::Amqp, tracker_failure(tracker_end)));
                }
                Ok(()) = self.flush.changed() => self.acknowledge(policy),
                proven = guard_changed(&mut self.guard) => match proven {
                    Ok(()) => self.acknowledge(policy),
                    Err(error) => break End::Failed(Failure::new(Side::Postgres, error)),
                },
                _ = heartbeat.tick() => {
                    policy.beat();
                    if !self.stream.publisher().is_connected() {
                        break End::Failed(Failure::new(
                            Side::Amqp,
                            Error::transient("the connection to the broker closed"),
                        ));
                    }
                }
                change = self.source.next() => {
                    if let Some(end) = self.take(change, policy, &mut stop).await {
                        break end;
                    }
                }
            }
        };
        match end {
            End::Failed(failure) if !self.tracker_ended => End::Failed(self.reason(failure).await),
            other => other,
        }
    }

    /// Take one change from the source: apply it as `policy` admits it. Returns how the
    /// session ends, if it does here.
    async fn take<Pol: Policy>(
        &mut self,
        change: Result<Option<Change>>,
        policy: &mut Pol,
        stop: &mut Shutdown,
    ) -> Option<End> {
        let change = match change {
            Ok(Some(change)) => change,
            Ok(None) => {
                return Some(End::Failed(Failure::new(
                    Side::Postgres,
                    Error::transient("the replication stream ended"),
                )));
            }
            Err(error) => return Some(End::Failed(Failure::new(Side::Postgres, error))),
        };
        match policy.admit(&change) {
            Admit::Apply => {
                // Applying can wait without end for a window permit or for the publish
                // itself (a broker that blocks publishers sends no confirm): a stop request
                // ends the wait. Nothing is lost by cutting an apply short: its
                // transaction's boundary comes after it, so the flush LSN cannot pass what
                // was not handed to the tracker.
                tokio::select! {
                    biased;
                    _ = stop.wait_for(|stop| *stop) => return Some(End::Stopped),
                    // Why the AMQP side failed is asked of the tracker afterwards.
                    applied = self.stream.apply(change) => {
                        if let Err(failure) = applied {
                            return Some(End::Failed(failure));
                        }
                    }
                }
            }
            Admit::Skip => {}
            Admit::End => return Some(End::Finished),
        }
        policy.applied(self.stream.events);
        None
    }

    /// The reason to report for a failure. When the AMQP side fails (a publish or a hand-over
    /// to the tracker failed, or the heartbeat saw the channel closed), the confirm tracker
    /// knows why: a nack, a return, or the broker refusing one event. Its reason arrives a
    /// moment later; wait briefly for it, so that a refused event is told from a broker that
    /// went away.
    async fn reason(&mut self, failure: Failure) -> Failure {
        if failure.side != Side::Amqp || !failure.error.is_transient() {
            return failure;
        }
        match tokio::time::timeout(REFUSAL_GRACE, &mut self.tracker).await {
            Ok(end) => {
                self.tracker_ended = true;
                match end {
                    Ok(Err(why)) => Failure::new(Side::Amqp, why),
                    _ => failure,
                }
            }
            Err(_) => failure,
        }
    }

    /// Stop publishing, then wait (at most `grace`, if given) for the outstanding verdicts.
    pub(crate) async fn drain(mut self, grace: Option<Duration>) -> Drained<S, P> {
        let publisher = self.stream.finish();
        let verdict = if self.tracker_ended {
            Err(Error::transient("the confirm tracker stopped"))
        } else {
            let waited = match grace {
                Some(grace) => tokio::time::timeout(grace, &mut self.tracker).await.ok(),
                None => Some((&mut self.tracker).await),
            };
            match waited {
                Some(Ok(verdict)) => verdict,
                Some(Err(error)) => Err(Error::transient(format!("confirm tracker: {error}"))),
                None => {
                    self.tracker.abort();
                    Err(Error::transient(
                        "confirms still outstanding at the end of the grace period",
                    ))
                }
            }
        };
        Drained {
            flushed: *self.flush.borrow(),
            source: self.source,
            publisher,
            verdict,
        }
    }

    /// Give up on outstanding verdicts (the session failed).
    pub(crate) fn abort(self) -> (S, P) {
        self.tracker.abort();
        (self.source, self.stream.finish())
    }
}

/// The guard's next proof or trip; never, without a guard.
async fn guard_changed(guard: &mut Option<Guard>) -> Result<()> {
    match guard {
        Some(guard) => guard.changed().await,
        None => std::future::pending().await,
    }
}

/// Why the confirm tracker ended while the session still ran.
fn tracker_failure(end: std::result::Result<Result<Lsn>, tokio::task::JoinError>) -> Error {
    end.unwrap_or_else(|e| Err(Error::transient(format!("confirm tracker: {e}"))))
        .err()
        .unwrap_or_else(|| Error::transient("confirm tracker stopped"))
}
