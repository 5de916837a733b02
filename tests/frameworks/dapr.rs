//! MASA Framework's IntegrationEventLog (repo masastack/MASA.Framework) relayed to a Dapr pub/sub
//! subscriber on RabbitMQ (dapr/components-contrib, dapr/dapr, dapr/dotnet-sdk).

use super::*;

/// EF Core on Npgsql for src/Contrib/Dispatcher/IntegrationEvents/
/// Masa.Contrib.Dispatcher.IntegrationEvents.EventLogs.EFCore/IntegrationEventLogEntityTypeConfiguration.cs
/// and the entity src/BuildingBlocks/Dispatcher/Masa.BuildingBlocks.Dispatcher.IntegrationEvents/Logs/IntegrationEventLog.cs.
pub(crate) const MASA_DDL: &str = r#"
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

/// One MASA integration event: its .NET full name, its Topic, and its Content.
struct MasaEvent {
    type_name: String,
    topic: String,
    event_id: &'static str,
    content: String,
}

#[tokio::test]
async fn dapr_subscriber_gets_a_structured_cloudevent_of_the_masa_event() {
    let mut env = TestEnv::new("fw_dapr").await;
    let mut objects = BrokerObjects::new();
    env.db.batch_execute(MASA_DDL).await.expect("MASA table");

    // MASA's topic is the event's Topic property (IntegrationEvent.cs: `GetType().Name` unless
    // the event overrides it), stored in Content; the publisher reads it back from there
    // (IntegrationEventLog.DeserializeJsonContent). One event keeps the default, one overrides
    // it. Names unique to this test.
    let short = format!("OrderPaid{}IntegrationEvent", env.name);
    let events = [
        MasaEvent {
            type_name: format!("Masa.Demo.Ordering.IntegrationEvents.{short}"),
            topic: short.clone(),
            event_id: "3f2504e0-4f89-41d3-9a0c-0305e82c3301",
            content: String::new(),
        },
        MasaEvent {
            type_name: "Masa.Demo.Payments.IntegrationEvents.PaymentSucceededIntegrationEvent"
                .to_owned(),
            topic: format!("{}.payments", env.name),
            event_id: "9a1f7c2e-3b4d-4e5f-8a6b-7c8d9e0f1a2b",
            content: String::new(),
        },
    ]
    .map(|mut event| {
        // JsonSerializer.Serialize((object)@event): the record's properties, PascalCase
        // (`EvenCreateTime` is MASA's own spelling).
        event.content = json!({
            "EventId": event.event_id,
            "EvenCreateTime": "2026-12-02T10:31:05.123Z",
            "Topic": event.topic,
            "OrderId": 42,
            "Amount": 99.95,
        })
        .to_string();
        event
    });

    // The subscribers as Dapr's RabbitMQ component declares them (components-contrib
    // pubsub/rabbitmq/rabbitmq.go prepareSubscription, metadata.go defaults): exchange = the
    // topic, fanout, durable, auto-delete (deletedWhenUnused); queue "{consumerID}-{topic}",
    // durable, auto-delete; bound with routing key "".
    let channel = &env.channel;
    let mut consumers = Vec::new();
    for event in &events {
        let fanout = ExchangeKind::Fanout;
        declare_exchange(channel, &mut objects, &event.topic, fanout, true, true).await;
        let queue = format!("{}-{}", env.name, event.topic);
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
        bind_queue(channel, &queue, &event.topic, "").await;
        consumers.push(consume(channel, &queue).await);
    }

    let args = preset_args(&env);
    let extra = ["--preset", "dapr", "--table", "public.IntegrationEventLog"];
    let run = start_walbox(&mut env, args, &extra).await;

    // IntegrationEventLogService.SaveEventAsync with the IntegrationEventLog constructor: a new
    // Id, the event's EventId, FullName, the event's JSON, State 0, a RowVersion stamp; in the
    // business transaction.
    let mut row_ids = Vec::new();
    env.db.batch_execute("BEGIN").await.unwrap();
    for event in &events {
        let row = env
            .db
            .query_one(
                "INSERT INTO \"IntegrationEventLog\" (\"Id\", \"Content\", \"CreationTime\", \
                 \"EventId\", \"EventTypeName\", \"ExpandContent\", \"ModificationTime\", \
                 \"RowVersion\", \"State\", \"TimesSent\", \"TransactionId\") \
                 VALUES (gen_random_uuid(), $1, now(), $2::text::uuid, $3, '', now(), \
                 gen_random_uuid()::text, 0, 0, gen_random_uuid()) RETURNING \"Id\"::text",
                &[&event.content, &event.event_id, &event.type_name],
            )
            .await
            .expect("insert as MASA");
        row_ids.push(row.get::<_, String>(0));
    }
    env.db.batch_execute("COMMIT").await.unwrap();
    // UpdateEventStatus: EventLogs.Update(entry) writes every column, with the RowVersion
    // concurrency check; InProgress (TimesSent+1), then Published.
    for row_id in &row_ids {
        for (state, times_sent) in [(1, 1), (2, 1)] {
            env.db
                .execute(
                    "UPDATE \"IntegrationEventLog\" SET \"Content\" = \"Content\", \
                     \"CreationTime\" = \"CreationTime\", \"EventId\" = \"EventId\", \
                     \"EventTypeName\" = \"EventTypeName\", \"ExpandContent\" = '', \
                     \"ModificationTime\" = now(), \"RowVersion\" = gen_random_uuid()::text, \
                     \"State\" = $1, \"TimesSent\" = $2, \"TransactionId\" = \"TransactionId\" \
                     WHERE \"Id\" = $3::text::uuid",
                    &[&state, &times_sent, row_id],
                )
                .await
                .expect("update as MASA");
        }
    }

    for (event, consumer) in events.iter().zip(&mut consumers) {
        let deliveries = receive_exactly(&env, run, consumer, 1).await;
        assert_subscriber_can_read(&env, &deliveries[0], event).await;
    }
    drop(consumers);
    drop(objects);
}

/// What Dapr's runtime and its ASP.NET Core middleware read from the message.
async fn assert_subscriber_can_read(env: &TestEnv, delivery: &Delivery, sent: &MasaEvent) {
    assert_eq!(
        delivery.exchange.as_str(),
        sent.topic,
        "exchange = the topic"
    );
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
    assert_eq!(event.get("id"), Some(&json!(sent.event_id)), "id = EventId");
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
        Some(&json_of(&sent.content)),
        "data = the event"
    );
    if let Some(time) = event.get("time").and_then(Value::as_str) {
        assert!(is_timestamp(env, time).await, "time {time}");
    }
}

/// MASA's IntegrationEventLog as IntegrationEventLogService writes it: rows in every
/// IntegrationEventStates state (NotPublished 0, InProgress 1, Published 2, PublishedFailed 3),
/// UpdateEventStatus writing InProgress (TimesSent + 1) and then Published, with a new
/// ModificationTime and RowVersion each time.
struct Masa {
    topic: String,
}

impl Framework for Masa {
    fn ddl(&self) -> &'static str {
        MASA_DDL
    }
    fn table(&self) -> &'static str {
        r#""IntegrationEventLog""#
    }
    fn id_column(&self) -> &'static str {
        r#""EventId""#
    }
    fn created_column(&self) -> &'static str {
        r#""CreationTime""#
    }
    fn states(&self) -> &'static [(&'static str, bool)] {
        &[
            ("NotPublished", false),
            ("InProgress", false),
            ("Published", true),
            ("PublishedFailed", false),
        ]
    }
    async fn insert(
        &self,
        db: &tokio_postgres::Client,
        n: i64,
        state: usize,
        age_ms: i32,
    ) -> String {
        let content = json!({"EvenCreateTime": "2026-12-02T10:31:05.123Z", "Topic": self.topic, "OrderId": n})
            .to_string();
        db.query_one(
            "INSERT INTO \"IntegrationEventLog\" (\"Id\", \"Content\", \"CreationTime\", \
             \"EventId\", \"EventTypeName\", \"ExpandContent\", \"ModificationTime\", \
             \"RowVersion\", \"State\", \"TimesSent\", \"TransactionId\") VALUES \
             (gen_random_uuid(), $1, now() - ($2::int * interval '1 ms'), gen_random_uuid(), \
             'Masa.Demo.Ordering.OrderPaidIntegrationEvent', '', now(), gen_random_uuid()::text, \
             $3, 0, gen_random_uuid()) RETURNING \"EventId\"::text",
            &[&content, &age_ms, &(state as i32)],
        )
        .await
        .expect("insert as MASA")
        .get(0)
    }
    fn publish_steps(&self) -> &'static [(&'static str, bool)] {
        &[
            (
                "UPDATE \"IntegrationEventLog\" SET \"ModificationTime\" = now(), \
                 \"RowVersion\" = gen_random_uuid()::text, \"State\" = 1, \
                 \"TimesSent\" = \"TimesSent\" + 1 WHERE \"EventId\" = $1::text::uuid",
                false,
            ),
            (
                "UPDATE \"IntegrationEventLog\" SET \"ModificationTime\" = now(), \
                 \"RowVersion\" = gen_random_uuid()::text, \"State\" = 2 \
                 WHERE \"EventId\" = $1::text::uuid",
                true,
            ),
        ]
    }
    fn walbox_args(&self, env: &TestEnv) -> Vec<String> {
        // The preset names the table (public.IntegrationEventLog) and its predicate.
        let mut args = preset_args(env);
        args.extend(["--preset".to_owned(), "dapr".to_owned()]);
        args
    }
}

#[tokio::test]
async fn masa_cut_over_sends_the_unpublished_rows_once_then_the_new_ones() {
    let mut env = TestEnv::new("fw_masa_cutover").await;
    let mut objects = BrokerObjects::new();
    let topic = format!("{}.paid", env.name);
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
    cut_over_scene(&mut env, &Masa { topic }, &mut consumer).await;
    drop(consumer);
    drop(objects);
}
