//! The cut-over backfill on a big table (issue #20): `cargo bench --bench backfill`.
//!
//! Per round, on a fresh database: an outbox table of `WALBOX_BENCH_BACKFILL_ROWS` rows
//! (default 1,000,000), then `walbox run --backfill-where true` with a consumer draining the
//! queue, while a writer keeps committing into another table (WAL the slot must keep while the
//! backfill runs). Measured: the backfill's rows/s (its record's start to finish), walbox's CPU
//! per row and peak RSS, and what the backfill holds on the server: how long its reading
//! transaction (and so its snapshot's xmin) lives, the oldest xmin's age in transactions, and
//! the WAL the slot retains when the backfill ends. The baseline, in the same round: walbox
//! restarted (the backfill done) draining the same number of rows committed through the WAL
//! meanwhile, i.e. the live relay's events/s, CPU and peak RSS on the same machine. Medians of
//! `WALBOX_BENCH_BACKFILL_ROUNDS` rounds (default 3); the report goes to stdout.
//!
//! Servers: `WALBOX_BENCH_POSTGRES` (default postgres://postgres@127.0.0.1:5432) and
//! `WALBOX_BENCH_AMQP_URL`, as for `relay`; private ones (scripts/fault-servers.sh) keep the
//! shared machine's servers out of it. Without `--bench` (`cargo test --all-targets`) it checks
//! its arithmetic and exits.

// The relay bench's /proc readers; this bench uses two of them (CPU time, peak RSS).
#[allow(dead_code)]
#[path = "relay/procfs.rs"]
mod procfs;

use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use futures_util::StreamExt;
use lapin::options::{
    BasicConsumeOptions, ExchangeDeclareOptions, ExchangeDeleteOptions, QueueBindOptions,
    QueueDeclareOptions,
};
use lapin::types::FieldTable;
use lapin::{Connection, ConnectionProperties, ExchangeKind};
use tokio_postgres::{Client, NoTls};

const OUTBOX_SQL: &str = include_str!("../sql/outbox.sql");
const WALBOX: &str = env!("CARGO_BIN_EXE_walbox");

fn setting(name: &str, default: &str) -> String {
    std::env::var(name)
        .ok()
        .filter(|value| !value.trim().is_empty())
        .unwrap_or_else(|| default.to_owned())
}

fn number(name: &str, default: u64) -> u64 {
    setting(name, &default.to_string())
        .parse()
        .unwrap_or(default)
}

/// One round's measurements.
#[derive(Clone, Debug, Default)]
struct Round {
    rows: u64,
    backfill_seconds: f64,
    backfill_cpu_us_per_row: f64,
    backfill_peak_rss_mib: f64,
    reader_held_seconds: f64,
    oldest_xmin_age: i64,
    retained_wal_mib: f64,
    writer_rows: u64,
    live_seconds: f64,
    live_cpu_us_per_event: f64,
    live_peak_rss_mib: f64,
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(|a, b| a.total_cmp(b));
    match values.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => values[n / 2],
        n => (values[n / 2 - 1] + values[n / 2]) / 2.0,
    }
}

fn main() -> ExitCode {
    if !std::env::args().any(|arg| arg == "--bench") {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(vec![4.0, 1.0, 2.0, 3.0]), 2.5);
        println!("backfill bench: run with `cargo bench --bench backfill`");
        return ExitCode::SUCCESS;
    }
    let runtime = tokio::runtime::Runtime::new().expect("a runtime");
    match runtime.block_on(bench()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("backfill bench: {error:#}");
            ExitCode::FAILURE
        }
    }
}

async fn bench() -> Result<()> {
    let rows = number("WALBOX_BENCH_BACKFILL_ROWS", 1_000_000);
    let rounds = number("WALBOX_BENCH_BACKFILL_ROUNDS", 3);
    let payload = number("WALBOX_BENCH_PAYLOAD_BYTES", 200);
    let write_rate = number("WALBOX_BENCH_BACKFILL_WRITE_RATE", 200);
    let mut results = Vec::new();
    for round in 1..=rounds {
        let measured = one_round(round, rows, payload, write_rate).await?;
        eprintln!("round {round}: {measured:?}");
        results.push(measured);
    }
    println!("{}", report(&results, payload, write_rate));
    Ok(())
}

/// The servers and names of one round.
struct World {
    name: String,
    postgres: String,
    amqp: String,
    admin: Client,
    db: Client,
}

impl World {
    async fn new(round: u64) -> Result<World> {
        let name = format!("wbbf_{}_{round}", std::process::id());
        let postgres = setting(
            "WALBOX_BENCH_POSTGRES",
            "postgres://postgres@127.0.0.1:5432",
        )
        .trim_end_matches('/')
        .to_owned();
        let amqp = setting(
            "WALBOX_BENCH_AMQP_URL",
            "amqp://guest:guest@127.0.0.1:5672/%2f",
        );
        let admin = connect(&format!("{postgres}/postgres?sslmode=disable")).await?;
        admin
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await?;
        let db = connect(&format!("{postgres}/{name}?sslmode=disable")).await?;
        db.batch_execute(OUTBOX_SQL).await?;
        db.batch_execute("CREATE TABLE ballast (id bigserial PRIMARY KEY, filler text)")
            .await?;
        Ok(World {
            name,
            postgres,
            amqp,
            admin,
            db,
        })
    }

    fn url(&self) -> String {
        format!("{}/{}?sslmode=disable", self.postgres, self.name)
    }

    fn walbox(&self, log: &str, extra: &[&str]) -> Result<Child> {
        let log = std::fs::File::create(log)?;
        Ok(Command::new(WALBOX)
            .arg("run")
            .args(["--postgres-url", &self.url(), "--amqp-url", &self.amqp])
            .args(["--slot", &self.name, "--publication", &self.name])
            .args(["--exchange", &self.name, "--metrics-addr", "none"])
            .args(["--log-format", "json"])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()?)
    }

    async fn cleanup(&self) {
        for _ in 0..50 {
            let dropped = self
                .admin
                .execute(
                    "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots \
                     WHERE slot_name = $1 AND NOT active",
                    &[&self.name],
                )
                .await;
            let left = self
                .admin
                .query_opt(
                    "SELECT 1 FROM pg_replication_slots WHERE slot_name = $1",
                    &[&self.name],
                )
                .await;
            if dropped.is_ok() && matches!(left, Ok(None)) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let _ = self
            .admin
            .batch_execute(&format!(
                "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                self.name
            ))
            .await;
        if let Ok(amqp) = Connection::connect(&self.amqp, ConnectionProperties::default()).await
            && let Ok(channel) = amqp.create_channel().await
        {
            let _ = channel
                .exchange_delete(self.name.as_str().into(), ExchangeDeleteOptions::default())
                .await;
        }
    }
}

async fn connect(url: &str) -> Result<Client> {
    let (client, connection) = tokio_postgres::connect(url, NoTls)
        .await
        .with_context(|| format!("connecting to {url}"))?;
    tokio::spawn(connection);
    Ok(client)
}

/// Commit `rows` outbox rows of about `payload` bytes, in batches.
async fn fill(db: &Client, rows: u64, payload: u64) -> Result<()> {
    let batch = 100_000;
    let mut done = 0;
    while done < rows {
        let count = batch.min(rows - done);
        db.execute(
            "INSERT INTO outbox (aggregate_type, aggregate_id, event_type, payload, created_at) \
             SELECT 'order', 'a-' || i, 'created', \
             jsonb_build_object('n', i, 'filler', repeat('x', $3::int)), \
             now() + i * interval '1 microsecond' \
             FROM generate_series($1::bigint, $1::bigint + $2::bigint - 1) i",
            &[
                &(done as i64),
                &(count as i64),
                &(payload.saturating_sub(30) as i32),
            ],
        )
        .await?;
        done += count;
    }
    db.batch_execute("CHECKPOINT").await.ok();
    Ok(())
}

/// A queue bound to the round's exchange, counting what arrives.
async fn consume(world: &World) -> Result<Arc<AtomicU64>> {
    let amqp = Connection::connect(&world.amqp, ConnectionProperties::default()).await?;
    let channel = amqp.create_channel().await?;
    let options = ExchangeDeclareOptions {
        durable: true,
        ..Default::default()
    };
    let name = world.name.as_str();
    channel
        .exchange_declare(
            name.into(),
            ExchangeKind::Topic,
            options,
            FieldTable::default(),
        )
        .await?;
    let queue = QueueDeclareOptions {
        exclusive: true,
        ..Default::default()
    };
    channel
        .queue_declare(name.into(), queue, FieldTable::default())
        .await?;
    channel
        .queue_bind(
            name.into(),
            name.into(),
            "#".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;
    let no_ack = BasicConsumeOptions {
        no_ack: true,
        ..Default::default()
    };
    let mut consumer = channel
        .basic_consume(name.into(), "".into(), no_ack, FieldTable::default())
        .await?;
    let count = Arc::new(AtomicU64::new(0));
    let counted = Arc::clone(&count);
    tokio::spawn(async move {
        let _keep = amqp;
        while let Some(Ok(_)) = consumer.next().await {
            counted.fetch_add(1, Ordering::Relaxed);
        }
    });
    Ok(count)
}

/// Commit rows of about 1 kB into the ballast table at `rate` per second until `stop`.
async fn write(url: String, rate: u64, stop: Arc<AtomicBool>, written: Arc<AtomicU64>) {
    let Ok(db) = connect(&url).await else { return };
    let mut tick = tokio::time::interval(Duration::from_micros(1_000_000 / rate.max(1)));
    while !stop.load(Ordering::Relaxed) {
        tick.tick().await;
        if db
            .execute(
                "INSERT INTO ballast (filler) VALUES (repeat('w', 1000))",
                &[],
            )
            .await
            .is_ok()
        {
            written.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// What the server holds for the backfill, sampled while it runs.
#[derive(Default)]
struct Held {
    reader_first: Option<Instant>,
    reader_last: Option<Instant>,
    oldest_xmin_age: i64,
    retained_wal_bytes: i64,
}

async fn sample(world: &World, held: &mut Held) -> Result<()> {
    // The reading session, and the parallel workers of its statements (they carry its
    // application_name and an xmin of their own).
    let reader: Option<i64> = world
        .admin
        .query_one(
            "SELECT max(age(backend_xmin))::bigint FROM pg_stat_activity \
             WHERE datname = $1 AND application_name = 'walbox-backfill' AND backend_xmin IS NOT NULL",
            &[&world.name],
        )
        .await?
        .get(0);
    if let Some(age) = reader {
        let now = Instant::now();
        held.reader_first.get_or_insert(now);
        held.reader_last = Some(now);
        held.oldest_xmin_age = held.oldest_xmin_age.max(age);
    }
    let retained = world
        .admin
        .query_opt(
            "SELECT (pg_current_wal_lsn() - restart_lsn)::bigint FROM pg_replication_slots \
             WHERE slot_name = $1",
            &[&world.name],
        )
        .await?;
    if let Some(row) = retained {
        let bytes: Option<i64> = row.get(0);
        held.retained_wal_bytes = held.retained_wal_bytes.max(bytes.unwrap_or(0));
    }
    Ok(())
}

/// The backfill's record: its seconds from start to finish, once done.
async fn backfill_seconds(world: &World) -> Result<Option<f64>> {
    let row = world
        .db
        .query_opt(
            "SELECT extract(epoch FROM finished_at - started_at)::float8 FROM walbox_backfill \
             WHERE slot_name = $1 AND state = 'done'",
            &[&world.name],
        )
        .await;
    Ok(match row {
        Ok(Some(row)) => Some(row.get(0)),
        _ => None,
    })
}

async fn wait_count(count: &AtomicU64, wanted: u64, within: Duration) -> Result<()> {
    let deadline = Instant::now() + within;
    while count.load(Ordering::Relaxed) < wanted {
        if Instant::now() > deadline {
            bail!(
                "only {} of {wanted} messages arrived",
                count.load(Ordering::Relaxed)
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

async fn one_round(round: u64, rows: u64, payload: u64, write_rate: u64) -> Result<Round> {
    let world = World::new(round).await?;
    let outcome = measure(&world, round, rows, payload, write_rate).await;
    world.cleanup().await;
    outcome
}

async fn measure(
    world: &World,
    round: u64,
    rows: u64,
    payload: u64,
    write_rate: u64,
) -> Result<Round> {
    fill(&world.db, rows, payload).await?;
    let count = consume(world).await?;
    let stop = Arc::new(AtomicBool::new(false));
    let written = Arc::new(AtomicU64::new(0));
    let writer = tokio::spawn(write(
        world.url(),
        write_rate,
        Arc::clone(&stop),
        Arc::clone(&written),
    ));
    let logs = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"));
    let mut walbox = world.walbox(
        &logs
            .join(format!("backfill-bench-{round}.log"))
            .to_string_lossy(),
        &["--backfill-where", "true"],
    )?;
    let pid = walbox.id();
    let mut held = Held::default();
    let (seconds, cpu, rss) = loop {
        sample(world, &mut held).await?;
        if let Some(seconds) = backfill_seconds(world).await? {
            break (seconds, procfs::cpu_micros(pid), procfs::peak_rss_kib(pid));
        }
        if let Some(status) = walbox.try_wait()? {
            bail!("walbox exited during the backfill: {status}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    sample(world, &mut held).await?;
    stop.store(true, Ordering::Relaxed);
    writer.await?;
    wait_count(&count, rows, Duration::from_secs(600)).await?;
    let _ = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status();
    walbox.wait()?;

    // The baseline: the same number of rows committed while walbox is stopped, drained from
    // the slot by the restarted (live) relay.
    fill(&world.db, rows, payload).await?;
    let started = Instant::now();
    let mut live = world.walbox(
        &logs
            .join(format!("backfill-bench-{round}-live.log"))
            .to_string_lossy(),
        &[],
    )?;
    wait_count(&count, 2 * rows, Duration::from_secs(900)).await?;
    let live_seconds = started.elapsed().as_secs_f64();
    let (live_cpu, live_rss) = (
        procfs::cpu_micros(live.id()),
        procfs::peak_rss_kib(live.id()),
    );
    let _ = Command::new("kill")
        .args(["-TERM", &live.id().to_string()])
        .status();
    live.wait()?;

    let held_for = match (held.reader_first, held.reader_last) {
        (Some(first), Some(last)) => last.duration_since(first).as_secs_f64(),
        _ => 0.0,
    };
    Ok(Round {
        rows,
        backfill_seconds: seconds,
        backfill_cpu_us_per_row: cpu.unwrap_or(0) as f64 / rows as f64,
        backfill_peak_rss_mib: rss.unwrap_or(0) as f64 / 1024.0,
        reader_held_seconds: held_for,
        oldest_xmin_age: held.oldest_xmin_age,
        retained_wal_mib: held.retained_wal_bytes as f64 / (1 << 20) as f64,
        writer_rows: written.load(Ordering::Relaxed),
        live_seconds,
        live_cpu_us_per_event: live_cpu.unwrap_or(0) as f64 / rows as f64,
        live_peak_rss_mib: live_rss.unwrap_or(0) as f64 / 1024.0,
    })
}

fn report(rounds: &[Round], payload: u64, write_rate: u64) -> String {
    let med = |value: fn(&Round) -> f64| median(rounds.iter().map(value).collect());
    let rows = rounds.first().map_or(0, |round| round.rows);
    let backfill_rate = med(|r| r.rows as f64 / r.backfill_seconds);
    let live_rate = med(|r| r.rows as f64 / r.live_seconds);
    let mut text = format!(
        "Backfill of {rows} rows ({payload}-byte payloads), medians of {} rounds; a writer \
         committed {write_rate} rows/s of 1 kB into another table meanwhile.\n\n\
         | | rows/s | CPU µs/row | peak RSS MiB |\n|---|---|---|---|\n",
        rounds.len()
    );
    text.push_str(&format!(
        "| cut-over backfill (read in the slot's snapshot) | {backfill_rate:.0} | {:.1} | {:.1} |\n",
        med(|r| r.backfill_cpu_us_per_row),
        med(|r| r.backfill_peak_rss_mib)
    ));
    text.push_str(&format!(
        "| baseline: the same rows drained live from the slot | {live_rate:.0} | {:.1} | {:.1} |\n\n",
        med(|r| r.live_cpu_us_per_event),
        med(|r| r.live_peak_rss_mib)
    ));
    text.push_str(&format!(
        "backfill / live rows/s: {:.2}. Held on the server during the backfill: the reading \
         transaction (its snapshot's xmin) for {:.1} s (median; the backfill took {:.1} s from \
         its record's start), the oldest xmin {:.0} transactions old at most, the slot retaining \
         {:.1} MiB of WAL when the backfill ended.\n\nPer round:\n\n",
        backfill_rate / live_rate,
        med(|r| r.reader_held_seconds),
        med(|r| r.backfill_seconds),
        med(|r| r.oldest_xmin_age as f64),
        med(|r| r.retained_wal_mib),
    ));
    text.push_str("| round | backfill s | rows/s | CPU µs/row | RSS MiB | xmin held s | xmin age | WAL retained MiB | writer rows | live s | live events/s | live CPU µs | live RSS MiB |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|\n");
    for (index, r) in rounds.iter().enumerate() {
        text.push_str(&format!(
            "| {} | {:.1} | {:.0} | {:.1} | {:.1} | {:.1} | {} | {:.1} | {} | {:.1} | {:.0} | {:.1} | {:.1} |\n",
            index + 1,
            r.backfill_seconds,
            r.rows as f64 / r.backfill_seconds,
            r.backfill_cpu_us_per_row,
            r.backfill_peak_rss_mib,
            r.reader_held_seconds,
            r.oldest_xmin_age,
            r.retained_wal_mib,
            r.writer_rows,
            r.live_seconds,
            r.rows as f64 / r.live_seconds,
            r.live_cpu_us_per_event,
            r.live_peak_rss_mib
        ));
    }
    text
}
