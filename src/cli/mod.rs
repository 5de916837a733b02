//! The subcommands, one file each, and the dispatch that runs one and turns its outcome into
//! an exit code (0 clean, 1 definite error, 2 usage error). Each subcommand takes validated
//! configuration.

mod config_check;
mod failover;
mod replay;
mod run;
mod setup;
mod status;
mod teardown;

use std::process::ExitCode;

use crate::config::file::Parsed;
use crate::config::{Command, CommonArgs, Config, ConfigCommand, ReplayConfig, RunArgs, RunConfig};
use crate::error::Disposition;

/// A definite error: the message says what to do.
pub const EXIT_DEFINITE: u8 = 1;
/// A usage error: a flag, the file or the request is wrong.
const EXIT_USAGE: u8 = 2;

/// `walbox config check`: needs no runtime and no logging.
pub fn config_check(parsed: &Parsed, run: &RunArgs) -> ExitCode {
    match config_check::check(parsed, run) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => usage(error),
    }
}

/// Run the parsed subcommand to its end.
pub async fn dispatch(parsed: Parsed) -> ExitCode {
    let command = parsed.cli.command;
    let common: &CommonArgs = match &command {
        Command::Setup(common) | Command::Teardown(common) => common,
        Command::Run(run) | Command::Config(ConfigCommand::Check(run)) => &run.common,
        Command::Status(status) => &status.common,
        Command::Replay(replay) => &replay.common,
    };
    let config = match Config::from_args(common) {
        Ok(config) => config,
        Err(error) => return usage(error),
    };
    let outcome = match &command {
        Command::Setup(_) => setup::setup(&config).await,
        Command::Teardown(_) => teardown::teardown(&config).await,
        Command::Status(status) => status::status(&config, status.json).await,
        Command::Run(run) => match RunConfig::from_args(run) {
            Ok(run) => run::run(&config, &run).await,
            Err(error) => return usage(error),
        },
        Command::Replay(replay) => match ReplayConfig::from_args(replay) {
            Ok(replay) => replay::replay(&config, &replay).await,
            Err(error) => return usage(error),
        },
        // The entry point runs it before the runtime starts ([`config_check`]).
        Command::Config(ConfigCommand::Check(_)) => Ok(()),
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) if error.disposition() == Disposition::Usage => {
            tracing::error!(%error, "walbox stopped");
            usage(error)
        }
        Err(error) => {
            let kind = match error.is_transient() {
                true => "error (transient; try again)",
                false => "error",
            };
            tracing::error!(%error, "walbox stopped");
            eprintln!("walbox: {kind}: {error}");
            ExitCode::from(EXIT_DEFINITE)
        }
    }
}

/// A usage error: printed as is, exit 2.
pub fn usage(error: impl std::fmt::Display) -> ExitCode {
    eprintln!("walbox: {error}");
    ExitCode::from(EXIT_USAGE)
}
