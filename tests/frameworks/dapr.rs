//! MASA Framework's IntegrationEventLog (repo masastack/MASA.Framework) relayed to a Dapr pub/sub
//! subscriber on RabbitMQ (dapr/components-contrib, dapr/dapr, dapr/dotnet-sdk).

use super::*;

/// EF Core on Npgsql for src/Contrib/Dispatcher/IntegrationEvents/
/// Masa.Contrib.Dispatcher.IntegrationEvents.EventLogs.EFCore/IntegrationEventLogEntityTypeConfiguration.cs
/// and the entity src/BuildingBlocks/Dispatcher/Masa.BuildingBlocks.Dispatcher.IntegrationEvents/Logs/IntegrationEventLog.cs.
const MASA_DDL: &str = r#"
CREATE TABLE "IntegrationEventLog" (
    "Id" uuid NOT NULL,
    "EventId" uuid NOT NULL,
    "EventTypeName" text NOT NULL,
    "State" integer NOT NULL,
    "TimesSent" integer NOT NULL,
    "CreationTime" timestamp with time zone NOT NULL,
    "ModificationTime" timestamp with time zone NOT NULL,
    "Content" text NOT NULL,
    "ExpandContent" text NOT NULL,
    "TransactionId" uuid NOT NULL,
    "RowVersion" character varying(36) NOT NULL,
    CONSTRAINT "PK_IntegrationEventLog" PRIMARY KEY ("Id")
);
CREATE INDEX "IX_State_MTime" ON "IntegrationEventLog" ("State", "ModificationTime");
CREATE INDEX "IX_State_TimesSent_MTime" ON "IntegrationEventLog" ("State", "TimesSent", "ModificationTime");
CREATE INDEX "IX_EventId_Version" ON "IntegrationEventLog" ("EventId", "RowVersion");
"#;

#[tokio::test]
async fn dapr_subscriber_gets_a_structured_cloudevent_of_the_masa_event() {
    let mut env = TestEnv::new("fw_dapr").await;
    let mut objects = BrokerObjects::new();
    env.db.batch_execute(MASA_DDL).await.expect("MASA table");

    // MASA's topic is the event's Topic property, by default GetType().Name (IntegrationEvent.cs);
    // the name is unique to this test.
    let topic = format!("OrderPaid{}IntegrationEvent", env.name);
    let type_name = format!("Masa.Demo.Ordering.IntegrationEvents.{topic}");

    // The subscriber as Dapr's RabbitMQ component declares it (components-contrib
    // pubsub/rabbitmq/rabbitmq.go prepareSubscription, metadata.go defaults): exchange = topic,
    // fanout, durable, auto-delete (deletedWhenUnused); queue "{consumerID}-{topic}", durable,
    // auto-delete; bound with routing key "".
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
    let mut consumer = consume(channel, &queue).await;

    let args = preset_args(&env);

    let run = start_walbox(
        &mut env,
        args,
        &["--preset", "dapr", "--table", "public.IntegrationEventLog"],
    )
    .await;

    // IntegrationEventLogService.SaveEventAsync with the IntegrationEventLog constructor: a new
    // Id, the event's EventId, FullName, JSON of the event (its Topic included; `EvenCreateTime`
    // is MASA's own spelling), State 0, a RowVersion stamp; in the business transaction.
    let event_id = "3f2504e0-4f89-41d3-9a0c-0305e82c3301";
    let content = json!({
        "EventId": event_id,
        "EvenCreateTime": "2026-12-02T10:31:05.123Z",
        "Topic": topic,
        "OrderId": 42,
        "Amount": 99.95,
    })
    .to_string();
    env.db.batch_execute("BEGIN").await.unwrap();
    let row = env
        .db
        .query_one(
            "INSERT INTO \"IntegrationEventLog\" (\"Id\", \"Content\", \"CreationTime\", \"EventId\", \
             \"EventTypeName\", \"ExpandContent\", \"ModificationTime\", \"RowVersion\", \"State\", \
             \"TimesSent\", \"TransactionId\") \
             VALUES (gen_random_uuid(), $1, now(), $2::text::uuid, $3, '', now(), gen_random_uuid()::text, 0, 0, \
             gen_random_uuid()) RETURNING \"Id\"::text",
            &[&content, &event_id, &type_name],
        )
        .await
        .expect("insert as MASA");
    let row_id: String = row.get(0);
    env.db.batch_execute("COMMIT").await.unwrap();
    // UpdateEventStatus: EventLogs.Update(entry) writes every column, with the RowVersion
    // concurrency check; InProgress (TimesSent+1), then Published.
    for (state, times_sent) in [(1, 1), (2, 1)] {
        env.db
            .execute(
                "UPDATE \"IntegrationEventLog\" SET \"Content\" = \"Content\", \"CreationTime\" = \"CreationTime\", \
                 \"EventId\" = \"EventId\", \"EventTypeName\" = \"EventTypeName\", \"ExpandContent\" = '', \
                 \"ModificationTime\" = now(), \"RowVersion\" = gen_random_uuid()::text, \"State\" = $1, \
                 \"TimesSent\" = $2, \"TransactionId\" = \"TransactionId\" \
                 WHERE \"Id\" = $3::text::uuid",
                &[&state, &times_sent, &row_id],
            )
            .await
            .expect("update as MASA");
    }

    let deliveries = receive_exactly(&env, run, &mut consumer, 1).await;
    let delivery = &deliveries[0];
    assert_eq!(delivery.exchange.as_str(), topic, "exchange = the topic");
    assert_eq!(delivery.routing_key.as_str(), "");
    // dapr/dapr pkg/runtime/subscription/subscription.go: with no content type from the
    // component, the body is json.Unmarshal'ed as a structured CloudEvent.
    let event = body_json(delivery);
    let event = event
        .as_object()
        .expect("a JSON object (a structured CloudEvent)");
    assert_eq!(event.get("specversion"), Some(&json!("1.0")));
    for attribute in ["id", "source", "type"] {
        let value = event.get(attribute).and_then(Value::as_str).unwrap_or("");
        assert!(
            !value.is_empty(),
            "CloudEvent {attribute} missing: {event:?}"
        );
    }
    assert_eq!(event.get("id"), Some(&json!(event_id)), "id = EventId");
    // components-contrib pubsub HasExpired drops an event whose `expiration` is past.
    assert!(!event.contains_key("expiration"));
    // dapr/dotnet-sdk src/Dapr.AspNetCore/CloudEventsMiddleware.cs: `data` (not with
    // data_base64) is handed to the handler with datacontenttype (absent = application/json)
    // as its content type, so data must be the event object itself.
    assert!(!event.contains_key("data_base64"));
    let data_content_type = event
        .get("datacontenttype")
        .and_then(Value::as_str)
        .unwrap_or("application/json");
    assert!(
        data_content_type.starts_with("application/json"),
        "datacontenttype {data_content_type}"
    );
    assert_eq!(
        event.get("data"),
        Some(&json_of(&content)),
        "data = the event"
    );
    if let Some(time) = event.get("time").and_then(Value::as_str) {
        assert!(is_timestamp(&env, time).await, "time {time}");
    }
    drop(consumer);
    drop(objects);
}
