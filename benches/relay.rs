//! End-to-end benchmark of walbox on the local PostgreSQL and RabbitMQ (benches/README.md).
//!
//! `cargo bench --bench relay` measures, in one run and as medians of several repetitions:
//! the ceiling (a raw lapin publisher with walbox's window and confirms, no PostgreSQL); walbox
//! draining a committed backlog (events/s, CPU per event, peak RSS); commit → delivery latency
//! at steady loads of 50% and 10% of the ceiling; a small polling relay on the same workloads,
//! with the load each relay puts on PostgreSQL; and drain vs ceiling across payload sizes,
//! transaction sizes and queue types; and, when asked (`WALBOX_BENCH_ONLY=targets`), walbox and
//! the raw ceiling per target: a classic queue, a quorum queue and a stream. It writes target/bench-report.md (or benches/RESULTS.md
//! with `WALBOX_BENCH_WRITE_RESULTS=1`) and prints it.
//!
//! The raw publisher and the polling relay run as processes of their own, like walbox (this
//! binary again, with `WALBOX_BENCH_ROLE`), so that each one's CPU and memory can be read from
//! /proc and the bench process itself only produces and consumes.
//!
//! Without `--bench` (as `cargo test --all-targets` runs every bench target) it checks its own
//! arithmetic and exits at once.

#[path = "relay/amqp.rs"]
mod amqp;
#[path = "relay/load.rs"]
mod load;
#[path = "relay/poller.rs"]
mod poller;
#[path = "relay/procfs.rs"]
mod procfs;
#[path = "relay/report.rs"]
mod report;
#[path = "relay/stream.rs"]
mod stream;
#[path = "relay/world.rs"]
mod world;

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Parser;
use report::{Drain, Latency, Results, Scaling, Statements, TableStats};
use tokio_postgres::Client;
use world::{QueueKind, World};

/// Sessions committing the backlog / the steady load at once.
const FILL_CONNECTIONS: usize = 4;
const STEADY_CONNECTIONS: usize = 4;
/// Latency samples start after this much steady load.
const WARMUP: Duration = Duration::from_secs(2);

fn main() -> ExitCode {
    if !std::env::args().any(|arg| arg == "--bench") {
        report::self_check();
        amqp::self_check();
        stream::self_check();
        println!("relay bench: run with `cargo bench --bench relay` (see benches/README.md)");
        return ExitCode::SUCCESS;
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("relay bench: cannot start a runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    let outcome = match std::env::var(world::ROLE).as_deref() {
        Ok("poller") => runtime.block_on(poller::run()),
        Ok("publisher") => runtime.block_on(amqp::publisher_role()),
        Ok("stream-publisher") => runtime.block_on(stream::publisher_role()),
        _ => runtime.block_on(bench()),
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("relay bench: {error:#}");
            ExitCode::FAILURE
        }
    }
}

/// Settings, from `WALBOX_BENCH_*` environment variables (README "Options").
#[derive(Clone, Debug)]
struct Options {
    events: usize,
    reps: usize,
    payload_bytes: usize,
    tx_rows: usize,
    window: usize,
    latency_seconds: u64,
    /// Steady loads for the latency runs: fractions of the ceiling, or events/s.
    latency_loads: Vec<Load>,
    latency_tx_rows: usize,
    poll_batch: usize,
    poll_interval_ms: u64,
    scaling: bool,
    scaling_events: usize,
    /// Which parts and relays to run (see [`Options::runs`]).
    only: Vec<String>,
    /// The `targets` part's targets, in their order within a round.
    targets: Vec<QueueKind>,
    write_results: bool,
    statements: bool,
    log_dir: PathBuf,
}

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> Result<T> {
    match std::env::var(name) {
        Ok(text) => text
            .trim()
            .replace('_', "")
            .parse()
            .map_err(|_| anyhow::anyhow!("{name}={text} is not a valid value")),
        Err(_) => Ok(default),
    }
}

impl Options {
    fn from_env(target_dir: &Path) -> Result<Options> {
        // walbox's own default --max-in-flight, so the ceiling uses the same window.
        let cli = walbox::config::Cli::try_parse_from(["walbox", "run"])?;
        let walbox::config::Command::Run(run) = cli.command else {
            unreachable!("parsed `run`")
        };
        let only: String = env_or("WALBOX_BENCH_ONLY", String::new())?;
        let options = Options {
            events: env_or("WALBOX_BENCH_EVENTS", 200_000)?,
            reps: env_or("WALBOX_BENCH_REPS", 3)?,
            payload_bytes: env_or("WALBOX_BENCH_PAYLOAD_BYTES", 200)?,
            tx_rows: env_or("WALBOX_BENCH_TX_ROWS", 100)?,
            window: run.common.max_in_flight as usize,
            latency_seconds: env_or("WALBOX_BENCH_LATENCY_SECS", 10)?,
            latency_loads: match std::env::var("WALBOX_BENCH_LATENCY_RATE") {
                Ok(rate) => vec![Load::Rate(rate.trim().parse().with_context(|| {
                    format!("WALBOX_BENCH_LATENCY_RATE={rate} is not a number")
                })?)],
                Err(_) => env_or("WALBOX_BENCH_LATENCY_LOADS", "0.5,0.1".to_owned())?
                    .split(',')
                    .map(|share| share.trim().parse().map(Load::ShareOfCeiling))
                    .collect::<Result<_, _>>()
                    .context(
                        "WALBOX_BENCH_LATENCY_LOADS: fractions of the ceiling, e.g. 0.5,0.1",
                    )?,
            },
            latency_tx_rows: env_or("WALBOX_BENCH_LATENCY_TX_ROWS", 10)?,
            poll_batch: env_or("WALBOX_BENCH_POLL_BATCH", 1000)?,
            poll_interval_ms: env_or("WALBOX_BENCH_POLL_INTERVAL_MS", 100)?,
            scaling: env_or::<u8>("WALBOX_BENCH_SCALING", 1)? != 0,
            scaling_events: env_or("WALBOX_BENCH_SCALING_EVENTS", 20_000)?,
            only: only
                .split(',')
                .map(str::trim)
                .filter(|part| !part.is_empty())
                .map(str::to_owned)
                .collect(),
            targets: env_or("WALBOX_BENCH_TARGETS", "classic,quorum,stream".to_owned())?
                .split(',')
                .map(str::trim)
                .filter(|name| !name.is_empty())
                .map(|name| match name {
                    "classic" | "quorum" | "stream" => Ok(QueueKind::named(name)),
                    other => {
                        bail!("WALBOX_BENCH_TARGETS: {other} is not classic, quorum or stream")
                    }
                })
                .collect::<Result<_>>()?,
            write_results: env_or::<u8>("WALBOX_BENCH_WRITE_RESULTS", 0)? != 0,
            statements: false,
            log_dir: target_dir.join("bench-logs"),
        };
        if options.events == 0 || options.reps == 0 || options.tx_rows == 0 {
            bail!("WALBOX_BENCH_EVENTS, _REPS and _TX_ROWS must be at least 1");
        }
        Ok(options)
    }

    /// Whether a part runs: `WALBOX_BENCH_ONLY` lists parts (ceiling, drain, latency,
    /// scaling, targets) and/or relays (walbox, poller); an empty list or one naming only
    /// relays runs every part but `targets`, one naming no relay runs both. `targets` runs
    /// only when named: it needs a broker with streams (RabbitMQ 4, not the machine's 3.10).
    fn runs(&self, part: &str) -> bool {
        let listed = |names: &[&str]| self.only.iter().any(|o| names.contains(&o.as_str()));
        let parts = ["ceiling", "drain", "latency", "scaling", "targets"];
        if part == "targets" {
            return listed(&[part]);
        }
        (!listed(&parts) || listed(&[part])) && (part != "scaling" || self.scaling)
    }

    fn runs_relay(&self, relay: Relay) -> bool {
        let relays = ["walbox", "poller"];
        !self.only.iter().any(|o| relays.contains(&o.as_str()))
            || self.only.iter().any(|o| o == relay.name())
    }
}

/// A steady load for the latency runs.
#[derive(Clone, Copy, Debug)]
enum Load {
    ShareOfCeiling(f64),
    Rate(f64),
}

/// The workload of one drain or ceiling.
#[derive(Clone, Copy, Debug)]
struct Shape {
    events: usize,
    payload_bytes: usize,
    tx_rows: usize,
    queue: QueueKind,
}

/// What moves the events to the broker.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Relay {
    /// The ceiling: a raw publisher, no PostgreSQL.
    Publisher,
    /// The stream ceiling with one message per publish frame, as walbox's stream publisher
    /// sends them (the crate's producer packs up to 100 per frame).
    FramePublisher,
    Walbox,
    Poller,
}

impl Relay {
    /// Also the name of its log file.
    fn name(self) -> &'static str {
        match self {
            Relay::Publisher | Relay::FramePublisher => "publisher",
            Relay::Walbox => "walbox",
            Relay::Poller => "poller",
        }
    }

    fn display(self) -> &'static str {
        match self {
            Relay::Publisher => "raw publisher",
            Relay::FramePublisher => "raw publisher, one message per frame",
            Relay::Walbox => "walbox",
            Relay::Poller => "polling relay",
        }
    }

    /// A raw publisher (a ceiling): no PostgreSQL.
    fn is_raw(self) -> bool {
        matches!(self, Relay::Publisher | Relay::FramePublisher)
    }
}

async fn bench() -> Result<()> {
    let target_dir = Path::new(env!("CARGO_BIN_EXE_walbox"))
        .parent()
        .and_then(Path::parent)
        .context("locating target/")?
        .to_owned();
    let mut options = Options::from_env(&target_dir)?;
    tokio::spawn(async {
        let mut terminate =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                .expect("SIGTERM handler");
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = terminate.recv() => {}
        }
        eprintln!("relay bench: interrupted; removing this run's slots, databases and queues");
        world::cleanup_all().await;
        std::process::exit(130);
    });
    world::sweep_stale().await?;

    let started = Instant::now();
    let mut results = Results {
        setup: describe(&mut options).await?,
        ..Results::default()
    };
    eprintln!(
        "relay bench: walbox {}; {} events × {} repetitions; logs in {}",
        world::WALBOX.as_str(),
        options.events,
        options.reps,
        options.log_dir.display()
    );

    let outcome = measure(&options, &mut results).await;
    results.setup.wall_seconds = started.elapsed().as_secs_f64();

    let (report_path, svg_path) = if options.write_results {
        let benches = Path::new(env!("CARGO_MANIFEST_DIR")).join("benches");
        (benches.join("RESULTS.md"), benches.join("scaling.svg"))
    } else {
        (
            target_dir.join("bench-report.md"),
            target_dir.join("bench-scaling.svg"),
        )
    };
    let svg_name = (!results.scaling.is_empty()).then(|| {
        svg_path
            .file_name()
            .map(|name| name.to_string_lossy().into_owned())
            .unwrap_or_default()
    });
    let mut text = report::markdown(&results, svg_name.as_deref());
    if let Err(error) = &outcome {
        text.push_str(&format!(
            "\n**Incomplete: the run stopped with an error:** {error:#}\n"
        ));
    }
    if svg_name.is_some() {
        std::fs::write(&svg_path, report::scaling_svg(&results.scaling))?;
    }
    std::fs::write(&report_path, &text)?;
    println!("{text}");
    eprintln!("relay bench: report written to {}", report_path.display());

    let leftover = world::leftover_slots().await?;
    if !leftover.is_empty() {
        bail!("replication slots left behind: {leftover:?}");
    }
    eprintln!("relay bench: no replication slot of this run is left");
    outcome
}

/// Versions and settings for the report's header; checks for pg_stat_statements.
async fn describe(options: &mut Options) -> Result<report::Setup> {
    let postgres = world::pg_connect(&world::pg_url("postgres")).await?;
    let version: String = postgres.query_one("SHOW server_version", &[]).await?.get(0);
    let preload: String = postgres
        .query_one("SHOW shared_preload_libraries", &[])
        .await?
        .get(0);
    options.statements = preload.contains("pg_stat_statements");
    let statements = if options.statements {
        "loaded; totals below are for each bench database".to_owned()
    } else {
        format!(
            "not available (shared_preload_libraries = '{preload}'; add pg_stat_statements \
             there and restart PostgreSQL to get per-statement totals)"
        )
    };
    let command = |program: &str, args: &[&str]| {
        Command::new(program)
            .args(args)
            .output()
            .ok()
            .filter(|out| out.status.success())
            .map(|out| String::from_utf8_lossy(&out.stdout).trim().to_owned())
    };
    let commit = command("git", &["rev-parse", "--short", "HEAD"]).unwrap_or("unknown".into());
    let dirty = command("git", &["status", "--porcelain", "--", "src", "Cargo.toml"])
        .is_some_and(|status| !status.is_empty());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let memory_gib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find_map(|line| line.strip_prefix("MemTotal:"))
                .and_then(|kib| kib.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        })
        .map_or(0.0, |kib| kib / 1024.0 / 1024.0);
    Ok(report::Setup {
        when: command("date", &["-u", "+%Y-%m-%d %H:%M UTC"]).unwrap_or_default(),
        commit: format!("{commit}{}", if dirty { " (+ local changes)" } else { "" }),
        machine: format!("{cores} cores, {memory_gib:.0} GiB"),
        postgres: version,
        rabbitmq: match stream::broker_version(world::stream_url()).await {
            Some(version) => version,
            None => {
                command("rabbitmqctl", &["version"]).unwrap_or("(rabbitmqctl not found)".into())
            }
        },
        events: options.events,
        reps: options.reps,
        payload_bytes: options.payload_bytes,
        tx_rows: options.tx_rows,
        window: options.window,
        poll_batch: options.poll_batch,
        poll_interval_ms: options.poll_interval_ms,
        latency_tx_rows: options.latency_tx_rows,
        latency_seconds: options.latency_seconds as f64,
        latency_warmup_seconds: WARMUP.as_secs_f64(),
        pg_stat_statements: statements,
        wall_seconds: 0.0,
    })
}

/// Every measurement, interleaved per repetition so slow phases of a shared machine hit all of
/// them alike. Results are kept as they come, so a failure still reports what was measured.
async fn measure(options: &Options, results: &mut Results) -> Result<()> {
    let base = Shape {
        events: options.events,
        payload_bytes: options.payload_bytes,
        tx_rows: options.tx_rows,
        queue: QueueKind::Classic,
    };
    for rep in 1..=options.reps {
        let tag = format!("[{rep}/{}]", options.reps);
        if options.runs("ceiling") {
            let run = ceiling(options, base).await?;
            eprintln!(
                "relay bench: {tag} ceiling {:.0} events/s ({:.1} s)",
                run.rate, run.seconds
            );
            results.ceilings.push(run);
        }
        for relay in [Relay::Walbox, Relay::Poller] {
            if options.runs("drain") && options.runs_relay(relay) {
                let run = drain(options, base, relay).await?;
                eprintln!(
                    "relay bench: {tag} {} drain {:.0} events/s ({:.1} s; fill {:.1} s), \
                     CPU {} µs/event",
                    relay.name(),
                    run.rate,
                    run.seconds,
                    run.fill_seconds,
                    run.relay_cpu_us.map_or("?".into(), |us| format!("{us:.1}"))
                );
                match relay {
                    Relay::Poller => results.poller.push(run),
                    _ => results.walbox.push(run),
                }
            }
        }
    }

    if options.runs("latency") {
        for &load in &options.latency_loads {
            let (rate, label) = match load {
                Load::Rate(rate) => (rate, format!("{rate:.0} events/s")),
                Load::ShareOfCeiling(share) => {
                    let ceiling = match report::median(results.ceilings.iter().map(|c| c.rate)) {
                        Some(ceiling) => ceiling,
                        None => ceiling(options, base).await?.rate,
                    };
                    (
                        ceiling * share,
                        format!("{:.0}% of the ceiling", share * 100.0),
                    )
                }
            };
            let rows = results.latency.len();
            for relay in [Relay::Walbox, Relay::Poller] {
                if options.runs_relay(relay) {
                    results.latency.push(report::LatencyRow {
                        relay: relay.display(),
                        load: label.clone(),
                        runs: Vec::new(),
                    });
                }
            }
            for rep in 1..=options.reps {
                for row in &mut results.latency[rows..] {
                    let relay = if row.relay == Relay::Walbox.display() {
                        Relay::Walbox
                    } else {
                        Relay::Poller
                    };
                    let run = latency(options, relay, rate).await?;
                    eprintln!(
                        "relay bench: [{rep}/{}] {} latency at {:.0} events/s ({label}): \
                         p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
                        options.reps,
                        relay.name(),
                        run.achieved_rate,
                        run.p50,
                        run.p99,
                        run.max
                    );
                    row.runs.push(run);
                }
            }
        }
    }

    if options.runs("scaling") {
        scaling(options, results).await?;
    }
    if options.runs("targets") {
        targets(options, results).await?;
    }
    Ok(())
}

async fn ceiling(options: &Options, shape: Shape) -> Result<Drain> {
    drain(options, shape, Relay::Publisher).await
}

async fn table_stats(db: &Client) -> Result<TableStats> {
    Ok(TableStats::from_row(
        &db.query_one(TableStats::SQL, &[]).await?,
    ))
}

async fn statements(options: &Options, db: &Client) -> Result<Option<Statements>> {
    if !options.statements {
        return Ok(None);
    }
    Ok(Some(Statements::from_row(
        &db.query_one(Statements::SQL, &[]).await?,
    )))
}

/// Wait for a consumer, failing early if a relay process dies.
async fn wait_for(world: &mut World, counter: amqp::Counter) -> Result<amqp::Received> {
    while !counter.is_finished() {
        world.check_children().map_err(|error| {
            anyhow::anyhow!(
                "{error}; walbox log:\n{}\npoller log:\n{}",
                world.log_tail("walbox"),
                world.log_tail("poller")
            )
        })?;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    counter.finish().await
}

/// Commit a backlog with the relay stopped (walbox's slot already exists), start the relay and
/// time it from the first delivery to the last. For the ceiling, the raw publisher sends the
/// same number of events with no PostgreSQL involved.
async fn drain(options: &Options, shape: Shape, relay: Relay) -> Result<Drain> {
    let with_db = !relay.is_raw();
    let mut world = World::new(relay.name(), with_db, shape.queue, &options.log_dir).await?;
    let mut fill = Duration::ZERO;
    let mut before = None;
    if with_db {
        match relay {
            Relay::Walbox => world.walbox_setup()?,
            _ => world.db().batch_execute(poller::INDEX_SQL).await?,
        }
        if options.statements {
            world
                .db()
                .batch_execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
                .await?;
        }
        fill = load::fill(
            &world.pg_url(),
            shape.events,
            shape.tx_rows,
            shape.payload_bytes,
            FILL_CONNECTIONS,
        )
        .await?;
        // The producer's statistics reach the shared counters when its sessions end; this
        // session's own (the index builds, a scan each) when it is told to flush them.
        world.wait_sessions_gone(load::PRODUCER_APP).await?;
        let _ = world
            .db()
            .batch_execute("SELECT pg_stat_force_next_flush()")
            .await;
        world.db().batch_execute("SELECT 1").await?;
        before = Some((
            table_stats(world.db()).await?,
            statements(options, world.db()).await?,
        ));
    }

    let consumer = world.consume().await?;
    let started = Instant::now();
    let pid = match relay {
        Relay::Publisher => {
            world.spawn_publisher(shape.events, shape.payload_bytes, options.window, None)?
        }
        Relay::FramePublisher => {
            world.spawn_publisher(shape.events, shape.payload_bytes, options.window, Some(1))?
        }
        Relay::Walbox => world.spawn_walbox()?,
        Relay::Poller => world.spawn_poller(options.poll_batch, options.poll_interval_ms)?,
    };
    let broker = procfs::broker_pids();
    let watch: Vec<u32> = std::iter::once(pid).chain(broker.iter().copied()).collect();
    let deadline = Instant::now() + Duration::from_secs(60 + shape.events as u64 / 500);
    let counter = amqp::count(consumer, shape.events, deadline, None, watch.clone());
    let pg_pid = match relay {
        Relay::Publisher | Relay::FramePublisher => None,
        Relay::Walbox => Some(world.walsender_pid(Duration::from_secs(30)).await?),
        Relay::Poller => {
            let app = world.poller_app();
            Some(world.backend_pid(&app, Duration::from_secs(30)).await?)
        }
    };
    let received = wait_for(&mut world, counter).await?;
    let cpu_end: Vec<Option<u64>> = watch.iter().map(|&pid| procfs::cpu_micros(pid)).collect();
    let machine_end = procfs::machine_ticks();
    let rss_kib = procfs::peak_rss_kib(pid);
    let pg_cpu = pg_pid.and_then(procfs::cpu_micros);
    let mut publisher_seconds = None;
    if relay.is_raw() {
        // It prints its own timing right after its last confirm, which may come a moment
        // after the consumer's last delivery.
        let until = Instant::now() + Duration::from_secs(10);
        while publisher_seconds.is_none() && Instant::now() < until {
            publisher_seconds = amqp::publisher_seconds(&world.log_tail(relay.name()));
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    if received.count < shape.events {
        bail!(
            "{} delivered {} of {} events before the deadline; its log:\n{}",
            relay.name(),
            received.count,
            shape.events,
            world.log_tail(relay.name())
        );
    }
    world.stop_children();
    let (table, statements) = match before {
        Some((table_before, statements_before)) => {
            if relay == Relay::Poller {
                world.wait_sessions_gone(&world.poller_app()).await?;
            }
            let table = table_stats(world.db()).await?.since(table_before);
            let statements = match (statements(options, world.db()).await?, statements_before) {
                (Some(after), Some(before)) => Some(after.since(before)),
                _ => None,
            };
            (Some(table), statements)
        }
        None => (None, None),
    };

    let events = received.count as f64;
    let used = |index: usize| -> Option<u64> {
        let first = received.cpu_at_first.get(index).copied()??;
        Some(cpu_end.get(index).copied()??.saturating_sub(first))
    };
    let span = received.span().as_micros().max(1) as f64;
    let broker_used: Option<u64> = (1..watch.len()).map(used).sum();
    Ok(Drain {
        rate: received.rate(),
        seconds: received.span().as_secs_f64(),
        fill_seconds: fill.as_secs_f64(),
        publisher_rate: publisher_seconds.map(|seconds| events / seconds.max(1e-6)),
        startup_seconds: received
            .first
            .map_or(0.0, |first| (first - started).as_secs_f64()),
        body_bytes: received.bytes as f64 / events,
        relay_cpu_us: used(0).map(|us| us as f64 / events),
        relay_rss_mib: rss_kib.map(|kib| kib as f64 / 1024.0),
        pg_cpu_us: pg_cpu.map(|us| us as f64 / events),
        broker_cpu: broker_used
            .filter(|_| !broker.is_empty())
            .map(|us| us as f64 / span * 100.0),
        machine_busy: procfs::machine_busy(received.machine_at_first, machine_end),
        table,
        statements,
    })
}

/// Steady load at `rate` events/s with the relay running; commit → delivery latency.
async fn latency(options: &Options, relay: Relay, rate: f64) -> Result<Latency> {
    let tag = format!("{}_lat", relay.name());
    let mut world = World::new(&tag, true, QueueKind::Classic, &options.log_dir).await?;
    let (pid, pg_pid) = match relay {
        Relay::Publisher | Relay::FramePublisher => {
            bail!("the raw publisher has no commit → delivery latency")
        }
        Relay::Walbox => {
            let pid = world.spawn_walbox()?;
            (pid, world.walsender_pid(Duration::from_secs(30)).await?)
        }
        Relay::Poller => {
            world.db().batch_execute(poller::INDEX_SQL).await?;
            let pid = world.spawn_poller(options.poll_batch, options.poll_interval_ms)?;
            let app = world.poller_app();
            (pid, world.backend_pid(&app, Duration::from_secs(30)).await?)
        }
    };
    let consumer = world.consume().await?;
    let duration = WARMUP + Duration::from_secs(options.latency_seconds);
    // The producer starts 100 ms after it is called; samples start after the warm-up.
    let from = amqp::unix_micros() + 100_000 + WARMUP.as_micros() as u64;
    let deadline = Instant::now() + duration + Duration::from_secs(120);
    let counter = amqp::count(consumer, usize::MAX, deadline, Some(from), Vec::new());
    let broker = procfs::broker_pids();
    let broker_cpu = || -> Option<u64> {
        (!broker.is_empty()).then(|| broker.iter().filter_map(|&p| procfs::cpu_micros(p)).sum())
    };
    let cpu_start = (procfs::cpu_micros(pid), procfs::cpu_micros(pg_pid));
    let broker_start = broker_cpu();
    let machine_start = procfs::machine_ticks();
    let load_start = Instant::now();
    let (produced, achieved_rate) = load::steady(
        &world.pg_url(),
        rate,
        options.latency_tx_rows,
        options.payload_bytes,
        duration,
        STEADY_CONNECTIONS,
    )
    .await?;
    let load_wall = load_start.elapsed().as_micros().max(1) as f64;
    let share = |start: Option<u64>, pid: u32| -> Option<f64> {
        Some(procfs::cpu_micros(pid)?.saturating_sub(start?) as f64 / load_wall * 100.0)
    };
    let relay_cpu = share(cpu_start.0, pid);
    let pg_cpu = share(cpu_start.1, pg_pid);
    let broker_cpu = broker_start
        .zip(broker_cpu())
        .map(|(start, end)| end.saturating_sub(start) as f64 / load_wall * 100.0);
    let machine_busy = procfs::machine_busy(machine_start, procfs::machine_ticks());
    counter.target.store(produced, Ordering::Relaxed);
    let received = wait_for(&mut world, counter).await?;
    if received.count < produced {
        bail!(
            "{} delivered {} of {produced} events within 120 s of the load's end",
            relay.name(),
            received.count
        );
    }
    let mut samples = received.latencies;
    samples.sort_unstable();
    let ms = |p: f64| report::percentile(&samples, p) as f64 / 1000.0;
    Ok(Latency {
        target_rate: rate,
        achieved_rate,
        samples: samples.len(),
        p50: ms(50.0),
        p90: ms(90.0),
        p99: ms(99.0),
        max: ms(100.0),
        relay_cpu,
        pg_cpu,
        broker_cpu,
        machine_busy,
    })
}

/// Drain vs ceiling across payload sizes, transaction sizes and queue types, with smaller
/// backlogs (at most 100 MB of payload per configuration).
async fn scaling(options: &Options, results: &mut Results) -> Result<()> {
    let events_for = |payload: usize| options.scaling_events.min((100_000_000 / payload).max(500));
    let shape = |payload_bytes: usize, tx_rows: usize, queue: QueueKind| Shape {
        events: events_for(payload_bytes),
        payload_bytes,
        tx_rows,
        queue,
    };
    let base = options.payload_bytes;
    let configurations = [
        (
            format!("{base} B · 100/tx · classic"),
            shape(base, 100, QueueKind::Classic),
        ),
        ("100 B · 100/tx".into(), shape(100, 100, QueueKind::Classic)),
        (
            "1 KB · 100/tx".into(),
            shape(1_000, 100, QueueKind::Classic),
        ),
        (
            "10 KB · 100/tx".into(),
            shape(10_000, 100, QueueKind::Classic),
        ),
        (
            "100 KB · 100/tx".into(),
            shape(100_000, 100, QueueKind::Classic),
        ),
        (
            format!("{base} B · 1/tx"),
            shape(base, 1, QueueKind::Classic),
        ),
        (
            format!("{base} B · 10,000/tx"),
            shape(base, 10_000, QueueKind::Classic),
        ),
        (
            format!("{base} B · 100/tx · quorum"),
            shape(base, 100, QueueKind::Quorum),
        ),
    ];
    for (label, shape) in configurations {
        results.scaling.push(Scaling {
            label,
            events: shape.events,
            payload_bytes: shape.payload_bytes,
            tx_rows: shape.tx_rows,
            queue: shape.queue.name(),
            ..Scaling::default()
        });
    }
    for rep in 1..=options.reps {
        for index in 0..results.scaling.len() {
            let row = &results.scaling[index];
            let shape = Shape {
                events: row.events,
                payload_bytes: row.payload_bytes,
                tx_rows: row.tx_rows,
                queue: QueueKind::named(row.queue),
            };
            // The ceiling does not depend on the transaction size: measure it once per
            // payload and queue and share it.
            let shared = results.scaling[..index].iter().position(|other| {
                other.payload_bytes == shape.payload_bytes
                    && other.queue == row.queue
                    && other.events == shape.events
            });
            let ceiling_run = match shared {
                Some(other) => results.scaling[other].ceilings.last().cloned(),
                None => Some(ceiling(options, shape).await?),
            };
            let drain_run = drain(options, shape, Relay::Walbox).await?;
            let row = &mut results.scaling[index];
            eprintln!(
                "relay bench: [{rep}/{}] scaling {}: ceiling {:.0}, walbox {:.0} events/s",
                options.reps,
                row.label,
                ceiling_run.as_ref().map_or(0.0, |c| c.rate),
                drain_run.rate
            );
            row.ceilings.extend(ceiling_run);
            row.drains.push(drain_run);
        }
    }
    Ok(())
}

/// The same backlog drained by walbox into a classic queue, a quorum queue (both `--target
/// amqp`, through the exchange) and a stream (`--target stream`), each next to its raw ceiling
/// (lapin for the queues, the stream client for the stream). Every round runs all six, the
/// targets in a rotating order so a busy moment of the shared machine hits each alike.
async fn targets(options: &Options, results: &mut Results) -> Result<()> {
    let kinds = &options.targets;
    let stream_target = stream::walbox_has_stream_target();
    if !stream_target {
        results.targets_note = Some(
            "this walbox has no `--target` option yet, so the stream has its raw ceiling only"
                .into(),
        );
    }
    for &kind in kinds {
        results.targets.push(Scaling {
            label: kind.name().into(),
            events: options.events,
            payload_bytes: options.payload_bytes,
            tx_rows: options.tx_rows,
            queue: kind.name(),
            ..Scaling::default()
        });
    }
    // The stream's second ceiling, one message per frame, in a row of its own after the rest.
    let framed = kinds.contains(&QueueKind::Stream).then(|| {
        results.targets.push(Scaling {
            label: "stream, one message per frame".into(),
            events: options.events,
            payload_bytes: options.payload_bytes,
            tx_rows: options.tx_rows,
            queue: QueueKind::Stream.name(),
            ..Scaling::default()
        });
        results.targets.len() - 1
    });
    for rep in 1..=options.reps {
        for offset in 0..kinds.len() {
            let index = (offset + rep - 1) % kinds.len();
            let kind = kinds[index];
            let shape = Shape {
                events: options.events,
                payload_bytes: options.payload_bytes,
                tx_rows: options.tx_rows,
                queue: kind,
            };
            let ceiling_run = ceiling(options, shape).await?;
            let drain_run = match kind {
                QueueKind::Stream if !stream_target => None,
                _ => Some(drain(options, shape, Relay::Walbox).await?),
            };
            eprintln!(
                "relay bench: [{rep}/{}] target {}: ceiling {:.0} events/s ({:.1} µs/event; \
                 {:.0} events/s first publish → last confirm), walbox {} events/s ({} µs/event)",
                options.reps,
                kind.name(),
                ceiling_run.rate,
                ceiling_run.relay_cpu_us.unwrap_or(f64::NAN),
                ceiling_run.publisher_rate.unwrap_or(f64::NAN),
                drain_run
                    .as_ref()
                    .map_or("–".into(), |d| format!("{:.0}", d.rate)),
                drain_run
                    .as_ref()
                    .and_then(|d| d.relay_cpu_us)
                    .map_or("–".into(), |us| format!("{us:.1}")),
            );
            let row = &mut results.targets[index];
            row.ceilings.push(ceiling_run);
            row.drains.extend(drain_run);
            if let (QueueKind::Stream, Some(framed)) = (kind, framed) {
                let run = drain(options, shape, Relay::FramePublisher).await?;
                eprintln!(
                    "relay bench: [{rep}/{}] target stream: ceiling with one message per frame \
                     {:.0} events/s ({:.1} µs/event; {:.0} events/s first publish → last confirm)",
                    options.reps,
                    run.rate,
                    run.relay_cpu_us.unwrap_or(f64::NAN),
                    run.publisher_rate.unwrap_or(f64::NAN),
                );
                results.targets[framed].ceilings.push(run);
            }
        }
    }
    Ok(())
}
