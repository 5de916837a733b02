//! How far the slot trails the server's WAL under a steady load (issue #19's guard): each
//! acknowledgement waits for the guard's last proof that the publication covers the outbox
//! table, read once a second, so the slot should trail by about half a second more than
//! without it. Compares walbox binaries in one run, alternating, on the same load.
//!
//! ```sh
//! cargo bench --bench guard_lag                      # the release walbox alone
//! WALBOX_LAG_BINS=/tmp/walbox-main,target/debug/walbox \
//!   cargo test --bench guard_lag -- --bench          # two builds, no release build needed
//! ```
//!
//! Every 50 ms it samples `clock_timestamp()`, `pg_current_wal_lsn()` and the slot's
//! `confirmed_flush_lsn`; a sample's lag is its time minus the time of the latest earlier
//! sample whose WAL position the slot had reached. The report gives, per binary, the median,
//! 90th percentile and maximum over all rounds. Settings: `WALBOX_LAG_RATE` (transactions of
//! one event per second, default 200), `WALBOX_LAG_SECS` (measured seconds per round, 15),
//! `WALBOX_LAG_ROUNDS` (3), and the test harness's `WALBOX_TEST_PG_PORT` /
//! `WALBOX_TEST_AMQP_PORT`. Without `--bench` (as `cargo test --all-targets` runs every bench
//! target) it exits at once.

#[path = "../tests/common/mod.rs"]
mod common;

use std::path::PathBuf;
use std::str::FromStr;
use std::time::{Duration, Instant};

use common::*;
use walbox::lsn::Lsn;

fn setting(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|text| text.parse().ok())
        .unwrap_or(default)
}

fn main() {
    if !std::env::args().any(|arg| arg == "--bench") {
        return;
    }
    let binaries: Vec<PathBuf> = match std::env::var("WALBOX_LAG_BINS") {
        Ok(list) => list.split(',').map(PathBuf::from).collect(),
        Err(_) => vec![PathBuf::from(env!("CARGO_BIN_EXE_walbox"))],
    };
    let rounds = setting("WALBOX_LAG_ROUNDS", 3);
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let mut lags: Vec<Vec<f64>> = vec![Vec::new(); binaries.len()];
    for round in 0..rounds {
        for (index, binary) in binaries.iter().enumerate() {
            let measured = runtime.block_on(one_round(binary.clone()));
            eprintln!(
                "round {round}: {}: {} samples, median {:.0} ms",
                binary.display(),
                measured.len(),
                percentile(&measured, 0.5)
            );
            lags[index].extend(measured);
        }
    }
    println!("| walbox | samples | median lag ms | p90 ms | max ms |\n|---|---|---|---|---|");
    for (binary, lags) in binaries.iter().zip(&lags) {
        println!(
            "| {} | {} | {:.0} | {:.0} | {:.0} |",
            binary.display(),
            lags.len(),
            percentile(lags, 0.5),
            percentile(lags, 0.9),
            percentile(lags, 1.0)
        );
    }
}

/// One binary under the steady load: the lag of every sample, in milliseconds.
async fn one_round(binary: PathBuf) -> Vec<f64> {
    let mut env = TestEnv::new("guardlag").await;
    env.binary = binary;
    let consumer = env.queue_with("all", "#", true).await;
    let drain = tokio::spawn(async move {
        let mut consumer = consumer;
        loop {
            if receive_unacked(&mut consumer, 1000, Duration::from_secs(3600))
                .await
                .is_empty()
            {
                return;
            }
        }
    });
    let run = env.spawn_run(&[]);
    env.wait_slot_active(Duration::from_secs(30)).await;
    let rate = setting("WALBOX_LAG_RATE", 200);
    let seconds = setting("WALBOX_LAG_SECS", 15);
    let load = tokio::spawn(steady_load(env.postgres_url(), rate, seconds + 2));
    // Two seconds of warm-up, then the measured window.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let samples = sample(&env, Duration::from_secs(seconds)).await;
    load.await.expect("load");
    env.terminate(run);
    drain.abort();
    lags(&samples)
}

/// One insert per transaction, `rate` a second, for `seconds`.
async fn steady_load(url: String, rate: u64, seconds: u64) {
    let client = pg_connect(&url).await;
    let mut tick = tokio::time::interval(Duration::from_micros(1_000_000 / rate.max(1)));
    let until = Instant::now() + Duration::from_secs(seconds);
    while Instant::now() < until {
        tick.tick().await;
        client
            .execute(
                "INSERT INTO outbox (aggregate_type, aggregate_id, event_type, payload) \
                 VALUES ('lag', 'a-1', 'tick', '{}')",
                &[],
            )
            .await
            .expect("insert");
    }
}

/// (seconds since the first sample, WAL position, slot's confirmed position), every 50 ms.
async fn sample(env: &TestEnv, window: Duration) -> Vec<(f64, Lsn, Lsn)> {
    let mut samples = Vec::new();
    let mut tick = tokio::time::interval(Duration::from_millis(50));
    let started = Instant::now();
    while started.elapsed() < window {
        tick.tick().await;
        let row = env
            .db
            .query_one(
                "SELECT extract(epoch FROM clock_timestamp())::float8, \
                 pg_current_wal_lsn()::text, confirmed_flush_lsn::text \
                 FROM pg_replication_slots WHERE slot_name = $1",
                &[&env.name],
            )
            .await
            .expect("sample");
        let lsn = |index| Lsn::from_str(row.get::<_, &str>(index)).expect("lsn");
        samples.push((row.get::<_, f64>(0), lsn(1), lsn(2)));
    }
    samples
}

/// Each sample's lag in ms: its time minus the time of the latest earlier sample whose WAL
/// position the slot had reached (samples before any such one are left out).
fn lags(samples: &[(f64, Lsn, Lsn)]) -> Vec<f64> {
    samples
        .iter()
        .enumerate()
        .filter_map(|(index, &(time, _, confirmed))| {
            samples[..=index]
                .iter()
                .rev()
                .find(|(_, wal, _)| *wal <= confirmed)
                .map(|&(reached, _, _)| (time - reached) * 1000.0)
        })
        .collect()
}

fn percentile(values: &[f64], quantile: f64) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let at = ((sorted.len() - 1) as f64 * quantile).round() as usize;
    sorted[at]
}
