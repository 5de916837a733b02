//! The `walbox` command: parse flags, set up logging, run a subcommand, map the outcome to an
//! exit code (0 clean, 1 definite error, 2 usage error).

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::Parser;
use tracing_subscriber::EnvFilter;

use walbox::cli;
use walbox::config::{Cli, Command, CommonArgs, Config, LogFormat, RunConfig};
use walbox::error::Error;

const EXIT_DEFINITE: u8 = 1;
const EXIT_USAGE: u8 = 2;

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(&cli);
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
    runtime.block_on(dispatch(cli.command))
}

async fn dispatch(command: Command) -> ExitCode {
    let common: &CommonArgs = match &command {
        Command::Setup(common) | Command::Teardown(common) => common,
        Command::Run(run) => &run.common,
        Command::Status(status) => &status.common,
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
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            let kind = match error {
                Error::Definite(_) => "error",
                Error::Transient(_) | Error::SlotInUse(_) => "error (transient; try again)",
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
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&cli.log_level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let json = match cli.log_format {
        LogFormat::Json => true,
        LogFormat::Text => false,
        LogFormat::Auto => !std::io::stdout().is_terminal(),
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if json {
        builder.json().flatten_event(true).init();
    } else {
        builder.init();
    }
}
