//! `walbox run`: relay until SIGINT or SIGTERM.

use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::watch;
use tracing::info;

use crate::config::{Config, RunConfig};
use crate::error::{Error, Result};
use crate::pipeline;

pub async fn run(config: &Config, run: &RunConfig) -> Result<()> {
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
    info!(
        postgres = %config.postgres_url,
        amqp = %config.amqp_url,
        table = %config.table,
        slot = %config.slot,
        "walbox starting"
    );
    pipeline::run(config, run, stop_rx).await
}
