//! `walbox teardown`: drop the slot, the replay window's bookmark and the publication, so PostgreSQL keeps no WAL for
//! walbox. The outbox table and the exchange are left alone.

use crate::config::{Config, bookmark_name};
use crate::control::Control;
use crate::error::{Error, Result};

pub(crate) async fn teardown(config: &Config) -> Result<()> {
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
    let bookmark = bookmark_name(&config.slot);
    let bookmark_slot = match &bookmark {
        Some(bookmark) => control.slot(bookmark).await?,
        None => None,
    };
    match (bookmark, bookmark_slot) {
        (Some(bookmark), Some(slot)) if slot.active => {
            return Err(Error::definite(format!(
                "the replay window's bookmark slot {bookmark} is in use by pid {}; stop it first",
                slot.active_pid
                    .map_or("?".to_owned(), |pid| pid.to_string())
            )));
        }
        (Some(bookmark), Some(_)) => {
            control.drop_slot(&bookmark).await?;
            println!("replay window bookmark slot {bookmark}: dropped");
        }
        _ => {}
    }
    if control.publication_exists(&config.publication).await? {
        control.drop_publication(&config.publication).await?;
        println!("publication {}: dropped", config.publication);
    } else {
        println!("publication {}: did not exist", config.publication);
    }
    Ok(())
}
