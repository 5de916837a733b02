//! Failover slots: keeping the slot through a PostgreSQL failover, and refusing to go on
//! when it was not kept.
//!
//! A logical slot lives on the server that made it. From PostgreSQL 17 a slot created with
//! `failover` is copied to physical standbys running with `sync_replication_slots = on`, and
//! the primary's `synchronized_standby_slots` holds logical changes back until those standbys
//! have the WAL. After a promotion walbox resumes from that copy, which is usually a little
//! behind what it had confirmed (the sync worker lags): events repeat, none is lost.
//!
//! What can go wrong is told apart here, by the server's timeline (it grows at each
//! promotion): a slot missing on the new primary, a copy still `temporary`, or a slot made on
//! that server rather than synchronized is a definite error that says a failover happened and
//! what to do, never a silently recreated slot.

use std::sync::atomic::{AtomicU32, Ordering};

use serde::Serialize;
use tracing::debug;

use super::{Control, SlotInfo};
use crate::config::Config;
use crate::config::postgres::{endpoints, single_host};
use crate::error::{Error, Result};

/// The first server version with failover slots.
pub(crate) const FAILOVER_SLOTS_SINCE: i32 = 170_000;

/// The timeline the slot was last seen on, by this process (0: not yet).
static SLOT_TIMELINE: AtomicU32 = AtomicU32::new(0);

/// What the primary's settings say about failover, for `setup`.
#[derive(Clone, Debug, Serialize)]
pub(crate) struct FailoverSettings {
    pub(crate) server_version_num: i32,
    /// The primary's `synchronized_standby_slots` (PostgreSQL 17), empty when unset.
    pub(crate) synchronized_standby_slots: String,
    /// Of those, the physical slots that exist and are streaming to a standby now.
    pub(crate) active_standby_slots: Vec<String>,
}

/// One standby's copy of the slot, as `status` and the metrics show it.
#[derive(Clone, Debug, Serialize)]
pub(crate) struct StandbyCopy {
    /// host:port from the PostgreSQL URL.
    pub(crate) standby: String,
    /// Whether the standby holds the slot at all.
    pub(crate) present: bool,
    /// Synchronized from the primary (PostgreSQL 17).
    pub(crate) synced: bool,
    /// A temporary copy is dropped at promotion: it does not survive a failover yet.
    pub(crate) temporary: bool,
    pub(crate) confirmed_flush_lsn: Option<String>,
    /// The standby's settings that failover needs (PostgreSQL 17): what `setup` explains.
    pub(crate) sync_replication_slots: Option<String>,
    pub(crate) hot_standby_feedback: Option<String>,
    pub(crate) primary_slot_name: Option<String>,
}

impl StandbyCopy {
    /// The copy would survive a promotion of this standby.
    pub(crate) fn ready(&self) -> bool {
        self.present && self.synced && !self.temporary
    }
}

impl Control {
    /// `server_version_num`, e.g. 170002.
    pub(crate) async fn server_version_num(&self) -> Result<i32> {
        let row = self
            .client
            .query_one("SELECT current_setting('server_version_num')::int", &[])
            .await
            .map_err(Self::sql_error("reading the server version"))?;
        Ok(row.get(0))
    }

    /// The primary's timeline (from its current WAL file's name, which any role may read),
    /// or None on a standby.
    pub(crate) async fn timeline(&self) -> Result<Option<u32>> {
        let row = self
            .client
            .query_one(
                "SELECT CASE WHEN pg_is_in_recovery() THEN NULL \
                 ELSE substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8) END",
                &[],
            )
            .await
            .map_err(Self::sql_error("reading the server's timeline"))?;
        let text: Option<String> = row.get(0);
        Ok(text.and_then(|hex| u32::from_str_radix(&hex, 16).ok()))
    }

    pub(crate) async fn failover_settings(&self) -> Result<FailoverSettings> {
        let server_version_num = self.server_version_num().await?;
        let synchronized_standby_slots: String = self
            .client
            .query_one(
                "SELECT coalesce(current_setting('synchronized_standby_slots', true), '')",
                &[],
            )
            .await
            .map_err(Self::sql_error("reading synchronized_standby_slots"))?
            .get(0);
        let names: Vec<String> = synchronized_standby_slots
            .split(',')
            .map(|name| name.trim().trim_matches('"').to_owned())
            .filter(|name| !name.is_empty())
            .collect();
        let active_standby_slots = self
            .client
            .query(
                "SELECT slot_name::text FROM pg_replication_slots \
                 WHERE slot_type = 'physical' AND active AND slot_name = ANY($1) ORDER BY 1",
                &[&names],
            )
            .await
            .map_err(Self::sql_error("reading the standbys' physical slots"))?
            .iter()
            .map(|row| row.get(0))
            .collect();
        Ok(FailoverSettings {
            server_version_num,
            synchronized_standby_slots,
            active_standby_slots,
        })
    }

    /// Create the logical slot, with failover from PostgreSQL 17 on; returns where it
    /// captures from and whether failover is on.
    pub(super) async fn create_failover_slot(
        &self,
        slot: &crate::config::Identifier,
    ) -> Result<(String, bool)> {
        let failover = self.server_version_num().await? >= FAILOVER_SLOTS_SINCE;
        let sql = if failover {
            // (name, plugin, temporary, two_phase, failover)
            "SELECT lsn::text FROM pg_create_logical_replication_slot($1, 'pgoutput', false, false, true)"
        } else {
            "SELECT lsn::text FROM pg_create_logical_replication_slot($1, 'pgoutput')"
        };
        let row = self
            .client
            .query_one(sql, &[&slot.as_str()])
            .await
            .map_err(Self::sql_error("creating the replication slot"))?;
        Ok((row.get(0), failover))
    }

    /// The slot as found by [`Control::prepare`], checked against a failover: `timeline` is
    /// the server's now. Returns the error to stop with, if any.
    pub(super) fn check_after_failover(
        config: &Config,
        found: Option<&SlotInfo>,
        timeline: Option<u32>,
    ) -> Option<Error> {
        let now = timeline?;
        let before = SLOT_TIMELINE.load(Ordering::Relaxed);
        let error = verdict(&config.slot.to_string(), before, now, found);
        if found.is_some() && error.is_none() {
            SLOT_TIMELINE.store(now, Ordering::Relaxed);
        }
        error.map(Error::definite)
    }
}

impl Control {
    /// `walbox run` found no slot: on a server of timeline above 1 (promoted at some time) that
    /// may be a slot a failover lost, and making a new one would skip the events committed
    /// around it without notice, so only `walbox setup` may.
    pub(crate) fn refuse_slot_on_promoted_server(
        config: &Config,
        timeline: Option<u32>,
    ) -> Option<Error> {
        promoted_without_slot(&config.slot.to_string(), timeline?).map(Error::definite)
    }
}

/// Why a first `walbox run` must not create slot `slot` on a server of timeline `now`.
fn promoted_without_slot(slot: &str, now: u32) -> Option<String> {
    (now > 1).then(|| {
        format!(
            "replication slot {slot} does not exist, and this PostgreSQL server was promoted \
             at some time (timeline {now}): if a failover lost the slot, a new one would skip \
             the events committed around it without notice, so `walbox run` does not create \
             it. If this is walbox's first start on this server, run `walbox setup` (it \
             creates the slot), then start walbox again. After a failover: {WHAT_TO_DO}"
        )
    })
}

/// Why walbox must stop, if it must: the slot as found on a server of timeline `now`, when it
/// was last seen on timeline `before` (0: never, e.g. a fresh walbox process).
fn verdict(slot: &str, before: u32, now: u32, found: Option<&SlotInfo>) -> Option<String> {
    let failed_over = before != 0 && now > before;
    if !failed_over {
        return None;
    }
    match found {
        Some(info) if info.temporary => Some(format!(
            "PostgreSQL failed over (timeline {before} -> {now}) and the new primary holds \
             replication slot {slot} only as a temporary copy, which does not carry walbox's \
             position. {WHAT_TO_DO}"
        )),
        Some(info) if info.synced == Some(false) => Some(format!(
            "PostgreSQL failed over (timeline {before} -> {now}) and replication slot {slot} \
             on the new primary was never synchronized from the old one: it was made on this \
             server, so its position says nothing about what walbox relayed. {WHAT_TO_DO}"
        )),
        Some(_) => None,
        None => Some(format!(
            "PostgreSQL failed over (timeline {before} -> {now}) and the new primary has no \
             replication slot {slot}: the standby held no synchronized copy of it. {WHAT_TO_DO}"
        )),
    }
}

const WHAT_TO_DO: &str = "Events committed on the old primary after walbox's last confirmed \
    position may be missing, and walbox will not make a new slot by itself, since that would \
    skip them without notice. Account for the events committed around the failover (compare \
    the outbox with what consumers received; `x-commit-lsn` shows where they stop), drop the \
    slot if one is left (`SELECT pg_drop_replication_slot('<slot>')` on the new primary), then \
    run `walbox setup`. For the next failover: \
    PostgreSQL 17, a slot created with failover (walbox does so), and on the standby \
    sync_replication_slots = on, hot_standby_feedback = on, primary_slot_name set, with the \
    primary's synchronized_standby_slots naming that slot (walbox docs, \"PostgreSQL failover\")";

/// The slot's copy on every host of the URL that is a standby; hosts that do not answer are
/// left out. Empty when the URL names one host.
pub(crate) async fn standby_copies(config: &Config) -> Vec<StandbyCopy> {
    let hosts = endpoints(&config.postgres);
    if hosts.len() < 2 {
        return Vec::new();
    }
    let mut copies = Vec::new();
    for (index, (host, port)) in hosts.iter().enumerate() {
        let mut one = config.clone();
        one.postgres = single_host(&config.postgres, index);
        let connected =
            tokio::time::timeout(std::time::Duration::from_secs(5), Control::connect(&one)).await;
        let Ok(Ok(control)) = connected else {
            debug!(host, port, "standby did not answer");
            continue;
        };
        match copy_on(&control, config).await {
            Ok(Some(mut copy)) => {
                copy.standby = format!("{host}:{port}");
                copies.push(copy);
            }
            Ok(None) => {}
            Err(error) => debug!(host, port, %error, "could not read the standby's slot"),
        }
    }
    copies
}

/// The slot's copy on `control`'s server if that is a standby; None on a primary.
async fn copy_on(control: &Control, config: &Config) -> Result<Option<StandbyCopy>> {
    let in_recovery: bool = control
        .client
        .query_one("SELECT pg_is_in_recovery()", &[])
        .await
        .map_err(Control::sql_error("asking whether the server is a standby"))?
        .get(0);
    if !in_recovery {
        return Ok(None);
    }
    let slot = control.slot(&config.slot).await?;
    let settings = control
        .client
        .query_one(
            "SELECT current_setting('sync_replication_slots', true), \
             current_setting('hot_standby_feedback', true), \
             nullif(current_setting('primary_slot_name', true), '')",
            &[],
        )
        .await
        .map_err(Control::sql_error("reading the standby's settings"))?;
    Ok(Some(StandbyCopy {
        sync_replication_slots: settings.get(0),
        hot_standby_feedback: settings.get(1),
        primary_slot_name: settings.get(2),
        standby: String::new(),
        present: slot.is_some(),
        synced: slot.as_ref().and_then(|s| s.synced).unwrap_or(false),
        temporary: slot.as_ref().is_some_and(|s| s.temporary),
        confirmed_flush_lsn: slot.and_then(|s| s.confirmed_flush_lsn),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slot(temporary: bool, synced: Option<bool>) -> SlotInfo {
        SlotInfo {
            slot_name: "s".into(),
            plugin: Some("pgoutput".into()),
            slot_type: "logical".into(),
            database: Some("app".into()),
            active: false,
            active_pid: None,
            confirmed_flush_lsn: Some("0/16B3748".into()),
            restart_lsn: Some("0/16B3710".into()),
            wal_status: Some("reserved".into()),
            temporary,
            failover: Some(true),
            synced,
        }
    }

    #[test]
    fn a_first_run_creates_a_slot_only_on_a_server_never_promoted() {
        assert_eq!(promoted_without_slot("s", 1), None);
        for now in [2, 7] {
            let got = promoted_without_slot("s", now).expect("refuses");
            assert!(got.contains(&format!("timeline {now}")), "{got}");
            assert!(got.contains("walbox setup"), "{got}");
            assert!(got.contains("slot s does not exist"), "{got}");
        }
    }

    #[test]
    fn only_a_failover_that_lost_the_slot_stops_walbox() {
        let synced = slot(false, Some(true));
        let temporary = slot(true, Some(true));
        let local = slot(false, Some(false));
        let pre17 = slot(false, None);
        // (last seen on, now on, found, stops with a message containing)
        let cases: [(u32, u32, Option<&SlotInfo>, Option<&str>); 9] = [
            (1, 2, Some(&synced), None),
            (1, 2, Some(&pre17), None),
            (1, 2, None, Some("has no replication slot s")),
            (1, 2, Some(&temporary), Some("only as a temporary copy")),
            (1, 2, Some(&local), Some("never synchronized")),
            // No failover seen: a fresh process, or the same timeline.
            (0, 2, None, None),
            (0, 5, Some(&local), None),
            (2, 2, None, None),
            (2, 2, Some(&temporary), None),
        ];
        for (before, now, found, expected) in cases {
            let got = verdict("s", before, now, found);
            match expected {
                None => assert!(got.is_none(), "{before}->{now}: {got:?}"),
                Some(text) => {
                    let got = got.expect("stops");
                    assert!(got.contains(text), "{got}");
                    assert!(
                        got.contains(&format!("timeline {before} -> {now}")),
                        "{got}"
                    );
                    assert!(got.contains("walbox setup"), "{got}");
                }
            }
        }
    }
}
