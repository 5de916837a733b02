//! The producer side: outbox rows written the way an application would, in transactions of a
//! given size, either all at once (a backlog to drain) or at a steady rate (for latency).
//!
//! Every payload is `{"t": <commit stamp, unix µs>, "pad": "<filler>", "seq": <n>}` (jsonb's
//! text form puts the shortest key first), sized to the requested bytes. The filler is
//! concatenated random UUIDs, so large payloads do not compress to nothing in TOAST.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use tokio::task::JoinSet;

use super::world::pg_connect;

/// One statement = one transaction of rows `$1..=$2`, with `$3` filler characters each.
const INSERT: &str = "INSERT INTO outbox (aggregate_type, aggregate_id, event_type, payload) \
     SELECT 'order', 'o-' || g, 'created', jsonb_build_object( \
         't', (extract(epoch FROM clock_timestamp()) * 1000000)::bigint, 'seq', g, 'pad', f.pad) \
     FROM generate_series($1::bigint, $2::bigint) AS g, \
          (SELECT left(string_agg(gen_random_uuid()::text, ''), $3::int) AS pad \
           FROM generate_series(0, $3::int / 36)) AS f";

/// Bytes of a payload besides the filler, with a 16-digit stamp and a 6-digit seq.
const OVERHEAD: usize = r#"{"t": 1795359557123456, "pad": "", "seq": 123456}"#.len();

pub fn filler_len(payload_bytes: usize) -> i32 {
    payload_bytes.saturating_sub(OVERHEAD) as i32
}

/// The same shape built here, for the raw publisher of the ceiling.
pub fn json_body(payload_bytes: usize, stamp: u64, seq: u64) -> Vec<u8> {
    let pad = filler_len(payload_bytes) as usize;
    let filler: String = (0..pad)
        .map(|i| char::from(b"0123456789abcdef-"[(i * 7 + seq as usize) % 17]))
        .collect();
    format!(r#"{{"t": {stamp}, "pad": "{filler}", "seq": {seq}}}"#).into_bytes()
}

/// The application_name of the producer's sessions.
pub const PRODUCER_APP: &str = "wbb_producer";

fn producer_url(url: &str) -> String {
    let separator = if url.contains('?') { '&' } else { '?' };
    format!("{url}{separator}application_name={PRODUCER_APP}")
}

/// Commit `events` rows in transactions of `tx_rows`, over `connections` sessions at once.
pub async fn fill(
    url: &str,
    events: usize,
    tx_rows: usize,
    payload_bytes: usize,
    connections: usize,
) -> Result<Duration> {
    let start = Instant::now();
    let transactions = events.div_ceil(tx_rows);
    let mut tasks = JoinSet::new();
    for lane in 0..connections {
        let url = producer_url(url);
        tasks.spawn(async move {
            let client = pg_connect(&url).await?;
            let statement = client.prepare(INSERT).await?;
            let filler = filler_len(payload_bytes);
            for tx in (lane..transactions).step_by(connections) {
                let first = (tx * tx_rows + 1) as i64;
                let last = ((tx + 1) * tx_rows).min(events) as i64;
                client
                    .execute(&statement, &[&first, &last, &filler])
                    .await?;
            }
            anyhow::Ok(())
        });
    }
    while let Some(done) = tasks.join_next().await {
        done??;
    }
    Ok(start.elapsed())
}

/// Commit `rate` events per second in transactions of `tx_rows` for `duration`, on a fixed
/// schedule (open loop: a late transaction does not delay the next one's due time, it only
/// starts late). Returns the events committed and the rate achieved.
pub async fn steady(
    url: &str,
    rate: f64,
    tx_rows: usize,
    payload_bytes: usize,
    duration: Duration,
    connections: usize,
) -> Result<(usize, f64)> {
    let tx_interval = Duration::from_secs_f64(tx_rows as f64 / rate);
    let committed = Arc::new(AtomicUsize::new(0));
    let start = tokio::time::Instant::now() + Duration::from_millis(100);
    let end = start + duration;
    let mut tasks = JoinSet::new();
    for lane in 0..connections {
        let url = producer_url(url);
        let committed = committed.clone();
        tasks.spawn(async move {
            let client = pg_connect(&url).await?;
            let statement = client.prepare(INSERT).await?;
            let filler = filler_len(payload_bytes);
            for tx in (lane..).step_by(connections) {
                let due = start + tx_interval * tx as u32;
                if due >= end {
                    break;
                }
                tokio::time::sleep_until(due).await;
                let first = (tx * tx_rows + 1) as i64;
                let last = ((tx + 1) * tx_rows) as i64;
                client
                    .execute(&statement, &[&first, &last, &filler])
                    .await?;
                committed.fetch_add(tx_rows, Ordering::Relaxed);
            }
            anyhow::Ok(())
        });
    }
    while let Some(done) = tasks.join_next().await {
        done??;
    }
    let took = start.elapsed();
    let events = committed.load(Ordering::Relaxed);
    if events == 0 {
        bail!("the steady producer committed nothing");
    }
    Ok((events, events as f64 / took.as_secs_f64()))
}
