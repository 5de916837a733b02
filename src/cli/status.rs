//! `walbox status`: the slot, how far behind it is, and what the publication covers.

use serde::Serialize;

use crate::config::Config;
use crate::control::{Control, SlotInfo};
use crate::error::Result;

#[derive(Serialize)]
struct Status {
    postgres: String,
    slot: Option<SlotInfo>,
    current_wal_lsn: String,
    /// Bytes of WAL between the server's current position and the slot's confirmed position.
    lag_bytes: Option<u64>,
    publication: String,
    publication_exists: bool,
    publication_tables: Vec<String>,
}

pub async fn status(config: &Config, json: bool) -> Result<()> {
    let control = Control::connect(config).await?;
    let slot = control.slot(&config.slot).await?;
    let current = control.current_wal_lsn().await?;
    let lag_bytes = slot
        .as_ref()
        .and_then(SlotInfo::confirmed_flush)
        .map(|confirmed| current.as_u64().saturating_sub(confirmed.as_u64()));
    let publication_exists = control.publication_exists(&config.publication).await?;
    let status = Status {
        postgres: config.postgres_url.redacted(),
        slot,
        current_wal_lsn: current.to_string(),
        lag_bytes,
        publication: config.publication.to_string(),
        publication_exists,
        publication_tables: control.publication_tables(&config.publication).await?,
    };
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&status).expect("status serializes")
        );
        return Ok(());
    }
    println!("postgres:          {}", status.postgres);
    match &status.slot {
        Some(slot) => {
            println!(
                "slot:              {} ({}, plugin {})",
                slot.slot_name,
                slot.slot_type,
                slot.plugin.as_deref().unwrap_or("-")
            );
            println!(
                "  active:          {}{}",
                slot.active,
                slot.active_pid
                    .map(|pid| format!(" (pid {pid})"))
                    .unwrap_or_default()
            );
            println!(
                "  confirmed flush: {}",
                slot.confirmed_flush_lsn.as_deref().unwrap_or("-")
            );
            println!(
                "  restart:         {}",
                slot.restart_lsn.as_deref().unwrap_or("-")
            );
            println!(
                "  wal status:      {}",
                slot.wal_status.as_deref().unwrap_or("-")
            );
        }
        None => println!(
            "slot:              {} does not exist (run walbox setup)",
            config.slot
        ),
    }
    println!("current WAL:       {}", status.current_wal_lsn);
    match status.lag_bytes {
        Some(lag) => println!("lag:               {lag} bytes"),
        None => println!("lag:               -"),
    }
    if status.publication_exists {
        println!(
            "publication:       {} ({})",
            status.publication,
            status.publication_tables.join(", ")
        );
    } else {
        println!(
            "publication:       {} does not exist (run walbox setup)",
            status.publication
        );
    }
    Ok(())
}
