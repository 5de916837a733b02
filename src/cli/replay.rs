//! `walbox replay`: run a replay, show its progress (a bar on a terminal, a log line every few
//! seconds otherwise) and print a summary.

use std::io::IsTerminal;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::watch;
use tracing::info;

use crate::config::{Config, ReplayConfig};
use crate::error::{Error, Result};
use crate::replay::{self, Progress};

/// How often progress is shown.
const SHOW_EVERY: Duration = Duration::from_millis(200);
const LOG_EVERY: Duration = Duration::from_secs(5);

pub(crate) async fn replay(config: &Config, replay: &ReplayConfig) -> Result<()> {
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
        slot = %config.slot,
        from = %replay.from_lsn,
        to = %replay.to_lsn.map_or("now".to_owned(), |to| to.to_string()),
        exchange = %config.mapping.exchange,
        dry_run = replay.dry_run,
        "replay starting"
    );
    let (progress_tx, progress_rx) = watch::channel(Progress::default());
    let shown = tokio::spawn(show(progress_rx, std::io::stderr().is_terminal()));
    let outcome = replay::replay(config, replay, progress_tx, stop_rx).await;
    let _ = shown.await;
    let summary = outcome?;
    let seconds = summary.elapsed.as_secs_f64();
    let done = &summary.progress;
    let verb = if replay.dry_run {
        "would replay"
    } else {
        "replayed"
    };
    info!(
        transactions = done.transactions,
        events = done.events,
        from = %summary.from,
        until = %summary.until,
        first_commit = %summary.first_commit.map_or("-".to_owned(), |lsn| lsn.to_string()),
        last_commit = %done.reached.map_or("-".to_owned(), |lsn| lsn.to_string()),
        seconds,
        dry_run = replay.dry_run,
        "replay finished"
    );
    println!(
        "{verb} {} events in {} transactions committed in [{}, {}) (first commit {}, last {}) in {seconds:.1} s ({:.0} events/s)",
        done.events,
        done.transactions,
        summary.from,
        summary.until,
        summary
            .first_commit
            .map_or("-".to_owned(), |lsn| lsn.to_string()),
        done.reached.map_or("-".to_owned(), |lsn| lsn.to_string()),
        done.events as f64 / seconds.max(1e-9),
    );
    Ok(())
}

/// Show progress until the replay drops its sender.
async fn show(mut progress: watch::Receiver<Progress>, terminal: bool) {
    let started = tokio::time::Instant::now();
    let bar = terminal.then(|| {
        let bar = ProgressBar::new(0);
        bar.set_style(
            ProgressStyle::with_template("{elapsed_precise} [{bar:30}] {percent:>3}% {msg}")
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
        let rate = now.events as f64 / started.elapsed().as_secs_f64().max(1e-3);
        let reached = now.reached.map_or("-".to_owned(), |lsn| lsn.to_string());
        match &bar {
            Some(bar) => {
                // The bar measures WAL: how far into [from, until) the replay has read.
                bar.set_length(now.until.as_u64().saturating_sub(now.from.as_u64()).max(1));
                if let Some(reached) = now.reached {
                    bar.set_position(reached.as_u64().saturating_sub(now.from.as_u64()));
                }
                bar.set_message(format!(
                "{} events, {} transactions, {rate:.0} events/s, reached {reached}, confirmed {}",
                    now.events, now.transactions, now.confirmed
                ));
            }
            None if last_log.elapsed() >= LOG_EVERY => {
                last_log = tokio::time::Instant::now();
                info!(events = now.events, transactions = now.transactions, events_per_second = rate as u64, %reached, confirmed = %now.confirmed, "replaying");
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
