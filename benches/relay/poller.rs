//! The baseline walbox is compared with: a small polling outbox relay, as commonly written.
//! Every round it locks a batch of the oldest rows (`SELECT … ORDER BY created_at LIMIT n FOR
//! UPDATE SKIP LOCKED`, served by an index on created_at that the bench creates for it),
//! publishes them with the same confirms and window as walbox, deletes them and commits. When
//! a round finds fewer rows than a full batch it sleeps the poll interval first.
//!
//! It runs as its own process (this bench binary with `WALBOX_BENCH_ROLE=poller`), so its CPU
//! and memory are measured like walbox's. Unlike walbox it does not keep commit order across
//! concurrent writers (rows become visible in commit order, not created_at order).

use std::time::Duration;

use anyhow::{Context, Result};
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::{BasicProperties, types::ShortString};

use super::amqp::Publisher;
use super::world::pg_connect;

/// The index the polling relay needs to find the oldest rows without sorting the table.
pub const INDEX_SQL: &str = "CREATE INDEX outbox_created_at ON outbox (created_at)";

fn env(name: &str) -> Result<String> {
    std::env::var(name).with_context(|| format!("{name} is not set"))
}

pub async fn run() -> Result<()> {
    let batch: i64 = env("WALBOX_BENCH_POLL_BATCH")?.parse()?;
    let interval = Duration::from_millis(env("WALBOX_BENCH_POLL_INTERVAL_MS")?.parse()?);
    let mut client = pg_connect(&env("WALBOX_BENCH_PG_URL")?).await?;
    let mut publisher = Publisher::connect(
        &env("WALBOX_BENCH_AMQP_URL")?,
        &env("WALBOX_BENCH_EXCHANGE")?,
        batch as usize,
    )
    .await?;
    let select = client
        .prepare(
            "SELECT id::text, aggregate_type, aggregate_id, event_type, payload::text, \
             extract(epoch FROM created_at)::bigint FROM outbox \
             ORDER BY created_at LIMIT $1 FOR UPDATE SKIP LOCKED",
        )
        .await?;
    let delete = client
        .prepare("DELETE FROM outbox WHERE id = ANY($1::text[]::uuid[])")
        .await?;
    loop {
        let tx = client.transaction().await?;
        let rows = tx.query(&select, &[&batch]).await?;
        let mut ids = Vec::with_capacity(rows.len());
        for row in &rows {
            let id: String = row.get(0);
            let aggregate_type: &str = row.get(1);
            let aggregate_id: &str = row.get(2);
            let event_type: &str = row.get(3);
            let payload: &str = row.get(4);
            let created_at: i64 = row.get(5);
            let mut headers = FieldTable::default();
            headers.insert(
                "x-aggregate-type".into(),
                AMQPValue::LongString(LongString::from(aggregate_type)),
            );
            headers.insert(
                "x-aggregate-id".into(),
                AMQPValue::LongString(LongString::from(aggregate_id)),
            );
            let properties = BasicProperties::default()
                .with_delivery_mode(2)
                .with_message_id(ShortString::from(id.as_str()))
                .with_type(ShortString::from(event_type))
                .with_content_type("application/json".into())
                .with_timestamp(created_at.max(0) as u64)
                .with_app_id("wbb-poller".into())
                .with_headers(headers);
            let routing_key = ShortString::from(format!("{aggregate_type}.{event_type}"));
            publisher
                .publish(routing_key, payload.as_bytes().to_vec(), properties)
                .await?;
            ids.push(id);
        }
        // Delete only what the broker confirmed.
        publisher.flush().await?;
        if !ids.is_empty() {
            tx.execute(&delete, &[&ids]).await?;
        }
        tx.commit().await?;
        if rows.len() < batch as usize {
            tokio::time::sleep(interval).await;
        }
    }
}
