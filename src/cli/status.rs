//! `walbox status`: the slot, how far behind it is, and what the publication covers.

use serde::Serialize;

use crate::backfill::{self, record::Record};
use crate::config::{Config, bookmark_name};
use crate::control::failover::{StandbyCopy, standby_copies};
use crate::control::{Control, SlotInfo};
use crate::error::Result;
use crate::lsn::Lsn;
use crate::publish::stream::{self, StoredFor};

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
    /// What `walbox replay` can reach, when a replay window is kept.
    replay_window: Option<ReplayRange>,
    /// The slot's copy on each standby among --postgres-url's hosts (failover slots).
    standbys: Vec<StandbyCopy>,
    /// `--target stream`: what the stream stored for walbox's producer(s), by partition.
    #[serde(skip_serializing_if = "Option::is_none")]
    stream: Option<Vec<StoredFor>>,
    /// The slot's cut-over backfill, if one was made (its record).
    backfill: Option<Record>,
}

#[derive(Serialize)]
struct ReplayRange {
    bookmark: String,
    /// Events of transactions that committed at or after this LSN can be replayed.
    oldest_lsn: String,
    /// WAL the server keeps for the window: its position minus the bookmark's restart LSN.
    retained_wal_bytes: Option<u64>,
    /// The bookmark is a failover slot, so a failover keeps the window (PostgreSQL 17; None
    /// before).
    failover: Option<bool>,
}

pub(crate) async fn status(config: &Config, json: bool) -> Result<()> {
    let status = gather(config).await?;
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&status).expect("status serializes")
        );
        return Ok(());
    }
    println!("postgres:          {}", status.postgres);
    match &status.slot {
        Some(slot) => print_slot(slot),
        None => println!(
            "slot:              {} does not exist (run walbox setup)",
            config.slot
        ),
    }
    print_standbys(&status.standbys);
    println!("current WAL:       {}", status.current_wal_lsn);
    match status.lag_bytes {
        Some(lag) => println!("lag:               {lag} bytes"),
        None => println!("lag:               -"),
    }
    print_publication(&status);
    match &status.replay_window {
        Some(window) => print_replay_window(window, &status.current_wal_lsn),
        None => println!("replay window:     none (walbox run --replay-window keeps one)"),
    }
    if let Some(record) = &status.backfill {
        print_backfill(record);
    }
    for stored in status.stream.iter().flatten() {
        println!(
            "stream {}: producer {} stored publishing id {} (commit {}); the broker drops \
             what walbox republishes at or before it",
            stored.stream, stored.producer, stored.publishing_id, stored.commit_lsn
        );
    }
    Ok(())
}

/// Everything `status` shows, asked of the server (and the stream, for `--target stream`).
async fn gather(config: &Config) -> Result<Status> {
    let control = Control::connect(config).await?;
    let slot = control.slot(&config.slot).await?;
    let current = control.current_wal_lsn().await?;
    let lag_bytes = slot
        .as_ref()
        .and_then(SlotInfo::confirmed_flush)
        .map(|confirmed| current.as_u64().saturating_sub(confirmed.as_u64()));
    let publication_exists = control.publication_exists(&config.publication).await?;
    let replay_window = replay_range(&control, config, current).await?;
    Ok(Status {
        postgres: config.postgres_url.redacted(),
        slot,
        current_wal_lsn: current.to_string(),
        lag_bytes,
        publication: config.publication.to_string(),
        publication_exists,
        publication_tables: control.publication_tables(&config.publication).await?,
        replay_window,
        standbys: standby_copies(config).await,
        stream: match &config.stream {
            Some(target) => {
                Some(stream::stored_positions(target, config.slot.as_str(), current).await?)
            }
            None => None,
        },
        backfill: backfill::status(config).await?,
    })
}

/// The replay window's range, when its bookmark slot exists.
async fn replay_range(
    control: &Control,
    config: &Config,
    current: Lsn,
) -> Result<Option<ReplayRange>> {
    let window = match bookmark_name(&config.slot) {
        Some(bookmark) => control.slot(&bookmark).await?.map(|info| (bookmark, info)),
        None => None,
    };
    Ok(window.map(|(bookmark, info)| ReplayRange {
        bookmark: bookmark.to_string(),
        oldest_lsn: info
            .confirmed_flush()
            .map_or_else(|| "-".to_owned(), |lsn| lsn.to_string()),
        retained_wal_bytes: info
            .restart_lsn
            .as_deref()
            .and_then(|text| text.parse::<Lsn>().ok())
            .map(|restart| current.as_u64().saturating_sub(restart.as_u64())),
        failover: info.failover,
    }))
}

/// The live slot, as `status` shows it.
fn print_slot(slot: &SlotInfo) {
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
    println!(
        "  failover:        {}",
        match slot.failover {
            Some(true) => "yes (standbys with sync_replication_slots keep a copy)",
            Some(false) => "no: a failover loses the slot (`walbox setup` turns it on)",
            None => "not before PostgreSQL 17: a failover loses the slot",
        }
    );
}

/// The slot's copy on each standby: whether a failover to it keeps the slot.
fn print_standbys(standbys: &[StandbyCopy]) {
    for copy in standbys {
        let state = if copy.ready() {
            format!(
                "synchronized copy, confirmed flush {}",
                copy.confirmed_flush_lsn.as_deref().unwrap_or("-")
            )
        } else if copy.present {
            "temporary copy: not yet safe to fail over to".to_owned()
        } else {
            "no copy: a failover to it loses the slot".to_owned()
        };
        println!("  standby {}: {state}", copy.standby);
    }
}

fn print_publication(status: &Status) {
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
}

/// The replay window, from its oldest replayable commit to the server's current position.
fn print_replay_window(window: &ReplayRange, current_wal_lsn: &str) {
    println!(
        "replay window:     {} to {} (bookmark slot {}, {} bytes of WAL retained)",
        window.oldest_lsn,
        current_wal_lsn,
        window.bookmark,
        window
            .retained_wal_bytes
            .map_or_else(|| "-".to_owned(), |bytes| bytes.to_string())
    );
    println!(
        "  failover:        {}",
        match window.failover {
            Some(true) => "yes (standbys with sync_replication_slots keep the window)",
            Some(false) => {
                "no: a failover loses the window (`walbox run --replay-window` turns it \
                 on while the live slot is a failover slot)"
            }
            None => "not before PostgreSQL 17: a failover loses the window",
        }
    );
}

/// The cut-over backfill's record, as `status` shows it.
fn print_backfill(record: &Record) {
    let of = record
        .rows_expected
        .map_or_else(|| "?".to_owned(), |rows| rows.to_string());
    println!(
        "backfill:          {} ({} of {of} rows confirmed, attempt {})",
        record.state, record.rows_confirmed, record.attempts
    );
    println!("  predicate:       {}", record.predicate);
    println!(
        "  snapshot:        {} at consistent point {}",
        record.snapshot.as_deref().unwrap_or("-"),
        record.consistent_lsn.as_deref().unwrap_or("-")
    );
    let key = |key: &Option<Vec<Option<String>>>| {
        key.as_ref()
            .map_or_else(|| "-".to_owned(), backfill::record::show_key)
    };
    println!(
        "  last confirmed:  {} (the snapshot's last row: {})",
        key(&record.last_key),
        key(&record.end_key)
    );
    println!(
        "  started:         {}; updated {}{}",
        record.started_at,
        record.updated_at,
        record
            .finished_at
            .as_ref()
            .map(|at| format!("; finished {at}"))
            .unwrap_or_default()
    );
}
