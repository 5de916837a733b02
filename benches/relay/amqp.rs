//! The AMQP side of the bench: a publisher with walbox's in-flight window (used by the ceiling
//! and by the polling relay), and a consumer that counts deliveries (of a queue, or of a stream
//! through benches/relay/stream.rs) and their latency.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::Poll;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Result, bail};
use futures_util::{Stream, StreamExt};
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{BasicProperties, Channel, Confirmation, Connection, ConnectionProperties, Consumer};
use tokio::task::JoinHandle;

use super::procfs;

type Answer = Pin<Box<dyn Future<Output = lapin::Result<Confirmation>> + Send>>;

/// Publishes persistent, mandatory messages on one confirm-mode channel with at most `limit`
/// unconfirmed, the way walbox's sink does: each publish is polled once so its frames are
/// queued in order at once, and the broker's answers are awaited oldest first.
pub struct Publisher {
    _connection: Connection,
    channel: Channel,
    exchange: ShortString,
    in_flight: VecDeque<Answer>,
    limit: usize,
}

impl Publisher {
    pub async fn connect(url: &str, exchange: &str, limit: usize) -> Result<Self> {
        let connection = Connection::connect(url, ConnectionProperties::default()).await?;
        let channel = connection.create_channel().await?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        Ok(Publisher {
            _connection: connection,
            channel,
            exchange: exchange.into(),
            in_flight: VecDeque::with_capacity(limit),
            limit: limit.max(1),
        })
    }

    pub async fn publish(
        &mut self,
        routing_key: ShortString,
        body: Vec<u8>,
        properties: BasicProperties,
    ) -> Result<()> {
        while self.in_flight.len() >= self.limit {
            self.settle_oldest().await?;
        }
        let channel = self.channel.clone();
        let exchange = self.exchange.clone();
        let mut answer: Answer = Box::pin(async move {
            channel
                .basic_publish(
                    exchange,
                    routing_key,
                    BasicPublishOptions {
                        mandatory: true,
                        ..Default::default()
                    },
                    &body,
                    properties,
                )
                .await?
                .await
        });
        match futures_util::poll!(answer.as_mut()) {
            Poll::Ready(confirmation) => check(confirmation),
            Poll::Pending => {
                self.in_flight.push_back(answer);
                Ok(())
            }
        }
    }

    /// Wait for every outstanding confirm.
    pub async fn flush(&mut self) -> Result<()> {
        while !self.in_flight.is_empty() {
            self.settle_oldest().await?;
        }
        Ok(())
    }

    async fn settle_oldest(&mut self) -> Result<()> {
        match self.in_flight.pop_front() {
            Some(answer) => check(answer.await),
            None => Ok(()),
        }
    }
}

/// Only a plain ack counts: a returned (unroutable) message or a nack is an error.
fn check(confirmation: lapin::Result<Confirmation>) -> Result<()> {
    match confirmation? {
        Confirmation::Ack(None) => Ok(()),
        Confirmation::Ack(Some(returned)) => bail!(
            "the broker returned a message as unroutable: {}",
            returned.reply_text
        ),
        Confirmation::Nack(_) => bail!("the broker nacked a message"),
        Confirmation::NotRequested => bail!("publisher confirms are not enabled"),
    }
}

/// AMQP properties shaped like walbox's (README "The message contract"), so a raw publish
/// carries as many bytes as a relayed event.
pub fn event_properties(id: &str, seq: u64) -> BasicProperties {
    let mut headers = FieldTable::default();
    headers.insert(
        "x-aggregate-type".into(),
        AMQPValue::LongString("order".into()),
    );
    headers.insert(
        "x-aggregate-id".into(),
        AMQPValue::LongString(LongString::from(format!("o-{seq}"))),
    );
    headers.insert(
        "x-commit-lsn".into(),
        AMQPValue::LongString("0/AA7E898".into()),
    );
    headers.insert("x-xid".into(), AMQPValue::LongLongInt(1468));
    BasicProperties::default()
        .with_delivery_mode(2)
        .with_message_id(id.into())
        .with_type("created".into())
        .with_content_type("application/json".into())
        .with_timestamp(unix_micros() / 1_000_000)
        .with_app_id("walbox".into())
        .with_headers(headers)
}

pub fn unix_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|elapsed| elapsed.as_micros() as u64)
        .unwrap_or(0)
}

/// What a [`count`] consumer saw.
#[derive(Debug, Default)]
pub struct Received {
    pub count: usize,
    pub bytes: u64,
    pub first: Option<Instant>,
    pub last: Option<Instant>,
    /// CPU (µs) of the watched processes when the first message arrived.
    pub cpu_at_first: Vec<Option<u64>>,
    /// The machine's CPU ticks when the first message arrived.
    pub machine_at_first: Option<(u64, u64)>,
    /// Commit → delivery latencies (µs) of events stamped at or after the `latency_from` time.
    pub latencies: Vec<u64>,
}

impl Received {
    /// First to last delivery.
    pub fn span(&self) -> Duration {
        match (self.first, self.last) {
            (Some(first), Some(last)) => last - first,
            _ => Duration::ZERO,
        }
    }

    /// Deliveries per second, first to last delivery.
    pub fn rate(&self) -> f64 {
        self.count as f64 / self.span().as_secs_f64().max(1e-6)
    }
}

/// What the counter needs of one delivery: its body's size and its commit stamp, read where
/// the delivery arrives so no body is copied.
#[derive(Debug)]
pub struct Seen {
    pub bytes: usize,
    pub stamp: Option<u64>,
}

impl Seen {
    pub fn of(body: &[u8]) -> Seen {
        Seen {
            bytes: body.len(),
            stamp: commit_stamp(body),
        }
    }
}

/// The deliveries of a queue or a stream, as the counter reads them.
pub type Deliveries = Pin<Box<dyn Stream<Item = Result<Seen>> + Send>>;

/// A queue's deliveries (no-ack consumer).
pub fn deliveries(consumer: Consumer) -> Deliveries {
    Box::pin(consumer.map(|delivery| -> Result<Seen> { Ok(Seen::of(&delivery?.data)) }))
}

/// A running consumer; set `target` to the number of messages to wait for.
pub struct Counter {
    pub target: Arc<AtomicUsize>,
    handle: JoinHandle<Result<Received>>,
}

impl Counter {
    pub fn is_finished(&self) -> bool {
        self.handle.is_finished()
    }

    pub async fn finish(self) -> Result<Received> {
        self.handle.await?
    }
}

/// Count deliveries until `target` have arrived or `deadline` passes. With `latency_from`
/// (unix µs), each body's `"t"` (the commit stamp written by the producer) gives a latency
/// sample for events stamped at or after it. `watch` are pids whose CPU is read at the first
/// delivery.
pub fn count(
    mut consumer: Deliveries,
    target: usize,
    deadline: Instant,
    latency_from: Option<u64>,
    watch: Vec<u32>,
) -> Counter {
    let target = Arc::new(AtomicUsize::new(target));
    let wanted = target.clone();
    let handle = tokio::spawn(async move {
        let mut received = Received::default();
        while received.count < wanted.load(Ordering::Relaxed) {
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            let wait = (deadline - now).min(Duration::from_millis(200));
            let delivery = match tokio::time::timeout(wait, consumer.next()).await {
                Err(_) => continue,
                Ok(None) => bail!("the consumer was cancelled"),
                Ok(Some(delivery)) => delivery?,
            };
            let at = Instant::now();
            if received.first.is_none() {
                received.first = Some(at);
                received.cpu_at_first = watch.iter().map(|&pid| procfs::cpu_micros(pid)).collect();
                received.machine_at_first = procfs::machine_ticks();
            }
            received.last = Some(at);
            received.count += 1;
            received.bytes += delivery.bytes as u64;
            if let Some(from) = latency_from
                && let Some(stamp) = delivery.stamp
                && stamp >= from
            {
                received.latencies.push(unix_micros().saturating_sub(stamp));
            }
        }
        Ok(received)
    });
    Counter { target, handle }
}

/// The `"t"` of a payload written by the bench's producer: `{"t": 1795359557123456, ...}`
/// (jsonb puts the shortest key first).
fn commit_stamp(body: &[u8]) -> Option<u64> {
    let rest = body.strip_prefix(br#"{"t": "#)?;
    let digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
    std::str::from_utf8(&rest[..digits]).ok()?.parse().ok()
}

/// The ceiling's publisher, run as its own process like walbox (this bench binary with
/// `WALBOX_BENCH_ROLE=publisher`): publish `WALBOX_BENCH_PUBLISH_EVENTS` messages of
/// `WALBOX_BENCH_PUBLISH_BYTES` bytes straight to the exchange with walbox's window and
/// confirms, then wait to be stopped (so the bench can still read its CPU and memory).
pub async fn publisher_role() -> Result<()> {
    let env = |name: &str| -> Result<String> {
        std::env::var(name).map_err(|_| anyhow::anyhow!("{name} is not set"))
    };
    let events: u64 = env("WALBOX_BENCH_PUBLISH_EVENTS")?.parse()?;
    let body_size: usize = env("WALBOX_BENCH_PUBLISH_BYTES")?.parse()?;
    let window: usize = env("WALBOX_BENCH_PUBLISH_WINDOW")?.parse()?;
    let mut publisher = Publisher::connect(
        &env("WALBOX_BENCH_AMQP_URL")?,
        &env("WALBOX_BENCH_EXCHANGE")?,
        window,
    )
    .await?;
    let stamp = unix_micros();
    let started = Instant::now();
    for seq in 0..events {
        let id = format!("00000000-0000-4000-8000-{seq:012}");
        let body = super::load::json_body(body_size, stamp, seq);
        publisher
            .publish("order.created".into(), body, event_properties(&id, seq))
            .await?;
    }
    publisher.flush().await?;
    println!("{}", confirmed_line(events, started.elapsed()));
    std::future::pending::<()>().await;
    Ok(())
}

/// The line a raw publisher prints once every message is confirmed: its own view of the rate,
/// first publish to last confirm, to compare with the consumer's (read back by
/// [`publisher_seconds`]).
pub fn confirmed_line(events: u64, took: Duration) -> String {
    format!(
        "publisher: {events} confirmed in {:.6} s (first publish to last confirm)",
        took.as_secs_f64()
    )
}

/// The seconds in a raw publisher's [`confirmed_line`], from its log.
pub fn publisher_seconds(log: &str) -> Option<f64> {
    log.lines().find_map(|line| {
        let rest = line.strip_prefix("publisher: ")?;
        let (_, rest) = rest.split_once(" confirmed in ")?;
        rest.split_once(' ')?.0.parse().ok()
    })
}

/// Checks of this module's own logic, run by `cargo test --all-targets` (see `main`).
pub fn self_check() {
    let line = confirmed_line(200_000, Duration::from_millis(12_345));
    assert_eq!(publisher_seconds(&format!("log\n{line}\n")), Some(12.345));
    assert_eq!(publisher_seconds("nothing here"), None);
    assert_eq!(
        commit_stamp(br#"{"t": 1795359557123456, "pad": ""}"#),
        Some(1795359557123456)
    );
}
