//! The bookmark slot that keeps the replay window decodable, and the task of `walbox run`
//! that moves it.
//!
//! PostgreSQL cannot rewind a logical slot, so history to replay must be kept on purpose: a
//! second slot, `<slot>_bookmark`, that nobody streams from. It pins the WAL after its
//! position, and the keeper advances it (`pg_replication_slot_advance`) so that it trails the
//! live slot by the configured window. The live slot is never touched here.

use std::time::{Duration, SystemTime};

use tracing::{info, warn};

use super::window::{ReplayWindow, Trail};
use crate::config::{Config, Identifier};
use crate::control::{Control, Ensured};
use crate::error::{Error, Result};
use crate::lsn::Lsn;

/// How often the keeper looks at the live slot and moves the bookmark.
const KEEP_INTERVAL: Duration = Duration::from_secs(2);

/// Longest slot name PostgreSQL takes (NAMEDATALEN - 1).
const MAX_SLOT_NAME: usize = 63;
const BOOKMARK_SUFFIX: &str = "_bookmark";
/// A replay's temporary copy: `<slot>_replay_<pid>`, the pid up to 7 digits.
const COPY_SUFFIX_MAX: usize = "_replay_".len() + 7;

/// The longest `--slot` that leaves room for the bookmark's and the copies' names.
pub const MAX_SLOT_WITH_REPLAY: usize = MAX_SLOT_NAME - COPY_SUFFIX_MAX;

/// `<slot>_bookmark`; none when `slot` is too long to have one.
pub fn bookmark_name(slot: &Identifier) -> Option<Identifier> {
    derived(format!("{slot}{BOOKMARK_SUFFIX}"))
}

/// `<slot>_replay_<pid>`: the temporary copy one replay streams from.
pub fn copy_name(slot: &Identifier) -> Option<Identifier> {
    derived(format!("{slot}_replay_{}", std::process::id()))
}

fn derived(name: String) -> Option<Identifier> {
    Identifier::new("derived slot name", &name).ok()
}

/// The slot names a replay window needs. Configuration checks `--slot` against
/// [`MAX_SLOT_WITH_REPLAY`] first, so this fails only on a bug.
pub fn names(slot: &Identifier) -> Result<(Identifier, Identifier)> {
    bookmark_name(slot).zip(copy_name(slot)).ok_or_else(|| {
        Error::definite(format!(
            "--slot {slot} is too long to name a replay window's slots after it"
        ))
    })
}

/// Keep the bookmark trailing the live slot by `window`, until the task is dropped. Failures
/// are logged and retried: the window is a convenience next to the relay, never a reason to
/// stop relaying.
pub async fn keep(config: Config, window: ReplayWindow, bookmark: Identifier) {
    let mut trail = Trail::new(window);
    let mut control: Option<Control> = None;
    let mut failing = false;
    let mut ticker = tokio::time::interval(KEEP_INTERVAL);
    loop {
        ticker.tick().await;
        let outcome = match &control {
            Some(connected) => step(connected, &config, &bookmark, &mut trail).await,
            None => match Control::connect(&config).await {
                Ok(connected) => {
                    let outcome = step(&connected, &config, &bookmark, &mut trail).await;
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
                    warn!(%bookmark, %error, "replay window: cannot move the bookmark slot; retrying");
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
) -> Result<()> {
    let Some(live) = control
        .slot(&config.slot)
        .await?
        .and_then(|info| info.confirmed_flush())
    else {
        // The relay creates the live slot; the bookmark follows once it exists.
        return Ok(());
    };
    if control.ensure_bookmark(&config.slot, bookmark).await? == Ensured::Created {
        info!(%bookmark, from = %live, "replay window: created the bookmark slot; events from here on can be replayed");
    }
    let position = control
        .slot(bookmark)
        .await?
        .and_then(|info| info.confirmed_flush())
        .unwrap_or(Lsn::ZERO);
    if let Some(target) = trail.observe(SystemTime::now(), live, position) {
        let moved_to = control.advance_slot(bookmark, target).await?;
        tracing::debug!(%bookmark, %moved_to, %live, "replay window: moved the bookmark");
    }
    Ok(())
}
