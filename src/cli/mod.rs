//! The subcommands, one file each, and the dispatch that runs one and turns its outcome into
//! an exit code ([`EXIT_CODES`]: 0 clean, 1 definite error, 2 usage error). Each subcommand takes
//! validated configuration.

mod backfill;
mod config_check;
pub mod docs;
mod failover;
mod packaging;
mod replay;
mod run;
mod setup;
mod status;
mod teardown;

use std::process::ExitCode;

use crate::config::file::Parsed;
use crate::config::{
    Command, CommonArgs, Config, ConfigCommand, ReplayConfig, ResendConfig, RunConfig, TargetKind,
};
use crate::error::Disposition;

/// A definite error: the message says what to do.
pub const EXIT_DEFINITE: u8 = 1;
/// A usage error: a flag, the file or the request is wrong.
const EXIT_USAGE: u8 = 2;

/// Every exit code of walbox and what it means; the docs' exit-code reference is generated
/// from this table.
pub const EXIT_CODES: [(u8, &str); 3] = [
    (
        0,
        "Clean stop: the command did its job; `walbox run` stopped on SIGTERM or SIGINT after \
         waiting up to `--shutdown-grace` seconds for the broker's confirms and sending the final \
         flush position. `--help`, `--version`, `completions` and `man` also exit 0.",
    ),
    (
        EXIT_DEFINITE,
        "Definite error: retrying cannot help (the message on stderr and in the log says what to \
         fix), e.g. `wal_level` not logical, a missing table or mapped column, a slot that was \
         dropped, invalidated or lost in a failover, failed authentication, a missing privilege, \
         a row that cannot become a message (without `--dead-letter-exchange`). `walbox run` \
         never exits for a transient failure (network, restart, slot in use): it retries. The \
         other commands do exit 1 on one, and say `error (transient; try again)`.",
    ),
    (
        EXIT_USAGE,
        "Usage error: an unknown flag or configuration-file key, a malformed value (LSN, \
         template, column map, URL, size or age), a template placeholder that names no column \
         of the table, an unreadable configuration, password or CA file, a `replay --from-lsn` \
         before the replay window.",
    ),
];

/// The subcommands that run before (and without) logging and the async runtime: they connect
/// to nothing. None for the others.
pub fn without_runtime(parsed: &Parsed) -> Option<ExitCode> {
    let written = match &parsed.cli.command {
        Command::Config(ConfigCommand::Check(run)) => {
            return Some(match config_check::check(parsed, run) {
                Ok(()) => ExitCode::SUCCESS,
                Err(error) => usage(error),
            });
        }
        Command::Completions(args) => packaging::completions(args.shell),
        Command::Man(args) => packaging::man(args.out.as_deref()),
        _ => return None,
    };
    Some(match written {
        Ok(()) => ExitCode::SUCCESS,
        // `walbox man | head`: the reader has all it wanted.
        Err(error) if error.kind() == std::io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("walbox: error: {error}");
            ExitCode::from(EXIT_DEFINITE)
        }
    })
}

/// Run the parsed subcommand to its end.
pub async fn dispatch(parsed: Parsed) -> ExitCode {
    if let Some(code) = without_runtime(&parsed) {
        return code;
    }
    let command = parsed.cli.command;
    let common: &CommonArgs = match &command {
        Command::Setup(setup) => &setup.common,
        Command::Teardown(common) => common,
        Command::Backfill(resend) => &resend.common,
        Command::Run(run) | Command::Config(ConfigCommand::Check(run)) => &run.common,
        Command::Status(status) => &status.common,
        Command::Replay(replay) => &replay.common,
        // Handled by `without_runtime` above.
        Command::Completions(_) | Command::Man(_) => return ExitCode::SUCCESS,
    };
    let config = match Config::from_args(common) {
        Ok(config) => config,
        Err(error) => return usage(error),
    };
    let outcome = match &command {
        Command::Setup(args) => {
            match crate::config::backfill_config(&args.backfill, &args.common) {
                Ok(backfill) => setup::setup(&config, backfill.as_ref()).await,
                Err(error) => return usage(error),
            }
        }
        Command::Backfill(args) => match ResendConfig::from_args(
            &args.selection,
            &args.common.mapping,
            args.common.target == TargetKind::Stream,
        ) {
            Ok(resend) => backfill::backfill(&config, &resend).await,
            Err(error) => return usage(error),
        },
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
        // Handled by `without_runtime` above.
        Command::Config(ConfigCommand::Check(_)) | Command::Completions(_) | Command::Man(_) => {
            Ok(())
        }
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
