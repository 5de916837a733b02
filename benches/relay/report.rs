//! Results of each measurement, their medians over the repetitions, and the report: a markdown
//! file with tables and ratios, and an SVG chart of the scaling runs.

use std::fmt::Write as _;

/// One drain of a backlog by a relay.
#[derive(Clone, Debug, Default)]
pub struct Drain {
    /// Events per second, first to last delivery.
    pub rate: f64,
    pub seconds: f64,
    /// Seconds the producer took to commit the backlog.
    pub fill_seconds: f64,
    /// Relay started → first delivery.
    pub startup_seconds: f64,
    /// A raw publisher's own rate: events / (first publish → last confirm), from its log.
    pub publisher_rate: Option<f64>,
    /// Average body size seen by the consumer.
    pub body_bytes: f64,
    /// Relay process CPU per event (first to last delivery), µs.
    pub relay_cpu_us: Option<f64>,
    pub relay_rss_mib: Option<f64>,
    /// The PostgreSQL backend serving the relay (walsender or poller session), its whole
    /// session's CPU per event, µs.
    pub pg_cpu_us: Option<f64>,
    /// Broker CPU, % of one core, first to last delivery.
    pub broker_cpu: Option<f64>,
    /// The whole machine's CPU busy, % of all cores, first to last delivery.
    pub machine_busy: Option<f64>,
    /// Activity on the outbox table while the relay drained it.
    pub table: Option<TableStats>,
    /// pg_stat_statements totals for the database while the relay drained it.
    pub statements: Option<Statements>,
}

#[derive(Clone, Debug, Default)]
pub struct Latency {
    pub target_rate: f64,
    pub achieved_rate: f64,
    pub samples: usize,
    /// Milliseconds.
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub max: f64,
    /// % of one core during the steady load.
    pub relay_cpu: Option<f64>,
    pub pg_cpu: Option<f64>,
    pub broker_cpu: Option<f64>,
    /// The whole machine's CPU busy, % of all cores, during the steady load.
    pub machine_busy: Option<f64>,
}

/// The latency runs of one relay at one load.
#[derive(Clone, Debug, Default)]
pub struct LatencyRow {
    pub relay: &'static str,
    pub load: String,
    pub runs: Vec<Latency>,
}

/// Differences of pg_stat_user_tables / pg_statio_user_tables for the outbox table.
#[derive(Clone, Copy, Debug, Default)]
pub struct TableStats {
    pub seq_scan: i64,
    pub seq_tup_read: i64,
    pub idx_scan: i64,
    pub idx_tup_fetch: i64,
    pub n_tup_del: i64,
    /// At the end, not a difference.
    pub n_dead_tup: i64,
    pub heap_blks_read: i64,
    pub heap_blks_hit: i64,
    pub idx_blks_read: i64,
    pub idx_blks_hit: i64,
    pub vacuums: i64,
}

impl TableStats {
    pub const SQL: &str = "SELECT s.seq_scan, s.seq_tup_read, coalesce(s.idx_scan, 0), \
         coalesce(s.idx_tup_fetch, 0), s.n_tup_del, s.n_dead_tup, \
         coalesce(io.heap_blks_read, 0), coalesce(io.heap_blks_hit, 0), \
         coalesce(io.idx_blks_read, 0), coalesce(io.idx_blks_hit, 0), \
         s.vacuum_count + s.autovacuum_count \
         FROM pg_stat_user_tables s JOIN pg_statio_user_tables io USING (relid) \
         WHERE s.schemaname = 'public' AND s.relname = 'outbox'";

    pub fn from_row(row: &tokio_postgres::Row) -> Self {
        TableStats {
            seq_scan: row.get(0),
            seq_tup_read: row.get(1),
            idx_scan: row.get(2),
            idx_tup_fetch: row.get(3),
            n_tup_del: row.get(4),
            n_dead_tup: row.get(5),
            heap_blks_read: row.get(6),
            heap_blks_hit: row.get(7),
            idx_blks_read: row.get(8),
            idx_blks_hit: row.get(9),
            vacuums: row.get(10),
        }
    }

    pub fn since(self, before: TableStats) -> TableStats {
        TableStats {
            seq_scan: self.seq_scan - before.seq_scan,
            seq_tup_read: self.seq_tup_read - before.seq_tup_read,
            idx_scan: self.idx_scan - before.idx_scan,
            idx_tup_fetch: self.idx_tup_fetch - before.idx_tup_fetch,
            n_tup_del: self.n_tup_del - before.n_tup_del,
            n_dead_tup: self.n_dead_tup,
            heap_blks_read: self.heap_blks_read - before.heap_blks_read,
            heap_blks_hit: self.heap_blks_hit - before.heap_blks_hit,
            idx_blks_read: self.idx_blks_read - before.idx_blks_read,
            idx_blks_hit: self.idx_blks_hit - before.idx_blks_hit,
            vacuums: self.vacuums - before.vacuums,
        }
    }
}

/// pg_stat_statements totals for one database.
#[derive(Clone, Copy, Debug, Default)]
pub struct Statements {
    pub calls: i64,
    pub exec_ms: f64,
    pub blks_hit: i64,
    pub blks_read: i64,
}

impl Statements {
    pub const SQL: &str = "SELECT coalesce(sum(calls), 0)::bigint, \
         coalesce(sum(total_exec_time), 0)::float8, coalesce(sum(shared_blks_hit), 0)::bigint, \
         coalesce(sum(shared_blks_read), 0)::bigint FROM pg_stat_statements \
         WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database())";

    pub fn from_row(row: &tokio_postgres::Row) -> Self {
        Statements {
            calls: row.get(0),
            exec_ms: row.get(1),
            blks_hit: row.get(2),
            blks_read: row.get(3),
        }
    }

    pub fn since(self, before: Statements) -> Statements {
        Statements {
            calls: self.calls - before.calls,
            exec_ms: self.exec_ms - before.exec_ms,
            blks_hit: self.blks_hit - before.blks_hit,
            blks_read: self.blks_read - before.blks_read,
        }
    }
}

/// One scaling configuration: ceiling and walbox drain runs.
#[derive(Clone, Debug, Default)]
pub struct Scaling {
    pub label: String,
    pub events: usize,
    pub payload_bytes: usize,
    pub tx_rows: usize,
    pub queue: &'static str,
    pub ceilings: Vec<Drain>,
    pub drains: Vec<Drain>,
}

/// What the report says about the run as a whole.
#[derive(Clone, Debug, Default)]
pub struct Setup {
    pub when: String,
    pub commit: String,
    pub machine: String,
    pub postgres: String,
    pub rabbitmq: String,
    pub events: usize,
    pub reps: usize,
    pub payload_bytes: usize,
    pub tx_rows: usize,
    pub window: usize,
    pub poll_batch: usize,
    pub poll_interval_ms: u64,
    pub latency_tx_rows: usize,
    pub latency_seconds: f64,
    pub latency_warmup_seconds: f64,
    pub pg_stat_statements: String,
    pub wall_seconds: f64,
}

#[derive(Clone, Debug, Default)]
pub struct Results {
    pub setup: Setup,
    pub ceilings: Vec<Drain>,
    pub walbox: Vec<Drain>,
    pub poller: Vec<Drain>,
    pub latency: Vec<LatencyRow>,
    pub scaling: Vec<Scaling>,
    /// Ceiling and walbox drain per target (classic queue, quorum queue, stream).
    pub targets: Vec<Scaling>,
    /// Why a target has no walbox runs, when it has none.
    pub targets_note: Option<String>,
}

pub fn median(values: impl IntoIterator<Item = f64>) -> Option<f64> {
    let mut values: Vec<f64> = values.into_iter().filter(|v| v.is_finite()).collect();
    if values.is_empty() {
        return None;
    }
    values.sort_by(f64::total_cmp);
    let middle = values.len() / 2;
    Some(if values.len() % 2 == 1 {
        values[middle]
    } else {
        (values[middle - 1] + values[middle]) / 2.0
    })
}

fn median_of<T>(runs: &[T], value: impl Fn(&T) -> Option<f64>) -> Option<f64> {
    median(runs.iter().filter_map(value))
}

/// Nearest-rank percentile of sorted values.
pub fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn num(value: Option<f64>, decimals: usize) -> String {
    match value {
        Some(v) => {
            let text = format!("{v:.decimals$}");
            // Thousands separators for the integer part.
            let (int, frac) = text.split_once('.').unwrap_or((&text, ""));
            let (sign, digits) = int.strip_prefix('-').map_or(("", int), |d| ("-", d));
            let mut grouped = String::new();
            for (i, c) in digits.chars().enumerate() {
                if i > 0 && (digits.len() - i) % 3 == 0 {
                    grouped.push(',');
                }
                grouped.push(c);
            }
            if frac.is_empty() {
                format!("{sign}{grouped}")
            } else {
                format!("{sign}{grouped}.{frac}")
            }
        }
        None => "–".into(),
    }
}

fn pct(value: Option<f64>) -> String {
    value.map_or("–".into(), |v| format!("{v:.0}%"))
}

fn ratio(part: Option<f64>, whole: Option<f64>) -> Option<f64> {
    Some(part? / whole? * 100.0)
}

/// Every run's value, for the reader to see the spread behind a median.
fn spread<T>(runs: &[T], value: impl Fn(&T) -> f64) -> String {
    runs.iter()
        .map(|run| num(Some(value(run)), 0))
        .collect::<Vec<_>>()
        .join(" / ")
}

pub fn markdown(results: &Results, svg_name: Option<&str>) -> String {
    let s = &results.setup;
    let mut out = String::new();
    let w = &mut out;
    let _ = writeln!(w, "# walbox relay benchmark\n");
    let _ = writeln!(
        w,
        "{} · commit {} · {} · PostgreSQL {} · RabbitMQ {} · run took {:.0} s\n",
        s.when, s.commit, s.machine, s.postgres, s.rabbitmq, s.wall_seconds
    );
    let _ = writeln!(
        w,
        "Medians of {} repetitions. Backlog: {} events of ~{} B JSON, {} per transaction, \
         committed before the relay starts; classic durable queue bound to a durable topic \
         exchange; persistent, mandatory, publisher confirms, {} messages in flight. The \
         consumer (in the bench process, no-ack) counts deliveries; a rate is events / (last \
         delivery − first delivery).\n",
        s.reps, s.events, s.payload_bytes, s.tx_rows, s.window
    );

    if !(results.ceilings.is_empty() && results.walbox.is_empty() && results.poller.is_empty()) {
        throughput(w, results);
    }
    if !results.latency.is_empty() {
        latency(w, results);
    }
    if !(results.walbox.is_empty() && results.poller.is_empty()) {
        postgres_load(w, results);
    }
    if !results.scaling.is_empty() {
        scaling(w, results, svg_name);
    }
    if !results.targets.is_empty() {
        targets(w, results);
    }
    settings(w, results);
    out
}

fn throughput(w: &mut String, results: &Results) {
    let ceiling = median_of(&results.ceilings, |c| Some(c.rate));
    let _ = writeln!(w, "## Throughput\n");
    let _ = writeln!(
        w,
        "| what | events/s | vs ceiling | relay CPU µs/event | relay peak RSS MiB | PostgreSQL backend CPU µs/event | broker CPU (% of a core) | machine CPU busy (% of all cores) | each run, events/s |"
    );
    let _ = writeln!(
        w,
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |"
    );
    for (name, runs) in [
        (
            "ceiling: raw lapin publisher, no PostgreSQL",
            &results.ceilings,
        ),
        ("walbox drain", &results.walbox),
        ("polling relay drain", &results.poller),
    ] {
        if runs.is_empty() {
            continue;
        }
        let rate = median_of(runs, |d| Some(d.rate));
        let _ = writeln!(
            w,
            "| {name} | {} | {} | {} | {} | {} | {} | {} | {} |",
            num(rate, 0),
            pct(ratio(rate, ceiling)),
            num(median_of(runs, |d| d.relay_cpu_us), 1),
            num(median_of(runs, |d| d.relay_rss_mib), 1),
            num(median_of(runs, |d| d.pg_cpu_us), 1),
            pct(median_of(runs, |d| d.broker_cpu)),
            pct(median_of(runs, |d| d.machine_busy)),
            spread(runs, |d| d.rate)
        );
    }
    let walbox_rate = median_of(&results.walbox, |d| Some(d.rate));
    let poller_rate = median_of(&results.poller, |d| Some(d.rate));
    let _ = writeln!(
        w,
        "\nwalbox drain / ceiling = **{}**; walbox / polling relay = **{}**. Producer: the \
         backlog took {} s to commit (walbox) / {} s (polling relay, one more index). Relay \
         start → first delivery: walbox {} s, polling relay {} s. Average body {} B.\n",
        pct(ratio(walbox_rate, ceiling)),
        ratio(walbox_rate, poller_rate).map_or("–".into(), |r| format!("{:.2}×", r / 100.0)),
        num(median_of(&results.walbox, |d| Some(d.fill_seconds)), 1),
        num(median_of(&results.poller, |d| Some(d.fill_seconds)), 1),
        num(median_of(&results.walbox, |d| Some(d.startup_seconds)), 2),
        num(median_of(&results.poller, |d| Some(d.startup_seconds)), 2),
        num(median_of(&results.walbox, |d| Some(d.body_bytes)), 0),
    );
}

fn latency(w: &mut String, results: &Results) {
    let s = &results.setup;
    let _ = writeln!(w, "## Latency, commit → delivery\n");
    let _ = writeln!(
        w,
        "Steady load in transactions of {} events, {:.0} s measured after a {:.0} s \
         warm-up; each payload carries `clock_timestamp()` at insert and the consumer \
         subtracts it from its own clock on delivery (same machine).\n",
        s.latency_tx_rows, s.latency_seconds, s.latency_warmup_seconds
    );
    let _ = writeln!(
        w,
        "| relay | load | events/s asked / achieved | samples | p50 ms | p90 ms | p99 ms | max ms | relay CPU (% of a core) | PostgreSQL backend CPU (% of a core) | broker CPU (% of a core) | machine CPU busy (% of all cores) |"
    );
    let _ = writeln!(
        w,
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
    );
    for row in &results.latency {
        let runs = &row.runs;
        if runs.is_empty() {
            continue;
        }
        let _ = writeln!(
            w,
            "| {} | {} | {} / {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            row.relay,
            row.load,
            num(median_of(runs, |l| Some(l.target_rate)), 0),
            num(median_of(runs, |l| Some(l.achieved_rate)), 0),
            num(median_of(runs, |l| Some(l.samples as f64)), 0),
            num(median_of(runs, |l| Some(l.p50)), 1),
            num(median_of(runs, |l| Some(l.p90)), 1),
            num(median_of(runs, |l| Some(l.p99)), 1),
            num(median_of(runs, |l| Some(l.max)), 1),
            pct(median_of(runs, |l| l.relay_cpu)),
            pct(median_of(runs, |l| l.pg_cpu)),
            pct(median_of(runs, |l| l.broker_cpu)),
            pct(median_of(runs, |l| l.machine_busy)),
        );
    }
    let _ = writeln!(w);
}

fn postgres_load(w: &mut String, results: &Results) {
    let s = &results.setup;
    let _ = writeln!(w, "## Load on PostgreSQL while draining the backlog\n");
    let _ = writeln!(
        w,
        "Differences of `pg_stat_user_tables` / `pg_statio_user_tables` for the outbox table \
         from the end of the producer to the end of the relay (dead tuples: at the end). \
         walbox reads the WAL through its walsender and never touches the table.\n"
    );
    let _ = writeln!(
        w,
        "| relay | seq scans | index scans | rows read | rows deleted | dead rows left | heap blocks hit / read | index blocks hit / read | buffer hits per event | vacuums |"
    );
    let _ = writeln!(
        w,
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
    );
    for (name, runs) in [
        ("walbox", &results.walbox),
        ("polling relay", &results.poller),
    ] {
        let t =
            |f: fn(&TableStats) -> i64| median_of(runs, |d| d.table.as_ref().map(|t| f(t) as f64));
        let hits = median_of(runs, |d| {
            d.table
                .as_ref()
                .map(|t| (t.heap_blks_hit + t.idx_blks_hit) as f64 / s.events.max(1) as f64)
        });
        let _ = writeln!(
            w,
            "| {name} | {} | {} | {} | {} | {} | {} / {} | {} / {} | {} | {} |",
            num(t(|t| t.seq_scan), 0),
            num(t(|t| t.idx_scan), 0),
            num(t(|t| t.seq_tup_read + t.idx_tup_fetch), 0),
            num(t(|t| t.n_tup_del), 0),
            num(t(|t| t.n_dead_tup), 0),
            num(t(|t| t.heap_blks_hit), 0),
            num(t(|t| t.heap_blks_read), 0),
            num(t(|t| t.idx_blks_hit), 0),
            num(t(|t| t.idx_blks_read), 0),
            num(hits, 2),
            num(t(|t| t.vacuums), 0),
        );
    }
    let _ = writeln!(w, "\npg_stat_statements: {}\n", s.pg_stat_statements);
    for (name, runs) in [
        ("walbox", &results.walbox),
        ("polling relay", &results.poller),
    ] {
        if runs.iter().any(|d| d.statements.is_some()) {
            let _ = writeln!(
                w,
                "- {name}: {} statements, {} ms executing, {} shared blocks hit, {} read\n",
                num(median_of(runs, |d| d.statements.map(|s| s.calls as f64)), 0),
                num(median_of(runs, |d| d.statements.map(|s| s.exec_ms)), 1),
                num(
                    median_of(runs, |d| d.statements.map(|s| s.blks_hit as f64)),
                    0
                ),
                num(
                    median_of(runs, |d| d.statements.map(|s| s.blks_read as f64)),
                    0
                ),
            );
        }
    }
}

fn scaling(w: &mut String, results: &Results, svg_name: Option<&str>) {
    let _ = writeln!(w, "## Scaling: walbox drain vs ceiling\n");
    let _ = writeln!(
        w,
        "Smaller backlogs (events column) so each configuration takes seconds; medians of \
         the same number of repetitions. MB/s counts message bodies.\n"
    );
    let _ = writeln!(
        w,
        "| configuration | events | ceiling events/s | walbox events/s | walbox / ceiling | ceiling MB/s | walbox MB/s | walbox CPU µs/event |"
    );
    let _ = writeln!(
        w,
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
    );
    for row in &results.scaling {
        let c = median_of(&row.ceilings, |c| Some(c.rate));
        let d = median_of(&row.drains, |d| Some(d.rate));
        let mb = |rate: Option<f64>| rate.map(|r| r * row.payload_bytes as f64 / 1e6);
        let _ = writeln!(
            w,
            "| {} | {} | {} | {} | {} | {} | {} | {} |",
            row.label,
            row.events,
            num(c, 0),
            num(d, 0),
            pct(ratio(d, c)),
            num(mb(c), 1),
            num(mb(d), 1),
            num(median_of(&row.drains, |d| d.relay_cpu_us), 1),
        );
    }
    if let Some(svg) = svg_name {
        let _ = writeln!(w, "\n![walbox drain vs ceiling]({svg})");
    }
    let _ = writeln!(w);
}

fn targets(w: &mut String, results: &Results) {
    let s = &results.setup;
    let _ = writeln!(
        w,
        "## Publish targets: classic queue, quorum queue, stream\n"
    );
    let _ = writeln!(
        w,
        "The same backlog ({} events of ~{} B, {} per transaction) drained by walbox into each \
         target, next to that target's raw ceiling (no PostgreSQL): lapin to the exchange for \
         the queues, the stream client to the stream (one named producer, explicit publishing \
         ids, confirms). {} messages in flight everywhere. Rounds rotate the order of the \
         targets. A rate is counted by a consumer in the bench process: no-ack AMQP for the \
         queues, the stream client from the first offset for the stream. The raw publishers \
         also time themselves, first publish to last confirm (their own events/s), which \
         shows whether the consumer kept up.\n",
        s.events, s.payload_bytes, s.tx_rows, s.window
    );
    let _ = writeln!(
        w,
        "| target | publisher | events/s | vs ceiling | CPU µs/event | peak RSS MiB | walsender CPU µs/event | broker CPU (% of a core) | machine busy (% of all cores) | publisher's own events/s | runs | each run, events/s |"
    );
    let _ = writeln!(
        w,
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |"
    );
    for row in &results.targets {
        let ceiling = median_of(&row.ceilings, |c| Some(c.rate));
        let raw = match row.queue {
            "stream" => "raw stream publisher",
            _ => "raw lapin publisher",
        };
        for (publisher, runs) in [(raw, &row.ceilings), ("walbox", &row.drains)] {
            if runs.is_empty() {
                continue;
            }
            let rate = median_of(runs, |d| Some(d.rate));
            let _ = writeln!(
                w,
                "| {} | {publisher} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                row.label,
                num(rate, 0),
                pct(ratio(rate, ceiling)),
                num(median_of(runs, |d| d.relay_cpu_us), 1),
                num(median_of(runs, |d| d.relay_rss_mib), 1),
                num(median_of(runs, |d| d.pg_cpu_us), 1),
                pct(median_of(runs, |d| d.broker_cpu)),
                pct(median_of(runs, |d| d.machine_busy)),
                num(median_of(runs, |d| d.publisher_rate), 0),
                runs.len(),
                spread(runs, |d| d.rate),
            );
        }
    }
    if let Some(note) = &results.targets_note {
        let _ = writeln!(w, "\nNote: {note}.");
    }
    let _ = writeln!(w);
}

fn settings(w: &mut String, results: &Results) {
    let s = &results.setup;
    let _ = writeln!(w, "## Settings\n");
    let _ = writeln!(
        w,
        "- polling relay: batch {}, poll interval {} ms when a round finds less than a full \
         batch, `ORDER BY created_at … FOR UPDATE SKIP LOCKED` on an index, DELETE after the \
         confirms, one transaction per batch, same window and confirms as walbox",
        s.poll_batch, s.poll_interval_ms
    );
    let _ = writeln!(
        w,
        "- CPU figures: utime+stime from /proc (clock ticks); relay CPU counts from the first \
         delivery to the last; the PostgreSQL backend's counts its whole session"
    );
    let _ = writeln!(
        w,
        "- the machine is shared: other work running at the same time lowers every number \
         of a repetition alike, which is why each figure is a same-run ratio of medians"
    );
}

/// A horizontal bar chart: walbox's drain as a share of the ceiling, per configuration, with
/// both rates written beside each bar. Hand-written SVG, no dependencies.
pub fn scaling_svg(rows: &[Scaling]) -> String {
    let bar_height = 26.0;
    let gap = 12.0;
    let left = 230.0;
    let width = 420.0;
    let top = 50.0;
    let height = top + rows.len() as f64 * (bar_height + gap) + 40.0;
    let total_width = left + width + 250.0;
    let mut svg = String::new();
    let _ = writeln!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{total_width}" height="{height}" font-family="sans-serif" font-size="13">"#
    );
    let _ = writeln!(
        svg,
        r#"<rect width="100%" height="100%" fill="white"/><text x="10" y="24" font-size="16" font-weight="bold">walbox drain as % of the raw-publisher ceiling (medians)</text>"#
    );
    // The axis reaches past 100% when walbox beat the ceiling's median (noise, or a ceiling
    // run that was slowed by other work).
    let shares: Vec<f64> = rows
        .iter()
        .map(|row| {
            ratio(
                median_of(&row.drains, |d| Some(d.rate)),
                median_of(&row.ceilings, |c| Some(c.rate)),
            )
            .unwrap_or(0.0)
        })
        .collect();
    let axis = (shares.iter().copied().fold(100.0, f64::max) / 25.0).ceil() * 25.0;
    let axis = axis.min(200.0);
    for tick in (0..=axis as u32).step_by(25) {
        let x = left + width * f64::from(tick) / axis;
        let _ = writeln!(
            svg,
            r##"<line x1="{x}" y1="{}" x2="{x}" y2="{}" stroke="#ccc"/><text x="{x}" y="{}" text-anchor="middle" fill="#555">{tick}%</text>"##,
            top - 6.0,
            height - 30.0,
            height - 14.0
        );
    }
    for (i, row) in rows.iter().enumerate() {
        let y = top + i as f64 * (bar_height + gap);
        let c = median_of(&row.ceilings, |c| Some(c.rate));
        let d = median_of(&row.drains, |d| Some(d.rate));
        let share = shares[i];
        let bar = width * share.min(axis) / axis;
        let colour = if share > 100.0 { "#2a7" } else { "#36c" };
        let _ = writeln!(
            svg,
            r#"<text x="{}" y="{}" text-anchor="end">{}</text>"#,
            left - 8.0,
            y + bar_height * 0.68,
            escape(&row.label)
        );
        let _ = writeln!(
            svg,
            r#"<rect x="{left}" y="{y}" width="{bar:.1}" height="{bar_height}" fill="{colour}"/>"#
        );
        let _ = writeln!(
            svg,
            r##"<text x="{}" y="{}" fill="#222">{} · {} of {} ev/s</text>"##,
            left + width + 8.0,
            y + bar_height * 0.68,
            pct(Some(share)),
            num(d, 0),
            num(c, 0)
        );
    }
    svg.push_str("</svg>\n");
    svg
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// Checks of the arithmetic above; `cargo test` runs them (the bench's quick path).
pub fn self_check() {
    assert_eq!(median([3.0, 1.0, 2.0]), Some(2.0));
    assert_eq!(median([4.0, 1.0, 2.0, 3.0]), Some(2.5));
    assert_eq!(median([]), None);
    let sorted: Vec<u64> = (1..=100).collect();
    assert_eq!(percentile(&sorted, 50.0), 50);
    assert_eq!(percentile(&sorted, 99.0), 99);
    assert_eq!(percentile(&sorted, 100.0), 100);
    assert_eq!(percentile(&[7], 50.0), 7);
    assert_eq!(num(Some(1_234_567.891), 1), "1,234,567.9");
    assert_eq!(num(Some(-1234.0), 0), "-1,234");
    assert_eq!(num(Some(999.0), 0), "999");
    assert_eq!(pct(ratio(Some(1.0), Some(4.0))), "25%");
}
