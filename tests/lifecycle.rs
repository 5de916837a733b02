//! The outbox table's whole life on a real PostgreSQL and RabbitMQ (issue #19): a partitioned
//! outbox, a table dropped and created again, a publication that does not publish inserts or
//! filters rows, and changes to the publication or the table while walbox runs.
//!
//! Every test counts: the rows committed against the messages delivered, and where walbox must
//! stop, that it stopped with a definite error (exit 1) and that the slot was not acknowledged
//! past the first row it did not deliver.

mod common;

use std::collections::HashSet;
use std::process::ExitStatus;
use std::time::{Duration, Instant};

use common::*;
use lapin::Consumer;
use walbox::lsn::Lsn;

const WAIT: Duration = Duration::from_secs(30);

/// sql/outbox.sql's columns, partitioned by created_at (the key must be in the primary key).
const PARTITIONED_OUTBOX: &str = "DROP TABLE outbox; \
    CREATE TABLE outbox ( \
      id uuid NOT NULL DEFAULT gen_random_uuid(), \
      aggregate_type text NOT NULL, aggregate_id text NOT NULL, event_type text NOT NULL, \
      payload jsonb NOT NULL, headers jsonb, created_at timestamptz NOT NULL DEFAULT now(), \
      PRIMARY KEY (id, created_at)) PARTITION BY RANGE (created_at); \
    CREATE TABLE outbox_2024 PARTITION OF outbox FOR VALUES FROM ('2024-01-01') TO ('2025-01-01'); \
    CREATE TABLE outbox_2025 PARTITION OF outbox FOR VALUES FROM ('2025-01-01') TO ('2026-01-01');";

/// Insert `count` events, each in its own transaction, with `created_at` = `at`; their ids.
async fn insert_at(env: &TestEnv, count: usize, at: &str) -> Vec<String> {
    let mut ids = Vec::with_capacity(count);
    for n in 0..count {
        let row = env
            .db
            .query_one(
                "INSERT INTO outbox (aggregate_type, aggregate_id, event_type, payload, created_at) \
                 VALUES ('order', 'o-1', 'created', jsonb_build_object('n', $1::int), $2::text::timestamptz) \
                 RETURNING id::text",
                &[&(n as i32), &at],
            )
            .await
            .expect("insert");
        ids.push(row.get(0));
    }
    ids
}

/// Insert `count` events now, each in its own transaction; their ids.
async fn insert_now(env: &TestEnv, count: usize) -> Vec<String> {
    let mut ids = Vec::with_capacity(count);
    for _ in 0..count {
        ids.push(env.insert("order", "created", r#"{"n": 1}"#).await);
    }
    ids
}

/// Receive until every id in `expected` arrived or `within` ran out; the ids received.
async fn delivered(
    consumer: &mut Consumer,
    expected: &HashSet<String>,
    within: Duration,
) -> HashSet<String> {
    let deadline = Instant::now() + within;
    let mut seen = HashSet::new();
    while !expected.is_subset(&seen) && Instant::now() < deadline {
        let left = deadline.saturating_duration_since(Instant::now());
        for delivery in receive(consumer, 1, left.min(Duration::from_millis(500))).await {
            seen.insert(message_id(&delivery));
        }
    }
    seen
}

/// Wait until walbox `run` exits, at most `within`.
async fn exited(env: &mut TestEnv, run: usize, within: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + within;
    loop {
        if let Some(status) = env.try_wait(run) {
            return Some(status);
        }
        if Instant::now() > deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Before/after numbers of one scenario, for the assertion messages.
fn tally(
    committed: &HashSet<String>,
    seen: &HashSet<String>,
    confirmed: Option<Lsn>,
    mark: Lsn,
) -> String {
    format!(
        "{} committed, {} of them delivered; slot confirmed_flush_lsn {}, WAL before the first \
         row {mark}",
        committed.len(),
        committed.intersection(seen).count(),
        confirmed.map_or("none".to_owned(), |lsn| lsn.to_string()),
    )
}

#[tokio::test]
async fn a_partitioned_outbox_is_relayed_while_partitions_come_and_go() {
    let mut env = TestEnv::new("lc_part").await;
    env.db.batch_execute(PARTITIONED_OUTBOX).await.unwrap();
    let mut consumer = env.queue("all", "#").await;
    let run = env.spawn_run(&[]);
    env.wait_slot_active(WAIT).await;
    let mark = env.current_wal_lsn().await;

    let mut committed: HashSet<String> = HashSet::new();
    committed.extend(insert_at(&env, 5, "2024-06-01 00:00:00+00").await);
    committed.extend(insert_at(&env, 5, "2025-06-01 00:00:00+00").await);
    // A new partition attached while walbox runs, then rows routed to it.
    env.db
        .batch_execute(
            "CREATE TABLE outbox_2026 (LIKE outbox INCLUDING DEFAULTS); \
             ALTER TABLE outbox ATTACH PARTITION outbox_2026 \
               FOR VALUES FROM ('2026-01-01') TO ('2027-01-01');",
        )
        .await
        .unwrap();
    committed.extend(insert_at(&env, 5, "2026-06-01 00:00:00+00").await);
    // The oldest partition detached and dropped (pruning old events), the next one dropped.
    env.db
        .batch_execute("ALTER TABLE outbox DETACH PARTITION outbox_2024; DROP TABLE outbox_2024;")
        .await
        .unwrap();
    committed.extend(insert_at(&env, 5, "2025-07-01 00:00:00+00").await);
    env.db
        .batch_execute("DROP TABLE outbox_2025")
        .await
        .unwrap();
    committed.extend(insert_at(&env, 5, "2026-07-01 00:00:00+00").await);
    let after = env.current_wal_lsn().await;

    let seen = delivered(&mut consumer, &committed, WAIT).await;
    let confirmed = env.wait_confirmed(after, WAIT).await;
    assert!(
        committed.is_subset(&seen) && confirmed >= after,
        "{}; log:\n{}",
        tally(&committed, &seen, Some(confirmed), mark),
        env.run_log(run)
    );
    assert_eq!(seen.len(), committed.len(), "nothing else arrived");
}

#[tokio::test]
async fn an_outbox_dropped_and_created_again_stops_walbox_before_the_new_rows() {
    let mut env = TestEnv::new("lc_recreate").await;
    let mut consumer = env.queue("all", "#").await;
    let run = env.spawn_run(&[]);
    env.wait_slot_active(WAIT).await;
    let before: HashSet<String> = insert_now(&env, 3).await.into_iter().collect();
    let seen = delivered(&mut consumer, &before, WAIT).await;
    assert_eq!(seen, before, "log:\n{}", env.run_log(run));

    // An ORM migration rebuilds the table; the FOR TABLE publication loses it.
    env.db
        .batch_execute(&format!("DROP TABLE outbox; {OUTBOX_SQL}"))
        .await
        .unwrap();
    let mark = env.current_wal_lsn().await;
    let lost: HashSet<String> = insert_now(&env, 5).await.into_iter().collect();

    let status = exited(&mut env, run, Duration::from_secs(15)).await;
    let seen = delivered(&mut consumer, &lost, Duration::from_secs(1)).await;
    let confirmed = env.slot_confirmed().await;
    let numbers = tally(&lost, &seen, confirmed, mark);
    let log = env.run_log(run);
    assert_eq!(
        status.and_then(|status| status.code()),
        Some(1),
        "walbox must stop with a definite error; {numbers}; log:\n{log}"
    );
    assert!(
        confirmed.is_some_and(|confirmed| confirmed <= mark),
        "the slot passed rows walbox did not deliver: {numbers}"
    );
    assert!(
        log.contains("was dropped and created again"),
        "the error names what changed; log:\n{log}"
    );
}

#[tokio::test]
async fn a_publication_that_does_not_publish_inserts_is_refused() {
    let mut env = TestEnv::new("lc_noinsert").await;
    let mut consumer = env.queue("all", "#").await;
    env.db
        .batch_execute(&format!(
            "CREATE PUBLICATION {} FOR TABLE outbox WITH (publish = 'update')",
            env.name
        ))
        .await
        .unwrap();
    let run = env.spawn_run(&[]);
    let status = exited(&mut env, run, Duration::from_secs(5)).await;
    let mark = env.current_wal_lsn().await;
    let committed: HashSet<String> = insert_now(&env, 3).await.into_iter().collect();
    let seen = delivered(&mut consumer, &committed, Duration::from_secs(3)).await;
    let after = env.current_wal_lsn().await;
    let status = match status {
        Some(status) => Some(status),
        None => exited(&mut env, run, Duration::from_secs(2)).await,
    };
    let confirmed = env.slot_confirmed().await;
    let numbers = tally(&committed, &seen, confirmed, mark);
    let log = env.run_log(run);
    assert_eq!(
        status.and_then(|status| status.code()),
        Some(1),
        "walbox must refuse the publication; {numbers}; slot past them: {}; log:\n{log}",
        confirmed.is_some_and(|confirmed| confirmed >= after)
    );
    assert!(
        confirmed.is_none_or(|confirmed| confirmed <= mark),
        "{numbers}"
    );
    assert!(
        log.contains("publish = 'update, insert'"),
        "the error gives the statement that fixes it; log:\n{log}"
    );
}
