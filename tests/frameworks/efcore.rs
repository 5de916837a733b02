//! The EF Core interceptor outbox ("OutboxMessages", the community pattern) relayed in a
//! home-grown JSON envelope made by a body template.

use super::*;

/// The community pattern's entity (e.g. map110/Gatherly src/Gatherly.Persistence/Outbox/
/// OutboxMessage.cs, table `nameof(OutboxMessages)`) as EF Core's Npgsql provider creates it.
const OUTBOX_MESSAGES_DDL: &str = r#"
CREATE TABLE "OutboxMessages" (
    "Id" uuid NOT NULL,
    "Type" text NOT NULL,
    "Content" text NOT NULL,
    "OccurredOnUtc" timestamp with time zone NOT NULL,
    "ProcessedOnUtc" timestamp with time zone NULL,
    "Error" text NULL,
    CONSTRAINT "PK_OutboxMessages" PRIMARY KEY ("Id")
);
"#;

#[tokio::test]
async fn ef_core_outbox_messages_reach_a_home_grown_envelope_consumer() {
    let mut env = TestEnv::new("fw_efcore").await;
    env.db
        .batch_execute(OUTBOX_MESSAGES_DDL)
        .await
        .expect("OutboxMessages table");
    // The home-grown consumer: a fixed exchange (this test's) and routing key.
    let mut consumer = env.queue("envelope", "outbox.message").await;
    let args = env.args();
    let run = start_walbox(
        &mut env,
        args,
        &[
            "--columns",
            "outbox-messages",
            "--table",
            "public.OutboxMessages",
            "--routing-key",
            "outbox.message",
            "--body",
            "template",
            "--body-template",
            r#"{"Id": {id|json}, "Content": {payload|json}}"#,
        ],
    )
    .await;

    // ConvertDomainEventsToOutboxMessagesInterceptor.SavingChangesAsync: one row per domain
    // event in the SaveChanges transaction; Type = GetType().Name, Content = Newtonsoft JSON
    // with TypeNameHandling.All ($type first).
    let content = r#"{"$type":"Gatherly.Domain.DomainEvents.MemberRegisteredDomainEvent, Gatherly.Domain","Id":"5b0c7a3e-9f7e-4c43-9a2f-0c6d1c1e8b11","MemberId":"a3c0e9f2-1d2b-4c5e-8f7a-6b5c4d3e2f1a","Name":"Zo\u00eb \"Z\" O'Neil"}"#;
    let row = env
        .db
        .query_one(
            "INSERT INTO \"OutboxMessages\" (\"Id\", \"Content\", \"Error\", \"OccurredOnUtc\", \
             \"ProcessedOnUtc\", \"Type\") VALUES (gen_random_uuid(), $1, NULL, now(), NULL, \
             'MemberRegisteredDomainEvent') RETURNING \"Id\"::text",
            &[&content],
        )
        .await
        .expect("insert as the interceptor");
    let id: String = row.get(0);
    // ProcessOutboxMessagesJob sets ProcessedOnUtc afterwards.
    env.db
        .execute(
            "UPDATE \"OutboxMessages\" SET \"ProcessedOnUtc\" = now() WHERE \"Id\" = $1::text::uuid",
            &[&id],
        )
        .await
        .expect("update as the job");

    let deliveries = receive_exactly(&env, run, &mut consumer, 1).await;
    let delivery = &deliveries[0];
    assert_eq!(delivery.routing_key.as_str(), "outbox.message");
    assert_eq!(content_type(delivery), Some("application/json"));
    // The issue's consumer contract: {"Id": "<uuid>", "Content": "<Content as a JSON string>"}.
    let envelope = body_json(delivery);
    assert_eq!(envelope, json!({"Id": id, "Content": content}));
}

/// The EF Core pattern's OutboxMessages as its interceptor and job write them: unprocessed
/// rows (ProcessedOnUtc NULL), processed ones, and processed with an Error (the job sets
/// ProcessedOnUtc either way); the job marking a row processed.
struct OutboxMessages;

impl Framework for OutboxMessages {
    fn ddl(&self) -> &'static str {
        OUTBOX_MESSAGES_DDL
    }
    fn table(&self) -> &'static str {
        r#""OutboxMessages""#
    }
    fn id_column(&self) -> &'static str {
        r#""Id""#
    }
    fn created_column(&self) -> &'static str {
        r#""OccurredOnUtc""#
    }
    fn states(&self) -> &'static [(&'static str, bool)] {
        &[
            ("unprocessed", false),
            ("processed", true),
            ("failed", true),
        ]
    }
    async fn insert(
        &self,
        db: &tokio_postgres::Client,
        n: i64,
        state: usize,
        age_ms: i32,
    ) -> String {
        let content = format!(r#"{{"$type":"Shop.Events.Registered, Shop","N":{n}}}"#);
        db.query_one(
            "INSERT INTO \"OutboxMessages\" (\"Id\", \"Content\", \"Error\", \"OccurredOnUtc\", \
             \"ProcessedOnUtc\", \"Type\") VALUES (gen_random_uuid(), $1, \
             CASE WHEN $2 = 2 THEN 'Timeout' END, now() - ($3::int * interval '1 ms'), \
             CASE WHEN $2 > 0 THEN now() END, 'Registered') RETURNING \"Id\"::text",
            &[&content, &(state as i32), &age_ms],
        )
        .await
        .expect("insert as the interceptor")
        .get(0)
    }
    fn publish_steps(&self) -> &'static [(&'static str, bool)] {
        &[(
            "UPDATE \"OutboxMessages\" SET \"ProcessedOnUtc\" = now() WHERE \"Id\" = $1::text::uuid",
            true,
        )]
    }
    fn walbox_args(&self, env: &TestEnv) -> Vec<String> {
        let mut args = env.args();
        args.extend(
            [
                "--columns",
                "outbox-messages",
                "--table",
                "public.OutboxMessages",
                "--routing-key",
                "outbox.message",
            ]
            .map(str::to_owned),
        );
        args
    }
}

#[tokio::test]
async fn ef_core_cut_over_sends_the_unprocessed_rows_once_then_the_new_ones() {
    let mut env = TestEnv::new("fw_efcore_cutover").await;
    let mut consumer = env.queue("cutover", "outbox.message").await;
    cut_over_scene(&mut env, &OutboxMessages, &mut consumer).await;
}
