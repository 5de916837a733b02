//! Trace context end to end (issue #23): a producer's W3C `traceparent` / `tracestate`, written
//! into the outbox (trace columns, or keys of the headers column), reaches each encoding's
//! consumer where that consumer reads it, and the consumer-side parser sees the same trace:
//!
//! - every encoding: AMQP headers `traceparent` / `tracestate`, read by OpenTelemetry's W3C
//!   propagator and by OpenTelemetry's pika instrumentation, whose consumer span must
//!   continue the trace (same trace id, the traceparent's span as parent);
//! - NServiceBus (repo Particular/NServiceBus): `Headers.DiagnosticsTraceParent` =
//!   "traceparent" and `DiagnosticsTraceState` = "tracestate" (src/NServiceBus.Core/Headers.cs),
//!   read by src/NServiceBus.Core/OpenTelemetry/Tracing/ActivityFactory.cs and
//!   ContextPropagation.cs from the message headers, which the RabbitMQ transport copies
//!   from the AMQP headers (repo Particular/NServiceBus.RabbitMQ,
//!   src/NServiceBus.Transport.RabbitMQ/Receiving/MessageConverter.cs RetrieveHeaders);
//! - MassTransit (repo MassTransit/MassTransit): the transport header `MT-Activity-Id`
//!   (src/MassTransit/Logging/Diagnostics/DiagnosticHeaders.cs ActivityId), which
//!   src/MassTransit/Logging/Diagnostics/LogContextActivityExtensions.cs StartReceiveActivity
//!   parses with `ActivityContext.TryParse` as a W3C traceparent;
//! - CloudEvents (both modes): the distributed-tracing extension attributes, parsed by the
//!   official Python SDK (RabbitMQ binding) and, structured, by the JavaScript SDK.
//!
//! No .NET runtime runs here: the MassTransit and NServiceBus headers are read with
//! OpenTelemetry's W3C propagator, the format `ActivityContext.TryParse` reads.
//!
//! `#[ignore]`d like cloudevents.rs: the checkers need `bash scripts/consumers.sh`.

use super::cloudevents::sdk_check;
use super::*;

/// One row of a phase: how its trace context is written, and which one.
struct Traced {
    /// `(traceparent, tracestate)` in the trace columns.
    columns: Option<(String, String)>,
    /// `(traceparent, tracestate)` as keys of the headers column.
    headers: Option<(String, String)>,
}

impl Traced {
    /// The trace context the consumer must see: the columns' if set, else the headers'.
    fn expected(&self) -> Option<&(String, String)> {
        self.columns.as_ref().or(self.headers.as_ref())
    }
}

/// A traceparent whose trace id and span id are unique to `phase` and `row`.
fn traceparent(phase: usize, row: usize) -> (String, String, String) {
    let trace_id = format!("4bf92f3577b34da6a3ce929d0e0e{phase:02x}{row:02x}");
    let span_id = format!("00f067aa0ba9{phase:02x}{row:02x}");
    (format!("00-{trace_id}-{span_id}-01"), trace_id, span_id)
}

/// Three rows: the trace in the columns (with a different, stale one in the headers column,
/// which must lose), the trace in the headers column only, and no trace.
fn rows(phase: usize) -> Vec<Traced> {
    let (from_columns, _, _) = traceparent(phase, 0);
    let (from_headers, _, _) = traceparent(phase, 1);
    vec![
        Traced {
            columns: Some((from_columns, format!("walbox=p{phase}r0"))),
            headers: Some((
                "00-ffffffffffffffffffffffffffffffff-ffffffffffffffff-01".into(),
                "stale=1".into(),
            )),
        },
        Traced {
            columns: None,
            headers: Some((from_headers, format!("walbox=p{phase}r1"))),
        },
        Traced {
            columns: None,
            headers: None,
        },
    ]
}

async fn insert_rows(env: &TestEnv, rows: &[Traced]) -> Vec<String> {
    let mut ids = Vec::new();
    env.db.batch_execute("BEGIN").await.unwrap();
    for row in rows {
        let headers = row.headers.as_ref().map(|(parent, state)| {
            json!({"traceparent": parent, "tracestate": state, "tenant": "acme"}).to_string()
        });
        let (parent, state) = match &row.columns {
            Some((parent, state)) => (Some(parent.as_str()), Some(state.as_str())),
            None => (None, None),
        };
        let inserted = env
            .db
            .query_one(
                "INSERT INTO outbox (aggregate_type, aggregate_id, event_type, payload, headers, \
                 traceparent, tracestate) VALUES ('order', 'o-1', 'Shop.Orders.OrderPlaced', \
                 '{\"OrderId\": 1}', $1::text::jsonb, $2, $3) RETURNING id::text",
                &[&headers, &parent, &state],
            )
            .await
            .expect("insert");
        ids.push(inserted.get(0));
    }
    env.db.batch_execute("COMMIT").await.unwrap();
    ids
}

/// What the W3C propagator must have read: the expected trace id, span id and tracestate.
fn assert_w3c(found: &Value, expected: Option<&(String, String)>, what: &str) {
    let Some((parent, state)) = expected else {
        assert!(
            found.is_null(),
            "{what}: no trace was written, found {found}"
        );
        return;
    };
    let fields: Vec<&str> = parent.split('-').collect();
    assert_eq!(found["trace_id"], json!(fields[1]), "{what}: trace id");
    assert_eq!(found["span_id"], json!(fields[2]), "{what}: span id");
    assert_eq!(found["sampled"], json!(true), "{what}: flags");
    // MassTransit's header carries the traceparent alone (it reads no tracestate there).
    let state = match what {
        MASSTRANSIT => Value::Null,
        _ => json!(state),
    };
    assert_eq!(found["tracestate"], state, "{what}: tracestate");
}

const MASSTRANSIT: &str = "MT-Activity-Id";

/// The consumer span of OpenTelemetry's pika instrumentation continues the written trace (or
/// starts a new root when none was written).
fn assert_consumer_span(message: &Value, expected: Option<&(String, String)>) {
    let span = &message["consumer_span"];
    assert_eq!(span["kind"], json!("CONSUMER"), "{message}");
    match expected {
        Some((parent, _)) => {
            let fields: Vec<&str> = parent.split('-').collect();
            assert_eq!(
                span["trace_id"],
                json!(fields[1]),
                "consumer span: {message}"
            );
            assert_eq!(
                span["parent_span_id"],
                json!(fields[2]),
                "consumer span: {message}"
            );
        }
        None => assert!(span["parent_span_id"].is_null(), "a root span: {message}"),
    }
}

/// One encoding: walbox runs with `extra`, the phase's rows go in, the checker reads them.
async fn phase(
    env: &mut TestEnv,
    queue: &str,
    index: usize,
    extra: &[&str],
) -> (Vec<Traced>, Value) {
    let args = env.args();
    let run = start_walbox(env, args, extra).await;
    let rows = rows(index);
    let ids = insert_rows(env, &rows).await;
    let summary = sdk_check("trace_check.py", queue, rows.len(), &[]);
    assert!(env.terminate(run).success(), "walbox stops cleanly");
    let messages = summary["messages"].as_array().expect("messages");
    for (message, id) in messages.iter().zip(&ids) {
        assert_eq!(
            message["message_id"],
            json!(id),
            "commit order: {summary:#}"
        );
    }
    for (message, row) in messages.iter().zip(&rows) {
        assert_w3c(
            &message["w3c"],
            row.expected(),
            "traceparent/tracestate headers",
        );
        assert_consumer_span(message, row.expected());
        assert!(
            message["headers"].get("tracestate").is_none() || row.expected().is_some(),
            "no tracestate without a traceparent: {message}"
        );
    }
    (rows, summary)
}

#[tokio::test]
#[ignore = "needs the CloudEvents SDKs and OpenTelemetry: bash scripts/consumers.sh, then --ignored"]
async fn every_encodings_consumer_continues_the_producers_trace() {
    let mut env = TestEnv::new("fw_trace").await;
    env.db
        .batch_execute("ALTER TABLE outbox ADD COLUMN traceparent text, ADD COLUMN tracestate text")
        .await
        .expect("trace columns");
    let queue = env.durable_queue("trace", FieldTable::default()).await;

    // walbox's own contract: the raw payload, the W3C headers.
    phase(&mut env, &queue, 0, &[]).await;

    // NServiceBus reads the same `traceparent` / `tracestate` headers (see the module doc);
    // its preset, on this test's topic exchange (TestEnv::args names it).
    let nservicebus = ["--preset", "nservicebus", "--exchange-kind", "topic"];
    let (_, summary) = phase(&mut env, &queue, 1, &nservicebus).await;
    for message in summary["messages"].as_array().unwrap() {
        assert!(
            message["cloudevent"].is_null(),
            "a plain message: {message}"
        );
    }

    // MassTransit: the envelope, and MT-Activity-Id holding the traceparent.
    let (rows, summary) = phase(&mut env, &queue, 2, &["--body", "masstransit"]).await;
    for (message, row) in summary["messages"].as_array().unwrap().iter().zip(&rows) {
        assert_w3c(&message["masstransit"], row.expected(), MASSTRANSIT);
    }

    // CloudEvents binary: ce-traceparent / ce-tracestate, parsed by the Python SDK.
    let (rows, summary) = phase(&mut env, &queue, 3, &["--body", "cloudevents-binary"]).await;
    for (message, row) in summary["messages"].as_array().unwrap().iter().zip(&rows) {
        let event = &message["cloudevent"];
        assert_eq!(event["mode"], json!("binary"), "{message}");
        assert_w3c(
            &event["w3c"],
            row.expected(),
            "CloudEvents binary (Python SDK)",
        );
        assert_eq!(
            event["tracestate"],
            row.expected()
                .map_or(Value::Null, |(_, state)| json!(state))
        );
    }

    // CloudEvents structured: the attributes in the JSON event, parsed by both SDKs.
    let node_queue = env.durable_queue("trace_node", FieldTable::default()).await;
    let (rows, summary) = phase(&mut env, &queue, 4, &["--body", "cloudevents"]).await;
    for (message, row) in summary["messages"].as_array().unwrap().iter().zip(&rows) {
        let event = &message["cloudevent"];
        assert_eq!(event["mode"], json!("structured"), "{message}");
        assert_w3c(
            &event["w3c"],
            row.expected(),
            "CloudEvents structured (Python SDK)",
        );
    }
    let node = sdk_check("ce_check.js", &node_queue, rows.len(), &[]);
    for (event, row) in node["events"].as_array().unwrap().iter().zip(&rows) {
        assert_w3c(
            &event["trace"],
            row.expected(),
            "CloudEvents structured (JavaScript SDK)",
        );
        assert_eq!(
            event["attributes"]["traceparent"],
            row.expected()
                .map_or(Value::Null, |(parent, _)| json!(parent))
        );
    }
}
