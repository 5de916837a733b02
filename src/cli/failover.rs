//! What `setup` says about failover: whether the slot survives a PostgreSQL failover, and
//! which server settings that needs (docs: operations/postgres-failover.md).

use tracing::warn;

use crate::config::Config;
use crate::control::failover::{
    FAILOVER_SLOTS_SINCE, FailoverSettings, StandbyCopy, standby_copies,
};
use crate::control::{Control, SlotInfo};
use crate::error::Result;
use crate::source;

/// Turn failover on for a slot made without it (PostgreSQL 17), then print what the primary
/// and the standbys of the URL say about failover, and what to change.
pub(super) async fn explain(control: &Control, config: &Config, slot: &SlotInfo) -> Result<()> {
    let settings = control.failover_settings().await?;
    let major = settings.server_version_num / 10_000;
    if settings.server_version_num < FAILOVER_SLOTS_SINCE {
        println!(
            "failover:          PostgreSQL {major} has no failover slots (they came in 17): the \
             slot lives on this server only, and a failover to a standby loses it. walbox then \
             stops with a definite error on the new primary; events committed between its last \
             confirmed position and the failover need accounting by hand"
        );
        return Ok(());
    }
    let failover = turn_on(config, slot).await;
    print_primary(&settings);
    let copies = standby_copies(config).await;
    if copies.is_empty() {
        println!(
            "  standbys:        none in --postgres-url to check. Each standby needs \
             sync_replication_slots = on, hot_standby_feedback = on, primary_slot_name, and \
             dbname= in primary_conninfo; list them as further hosts of --postgres-url \
             (target_session_attrs=read-write) so walbox finds the new primary"
        );
    }
    for copy in &copies {
        print_standby(copy, failover);
    }
    Ok(())
}

/// Turns failover on for a slot made without it; whether the slot is a failover slot now. A
/// slot that cannot be changed (something streams from it) is reported, not an error.
async fn turn_on(config: &Config, slot: &SlotInfo) -> bool {
    if slot.failover == Some(true) {
        println!("failover:          slot {} is a failover slot", config.slot);
        return true;
    }
    match source::enable_failover(config, &config.slot).await {
        Ok(()) => {
            println!("failover:          turned on for slot {}", config.slot);
            true
        }
        Err(error) => {
            warn!(%error, "could not turn failover on for the slot");
            println!(
                "failover:          OFF for slot {}: a failover loses it. Stop whatever \
                 streams from it and run `walbox setup` again ({error})",
                config.slot
            );
            false
        }
    }
}

/// The primary's side: which standbys' slots logical changes wait for.
fn print_primary(settings: &FailoverSettings) {
    if settings.synchronized_standby_slots.is_empty() {
        println!(
            "  primary:         synchronized_standby_slots is empty: set it to the standbys' \
             physical slots (primary_slot_name), or walbox may confirm events a promoted \
             standby never received"
        );
    } else {
        println!(
            "  primary:         synchronized_standby_slots = '{}' (streaming now: {})",
            settings.synchronized_standby_slots,
            match settings.active_standby_slots.as_slice() {
                [] => "none: logical changes wait for them".to_owned(),
                active => active.join(", "),
            }
        );
    }
}

/// One standby: its copy of the slot, and the settings it lacks to keep one.
fn print_standby(copy: &StandbyCopy, failover: bool) {
    let mut missing = Vec::new();
    if copy.sync_replication_slots.as_deref() != Some("on") {
        missing.push("sync_replication_slots = on");
    }
    if copy.hot_standby_feedback.as_deref() != Some("on") {
        missing.push("hot_standby_feedback = on");
    }
    if copy.primary_slot_name.is_none() {
        missing.push("primary_slot_name (named in the primary's synchronized_standby_slots)");
    }
    let state = if copy.ready() {
        format!(
            "holds a synchronized copy (confirmed flush {})",
            copy.confirmed_flush_lsn.as_deref().unwrap_or("-")
        )
    } else if copy.present {
        "holds a copy still temporary: not yet safe to fail over to (it becomes persistent \
         once the primary's slot moves on)"
            .to_owned()
    } else if failover {
        "has no copy yet (the sync worker copies it within seconds, up to 30 s)".to_owned()
    } else {
        "has no copy".to_owned()
    };
    println!("  standby {}: {state}", copy.standby);
    if !missing.is_empty() {
        println!("    needs:         {}", missing.join(", "));
    }
}
