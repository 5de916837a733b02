//! `walbox teardown`: drop the slot, the replay window's bookmark and the publication, so
//! PostgreSQL keeps no WAL for walbox, and forget the slot's backfill record. The outbox table
//! and the exchange are left alone; so is a publication the connected role does not own (it
//! says who may drop it).

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
    // A new slot is a new cut-over: its backfill, if asked for, starts afresh.
    if crate::backfill::forget(config).await? {
        println!("backfill record of slot {}: deleted", config.slot);
    }
    // The slots are what make PostgreSQL keep WAL; a publication costs nothing. A role made by
    // sql/roles.sql does not own the publication (its creator does) and may not drop it: say
    // who may, rather than fail after the slots are gone.
    if let Some(owner) = control
        .publication_owner_if_not_us(&config.publication)
        .await?
    {
        println!(
            "publication {publication}: kept: only its owner ({owner}) or a superuser may drop \
             it; as that role: DROP PUBLICATION \"{publication}\"",
            publication = config.publication
        );
    } else if control.publication_exists(&config.publication).await? {
        control.drop_publication(&config.publication).await?;
        println!("publication {}: dropped", config.publication);
    } else {
        println!("publication {}: did not exist", config.publication);
    }
    Ok(())
}
