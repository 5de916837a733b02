//! eShop (repo dotnet/eShop, on PostgreSQL; same bus as dotnet-architecture/eShopOnContainers):
//! its IntegrationEventLog table and its EventBusRabbitMQ consumer.

use super::*;

/// What EF Core's Npgsql provider runs for src/Catalog.API/Infrastructure/Migrations/
/// 20231026091140_Outbox.cs (dotnet/eShop).
const ESHOP_DDL: &str = r#"
CREATE TABLE "IntegrationEventLog" (
    "EventId" uuid NOT NULL,
    "EventTypeName" text NOT NULL,
    "State" integer NOT NULL,
    "TimesSent" integer NOT NULL,
    "CreationTime" timestamp with time zone NOT NULL,
    "Content" text NOT NULL,
    "TransactionId" uuid NOT NULL,
    CONSTRAINT "PK_IntegrationEventLog" PRIMARY KEY ("EventId")
);
"#;

#[tokio::test]
async fn eshop_consumer_gets_content_on_the_short_type_name() {
    let _exchange = exclusive("eshop_event_bus").await;
    let mut env = TestEnv::new("fw_eshop").await;
    let mut objects = BrokerObjects::new();
    env.db.batch_execute(ESHOP_DDL).await.expect("eShop table");

    // The consumer as src/EventBusRabbitMQ/RabbitMQEventBus.cs StartAsync declares it:
    // ExchangeDeclareAsync("eshop_event_bus", "direct") — non-durable, not auto-delete —, the
    // durable queue named by EventBus:SubscriptionClientName, bound once per subscribed event
    // with routing key typeof(T).Name.
    let exchange = "eshop_event_bus";
    let channel = &env.channel;
    declare_exchange(
        channel,
        &mut objects,
        exchange,
        ExchangeKind::Direct,
        false,
        false,
    )
    .await;
    let queue = format!("{}_Ordering", env.name);
    let durable = QueueDeclareOptions {
        durable: true,
        ..Default::default()
    };
    declare_queue(
        channel,
        &mut objects,
        &queue,
        durable,
        FieldTable::default(),
    )
    .await;
    // One top-level and one nested event type (FullName `Outer+Inner`, Name `Inner`); names
    // unique to this test.
    let started = format!("OrderStarted{}IntegrationEvent", env.name);
    let changed = format!("ProductPriceChanged{}IntegrationEvent", env.name);
    bind_queue(channel, &queue, exchange, &started).await;
    bind_queue(channel, &queue, exchange, &changed).await;
    let mut consumer = consume(channel, &queue).await;

    let args = preset_args(&env);

    let run = start_walbox(
        &mut env,
        args,
        &["--preset", "eshop", "--table", "public.IntegrationEventLog"],
    )
    .await;

    // IntegrationEventLogEntry's constructor (src/IntegrationEventLogEF/IntegrationEventLogEntry.cs):
    // EventTypeName = GetType().FullName, Content = indented System.Text.Json of the event,
    // State 0, TimesSent 0; saved in the business transaction (IntegrationEventLogService
    // SaveEventAsync -> UseTransaction).
    let events = [
        (
            format!("eShop.Ordering.API.Application.IntegrationEvents.Events.{started}"),
            "{\n  \"UserId\": \"u-7\",\n  \"Id\": \"0f8fad5b-d9cb-469f-a165-70867728950e\",\n  \"CreationDate\": \"2026-12-02T10:31:05.1234567Z\"\n}",
            started.clone(),
        ),
        (
            format!("eShop.Catalog.API.IntegrationEvents.Events.CatalogEvents+{changed}"),
            "{\n  \"ProductId\": 5,\n  \"NewPrice\": 19.5,\n  \"OldPrice\": 21,\n  \"Id\": \"7c9e6679-7425-40de-944b-e07fc1f90ae7\",\n  \"CreationDate\": \"2026-12-02T10:31:06Z\"\n}",
            changed.clone(),
        ),
    ];
    let mut event_ids = Vec::new();
    env.db.batch_execute("BEGIN").await.unwrap();
    for (type_name, content, _) in &events {
        let row = env
            .db
            .query_one(
                "INSERT INTO \"IntegrationEventLog\" (\"EventId\", \"Content\", \"CreationTime\", \
                 \"EventTypeName\", \"State\", \"TimesSent\", \"TransactionId\") \
                 VALUES (gen_random_uuid(), $1, now(), $2, 0, 0, gen_random_uuid()) \
                 RETURNING \"EventId\"::text",
                &[content, type_name],
            )
            .await
            .expect("insert as eShop");
        event_ids.push(row.get::<_, String>(0));
    }
    env.db.batch_execute("COMMIT").await.unwrap();
    // The publisher's later updates, each its own SaveChanges (UpdateEventStatus):
    // InProgress with TimesSent++, then Published.
    for event_id in &event_ids {
        for update in [
            "UPDATE \"IntegrationEventLog\" SET \"State\" = 1, \"TimesSent\" = 1 WHERE \"EventId\" = $1::text::uuid",
            "UPDATE \"IntegrationEventLog\" SET \"State\" = 2 WHERE \"EventId\" = $1::text::uuid",
        ] {
            env.db
                .execute(update, &[event_id])
                .await
                .expect("update as eShop");
        }
    }

    let deliveries = receive_exactly(&env, run, &mut consumer, events.len()).await;
    for (delivery, (_, content, short_name)) in deliveries.iter().zip(&events) {
        // RabbitMQEventBus.PublishAsync: exchange eshop_event_bus, routingKey =
        // @event.GetType().Name; the consumer dispatches on the routing key alone.
        assert_eq!(delivery.exchange.as_str(), exchange);
        assert_eq!(delivery.routing_key.as_str(), short_name);
        // DeliveryMode = Persistent.
        assert_eq!(delivery.properties.delivery_mode(), &Some(2), "persistent");
        // The body the bus would serialize is the event's JSON, which Content already holds.
        assert_eq!(
            String::from_utf8_lossy(&delivery.data),
            *content,
            "body = Content verbatim"
        );
        // OnMessageReceived also extracts OpenTelemetry trace context from the headers, but
        // the propagators (opentelemetry-dotnet TraceContextPropagator, BaggagePropagator)
        // catch what the getter throws on a message without headers: nothing else is read.
    }
    drop(consumer);
    drop(objects);
}

/// eShop's IntegrationEventLog, as IntegrationEventLogService writes it: rows in every
/// EventStateEnum state (src/IntegrationEventLogEF/EventStateEnum.cs: NotPublished 0,
/// InProgress 1, Published 2, PublishedFailed 3), the publisher's UpdateEventStatus moving a row
/// to InProgress (TimesSent + 1) and then Published.
struct Eshop {
    type_name: String,
}

impl Framework for Eshop {
    fn ddl(&self) -> &'static str {
        ESHOP_DDL
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
        let content = format!("{{\n  \"OrderId\": {n},\n  \"Id\": \"{n}\"\n}}");
        db.query_one(
            "INSERT INTO \"IntegrationEventLog\" (\"EventId\", \"Content\", \"CreationTime\", \
             \"EventTypeName\", \"State\", \"TimesSent\", \"TransactionId\") VALUES \
             (gen_random_uuid(), $1, now() - ($2::int * interval '1 ms'), $3, $4, 0, \
             gen_random_uuid()) RETURNING \"EventId\"::text",
            &[&content, &age_ms, &self.type_name, &(state as i32)],
        )
        .await
        .expect("insert as eShop")
        .get(0)
    }
    fn publish_steps(&self) -> &'static [(&'static str, bool)] {
        &[
            (
                "UPDATE \"IntegrationEventLog\" SET \"State\" = 1, \"TimesSent\" = \"TimesSent\" + 1 \
                 WHERE \"EventId\" = $1::text::uuid",
                false,
            ),
            (
                "UPDATE \"IntegrationEventLog\" SET \"State\" = 2 WHERE \"EventId\" = $1::text::uuid",
                true,
            ),
        ]
    }
    fn walbox_args(&self, env: &TestEnv) -> Vec<String> {
        // The preset names the table (public.IntegrationEventLog) and its predicate.
        let mut args = preset_args(env);
        args.extend(["--preset".to_owned(), "eshop".to_owned()]);
        args
    }
}

#[tokio::test]
async fn eshop_cut_over_sends_the_unpublished_rows_once_then_the_new_ones() {
    let _exchange = exclusive("eshop_event_bus").await;
    let mut env = TestEnv::new("fw_eshop_cutover").await;
    let mut objects = BrokerObjects::new();
    let exchange = "eshop_event_bus";
    declare_exchange(
        &env.channel,
        &mut objects,
        exchange,
        ExchangeKind::Direct,
        false,
        false,
    )
    .await;
    let short = format!("CutOver{}IntegrationEvent", env.name);
    let queue = format!("{}_Ordering", env.name);
    let durable = QueueDeclareOptions {
        durable: true,
        ..Default::default()
    };
    declare_queue(
        &env.channel,
        &mut objects,
        &queue,
        durable,
        FieldTable::default(),
    )
    .await;
    bind_queue(&env.channel, &queue, exchange, &short).await;
    let mut consumer = consume(&env.channel, &queue).await;
    let framework = Eshop {
        type_name: format!("eShop.Ordering.API.Application.IntegrationEvents.Events.{short}"),
    };
    cut_over_scene(&mut env, &framework, &mut consumer).await;
    drop(consumer);
    drop(objects);
}
