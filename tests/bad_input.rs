//! Bad input, end to end: each odd row, table change, publication, URL or slot has one clear
//! outcome (delivered as the contract says, ignored, retried, or a definite stop), and nothing
//! is lost or acknowledged past an event that was not delivered.
//!
//! Covered elsewhere and not repeated here: updates, deletes and truncates of the outbox table
//! (`tests/relay.rs`, insert_then_delete…), unknown flags, bad `--start-lsn` text, a malformed
//! template and a template placeholder naming no column (`tests/relay.rs`,
//! usage_errors_exit_2_and_definite_errors_exit_1).

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use lapin::types::ShortString;

const WAIT: Duration = Duration::from_secs(30);

fn content_type(delivery: &lapin::message::Delivery) -> Option<&str> {
    delivery
        .properties
        .content_type()
        .as_ref()
        .map(ShortString::as_str)
}

/// Wait for run `run` to exit; its status.
async fn wait_exit(env: &mut TestEnv, run: usize, within: Duration) -> std::process::ExitStatus {
    let deadline = Instant::now() + within;
    loop {
        if let Some(status) = env.try_wait(run) {
            return status;
        }
        assert!(
            Instant::now() < deadline,
            "walbox kept running; log:\n{}",
            env.run_log(run)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn a_toasted_5_mib_payload_is_delivered_intact() {
    let mut env = TestEnv::new("toast").await;
    let mut consumer = env.queue("all", "#").await;
    // EXTERNAL: out of line in the TOAST table and uncompressed, so the value really is
    // TOASTed (a repetitive string would compress to a few kilobytes inline).
    env.db
        .batch_execute("ALTER TABLE outbox ALTER COLUMN payload SET STORAGE EXTERNAL")
        .await
        .unwrap();
    let run = env.spawn_run(&[]);
    env.wait_slot_active(WAIT).await;
    let row = env
        .db
        .query_one(
            "INSERT INTO outbox (aggregate_type, aggregate_id, event_type, payload) \
             SELECT 'blob', 'b-1', 'stored', jsonb_build_object('blob', string_agg(md5(g::text), '')) \
             FROM generate_series(1, 163840) g \
             RETURNING id::text, payload::text",
            &[],
        )
        .await
        .unwrap();
    let id: String = row.get(0);
    let payload: String = row.get(1);
    assert!(payload.len() > 5 * 1024 * 1024, "{}", payload.len());
    let toast_bytes: i64 = env
        .db
        .query_one(
            "SELECT pg_relation_size(reltoastrelid) FROM pg_class WHERE oid = 'outbox'::regclass",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(
        toast_bytes > 5_000_000,
        "the payload is not in the TOAST table ({toast_bytes} bytes)"
    );
    let end = env.current_wal_lsn().await;

    let deliveries = receive(&mut consumer, 1, WAIT).await;
    assert_eq!(deliveries.len(), 1, "log:\n{}", env.run_log(run));
    assert_eq!(message_id(&deliveries[0]), id);
    assert_eq!(deliveries[0].data.len(), payload.len());
    assert!(
        deliveries[0].data == payload.as_bytes(),
        "the body differs from the payload"
    );
    assert!(env.wait_confirmed(end, WAIT).await >= end);
}

#[tokio::test]
async fn nulls_in_mapped_columns_give_an_empty_body_and_empty_routing_key_segments() {
    let mut env = TestEnv::new("nulls").await;
    env.db
        .batch_execute(
            "ALTER TABLE outbox ALTER COLUMN payload DROP NOT NULL, \
             ALTER COLUMN aggregate_type DROP NOT NULL, ALTER COLUMN event_type DROP NOT NULL",
        )
        .await
        .unwrap();
    let mut consumer = env.queue("all", "#").await;
    let run = env.spawn_run(&[]);
    env.wait_slot_active(WAIT).await;
    env.db
        .batch_execute(
            "INSERT INTO outbox (id, aggregate_type, aggregate_id, event_type, payload) VALUES \
             ('00000000-0000-4000-8000-0000000000c1', NULL, 'a-1', 'created', NULL); \
             INSERT INTO outbox (id, aggregate_type, aggregate_id, event_type, payload) VALUES \
             ('00000000-0000-4000-8000-0000000000c2', 'order', 'a-2', NULL, '{}');",
        )
        .await
        .unwrap();
    let end = env.current_wal_lsn().await;
    let deliveries = receive(&mut consumer, 2, WAIT).await;
    assert_eq!(deliveries.len(), 2, "log:\n{}", env.run_log(run));
    assert_eq!(
        message_id(&deliveries[0]),
        "00000000-0000-4000-8000-0000000000c1"
    );
    assert_eq!(deliveries[0].routing_key.as_str(), ".created");
    assert!(deliveries[0].data.is_empty(), "NULL payload: empty body");
    assert_eq!(
        header_text(&deliveries[0], "x-aggregate-type").as_deref(),
        Some("")
    );
    assert_eq!(
        message_id(&deliveries[1]),
        "00000000-0000-4000-8000-0000000000c2"
    );
    assert_eq!(deliveries[1].routing_key.as_str(), "order.");
    assert_eq!(&deliveries[1].data[..], b"{}");
    assert!(env.wait_confirmed(end, WAIT).await >= end);
    assert!(env.try_wait(run).is_none(), "no crash");
}

#[tokio::test]
async fn a_headers_column_that_is_not_an_object_is_ignored_with_a_warning() {
    let mut env = TestEnv::new("headers").await;
    let mut consumer = env.queue("all", "#").await;
    let run = env.spawn_run(&[]);
    env.wait_slot_active(WAIT).await;
    let mut ids = Vec::new();
    for headers in ["[1, 2]", "\"just text\"", "42"] {
        let id: String = env
            .db
            .query_one(
                "INSERT INTO outbox (aggregate_type, aggregate_id, event_type, payload, headers) \
                 VALUES ('order', 'o-1', 'created', '{}', $1::text::jsonb) RETURNING id::text",
                &[&headers],
            )
            .await
            .unwrap()
            .get(0);
        ids.push(id);
    }
    let deliveries = receive(&mut consumer, 3, WAIT).await;
    assert_eq!(
        deliveries.iter().map(message_id).collect::<Vec<_>>(),
        ids,
        "log:\n{}",
        env.run_log(run)
    );
    for delivery in &deliveries {
        // Only walbox's own headers.
        let headers = delivery.properties.headers().as_ref().unwrap().inner();
        let mut keys: Vec<&str> = headers.keys().map(|key| key.as_str()).collect();
        keys.sort_unstable();
        assert_eq!(
            keys,
            [
                "x-aggregate-id",
                "x-aggregate-type",
                "x-commit-lsn",
                "x-xid"
            ]
        );
    }
    let log = env.run_log(run);
    for id in &ids {
        assert!(
            log.lines().any(|line| line.contains("\"WARN\"")
                && line.contains(id.as_str())
                && line.contains("headers ignored")),
            "no warning for {id}; log:\n{log}"
        );
    }
}

#[tokio::test]
async fn a_bytea_payload_is_delivered_as_its_bytes() {
    let mut env = TestEnv::new("bytea").await;
    env.db
        .batch_execute(
            "CREATE TABLE outbox_bin (id uuid PRIMARY KEY DEFAULT gen_random_uuid(), \
             aggregate_type text NOT NULL, aggregate_id text NOT NULL, event_type text NOT NULL, \
             payload bytea)",
        )
        .await
        .unwrap();
    let mut consumer = env.queue("all", "#").await;
    let run = env.spawn_run(&["--table", "outbox_bin"]);
    env.wait_slot_active(WAIT).await;
    let rows = env
        .db
        .query(
            "INSERT INTO outbox_bin (aggregate_type, aggregate_id, event_type, payload) VALUES \
             ('file', 'f-1', 'small', '\\x00ff41'::bytea), \
             ('file', 'f-2', 'large', (SELECT decode(string_agg(md5(g::text), ''), 'hex') \
                                       FROM generate_series(1, 4096) g)) \
             RETURNING id::text, payload",
            &[],
        )
        .await
        .unwrap();
    let deliveries = receive(&mut consumer, 2, WAIT).await;
    assert_eq!(deliveries.len(), 2, "log:\n{}", env.run_log(run));
    for (row, delivery) in rows.iter().zip(&deliveries) {
        assert_eq!(message_id(delivery), row.get::<_, String>(0));
        let bytes: Vec<u8> = row.get(1);
        assert_eq!(delivery.data, bytes);
        assert_eq!(content_type(delivery), Some("application/octet-stream"));
    }
    assert_eq!(&deliveries[0].data[..], &[0x00, 0xff, 0x41]);
    assert_eq!(deliveries[1].data.len(), 4096 * 16);
}

#[tokio::test]
async fn a_column_added_while_running_is_picked_up() {
    let mut env = TestEnv::new("addcol").await;
    let mut consumer = env.queue("all", "#").await;
    let (other_exchange, mut other) = env.extra_exchange("billing").await;
    let run = env.spawn_run(&[]);
    env.wait_slot_active(WAIT).await;
    let first = env.insert("order", "created", "{\"n\": 1}").await;
    assert_eq!(
        receive(&mut consumer, 1, WAIT)
            .await
            .iter()
            .map(message_id)
            .collect::<Vec<_>>(),
        vec![first]
    );

    // `exchange` is an optional field of the default column map: used once the table has it.
    env.db
        .batch_execute("ALTER TABLE outbox ADD COLUMN note text, ADD COLUMN exchange text")
        .await
        .unwrap();
    let routed: String = env
        .db
        .query_one(
            "INSERT INTO outbox (aggregate_type, aggregate_id, event_type, payload, note, exchange) \
             VALUES ('invoice', 'i-1', 'issued', '{\"n\": 2}', 'hello', $1) RETURNING id::text",
            &[&other_exchange],
        )
        .await
        .unwrap()
        .get(0);
    let plain = env.insert("order", "created", "{\"n\": 3}").await;

    let elsewhere = receive(&mut other, 1, WAIT).await;
    assert_eq!(
        elsewhere.iter().map(message_id).collect::<Vec<_>>(),
        vec![routed],
        "the new exchange column was not used; log:\n{}",
        env.run_log(run)
    );
    assert_eq!(elsewhere[0].exchange.as_str(), other_exchange);
    assert_eq!(&elsewhere[0].data[..], br#"{"n": 2}"#);
    assert_eq!(
        receive(&mut consumer, 1, WAIT)
            .await
            .iter()
            .map(message_id)
            .collect::<Vec<_>>(),
        vec![plain]
    );
}

#[tokio::test]
async fn a_mapped_column_dropped_while_running_stops_walbox_with_nothing_acknowledged_past_it() {
    let mut env = TestEnv::new("dropcol").await;
    let mut consumer = env.queue("all", "#").await;
    let run = env.spawn_run(&[]);
    env.wait_slot_active(WAIT).await;
    let first = env.insert("order", "created", "{}").await;
    assert_eq!(
        receive(&mut consumer, 1, WAIT)
            .await
            .iter()
            .map(message_id)
            .collect::<Vec<_>>(),
        vec![first]
    );

    env.db
        .batch_execute("ALTER TABLE outbox DROP COLUMN aggregate_id")
        .await
        .unwrap();
    let xid: i64 = env
        .db
        .query_one(
            "WITH e AS (INSERT INTO outbox (aggregate_type, event_type, payload) \
             VALUES ('order', 'created', '{}') RETURNING 1) \
             SELECT txid_current()::bigint FROM e",
            &[],
        )
        .await
        .unwrap()
        .get(0);

    let status = wait_exit(&mut env, run, WAIT).await;
    let log = env.run_log(run);
    assert_eq!(status.code(), Some(1), "definite error; log:\n{log}");
    assert!(
        log.contains("aggregate_id") && log.contains("no longer be relayed"),
        "the message names the column; log:\n{log}"
    );
    assert!(
        receive_any(&mut consumer, Duration::from_millis(500))
            .await
            .is_empty(),
        "nothing was published after the change"
    );
    let after_insert = env.current_wal_lsn().await;
    let confirmed = env.slot_confirmed().await.expect("the slot is still there");
    assert!(
        confirmed < after_insert,
        "slot confirmed {confirmed}, past the insert after the drop (before {after_insert})"
    );
    // Precisely: the slot still holds that insert's transaction (peeking returns what lies
    // after confirmed_flush_lsn), so it was never acknowledged.
    let pending: i64 = env
        .db
        .query_one(
            "SELECT count(*) FROM pg_logical_slot_peek_binary_changes($1::text::name, NULL, NULL, \
             'proto_version', '1', 'publication_names', $1::text) WHERE xid::text::bigint = $2",
            &[&env.name, &xid],
        )
        .await
        .unwrap()
        .get(0);
    assert!(
        pending > 0,
        "the slot was acknowledged past the event after the drop"
    );
}

#[tokio::test]
async fn a_publication_with_other_tables_relays_only_the_configured_one() {
    let mut env = TestEnv::new("pubtables").await;
    env.db
        .batch_execute(&format!(
            "CREATE SCHEMA other; \
             CREATE TABLE other.outbox (LIKE public.outbox INCLUDING ALL); \
             CREATE TABLE public.events (LIKE public.outbox INCLUDING ALL); \
             CREATE PUBLICATION {} FOR TABLE public.outbox, other.outbox, public.events",
            env.name
        ))
        .await
        .unwrap();
    let mut consumer = env.queue("all", "#").await;
    let run = env.spawn_run(&[]);
    env.wait_slot_active(WAIT).await;
    env.db
        .batch_execute(
            "INSERT INTO other.outbox (aggregate_type, aggregate_id, event_type, payload) \
               VALUES ('x', 'x', 'other_schema', '{}'); \
             INSERT INTO public.events (aggregate_type, aggregate_id, event_type, payload) \
               VALUES ('x', 'x', 'other_table', '{}'); \
             BEGIN; \
             INSERT INTO other.outbox (aggregate_type, aggregate_id, event_type, payload) \
               VALUES ('x', 'x', 'other_schema', '{}'); \
             INSERT INTO public.outbox (id, aggregate_type, aggregate_id, event_type, payload) \
               VALUES ('00000000-0000-4000-8000-0000000000e1', 'order', 'o', 'created', '{}'); \
             INSERT INTO public.events (aggregate_type, aggregate_id, event_type, payload) \
               VALUES ('x', 'x', 'other_table', '{}'); \
             COMMIT;",
        )
        .await
        .unwrap();
    let end = env.current_wal_lsn().await;
    let deliveries = receive(&mut consumer, 1, WAIT).await;
    assert_eq!(
        deliveries.iter().map(message_id).collect::<Vec<_>>(),
        vec!["00000000-0000-4000-8000-0000000000e1"],
        "log:\n{}",
        env.run_log(run)
    );
    assert!(
        receive_any(&mut consumer, Duration::from_secs(1))
            .await
            .is_empty(),
        "rows of other tables were published"
    );
    assert!(env.wait_confirmed(end, WAIT).await >= end);
}

#[tokio::test]
async fn an_unreachable_server_at_start_is_retried_and_a_malformed_url_is_a_usage_error() {
    // Nothing listens on port 1: connection refused, which heals when the server comes up.
    for side in ["postgres", "amqp"] {
        let mut env = TestEnv::new(&format!("unreachable_{side}")).await;
        match side {
            "postgres" => env.postgres_port = 1,
            _ => env.amqp_port = 1,
        }
        let run = env.spawn_run(&[]);
        let deadline = Instant::now() + WAIT;
        while !env.run_log(run).contains("reconnecting") {
            assert!(
                env.try_wait(run).is_none(),
                "{side}: walbox gave up; log:\n{}",
                env.run_log(run)
            );
            assert!(
                Instant::now() < deadline,
                "{side}: no retry; log:\n{}",
                env.run_log(run)
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert!(
            env.try_wait(run).is_none(),
            "{side}: walbox must keep retrying; log:\n{}",
            env.run_log(run)
        );
        let log = env.run_log(run);
        assert!(
            log.contains(&format!("\"side\":\"{side}\"")),
            "{side}: the retries name the side; log:\n{log}"
        );
    }

    for bad in [
        &["--postgres-url", "postgres://walbox@db:notaport/app"][..],
        &[
            "--postgres-url",
            "postgres://walbox@db/app?sslmode=sometimes",
        ],
        &["--amqp-url", "http://guest:guest@127.0.0.1:5672/"],
    ] {
        let output = Command::new(env!("CARGO_BIN_EXE_walbox"))
            .arg("run")
            .args(bad)
            .args(["--metrics-addr", "none"])
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{bad:?}: {stderr}");
        assert!(stderr.contains(bad[0]), "{bad:?}: names the flag: {stderr}");
    }
}

#[tokio::test]
async fn a_slot_with_another_output_plugin_is_a_definite_error() {
    let env = TestEnv::new("plugin").await;
    env.db
        .execute(
            "SELECT pg_create_logical_replication_slot($1, 'test_decoding')",
            &[&env.name],
        )
        .await
        .unwrap();
    let output = env.walbox("run", &["--metrics-addr", "none"]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("test_decoding") && stderr.contains("pgoutput"),
        "the message names both plugins: {stderr}"
    );
    // walbox neither dropped nor replaced it.
    let plugin: String = env
        .db
        .query_one(
            "SELECT plugin::text FROM pg_replication_slots WHERE slot_name = $1",
            &[&env.name],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(plugin, "test_decoding");
}
