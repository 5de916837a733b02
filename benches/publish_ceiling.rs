//! The AMQP client's own cost per message, without walbox around it: lapin against amqprs
//! (issue #12), in one process and one run, on the private RabbitMQ of
//! `scripts/fault-servers.sh` (`WALBOX_TEST_AMQP_PORT`, default 5672).
//!
//! Each round publishes `CEILING_MESSAGES` (default 20,000) messages shaped like walbox's
//! events (a ~200 B JSON body; persistent; message id, type, timestamp, app id and walbox's
//! four headers built afresh per message, as walbox does), mandatory, on one confirm-mode
//! channel with at most 1,024 unconfirmed (walbox's default `--max-in-flight`), and waits for
//! every confirm. Each confirm is one future per message, resolved in publish order, as the
//! publisher seam (src/publish/mod.rs) needs. A round counts only if every message was a plain
//! ack. Rounds alternate (lapin, amqprs, lapin, ...; `CEILING_ROUNDS` each, default 7) so a busy
//! moment on the shared machine hits both alike; it prints each round and the medians of CPU
//! µs per message (the whole process's utime + stime, from getrusage) and messages per second.
//! Each round also prints the broker's CPU per message (its `beam.smp`: `CEILING_BROKER_PID`,
//! or every one on the machine) and how many of the machine's cores were busy.
//!
//! Without `--bench` (as `cargo test --all-targets` runs every bench target) it exits at once.

use std::collections::{BTreeMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use amqprs::callbacks::{ChannelCallback, DefaultConnectionCallback};
use amqprs::channel::{BasicPublishArguments, Channel as AmqprsChannel, ConfirmSelectArguments};
use amqprs::connection::{Connection as AmqprsConnection, OpenConnectionArguments};
use amqprs::{Ack, BasicProperties as AmqprsProperties, Cancel, CloseChannel, Nack, Return};
use lapin::options::{
    BasicPublishOptions, ConfirmSelectOptions, ExchangeDeclareOptions, QueueBindOptions,
    QueueDeclareOptions, QueueDeleteOptions, QueuePurgeOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{BasicProperties, Confirmation, Connection, ConnectionProperties, ExchangeKind};
use tokio::sync::oneshot;

/// walbox's default `--max-in-flight`.
const WINDOW: usize = 1024;

#[path = "relay/procfs.rs"]
mod procfs;

type LapinConfirm = Pin<Box<dyn Future<Output = lapin::Result<Confirmation>> + Send>>;

fn main() {
    if !std::env::args().any(|arg| arg == "--bench") {
        println!("publish_ceiling bench: run with `cargo bench --bench publish_ceiling`");
        return;
    }
    // One thread, as walbox runs (src/main.rs): the ceiling a drain is compared with is the
    // same client on the same kind of runtime. `CEILING_RUNTIME=multi` for a worker per core.
    let mut builder = if std::env::var("CEILING_RUNTIME").as_deref() == Ok("multi") {
        tokio::runtime::Builder::new_multi_thread()
    } else {
        tokio::runtime::Builder::new_current_thread()
    };
    let runtime = builder.enable_all().build().expect("a tokio runtime");
    runtime.block_on(run());
}

fn env_number(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or(default)
}

async fn run() {
    let port: u16 = env_number("WALBOX_TEST_AMQP_PORT", 5672) as u16;
    let messages = env_number("CEILING_MESSAGES", 20_000);
    let rounds = env_number("CEILING_ROUNDS", 7);
    let name = format!("wbceil_{}", std::process::id());
    let exchange = format!("{name}_x");
    let queue = format!("{name}_q");
    let url = format!("amqp://guest:guest@127.0.0.1:{port}/%2f");
    let brokers = brokers();

    // Topology and purges go through a lapin connection of their own, outside the measurement.
    let (admin, admin_channel) = declare(&url, &exchange, &queue).await;
    let mut lapin_client = LapinClient::connect(&url, &exchange).await;
    let mut amqprs_client = AmqprsClient::connect(port, &exchange).await;

    let mut results: [Vec<(f64, f64)>; 2] = [Vec::new(), Vec::new()];
    for round in 0..rounds {
        for (index, label) in ["lapin", "amqprs"].into_iter().enumerate() {
            let others_before = Others::read(&brokers);
            let cpu_before = cpu_micros();
            let started = Instant::now();
            let acked = if index == 0 {
                lapin_client.round(messages).await
            } else {
                amqprs_client.round(messages).await
            };
            let elapsed = started.elapsed();
            let cpu = cpu_micros() - cpu_before;
            let others = Others::read(&brokers).since(&others_before, messages);
            assert_eq!(acked, messages, "{label}: every message a plain ack");
            let per_message = cpu as f64 / messages as f64;
            let rate = messages as f64 / elapsed.as_secs_f64();
            println!(
                "round {round} {label:6}: {messages} msgs in {:.3} s, {rate:.0} msg/s, CPU {per_message:.2} µs/msg{others}",
                elapsed.as_secs_f64()
            );
            results[index].push((per_message, rate));
            admin_channel
                .queue_purge(queue.as_str().into(), QueuePurgeOptions::default())
                .await
                .expect("purge");
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
    report(&results, messages);

    amqprs_client.close().await;
    lapin_client.close().await;
    admin_channel
        .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
        .await
        .expect("delete queue");
    // The exchange is auto-delete: it goes with its last binding.
    let _ = admin.close(200, "done".into()).await;
}

/// Declare the round's durable topic exchange and durable queue bound to it with `#`, on a
/// lapin connection of its own; returns that connection and its channel.
async fn declare(url: &str, exchange: &str, queue: &str) -> (Connection, lapin::Channel) {
    let admin = Connection::connect(url, ConnectionProperties::default())
        .await
        .expect("connect (admin)");
    let channel = admin.create_channel().await.expect("admin channel");
    let exchange_options = ExchangeDeclareOptions {
        durable: true,
        auto_delete: true,
        ..ExchangeDeclareOptions::default()
    };
    channel
        .exchange_declare(
            exchange.into(),
            ExchangeKind::Topic,
            exchange_options,
            FieldTable::default(),
        )
        .await
        .expect("declare exchange");
    let queue_options = QueueDeclareOptions {
        durable: true,
        ..QueueDeclareOptions::default()
    };
    channel
        .queue_declare(queue.into(), queue_options, FieldTable::default())
        .await
        .expect("declare queue");
    channel
        .queue_bind(
            queue.into(),
            exchange.into(),
            "#".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("bind queue");
    (admin, channel)
}

/// The medians of each client's rounds, and the process's peak RSS (both clients).
fn report(results: &[Vec<(f64, f64)>; 2], messages: usize) {
    for (index, label) in ["lapin", "amqprs"].into_iter().enumerate() {
        let cpu = median(results[index].iter().map(|r| r.0).collect());
        let rate = median(results[index].iter().map(|r| r.1).collect());
        println!(
            "median {label:6}: CPU {cpu:.2} µs/msg, {rate:.0} msg/s ({} rounds of {messages})",
            results[index].len()
        );
    }
    if let Some(kib) = procfs::peak_rss_kib(std::process::id()) {
        println!(
            "peak RSS of this process (both clients): {:.1} MiB",
            kib as f64 / 1024.0
        );
    }
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    let middle = values.len() / 2;
    if values.len().is_multiple_of(2) {
        (values[middle - 1] + values[middle]) / 2.0
    } else {
        values[middle]
    }
}

/// The whole process's user + system CPU time, in microseconds.
fn cpu_micros() -> i64 {
    // SAFETY: getrusage writes one rusage into the zeroed struct it is given.
    let usage = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        assert_eq!(libc::getrusage(libc::RUSAGE_SELF, &mut usage), 0);
        usage
    };
    let micros = |time: libc::timeval| time.tv_sec * 1_000_000 + time.tv_usec;
    micros(usage.ru_utime) + micros(usage.ru_stime)
}

/// The broker's `beam.smp` processes: `CEILING_BROKER_PID`, or else every one on the machine
/// (under `WALBOX_BENCH_BROKER_ROOT` if set, as the relay bench counts them).
fn brokers() -> Vec<u32> {
    match std::env::var("CEILING_BROKER_PID") {
        Ok(pid) => vec![pid.parse().expect("CEILING_BROKER_PID: a process id")],
        Err(_) => procfs::broker_pids(),
    }
}

/// What the rest of the machine spent during a round (issue #21: how a drain's gap to the
/// ceiling splits between walbox, the walsender and the broker on two shared cores): the
/// broker's CPU and every core's busy time, from /proc (the relay bench's `procfs`).
struct Others {
    /// None when no broker process was found.
    broker_micros: Option<u64>,
    machine: Option<(u64, u64)>,
}

impl Others {
    fn read(brokers: &[u32]) -> Others {
        let cpu = |pid: &u32| procfs::cpu_micros(*pid);
        Others {
            broker_micros: (!brokers.is_empty()).then(|| brokers.iter().filter_map(cpu).sum()),
            machine: procfs::machine_ticks(),
        }
    }

    /// ", broker B µs/msg, machine C cores busy" since `before`.
    fn since(&self, before: &Others, messages: usize) -> String {
        let broker = match (self.broker_micros, before.broker_micros) {
            (Some(after), Some(before)) => {
                format!(
                    ", broker {:.2} µs/msg",
                    (after - before) as f64 / messages as f64
                )
            }
            _ => String::new(),
        };
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
        let busy = procfs::machine_busy(before.machine, self.machine).unwrap_or(0.0);
        format!("{broker}, machine {:.2} cores busy", busy / 100.0 * cores)
    }
}

/// A body like the relay bench's events: ~200 B of JSON.
fn body(index: usize) -> Vec<u8> {
    format!("{{\"n\": {index}, \"pad\": \"{}\"}}", "x".repeat(150)).into_bytes()
}

fn message_id(index: usize) -> String {
    format!("00000000-0000-4000-8000-{index:012}")
}

struct LapinClient {
    connection: Connection,
    channel: lapin::Channel,
    exchange: ShortString,
}

impl LapinClient {
    async fn connect(url: &str, exchange: &str) -> Self {
        let connection = Connection::connect(url, ConnectionProperties::default())
            .await
            .expect("connect (lapin)");
        let channel = connection.create_channel().await.expect("lapin channel");
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .expect("confirm select");
        LapinClient {
            connection,
            channel,
            exchange: exchange.into(),
        }
    }

    fn properties(index: usize) -> BasicProperties {
        let mut headers = FieldTable::default();
        headers.insert(
            "x-aggregate-type".into(),
            AMQPValue::LongString(LongString::from("order")),
        );
        headers.insert(
            "x-aggregate-id".into(),
            AMQPValue::LongString(LongString::from(format!("o{index}"))),
        );
        headers.insert(
            "x-commit-lsn".into(),
            AMQPValue::LongString(LongString::from(format!("0/{:X}", 0x1000_0000 + index))),
        );
        headers.insert("x-xid".into(), AMQPValue::LongLongInt(1000));
        BasicProperties::default()
            .with_delivery_mode(2)
            .with_timestamp(1_700_000_000)
            .with_app_id("walbox".into())
            .with_headers(headers)
            .with_message_id(message_id(index).into())
            .with_content_type("application/json".into())
            .with_type("order.created".into())
    }

    /// Publish `messages` with at most [`WINDOW`] unconfirmed, each publish polled once (its
    /// place fixed) and awaited later in order, as walbox's lapin publisher does. Returns how
    /// many were plain acks.
    async fn round(&mut self, messages: usize) -> usize {
        let mut pending: VecDeque<LapinConfirm> = VecDeque::with_capacity(WINDOW);
        let mut acked = 0;
        let plain = |answer: lapin::Result<Confirmation>| {
            matches!(answer, Ok(Confirmation::Ack(None))) as usize
        };
        for index in 0..messages {
            if pending.len() == WINDOW {
                acked += plain(pending.pop_front().expect("full").await);
            }
            let channel = self.channel.clone();
            let exchange = self.exchange.clone();
            let body = body(index);
            let properties = Self::properties(index);
            let mut confirm: LapinConfirm = Box::pin(async move {
                channel
                    .basic_publish(
                        exchange,
                        "order.created".into(),
                        BasicPublishOptions {
                            mandatory: true,
                            ..BasicPublishOptions::default()
                        },
                        &body,
                        properties,
                    )
                    .await?
                    .await
            });
            if let std::task::Poll::Ready(answer) = futures_util::poll!(confirm.as_mut()) {
                confirm = Box::pin(std::future::ready(answer));
            }
            pending.push_back(confirm);
        }
        for confirm in pending {
            acked += plain(confirm.await);
        }
        acked
    }

    async fn close(self) {
        let _ = self.channel.close(200, "done".into()).await;
        let _ = self.connection.close(200, "done".into()).await;
    }
}

/// What the broker said about one delivery tag.
#[derive(Debug, PartialEq)]
enum Answer {
    Ack,
    Nack,
    Returned,
}

/// Unanswered delivery tags and whom to tell, shared by the publisher and the channel's
/// callback (which runs on amqprs's dispatcher task, one frame at a time, in arrival order).
#[derive(Default)]
struct Waiters {
    next_tag: u64,
    pending: BTreeMap<u64, oneshot::Sender<Answer>>,
    /// Returns not yet matched to an ack: RabbitMQ sends a mandatory message's return before
    /// its ack, so the next acked tag is refused (as lapin does).
    returns: usize,
}

impl Waiters {
    fn answer(&mut self, tag: u64, multiple: bool, ack: bool) {
        let tags: Vec<u64> = if multiple {
            self.pending.range(..=tag).map(|(tag, _)| *tag).collect()
        } else {
            vec![tag]
        };
        for tag in tags {
            if let Some(waiter) = self.pending.remove(&tag) {
                let answer = if !ack {
                    Answer::Nack
                } else if self.returns > 0 {
                    self.returns -= 1;
                    Answer::Returned
                } else {
                    Answer::Ack
                };
                let _ = waiter.send(answer);
            }
        }
    }
}

struct ConfirmCallback(Arc<Mutex<Waiters>>);

#[async_trait::async_trait]
impl ChannelCallback for ConfirmCallback {
    async fn close(
        &mut self,
        _channel: &AmqprsChannel,
        close: CloseChannel,
    ) -> Result<(), amqprs::error::Error> {
        eprintln!("amqprs: channel closed by the broker: {close}");
        // Every waiter is dropped: its receiver sees the sender gone (a refusal).
        self.0.lock().expect("waiters").pending.clear();
        Ok(())
    }
    async fn cancel(
        &mut self,
        _channel: &AmqprsChannel,
        _cancel: Cancel,
    ) -> Result<(), amqprs::error::Error> {
        Ok(())
    }
    async fn flow(
        &mut self,
        _channel: &AmqprsChannel,
        active: bool,
    ) -> Result<bool, amqprs::error::Error> {
        Ok(active)
    }
    async fn publish_ack(&mut self, _channel: &AmqprsChannel, ack: Ack) {
        self.0
            .lock()
            .expect("waiters")
            .answer(ack.delivery_tag(), ack.mutiple(), true);
    }
    async fn publish_nack(&mut self, _channel: &AmqprsChannel, nack: Nack) {
        self.0
            .lock()
            .expect("waiters")
            .answer(nack.delivery_tag(), nack.multiple(), false);
    }
    async fn publish_return(
        &mut self,
        _channel: &AmqprsChannel,
        _ret: Return,
        _properties: AmqprsProperties,
        _content: Vec<u8>,
    ) {
        self.0.lock().expect("waiters").returns += 1;
    }
}

struct AmqprsClient {
    connection: AmqprsConnection,
    channel: AmqprsChannel,
    exchange: String,
    waiters: Arc<Mutex<Waiters>>,
}

impl AmqprsClient {
    async fn connect(port: u16, exchange: &str) -> Self {
        let connection = AmqprsConnection::open(&OpenConnectionArguments::new(
            "127.0.0.1",
            port,
            "guest",
            "guest",
        ))
        .await
        .expect("connect (amqprs)");
        connection
            .register_callback(DefaultConnectionCallback)
            .await
            .expect("connection callback");
        let channel = connection.open_channel(None).await.expect("amqprs channel");
        let waiters = Arc::new(Mutex::new(Waiters {
            next_tag: 1,
            ..Waiters::default()
        }));
        channel
            .register_callback(ConfirmCallback(waiters.clone()))
            .await
            .expect("channel callback");
        channel
            .confirm_select(ConfirmSelectArguments::default())
            .await
            .expect("confirm select");
        AmqprsClient {
            connection,
            channel,
            exchange: exchange.to_owned(),
            waiters,
        }
    }

    fn properties(index: usize) -> AmqprsProperties {
        let mut headers = amqprs::FieldTable::new();
        let text = |value: String| amqprs::FieldValue::S(value.try_into().expect("long string"));
        headers.insert(
            "x-aggregate-type".try_into().expect("name"),
            text("order".into()),
        );
        headers.insert(
            "x-aggregate-id".try_into().expect("name"),
            text(format!("o{index}")),
        );
        headers.insert(
            "x-commit-lsn".try_into().expect("name"),
            text(format!("0/{:X}", 0x1000_0000 + index)),
        );
        headers.insert(
            "x-xid".try_into().expect("name"),
            amqprs::FieldValue::l(1000),
        );
        AmqprsProperties::default()
            .with_delivery_mode(amqprs::DELIVERY_MODE_PERSISTENT)
            .with_timestamp(1_700_000_000)
            .with_app_id("walbox")
            .with_headers(headers)
            .with_message_id(&message_id(index))
            .with_content_type("application/json")
            .with_message_type("order.created")
            .finish()
    }

    /// As [`LapinClient::round`]: a delivery tag and a waiter registered before each publish
    /// (the channel numbers publishes from 1 in the order it sends them), awaited in order.
    async fn round(&mut self, messages: usize) -> usize {
        let mut pending: VecDeque<oneshot::Receiver<Answer>> = VecDeque::with_capacity(WINDOW);
        let mut acked = 0;
        let plain = |answer: Result<Answer, oneshot::error::RecvError>| {
            (answer == Ok(Answer::Ack)) as usize
        };
        let arguments = BasicPublishArguments::new(&self.exchange, "order.created")
            .mandatory(true)
            .finish();
        for index in 0..messages {
            if pending.len() == WINDOW {
                acked += plain(pending.pop_front().expect("full").await);
            }
            let (sender, receiver) = oneshot::channel();
            {
                let mut waiters = self.waiters.lock().expect("waiters");
                let tag = waiters.next_tag;
                waiters.next_tag += 1;
                waiters.pending.insert(tag, sender);
            }
            self.channel
                .basic_publish(Self::properties(index), body(index), arguments.clone())
                .await
                .expect("publish (amqprs)");
            pending.push_back(receiver);
        }
        for receiver in pending {
            acked += plain(receiver.await);
        }
        acked
    }

    async fn close(self) {
        let _ = self.channel.close().await;
        let _ = self.connection.close().await;
    }
}
