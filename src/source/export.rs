//! Creating the slot over the replication protocol with an exported snapshot, for the cut-over
//! backfill.
//!
//! `CREATE_REPLICATION_SLOT … LOGICAL pgoutput` with `SNAPSHOT 'export'` answers with the
//! slot's consistent point and the name of a snapshot that sees exactly the transactions that
//! committed before that point: the slot streams every transaction that commits after it. Rows
//! read in that snapshot and events read from the slot therefore meet at one boundary, with
//! nothing missed and nothing twice. The snapshot can be imported (`SET TRANSACTION SNAPSHOT`)
//! only while the session that made the slot stays open and runs nothing else: hence
//! [`ExportedSlot`] holds the session until the reader has imported the snapshot.

use super::connect_to_primary;
use crate::config::Config;
use crate::error::{Error, Result};
use crate::lsn::Lsn;

/// PostgreSQL 15 took the option list form of CREATE_REPLICATION_SLOT; 17 added FAILOVER to it.
const OPTION_LIST_SINCE: i32 = 150_000;
const FAILOVER_SINCE: i32 = 170_000;

/// A slot just created, and the session whose exported snapshot is still valid.
pub(crate) struct ExportedSlot {
    /// Dropping it ends the session, and with it the exported snapshot (not the slot).
    _session: pgwire_replication::ReplicationClient,
    /// The slot streams the transactions that commit at or after this position.
    pub(crate) consistent_point: Lsn,
    /// The snapshot's name, for `SET TRANSACTION SNAPSHOT`.
    pub(crate) snapshot: String,
}

/// Create `config.slot` (failover on from PostgreSQL 17, as [`crate::control::Control`]
/// creates it) and export its snapshot. `server_version_num` picks the command's form.
pub(crate) async fn create_slot_exporting_snapshot(
    config: &Config,
    server_version_num: i32,
) -> Result<ExportedSlot> {
    let mut session = connect_to_primary(config, Lsn::ZERO).await?;
    let command = create_command(config.slot.quoted(), server_version_num);
    let rows = session
        .simple_query(&command)
        .await
        .map_err(Error::from_replication)?;
    // slot_name, consistent_point, snapshot_name, output_plugin
    let row = rows.first().ok_or_else(|| {
        Error::definite("CREATE_REPLICATION_SLOT returned no row (an unsupported server?)")
    })?;
    let text = |index: usize| {
        row.get(index)
            .cloned()
            .flatten()
            .and_then(|bytes| String::from_utf8(bytes.to_vec()).ok())
    };
    let consistent_point = text(1)
        .and_then(|lsn| lsn.parse::<Lsn>().ok())
        .ok_or_else(|| Error::definite("CREATE_REPLICATION_SLOT returned no consistent point"))?;
    let snapshot = text(2)
        .filter(|name| valid_snapshot_name(name))
        .ok_or_else(|| Error::definite("CREATE_REPLICATION_SLOT exported no usable snapshot"))?;
    Ok(ExportedSlot {
        _session: session,
        consistent_point,
        snapshot,
    })
}

/// The command for this server version. Slot names are validated (lowercase letters, digits,
/// underscores) and quoted.
fn create_command(slot: String, server_version_num: i32) -> String {
    if server_version_num >= FAILOVER_SINCE {
        format!(
            "CREATE_REPLICATION_SLOT {slot} LOGICAL pgoutput (SNAPSHOT 'export', FAILOVER true)"
        )
    } else if server_version_num >= OPTION_LIST_SINCE {
        format!("CREATE_REPLICATION_SLOT {slot} LOGICAL pgoutput (SNAPSHOT 'export')")
    } else {
        format!("CREATE_REPLICATION_SLOT {slot} LOGICAL pgoutput EXPORT_SNAPSHOT")
    }
}

/// An exported snapshot's name is hex digits and dashes (e.g. `00000003-0000001B-1`); anything
/// else is not pasted into `SET TRANSACTION SNAPSHOT`.
pub(crate) fn valid_snapshot_name(name: &str) -> bool {
    !name.is_empty() && name.chars().all(|c| c.is_ascii_hexdigit() || c == '-')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_command_fits_the_server_version() {
        let slot = || "\"walbox\"".to_owned();
        assert_eq!(
            create_command(slot(), 170_002),
            "CREATE_REPLICATION_SLOT \"walbox\" LOGICAL pgoutput (SNAPSHOT 'export', FAILOVER true)"
        );
        assert_eq!(
            create_command(slot(), 150_010),
            "CREATE_REPLICATION_SLOT \"walbox\" LOGICAL pgoutput (SNAPSHOT 'export')"
        );
        assert_eq!(
            create_command(slot(), 140_000),
            "CREATE_REPLICATION_SLOT \"walbox\" LOGICAL pgoutput EXPORT_SNAPSHOT"
        );
    }

    #[test]
    fn only_snapshot_names_pass() {
        assert!(valid_snapshot_name("00000003-0000001B-1"));
        assert!(!valid_snapshot_name("x'; DROP TABLE outbox; --"));
        assert!(!valid_snapshot_name(""));
    }
}
