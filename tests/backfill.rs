//! The backfill on the real servers: the cut-over (rows already in the table, read in the
//! slot's exported snapshot, sent once each in creation order before the events committed
//! after), a backfill killed mid-way with writers running (committed counted against
//! delivered), and `walbox backfill` re-sending a row as the very message it was live.

mod common;

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use lapin::message::Delivery;
use lapin::types::AMQPValue;

const WAIT: Duration = Duration::from_secs(60);

fn is_backfilled(delivery: &Delivery) -> bool {
    matches!(
        delivery
            .properties
            .headers()
            .as_ref()
            .and_then(|headers| headers.inner().get("x-backfill")),
        Some(AMQPValue::Boolean(true))
    )
}

/// Wait until the slot is streamed from (the backfill, if any, is over).
async fn wait_streaming(env: &mut TestEnv, run: usize) {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(status) = env.try_wait(run) {
            panic!("walbox exited ({status}); log:\n{}", env.run_log(run));
        }
        let streaming = env
            .db
            .query_opt(
                "SELECT 1 FROM pg_replication_slots s JOIN pg_stat_replication r \
                 ON r.pid = s.active_pid WHERE s.slot_name = $1",
                &[&env.name],
            )
            .await
            .unwrap()
            .is_some();
        if streaming {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "walbox never streamed; log:\n{}",
            env.run_log(run)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Insert `count` rows of walbox's own outbox table, `sent` marking the ones an earlier
/// publisher already sent (aggregate_type 'sent'); returns their ids in insertion order.
async fn insert_rows(env: &TestEnv, count: usize, sent: impl Fn(usize) -> bool) -> Vec<String> {
    let mut ids = Vec::new();
    for index in 0..count {
        let kind = if sent(index) { "sent" } else { "order" };
        let row = env
            .db
            .query_one(
                "INSERT INTO outbox (aggregate_type, aggregate_id, event_type, payload, headers, \
                 created_at) VALUES ($1, $2, 'created', $3::text::jsonb, \
                 '{\"trace\": \"t-1\", \"n\": 7}', now() - ($4::int * interval '1 ms')) \
                 RETURNING id::text",
                &[
                    &kind,
                    &format!("a-{index}"),
                    &format!("{{\"n\": {index}}}"),
                    &((count - index) as i32),
                ],
            )
            .await
            .expect("insert");
        ids.push(row.get(0));
    }
    ids
}

#[tokio::test]
async fn a_cut_over_sends_the_unsent_rows_once_before_the_new_ones() {
    let mut env = TestEnv::new("bf_cutover").await;
    let mut consumer = env.queue("all", "#").await;
    let before = insert_rows(&env, 40, |index| index % 4 == 0).await;
    let owed: Vec<&String> = before
        .iter()
        .enumerate()
        .filter(|(index, _)| index % 4 != 0)
        .map(|(_, id)| id)
        .collect();
    let run = env.spawn_run(&["--backfill-where", "aggregate_type <> 'sent'"]);
    // The slot shows a walsender while it is being created too: wait for the live one.
    while record_state(&env).await.as_deref() != Some("done") {
        assert!(env.try_wait(run).is_none(), "log:\n{}", env.run_log(run));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    wait_streaming(&mut env, run).await;
    let after = insert_rows(&env, 10, |_| false).await;

    let deliveries = receive(&mut consumer, owed.len() + after.len(), WAIT).await;
    let ids: Vec<String> = deliveries.iter().map(message_id).collect();
    let expected: Vec<String> = owed.iter().map(|id| (*id).clone()).chain(after).collect();
    assert_eq!(ids, expected, "log:\n{}", env.run_log(run));
    let backfilled = deliveries.iter().filter(|d| is_backfilled(d)).count();
    assert_eq!(backfilled, owed.len());
    assert!(deliveries[..owed.len()].iter().all(is_backfilled));
    assert!(
        deliveries[..owed.len()]
            .iter()
            .all(|d| header_text(d, "x-commit-lsn").is_none())
    );
    assert!(
        receive_any(&mut consumer, Duration::from_secs(2))
            .await
            .is_empty()
    );
    let record = env
        .db
        .query_one(
            "SELECT state, rows_expected, rows_confirmed FROM walbox_backfill WHERE slot_name = $1",
            &[&env.name],
        )
        .await
        .unwrap();
    assert_eq!(record.get::<_, String>(0), "done");
    assert_eq!(record.get::<_, Option<i64>>(1), Some(owed.len() as i64));
    assert_eq!(record.get::<_, i64>(2), owed.len() as i64);
    // walbox status shows it.
    let status = env.walbox("status", &[]);
    let text = String::from_utf8_lossy(&status.stdout);
    assert!(
        text.contains("backfill:          done (30 of 30 rows confirmed, attempt 1)"),
        "{text}"
    );
    assert!(
        text.contains("predicate:       aggregate_type <> 'sent'"),
        "{text}"
    );
    let json = env.walbox("status", &["--json"]);
    let json: serde_json::Value = serde_json::from_slice(&json.stdout).expect("status --json");
    assert_eq!(json["backfill"]["state"], "done");
    assert_eq!(json["backfill"]["rows_confirmed"], 30);
}

/// Rows owed by the kill test's backfill, and rows an earlier publisher already sent.
const KILL_OWED: i64 = 60_000;
const KILL_SENT: i64 = 6_000;

/// Insert `owed` unsent rows and `sent` sent ones in one statement, three rows per created_at
/// (so the id breaks ties), oldest first; returns the owed ids.
async fn insert_many(env: &TestEnv, owed: i64, sent: i64) -> Vec<String> {
    env.db
        .query(
            "INSERT INTO outbox (aggregate_type, aggregate_id, event_type, payload, created_at) \
             SELECT CASE WHEN i % 11 = 0 AND $2 > 0 THEN 'sent' ELSE 'order' END, 'a-' || i, \
             'created', jsonb_build_object('n', i), \
             now() - interval '1 hour' + (i / 3) * interval '1 ms' \
             FROM generate_series(1, $1::bigint + $2::bigint) i",
            &[&owed, &sent],
        )
        .await
        .expect("insert rows");
    env.db
        .query(
            "SELECT id::text FROM outbox WHERE aggregate_type = 'order' ORDER BY created_at, id",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect()
}

/// Insert rows in transactions of 1 to 3 until `stop`, each committed id recorded.
async fn write_until(url: String, stop: Arc<AtomicBool>, committed: Arc<Mutex<Vec<String>>>) {
    let db = pg_connect(&url).await;
    let mut n: i64 = 0;
    while !stop.load(Ordering::Relaxed) {
        let size = 1 + n % 3;
        let rows = db
            .query(
                "INSERT INTO outbox (aggregate_type, aggregate_id, event_type, payload) \
                 SELECT 'order', 'w', 'written', jsonb_build_object('n', $1::bigint + i) \
                 FROM generate_series(1, $2::bigint) i RETURNING id::text",
                &[&n, &size],
            )
            .await
            .expect("writer insert");
        committed
            .lock()
            .unwrap()
            .extend(rows.iter().map(|row| row.get::<_, String>(0)));
        n += size;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// The backfill record's (attempts, rows confirmed), zeros before it exists.
async fn record_progress(env: &TestEnv) -> (i32, i64) {
    let record = env
        .db
        .query_opt(
            "SELECT attempts, rows_confirmed FROM walbox_backfill WHERE slot_name = $1",
            &[&env.name],
        )
        .await;
    match record {
        Ok(Some(record)) => (record.get(0), record.get(1)),
        _ => (0, 0),
    }
}

/// Wait until the backfill's record says at least `rows` were confirmed, by an attempt after
/// the `attempts` first ones, and it is still sending; false if it finished first or the
/// deadline passed.
async fn wait_progress_of(env: &TestEnv, attempts: i32, rows: i64, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        let record = env
            .db
            .query_opt(
                "SELECT state, rows_confirmed, attempts FROM walbox_backfill WHERE slot_name = $1",
                &[&env.name],
            )
            .await;
        if let Ok(Some(record)) = record {
            let (state, confirmed, tries): (String, i64, i32) =
                (record.get(0), record.get(1), record.get(2));
            if state == "done" {
                return false;
            }
            if state == "sending" && tries > attempts && confirmed >= rows {
                return true;
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    false
}

/// [`wait_progress_of`] any attempt.
async fn wait_progress(env: &TestEnv, rows: i64, within: Duration) -> bool {
    wait_progress_of(env, 0, rows, within).await
}

/// The record's state.
async fn record_state(env: &TestEnv) -> Option<String> {
    env.db
        .query_opt(
            "SELECT state FROM walbox_backfill WHERE slot_name = $1",
            &[&env.name],
        )
        .await
        .ok()
        .flatten()
        .map(|row| row.get(0))
}

/// SIGKILL at three moments of a cut-over backfill (very early, then twice mid-way) while two
/// writers insert rows: every row owed before the slot and every row
/// committed by the writers arrives (repeats allowed, losses not), no row an earlier publisher
/// sent arrives, the backfilled rows first arrive in creation order and before any event from
/// the slot, and each restart says whether it resumed or redid the backfill.
#[tokio::test]
async fn a_backfill_killed_mid_way_loses_nothing() {
    let mut env = TestEnv::new("bf_kill").await;
    let mut consumer = env.queue_with("all", "#", true).await;
    let owed = insert_many(&env, KILL_OWED, KILL_SENT).await;
    let stop = Arc::new(AtomicBool::new(false));
    let committed = Arc::new(Mutex::new(Vec::new()));
    let writers: Vec<_> = (0..2)
        .map(|_| {
            tokio::spawn(write_until(
                env.postgres_url(),
                Arc::clone(&stop),
                Arc::clone(&committed),
            ))
        })
        .collect();
    let args = [
        "--backfill-where",
        "aggregate_type <> 'sent'",
        "--max-in-flight",
        "256",
    ];
    let mut runs = Vec::new();
    // Kill 1: 0.3 s after the start (creating the slot, or just begun).
    let run = env.spawn_run(&args);
    tokio::time::sleep(Duration::from_millis(300)).await;
    env.kill(run);
    runs.push(run);
    // Kills 2 and 3: once the record says this run confirmed a tenth of the owed rows more
    // (after at least a quarter, then half, in all), the backfill still sending.
    for fraction in [1, 2] {
        let (attempts, confirmed) = record_progress(&env).await;
        let run = env.spawn_run(&args);
        runs.push(run);
        let tenth = owed.len() as i64 / 10;
        let rows = (owed.len() as i64 * fraction / 4).max(confirmed + tenth);
        let mid_way = wait_progress_of(&env, attempts, rows, WAIT * 2).await;
        env.kill(run);
        assert!(
            mid_way && record_state(&env).await.as_deref() == Some("sending"),
            "the backfill was not killed mid-way; log:\n{}",
            env.run_log(run)
        );
    }
    let run = env.spawn_run(&args);
    runs.push(run);
    wait_streaming(&mut env, run).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, Ordering::Relaxed);
    for writer in writers {
        writer.await.unwrap();
    }
    let written = committed.lock().unwrap().clone();
    let expected: HashSet<&String> = owed.iter().chain(&written).collect();
    let mut received = Vec::new();
    let deadline = Instant::now() + WAIT * 2;
    loop {
        received.extend(receive_unacked(&mut consumer, 10_000, Duration::from_millis(500)).await);
        let ids: HashSet<String> = received.iter().map(message_id).collect();
        if expected.iter().all(|id| ids.contains(*id)) || Instant::now() > deadline {
            break;
        }
    }
    received.extend(receive_unacked(&mut consumer, usize::MAX, Duration::from_secs(2)).await);

    let ids: Vec<String> = received.iter().map(message_id).collect();
    let distinct: HashSet<&String> = ids.iter().collect();
    let lost: Vec<&&String> = expected
        .iter()
        .filter(|id| !distinct.contains(**id))
        .collect();
    let unknown = distinct.iter().filter(|id| !expected.contains(*id)).count();
    eprintln!(
        "backfill kill: owed {} + written {} = {} committed, {} delivered ({} distinct, {} \
         duplicates), lost {}, not owed {}",
        owed.len(),
        written.len(),
        expected.len(),
        ids.len(),
        distinct.len(),
        ids.len() - distinct.len(),
        lost.len(),
        unknown
    );
    let logs: Vec<String> = runs.iter().map(|run| env.run_log(*run)).collect();
    assert!(
        lost.is_empty(),
        "{} rows lost, e.g. {:?}; logs:\n{}",
        lost.len(),
        &lost[..lost.len().min(5)],
        logs.join("\n----\n")
    );
    assert_eq!(
        unknown, 0,
        "rows not owed arrived (an earlier publisher's sent rows?)"
    );

    // The backfilled rows first arrive in creation order, before anything from the slot.
    let mut seen = HashSet::new();
    let mut first_backfilled = Vec::new();
    let mut last_first_backfill = 0;
    for (at, delivery) in received.iter().enumerate() {
        let id = message_id(delivery);
        if seen.insert(id.clone()) && is_backfilled(delivery) {
            first_backfilled.push(id);
            last_first_backfill = at;
        }
    }
    let first_streamed = received
        .iter()
        .position(|d| !is_backfilled(d))
        .unwrap_or(usize::MAX);
    assert!(
        first_streamed > last_first_backfill,
        "an event from the slot arrived before the backfill was through"
    );
    let in_order: Vec<String> = env
        .db
        .query(
            "SELECT id::text FROM outbox WHERE id::text = ANY($1) ORDER BY created_at, id",
            &[&first_backfilled],
        )
        .await
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect();
    assert_eq!(
        first_backfilled, in_order,
        "first arrivals out of creation order"
    );
    // Each restart said what it did with the unfinished backfill.
    let said = |text: &str| logs.iter().filter(|log| log.contains(text)).count();
    let resumed = said("resuming the unfinished backfill");
    let redone = said("redoing the unfinished backfill");
    eprintln!("restarts: {resumed} resumed, {redone} redid");
    assert!(
        resumed >= 2,
        "the restarts after kills 2 and 3 did not resume; logs:\n{}",
        logs.join("\n----\n")
    );
    let record = env
        .db
        .query_one(
            "SELECT state, attempts FROM walbox_backfill WHERE slot_name = $1",
            &[&env.name],
        )
        .await
        .unwrap();
    assert_eq!(record.get::<_, String>(0), "done");
    eprintln!("attempts recorded: {}", record.get::<_, i32>(1));
}

/// What a delivery carries, less what says where it came from (the WAL position headers of a
/// live event, `x-backfill` of a re-sent one).
fn contract(delivery: &Delivery) -> String {
    let mut properties = delivery.properties.clone();
    let headers: std::collections::BTreeMap<String, String> = properties
        .headers()
        .as_ref()
        .map(|headers| {
            headers
                .inner()
                .iter()
                .filter(|(name, _)| {
                    !["x-commit-lsn", "x-xid", "x-backfill"].contains(&name.as_str())
                })
                .map(|(name, value)| (name.to_string(), format!("{value:?}")))
                .collect()
        })
        .unwrap_or_default();
    properties = properties.with_headers(Default::default());
    format!(
        "exchange={} routing_key={} body={} properties={properties:?} headers={headers:?}",
        delivery.exchange,
        delivery.routing_key,
        String::from_utf8_lossy(&delivery.data)
    )
}

/// `walbox backfill` re-sends a row as the very message it was live (same message_id, body,
/// properties and headers), marked `x-backfill: true` instead of the WAL position; the dry run
/// counts and sends nothing.
#[tokio::test]
async fn a_resent_row_is_the_message_it_was_live() {
    for body in ["raw", "cloudevents"] {
        let mut env = TestEnv::new("bf_resend").await;
        let mut consumer = env.queue("all", "#").await;
        let mapping = ["--body", body, "--header", "x-tenant={aggregate_id}"];
        let run = env.spawn_run(&mapping);
        wait_streaming(&mut env, run).await;
        env.db
            .batch_execute(
                "INSERT INTO outbox (aggregate_type, aggregate_id, event_type, payload, headers) \
                 VALUES ('order', 'o-1', 'created', '{\"total\": 12.5, \"lines\": [1, 2]}', \
                 '{\"trace_id\": \"t-9\", \"attempt\": 3, \"vip\": true, \"nested\": {\"a\": 1}}'), \
                 ('order', 'o-1', 'paid', '\"caf\u{e9}\"', NULL); \
                 INSERT INTO outbox (aggregate_type, aggregate_id, event_type, payload) \
                 VALUES ('invoice', 'i-7', 'issued', '[]')",
            )
            .await
            .unwrap();
        let live = receive(&mut consumer, 3, WAIT).await;
        assert_eq!(live.len(), 3, "log:\n{}", env.run_log(run));
        assert_eq!(env.terminate(run).code(), Some(0));

        let mut resend: Vec<&str> = vec!["--where", "aggregate_type IN ('order', 'invoice')"];
        resend.extend(mapping);
        let mut dry = resend.clone();
        dry.push("--dry-run");
        let output = env.walbox("backfill", &dry);
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        assert!(stdout.contains("would re-send 3 rows"), "{stdout}");
        assert!(
            receive_any(&mut consumer, Duration::from_secs(1))
                .await
                .is_empty()
        );

        let output = env.walbox("backfill", &resend);
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        let again = receive(&mut consumer, 3, WAIT).await;
        assert_eq!(again.len(), 3);
        for again in &again {
            // Rows of one transaction share created_at: the re-send orders them by id.
            let live = live
                .iter()
                .find(|live| message_id(live) == message_id(again))
                .expect("a re-sent row that was sent live");
            assert!(!is_backfilled(live) && header_text(live, "x-commit-lsn").is_some());
            assert!(is_backfilled(again) && header_text(again, "x-commit-lsn").is_none());
            assert_eq!(contract(live), contract(again), "--body {body}");
        }
    }
}

/// SIGTERM during the backfill: walbox stops within the grace (exit 0) with the progress
/// recorded, and the next start resumes after the last confirmed row; nothing is lost.
#[tokio::test]
async fn a_backfill_stopped_by_sigterm_resumes_on_the_next_start() {
    let mut env = TestEnv::new("bf_term").await;
    let mut consumer = env.queue_with("all", "#", true).await;
    let owed = insert_many(&env, 100_000, 0).await;
    let args = ["--backfill-where", "true", "--shutdown-grace", "5"];
    let run = env.spawn_run(&args);
    // While it sends: its metrics, and ready.
    assert!(
        wait_progress(&env, 1, WAIT).await,
        "log:\n{}",
        env.run_log(run)
    );
    let address = http::served_address(&env, run, WAIT).await;
    let (_, scrape) = http::get(&address, "/metrics").await.expect("a scrape");
    assert_eq!(http::sample(&scrape, "walbox_backfill_running"), Some(1.0));
    assert_eq!(
        http::sample(&scrape, "walbox_backfill_rows_expected"),
        Some(owed.len() as f64)
    );
    assert!(http::sample(&scrape, "walbox_backfill_rows_confirmed").is_some_and(|rows| rows > 0.0));
    assert_eq!(
        http::sample(&scrape, "walbox_state{state=\"backfilling\"}"),
        Some(1.0)
    );
    assert_eq!(
        http::get(&address, "/readyz").await.map(|(code, _)| code),
        Some(200)
    );
    assert!(
        wait_progress(&env, owed.len() as i64 / 40, WAIT).await,
        "the backfill never got a fortieth of the way; log:\n{}",
        env.run_log(run)
    );
    let asked = Instant::now();
    let status = env.terminate(run);
    let took = asked.elapsed();
    assert_eq!(status.code(), Some(0), "log:\n{}", env.run_log(run));
    assert!(took < Duration::from_secs(5 + 4), "stopped in {took:?}");
    let record = env
        .db
        .query_one(
            "SELECT state, rows_confirmed FROM walbox_backfill WHERE slot_name = $1",
            &[&env.name],
        )
        .await
        .unwrap();
    assert_eq!(record.get::<_, String>(0), "sending");
    let confirmed: i64 = record.get(1);
    assert!(confirmed > 0);
    let again = env.spawn_run(&args);
    let deadline = Instant::now() + WAIT * 5;
    while record_state(&env).await.as_deref() != Some("done") {
        assert!(Instant::now() < deadline, "log:\n{}", env.run_log(again));
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let received = receive_unacked(&mut consumer, usize::MAX, Duration::from_secs(3)).await;
    let ids: HashSet<String> = received.iter().map(message_id).collect();
    let lost = owed.iter().filter(|id| !ids.contains(*id)).count();
    eprintln!(
        "backfill SIGTERM: stopped in {took:?} with {confirmed} of {} confirmed; {} delivered, \
         {} duplicates, {lost} lost",
        owed.len(),
        received.len(),
        received.len() - ids.len()
    );
    assert_eq!(lost, 0);
    assert!(
        env.run_log(again)
            .contains("resuming the unfinished backfill")
    );
}

/// Under a preset whose framework drops what nobody subscribes to (`--unroutable drop`), a
/// backfilled row of an unsubscribed type is let go and the backfill finishes; a subscribed
/// type's rows arrive.
#[tokio::test]
async fn an_unroutable_row_is_dropped_as_the_live_relay_drops_it() {
    let mut env = TestEnv::new("bf_drop").await;
    let namespace = format!("{}.Contracts", env.name);
    for (event_type, count) in [("Unsubscribed", 3), ("Subscribed", 2)] {
        for n in 0..count {
            env.db
                .execute(
                    "INSERT INTO outbox (aggregate_type, aggregate_id, event_type, payload) \
                     VALUES ('order', $1, $2, '{}')",
                    &[&format!("a-{n}"), &format!("{namespace}.{event_type}")],
                )
                .await
                .unwrap();
        }
    }
    // The subscriber's exchange, as MassTransit declares it, with a queue.
    let exchange = format!("{namespace}:Subscribed");
    lapin_fanout(&env, &exchange).await;
    env.delete_exchange_at_cleanup(&exchange);
    env.delete_exchange_at_cleanup(&format!("{namespace}:Unsubscribed"));
    let mut consumer = consume_bound(
        &env.channel,
        &exchange,
        &format!("{}_q", env.name),
        "",
        false,
    )
    .await;
    let mut args = env.args();
    let at = args.iter().position(|arg| arg == "--exchange").unwrap();
    args.drain(at..at + 2);
    let run = env.spawn_run_with(
        args,
        &["--preset", "masstransit", "--backfill-where", "true"],
    );
    let deadline = Instant::now() + WAIT;
    while record_state(&env).await.as_deref() != Some("done") {
        assert!(Instant::now() < deadline, "log:\n{}", env.run_log(run));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let deliveries = receive(&mut consumer, 2, WAIT).await;
    assert_eq!(deliveries.len(), 2);
    assert!(deliveries.iter().all(is_backfilled));
    assert!(
        receive_any(&mut consumer, Duration::from_secs(1))
            .await
            .is_empty()
    );
    let (_, confirmed) = record_progress(&env).await;
    assert_eq!(confirmed, 5, "the three dropped rows count as through");
    assert!(
        env.run_log(run)
            .contains("dropping a backfilled row no queue takes")
    );
}

async fn lapin_fanout(env: &TestEnv, name: &str) {
    env.channel
        .exchange_declare(
            name.into(),
            lapin::ExchangeKind::Fanout,
            lapin::options::ExchangeDeclareOptions {
                durable: true,
                ..Default::default()
            },
            Default::default(),
        )
        .await
        .expect("declare the subscriber's exchange");
}

/// `walbox setup --backfill-where …` makes the whole cut-over before it returns (slot, rows
/// sent, record done); the `walbox run` after it relays from the slot and sends nothing again.
#[tokio::test]
async fn setup_with_a_backfill_does_the_cut_over() {
    let mut env = TestEnv::new("bf_setup").await;
    let mut consumer = env.queue("all", "#").await;
    let owed = insert_rows(&env, 5, |_| false).await;
    let output = env.walbox("setup", &["--backfill-where", "true"]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(record_state(&env).await.as_deref(), Some("done"));
    let sent = receive(&mut consumer, owed.len(), WAIT).await;
    assert_eq!(sent.iter().map(message_id).collect::<Vec<_>>(), owed);
    let run = env.spawn_run(&["--backfill-where", "true"]);
    wait_streaming(&mut env, run).await;
    let after = insert_rows(&env, 2, |_| false).await;
    let live = receive(&mut consumer, 2, WAIT).await;
    assert_eq!(live.iter().map(message_id).collect::<Vec<_>>(), after);
    assert!(live.iter().all(|d| !is_backfilled(d)));
    assert!(
        receive_any(&mut consumer, Duration::from_secs(1))
            .await
            .is_empty()
    );
    assert!(
        env.run_log(run)
            .contains("the slot exists, so there is no cut-over backfill")
    );
}

/// Drops a role on the test servers after the TestEnv (declared before it) dropped the
/// database holding its grants.
struct RoleGuard(String);

impl Drop for RoleGuard {
    fn drop(&mut self) {
        let _ = std::process::Command::new("psql")
            .args(["-h", PG_HOST, "-p", &pg_port().to_string()])
            .args(["-U", "postgres", "-d", "postgres"])
            .args(["-c", &format!("DROP ROLE IF EXISTS \"{}\"", self.0)])
            .stdin(std::process::Stdio::null())
            .output();
    }
}

/// A cut-over stopped mid-way by a walbox running as one role (the table's owner, as `walbox
/// setup --backfill` often is), then `walbox run` without the flags as a least-privilege role
/// that may not read the record table: it cannot tell whether the slot's cut-over is over, so
/// it stops naming the GRANT instead of relaying from the slot; once granted, it finishes the
/// backfill and nothing is lost.
#[tokio::test]
async fn a_role_that_may_not_read_the_record_does_not_relay_past_an_unfinished_cut_over() {
    let role = RoleGuard(format!("wbt_bfrole_{}", std::process::id()));
    let mut env = TestEnv::new("bf_role").await;
    let mut consumer = env.queue_with("all", "#", true).await;
    let owed = insert_many(&env, 60_000, 0).await;
    let args = ["--backfill-where", "true", "--shutdown-grace", "5"];
    let first = env.spawn_run(&args);
    assert!(
        wait_progress(&env, 1, WAIT).await,
        "log:\n{}",
        env.run_log(first)
    );
    assert_eq!(env.terminate(first).code(), Some(0));
    let (_, confirmed) = record_progress(&env).await;
    assert_eq!(record_state(&env).await.as_deref(), Some("sending"));
    let consistent: String = env
        .db
        .query_one(
            "SELECT consistent_lsn::text FROM walbox_backfill WHERE slot_name = $1",
            &[&env.name],
        )
        .await
        .unwrap()
        .get(0);
    // The least-privilege role of sql/roles.sql without `-v backfill=on`.
    env.db
        .batch_execute(&format!(
            "CREATE ROLE {r} LOGIN REPLICATION; GRANT CONNECT ON DATABASE {db} TO {r}; \
             GRANT USAGE ON SCHEMA public TO {r}; GRANT SELECT ON outbox TO {r}",
            r = role.0,
            db = env.name
        ))
        .await
        .unwrap();
    let url = format!("postgres://{}@{PG_HOST}:{}/{}", role.0, pg_port(), env.name);
    let relay = env.spawn_run_with(env.args_with("--postgres-url", &url), &[]);
    let after = insert_rows(&env, 3, |_| false).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    while env.try_wait(relay).is_none() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let exited = env.try_wait(relay);
    let received = receive_unacked(&mut consumer, usize::MAX, Duration::from_secs(3)).await;
    let ids: HashSet<String> = received.iter().map(message_id).collect();
    let lost_owed = owed.iter().filter(|id| !ids.contains(*id)).count();
    let live = after.iter().filter(|id| ids.contains(*id)).count();
    let slot = env.slot_confirmed().await;
    eprintln!(
        "unreadable record: first run confirmed {confirmed} of {} (consistent point \
         {consistent}); the other role's run: exited {exited:?}, {live} of {} live events \
         delivered, {lost_owed} owed rows not delivered, slot confirmed {slot:?}",
        owed.len(),
        after.len()
    );
    assert_eq!(
        exited.and_then(|status| status.code()),
        Some(1),
        "log:\n{}",
        env.run_log(relay)
    );
    assert!(
        env.run_log(relay).contains("GRANT SELECT"),
        "log:\n{}",
        env.run_log(relay)
    );
    assert_eq!(live, 0, "nothing relayed from the slot");
    assert_eq!(slot.map(|lsn| lsn.to_string()), Some(consistent));
    // Granted as sql/roles.sql -v backfill=on does: the same role finishes the cut-over.
    env.db
        .batch_execute(&format!(
            "GRANT SELECT, INSERT, UPDATE, DELETE ON walbox_backfill TO {}",
            role.0
        ))
        .await
        .unwrap();
    let again = env.spawn_run_with(env.args_with("--postgres-url", &url), &[]);
    let deadline = Instant::now() + WAIT * 3;
    while record_state(&env).await.as_deref() != Some("done") {
        assert!(Instant::now() < deadline, "log:\n{}", env.run_log(again));
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let mut all = ids;
    let deadline = Instant::now() + WAIT;
    while !after.iter().all(|id| all.contains(id)) && Instant::now() < deadline {
        let more = receive_unacked(&mut consumer, usize::MAX, Duration::from_secs(1)).await;
        all.extend(more.iter().map(message_id));
    }
    let lost = owed
        .iter()
        .chain(&after)
        .filter(|id| !all.contains(*id))
        .count();
    eprintln!(
        "after the GRANT: {lost} of {} lost",
        owed.len() + after.len()
    );
    assert_eq!(lost, 0, "log:\n{}", env.run_log(again));
}

/// Whether the test's slot is listed and its walsender waits on a transaction's lock (making
/// the slot, it waits for the transactions running when it began).
async fn slot_waits_on_a_lock(env: &TestEnv) -> bool {
    env.db
        .query_opt(
            "SELECT 1 FROM pg_replication_slots s JOIN pg_stat_activity a ON a.pid = \
             s.active_pid WHERE s.slot_name = $1 AND a.wait_event_type = 'Lock'",
            &[&env.name],
        )
        .await
        .unwrap()
        .is_some()
}

/// A cut-over whose walbox was killed while CREATE_REPLICATION_SLOT waited for a consistent
/// point (a transaction was open), restarted while the slot is still being made: the dead
/// walbox's walsender waits on the transaction, not on its client, and makes the slot once
/// the transaction ends. The restart must not take that slot for made (redo the backfill in a
/// snapshot older than the slot's consistent point, then stream from it). Every row committed
/// before, during and after arrives.
#[tokio::test]
async fn a_slot_still_being_made_is_not_taken_for_made() {
    let mut env = TestEnv::new("bf_creating").await;
    let mut consumer = env.queue_with("all", "#", true).await;
    let owed = insert_rows(&env, 5, |_| false).await;
    let blocker = pg_connect(&env.postgres_url()).await;
    blocker
        .batch_execute("BEGIN; SELECT txid_current()")
        .await
        .unwrap();
    let args = ["--backfill-where", "true"];
    let first = env.spawn_run(&args);
    let deadline = Instant::now() + WAIT;
    while !slot_waits_on_a_lock(&env).await {
        assert!(Instant::now() < deadline, "log:\n{}", env.run_log(first));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    env.kill(first);
    assert_eq!(record_state(&env).await.as_deref(), Some("creating"));
    let stop = Arc::new(AtomicBool::new(false));
    let committed = Arc::new(Mutex::new(Vec::new()));
    let writer = tokio::spawn(write_until(
        env.postgres_url(),
        Arc::clone(&stop),
        Arc::clone(&committed),
    ));
    let again = env.spawn_run(&args);
    tokio::time::sleep(Duration::from_secs(4)).await;
    blocker.batch_execute("COMMIT").await.unwrap();
    tokio::time::sleep(Duration::from_secs(4)).await;
    stop.store(true, Ordering::Relaxed);
    writer.await.unwrap();
    let written = committed.lock().unwrap().clone();
    let expected: Vec<&String> = owed.iter().chain(&written).collect();
    let mut ids = HashSet::new();
    let deadline = Instant::now() + WAIT;
    while !expected.iter().all(|id| ids.contains(*id)) && Instant::now() < deadline {
        let more = receive_unacked(&mut consumer, usize::MAX, Duration::from_secs(1)).await;
        ids.extend(more.iter().map(message_id));
    }
    let lost = expected.iter().filter(|id| !ids.contains(**id)).count();
    eprintln!(
        "slot still being made: {} committed ({} before, {} while and \
         after), {} delivered distinct, {lost} lost",
        expected.len(),
        owed.len(),
        written.len(),
        ids.len()
    );
    assert_eq!(lost, 0, "log:\n{}", env.run_log(again));
}
