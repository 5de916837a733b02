//! CloudEvents messages parsed and validated by the official SDKs (PyPI cloudevents with its
//! RabbitMQ binding, npm cloudevents), which scripts/consumers.sh installs into tests/consumers.
//! These tests are ignored by default; scripts/test.sh runs them after installing the SDKs.

use super::*;

fn consumers_dir() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/consumers")
}

/// Run one checker of tests/consumers (`script`, with the Python of its venv or with node) on
/// `queue` and return its JSON summary.
pub(crate) fn sdk_check(script: &str, queue: &str, count: usize, mode: &[&str]) -> Value {
    let dir = consumers_dir();
    let program = if script.ends_with(".py") {
        dir.join(".venv/bin/python")
    } else {
        "node".into()
    };
    let output = Command::new(&program)
        .arg(dir.join(script))
        .args(["--amqp-url", &amqp_url(), "--queue", queue])
        .args(["--count", &count.to_string(), "--timeout", "30"])
        .args(mode)
        .output()
        .unwrap_or_else(|error| {
            panic!(
                "run {} (did scripts/consumers.sh run?): {error}",
                program.display()
            )
        });
    let stdout = String::from_utf8_lossy(&output.stdout);
    let summary: Value = serde_json::from_str(stdout.trim()).unwrap_or_else(|error| {
        panic!(
            "{script} printed no summary ({error}); stdout: {stdout}; stderr: {}",
            String::from_utf8_lossy(&output.stderr)
        )
    });
    assert!(
        output.status.success(),
        "{script} found missing or invalid events: {summary:#}"
    );
    summary
}

/// The rows of the CloudEvents scenes: ids and payloads as PostgreSQL stored them.
async fn insert_cloudevents_rows(env: &TestEnv) -> Vec<(String, String, Value)> {
    let rows = [
        ("order.created", r#"{"order_id": 1001, "total": 42.5}"#),
        (
            "order.noted",
            r#"{"note": "caf\u00e9 \u2713 \"quoted\"", "lines": [1, 2, {"deep": null}]}"#,
        ),
        ("order.listed", r#"[1, "two", 3.5, true]"#),
    ];
    let mut inserted = Vec::new();
    env.db.batch_execute("BEGIN").await.unwrap();
    for (event_type, payload) in rows {
        let row = env
            .db
            .query_one(
                "INSERT INTO outbox (aggregate_type, aggregate_id, event_type, payload) \
                 VALUES ('order', 'o-1001', $1, $2::text::jsonb) RETURNING id::text, payload::text",
                &[&event_type, &payload],
            )
            .await
            .expect("insert");
        inserted.push((row.get(0), event_type.to_owned(), json_of(row.get(1))));
    }
    env.db.batch_execute("COMMIT").await.unwrap();
    inserted
}

/// Every row arrived as a valid CloudEvent carrying its id, type and payload.
fn assert_events(summary: &Value, rows: &[(String, String, Value)]) {
    assert_eq!(summary["received"], json!(rows.len()), "{summary:#}");
    assert_eq!(summary["valid"], json!(rows.len()), "{summary:#}");
    let events = summary["events"].as_array().expect("events");
    for (event, (id, event_type, payload)) in events.iter().zip(rows) {
        let attributes = &event["attributes"];
        assert_eq!(attributes["specversion"], json!("1.0"));
        assert_eq!(attributes["id"], json!(id), "id = the row's id");
        assert_eq!(attributes["type"], json!(event_type));
        assert_eq!(attributes["source"], json!("walbox"));
        assert_eq!(attributes["datacontenttype"], json!("application/json"));
        assert!(attributes["time"].is_string(), "time: {attributes}");
        assert_eq!(&event["data"], payload, "data = the payload");
        assert_eq!(event["amqp"]["message_id"], json!(id));
    }
}

#[tokio::test]
#[ignore = "needs the CloudEvents SDKs: bash scripts/consumers.sh, then --ignored"]
async fn cloudevents_structured_messages_pass_the_python_and_javascript_sdks() {
    let mut env = TestEnv::new("fw_ce_structured").await;
    // Durable queues, because the checkers consume on their own connections.
    let python_queue = env.durable_queue("python", FieldTable::default()).await;
    let node_queue = env.durable_queue("node", FieldTable::default()).await;
    let args = env.args();
    let run = start_walbox(&mut env, args, &["--preset", "cloudevents"]).await;
    let rows = insert_cloudevents_rows(&env).await;
    let _ = run;

    let python = sdk_check(
        "ce_check.py",
        &python_queue,
        rows.len(),
        &["--mode", "structured"],
    );
    assert_events(&python, &rows);
    for event in python["events"].as_array().unwrap() {
        assert_eq!(
            event["amqp"]["content_type"],
            json!("application/cloudevents+json")
        );
    }
    let node = sdk_check("ce_check.js", &node_queue, rows.len(), &[]);
    assert_events(&node, &rows);
}

#[tokio::test]
#[ignore = "needs the CloudEvents SDKs: bash scripts/consumers.sh, then --ignored"]
async fn cloudevents_binary_messages_pass_the_python_sdk_rabbitmq_binding() {
    let mut env = TestEnv::new("fw_ce_binary").await;
    let queue = env.durable_queue("python", FieldTable::default()).await;
    let args = env.args();
    let run = start_walbox(
        &mut env,
        args,
        &["--preset", "cloudevents", "--body", "cloudevents-binary"],
    )
    .await;
    let rows = insert_cloudevents_rows(&env).await;
    let _ = run;

    let python = sdk_check("ce_check.py", &queue, rows.len(), &["--mode", "binary"]);
    assert_events(&python, &rows);
    for event in python["events"].as_array().unwrap() {
        // The binding: datacontenttype travels as content_type, every other attribute as a
        // ce- header.
        assert_eq!(event["amqp"]["content_type"], json!("application/json"));
        let names = event["amqp"]["header_names"].as_array().unwrap();
        for attribute in ["ce-id", "ce-source", "ce-specversion", "ce-type", "ce-time"] {
            assert!(
                names.contains(&json!(attribute)),
                "{attribute} in {names:?}"
            );
        }
    }
}

#[tokio::test]
#[ignore = "needs the CloudEvents SDKs: bash scripts/consumers.sh, then --ignored"]
async fn dapr_preset_messages_pass_the_python_sdk() {
    let mut env = TestEnv::new("fw_ce_dapr").await;
    let mut objects = BrokerObjects::new();
    env.db
        .batch_execute(super::dapr::MASA_DDL)
        .await
        .expect("MASA table");
    // A Dapr subscriber's exchange and queue (see dapr.rs), consumed by the SDK checker.
    let topic = format!("{}.orders", env.name);
    let channel = &env.channel;
    declare_exchange(
        channel,
        &mut objects,
        &topic,
        ExchangeKind::Fanout,
        true,
        true,
    )
    .await;
    let queue = format!("{}-{topic}", env.name);
    let options = QueueDeclareOptions {
        durable: true,
        auto_delete: true,
        ..Default::default()
    };
    declare_queue(
        channel,
        &mut objects,
        &queue,
        options,
        FieldTable::default(),
    )
    .await;
    bind_queue(channel, &queue, &topic, "").await;

    let args = preset_args(&env);
    let extra = ["--preset", "dapr", "--table", "public.IntegrationEventLog"];
    let _run = start_walbox(&mut env, args, &extra).await;
    let event_id = "5c1e1b2a-6d3f-4a8b-9c0d-1e2f3a4b5c6d";
    let content = json!({"EventId": event_id, "Topic": topic, "OrderId": 7}).to_string();
    env.db
        .execute(
            "INSERT INTO \"IntegrationEventLog\" (\"Id\", \"Content\", \"CreationTime\", \"EventId\", \
             \"EventTypeName\", \"ExpandContent\", \"ModificationTime\", \"RowVersion\", \"State\", \
             \"TimesSent\", \"TransactionId\") VALUES (gen_random_uuid(), $1, now(), $2::text::uuid, \
             'Masa.Demo.Ordering.OrderPlacedIntegrationEvent', '', now(), gen_random_uuid()::text, \
             0, 0, gen_random_uuid())",
            &[&content, &event_id],
        )
        .await
        .expect("insert as MASA");

    let python = sdk_check("ce_check.py", &queue, 1, &["--mode", "structured"]);
    let event = &python["events"][0];
    assert_eq!(event["attributes"]["id"], json!(event_id));
    assert_eq!(event["attributes"]["specversion"], json!("1.0"));
    assert_eq!(event["data"], json_of(&content));
    drop(objects);
}
