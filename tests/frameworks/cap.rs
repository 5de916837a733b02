//! CAP (DotNetCore.CAP, repo dotnetcore/CAP): its `cap.published` table and its RabbitMQ consumer.

use super::*;

/// src/DotNetCore.CAP.PostgreSql/IStorageInitializer.PostgreSql.cs, CreateDbTablesScript, with
/// the default schema "cap" (src/DotNetCore.CAP.PostgreSql/CAP.EFOptions.cs).
const CAP_DDL: &str = r#"
CREATE SCHEMA IF NOT EXISTS "cap";
CREATE TABLE IF NOT EXISTS "cap"."published"(
	"Id" BIGINT PRIMARY KEY NOT NULL,
    "Version" VARCHAR(20) NOT NULL,
	"Name" VARCHAR(200) NOT NULL,
	"Content" TEXT NULL,
	"Retries" INT NOT NULL,
	"Added" TIMESTAMP NOT NULL,
    "ExpiresAt" TIMESTAMP NULL,
	"StatusName" VARCHAR(50) NOT NULL
);
CREATE INDEX IF NOT EXISTS "idx_published_ExpiresAt_StatusName" ON "cap"."published"("ExpiresAt","StatusName");
CREATE INDEX IF NOT EXISTS "idx_published_Version_ExpiresAt_StatusName" ON "cap"."published" ("Version","ExpiresAt","StatusName");
"#;

/// `JsonSerializer.Serialize(Message)` of CAP's Message (Headers + Value) as
/// src/DotNetCore.CAP/Internal/ICapPublisher.Default.cs fills it.
fn cap_content(id: i64, name: &str, type_name: &str, value: &Value) -> String {
    let id = id.to_string();
    json!({
        "Headers": {
            "cap-callback-name": null,
            "cap-msg-id": id,
            "cap-corr-id": id,
            "cap-corr-seq": "0",
            "cap-msg-name": name,
            "cap-msg-type": type_name,
            "cap-senttime": "12/02/2026 10:31:05",
        },
        "Value": value,
    })
    .to_string()
}

#[tokio::test]
async fn cap_consumer_gets_the_value_and_its_cap_headers() {
    let _exchange = exclusive("cap.default.router").await;
    let mut env = TestEnv::new("fw_cap").await;
    let mut objects = BrokerObjects::new();
    env.db.batch_execute(CAP_DDL).await.expect("CAP tables");

    // The consumer as CAP's RabbitMQ transport declares it (src/DotNetCore.CAP.RabbitMQ/
    // RabbitMQConsumerClient.cs ConnectAsync, IConnectionChannelPool.Default.cs): the durable
    // topic exchange cap.default.router, the group's durable queue with x-message-ttl, one
    // binding per subscribed topic name.
    let exchange = "cap.default.router";
    let channel = &env.channel;
    declare_exchange(
        channel,
        &mut objects,
        exchange,
        ExchangeKind::Topic,
        true,
        false,
    )
    .await;
    let queue = format!("cap.queue.{}.v1", env.name);
    let mut ttl = FieldTable::default();
    ttl.insert("x-message-ttl".into(), AMQPValue::LongInt(864_000_000));
    let durable = QueueDeclareOptions {
        durable: true,
        ..Default::default()
    };
    declare_queue(channel, &mut objects, &queue, durable, ttl).await;
    // Topic names unique to this test, so another run's messages cannot reach this queue.
    let created = format!("{}.order.created", env.name);
    let paid = format!("{}.order.paid", env.name);
    bind_queue(channel, &queue, exchange, &created).await;
    bind_queue(channel, &queue, exchange, &paid).await;
    let mut consumer = consume(channel, &queue).await;

    let args = preset_args(&env);

    let run = start_walbox(
        &mut env,
        args,
        &["--preset", "cap", "--table", "cap.published"],
    )
    .await;

    // Two messages published in one business transaction, as CAP's StoreMessageAsync inserts
    // them (src/DotNetCore.CAP.PostgreSql/IDataStorage.PostgreSql.cs): Id = the snowflake
    // cap-msg-id, Version 'v1', StatusName 'Scheduled', Added local time.
    let rows = [
        (
            7_345_123_456_789_012_345_i64,
            created.clone(),
            "OrderCreated",
            json!({"OrderId": 42, "Total": 12.5, "Lines": [{"Sku": "A-1", "Qty": 2}]}),
        ),
        (
            7_345_123_456_789_012_346_i64,
            paid.clone(),
            "OrderPaid",
            json!({"OrderId": 42, "PaidAt": "2026-12-02T10:31:05Z", "Note": "caf\u{e9} \u{2713}"}),
        ),
    ];
    let insert = "INSERT INTO \"cap\".\"published\" \
        (\"Id\",\"Version\",\"Name\",\"Content\",\"Retries\",\"Added\",\"ExpiresAt\",\"StatusName\") \
        VALUES($1,'v1',$2,$3,0,localtimestamp,NULL,'Scheduled')";
    env.db
        .batch_execute("BEGIN; CREATE TABLE orders (id int); INSERT INTO orders VALUES (42)")
        .await
        .unwrap();
    for (id, name, type_name, value) in &rows {
        let content = cap_content(*id, name, type_name, value);
        env.db
            .execute(insert, &[id, name, &content])
            .await
            .expect("insert as CAP");
    }
    env.db.batch_execute("COMMIT").await.unwrap();
    // After sending, CAP rewrites the row (ChangeMessageStateAsync): Content again, Retries,
    // ExpiresAt and StatusName 'Succeeded'.
    for (id, name, type_name, value) in &rows {
        let content = cap_content(*id, name, type_name, value);
        env.db
            .execute(
                "UPDATE \"cap\".\"published\" SET \"Content\"=$1,\"Retries\"=0,\
                 \"ExpiresAt\"=localtimestamp + interval '1 day',\"StatusName\"='Succeeded' \
                 WHERE \"Id\"=$2",
                &[&content, id],
            )
            .await
            .expect("update as CAP");
    }

    let deliveries = receive_exactly(&env, run, &mut consumer, rows.len()).await;
    for (delivery, (id, name, type_name, value)) in deliveries.iter().zip(&rows) {
        let id_text = id.to_string();
        // ITransport.RabbitMQ.cs SendAsync: BasicPublish(cap.default.router, routingKey =
        // message name, props { MessageId = cap-msg-id, Persistent, Headers = all headers }).
        assert_eq!(delivery.exchange.as_str(), exchange);
        assert_eq!(delivery.routing_key.as_str(), name);
        assert_eq!(message_id(delivery), id_text);
        assert_eq!(delivery.properties.delivery_mode(), &Some(2), "persistent");
        // ISerializer.JsonUtf8.cs SerializeAsync: the body is Message.Value only, not the
        // whole Content column.
        assert_eq!(&body_json(delivery), value, "body = Content.Value");
        // IConsumerRegister.Default.cs: GetId() and GetName() read these two headers first; a
        // missing one is rejected with requeue, forever.
        assert_eq!(string_header(delivery, "cap-msg-id"), id_text);
        assert_eq!(string_header(delivery, "cap-msg-name"), *name);
        // Expected by CAP (deserialisation fallback, dashboard, correlation):
        assert_eq!(string_header(delivery, "cap-msg-type"), *type_name);
        assert_eq!(
            string_header(delivery, "cap-senttime"),
            "12/02/2026 10:31:05"
        );
        assert_eq!(string_header(delivery, "cap-corr-id"), id_text);
        // Message.cs GetCorrelationSequence: int.Parse of this header.
        assert_eq!(
            string_header(delivery, "cap-corr-seq").parse::<i32>(),
            Ok(0)
        );
    }
    drop(consumer);
    drop(objects);
}

/// CAP's published table as its storage writes it: rows in every StatusName CAP stores
/// (src/DotNetCore.CAP/Internal/StatusName.cs and the Delayed/Queued states of delayed
/// publishing), the sender's ChangeMessageStateAsync after a failed try (Retries + 1, Failed)
/// and after success (Succeeded).
struct Cap {
    name: String,
}

impl Framework for Cap {
    fn ddl(&self) -> &'static str {
        CAP_DDL
    }
    fn table(&self) -> &'static str {
        r#""cap"."published""#
    }
    fn record_table(&self) -> &'static str {
        r#""cap"."walbox_backfill""#
    }
    fn id_column(&self) -> &'static str {
        r#""Id""#
    }
    fn created_column(&self) -> &'static str {
        r#""Added""#
    }
    fn states(&self) -> &'static [(&'static str, bool)] {
        &[
            ("Scheduled", false),
            ("Succeeded", true),
            ("Failed", false),
            ("Delayed", false),
            ("Queued", false),
        ]
    }
    async fn insert(
        &self,
        db: &tokio_postgres::Client,
        n: i64,
        state: usize,
        age_ms: i32,
    ) -> String {
        let id = 7_345_123_456_789_000_000 + n;
        let content = cap_content(id, &self.name, "OrderCreated", &json!({"OrderId": n}));
        db.query_one(
            "INSERT INTO \"cap\".\"published\" (\"Id\",\"Version\",\"Name\",\"Content\",\
             \"Retries\",\"Added\",\"ExpiresAt\",\"StatusName\") VALUES($1,'v1',$2,$3,0,\
             localtimestamp - ($4::int * interval '1 ms'),NULL,$5) RETURNING \"Id\"::text",
            &[&id, &self.name, &content, &age_ms, &self.states()[state].0],
        )
        .await
        .expect("insert as CAP")
        .get(0)
    }
    fn publish_steps(&self) -> &'static [(&'static str, bool)] {
        &[
            (
                "UPDATE \"cap\".\"published\" SET \"Retries\" = \"Retries\" + 1, \
                 \"StatusName\" = 'Failed' WHERE \"Id\" = $1::text::bigint",
                false,
            ),
            (
                "UPDATE \"cap\".\"published\" SET \"ExpiresAt\" = localtimestamp + interval \
                 '1 day', \"StatusName\" = 'Succeeded' WHERE \"Id\" = $1::text::bigint",
                true,
            ),
        ]
    }
    fn walbox_args(&self, env: &TestEnv) -> Vec<String> {
        // The preset names the table (cap.published) and its predicate.
        let mut args = preset_args(env);
        args.extend(["--preset".to_owned(), "cap".to_owned()]);
        args
    }
}

#[tokio::test]
async fn cap_cut_over_sends_the_unpublished_rows_once_then_the_new_ones() {
    let _exchange = exclusive("cap.default.router").await;
    let mut env = TestEnv::new("fw_cap_cutover").await;
    let mut objects = BrokerObjects::new();
    let exchange = "cap.default.router";
    declare_exchange(
        &env.channel,
        &mut objects,
        exchange,
        ExchangeKind::Topic,
        true,
        false,
    )
    .await;
    let name = format!("{}.order.created", env.name);
    let queue = format!("cap.queue.{}.v1", env.name);
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
    bind_queue(&env.channel, &queue, exchange, &name).await;
    let mut consumer = consume(&env.channel, &queue).await;
    cut_over_scene(&mut env, &Cap { name }, &mut consumer).await;
    drop(consumer);
    drop(objects);
}
