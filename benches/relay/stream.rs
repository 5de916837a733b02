//! The stream side of the bench (issue #14): the raw stream publisher of the stream ceiling,
//! the stream consumer that times a drain into a stream, and the arguments that make walbox
//! publish to a stream (`--target stream`).
//!
//! The raw publisher is what walbox's stream target does without PostgreSQL: one named producer
//! (so the broker deduplicates by publishing id), explicit strictly increasing publishing ids,
//! every message confirmed, at most walbox's `--max-in-flight` unconfirmed, and messages carrying
//! walbox's properties and headers as AMQP 1.0 properties and application properties. It is the
//! crate's plain `Producer`, which packs up to `WALBOX_BENCH_STREAM_BATCH` (100, its default)
//! queued messages into one publish frame; walbox sends one message per frame through the
//! crate's low-level client (src/publish/stream/mod.rs), which the bench's second stream ceiling
//! imitates with a batch of 1.

use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use futures_util::StreamExt;
use rabbitmq_stream_client::types::{Message, OffsetSpecification};
use rabbitmq_stream_client::{Client, ClientOptions, Environment};
use tokio::sync::Semaphore;

use super::amqp::{Deliveries, Seen, unix_micros};
use super::world::WALBOX;

/// The parts of a `rabbitmq-stream://user:password@host:port/vhost` URL.
#[derive(Debug, PartialEq, Eq)]
struct StreamUrl {
    user: String,
    password: String,
    host: String,
    port: u16,
    vhost: String,
}

fn parse_url(url: &str) -> Result<StreamUrl> {
    let rest = url
        .strip_prefix("rabbitmq-stream://")
        .with_context(|| format!("{url}: a stream URL starts with rabbitmq-stream://"))?;
    let (authority, vhost) = rest.split_once('/').unwrap_or((rest, ""));
    let (credentials, address) = authority
        .rsplit_once('@')
        .unwrap_or(("guest:guest", authority));
    let (user, password) = credentials.split_once(':').unwrap_or((credentials, ""));
    let (host, port) = address.rsplit_once(':').unwrap_or((address, "5552"));
    let vhost = match vhost {
        "" => "/".to_owned(),
        other => other.replace("%2f", "/").replace("%2F", "/"),
    };
    Ok(StreamUrl {
        user: user.to_owned(),
        password: password.to_owned(),
        host: host.to_owned(),
        port: port
            .parse()
            .with_context(|| format!("{url}: {port} is no port"))?,
        vhost,
    })
}

async fn environment(url: &str) -> Result<Environment> {
    let url = parse_url(url)?;
    Environment::builder()
        .host(&url.host)
        .port(url.port)
        .username(&url.user)
        .password(&url.password)
        .virtual_host(&url.vhost)
        .build()
        .await
        .with_context(|| format!("connecting to the stream port {}:{}", url.host, url.port))
}

/// Read `stream` from its first offset. The consumer's connection lives as long as the stream
/// of deliveries.
pub async fn consume(url: &str, stream: &str) -> Result<Deliveries> {
    let consumer = environment(url)
        .await?
        .consumer()
        .offset(OffsetSpecification::First)
        .build(stream)
        .await
        .with_context(|| format!("consuming stream {stream}"))?;
    Ok(Box::pin(consumer.map(|delivery| -> Result<Seen> {
        let delivery = delivery?;
        Ok(Seen::of(delivery.message().data().unwrap_or_default()))
    })))
}

/// The broker's version, from the stream connection's server properties (None when the stream
/// port does not answer, e.g. a broker without the stream plugin).
pub async fn broker_version(url: &str) -> Option<String> {
    let url = parse_url(url).ok()?;
    let options = ClientOptions::builder()
        .host(&url.host)
        .port(url.port)
        .user(&url.user)
        .password(&url.password)
        .v_host(&url.vhost)
        .build();
    let connect = Client::connect(options);
    let client = tokio::time::timeout(Duration::from_secs(5), connect)
        .await
        .ok()?
        .ok()?;
    let version = client.server_properties().await.get("version").cloned();
    let _ = client.close().await;
    version
}

/// The arguments that make `walbox run` publish to `stream` instead of the exchange.
pub fn walbox_args(url: &str, stream: &str) -> Vec<String> {
    [
        "--target",
        "stream",
        "--stream",
        stream,
        "--stream-url",
        url,
    ]
    .iter()
    .map(|arg| arg.to_string())
    .collect()
}

/// Whether this walbox has the stream target (`walbox run --help` offers `--target`).
pub fn walbox_has_stream_target() -> bool {
    Command::new(&*WALBOX)
        .args(["run", "--help"])
        .stdin(Stdio::null())
        .output()
        .is_ok_and(|out| String::from_utf8_lossy(&out.stdout).contains("--target"))
}

/// A message shaped like walbox's on a stream: the AMQP properties as AMQP 1.0 properties, the
/// headers as application properties.
/// (src/publish/stream/message.rs maps them the same way.)
fn event_message(id: &str, seq: u64, body: Vec<u8>, publishing_id: u64) -> Message {
    Message::builder()
        .body(body)
        .publishing_id(publishing_id)
        .properties()
        .message_id(id.to_owned())
        .content_type("application/json")
        .subject("order.created")
        .message_builder()
        .application_properties()
        .insert("type", "created")
        .insert("app-id", "walbox")
        .insert("timestamp", (unix_micros() / 1_000_000) as i64)
        .insert("x-aggregate-type", "order")
        .insert("x-aggregate-id", format!("o-{seq}").as_str())
        .insert("x-commit-lsn", "0/AA7E898")
        .insert("x-xid", 1468_i64)
        .message_builder()
        .build()
}

/// The stream ceiling's publisher, its own process like walbox (this bench binary with
/// `WALBOX_BENCH_ROLE=stream-publisher`): publish `WALBOX_BENCH_PUBLISH_EVENTS` messages of
/// `WALBOX_BENCH_PUBLISH_BYTES` bytes to `WALBOX_BENCH_STREAM` from a named producer, ids
/// 1, 2, …, at most `WALBOX_BENCH_PUBLISH_WINDOW` unconfirmed; then wait to be stopped (so the
/// bench can still read its CPU and memory). Fails if any message is not confirmed.
pub async fn publisher_role() -> Result<()> {
    let env = |name: &str| -> Result<String> {
        std::env::var(name).map_err(|_| anyhow::anyhow!("{name} is not set"))
    };
    let events: u64 = env("WALBOX_BENCH_PUBLISH_EVENTS")?.parse()?;
    let body_size: usize = env("WALBOX_BENCH_PUBLISH_BYTES")?.parse()?;
    let window: usize = env("WALBOX_BENCH_PUBLISH_WINDOW")?.parse::<usize>()?.max(1);
    let stream = env("WALBOX_BENCH_STREAM")?;
    let batch: usize = env("WALBOX_BENCH_STREAM_BATCH")?.parse::<usize>()?.max(1);
    let environment = environment(&env("WALBOX_BENCH_STREAM_URL")?).await?;
    // Named: the broker keeps the last publishing id per name and drops any message whose id is
    // not above it, which is what walbox's exactly-once rests on (the broker does that work).
    let mut producer = environment
        .producer()
        .name(&format!("{stream}-ceiling"))
        .batch_size(batch)
        .build(&stream)
        .await
        .with_context(|| format!("a producer for stream {stream}"))?;
    let in_flight = Arc::new(Semaphore::new(window));
    let refused = Arc::new(AtomicUsize::new(0));
    let stamp = unix_micros();
    let started = std::time::Instant::now();
    for seq in 0..events {
        let permit = in_flight.clone().acquire_owned().await?;
        let id = format!("00000000-0000-4000-8000-{seq:012}");
        let body = super::load::json_body(body_size, stamp, seq);
        let refused = refused.clone();
        producer
            .send(event_message(&id, seq, body, seq + 1), move |status| {
                if !status.is_ok_and(|status| status.confirmed()) {
                    refused.fetch_add(1, Ordering::Relaxed);
                }
                drop(permit);
                async {}
            })
            .await?;
    }
    // Every permit back: every message answered.
    let _all = in_flight.acquire_many(window as u32).await?;
    let refused = refused.load(Ordering::Relaxed);
    if refused > 0 {
        bail!("{refused} of {events} messages were not confirmed by the stream");
    }
    println!("{}", super::amqp::confirmed_line(events, started.elapsed()));
    std::future::pending::<()>().await;
    Ok(())
}

/// Checks of this module's own logic, run by `cargo test --all-targets` (see `main`).
pub fn self_check() {
    assert_eq!(
        parse_url("rabbitmq-stream://guest:secret@127.0.0.1:48552/%2f").unwrap(),
        StreamUrl {
            user: "guest".into(),
            password: "secret".into(),
            host: "127.0.0.1".into(),
            port: 48552,
            vhost: "/".into(),
        }
    );
    assert_eq!(parse_url("rabbitmq-stream://h").unwrap().port, 5552);
    assert!(parse_url("amqp://h:5672").is_err());
}
