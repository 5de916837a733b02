//! `walbox run`: serve metrics and health, then relay until SIGINT or SIGTERM.

use std::sync::Arc;

use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::watch;
use tracing::info;

use crate::config::{Config, RunConfig};
use crate::error::{Error, Result};
use crate::pipeline;
use crate::telemetry::{Telemetry, server, slot_poller};

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
    let telemetry = Arc::new(Telemetry::default());
    if let Some(addr) = run.metrics_addr {
        server::serve(addr, Arc::clone(&telemetry)).await?;
    }
    let poller = tokio::spawn(slot_poller::poll(config.clone(), Arc::clone(&telemetry)));
    let outcome = pipeline::run(config, run, stop_rx, telemetry).await;
    poller.abort();
    outcome
}
