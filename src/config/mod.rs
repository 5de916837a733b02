//! Flags, environment variables and the configuration file → one validated [`Config`].
//!
//! Every flag also reads `WALBOX_<FLAG>` and the key `<flag>` of the `--config` file
//! ([`file`]); precedence is flag > environment > file > default. Validation happens here,
//! before anything connects, so a bad LSN, template, column map or name is a usage error
//! (exit 2) with a message saying what is wrong; nothing else in walbox parses user text.

mod amqp_urls;
pub mod file;
pub mod postgres;
pub mod reference;

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::lsn::Lsn;
use crate::outbox::{ColumnMap, Template};
use crate::replay::bookmark::MAX_SLOT_WITH_REPLAY;
use crate::replay::{ReplayConfig, ReplayWindow};
pub use amqp_urls::AmqpUrls;
pub use postgres::{PostgresTls, RootCerts, SslMode};

#[derive(Debug, Parser)]
#[command(
    name = "walbox",
    version,
    about = "Relays transactional-outbox events from PostgreSQL's WAL to RabbitMQ, at least once, in commit order"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,

    /// Log level or filter (e.g. info, debug, walbox=debug); RUST_LOG also works.
    #[arg(long, env = "WALBOX_LOG_LEVEL", default_value = "info", global = true)]
    pub log_level: String,

    /// Log format: text for people, json for log collectors; auto picks text on a terminal.
    #[arg(long, env = "WALBOX_LOG_FORMAT", value_enum, default_value_t = LogFormat::Auto, global = true)]
    pub log_format: LogFormat,

    /// TOML file whose keys are these flags' long names (e.g. postgres-url = "..."); flags and
    /// environment variables override it.
    #[arg(long, env = "WALBOX_CONFIG", global = true)]
    pub config: Option<std::path::PathBuf>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Auto,
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Check the server, create the publication and the slot if missing, declare the exchange.
    Setup(CommonArgs),
    /// Set up what is missing, then relay events until SIGINT or SIGTERM.
    Run(RunArgs),
    /// Publish again the events committed in an LSN range, from the replay window.
    Replay(ReplayArgs),
    /// Show the slot, its lag and the publication's tables.
    Status(StatusArgs),
    /// Drop the slot and the publication.
    Teardown(CommonArgs),
    /// Work with the configuration.
    #[command(subcommand)]
    Config(ConfigCommand),
}

#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Validate the configuration `walbox run` would use (flags, environment, file) and print
    /// the effective one, secrets redacted, with where each value came from.
    Check(RunArgs),
}

#[derive(Debug, Clone, Args)]
pub struct CommonArgs {
    /// PostgreSQL connection URL (libpq style), e.g. postgres://walbox:secret@db:5432/app;
    /// TLS by sslmode (disable, prefer, require, verify-ca, verify-full) and sslrootcert=ca.pem.
    #[arg(
        long,
        env = "WALBOX_POSTGRES_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/postgres"
    )]
    pub postgres_url: String,

    /// File holding the PostgreSQL password (one trailing newline is ignored); replaces the
    /// URL's password.
    #[arg(long, env = "WALBOX_POSTGRES_PASSWORD_FILE")]
    pub postgres_password_file: Option<PathBuf>,

    /// RabbitMQ URL (amqp:// or amqps://); for a cluster, one per node, comma-separated or
    /// the flag repeated: walbox uses the first that answers and moves on when one fails.
    #[arg(
        long,
        env = "WALBOX_AMQP_URL",
        default_value = "amqp://guest:guest@127.0.0.1:5672/%2f"
    )]
    pub amqp_url: Vec<String>,

    /// File holding the RabbitMQ password (one trailing newline is ignored); replaces the
    /// URL's password.
    #[arg(long, env = "WALBOX_AMQP_PASSWORD_FILE")]
    pub amqp_password_file: Option<PathBuf>,

    /// PEM file of CA certificates trusted for amqps://, besides the system's.
    #[arg(long, env = "WALBOX_AMQP_CA_FILE")]
    pub amqp_ca_file: Option<PathBuf>,

    /// Logical replication slot (lowercase letters, digits, underscore).
    #[arg(long, env = "WALBOX_SLOT", default_value = "walbox")]
    pub slot: String,

    /// Publication for the outbox table.
    #[arg(long, env = "WALBOX_PUBLICATION", default_value = "walbox")]
    pub publication: String,

    /// Outbox table, as schema.name or name (schema public).
    #[arg(long, env = "WALBOX_TABLE", default_value = "public.outbox")]
    pub table: String,

    /// Column map: a preset (outbox, debezium) and/or field=column pairs, comma separated.
    #[arg(long, env = "WALBOX_COLUMNS", default_value = "outbox")]
    pub columns: String,

    /// Exchange events are published to (unless a row's exchange column says otherwise).
    #[arg(long, env = "WALBOX_EXCHANGE", default_value = "outbox")]
    pub exchange: String,

    /// Do not declare the exchange (it must exist).
    #[arg(long, env = "WALBOX_NO_DECLARE")]
    pub no_declare: bool,

    /// Routing-key template: {field} or {column} placeholders.
    #[arg(
        long,
        env = "WALBOX_ROUTING_KEY",
        default_value = "{aggregate_type}.{event_type}"
    )]
    pub routing_key: String,

    /// Messages published but not yet confirmed by the broker, at most.
    #[arg(long, env = "WALBOX_MAX_IN_FLIGHT", default_value_t = 1024, value_parser = clap::value_parser!(u32).range(1..=65_535))]
    pub max_in_flight: u32,
}

#[derive(Debug, Clone, Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub common: CommonArgs,

    /// Skip ahead: start relaying at this LSN (X/Y); events committed before it are not sent.
    #[arg(long, env = "WALBOX_START_LSN")]
    pub start_lsn: Option<String>,

    /// On SIGTERM/SIGINT, how long to wait for outstanding broker confirms (seconds).
    #[arg(long, env = "WALBOX_SHUTDOWN_GRACE", default_value_t = 10)]
    pub shutdown_grace: u64,

    /// Longest wait between reconnection attempts after a transient failure (milliseconds).
    #[arg(long, env = "WALBOX_MAX_RETRY_DELAY_MS", default_value_t = 30_000, value_parser = clap::value_parser!(u64).range(100..))]
    pub max_retry_delay_ms: u64,

    /// Address for /metrics, /healthz and /readyz (host:port; port 0 picks one; `none` serves nothing).
    #[arg(long, env = "WALBOX_METRICS_ADDR", default_value = "127.0.0.1:9820")]
    pub metrics_addr: String,

    /// Treat an event as poison after the broker refused it (closed the channel with PRECONDITION_FAILED, e.g. too large) this many times in a row.
    #[arg(long, env = "WALBOX_POISON_AFTER", default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..))]
    pub poison_after: u32,

    /// Exchange for poison events: a JSON record of each (with confirms) and walbox goes on; without it walbox halts on the event.
    #[arg(long, env = "WALBOX_DEAD_LETTER_EXCHANGE")]
    pub dead_letter_exchange: Option<String>,
    /// Keep this much history replayable with `walbox replay`: a WAL size (e.g. 10GB) or an age (e.g. 24h); off by default.
    #[arg(long, env = "WALBOX_REPLAY_WINDOW")]
    pub replay_window: Option<String>,
}

#[derive(Debug, Clone, Args)]
pub struct ReplayArgs {
    #[command(flatten)]
    pub common: CommonArgs,

    /// Replay the events of transactions that committed at or after this LSN (X/Y).
    #[arg(long, env = "WALBOX_FROM_LSN")]
    pub from_lsn: String,

    /// …and at or before this LSN (default: the WAL position when the replay starts).
    #[arg(long, env = "WALBOX_TO_LSN")]
    pub to_lsn: Option<String>,

    /// Count what would be replayed; publish nothing.
    #[arg(long)]
    pub dry_run: bool,
}

#[derive(Debug, Clone, Args)]
pub struct StatusArgs {
    #[command(flatten)]
    pub common: CommonArgs,

    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

/// A configuration that failed validation: a usage error.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

/// A PostgreSQL identifier, validated (non-empty, at most 63 bytes, no NUL) and always quoted
/// when written into SQL.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identifier(String);

impl Identifier {
    pub fn new(what: &str, text: &str) -> Result<Self, ConfigError> {
        if text.is_empty() || text.len() > 63 || text.contains('\0') {
            return Err(ConfigError(format!(
                "{what} `{text}` is not a valid PostgreSQL name (1 to 63 bytes, no NUL)"
            )));
        }
        Ok(Identifier(text.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The identifier as SQL text: double-quoted, inner quotes doubled.
    pub fn quoted(&self) -> String {
        format!("\"{}\"", self.0.replace('"', "\"\""))
    }
}

impl fmt::Display for Identifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The outbox table's schema and name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TableName {
    pub schema: Identifier,
    pub name: Identifier,
}

impl TableName {
    pub fn parse(text: &str) -> Result<Self, ConfigError> {
        let (schema, name) = text.split_once('.').unwrap_or(("public", text));
        Ok(TableName {
            schema: Identifier::new("schema", schema)?,
            name: Identifier::new("table", name)?,
        })
    }

    pub fn quoted(&self) -> String {
        format!("{}.{}", self.schema.quoted(), self.name.quoted())
    }
}

impl fmt::Display for TableName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.schema, self.name)
    }
}

/// A URL with a secret in it. Debug and Display show it with the password replaced.
#[derive(Clone)]
pub struct SecretUrl(String);

impl SecretUrl {
    pub fn new(url: String) -> Self {
        SecretUrl(url)
    }

    /// The URL itself, for connecting only.
    pub fn expose(&self) -> &str {
        &self.0
    }

    pub fn redacted(&self) -> String {
        redact_url(&self.0)
    }
}

impl fmt::Debug for SecretUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())
    }
}

impl fmt::Display for SecretUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())
    }
}

/// Replace the password of `scheme://user:password@host/...` (and `password=` in key=value
/// connection strings) with `***`.
pub fn redact_url(url: &str) -> String {
    if let Some(scheme_end) = url.find("://") {
        let rest = &url[scheme_end + 3..];
        let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
        if let Some(at) = rest[..authority_end].rfind('@')
            && let Some(colon) = rest[..at].find(':')
        {
            return format!(
                "{}{}:***{}",
                &url[..scheme_end + 3],
                &rest[..colon],
                &rest[at..]
            );
        }
        return url.to_owned();
    }
    url.split_whitespace()
        .map(|pair| match pair.split_once('=') {
            Some((key, _)) if key.eq_ignore_ascii_case("password") => format!("{key}=***"),
            _ => pair.to_owned(),
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// A password read from a file. Debug shows `***`.
#[derive(Clone)]
pub struct Secret(String);

impl Secret {
    /// The password itself, for connecting only.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Read a password file: its whole content, less one trailing newline (`\n` or `\r\n`),
    /// which editors and `echo` add.
    pub fn from_file(flag: &str, path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|error| {
            ConfigError(format!(
                "{flag} {}: cannot read it: {error}",
                path.display()
            ))
        })?;
        let password = text
            .strip_suffix('\n')
            .map(|text| text.strip_suffix('\r').unwrap_or(text))
            .unwrap_or(&text);
        if password.is_empty() {
            return Err(ConfigError(format!("{flag} {} is empty", path.display())));
        }
        Ok(Secret(password.to_owned()))
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// A CA file for amqps://, read and checked at startup.
#[derive(Clone, Debug)]
pub struct CaFile {
    pub path: PathBuf,
    /// The file's PEM text (lapin takes PEM).
    pub pem: String,
}

impl CaFile {
    fn read(flag: &str, path: &Path) -> Result<Self, ConfigError> {
        use rustls::pki_types::CertificateDer;
        use rustls::pki_types::pem::PemObject;
        let pem = std::fs::read_to_string(path).map_err(|error| {
            ConfigError(format!(
                "{flag} {}: cannot read it: {error}",
                path.display()
            ))
        })?;
        let certificates = CertificateDer::pem_slice_iter(pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|error| {
                ConfigError(format!(
                    "{flag} {} is not PEM certificates: {error}",
                    path.display()
                ))
            })?;
        if certificates.is_empty() {
            return Err(ConfigError(format!(
                "{flag} {} holds no PEM certificate",
                path.display()
            )));
        }
        Ok(CaFile {
            path: path.to_owned(),
            pem,
        })
    }
}

/// Everything a subcommand needs, validated.
#[derive(Clone, Debug)]
pub struct Config {
    pub postgres_url: SecretUrl,
    /// The connection settings, the password file's password included.
    pub postgres: tokio_postgres::Config,
    pub postgres_tls: PostgresTls,
    pub amqp_url: AmqpUrls,
    /// From --amqp-password-file: replaces the URL's password.
    pub amqp_password: Option<Secret>,
    pub amqp_ca: Option<CaFile>,
    pub slot: Identifier,
    pub publication: Identifier,
    pub table: TableName,
    pub columns: ColumnMap,
    pub exchange: String,
    pub declare_exchange: bool,
    pub routing_key: Template,
    pub max_in_flight: usize,
}

/// `walbox run`'s own settings.
#[derive(Clone, Debug)]
pub struct RunConfig {
    pub start_lsn: Option<Lsn>,
    pub shutdown_grace: Duration,
    pub max_retry_delay: Duration,
    /// None: serve no metrics or health endpoints.
    pub metrics_addr: Option<SocketAddr>,
    /// Consecutive refusals of one event after which it is poison.
    pub poison_after: u32,
    /// Where poison events go; None: halt on them.
    pub dead_letter_exchange: Option<String>,
    /// None: keep no replay window.
    pub replay_window: Option<ReplayWindow>,
}

impl Config {
    pub fn from_args(args: &CommonArgs) -> Result<Self, ConfigError> {
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
        if args.exchange.len() > 255 {
            return Err(ConfigError("--exchange is longer than 255 bytes".into()));
        }
        let columns = ColumnMap::parse(&args.columns).map_err(|e| ConfigError(e.to_string()))?;
        let routing_key =
            Template::parse(&args.routing_key).map_err(|e| ConfigError(e.to_string()))?;
        Ok(Config {
            postgres_url: SecretUrl::new(args.postgres_url.clone()),
            postgres,
            postgres_tls,
            amqp_url,
            amqp_password,
            amqp_ca,
            slot: Identifier::new("--slot", slot)?,
            publication: Identifier::new("--publication", &args.publication)?,
            table: TableName::parse(&args.table)?,
            columns,
            exchange: args.exchange.clone(),
            declare_exchange: !args.no_declare,
            routing_key,
            max_in_flight: args.max_in_flight as usize,
        })
    }
}

impl RunConfig {
    pub fn from_args(args: &RunArgs) -> Result<Self, ConfigError> {
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
        Ok(RunConfig {
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
    pub fn from_args(args: &ReplayArgs) -> Result<Self, ConfigError> {
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
            config.routing_key.to_string(),
            "{aggregate_type}.{event_type}"
        );
        assert!(config.declare_exchange);
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
    fn identifiers_are_quoted() {
        let table = TableName::parse(r#"sales.out"box"#).unwrap();
        assert_eq!(table.quoted(), r#""sales"."out""box""#);
        assert_eq!(
            TableName::parse("outbox").unwrap().schema.as_str(),
            "public"
        );
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

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(
            redact_url("postgres://walbox:s3cret@db:5432/app?sslmode=require"),
            "postgres://walbox:***@db:5432/app?sslmode=require"
        );
        assert_eq!(
            redact_url("amqp://guest:guest@h:5672/%2f"),
            "amqp://guest:***@h:5672/%2f"
        );
        assert_eq!(redact_url("amqp://h:5672"), "amqp://h:5672");
        assert_eq!(redact_url("postgres://user@h/db"), "postgres://user@h/db");
        assert_eq!(
            redact_url("host=db password=x user=y"),
            "host=db password=*** user=y"
        );
        let secret = SecretUrl::new("amqp://u:p@h".into());
        assert_eq!(
            format!("{secret} {secret:?}"),
            "amqp://u:***@h amqp://u:***@h"
        );
    }
}
