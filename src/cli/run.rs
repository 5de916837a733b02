//! `walbox run`: serve metrics and health, then relay until SIGINT or SIGTERM.

use std::sync::Arc;

use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::watch;
use tracing::{info, warn};

use crate::config::{Config, RunConfig};
use crate::control::Control;
use crate::engine;
use crate::error::{Error, Result};
use crate::replay::bookmark;
use crate::telemetry::{Telemetry, server, slot_poller};

pub(crate) async fn run(config: &Config, run: &RunConfig) -> Result<()> {
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut terminate = signal(SignalKind::terminate()).map_err(Error::definite)?;
    let mut interrupt = signal(SignalKind::interrupt()).map_err(Error::definite)?;
    tokio::spawn(async move {
        let name = tokio::select! {
            _ = terminate.recv() => "SIGTERM",
            _ = interrupt.recv() => "SIGINT",
        };
        info!(signal = name, "stop requested");
        let _ = stop_tx.send(true);
    });
    match &config.stream {
        None => info!(
            postgres = %config.postgres_url,
            amqp = %config.amqp_url,
            table = %config.table,
            slot = %config.slot,
            "walbox starting"
        ),
        Some(target) => info!(
            postgres = %config.postgres_url,
            stream = %target.stream,
            super_stream = target.partition_key.is_some(),
            partition_key = target.partition_key.as_ref().map(ToString::to_string).as_deref(),
            nodes = ?target.nodes,
            table = %config.table,
            slot = %config.slot,
            "walbox starting"
        ),
    }
    let telemetry = Arc::new(Telemetry::default());
    if let Some(addr) = run.metrics_addr {
        server::serve(addr, Arc::clone(&telemetry)).await?;
    }
    let poller = tokio::spawn(slot_poller::poll(config.clone(), Arc::clone(&telemetry)));
    let keeper = match run.replay_window {
        Some(window) => {
            let (bookmark, _) = bookmark::names(&config.slot)?;
            info!(%window, %bookmark, "keeping a replay window");
            Some(tokio::spawn(bookmark::keep(
                config.clone(),
                window,
                bookmark,
                Arc::clone(&telemetry),
            )))
        }
        None => {
            tokio::spawn(warn_of_a_stale_bookmark(config.clone()));
            None
        }
    };
    let outcome = engine::run(config, run, stop_rx, telemetry).await;
    poller.abort();
    if let Some(keeper) = keeper {
        keeper.abort();
    }
    outcome
}

/// A bookmark left from an earlier `--replay-window` keeps pinning WAL while nothing moves
/// it; say so once at start (teardown drops it).
async fn warn_of_a_stale_bookmark(config: Config) {
    let Some(bookmark) = crate::config::bookmark_name(&config.slot) else {
        return;
    };
    let Ok(control) = Control::connect(&config).await else {
        return;
    };
    if let Ok(Some(_)) = control.slot(&bookmark).await {
        warn!(%bookmark, "a replay window's bookmark slot exists but --replay-window is not set: it no longer moves and keeps WAL on the server; pass --replay-window again, or drop it with `walbox teardown` (when walbox is stopped) or pg_drop_replication_slot");
    }
}
