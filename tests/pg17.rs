//! PostgreSQL 17 specifics on the trixie primary of scripts/trixie-servers.sh, each a counting
//! test: the replay window's bookmark slot is a failover slot that the standby keeps a
//! synchronized copy of (#19 item 10), the cut-over backfill through
//! `CREATE_REPLICATION_SLOT … (SNAPSHOT 'export', FAILOVER true)` (#20), and logical decoding
//! messages (#23) — committed against delivered, by message id.
//!
//! They need the private servers, so they are ignored by a plain `cargo test`; scripts/test.sh
//! runs them in its high-availability block with `WALBOX_TEST_PG_PORT` pointed at the trixie
//! primary and `WALBOX_TEST_AMQP_PORT` at the first RabbitMQ 4.0 node (the usual test world of
//! tests/common then lives there: its own database, slot, exchange, cleaned up after).

mod common;

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use common::trixie::{primary_port, servers, standby_port};
use common::*;
use lapin::message::Delivery;
use lapin::types::AMQPValue;

const WAIT: Duration = Duration::from_secs(60);

/// The test world on the trixie primary, with the standby streaming from it. A pair left
/// promoted or stopped by an earlier suite is made afresh first.
async fn on_postgres_17(test: &str) -> TestEnv {
    assert_eq!(
        pg_port(),
        primary_port(),
        "set WALBOX_TEST_PG_PORT to the trixie primary (WALBOX_HA_PORT_BASE + 432) and \
         WALBOX_TEST_AMQP_PORT to a node of its cluster (+ 672), as scripts/test.sh does"
    );
    if !(in_recovery(primary_port()).await == Some(false)
        && in_recovery(standby_port()).await == Some(true))
    {
        servers(&["pg-reset"]);
    }
    let env = TestEnv::new(test).await;
    let version: i32 = env
        .db
        .query_one("SELECT current_setting('server_version_num')::int", &[])
        .await
        .unwrap()
        .get(0);
    assert!(version >= 170_000, "PostgreSQL {version} is not 17");
    env
}

/// Whether the server on `port` is in recovery; None when it does not answer.
async fn in_recovery(port: u16) -> Option<bool> {
    let url = format!("postgres://postgres@127.0.0.1:{port}/postgres");
    let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .ok()?;
    tokio::spawn(connection);
    let row = client
        .query_one("SELECT pg_is_in_recovery()", &[])
        .await
        .ok()?;
    Some(row.get(0))
}

/// The slot's failover flag on the primary; None while it does not exist.
async fn failover_flag(env: &TestEnv, slot: &str) -> Option<bool> {
    env.db
        .query_opt(
            "SELECT failover FROM pg_replication_slots WHERE slot_name = $1",
            &[&slot],
        )
        .await
        .unwrap()
        .map(|row| row.get(0))
}

/// Wait until `slot` exists on the primary with failover on; what it was last seen as.
async fn wait_failover(
    env: &mut TestEnv,
    run: usize,
    slot: &str,
    within: Duration,
) -> Option<bool> {
    let deadline = Instant::now() + within;
    loop {
        let flag = failover_flag(env, slot).await;
        if flag == Some(true) || Instant::now() >= deadline {
            return flag;
        }
        if let Some(status) = env.try_wait(run) {
            panic!("walbox exited ({status}); log:\n{}", env.run_log(run));
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Write (events, and a running-transactions record so the slots' catalog xmin can move) until
/// the standby holds `slot` as synchronized and not temporary; the seconds it took.
async fn wait_synced_on_standby(env: &TestEnv, slot: &str) -> f64 {
    let started = Instant::now();
    let standby = pg_connect(&format!(
        "postgres://postgres@127.0.0.1:{}/postgres",
        standby_port()
    ))
    .await;
    loop {
        let synced: Option<bool> = standby
            .query_opt(
                "SELECT synced AND NOT temporary FROM pg_replication_slots WHERE slot_name = $1",
                &[&slot],
            )
            .await
            .unwrap()
            .map(|row| row.get(0));
        if synced == Some(true) {
            return started.elapsed().as_secs_f64();
        }
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "the standby's copy of {slot} is {synced:?} (None: none) after 120 s"
        );
        for n in 0..50 {
            env.insert("order", "filler", &format!(r#"{{"f": {n}}}"#))
                .await;
        }
        env.db
            .execute("SELECT pg_log_standby_snapshot()", &[])
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Committed ids against delivered ids: (lost, duplicated deliveries).
fn tally(committed: &HashSet<String>, delivered: &[String]) -> (usize, usize) {
    let mut seen: HashMap<&str, usize> = HashMap::new();
    for id in delivered {
        *seen.entry(id.as_str()).or_default() += 1;
    }
    let lost = committed
        .iter()
        .filter(|id| !seen.contains_key(id.as_str()))
        .count();
    let duplicated = seen.values().map(|n| n - 1).sum();
    (lost, duplicated)
}

async fn table_ids(env: &TestEnv) -> HashSet<String> {
    env.db
        .query("SELECT id::text FROM outbox", &[])
        .await
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect()
}

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

/// #19 item 10: `pg_copy_logical_replication_slot` makes the bookmark without the failover
/// flag; walbox turns it on, so the standby keeps the window and `status` says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs scripts/trixie-servers.sh (scripts/test.sh runs it)"]
async fn the_replay_windows_bookmark_is_synchronized_to_the_standby() {
    let mut env = on_postgres_17("p17bm").await;
    let mut consumer = env.queue("all", "#").await;
    // A small window, so that the bookmark moves during the test: the standby keeps a freshly
    // synchronized slot temporary until the primary's copy passes the position (WAL and
    // catalog xmin) the standby reserved for it, and a bookmark far behind never does.
    let run = env.spawn_run(&["--replay-window", "64kB"]);
    env.wait_slot_active(WAIT).await;
    let mut committed = HashSet::new();
    for n in 0..20 {
        committed.insert(
            env.insert("order", "created", &format!(r#"{{"n": {n}}}"#))
                .await,
        );
    }
    let delivered: Vec<String> = receive(&mut consumer, 20, WAIT)
        .await
        .iter()
        .map(message_id)
        .collect();
    let (lost, duplicated) = tally(&committed, &delivered);
    let bookmark = format!("{}_bookmark", env.name);
    let live = failover_flag(&env, &env.name).await;
    let flag = wait_failover(&mut env, run, &bookmark, Duration::from_secs(30)).await;
    println!(
        "bookmark: committed {}, delivered {}, lost {lost}, duplicated {duplicated}; live slot \
         failover {live:?}, bookmark failover {flag:?}",
        committed.len(),
        delivered.len()
    );
    assert_eq!((lost, duplicated), (0, 0));
    assert_eq!(live, Some(true), "the live slot is a failover slot");
    assert_eq!(flag, Some(true), "log:\n{}", env.run_log(run));
    // The standby holds a synchronized, persistent copy of the bookmark: a failover keeps it.
    let synced_in = wait_synced_on_standby(&env, &bookmark).await;
    println!("bookmark: synchronized to the standby in {synced_in:.1} s");
    servers(&["pg-wait-synced", &bookmark, "10"]);
    let status = env.walbox("status", &[]);
    let text = String::from_utf8_lossy(&status.stdout);
    assert!(status.status.success(), "{text}");
    let window = text
        .split_once("replay window:")
        .map(|(_, rest)| rest)
        .unwrap_or_default();
    assert!(
        window.contains("failover:        yes"),
        "status does not say the window survives a failover:\n{text}"
    );
}

/// #20 on PostgreSQL 17: the cut-over backfill, its slot made with FAILOVER in the same
/// command that exports the snapshot, with a writer committing while it runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs scripts/trixie-servers.sh (scripts/test.sh runs it)"]
async fn the_cut_over_backfill_loses_nothing_and_its_slot_fails_over() {
    let mut env = on_postgres_17("p17bf").await;
    const BEFORE: i64 = 500;
    const DURING: usize = 200;
    env.db
        .execute(
            "INSERT INTO outbox (aggregate_type, aggregate_id, event_type, payload) \
             SELECT 'order', 'o-' || n, 'created', jsonb_build_object('n', n) \
             FROM generate_series(1, $1::bigint) AS n",
            &[&BEFORE],
        )
        .await
        .unwrap();
    let before = table_ids(&env).await;
    let mut consumer = env.queue("all", "#").await;
    let started = Instant::now();
    let run = env.spawn_run(&["--backfill-where", "true"]);
    // Rows committed while the slot is made and the backfill reads: each must come once,
    // either from the snapshot or from the slot.
    for n in 0..DURING {
        env.insert("order", "during", &format!(r#"{{"d": {n}}}"#))
            .await;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let committed = table_ids(&env).await;
    let deliveries = receive(&mut consumer, committed.len(), WAIT).await;
    let extra = receive_any(&mut consumer, Duration::from_secs(2)).await;
    let delivered: Vec<String> = deliveries.iter().chain(&extra).map(message_id).collect();
    let backfilled: HashSet<String> = deliveries
        .iter()
        .chain(&extra)
        .filter(|delivery| is_backfilled(delivery))
        .map(message_id)
        .collect();
    let (lost, duplicated) = tally(&committed, &delivered);
    let flag = failover_flag(&env, &env.name).await;
    println!(
        "backfill: committed {} ({BEFORE} before the slot), delivered {} ({} backfilled), lost \
         {lost}, duplicated {duplicated}, in {:.1} s; slot failover {flag:?}",
        committed.len(),
        delivered.len(),
        backfilled.len(),
        started.elapsed().as_secs_f64()
    );
    assert_eq!((lost, duplicated), (0, 0), "log:\n{}", env.run_log(run));
    assert!(
        before.is_subset(&backfilled),
        "a row committed before the slot came live, not from the snapshot"
    );
    assert_eq!(flag, Some(true), "the cut-over's slot is a failover slot");
    servers(&["pg-wait-synced", &env.name, "60"]);
}

/// #23 on PostgreSQL 17: transactional and non-transactional logical decoding messages beside
/// rows; only the listed prefix goes out, each committed one once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs scripts/trixie-servers.sh (scripts/test.sh runs it)"]
async fn logical_messages_lose_nothing() {
    let mut env = on_postgres_17("p17msg").await;
    let mut consumer = env.queue("all", "#").await;
    let run = env.spawn_run(&["--messages", "ev"]);
    env.wait_slot_active(WAIT).await;
    const ROUNDS: usize = 50;
    let mut committed = HashSet::new();
    for n in 0..ROUNDS {
        // A transaction with a row, a listed and an unlisted message; a rolled-back one; a
        // non-transactional message between transactions.
        env.db.batch_execute("BEGIN").await.unwrap();
        committed.insert(
            env.insert("order", "created", &format!(r#"{{"r": {n}}}"#))
                .await,
        );
        emit(&env, true, "ev", &format!(r#"{{"t": {n}}}"#)).await;
        emit(&env, true, "other", &format!(r#"{{"o": {n}}}"#)).await;
        env.db.batch_execute("COMMIT").await.unwrap();
        env.db.batch_execute("BEGIN").await.unwrap();
        emit(&env, true, "ev", r#"{"rolled": "back"}"#).await;
        env.db.batch_execute("ROLLBACK").await.unwrap();
        emit(&env, false, "ev", &format!(r#"{{"l": {n}}}"#)).await;
        committed.insert(serde_json::json!({ "t": n }).to_string());
        committed.insert(serde_json::json!({ "l": n }).to_string());
    }
    let deliveries = receive(&mut consumer, committed.len(), WAIT).await;
    let extra = receive_any(&mut consumer, Duration::from_secs(2)).await;
    // A row by its id, a message by its content (its body, as JSON).
    let delivered: Vec<String> = deliveries
        .iter()
        .chain(&extra)
        .map(|delivery| {
            let body: serde_json::Value =
                serde_json::from_slice(&delivery.data).unwrap_or_default();
            if body.get("r").is_some() {
                message_id(delivery)
            } else {
                body.to_string()
            }
        })
        .collect();
    let (lost, duplicated) = tally(&committed, &delivered);
    let unexpected: Vec<&String> = delivered
        .iter()
        .filter(|id| !committed.contains(*id))
        .collect();
    println!(
        "messages: committed {} ({ROUNDS} rows, {ROUNDS} transactional, {ROUNDS} \
         non-transactional), delivered {}, lost {lost}, duplicated {duplicated}, unexpected {}",
        committed.len(),
        delivered.len(),
        unexpected.len()
    );
    assert_eq!((lost, duplicated), (0, 0), "log:\n{}", env.run_log(run));
    assert!(unexpected.is_empty(), "{unexpected:?}");
}

async fn emit(env: &TestEnv, transactional: bool, prefix: &str, content: &str) {
    env.db
        .execute(
            "SELECT pg_logical_emit_message($1, $2, $3::text)",
            &[&transactional, &prefix, &content],
        )
        .await
        .expect("emit a logical message");
}
