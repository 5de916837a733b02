//! Polls the server every few seconds for how far the slot lags and how much WAL it makes
//! PostgreSQL keep, for the `slot_lag_bytes` and `slot_retained_wal_bytes` gauges; and, less
//! often, whether the URL's standbys hold a synchronized copy of the slot
//! (`slot_synced_standbys`).
//!
//! It has its own control connection and only reads: if the server is away it tries again
//! at the next tick, and the relay never waits for it.

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use tracing::debug;

use super::Telemetry;
use crate::config::Config;
use crate::control::Control;
use crate::control::failover::standby_copies;
use crate::error::Result;
use crate::lsn::Lsn;

pub(crate) const POLL_INTERVAL: Duration = Duration::from_secs(5);
/// The standbys are asked every this many polls: each asking opens a connection to each.
const STANDBY_POLLS: u32 = 6;

/// Poll until the task is dropped.
pub(crate) async fn poll(config: Config, telemetry: Arc<Telemetry>) {
    let mut control: Option<Control> = None;
    let mut ticks = tokio::time::interval(POLL_INTERVAL);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut polls = 0u32;
    loop {
        ticks.tick().await;
        if polls.is_multiple_of(STANDBY_POLLS) {
            let copies = standby_copies(&config).await;
            let ready = copies.iter().filter(|copy| copy.ready()).count();
            telemetry.metrics.synced_standbys(ready);
        }
        polls = polls.wrapping_add(1);
        if control.is_none() {
            control = Control::connect(&config).await.ok();
        }
        let Some(connected) = &control else { continue };
        match read_position(connected, &config).await {
            Ok(Some((lag, retained, failover))) => {
                telemetry.metrics.slot_position(lag, retained);
                telemetry.metrics.slot_failover(failover);
            }
            Ok(None) => {}
            Err(error) => {
                debug!(%error, "could not read the slot's position; trying again");
                control = None;
            }
        }
    }
}

/// (lag, retained) in bytes and whether the slot is a failover slot, or None when the slot
/// does not exist (yet).
async fn read_position(control: &Control, config: &Config) -> Result<Option<(i64, i64, bool)>> {
    let Some(slot) = control.slot(&config.slot).await? else {
        return Ok(None);
    };
    let current = control.current_wal_lsn().await?;
    let behind = |position: Option<&str>| {
        position
            .and_then(|text| Lsn::from_str(text).ok())
            .map_or(0, |lsn| {
                current.as_u64().saturating_sub(lsn.as_u64()) as i64
            })
    };
    Ok(Some((
        behind(slot.confirmed_flush_lsn.as_deref()),
        behind(slot.restart_lsn.as_deref()),
        slot.failover == Some(true),
    )))
}
