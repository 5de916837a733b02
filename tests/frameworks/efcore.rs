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
