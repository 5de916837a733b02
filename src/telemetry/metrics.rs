//! The Prometheus metrics: one [`Metrics`] per process, recorded into by the data path and
//! rendered in the text exposition format for `/metrics`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Metric, Registry};

use super::health::{Health, RelayState};
use crate::lsn::Lsn;

/// Which connection a reconnect was for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Side {
    Postgres,
    Amqp,
}

impl Side {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Side::Postgres => "postgres",
            Side::Amqp => "amqp",
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SideLabel {
    side: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabel {
    state: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabel {
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VersionLabel {
    version: &'static str,
}

/// The outcomes of `walbox_unroutable_events_total`.
const UNROUTABLE_HELD: &str = "held";
const UNROUTABLE_DROPPED: &str = "dropped";

/// Seconds between the Unix epoch and PostgreSQL's (2000-01-01), in microseconds.
const POSTGRES_EPOCH_UNIX_MICROS: i64 = 946_684_800_000_000;

pub struct Metrics {
    registry: Registry,
    /// The registered metrics' names, as exposed, and help texts.
    exposed: Vec<(String, String)>,
    events_published: Counter,
    events_confirmed: Counter,
    events_nacked: Counter,
    events_returned: Counter,
    unroutable: Family<OutcomeLabel, Counter>,
    events_dead_lettered: Counter,
    poison_refusals: Counter,
    transactions: Counter,
    reconnects: Family<SideLabel, Counter>,
    in_flight: Gauge,
    confirm_latency: Histogram,
    commit_to_confirm: Histogram,
    received_lsn: Gauge,
    confirmed_lsn: Gauge,
    proven_lsn: Gauge,
    slot_lag_bytes: Gauge,
    retained_wal_bytes: Gauge,
    slot_failover: Gauge,
    replay_window_failover: Gauge,
    synced_standbys: Gauge,
    oldest_unconfirmed_age: Gauge<f64, AtomicU64>,
    state: Family<StateLabel, Gauge>,
    stream_stored_lsn: Gauge,
    stream_deduplicated: Counter,
    backfill_running: Gauge,
    backfill_rows_expected: Gauge,
    backfill_rows_confirmed: Gauge,
    born: Instant,
    /// Microseconds since `born` at which the oldest message still awaiting its confirm was
    /// published; 0 when none is. Not cleared when a session fails, so the age keeps growing
    /// while walbox retries an event it could not deliver.
    oldest_unconfirmed_since_us: AtomicU64,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let metrics = Metrics {
            registry: Registry::with_prefix("walbox"),
            exposed: Vec::new(),
            events_published: Counter::default(),
            events_confirmed: Counter::default(),
            events_nacked: Counter::default(),
            events_returned: Counter::default(),
            unroutable: Family::default(),
            events_dead_lettered: Counter::default(),
            poison_refusals: Counter::default(),
            transactions: Counter::default(),
            reconnects: Family::default(),
            in_flight: Gauge::default(),
            confirm_latency: Histogram::new(exponential_buckets(0.000_25, 2.0, 16)),
            commit_to_confirm: Histogram::new(exponential_buckets(0.001, 2.0, 18)),
            received_lsn: Gauge::default(),
            confirmed_lsn: Gauge::default(),
            proven_lsn: Gauge::default(),
            slot_lag_bytes: Gauge::default(),
            retained_wal_bytes: Gauge::default(),
            slot_failover: Gauge::default(),
            replay_window_failover: Gauge::default(),
            synced_standbys: Gauge::default(),
            oldest_unconfirmed_age: Gauge::default(),
            state: Family::default(),
            stream_stored_lsn: Gauge::default(),
            stream_deduplicated: Counter::default(),
            backfill_running: Gauge::default(),
            backfill_rows_expected: Gauge::default(),
            backfill_rows_confirmed: Gauge::default(),
            born: Instant::now(),
            oldest_unconfirmed_since_us: AtomicU64::new(0),
        };
        metrics.registered()
    }

    /// Register every metric with its help text; the docs' metrics reference is checked against
    /// the names registered here.
    fn registered(mut self) -> Self {
        for outcome in [UNROUTABLE_HELD, UNROUTABLE_DROPPED] {
            let _ = self.unroutable.get_or_create(&OutcomeLabel { outcome });
        }
        for side in [Side::Postgres, Side::Amqp] {
            let _ = self
                .reconnects
                .get_or_create(&SideLabel { side: side.name() });
        }
        let build_info: Family<VersionLabel, Gauge> = Family::default();
        build_info
            .get_or_create(&VersionLabel {
                version: env!("CARGO_PKG_VERSION"),
            })
            .set(1);
        self.add_event_counters();
        self.add_delivery();
        self.add_positions();
        self.add_states();
        self.add(
            "walbox_build_info",
            "walbox's version, as a label (always 1)",
            build_info,
        );
        self
    }

    /// What happened to events and sessions, counted.
    fn add_event_counters(&mut self) {
        self.add(
            "walbox_events_published_total",
            "Outbox events handed to the broker",
            self.events_published.clone(),
        );
        self.add(
            "walbox_events_confirmed_total",
            "Events the broker positively confirmed",
            self.events_confirmed.clone(),
        );
        self.add(
            "walbox_events_nacked_total",
            "Events the broker nacked (they are sent again)",
            self.events_nacked.clone(),
        );
        self.add(
            "walbox_events_returned_total",
            "Events returned as unroutable under the mandatory flag (walbox_unroutable_events_total says what walbox did with them)",
            self.events_returned.clone(),
        );
        self.add(
            "walbox_unroutable_events_total",
            "Events the broker returned as unroutable, by what walbox did (held: retried until a queue takes it; dropped: --unroutable drop). Events an alternate exchange took are not returned: the broker counts them on its queue",
            self.unroutable.clone(),
        );
        self.add(
            "walbox_events_dead_lettered_total",
            "Poison events published to the dead-letter exchange instead",
            self.events_dead_lettered.clone(),
        );
        self.add(
            "walbox_poison_refusals_total",
            "Sessions ended by the broker refusing one event for good (channel closed with PRECONDITION_FAILED, e.g. too large)",
            self.poison_refusals.clone(),
        );
        self.add(
            "walbox_transactions_total",
            "Transactions read from the slot",
            self.transactions.clone(),
        );
        self.add(
            "walbox_reconnects_total",
            "Sessions ended by a transient failure, by the side that failed (postgres, amqp)",
            self.reconnects.clone(),
        );
    }

    /// Messages awaiting their confirm, and how long confirms take.
    fn add_delivery(&mut self) {
        self.add(
            "walbox_in_flight_messages",
            "Messages published and awaiting the broker's confirm",
            self.in_flight.clone(),
        );
        self.add(
            "walbox_confirm_latency_seconds",
            "Publish to broker confirm, per event",
            self.confirm_latency.clone(),
        );
        self.add(
            "walbox_commit_to_confirm_seconds",
            "Commit in PostgreSQL (its commit timestamp) to broker confirm, per event",
            self.commit_to_confirm.clone(),
        );
    }

    /// WAL positions: walbox's own, and the slot's as the server reports it.
    fn add_positions(&mut self) {
        self.add(
            "walbox_received_lsn",
            "Highest WAL position received from the slot",
            self.received_lsn.clone(),
        );
        self.add(
            "walbox_confirmed_lsn",
            "WAL position acknowledged to PostgreSQL: everything before it is confirmed",
            self.confirmed_lsn.clone(),
        );
        self.add(
            "walbox_proven_lsn",
            "WAL position up to which the publication was last proven to cover the outbox table \
             as walbox found it (checked every second); walbox_confirmed_lsn never passes it",
            self.proven_lsn.clone(),
        );
        self.add(
            "walbox_slot_lag_bytes",
            "Server WAL position minus the slot's confirmed_flush_lsn (polled every 5 s)",
            self.slot_lag_bytes.clone(),
        );
        self.add("walbox_slot_retained_wal_bytes", "Server WAL position minus the slot's restart_lsn: WAL kept for walbox (polled every 5 s)", self.retained_wal_bytes.clone());
        self.add(
            "walbox_slot_failover",
            "1 when the slot is a failover slot (PostgreSQL 17), which standbys can keep a synchronized copy of; 0 otherwise (polled every 5 s)",
            self.slot_failover.clone(),
        );
        self.add(
            "walbox_replay_window_failover",
            "--replay-window: 1 when the bookmark slot is a failover slot (PostgreSQL 17, as the live slot), so a failover keeps the replay window; 0 when a failover would lose it (checked every 2 s)",
            self.replay_window_failover.clone(),
        );
        self.add(
            "walbox_slot_synced_standbys",
            "Standbys among --postgres-url's hosts holding a synchronized, persistent copy of the slot: 0 means a failover now loses it (polled every 30 s)",
            self.synced_standbys.clone(),
        );
    }

    /// The relay's state and the stream's and backfill's progress.
    fn add_states(&mut self) {
        self.add("walbox_oldest_unconfirmed_age_seconds", "Age of the oldest event published and not yet confirmed (keeps growing while retrying it)", self.oldest_unconfirmed_age.clone());
        self.add("walbox_state", "1 for the relay's current state: starting, backfilling (the cut-over backfill), streaming, standing_by, reconnecting, halted (on a poison event), stopping", self.state.clone());
        self.add(
            "walbox_stream_stored_lsn",
            "--target stream: the commit LSN of the last event the stream had stored for walbox's producer when the session started (its publishing id, decoded)",
            self.stream_stored_lsn.clone(),
        );
        self.add(
            "walbox_stream_deduplicated_total",
            "--target stream: events republished after a restart at or below the stream's stored publishing id, which the broker drops as duplicates",
            self.stream_deduplicated.clone(),
        );
        self.add(
            "walbox_backfill_running",
            "1 while the cut-over backfill sends the rows already in the table (the live relay starts after it)",
            self.backfill_running.clone(),
        );
        self.add(
            "walbox_backfill_rows_expected",
            "Rows the cut-over backfill sends in all: those confirmed by earlier attempts plus those this attempt selected",
            self.backfill_rows_expected.clone(),
        );
        self.add(
            "walbox_backfill_rows_confirmed",
            "Rows of the cut-over backfill the broker confirmed so far, earlier attempts included",
            self.backfill_rows_confirmed.clone(),
        );
    }

    /// Register `metric` under the name Prometheus will show (`walbox_` prefix, `_total` for
    /// counters: the client library adds both).
    fn add(&mut self, exposed_name: &str, help: &str, metric: impl Metric) {
        let name = exposed_name.trim_start_matches("walbox_");
        let name = name.strip_suffix("_total").unwrap_or(name);
        self.registry.register(name, help, metric);
        self.exposed
            .push((exposed_name.to_owned(), help.to_owned()));
    }

    /// The metric names `/metrics` exposes, as Prometheus shows them.
    #[cfg(test)]
    fn exposed_names(&self) -> impl Iterator<Item = &str> {
        self.exposed.iter().map(|(name, _)| name.as_str())
    }

    /// The docs' metrics reference table, generated from the registered metrics so it cannot drift.
    pub fn reference_table(&self) -> String {
        let mut table = String::from("| Metric | Meaning |\n|---|---|\n");
        for (name, help) in &self.exposed {
            table.push_str(&format!("| `{name}` | {help} |\n"));
        }
        table
    }

    pub(crate) fn published(&self) {
        self.events_published.inc();
        if self.in_flight.inc() == 0 {
            self.oldest_unconfirmed_since_us
                .compare_exchange(0, self.now_us(), Ordering::Relaxed, Ordering::Relaxed)
                .ok();
        }
    }

    /// The broker answered the oldest message in flight. `next_oldest` is when the message
    /// now oldest was published, if any.
    pub(crate) fn answered(&self, next_oldest: Option<Instant>) {
        self.in_flight.dec();
        let since = next_oldest.map_or(0, |at| self.micros_since_born(at));
        self.oldest_unconfirmed_since_us
            .store(since, Ordering::Relaxed);
    }

    pub(crate) fn confirmed(&self, published_at: Instant, commit_time_micros: i64) {
        self.events_confirmed.inc();
        self.confirm_latency
            .observe(published_at.elapsed().as_secs_f64());
        let now_unix_us = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_micros() as i64);
        let commit_unix_us = commit_time_micros.saturating_add(POSTGRES_EPOCH_UNIX_MICROS);
        let age_us = now_unix_us.saturating_sub(commit_unix_us).max(0);
        self.commit_to_confirm.observe(age_us as f64 / 1e6);
    }

    pub(crate) fn nacked(&self) {
        self.events_nacked.inc();
    }

    pub(crate) fn returned(&self) {
        self.events_returned.inc();
    }

    /// An unroutable event was held (it is sent again).
    pub(crate) fn unroutable_held(&self) {
        self.unroutable
            .get_or_create(&OutcomeLabel {
                outcome: UNROUTABLE_HELD,
            })
            .inc();
    }

    /// An unroutable event was dropped (`--unroutable drop`).
    pub(crate) fn unroutable_dropped(&self) {
        self.unroutable
            .get_or_create(&OutcomeLabel {
                outcome: UNROUTABLE_DROPPED,
            })
            .inc();
    }

    pub(crate) fn dead_lettered(&self) {
        self.events_dead_lettered.inc();
    }

    pub(crate) fn poison_refusal(&self) {
        self.poison_refusals.inc();
    }

    pub(crate) fn transaction(&self) {
        self.transactions.inc();
    }

    pub(crate) fn reconnect(&self, side: Side) {
        self.reconnects
            .get_or_create(&SideLabel { side: side.name() })
            .inc();
    }

    /// The session ended: whatever was in flight is gone (it will be sent again).
    pub(crate) fn session_ended(&self) {
        self.in_flight.set(0);
    }

    /// The stream's stored position for walbox's producer, at the start of a session.
    pub(crate) fn stream_stored(&self, lsn: Lsn) {
        self.stream_stored_lsn.set(lsn_value(lsn));
    }

    /// The counter of republished events the stream drops as duplicates.
    pub(crate) fn stream_deduplicated(&self) -> Counter {
        self.stream_deduplicated.clone()
    }

    pub(crate) fn received(&self, lsn: Lsn) {
        self.received_lsn.set(lsn_value(lsn));
    }

    /// The cut-over backfill starts an attempt: `expected` rows in all, `confirmed` of them
    /// by earlier attempts.
    pub(crate) fn backfill_started(&self, expected: i64, confirmed: i64) {
        self.backfill_running.set(1);
        self.backfill_rows_expected.set(expected);
        self.backfill_rows_confirmed.set(confirmed);
    }

    /// The broker confirmed one more backfilled row.
    pub(crate) fn backfill_confirmed(&self) {
        self.backfill_rows_confirmed.inc();
    }

    /// The backfill's attempt ended (done, stopped or failed).
    pub(crate) fn backfill_ended(&self) {
        self.backfill_running.set(0);
    }

    pub(crate) fn flushed(&self, lsn: Lsn) {
        self.confirmed_lsn.set(lsn_value(lsn));
    }

    pub(crate) fn proven(&self, lsn: Lsn) {
        self.proven_lsn.set(lsn_value(lsn));
    }

    pub(crate) fn slot_position(&self, lag_bytes: i64, retained_bytes: i64) {
        self.slot_lag_bytes.set(lag_bytes);
        self.retained_wal_bytes.set(retained_bytes);
    }

    pub fn slot_failover(&self, failover: bool) {
        self.slot_failover.set(i64::from(failover));
    }

    pub(crate) fn replay_window_failover(&self, failover: bool) {
        self.replay_window_failover.set(i64::from(failover));
    }

    pub fn synced_standbys(&self, count: usize) {
        self.synced_standbys.set(count as i64);
    }

    /// The text exposition of every metric, with the gauges that depend on the time of the
    /// scrape brought up to date first.
    pub(crate) fn render(&self, health: &Health) -> String {
        let current = health.state();
        for state in RelayState::ALL {
            self.state
                .get_or_create(&StateLabel {
                    state: state.name(),
                })
                .set(i64::from(state == current));
        }
        let since = self.oldest_unconfirmed_since_us.load(Ordering::Relaxed);
        let age = if since == 0 {
            0.0
        } else {
            self.now_us().saturating_sub(since) as f64 / 1e6
        };
        self.oldest_unconfirmed_age.set(age);
        let mut text = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut text, &self.registry);
        text
    }

    fn now_us(&self) -> u64 {
        (self.born.elapsed().as_micros() as u64).max(1)
    }

    fn micros_since_born(&self, at: Instant) -> u64 {
        (at.saturating_duration_since(self.born).as_micros() as u64).max(1)
    }
}

/// LSNs fit an i64 gauge until 8 EiB of WAL.
fn lsn_value(lsn: Lsn) -> i64 {
    i64::try_from(lsn.as_u64()).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_every_catalogued_metric() {
        let metrics = Metrics::new();
        let health = Health::default();
        metrics.published();
        metrics.answered(None);
        metrics.confirmed(Instant::now(), 0);
        metrics.reconnect(Side::Amqp);
        metrics.flushed(Lsn(0x16B3748));
        let text = metrics.render(&health);
        for name in metrics.exposed_names() {
            assert!(
                text.contains(&format!("\n{name}")) || text.starts_with(name),
                "{name} missing from:\n{text}"
            );
        }
        assert!(text.contains("walbox_events_published_total 1"), "{text}");
        assert!(
            text.contains("walbox_reconnects_total{side=\"amqp\"} 1"),
            "{text}"
        );
        assert!(text.contains("walbox_confirmed_lsn 23803720"), "{text}");
        assert!(
            text.contains("walbox_state{state=\"starting\"} 1"),
            "{text}"
        );
        assert!(text.contains("walbox_in_flight_messages 0"), "{text}");
    }

    #[test]
    fn oldest_unconfirmed_age_tracks_the_front_of_the_window() {
        let metrics = Metrics::new();
        let health = Health::default();
        assert!(
            metrics
                .render(&health)
                .contains("walbox_oldest_unconfirmed_age_seconds 0.0")
        );
        metrics.published();
        std::thread::sleep(std::time::Duration::from_millis(20));
        let text = metrics.render(&health);
        let age: f64 = text
            .lines()
            .find_map(|line| line.strip_prefix("walbox_oldest_unconfirmed_age_seconds "))
            .and_then(|value| value.parse().ok())
            .expect("age line");
        assert!(age >= 0.02, "age {age}");
        metrics.answered(None);
        assert!(
            metrics
                .render(&health)
                .contains("walbox_oldest_unconfirmed_age_seconds 0.0")
        );
    }
}
