//! Print what walbox publishes: declares a queue bound to an exchange, then prints each message
//! (routing key, message id, headers, body). Used by scripts/quickstart.sh.
//!
//!     cargo run --example tail -- [--amqp-url URL] [--exchange outbox] [--queue NAME]
//!                                  [--binding '#'] [--count N] [--timeout-secs S]

use std::time::Duration;

use futures_util::StreamExt;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{Connection, ConnectionProperties};

fn flag(args: &[String], name: &str, default: &str) -> String {
    args.iter()
        .position(|arg| arg == name)
        .and_then(|index| args.get(index + 1))
        .cloned()
        .unwrap_or_else(|| default.to_owned())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let url = flag(&args, "--amqp-url", "amqp://guest:guest@127.0.0.1:5672/%2f");
    let exchange = flag(&args, "--exchange", "outbox");
    let queue = flag(&args, "--queue", "walbox-tail");
    let binding = flag(&args, "--binding", "#");
    let count: usize = flag(&args, "--count", "0").parse()?;
    let timeout = Duration::from_secs(flag(&args, "--timeout-secs", "0").parse()?);

    let connection = Connection::connect(&url, ConnectionProperties::default()).await?;
    let channel = connection.create_channel().await?;
    channel
        .queue_declare(
            queue.as_str().into(),
            QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await?;
    channel
        .queue_bind(
            queue.as_str().into(),
            exchange.as_str().into(),
            binding.as_str().into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;
    println!("tail: queue {queue} bound to exchange {exchange} with {binding}");
    let mut consumer = channel
        .basic_consume(
            queue.as_str().into(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    let mut received = 0;
    loop {
        let next = if timeout.is_zero() {
            consumer.next().await
        } else {
            match tokio::time::timeout(timeout, consumer.next()).await {
                Ok(next) => next,
                Err(_) => {
                    anyhow::bail!("tail: no message within {timeout:?} ({received} received)")
                }
            }
        };
        let Some(delivery) = next else { break };
        let delivery = delivery?;
        let headers = delivery
            .properties
            .headers()
            .as_ref()
            .map(|table| {
                table
                    .inner()
                    .iter()
                    .map(|(key, value)| match value {
                        AMQPValue::LongString(text) => format!("{key}={text}"),
                        AMQPValue::LongLongInt(number) => format!("{key}={number}"),
                        other => format!("{key}={other:?}"),
                    })
                    .collect::<Vec<_>>()
                    .join(" ")
            })
            .unwrap_or_default();
        println!(
            "{} id={} {}\n    {}",
            delivery.routing_key,
            delivery
                .properties
                .message_id()
                .as_ref()
                .map(|id| id.as_str())
                .unwrap_or("-"),
            headers,
            String::from_utf8_lossy(&delivery.data)
        );
        delivery.ack(BasicAckOptions::default()).await?;
        received += 1;
        if count > 0 && received >= count {
            break;
        }
    }
    Ok(())
}
