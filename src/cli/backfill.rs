//! `walbox backfill`: re-send rows from the outbox table, show the progress (a bar on a
//! terminal, a log line every few seconds otherwise) and print a summary.

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::watch;
use tracing::info;

use crate::backfill::{self, ResendProgress};
use crate::config::{Config, ResendConfig};
use crate::error::{Error, Result};

const SHOW_EVERY: Duration = Duration::from_millis(200);
const LOG_EVERY: Duration = Duration::from_secs(5);

pub(crate) async fn backfill(config: &Config, resend: &ResendConfig) -> Result<()> {
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut terminate = signal(SignalKind::terminate()).map_err(Error::definite)?;
    let mut interrupt = signal(SignalKind::interrupt()).map_err(Error::definite)?;
    tokio::spawn(async move {
        tokio::select! {
            _ = terminate.recv() => {}
            _ = interrupt.recv() => {}
        }
        let _ = stop_tx.send(true);
    });
    info!(
        table = %config.table,
        predicate = resend.predicate.as_ref().map(|p| p.sql.as_str()),
        id_from = resend.id_from.as_deref(),
        id_to = resend.id_to.as_deref(),
        created_from = resend.created_from.as_deref(),
        created_to = resend.created_to.as_deref(),
        dry_run = resend.dry_run,
        "backfill starting"
    );
    let began = Instant::now();
    let (progress_tx, progress_rx) = watch::channel(ResendProgress::default());
    let shown = tokio::spawn(show(progress_rx, std::io::stderr().is_terminal()));
    let outcome = backfill::resend(config, resend, progress_tx, stop_rx).await;
    let _ = shown.await;
    let done = outcome?;
    let seconds = began.elapsed().as_secs_f64();
    let rows = done.progress.rows_confirmed;
    let verb = if resend.dry_run {
        "would re-send"
    } else {
        "re-sent"
    };
    info!(rows, seconds, dry_run = resend.dry_run, "backfill finished");
    println!(
        "{verb} {rows} rows of {} in creation order in {seconds:.1} s ({:.0} rows/s), each with \
         header x-backfill: true",
        config.table,
        rows as f64 / seconds.max(1e-9)
    );
    Ok(())
}

/// Show progress until the re-send drops its sender.
async fn show(mut progress: watch::Receiver<ResendProgress>, terminal: bool) {
    let started = Instant::now();
    let bar = terminal.then(|| {
        let bar = ProgressBar::new(0);
        bar.set_style(
            ProgressStyle::with_template("{elapsed_precise} [{bar:30}] {pos}/{len} rows {msg}")
                .expect("the template is valid"),
        );
        bar
    });
    let mut last_log = started;
    let mut ticker = tokio::time::interval(SHOW_EVERY);
    loop {
        let ended = tokio::select! {
            changed = progress.changed() => changed.is_err(),
            _ = ticker.tick() => false,
        };
        let now = progress.borrow().clone();
        let rows = now.progress.rows_confirmed;
        let rate = rows as f64 / started.elapsed().as_secs_f64().max(1e-3);
        match &bar {
            Some(bar) => {
                bar.set_length(now.expected.max(0) as u64);
                bar.set_position(rows.max(0) as u64);
                bar.set_message(format!("{rate:.0} rows/s"));
            }
            None if last_log.elapsed() >= LOG_EVERY => {
                last_log = Instant::now();
                info!(
                    rows,
                    expected = now.expected,
                    rows_per_second = rate as u64,
                    "backfilling"
                );
            }
            None => {}
        }
        if ended {
            break;
        }
    }
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
}
