//! The mechanisms for adopting walbox with an existing outbox table and existing consumers
//! (#11), end to end on the real servers: a table with no id column, a per-row exchange
//! declared once per connection, the exchange mismatch error, a JSON body template. The
//! per-framework scenes (CAP, MassTransit, ...) are in their own test files.

mod common;

use std::time::Duration;

use common::*;
use lapin::ExchangeKind;
use lapin::options::ExchangeDeclareOptions;
use lapin::types::{FieldTable, ShortString};
use walbox::lsn::Lsn;

const WAIT: Duration = Duration::from_secs(30);

/// uuid5(NAMESPACE_URL, "https://github.com/walbox/walbox#event-position"), as docs/src/concepts/outbox-table.md says.
fn position_id(commit_lsn: Lsn, index: u32) -> String {
    let namespace = uuid::Uuid::new_v5(
        &uuid::Uuid::NAMESPACE_URL,
        b"https://github.com/walbox/walbox#event-position",
    );
    uuid::Uuid::new_v5(&namespace, format!("{commit_lsn}/{index}").as_bytes())
        .hyphenated()
        .to_string()
}

#[tokio::test]
async fn a_table_without_an_id_gets_ids_from_the_wal_position() {
    let mut env = TestEnv::new("idless").await;
    env.db
        .batch_execute("CREATE TABLE events (kind text, body jsonb NOT NULL)")
        .await
        .unwrap();
    let mut consumer = env.queue("all", "#").await;
    let run = env.spawn_run(&[
        "--table",
        "events",
        "--columns",
        "id=,aggregate_type=,aggregate_id=,payload=body,event_type=kind",
        "--routing-key",
        "{event_type|lower}",
    ]);
    env.wait_slot_active(WAIT).await;
    env.db
        .batch_execute(
            "BEGIN; INSERT INTO events VALUES ('Created', '{\"n\": 1}'); \
             INSERT INTO events VALUES ('Paid', '{\"n\": 2}'); COMMIT; \
             INSERT INTO events VALUES ('Shipped', '{\"n\": 3}');",
        )
        .await
        .unwrap();
    let deliveries = receive(&mut consumer, 3, WAIT).await;
    assert_eq!(deliveries.len(), 3, "log:\n{}", env.run_log(run));
    let keys: Vec<&str> = deliveries.iter().map(|d| d.routing_key.as_str()).collect();
    assert_eq!(keys, ["created", "paid", "shipped"]);
    // The first two share a transaction (indexes 0 and 1), the third is alone (index 0).
    let first_commit = commit_lsn(&deliveries[0]);
    assert_eq!(commit_lsn(&deliveries[1]), first_commit);
    assert_eq!(message_id(&deliveries[0]), position_id(first_commit, 0));
    assert_eq!(message_id(&deliveries[1]), position_id(first_commit, 1));
    assert_eq!(
        message_id(&deliveries[2]),
        position_id(commit_lsn(&deliveries[2]), 0)
    );
    assert_eq!(
        deliveries[0]
            .properties
            .kind()
            .as_ref()
            .map(ShortString::as_str),
        Some("Created")
    );
    // No aggregate columns: no x-aggregate-* headers.
    assert_eq!(header_text(&deliveries[0], "x-aggregate-type"), None);
}

#[tokio::test]
async fn a_per_row_exchange_is_declared_once_per_connection() {
    let mut env = TestEnv::new("perrow").await;
    let orders = format!("{}_OrderCreated", env.name);
    let payments = format!("{}_PaymentTaken", env.name);
    env.delete_exchange_at_cleanup(&orders);
    env.delete_exchange_at_cleanup(&payments);
    // The consumer side declares one exchange (as its framework would) and binds to it.
    env.channel
        .exchange_declare(
            orders.as_str().into(),
            ExchangeKind::Fanout,
            ExchangeDeclareOptions {
                durable: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
    let mut order_queue =
        consume_bound(&env.channel, &orders, &format!("{orders}_q"), "", false).await;
    let exchange_template = format!("{}_{{event_type|short}}", env.name);
    let args = env.args_with("--exchange", &exchange_template);
    let run = env.spawn_run_with(
        args,
        &[
            "--exchange-kind",
            "fanout",
            "--routing-key",
            "",
            "--log-level",
            "walbox=debug",
        ],
    );
    env.wait_slot_active(WAIT).await;
    for _ in 0..3 {
        env.insert("order", "Shop.Orders.OrderCreated", "{}").await;
    }
    let orders_seen = receive(&mut order_queue, 3, WAIT).await;
    assert_eq!(orders_seen.len(), 3, "log:\n{}", env.run_log(run));
    assert!(orders_seen.iter().all(|d| d.exchange.as_str() == orders));

    // The other exchange does not exist until walbox declares it for its first event; the
    // event is unroutable until a queue is bound, so walbox retries it until then.
    env.insert("payment", "Shop.Payments+Events+PaymentTaken", "{}")
        .await;
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        // A failed passive declare closes its channel: a fresh one per look.
        let probe = env.amqp.create_channel().await.unwrap();
        let exists = probe
            .exchange_declare(
                payments.as_str().into(),
                ExchangeKind::Fanout,
                ExchangeDeclareOptions {
                    passive: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await;
        if exists.is_ok() {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "walbox never declared {payments}; log:\n{}",
            env.run_log(run)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // A declare with the kind walbox was told to use succeeds: it made a durable fanout.
    env.channel
        .exchange_declare(
            payments.as_str().into(),
            ExchangeKind::Fanout,
            ExchangeDeclareOptions {
                durable: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .expect("walbox declared a durable fanout exchange");
    let mut payment_queue =
        consume_bound(&env.channel, &payments, &format!("{payments}_q"), "", false).await;
    let payments_seen = receive(&mut payment_queue, 1, WAIT).await;
    assert_eq!(payments_seen.len(), 1, "log:\n{}", env.run_log(run));
    for _ in 0..2 {
        env.insert("order", "Shop.Orders.OrderCreated", "{}").await;
    }
    assert_eq!(receive(&mut order_queue, 2, WAIT).await.len(), 2);

    // One declare per exchange per connection: the unroutable event made walbox reconnect,
    // and each connection declares what it publishes to once.
    let log = env.run_log(run);
    let connections = log.matches("\"streaming\"").count();
    let declares = |name: &str| {
        log.lines()
            .filter(|line| line.contains("exchange declared") && line.contains(name))
            .count()
    };
    assert!(declares(&orders) >= 1, "log:\n{log}");
    assert!(
        declares(&orders) <= connections,
        "{} declares of {orders} over {connections} connections for 5 events; log:\n{log}",
        declares(&orders)
    );
    assert!(declares(&payments) <= connections, "log:\n{log}");
}

#[tokio::test]
async fn an_exchange_that_exists_otherwise_is_a_definite_error_naming_both() {
    let env = TestEnv::new("mismatch").await;
    // TestEnv declared the test's exchange as a durable topic exchange.
    let output = env.walbox("setup", &["--exchange-kind", "fanout"]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "setup succeeded: {stderr}");
    assert!(
        stderr.contains("asked for fanout, durable") && stderr.contains("type topic"),
        "the error names what was asked and what exists: {stderr}"
    );
    let output = env.walbox("setup", &["--exchange-durable", "false"]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "setup succeeded: {stderr}");
    assert!(
        stderr.contains("asked for topic, transient") && stderr.contains("durable=true"),
        "{stderr}"
    );
    // A passive check accepts it as it is; a passive check of a missing one is refused.
    let output = env.walbox(
        "setup",
        &["--exchange-kind", "fanout", "--exchange-declare", "passive"],
    );
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let missing = format!("{}_missing", env.name);
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_walbox"))
        .arg("setup")
        .args(env.args_with("--exchange", &missing))
        .args(["--exchange-declare", "passive"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(stderr.contains("does not exist"), "{stderr}");
}

#[tokio::test]
async fn the_ef_core_outbox_is_relayed_through_a_body_template() {
    let mut env = TestEnv::new("bodytemplate").await;
    // The table as EF Core on Npgsql creates it for an OutboxMessage entity.
    env.db
        .batch_execute(
            "CREATE TABLE \"OutBoxMessages\" (\"Id\" uuid NOT NULL PRIMARY KEY, \
             \"OccurredOnUtc\" timestamp with time zone NOT NULL, \"Type\" text NOT NULL, \
             \"Content\" text NOT NULL, \"ProcessedOnUtc\" timestamp with time zone NULL)",
        )
        .await
        .unwrap();
    let mut consumer = env.queue("all", "outbox").await;
    let run = env.spawn_run(&[
        "--table",
        "OutBoxMessages",
        "--columns",
        "outbox-messages",
        "--routing-key",
        "outbox",
        "--body",
        "template",
        "--body-template",
        r#"{"Id": {id|json}, "Content": {payload|json}}"#,
        "--no-walbox-headers",
    ]);
    env.wait_slot_active(WAIT).await;
    let content = r#"{"$type":"OrderPlaced","OrderId":"7","Note":"say \"hi\""}"#;
    let row = env
        .db
        .query_one(
            "INSERT INTO \"OutBoxMessages\" VALUES (gen_random_uuid(), now(), \
             'Shop.Domain.OrderPlaced, Shop.Domain', $1, NULL) RETURNING \"Id\"::text",
            &[&content],
        )
        .await
        .unwrap();
    let id: String = row.get(0);
    // The interceptor's processor marks the row processed later: an update, not relayed.
    env.db
        .execute(
            "UPDATE \"OutBoxMessages\" SET \"ProcessedOnUtc\" = now() WHERE \"Id\"::text = $1",
            &[&id],
        )
        .await
        .unwrap();
    let deliveries = receive(&mut consumer, 1, WAIT).await;
    assert_eq!(deliveries.len(), 1, "log:\n{}", env.run_log(run));
    let body: serde_json::Value = serde_json::from_slice(&deliveries[0].data).unwrap();
    assert_eq!(body, serde_json::json!({"Id": id, "Content": content}));
    assert_eq!(message_id(&deliveries[0]), id);
    assert_eq!(
        deliveries[0]
            .properties
            .content_type()
            .as_ref()
            .map(ShortString::as_str),
        Some("application/json")
    );
    assert_eq!(header_text(&deliveries[0], "x-commit-lsn"), None);
    assert!(
        receive_any(&mut consumer, Duration::from_millis(500))
            .await
            .is_empty()
    );
}

#[test]
fn config_check_prints_what_a_preset_expands_to() {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_walbox"))
        .args([
            "config",
            "check",
            "--preset",
            "nservicebus",
            "--exchange-durable",
            "false",
        ])
        .env_remove("WALBOX_CONFIG")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    for line in [
        "preset = \"nservicebus\"  # flag",
        "exchange = \"{event_type|namespace}:{event_type|short}\"  # preset nservicebus",
        "exchange-kind = \"fanout\"  # preset nservicebus",
        "exchange-durable = false  # flag",
        "routing-key = \"\"  # preset nservicebus",
        // Every header on one line (a config file holds a key once), merged as applied.
        "header = [\"NServiceBus.EnclosedMessageTypes={event_type}\", \"NServiceBus.MessageId={id}\", \"NServiceBus.ContentType=application/json\", \"NServiceBus.MessageIntent=Publish\"]  # preset nservicebus",
        "body = \"raw\"  # preset nservicebus",
        "ce-source = \"walbox\"  # default",
    ] {
        assert!(stdout.contains(line), "`{line}` not in:\n{stdout}");
    }
}

#[tokio::test]
async fn a_row_that_cannot_become_a_body_is_dead_lettered_or_stops_walbox() {
    let mut env = TestEnv::new("unencodable").await;
    let mut consumer = env.queue("all", "#").await;
    let (dlx, mut dead_letters) = env.extra_exchange("dlx").await;
    // `{payload->n}` inserts the value as it is: a number gives JSON, a string does not.
    let body = [
        "--body",
        "template",
        "--body-template",
        r#"{"n": {payload->n}}"#,
    ];
    let mut with_dlx = body.to_vec();
    with_dlx.extend(["--dead-letter-exchange", dlx.as_str()]);
    let run = env.spawn_run(&with_dlx);
    env.wait_slot_active(WAIT).await;
    env.insert("order", "created", r#"{"n": 1}"#).await;
    let bad = env
        .insert("order", "created", r#"{"n": "not a number"}"#)
        .await;
    env.insert("order", "created", r#"{"n": 3}"#).await;
    let delivered = receive(&mut consumer, 2, WAIT).await;
    assert_eq!(delivered.len(), 2, "log:\n{}", env.run_log(run));
    let bodies: Vec<serde_json::Value> = delivered
        .iter()
        .map(|d| serde_json::from_slice(&d.data).unwrap())
        .collect();
    assert_eq!(
        bodies,
        [serde_json::json!({"n": 1}), serde_json::json!({"n": 3})]
    );
    let records = receive(&mut dead_letters, 1, WAIT).await;
    assert_eq!(records.len(), 1, "log:\n{}", env.run_log(run));
    let record: serde_json::Value = serde_json::from_slice(&records[0].data).unwrap();
    assert_eq!(record["id"], serde_json::json!(bad));
    assert!(
        record["reason"].as_str().unwrap().contains("not JSON"),
        "{record}"
    );
    assert_eq!(message_id(&records[0]), bad);
    // The slot passes all three before the stop, so the next run starts after them and
    // anything it delivers comes from the row it must stop on (a stop under load can leave the
    // final position unsaid, and the restart then sends `{"n": 3}` again: a duplicate).
    let end = env.current_wal_lsn().await;
    assert!(env.wait_confirmed(end, WAIT).await >= end);
    env.terminate(run);

    // Without a dead-letter exchange walbox stops on such a row, naming its commit.
    let run = env.spawn_run(&body);
    env.wait_slot_active(WAIT).await;
    env.insert("order", "created", r#"{"n": "again"}"#).await;
    let deadline = std::time::Instant::now() + WAIT;
    let status = loop {
        if let Some(status) = env.try_wait(run) {
            break status;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "walbox kept running; log:\n{}",
            env.run_log(run)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let log = env.run_log(run);
    assert_eq!(status.code(), Some(1), "log:\n{log}");
    assert!(
        log.contains("cannot become an AMQP message") && log.contains("--dead-letter-exchange"),
        "log:\n{log}"
    );
    let after: Vec<String> = receive_any(&mut consumer, Duration::from_millis(500))
        .await
        .iter()
        .map(|d| String::from_utf8_lossy(&d.data).into_owned())
        .collect();
    assert!(
        after.is_empty(),
        "delivered after the stop: {after:?}; log:\n{log}"
    );
}
