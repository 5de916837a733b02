//! The replication connection: start streaming from the slot, turn what arrives into decoded
//! changes, and tell PostgreSQL how far it may release WAL.
//!
//! pgwire-replication frames the stream (Begin, Commit, keepalives) and sends the standby
//! status updates; everything else arrives as raw pgoutput bytes, decoded here by
//! [`crate::pgoutput`]. The only position this module ever reports is the one handed to
//! [`Source::acknowledge`], which the engine takes from the watermark.

mod export;
mod timeline;
mod verify_ca;

pub(crate) use export::create_slot_exporting_snapshot;
pub(crate) use timeline::{Confirmed, Fork, Origin};

use std::time::Duration;

use crate::config::postgres::endpoints;
use crate::config::{Config, Identifier, PostgresTls, RootCerts, SslMode};
use crate::error::{Error, Result};
use crate::lsn::Lsn;
use crate::outbox::Transaction;
use crate::pgoutput::{self, LogicalMessage, Message};
use pgwire_replication::{
    Lsn as WireLsn, ReplicationClient, ReplicationConfig, ReplicationEvent, TlsConfig,
};

/// How soon a raised flush position reaches the server.
const STATUS_INTERVAL: Duration = Duration::from_millis(250);
/// Session settings that make text values render the same whatever the server's defaults.
/// The backfill's reader sets them too, so a row read from the table renders as the slot
/// would send it.
pub(crate) const TEXT_SETTINGS: [(&str, &str); 3] = [
    ("datestyle", "ISO"),
    ("timezone", "UTC"),
    ("bytea_output", "hex"),
];

/// [`TEXT_SETTINGS`] as startup options.
fn session_options() -> String {
    TEXT_SETTINGS
        .iter()
        .map(|(name, value)| format!("-c {name}={value}"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// One step of the stream.
#[derive(Debug)]
pub(crate) enum Change {
    Begin(Transaction),
    /// A decoded pgoutput message from inside a transaction (Relation, Insert, …), or a
    /// logical decoding message (a non-transactional one comes between transactions).
    Message(Message),
    Commit {
        end_lsn: Lsn,
    },
    /// The server has sent everything up to `wal_end`.
    Keepalive {
        wal_end: Lsn,
    },
}

pub(crate) struct Source {
    client: ReplicationClient,
}

fn wire(lsn: Lsn) -> WireLsn {
    WireLsn::from_u64(lsn.as_u64())
}

fn ours(lsn: WireLsn) -> Lsn {
    Lsn(lsn.as_u64())
}

/// One host of the PostgreSQL URL, with its port.
type Endpoint = (String, u16);

/// The replication connection settings, from the PostgreSQL URL (its first host).
/// `verify_ca_name` is, under sslmode=verify-ca, a name in the server's CA-checked
/// certificate ([`verify_ca`]).
#[cfg(test)]
fn replication_config(
    config: &Config,
    start: Lsn,
    verify_ca_name: Option<String>,
) -> Result<ReplicationConfig> {
    let first = endpoints(&config.postgres).swap_remove(0);
    replication_config_at(config, &first, start, verify_ca_name)
}

/// [`replication_config`] for one host of the URL.
fn replication_config_at(
    config: &Config,
    (host, port): &Endpoint,
    start: Lsn,
    verify_ca_name: Option<String>,
) -> Result<ReplicationConfig> {
    let (host, port) = (host.clone(), *port);
    let postgres = &config.postgres;
    let user = postgres
        .get_user()
        .ok_or_else(|| Error::definite("--postgres-url names no user"))?
        .to_owned();
    let password = postgres
        .get_password()
        .map(|bytes| String::from_utf8_lossy(bytes).into_owned())
        .unwrap_or_default();
    let database = postgres.get_dbname().unwrap_or("postgres").to_owned();
    let tls = replication_tls(&config.postgres_tls, &host, verify_ca_name);
    let options = match postgres.get_options() {
        Some(user_options) => format!("{} {user_options}", session_options()),
        None => session_options(),
    };
    Ok(ReplicationConfig::new(
        host,
        user,
        password,
        database,
        config.slot.as_str(),
        // The server reads publication_names as a list of identifiers, folding unquoted ones
        // to lower case and splitting at commas: only the quoted form names any publication.
        config.publication.quoted(),
    )
    .with_port(port)
    .with_tls(tls)
    .with_start_lsn(wire(start))
    .with_status_interval(STATUS_INTERVAL)
    .with_wakeup_interval(Duration::from_secs(5))
    .with_buffer_size(4096)
    .with_options(options)
    .with_application_name(format!("walbox/{}", config.slot)))
}

/// pgwire-replication's TLS settings for the same sslmode and CAs as the control connection.
fn replication_tls(tls: &PostgresTls, host: &str, verify_ca_name: Option<String>) -> TlsConfig {
    let ca_file = match &tls.roots {
        Some(RootCerts::File { path, .. }) => Some(path.clone()),
        // pgwire-replication trusts Mozilla's roots when given no file: sslrootcert=system.
        Some(RootCerts::System) | None => None,
    };
    match tls.mode {
        SslMode::Disable => TlsConfig::disabled(),
        SslMode::Prefer => TlsConfig {
            mode: pgwire_replication::SslMode::Prefer,
            ..TlsConfig::default()
        },
        SslMode::Require => TlsConfig::require(),
        SslMode::VerifyCa => match verify_ca_name {
            Some(name) => TlsConfig::verify_full(ca_file).with_sni_hostname(name),
            None => TlsConfig::verify_ca(ca_file),
        },
        // pgwire-replication refuses verify-full to an IP address unless the name to check is
        // given explicitly; rustls then checks the certificate's IP address entries, as libpq
        // does.
        SslMode::VerifyFull => TlsConfig::verify_full(ca_file).with_sni_hostname(host),
    }
}

/// [`replication_config_at`], with the name to check under sslmode=verify-ca fetched first.
async fn connection_settings(
    config: &Config,
    endpoint: &Endpoint,
    start: Lsn,
) -> Result<ReplicationConfig> {
    let verify_ca_name = match config.postgres_tls.mode {
        SslMode::VerifyCa => {
            let (host, port) = endpoint;
            verify_ca::name_to_verify(host, *port, &config.postgres_tls).await?
        }
        _ => None,
    };
    replication_config_at(config, endpoint, start, verify_ca_name)
}

/// An authenticated replication session that has not started streaming yet, on the primary.
///
/// With one host that is simply the host. With several (a multi-host URL naming a primary and
/// its standbys), pgwire-replication has no `target_session_attrs`, so each host is asked in
/// turn whether it is in recovery, and the first that is not is the primary: after a failover
/// that is the promoted standby. None being primary (the old one is down, the new one not yet
/// promoted) is transient.
async fn connect_to_primary(config: &Config, start: Lsn) -> Result<ReplicationClient> {
    let endpoints = endpoints(&config.postgres);
    let replication_error = Error::from_replication;
    if let [endpoint] = endpoints.as_slice() {
        let replication = connection_settings(config, endpoint, start).await?;
        return ReplicationClient::connect_gated(replication)
            .await
            .map_err(replication_error);
    }
    let mut passed_over = Vec::new();
    for endpoint in &endpoints {
        let (host, port) = endpoint;
        let attempt = async {
            let replication = connection_settings(config, endpoint, start).await?;
            let mut client = ReplicationClient::connect_gated(replication)
                .await
                .map_err(replication_error)?;
            let rows = client
                .simple_query("SELECT pg_is_in_recovery()")
                .await
                .map_err(replication_error)?;
            let in_recovery = rows
                .first()
                .and_then(|row| row.first().cloned().flatten())
                .is_some_and(|text| text.as_ref() == b"t");
            // Dropping a session that has not started ends it.
            Ok::<_, Error>((!in_recovery).then_some(client))
        };
        match attempt.await {
            Ok(Some(client)) => return Ok(client),
            Ok(None) => passed_over.push(format!("{host}:{port} is a standby")),
            Err(error) if error.is_transient() => {
                passed_over.push(format!("{host}:{port}: {error}"))
            }
            Err(error) => return Err(error),
        }
    }
    Err(Error::transient(format!(
        "no PostgreSQL host is a primary ({})",
        passed_over.join("; ")
    )))
}

/// Turn failover on for an existing slot (PostgreSQL 17): the live slot or the replay
/// window's bookmark, so standbys keep a synchronized copy. `ALTER_REPLICATION_SLOT` is a
/// command of the replication protocol only, hence here; it fails while another session
/// streams from the slot.
pub(crate) async fn enable_failover(config: &Config, slot: &Identifier) -> Result<()> {
    let mut client = connect_to_primary(config, Lsn(0)).await?;
    client
        .simple_query(&format!(
            "ALTER_REPLICATION_SLOT {} ( FAILOVER true )",
            slot.quoted()
        ))
        .await
        .map_err(Error::from_replication)?;
    Ok(())
}

/// How [`Source::start`] ended.
pub(crate) enum Started {
    /// Streaming from the server of this history.
    Streaming(Source, Origin),
    /// Not started: the position to stream from lies beyond where the server's history forked
    /// from the one it was confirmed on.
    Forked(Fork),
}

/// The cluster and timeline of the server a session reached.
async fn identify(client: &mut ReplicationClient) -> Result<Origin> {
    let system = client
        .identify_system()
        .await
        .map_err(Error::from_replication)?;
    Ok(Origin {
        system_id: system.system_id,
        timeline: system.timeline,
    })
}

/// The switch points of timeline `timeline`'s history (none on timeline 1, which has no file).
async fn history(client: &mut ReplicationClient, timeline: u32) -> Result<Vec<(u32, Lsn)>> {
    if timeline <= 1 {
        return Ok(Vec::new());
    }
    let file = client
        .timeline_history(timeline)
        .await
        .map_err(Error::from_replication)?;
    timeline::parse_history(&file.content)
}

/// The confirmed position of slot `slot` on the session's own server, if it has one.
async fn slot_position(client: &mut ReplicationClient, slot: &Identifier) -> Result<Option<Lsn>> {
    // Slot names are validated (lowercase letters, digits, underscores), so they are safe as
    // string literals; the replication protocol's simple queries take no parameters.
    let rows = client
        .simple_query(&format!(
            "SELECT confirmed_flush_lsn::text FROM pg_replication_slots \
             WHERE slot_name = '{slot}'"
        ))
        .await
        .map_err(Error::from_replication)?;
    Ok(rows
        .first()
        .and_then(|row| row.first().cloned().flatten())
        .and_then(|text| std::str::from_utf8(&text).ok()?.parse::<Lsn>().ok()))
}

impl Source {
    /// Start streaming from `start` (the slot's confirmed position, or later with
    /// `--start-lsn` or what this process saw confirmed). Until the first acknowledgement,
    /// `start` is what the server hears as flushed. `known` is what this process saw
    /// confirmed and where: when the session reached another server history (a failover),
    /// `start` must lie in the new one's, checked on this very session before it streams.
    pub(crate) async fn start(
        config: &Config,
        start: Lsn,
        known: Option<&Confirmed>,
    ) -> Result<Started> {
        let mut client = connect_to_primary(config, start).await?;
        let origin = identify(&mut client).await?;
        if let Some(known) = known.filter(|known| known.on != origin) {
            let slot = slot_position(&mut client, &config.slot)
                .await?
                .ok_or_else(|| {
                    Error::transient(format!(
                        "replication slot {} is not on the server the replication session reached",
                        config.slot
                    ))
                })?;
            let history = history(&mut client, origin.timeline).await?;
            if let Some(fork) = timeline::judge(known, &origin, &history, start, slot) {
                // Dropping a session that has not started ends it.
                return Ok(Started::Forked(fork));
            }
        }
        client.start().await.map_err(Error::from_replication)?;
        client
            .wait_started()
            .await
            .map_err(Error::from_replication)?;
        Ok(Started::Streaming(Source { client }, origin))
    }

    /// Stream from a temporary copy of `original` (the replay window's bookmark slot), made
    /// on the replication session itself: PostgreSQL drops a temporary slot when the session
    /// that made it ends, so a replay that is killed leaves nothing behind. The copy starts
    /// where `original` stands; `start` may be later. Returns the copy's own start position.
    pub(crate) async fn start_copy(
        config: &Config,
        original: &Identifier,
        copy: &Identifier,
        start: Lsn,
    ) -> Result<(Self, Lsn)> {
        let mut copy_config = config.clone();
        copy_config.slot = copy.clone();
        let mut client = connect_to_primary(&copy_config, start).await?;
        // Slot names are validated (lowercase letters, digits, underscores), so they are safe
        // as string literals; the replication protocol's simple queries take no parameters.
        let replication_error = Error::from_replication;
        client
            .simple_query(&format!(
                "SELECT 1 FROM pg_copy_logical_replication_slot('{original}', '{copy}', true)"
            ))
            .await
            .map_err(replication_error)?;
        let rows = client
            .simple_query(&format!(
                "SELECT confirmed_flush_lsn::text FROM pg_replication_slots \
                 WHERE slot_name = '{copy}'"
            ))
            .await
            .map_err(replication_error)?;
        let copied_from = rows
            .first()
            .and_then(|row| row.first().cloned().flatten())
            .and_then(|text| std::str::from_utf8(&text).ok()?.parse::<Lsn>().ok())
            .ok_or_else(|| {
                Error::definite(format!(
                    "the copy {copy} of replication slot {original} has no position (a walbox bug)"
                ))
            })?;
        client.start().await.map_err(Error::from_replication)?;
        client
            .wait_started()
            .await
            .map_err(Error::from_replication)?;
        Ok((Source { client }, copied_from))
    }

    /// The next change, or `None` when the stream ended cleanly.
    pub(crate) async fn next(&mut self) -> Result<Option<Change>> {
        let event = self.client.recv().await.map_err(Error::from_replication)?;
        let change = match event {
            None | Some(ReplicationEvent::StoppedAt { .. }) => return Ok(None),
            Some(ReplicationEvent::Begin {
                final_lsn,
                xid,
                commit_time_micros,
            }) => Change::Begin(Transaction {
                xid,
                commit_lsn: ours(final_lsn),
                commit_time_micros,
            }),
            Some(ReplicationEvent::Commit { end_lsn, .. }) => Change::Commit {
                end_lsn: ours(end_lsn),
            },
            Some(ReplicationEvent::KeepAlive { wal_end, .. }) => Change::Keepalive {
                wal_end: ours(wal_end),
            },
            Some(ReplicationEvent::XLogData {
                data, wal_start, ..
            }) => {
                let message = pgoutput::decode(&data).map_err(|error| {
                    Error::definite(format!(
                        "could not decode the pgoutput message at {}: {error}. This is a \
                         walbox bug or an unsupported server; please report it",
                        ours(wal_start)
                    ))
                })?;
                Change::Message(message)
            }
            // pgwire-replication asks pgoutput for logical decoding messages (`messages
            // 'true'`, always) and decodes them itself; the engine decides which to relay.
            // It reads the prefix lossily (bytes that are not UTF-8 become U+FFFD), which
            // no `--messages` pattern may contain, so such a prefix matches no exact route.
            Some(ReplicationEvent::Message {
                transactional,
                lsn,
                prefix,
                content,
            }) => Change::Message(Message::Message(LogicalMessage {
                flags: u8::from(transactional),
                lsn: ours(lsn),
                prefix,
                content,
            })),
        };
        Ok(Some(change))
    }

    /// PostgreSQL may release WAL up to `lsn`. Only the watermark's flush LSN comes here.
    pub(crate) fn acknowledge(&self, lsn: Lsn) {
        self.client.update_applied_lsn(wire(lsn));
    }

    /// Send `final_lsn` (waiting at most `wait` for the status update to go out), then end
    /// the stream.
    pub(crate) async fn finish(mut self, final_lsn: Lsn, wait: Duration) {
        self.acknowledge(final_lsn);
        let metrics = self.client.metrics();
        let deadline = tokio::time::Instant::now() + wait;
        while ours(metrics.last_applied_lsn()) < final_lsn && tokio::time::Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let _ = tokio::time::timeout(Duration::from_secs(5), self.client.shutdown()).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Cli, Command};
    use clap::Parser;

    fn config(extra: &[&str]) -> Config {
        let mut argv = vec!["walbox", "run"];
        argv.extend_from_slice(extra);
        let Command::Run(run) = Cli::try_parse_from(argv).unwrap().command else {
            unreachable!()
        };
        Config::from_args(&run.common).unwrap()
    }

    #[test]
    fn the_publication_reaches_the_server_as_a_quoted_identifier() {
        let replication =
            replication_config(&config(&["--publication", "Out, \"Box\""]), Lsn(0), None).unwrap();
        assert_eq!(replication.publication.names(), [r#""Out, ""Box""""#]);
    }

    #[test]
    fn sslmode_chooses_the_replication_tls() {
        let tls = |url: &str| {
            replication_config(&config(&["--postgres-url", url]), Lsn(0), None)
                .unwrap()
                .tls
        };
        use pgwire_replication::SslMode as Wire;
        assert_eq!(tls("postgres://u@h/db?sslmode=disable").mode, Wire::Disable);
        assert_eq!(tls("postgres://u@h/db").mode, Wire::Prefer);
        assert_eq!(tls("postgres://u@h/db?sslmode=require").mode, Wire::Require);
        let full = tls("postgres://u@10.0.0.7/db?sslmode=verify-full&sslrootcert=system");
        assert_eq!(full.mode, Wire::VerifyFull);
        assert_eq!(full.sni_hostname.as_deref(), Some("10.0.0.7"));
    }
}
