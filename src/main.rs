//! The `walbox` command: parse flags, set up logging, start the runtime and hand the
//! subcommand to [`walbox::cli`], which maps its outcome to an exit code.

use std::io::IsTerminal;
use std::process::ExitCode;

use tracing_subscriber::EnvFilter;

use walbox::cli;
use walbox::config::file::{self, ParseError};
use walbox::config::{Cli, LogFormat};

// jemalloc instead of the system allocator: a CPU profile of a drain spent about a fifth of
// walbox's time in glibc's malloc and free; in benches/ab-drain.sh's drain jemalloc cut CPU
// per event by a third at about the same peak RSS (benches/RESULTS.md, "Allocator").
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> ExitCode {
    let parsed = match file::parse(std::env::args_os()) {
        Ok(parsed) => parsed,
        // clap prints --help, --version and its own usage errors, and exits 2 for the latter.
        Err(ParseError::Clap(error)) => error.exit(),
        Err(ParseError::File(error)) => return cli::usage(error),
    };
    if let Some(code) = cli::without_runtime(&parsed) {
        return code;
    }
    init_logging(&parsed.cli);
    // One thread for every task. walbox's pipeline is one engine task feeding the client's
    // reader and writer tasks; on a worker per core those hand-offs cross threads (a futex
    // wake and an epoll wait each), and in benches/ab-drain.sh's drain the process made 2.5
    // system calls per event against 1.2 and spent 10.10 µs of CPU per event against 8.50,
    // at the same rate and 5 MiB less peak RSS (benches/RESULTS.md, "What limits the AMQP
    // drain"). The drain waits on the broker, not on walbox's CPU.
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("walbox: cannot start the async runtime: {error}");
            return ExitCode::from(cli::EXIT_DEFINITE);
        }
    };
    runtime.block_on(cli::dispatch(parsed))
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
