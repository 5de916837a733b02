//! `walbox teardown`: drop the slot and the publication, so PostgreSQL keeps no WAL for
//! walbox. The outbox table and the exchange are left alone.

use crate::config::Config;
use crate::control::Control;
use crate::error::{Error, Result};

pub async fn teardown(config: &Config) -> Result<()> {
    let control = Control::connect(config).await?;
    match control.slot(&config.slot).await? {
        Some(slot) if slot.active => {
            return Err(Error::definite(format!(
                "replication slot {} is in use by pid {}; stop walbox first",
                config.slot,
                slot.active_pid
                    .map_or("?".to_owned(), |pid| pid.to_string())
            )));
        }
        Some(_) => {
            control.drop_slot(&config.slot).await?;
            println!("replication slot {}: dropped", config.slot);
        }
        None => println!("replication slot {}: did not exist", config.slot),
    }
    if control.publication_exists(&config.publication).await? {
        control.drop_publication(&config.publication).await?;
        println!("publication {}: dropped", config.publication);
    } else {
        println!("publication {}: did not exist", config.publication);
    }
    Ok(())
}
