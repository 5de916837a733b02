//! Flags, environment variables and the configuration file → one validated [`Config`] (plus
//! [`RunConfig`] and [`ReplayConfig`] for the subcommands that need more).
//!
//! Every flag also reads `WALBOX_<FLAG>` and the key `<flag>` of the `--config` file
//! ([`file`]); precedence is flag > environment > file > default. Validation happens here,
//! before anything connects, so a bad LSN, template, column map or name is a usage error
//! (exit 2) with a message saying what is wrong; nothing else in walbox parses user text.
//!
//! One job per file: [`args`] the flags, [`amqp_urls`] the broker nodes, [`file`] the TOML file, [`names`] identifiers and
//! derived slot names, [`secrets`] passwords and CA files, [`stream`] the stream target, [`postgres`] the PostgreSQL URL
//! and its TLS settings, [`replay`] the replay settings, [`backfill`] which rows already in the
//! table are sent (cut-over and re-send), [`validate`] flags → settings, and
//! [`reference`] the docs' options table; [`mapping`] and [`preset`] what rows become on
//! the wire (#11's flags), [`messages`] which logical decoding messages are relayed and how, [`exchange`] how the exchange is declared.

mod amqp_urls;
pub(crate) use amqp_urls::AmqpUrls;
mod args;
pub mod backfill;
mod exchange;
pub mod file;
pub mod mapping;
mod messages;
mod names;
pub(crate) mod postgres;
pub mod preset;
pub mod reference;
mod replay;
mod secrets;
mod stream;
mod stream_tls;
mod validate;

pub use args::{
    AmqpClient, Cli, Command, CommonArgs, CompletionsArgs, ConfigCommand, LogFormat, ManArgs,
    ReplayArgs, ResendArgs, RunArgs, SetupArgs, StatusArgs, StreamDeclare, TargetKind, version,
};
pub(crate) use backfill::{BackfillConfig, ResendConfig};
pub use exchange::{DeclareMode, ExchangeSpec, Kind, Unroutable, UnroutableMode};
pub use mapping::MappingArgs;
pub(crate) use names::{Identifier, TableName, bookmark_name, copy_name};
pub(crate) use postgres::{PostgresTls, RootCerts, SslMode};
pub(crate) use replay::{ReplayConfig, ReplayWindow};
pub(crate) use secrets::{CaFile, SecretUrl, redact_url};
pub(crate) use stream::{PartitionKey, StreamNode, StreamTarget};
pub(crate) use stream_tls::StreamTls;
pub(crate) use validate::{Config, RunConfig, backfill_config};

/// A configuration that failed validation: a usage error.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub(crate) String);
