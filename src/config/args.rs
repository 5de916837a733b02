//! The command line: every subcommand's flags, each with its environment variable. Only
//! parsing lives here; what the values mean is decided in [`super::validate`].

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

use super::backfill::{BackfillArgs, ResendSelection};
use super::mapping::MappingArgs;

/// walbox's version and the commit it was built from (`build.rs`), as `--version` prints it.
pub fn version() -> String {
    let commit = option_env!("WALBOX_COMMIT").unwrap_or("unknown");
    format!("{} (commit {commit})", env!("CARGO_PKG_VERSION"))
}

#[derive(Debug, Parser)]
#[command(
    name = "walbox",
    version = version(),
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

/// `--target`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum TargetKind {
    Amqp,
    Stream,
}

/// `--amqp-client`: the AMQP 0-9-1 client library behind the publisher.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum AmqpClient {
    /// amqprs, with walbox's own confirm ledger: a `basic.return` is credited by the returned
    /// message's id, so it can never be credited to another message.
    Amqprs,
    /// lapin 4.12, the earlier default, kept for one release as a fallback. It may credit a
    /// return to another message in flight (walbox docs, "Limitations").
    Lapin,
}

/// `--stream-declare`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum StreamDeclare {
    Create,
    None,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Check the server (wal_level, the table and its mapped columns, privileges), create the
    /// publication (inserts only) and the slot if missing, declare the exchange (or create the
    /// stream), and print the LSN from which events are captured. Safe to run again.
    /// With --backfill, it also sends the rows the table already holds (see `walbox run`).
    Setup(SetupArgs),
    /// Set up what is missing (except a slot on a promoted server: only setup creates that),
    /// then relay events until SIGINT or SIGTERM, serving /metrics, /healthz, /readyz and
    /// /standbyz.
    Run(RunArgs),
    /// Publish again the events committed in an LSN range, from the replay window.
    Replay(ReplayArgs),
    /// Re-send rows from the outbox table (by predicate, id range or creation time), e.g. after
    /// a lost slot or a recreated table; the slot is not involved.
    Backfill(ResendArgs),
    /// Show the slot (active, pid, confirmed flush, restart LSN, wal_status), the server's WAL
    /// position and the lag, the publication's tables, the standbys' copies of the slot and the
    /// replay window.
    Status(StatusArgs),
    /// Drop the slot, the replay window's bookmark slot and the publication (not the table, not
    /// the exchange).
    Teardown(CommonArgs),
    /// Work with the configuration.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Print a shell completion script, e.g. `walbox completions bash > /etc/bash_completion.d/walbox`.
    Completions(CompletionsArgs),
    /// Print the man page (roff), e.g. `walbox man > /usr/local/share/man/man1/walbox.1`.
    Man(ManArgs),
}

#[derive(Debug, Clone, Args)]
pub struct CompletionsArgs {
    /// The shell to complete for.
    #[arg(value_enum)]
    pub shell: clap_complete::Shell,
}

#[derive(Debug, Clone, Args)]
pub struct ManArgs {
    /// Write walbox.1 and one page per subcommand (walbox-run.1, …) into this directory
    /// instead of printing walbox.1.
    #[arg(long)]
    pub out: Option<PathBuf>,
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

    /// PEM file of CA certificates trusted for amqps://, besides the system's; for rabbitmq-stream+tls:// (--target stream), the only ones trusted.
    #[arg(long, env = "WALBOX_AMQP_CA_FILE")]
    pub amqp_ca_file: Option<PathBuf>,

    /// The AMQP client library walbox publishes with.
    #[arg(long, env = "WALBOX_AMQP_CLIENT", value_enum, default_value_t = AmqpClient::Amqprs)]
    pub amqp_client: AmqpClient,

    /// Logical replication slot (lowercase letters, digits, underscore).
    #[arg(long, env = "WALBOX_SLOT", default_value = "walbox")]
    pub slot: String,

    /// Publication for the outbox table.
    #[arg(long, env = "WALBOX_PUBLICATION", default_value = "walbox")]
    pub publication: String,

    /// What rows become on the wire: preset, columns, exchange, routing key, body, headers.
    #[command(flatten)]
    pub mapping: MappingArgs,

    /// Where events go: amqp (an exchange, at least once) or stream (a RabbitMQ stream over its own protocol, deduplicated on the WAL position: each event stored once).
    #[arg(long, env = "WALBOX_TARGET", value_enum, default_value_t = TargetKind::Amqp)]
    pub target: TargetKind,

    /// The stream `--target stream` publishes to.
    #[arg(long, env = "WALBOX_STREAM")]
    pub stream: Option<String>,

    /// With --target stream: publish to this super stream (partitioned) instead of --stream; each event goes to the partition its key picks (--partition-key; RabbitMQ's hash routing), so one key's events stay in order in one partition.
    #[arg(long, env = "WALBOX_SUPER_STREAM")]
    pub super_stream: Option<String>,

    /// With --super-stream: the partition key, a template over the row like --routing-key (e.g. {aggregate_type}/{aggregate_id}); a NULL renders empty. Default: {aggregate_id}.
    #[arg(long, env = "WALBOX_PARTITION_KEY")]
    pub partition_key: Option<String>,

    /// With --super-stream: route by this header's value instead of --partition-key (e.g. a key from the headers column); a message without the header has the empty key.
    #[arg(long, env = "WALBOX_PARTITION_KEY_HEADER")]
    pub partition_key_header: Option<String>,

    /// Partitions `walbox setup` creates a missing super stream with (NAME-0 … NAME-<N-1>).
    #[arg(long, env = "WALBOX_SUPER_STREAM_PARTITIONS", default_value_t = 3, value_parser = clap::value_parser!(u16).range(1..=255))]
    pub super_stream_partitions: u16,

    /// Stream protocol URL (rabbitmq-stream://user:password@host:5552/vhost, or rabbitmq-stream+tls://…:5551 with --amqp-ca-file); for a cluster, one per node, comma-separated or repeated. Default: the hosts and credentials of --amqp-url on port 5552 (5551 for amqps://).
    #[arg(long, env = "WALBOX_STREAM_URL")]
    pub stream_url: Vec<String>,

    /// With rabbitmq-stream+tls://: PEM certificate (chain) walbox presents to a stream listener that asks for a client certificate; with --stream-client-key-file.
    #[arg(long, env = "WALBOX_STREAM_CLIENT_CERT_FILE")]
    pub stream_client_cert_file: Option<PathBuf>,

    /// The PKCS#8 PEM key (BEGIN PRIVATE KEY) of --stream-client-cert-file.
    #[arg(long, env = "WALBOX_STREAM_CLIENT_KEY_FILE")]
    pub stream_client_key_file: Option<PathBuf>,

    /// With --target stream: create the stream when it is missing (create), or only use it (none).
    #[arg(long, env = "WALBOX_STREAM_DECLARE", value_enum, default_value_t = StreamDeclare::Create)]
    pub stream_declare: StreamDeclare,

    /// Messages published but not yet confirmed by the broker, at most.
    #[arg(long, env = "WALBOX_MAX_IN_FLIGHT", default_value_t = 1024, value_parser = clap::value_parser!(u32).range(1..=65_535))]
    pub max_in_flight: u32,
}

#[derive(Debug, Clone, Args)]
pub struct SetupArgs {
    #[command(flatten)]
    pub common: CommonArgs,

    #[command(flatten)]
    pub backfill: BackfillArgs,
}

#[derive(Debug, Clone, Args)]
pub struct ResendArgs {
    #[command(flatten)]
    pub common: CommonArgs,

    #[command(flatten)]
    pub selection: ResendSelection,
}

#[derive(Debug, Clone, Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub common: CommonArgs,

    #[command(flatten)]
    pub backfill: BackfillArgs,

    /// Skip ahead: start relaying at this LSN (X/Y); events committed before it are not sent.
    #[arg(long, env = "WALBOX_START_LSN")]
    pub start_lsn: Option<String>,

    /// On SIGTERM/SIGINT, how long to wait for outstanding broker confirms (seconds); closing
    /// the connections afterwards takes at most 3 s more.
    #[arg(long, env = "WALBOX_SHUTDOWN_GRACE", default_value_t = 10)]
    pub shutdown_grace: u64,

    /// Longest wait between reconnection attempts after a transient failure (milliseconds).
    #[arg(long, env = "WALBOX_MAX_RETRY_DELAY_MS", default_value_t = 30_000, value_parser = clap::value_parser!(u64).range(100..))]
    pub max_retry_delay_ms: u64,

    /// Address for /metrics, /healthz, /readyz and /standbyz (host:port; port 0 picks one; `none` serves nothing).
    #[arg(long, env = "WALBOX_METRICS_ADDR", default_value = "127.0.0.1:9820")]
    pub metrics_addr: String,

    /// Treat an event as poison after the broker refused it (closed the channel with PRECONDITION_FAILED, e.g. too large) this many times in a row.
    #[arg(long, env = "WALBOX_POISON_AFTER", default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..))]
    pub poison_after: u32,

    /// Exchange for events walbox cannot deliver (one the broker refuses for good, a row that cannot become a message): a JSON record of each goes there, with confirms, and walbox goes on. Without it walbox halts on a refused event (stays up, not ready) and stops (exit 1) on a row that cannot become a message.
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
