//! Parsed flags → the validated settings each subcommand runs with: [`Config`] (every
//! subcommand), [`RunConfig`] (`walbox run`) and [`ReplayConfig`] (`walbox replay`). Whatever
//! is wrong here is a usage error, found before anything connects.

use std::net::SocketAddr;
use std::str::FromStr;
use std::time::Duration;

use super::ConfigError;
use super::amqp_urls::AmqpUrls;
use super::args::{AmqpClient, StreamDeclare, TargetKind};
use super::args::{CommonArgs, ReplayArgs, RunArgs};
use super::backfill::{BackfillArgs, BackfillConfig};
use super::mapping::{ExchangeSpec, Unroutable};
use super::names::{Identifier, MAX_SLOT_WITH_REPLAY, TableName};
use super::postgres::{self, PostgresTls};
use super::replay::{ReplayConfig, ReplayWindow};
use super::secrets::{CaFile, Secret, SecretUrl, redact_url};
use super::stream::{PartitionKey, StreamTarget};
use super::stream_tls::StreamTlsFlags;
use crate::lsn::Lsn;
use crate::outbox::{LogicalMessages, Mapping};

/// Everything a subcommand needs, validated.
#[derive(Clone, Debug)]
pub(crate) struct Config {
    pub(crate) postgres_url: SecretUrl,
    /// The connection settings, the password file's password included.
    pub(crate) postgres: tokio_postgres::Config,
    pub(crate) postgres_tls: PostgresTls,
    /// The broker nodes, in the order given.
    pub(crate) amqp_url: AmqpUrls,
    /// From --amqp-password-file: replaces the URL's password.
    pub(crate) amqp_password: Option<Secret>,
    pub(crate) amqp_ca: Option<CaFile>,
    /// `--amqp-client`.
    pub(crate) amqp_client: AmqpClient,
    pub(crate) slot: Identifier,
    pub(crate) publication: Identifier,
    pub(crate) table: TableName,
    /// What rows become on the wire (#11's flags).
    pub(crate) mapping: Mapping,
    /// How the exchange is declared.
    pub(crate) exchange_spec: ExchangeSpec,
    /// What happens to an event the broker returns as unroutable.
    pub(crate) unroutable: Unroutable,
    pub(crate) max_in_flight: usize,
    /// `--target stream`: where events go instead of an exchange.
    pub(crate) stream: Option<StreamTarget>,
    /// The logical decoding messages relayed (`--messages`); empty: none.
    pub(crate) messages: LogicalMessages,
}

/// `walbox run`'s own settings.
#[derive(Clone, Debug)]
pub(crate) struct RunConfig {
    pub(crate) start_lsn: Option<Lsn>,
    pub(crate) shutdown_grace: Duration,
    pub(crate) max_retry_delay: Duration,
    /// None: serve no metrics or health endpoints.
    pub(crate) metrics_addr: Option<SocketAddr>,
    /// Consecutive refusals of one event after which it is poison.
    pub(crate) poison_after: u32,
    /// Where poison events go; None: halt on them.
    pub(crate) dead_letter_exchange: Option<String>,
    /// None: keep no replay window.
    pub(crate) replay_window: Option<ReplayWindow>,
    /// The cut-over backfill, when asked for (it runs only when walbox creates the slot).
    pub(crate) backfill: Option<BackfillConfig>,
}

impl Config {
    pub(crate) fn from_args(args: &CommonArgs) -> Result<Self, ConfigError> {
        let (mut postgres, postgres_tls) = postgres::parse(&args.postgres_url)?;
        if let Some(path) = &args.postgres_password_file {
            let password = Secret::from_file("--postgres-password-file", path)?;
            postgres.password(password.expose());
        }
        if postgres.get_dbname().is_none() {
            return Err(ConfigError(format!(
                "--postgres-url `{}` names no database; logical replication needs one",
                redact_url(&args.postgres_url)
            )));
        }
        let amqp_url = AmqpUrls::parse(&args.amqp_url)?;
        let amqp_password = args
            .amqp_password_file
            .as_deref()
            .map(|path| Secret::from_file("--amqp-password-file", path))
            .transpose()?;
        let amqp_ca = args
            .amqp_ca_file
            .as_deref()
            .map(|path| CaFile::read("--amqp-ca-file", path))
            .transpose()?;
        let slot = &args.slot;
        if slot.is_empty()
            || slot.len() > 63
            || !slot
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        {
            return Err(ConfigError(format!(
                "--slot `{slot}` is not a valid replication slot name: use 1 to 63 lowercase \
                 letters, digits and underscores"
            )));
        }
        let mut mapping = args.mapping.mapping()?;
        let exchange_spec = args.mapping.exchange_spec()?;
        let unroutable = args.mapping.unroutable()?;
        if args.super_stream.is_none()
            && (args.partition_key.is_some() || args.partition_key_header.is_some())
        {
            return Err(ConfigError(
                "--partition-key and --partition-key-header need --super-stream".into(),
            ));
        }
        let stream = match (args.target, &args.stream, &args.super_stream) {
            (TargetKind::Amqp, None, None)
                if args.stream_url.is_empty()
                    && args.stream_client_cert_file.is_none()
                    && args.stream_client_key_file.is_none() =>
            {
                None
            }
            (TargetKind::Amqp, ..) => {
                return Err(ConfigError(
                    "--stream, --super-stream, --stream-url and --stream-client-cert-file/-key-file \
                     need --target stream"
                        .into(),
                ));
            }
            (TargetKind::Stream, None, None) => {
                return Err(ConfigError(
                    "--target stream needs --stream (or --super-stream), the stream's name".into(),
                ));
            }
            (TargetKind::Stream, Some(_), Some(_)) => {
                return Err(ConfigError(
                    "give --stream or --super-stream, not both".into(),
                ));
            }
            (TargetKind::Stream, stream, super_stream) => {
                let mut target = StreamTarget::parse(
                    stream
                        .as_ref()
                        .or(super_stream.as_ref())
                        .expect("one is given"),
                    &args.stream_url,
                    &args.amqp_url,
                    amqp_password.as_ref(),
                    args.stream_declare == StreamDeclare::Create,
                    StreamTlsFlags {
                        ca_file: args.amqp_ca_file.as_deref(),
                        client_cert: args.stream_client_cert_file.as_deref(),
                        client_key: args.stream_client_key_file.as_deref(),
                    },
                )?;
                if super_stream.is_some() {
                    let (key, template) = PartitionKey::parse(
                        args.partition_key.as_deref(),
                        args.partition_key_header.as_deref(),
                    )?;
                    target.partition_key = Some(key);
                    mapping.partition_key = template;
                    target.partitions = args.super_stream_partitions;
                }
                Some(target)
            }
        };
        let messages = super::messages::logical_messages(&args.mapping, &mapping)?;
        Ok(Config {
            postgres_url: SecretUrl::new(args.postgres_url.clone()),
            postgres,
            postgres_tls,
            amqp_url,
            amqp_password,
            amqp_ca,
            amqp_client: args.amqp_client,
            slot: Identifier::new("--slot", slot)?,
            publication: Identifier::new("--publication", &args.publication)?,
            table: TableName::parse(&args.mapping.table())?,
            mapping,
            exchange_spec,
            unroutable,
            max_in_flight: args.max_in_flight as usize,
            stream,
            messages,
        })
    }
}

impl RunConfig {
    pub(crate) fn from_args(args: &RunArgs) -> Result<Self, ConfigError> {
        let start_lsn = args
            .start_lsn
            .as_deref()
            .map(|text| {
                Lsn::from_str(text).map_err(|error| ConfigError(format!("--start-lsn: {error}")))
            })
            .transpose()?;
        let metrics_addr = match args.metrics_addr.trim() {
            "" | "none" | "off" => None,
            text => Some(text.parse::<SocketAddr>().map_err(|error| {
                ConfigError(format!(
                    "--metrics-addr `{text}` is not host:port (e.g. 0.0.0.0:9820) or `none`: \
                     {error}"
                ))
            })?),
        };
        if args.common.target == TargetKind::Stream && args.dead_letter_exchange.is_some() {
            return Err(ConfigError(
                "--dead-letter-exchange works with --target amqp only: a stream has no \
                 dead-letter exchange"
                    .into(),
            ));
        }
        let dead_letter_exchange = match args.dead_letter_exchange.as_deref() {
            None => None,
            Some("") => {
                return Err(ConfigError(
                    "--dead-letter-exchange is empty; name an exchange or leave it out".into(),
                ));
            }
            Some(name) if name.len() > 255 => {
                return Err(ConfigError(
                    "--dead-letter-exchange is longer than 255 bytes".into(),
                ));
            }
            Some(name) => Some(name.to_owned()),
        };
        let replay_window = args
            .replay_window
            .as_deref()
            .filter(|text| !matches!(text.trim(), "" | "off" | "none"))
            .map(|text| {
                text.parse::<ReplayWindow>()
                    .map_err(|error| ConfigError(format!("--replay-window: {error}")))
            })
            .transpose()?;
        if replay_window.is_some() {
            check_room_for_replay(&args.common.slot)?;
        }
        let backfill = backfill_config(&args.backfill, &args.common)?;
        Ok(RunConfig {
            backfill,
            replay_window,
            start_lsn,
            shutdown_grace: Duration::from_secs(args.shutdown_grace),
            max_retry_delay: Duration::from_millis(args.max_retry_delay_ms),
            metrics_addr,
            poison_after: args.poison_after,
            dead_letter_exchange,
        })
    }
}

impl ReplayConfig {
    pub(crate) fn from_args(args: &ReplayArgs) -> Result<Self, ConfigError> {
        if args.common.target == TargetKind::Stream {
            return Err(ConfigError(
                "walbox replay publishes to exchanges (--target amqp): a stream would drop the \
                 replayed events as duplicates of what it holds; read the stream again from \
                 an offset instead"
                    .into(),
            ));
        }
        let lsn = |flag: &str, text: &str| {
            Lsn::from_str(text).map_err(|error| ConfigError(format!("{flag}: {error}")))
        };
        let from_lsn = lsn("--from-lsn", &args.from_lsn)?;
        let to_lsn = args
            .to_lsn
            .as_deref()
            .map(|text| lsn("--to-lsn", text))
            .transpose()?;
        if let Some(to) = to_lsn
            && to < from_lsn
        {
            return Err(ConfigError(format!(
                "--to-lsn {to} is before --from-lsn {from_lsn}"
            )));
        }
        check_room_for_replay(&args.common.slot)?;
        Ok(ReplayConfig {
            from_lsn,
            to_lsn,
            dry_run: args.dry_run,
        })
    }
}

/// The cut-over backfill's settings (`walbox run`, `walbox setup`).
pub(crate) fn backfill_config(
    args: &BackfillArgs,
    common: &CommonArgs,
) -> Result<Option<BackfillConfig>, ConfigError> {
    let backfill = BackfillConfig::from_args(args, &common.mapping)?;
    if backfill.is_some() && common.target == TargetKind::Stream {
        return Err(ConfigError(
            "--backfill works with --target amqp only: a stream's deduplication numbers events \
             by their place in the WAL, which rows read from the table do not have"
                .into(),
        ));
    }
    Ok(backfill)
}

/// The replay window's slots are named after the live one, with a suffix.
fn check_room_for_replay(slot: &str) -> Result<(), ConfigError> {
    if slot.len() > MAX_SLOT_WITH_REPLAY {
        return Err(ConfigError(format!(
            "--slot `{slot}` is too long for a replay window: its bookmark and replay slots \
             are named after it, so it may have at most {MAX_SLOT_WITH_REPLAY} characters"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Cli, Command};
    use clap::Parser;

    fn args(extra: &[&str]) -> Result<Cli, clap::Error> {
        let mut argv = vec!["walbox", "run"];
        argv.extend_from_slice(extra);
        Cli::try_parse_from(argv)
    }

    fn common(cli: &Cli) -> &CommonArgs {
        match &cli.command {
            Command::Run(run) => &run.common,
            _ => unreachable!(),
        }
    }

    #[test]
    fn defaults_validate() {
        let cli = args(&[]).unwrap();
        let config = Config::from_args(common(&cli)).unwrap();
        assert_eq!(config.slot.as_str(), "walbox");
        assert_eq!(config.table.to_string(), "public.outbox");
        assert_eq!(
            config.mapping.routing_key.to_string(),
            "{aggregate_type}.{event_type}"
        );
        assert_eq!(
            config.exchange_spec.mode,
            crate::config::DeclareMode::Declare
        );
    }

    #[test]
    fn a_super_streams_partition_key_is_a_template_or_a_header() {
        let stream = |extra: &[&str]| {
            let mut argv = vec!["--target", "stream", "--super-stream", "events"];
            argv.extend_from_slice(extra);
            Config::from_args(common(&args(&argv).unwrap()))
        };
        let key = |config: &Config| config.stream.as_ref().unwrap().partition_key.clone();
        let rendered =
            |config: &Config| config.mapping.partition_key.as_ref().map(|t| t.to_string());

        // Default: the aggregate id, rendered by the outbox.
        let default = stream(&[]).unwrap();
        assert_eq!(
            key(&default),
            Some(PartitionKey::Template("{aggregate_id}".into()))
        );
        assert_eq!(rendered(&default).as_deref(), Some("{aggregate_id}"));

        let given = stream(&["--partition-key", "{aggregate_type}/{aggregate_id}"]).unwrap();
        assert_eq!(
            rendered(&given).as_deref(),
            Some("{aggregate_type}/{aggregate_id}")
        );

        // The header route renders nothing.
        let header = stream(&["--partition-key-header", "tenant"]).unwrap();
        assert_eq!(key(&header), Some(PartitionKey::Header("tenant".into())));
        assert_eq!(rendered(&header), None);

        for (bad, says) in [
            (&["--partition-key", "{oops"][..], "--partition-key: "),
            (&["--partition-key-header", ""], "empty"),
            (
                &["--partition-key", "{id}", "--partition-key-header", "h"],
                "not both",
            ),
        ] {
            let error = stream(bad).unwrap_err();
            assert!(error.0.contains(says), "{bad:?}: {error}");
        }
        // A plain stream and the AMQP target have no partitions to route to.
        for plain in [
            &[
                "--target",
                "stream",
                "--stream",
                "s",
                "--partition-key",
                "{id}",
            ][..],
            &["--partition-key-header", "h"],
        ] {
            let error = Config::from_args(common(&args(plain).unwrap())).unwrap_err();
            assert!(
                error.0.contains("need --super-stream"),
                "{plain:?}: {error}"
            );
        }
        let plain = Config::from_args(common(
            &args(&["--target", "stream", "--stream", "s"]).unwrap(),
        ))
        .unwrap();
        assert_eq!(plain.mapping.partition_key, None);
    }

    #[test]
    fn bad_values_are_usage_errors() {
        for bad in [
            &["--slot", "Bad-Slot"][..],
            &["--routing-key", "{oops"],
            &["--columns", "colour=red"],
            &["--postgres-url", "postgres://x@h/db?sslmode=sometimes"],
            &["--amqp-url", "http://broker"],
            &["--table", "a.b.c.".repeat(30).as_str()],
        ] {
            let cli = args(bad).unwrap();
            assert!(
                Config::from_args(common(&cli)).is_err(),
                "{bad:?} should be refused"
            );
        }
        let cli = args(&["--start-lsn", "nope"]).unwrap();
        let Command::Run(run) = &cli.command else {
            unreachable!()
        };
        assert!(RunConfig::from_args(run).is_err());
        assert!(args(&["--no-such-flag"]).is_err());
    }

    #[test]
    fn password_files_lose_one_trailing_newline_and_never_print() {
        let dir = std::env::temp_dir().join(format!("walbox-secret-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        for (content, expected) in [
            ("s3cret\n", "s3cret"),
            ("s3cret\r\n", "s3cret"),
            ("s3cret", "s3cret"),
            (" two words \n\n", " two words \n"),
        ] {
            let path = dir.join("password");
            std::fs::write(&path, content).unwrap();
            let secret = Secret::from_file("--postgres-password-file", &path).unwrap();
            assert_eq!(secret.expose(), expected);
            assert_eq!(format!("{secret:?}"), "***");
        }
        std::fs::write(dir.join("empty"), "\n").unwrap();
        assert!(Secret::from_file("--amqp-password-file", &dir.join("empty")).is_err());
        assert!(Secret::from_file("--amqp-password-file", &dir.join("missing")).is_err());

        std::fs::write(dir.join("password"), "from-file\n").unwrap();
        let file = dir.join("password");
        let cli = args(&[
            "--postgres-url",
            "postgres://u:from-url@h/db",
            "--postgres-password-file",
            file.to_str().unwrap(),
            "--amqp-password-file",
            file.to_str().unwrap(),
        ])
        .unwrap();
        let config = Config::from_args(common(&cli)).unwrap();
        assert_eq!(config.postgres.get_password(), Some(&b"from-file"[..]));
        assert_eq!(config.amqp_password.as_ref().unwrap().expose(), "from-file");
        let debug = format!("{config:?}");
        assert!(
            !debug.contains("from-file") && !debug.contains("from-url"),
            "{debug}"
        );
        std::fs::remove_dir_all(dir).unwrap();
    }
}
