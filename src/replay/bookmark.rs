//! The bookmark slot that keeps the replay window decodable, and the task of `walbox run`
//! that moves it.
//!
//! PostgreSQL cannot rewind a logical slot, so history to replay must be kept on purpose: a
//! second slot, `<slot>_bookmark`, that nobody streams from. It pins the WAL after its
//! position, and the keeper advances it (`pg_replication_slot_advance`) so that it trails the
//! live slot by the configured window. The live slot is never touched here.
//!
//! On PostgreSQL 17 the bookmark carries the live slot's failover flag, so a standby keeps a
//! synchronized copy and a failover keeps the window: `pg_copy_logical_replication_slot` does
//! not copy the flag (PostgreSQL makes every copy without it), so the keeper turns it on
//! afterwards with `ALTER_REPLICATION_SLOT … (FAILOVER true)`. Whether it is on is
//! `walbox_replay_window_failover` and a line of `walbox status`.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tracing::{info, warn};

use super::window::Trail;
use crate::config::{Config, Identifier, ReplayWindow, bookmark_name, copy_name};
use crate::control::{Control, Ensured};
use crate::error::{Error, Result};
use crate::lsn::Lsn;
use crate::source;
use crate::telemetry::{Metrics, Telemetry};

/// How often the keeper looks at the live slot and moves the bookmark.
const KEEP_INTERVAL: Duration = Duration::from_secs(2);

/// The slot names a replay window needs: the bookmark and this process's copy. Configuration
/// checks `--slot` against the longest name that leaves room for both first, so this fails only on
/// a bug.
pub(crate) fn names(slot: &Identifier) -> Result<(Identifier, Identifier)> {
    bookmark_name(slot).zip(copy_name(slot)).ok_or_else(|| {
        Error::definite(format!(
            "--slot {slot} is too long to name a replay window's slots after it"
        ))
    })
}

/// Keep the bookmark trailing the live slot by `window`, until the task is dropped. Failures
/// are logged and retried: the window is a convenience next to the relay, never a reason to
/// stop relaying.
pub(crate) async fn keep(
    config: Config,
    window: ReplayWindow,
    bookmark: Identifier,
    telemetry: Arc<Telemetry>,
) {
    let metrics = &telemetry.metrics;
    let mut trail = Trail::new(window);
    let mut control: Option<Control> = None;
    let mut failing = false;
    let mut ticker = tokio::time::interval(KEEP_INTERVAL);
    loop {
        ticker.tick().await;
        let outcome = match &control {
            Some(connected) => step(connected, &config, &bookmark, &mut trail, metrics).await,
            None => match Control::connect(&config).await {
                Ok(connected) => {
                    let outcome = step(&connected, &config, &bookmark, &mut trail, metrics).await;
                    control = Some(connected);
                    outcome
                }
                Err(error) => Err(error),
            },
        };
        match outcome {
            Ok(()) if failing => {
                info!(%bookmark, "replay window: keeping the bookmark slot again");
                failing = false;
            }
            Ok(()) => {}
            Err(error) => {
                if !failing {
                    warn!(%bookmark, %error, "replay window: cannot keep the bookmark slot; retrying");
                    failing = true;
                }
                if error.is_transient() {
                    control = None;
                }
            }
        }
    }
}

async fn step(
    control: &Control,
    config: &Config,
    bookmark: &Identifier,
    trail: &mut Trail,
    metrics: &Metrics,
) -> Result<()> {
    let live_slot = control.slot(&config.slot).await?;
    let Some((live, live_failover)) = live_slot
        .as_ref()
        .and_then(|info| Some((info.confirmed_flush()?, info.failover)))
    else {
        // The relay creates the live slot; the bookmark follows once it exists.
        return Ok(());
    };
    if control.ensure_bookmark(&config.slot, bookmark).await? == Ensured::Created {
        info!(%bookmark, from = %live, "replay window: created the bookmark slot; events from here on can be replayed");
    }
    let kept = control.slot(bookmark).await?;
    let position = kept
        .as_ref()
        .and_then(|info| info.confirmed_flush())
        .unwrap_or(Lsn::ZERO);
    if let Some(target) = trail.observe(SystemTime::now(), live, position) {
        let moved_to = control.advance_slot(bookmark, target).await?;
        tracing::debug!(%bookmark, %moved_to, %live, "replay window: moved the bookmark");
    }
    let failover = kept.and_then(|info| info.failover);
    carry_failover(config, bookmark, live_failover, failover, metrics).await
}

/// Give the bookmark the live slot's failover flag when it lacks it (a copy never has it, and
/// a bookmark made by an older walbox neither), and say in the metric whether it has it. A
/// bookmark without it is lost by a failover while the live slot survives: the window then
/// silently starts again at the promotion.
async fn carry_failover(
    config: &Config,
    bookmark: &Identifier,
    live: Option<bool>,
    kept: Option<bool>,
    metrics: &Metrics,
) -> Result<()> {
    let on = match (live, kept) {
        (Some(true), Some(false)) => {
            metrics.replay_window_failover(false);
            source::enable_failover(config, bookmark).await?;
            info!(%bookmark, "replay window: turned failover on for the bookmark slot, as the live slot has it; standbys keep a synchronized copy of the window");
            true
        }
        (_, kept) => kept == Some(true),
    };
    metrics.replay_window_failover(on);
    Ok(())
}
