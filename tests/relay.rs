//! The relay end to end on a real PostgreSQL (wal_level=logical) and a real RabbitMQ.

mod common;

use std::collections::HashSet;
use std::time::Duration;

use common::*;
use lapin::types::{AMQPValue, ShortString};

const WAIT: Duration = Duration::from_secs(30);

#[tokio::test]
async fn delivers_each_event_with_every_property_and_header() {
    let mut env = TestEnv::new("contract").await;
    let mut consumer = env.queue("all", "#").await;
    let run = env.spawn_run(&[]);
    env.wait_slot_active(WAIT).await;

    let row = env
        .db
        .query_one(
            "INSERT INTO outbox (aggregate_type, aggregate_id, event_type, payload, headers, created_at) \
             VALUES ('order', 'o-42', 'created', '{\"total\": 12.5, \"items\": [1, 2]}', \
                     '{\"trace_id\": \"abc\", \"attempt\": 3, \"nested\": {\"k\": true}}', \
                     '2026-11-22 14:59:17.25+00') \
             RETURNING id::text, txid_current()::bigint, payload::text",
            &[],
        )
        .await
        .unwrap();
    let id: String = row.get(0);
    let xid: i64 = row.get(1);
    let payload: String = row.get(2);
    let after_commit = env.current_wal_lsn().await;

    let deliveries = receive(&mut consumer, 1, WAIT).await;
    assert_eq!(
        deliveries.len(),
        1,
        "event not delivered; log:\n{}",
        env.run_log(run)
    );
    let delivery = &deliveries[0];
    assert_eq!(delivery.routing_key.as_str(), "order.created");
    assert_eq!(delivery.exchange.as_str(), env.name);
    assert_eq!(
        String::from_utf8_lossy(&delivery.data),
        payload,
        "body is the payload unchanged"
    );
    let properties = &delivery.properties;
    assert_eq!(properties.delivery_mode(), &Some(2), "persistent");
    assert_eq!(
        properties.message_id().as_ref().map(ShortString::as_str),
        Some(id.as_str())
    );
    assert_eq!(
        properties.kind().as_ref().map(ShortString::as_str),
        Some("created")
    );
    assert_eq!(
        properties.content_type().as_ref().map(ShortString::as_str),
        Some("application/json")
    );
    assert_eq!(
        properties.app_id().as_ref().map(ShortString::as_str),
        Some("walbox")
    );
    assert_eq!(
        properties.timestamp(),
        &Some(1_795_359_557),
        "timestamp = created_at"
    );
    assert_eq!(header_text(delivery, "trace_id").as_deref(), Some("abc"));
    assert_eq!(
        properties
            .headers()
            .as_ref()
            .unwrap()
            .inner()
            .get("attempt"),
        Some(&AMQPValue::LongLongInt(3))
    );
    assert_eq!(
        header_text(delivery, "nested").as_deref(),
        Some(r#"{"k":true}"#)
    );
    assert_eq!(
        header_text(delivery, "x-aggregate-type").as_deref(),
        Some("order")
    );
    assert_eq!(
        header_text(delivery, "x-aggregate-id").as_deref(),
        Some("o-42")
    );
    assert_eq!(
        properties.headers().as_ref().unwrap().inner().get("x-xid"),
        Some(&AMQPValue::LongLongInt(xid))
    );
    let commit = commit_lsn(delivery);
    assert!(
        commit < after_commit,
        "x-commit-lsn {commit} must precede {after_commit}"
    );

    // The slot is acknowledged past the event once the broker confirmed it.
    let confirmed = env.wait_confirmed(after_commit, WAIT).await;
    assert!(
        confirmed > commit,
        "slot confirmed {confirmed}, event committed at {commit}"
    );

    let status = env.terminate(run);
    assert!(
        status.success(),
        "SIGTERM exits 0, got {status:?}; log:\n{}",
        env.run_log(run)
    );
    assert!(
        receive_any(&mut consumer, Duration::from_millis(500))
            .await
            .is_empty(),
        "no duplicates"
    );
}

#[tokio::test]
async fn concurrent_writers_are_delivered_in_commit_order() {
    let mut env = TestEnv::new("order").await;
    let mut consumer = env.queue("all", "#").await;
    let run = env.spawn_run(&[]);
    env.wait_slot_active(WAIT).await;

    const WRITERS: usize = 4;
    const TRANSACTIONS: usize = 40;
    let mut writers = Vec::new();
    for writer in 0..WRITERS {
        let url = env.postgres_url();
        writers.push(tokio::spawn(async move {
            let mut client = pg_connect(&url).await;
            let mut count = 0usize;
            for transaction in 0..TRANSACTIONS {
                let rows = 1 + (writer + transaction) % 7;
                let tx = client.transaction().await.unwrap();
                for row in 0..rows {
                    let payload = format!(
                        "{{\"writer\": {writer}, \"transaction\": {transaction}, \"row\": {row}}}"
                    );
                    tx.execute(
                        "INSERT INTO outbox (aggregate_type, aggregate_id, event_type, payload) \
                         VALUES ('w', $1, 'e', $2::text::jsonb)",
                        &[&format!("agg-{}", row % 3), &payload],
                    )
                    .await
                    .unwrap();
                }
                tx.commit().await.unwrap();
                count += rows;
            }
            count
        }));
    }
    let mut expected = 0;
    for writer in writers {
        expected += writer.await.unwrap();
    }
    let ids: HashSet<String> = env
        .db
        .query("SELECT id::text FROM outbox", &[])
        .await
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect();
    assert_eq!(ids.len(), expected);

    let deliveries = receive(&mut consumer, expected, WAIT).await;
    assert_eq!(
        deliveries.len(),
        expected,
        "lost events; log:\n{}",
        env.run_log(run)
    );
    let delivered: HashSet<String> = deliveries.iter().map(message_id).collect();
    assert_eq!(delivered, ids, "every committed id arrives");

    // Commit order across transactions, insert order within one.
    let mut previous: Option<(walbox::lsn::Lsn, i64)> = None;
    for delivery in &deliveries {
        let lsn = commit_lsn(delivery);
        let body: serde_json::Value = serde_json::from_slice(&delivery.data).unwrap();
        let row = body["row"].as_i64().unwrap();
        if let Some((previous_lsn, previous_row)) = previous {
            assert!(
                lsn >= previous_lsn,
                "commit order broken: {lsn} after {previous_lsn}"
            );
            if lsn == previous_lsn {
                assert_eq!(
                    row,
                    previous_row + 1,
                    "insert order broken inside a transaction"
                );
            } else {
                assert_eq!(row, 0, "a transaction's first event comes first");
            }
        }
        previous = Some((lsn, row));
    }
}

#[tokio::test]
async fn unconfirmed_events_are_never_acknowledged() {
    let mut env = TestEnv::new("unroutable").await;
    let run = env.spawn_run(&[]);
    env.wait_slot_active(WAIT).await;
    // Let the relay settle, so the idle position is acknowledged before the event.
    let idle = env.current_wal_lsn().await;
    env.wait_confirmed(idle, WAIT).await;

    // No queue is bound: the broker returns the message (mandatory) and walbox must hold it.
    let id = env.insert("nobody", "listens", "{\"n\": 1}").await;
    let commit_row = env
        .db
        .query_one("SELECT pg_current_wal_lsn()::text", &[])
        .await
        .unwrap();
    let after_insert: walbox::lsn::Lsn = commit_row.get::<_, &str>(0).parse().unwrap();
    tokio::time::sleep(Duration::from_secs(4)).await;
    let held = env.slot_confirmed().await.unwrap();
    assert!(
        held < after_insert,
        "slot confirmed {held} past the unroutable event (committed before {after_insert})"
    );
    // Meanwhile more traffic on another table must not move the slot past the held event.
    env.db
        .batch_execute(
            "CREATE TABLE noise (n int); INSERT INTO noise SELECT generate_series(1, 100)",
        )
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        env.slot_confirmed().await.unwrap() < after_insert,
        "idle acknowledgement skipped a held event"
    );
    let log = env.run_log(run);
    assert!(
        log.contains("unroutable"),
        "a warning names the reason; log:\n{log}"
    );

    // Bind a queue: the event arrives, then the slot moves past it.
    let mut consumer = env.queue("late", "#").await;
    let deliveries = receive(&mut consumer, 1, WAIT).await;
    assert_eq!(
        deliveries.iter().map(message_id).collect::<Vec<_>>(),
        vec![id],
        "log:\n{}",
        env.run_log(run)
    );
    let confirmed = env.wait_confirmed(after_insert, WAIT).await;
    assert!(
        confirmed >= after_insert,
        "slot never advanced after delivery: {confirmed}"
    );
}

#[tokio::test]
async fn idle_outbox_does_not_pin_wal_while_other_tables_change() {
    let mut env = TestEnv::new("idle").await;
    let _run = env.spawn_run(&[]);
    env.wait_slot_active(WAIT).await;
    env.db
        .batch_execute("CREATE TABLE busy (n int)")
        .await
        .unwrap();
    for _ in 0..20 {
        env.db
            .batch_execute("INSERT INTO busy SELECT generate_series(1, 500)")
            .await
            .unwrap();
    }
    let target = env.current_wal_lsn().await;
    let confirmed = env.wait_confirmed(target, WAIT).await;
    assert!(
        confirmed >= target,
        "slot stuck at {confirmed} while the server is at {target}"
    );
}

#[tokio::test]
async fn insert_then_delete_in_one_transaction_is_relayed_and_changes_are_ignored() {
    let mut env = TestEnv::new("delete").await;
    let mut consumer = env.queue("all", "#").await;
    let run = env.spawn_run(&[]);
    env.wait_slot_active(WAIT).await;
    env.db
        .batch_execute(
            "BEGIN; \
             INSERT INTO outbox (id, aggregate_type, aggregate_id, event_type, payload) \
               VALUES ('00000000-0000-4000-8000-00000000000a', 'cart', 'c1', 'emptied', '{}'); \
             DELETE FROM outbox WHERE id = '00000000-0000-4000-8000-00000000000a'; \
             COMMIT; \
             INSERT INTO outbox (id, aggregate_type, aggregate_id, event_type, payload) \
               VALUES ('00000000-0000-4000-8000-00000000000b', 'cart', 'c2', 'kept', '{}'); \
             UPDATE outbox SET event_type = 'changed'; \
             DELETE FROM outbox; \
             TRUNCATE outbox;",
        )
        .await
        .unwrap();
    let deliveries = receive(&mut consumer, 2, WAIT).await;
    let ids: Vec<String> = deliveries.iter().map(message_id).collect();
    assert_eq!(
        ids,
        vec![
            "00000000-0000-4000-8000-00000000000a",
            "00000000-0000-4000-8000-00000000000b"
        ],
        "log:\n{}",
        env.run_log(run)
    );
    assert!(
        receive_any(&mut consumer, Duration::from_secs(1))
            .await
            .is_empty(),
        "updates, deletes and truncates publish nothing"
    );
}

#[tokio::test]
async fn debezium_shaped_table_with_the_preset() {
    let mut env = TestEnv::new("debezium").await;
    env.db
        .batch_execute(
            "CREATE TABLE outboxevent (id uuid PRIMARY KEY, aggregatetype varchar(255) NOT NULL, \
             aggregateid varchar(255) NOT NULL, type varchar(255) NOT NULL, payload jsonb)",
        )
        .await
        .unwrap();
    let mut consumer = env.queue("all", "Order.*").await;
    let run = env.spawn_run(&["--table", "outboxevent", "--columns", "debezium"]);
    env.wait_slot_active(WAIT).await;
    env.db
        .batch_execute(
            "INSERT INTO outboxevent VALUES ('00000000-0000-4000-8000-0000000000d1', 'Order', '17', \
             'OrderShipped', '{\"id\": 17}')",
        )
        .await
        .unwrap();
    let deliveries = receive(&mut consumer, 1, WAIT).await;
    assert_eq!(deliveries.len(), 1, "log:\n{}", env.run_log(run));
    assert_eq!(deliveries[0].routing_key.as_str(), "Order.OrderShipped");
    assert_eq!(
        header_text(&deliveries[0], "x-aggregate-id").as_deref(),
        Some("17")
    );
    assert_eq!(&deliveries[0].data[..], br#"{"id": 17}"#);
}

#[tokio::test]
async fn a_killed_relay_resumes_with_nothing_lost() {
    let mut env = TestEnv::new("resume").await;
    let mut consumer = env.queue("all", "#").await;
    let setup = env.walbox("setup", &[]);
    assert!(
        setup.status.success(),
        "{}",
        String::from_utf8_lossy(&setup.stderr)
    );

    // Committed while nothing runs: captured by the slot all the same.
    env.db
        .batch_execute(
            "INSERT INTO outbox (aggregate_type, aggregate_id, event_type, payload) \
             SELECT 'bulk', 'b' || g % 10, 'made', jsonb_build_object('n', g) \
             FROM generate_series(1, 3000) g",
        )
        .await
        .unwrap();
    let first = env.spawn_run(&[]);
    let early = receive(&mut consumer, 500, WAIT).await;
    assert_eq!(early.len(), 500, "log:\n{}", env.run_log(first));
    env.kill(first);
    // What PostgreSQL was told before the kill: everything committed before it is done.
    let acknowledged = env.slot_confirmed().await.unwrap();

    for batch in 0..10 {
        env.db
            .batch_execute(&format!(
                "INSERT INTO outbox (aggregate_type, aggregate_id, event_type, payload) \
                 SELECT 'more', 'm', 'made', jsonb_build_object('batch', {batch}, 'n', g) \
                 FROM generate_series(1, 100) g"
            ))
            .await
            .unwrap();
    }
    let second = env.spawn_run(&[]);
    let mut seen: HashSet<String> = early.iter().map(message_id).collect();
    let total = 4000;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let mut duplicates = 0;
    while seen.len() < total && tokio::time::Instant::now() < deadline {
        for delivery in receive(&mut consumer, 100, Duration::from_secs(2)).await {
            if !seen.insert(message_id(&delivery)) {
                duplicates += 1;
                // Only what was never acknowledged to PostgreSQL may come again.
                let commit = commit_lsn(&delivery);
                assert!(
                    commit >= acknowledged,
                    "event committed at {commit} came again although the slot had confirmed {acknowledged}"
                );
            }
        }
    }
    assert_eq!(
        seen.len(),
        total,
        "events lost after SIGKILL; log:\n{}",
        env.run_log(second)
    );
    eprintln!("resume: {total} events, {duplicates} duplicates after SIGKILL");
}

#[tokio::test]
async fn setup_status_and_teardown() {
    let env = TestEnv::new("cli").await;
    let first = env.walbox("setup", &[]);
    let text = String::from_utf8_lossy(&first.stdout);
    assert!(
        first.status.success(),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );
    assert!(text.contains("created"), "{text}");
    assert!(text.contains("will be relayed"), "{text}");
    let again = env.walbox("setup", &[]);
    let text = String::from_utf8_lossy(&again.stdout);
    assert!(again.status.success());
    assert!(text.contains("already exists"), "idempotent: {text}");

    let status = env.walbox("status", &["--json"]);
    assert!(status.status.success());
    let json: serde_json::Value =
        serde_json::from_slice(&status.stdout).expect("status --json is JSON");
    assert_eq!(json["slot"]["slot_name"], env.name.as_str());
    assert_eq!(json["slot"]["plugin"], "pgoutput");
    assert_eq!(json["slot"]["active"], false);
    assert!(json["lag_bytes"].is_u64());
    assert_eq!(
        json["publication_tables"],
        serde_json::json!(["public.outbox"])
    );
    assert!(!String::from_utf8_lossy(&status.stdout).contains("guest:guest"));

    let teardown = env.walbox("teardown", &[]);
    assert!(
        teardown.status.success(),
        "{}",
        String::from_utf8_lossy(&teardown.stderr)
    );
    assert!(env.slot_confirmed().await.is_none(), "slot dropped");
    let publications = env
        .db
        .query(
            "SELECT 1 FROM pg_publication WHERE pubname = $1",
            &[&env.name],
        )
        .await
        .unwrap();
    assert!(publications.is_empty(), "publication dropped");
}

#[tokio::test]
async fn usage_errors_exit_2_and_definite_errors_exit_1() {
    let env = TestEnv::new("errors").await;
    for bad in [
        &["--start-lsn", "yesterday"][..],
        &["--routing-key", "{nope"],
        &["--bogus-flag"],
    ] {
        let output = env.walbox("run", bad);
        assert_eq!(
            output.status.code(),
            Some(2),
            "{bad:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    // A placeholder naming no column of the table is found only once walbox has read the
    // table, but it is still the configuration that is wrong: a usage error.
    let output = env.walbox("run", &["--routing-key", "{colour}"]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("colour") && stderr.contains("--routing-key"),
        "{stderr}"
    );
    let output = env.walbox("setup", &["--table", "missing_table"]);
    assert_eq!(output.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&output.stderr).contains("does not exist"));
    // A password the broker refuses is definite with either AMQP client (RabbitMQ closes an
    // amqprs login without a reply code: walbox asks again with lapin, which gets one).
    let wrong = std::env::temp_dir().join(format!("{}-wrong-amqp-password", env.name));
    std::fs::write(&wrong, "not-the-password\n").unwrap();
    for client in ["amqprs", "lapin"] {
        let flags = [
            "--amqp-password-file",
            wrong.to_str().unwrap(),
            "--amqp-client",
            client,
        ];
        let output = env.walbox("setup", &flags);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(1), "{client}: {stderr}");
        assert!(stderr.contains("password"), "{client}: {stderr}");
    }
    let _ = std::fs::remove_file(wrong);
}

#[tokio::test]
async fn start_lsn_skips_ahead_and_a_passed_one_is_ignored() {
    let mut env = TestEnv::new("skip").await;
    let mut consumer = env.queue("all", "#").await;
    assert!(env.walbox("setup", &[]).status.success());
    env.insert("old", "skipped", "{}").await;
    let skip_to = env.current_wal_lsn().await;
    let wanted = env.insert("new", "kept", "{}").await;
    let run = env.spawn_run(&["--start-lsn", &skip_to.to_string()]);
    let deliveries = receive(&mut consumer, 1, WAIT).await;
    assert_eq!(
        deliveries.iter().map(message_id).collect::<Vec<_>>(),
        vec![wanted],
        "log:\n{}",
        env.run_log(run)
    );
    assert!(
        receive_any(&mut consumer, Duration::from_secs(1))
            .await
            .is_empty()
    );
    // The slot has passed `wanted` before the stop, so a restart has nothing to send again.
    let after_wanted = env.current_wal_lsn().await;
    env.wait_confirmed(after_wanted, WAIT).await;
    assert!(env.terminate(run).success());
    // The same --start-lsn left in place (as a WALBOX_START_LSN in a deployment would be) is
    // behind the slot now: walbox says so and resumes from the slot's position, so a restart
    // works, relays what came since, and neither skips it nor sends the earlier events again.
    let later = env.insert("later", "kept", "{}").await;
    let again = env.spawn_run(&["--start-lsn", &skip_to.to_string()]);
    let deliveries = receive(&mut consumer, 1, WAIT).await;
    assert_eq!(
        deliveries.iter().map(message_id).collect::<Vec<_>>(),
        vec![later],
        "log:\n{}",
        env.run_log(again)
    );
    assert!(
        receive_any(&mut consumer, Duration::from_secs(1))
            .await
            .is_empty()
    );
    assert!(env.terminate(again).success());
    let log = env.run_log(again);
    assert!(
        log.contains("behind the slot's confirmed position"),
        "{log}"
    );
}

#[tokio::test]
async fn a_large_transaction_streams_through_in_bounded_memory() {
    let rows: usize = std::env::var("WALBOX_TEST_BIG_TRANSACTION_ROWS")
        .ok()
        .and_then(|text| text.parse().ok())
        .unwrap_or(100_000);
    let mut env = TestEnv::new("bigtx").await;
    let mut consumer = env.queue_with("all", "#", true).await;
    assert!(env.walbox("setup", &[]).status.success());
    env.db
        .batch_execute(&format!(
            "INSERT INTO outbox (aggregate_type, aggregate_id, event_type, payload) \
             SELECT 'big', 'b' || g % 100, 'row', jsonb_build_object('n', g, 'pad', repeat('x', 150)) \
             FROM generate_series(1, {rows}) g"
        ))
        .await
        .unwrap();
    let target = env.current_wal_lsn().await;
    let run = env.spawn_run(&[]);
    let mut ids = HashSet::with_capacity(rows);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(240);
    while ids.len() < rows && tokio::time::Instant::now() < deadline {
        for delivery in receive_unacked(&mut consumer, 10_000, Duration::from_secs(5)).await {
            ids.insert(message_id(&delivery));
        }
    }
    assert_eq!(ids.len(), rows, "log:\n{}", env.run_log(run));
    let confirmed = env.wait_confirmed(target, WAIT).await;
    assert!(
        confirmed >= target,
        "slot at {confirmed}, expected {target}"
    );
    let peak_kib = env.peak_rss_kib(run);
    eprintln!(
        "big transaction: {rows} rows, walbox peak RSS {} MiB",
        peak_kib / 1024
    );
    assert!(
        peak_kib > 0 && peak_kib < 100 * 1024,
        "peak RSS {peak_kib} KiB"
    );
}

#[tokio::test]
async fn a_slot_dropped_while_running_stops_walbox_and_is_not_recreated() {
    let mut env = TestEnv::new("slotdropped").await;
    let mut consumer = env.queue("all", "#").await;
    let run = env.spawn_run(&[]);
    env.wait_slot_active(WAIT).await;
    env.insert("order", "created", "{}").await;
    assert_eq!(receive(&mut consumer, 1, WAIT).await.len(), 1);

    // Someone drops the slot: end walbox's walsender and drop it before walbox reconnects.
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        env.db
            .execute(
                "SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots \
                 WHERE slot_name = $1 AND active",
                &[&env.name],
            )
            .await
            .unwrap();
        if env
            .db
            .execute("SELECT pg_drop_replication_slot($1)", &[&env.name])
            .await
            .is_ok()
        {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "could not drop the slot"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }

    let deadline = std::time::Instant::now() + WAIT;
    let status = loop {
        if let Some(status) = env.try_wait(run) {
            break status;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "walbox kept running without its slot; log:\n{}",
            env.run_log(run)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(status.code(), Some(1), "log:\n{}", env.run_log(run));
    assert!(
        env.run_log(run).contains("disappeared"),
        "the message must say the slot disappeared; log:\n{}",
        env.run_log(run)
    );
    let recreated = env
        .db
        .query_opt(
            "SELECT 1 FROM pg_replication_slots WHERE slot_name = $1",
            &[&env.name],
        )
        .await
        .unwrap();
    assert!(recreated.is_none(), "walbox recreated the slot by itself");
}
