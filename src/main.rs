//! The `walbox` command: parse flags, set up logging, run a subcommand, map the outcome to an
//! exit code (0 clean, 1 definite error, 2 usage error).

use std::io::IsTerminal;
use std::process::ExitCode;

use tracing_subscriber::EnvFilter;

use walbox::cli;
use walbox::config::file::{self, ParseError, Parsed};
use walbox::config::{Cli, Command, CommonArgs, Config, ConfigCommand, LogFormat, RunConfig};
use walbox::error::Error;
use walbox::replay::ReplayConfig;

// jemalloc instead of the system allocator: a CPU profile of a drain spent about a fifth of
// walbox's time in glibc's malloc and free; in benches/ab-drain.sh's drain jemalloc cut CPU
// per event by a third at about the same peak RSS (benches/RESULTS.md, "Allocator").
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

const EXIT_DEFINITE: u8 = 1;
const EXIT_USAGE: u8 = 2;

fn main() -> ExitCode {
    let parsed = match file::parse(std::env::args_os()) {
        Ok(parsed) => parsed,
        // clap prints --help, --version and its own usage errors, and exits 2 for the latter.
        Err(ParseError::Clap(error)) => error.exit(),
        Err(ParseError::File(error)) => return usage(error),
    };
    if let Command::Config(ConfigCommand::Check(run)) = &parsed.cli.command {
        return match cli::config_check::check(&parsed, run) {
            Ok(()) => ExitCode::SUCCESS,
            Err(error) => usage(error),
        };
    }
    init_logging(&parsed.cli);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("walbox: cannot start the async runtime: {error}");
            return ExitCode::from(EXIT_DEFINITE);
        }
    };
    runtime.block_on(dispatch(parsed))
}

async fn dispatch(parsed: Parsed) -> ExitCode {
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
        Command::Setup(_) => cli::setup::setup(&config).await,
        Command::Teardown(_) => cli::teardown::teardown(&config).await,
        Command::Status(status) => cli::status::status(&config, status.json).await,
        Command::Run(run) => match RunConfig::from_args(run) {
            Ok(run) => cli::run::run(&config, &run).await,
            Err(error) => return usage(error),
        },
        Command::Replay(replay) => match ReplayConfig::from_args(replay) {
            Ok(replay) => cli::replay::replay(&config, &replay).await,
            Err(error) => return usage(error),
        },
        // Handled before the runtime starts.
        Command::Config(ConfigCommand::Check(_)) => Ok(()),
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(error @ (Error::OutOfRange(_) | Error::Usage(_))) => {
            tracing::error!(%error, "walbox stopped");
            usage(error)
        }
        Err(error) => {
            let kind = match error {
                Error::Definite(_) | Error::OutOfRange(_) | Error::Usage(_) => "error",
                Error::Transient(_) | Error::SlotInUse(_) | Error::Refused(_) => {
                    "error (transient; try again)"
                }
            };
            tracing::error!(%error, "walbox stopped");
            eprintln!("walbox: {kind}: {error}");
            ExitCode::from(EXIT_DEFINITE)
        }
    }
}

fn usage(error: impl std::fmt::Display) -> ExitCode {
    eprintln!("walbox: {error}");
    ExitCode::from(EXIT_USAGE)
}

fn init_logging(cli: &Cli) {
    // lapin logs every message the broker returns at warn level; walbox already logs the one
    // that matters (the first unroutable event of a session), so one line per event is noise.
    let quiet = |filter: EnvFilter| {
        filter.add_directive(
            "lapin::returned_messages=error"
                .parse()
                .expect("a valid directive"),
        )
    };
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&cli.log_level))
        .map(quiet)
        .unwrap_or_else(|_| quiet(EnvFilter::new("info")));
    let json = match cli.log_format {
        LogFormat::Json => true,
        LogFormat::Text => false,
        LogFormat::Auto => !std::io::stdout().is_terminal(),
    };
    // Colours only for a person at a terminal, not in a file the text format is sent to.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    if json {
        builder.json().flatten_event(true).init();
    } else {
        builder.init();
    }
}
