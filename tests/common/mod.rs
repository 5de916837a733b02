//! Test harness: a private database, slot, publication, exchange and queue per test on the real
//! local PostgreSQL and RabbitMQ, a `walbox run` child process, and cleanup that runs even when
//! a test fails (no replication slot is ever left behind).

#![allow(dead_code)]

pub mod http;
pub mod proxy;
pub mod standin;
pub mod trixie;

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::str::FromStr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use lapin::message::Delivery;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, ExchangeDeclareOptions, ExchangeDeleteOptions,
    QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::FieldTable;
use lapin::{Channel, Connection, ConnectionProperties, Consumer, ExchangeKind};
use tokio_postgres::{Client, NoTls};
use walbox::lsn::Lsn;

pub const PG_HOST: &str = "127.0.0.1";
pub const OUTBOX_SQL: &str = include_str!("../../sql/outbox.sql");

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// The servers the tests use: the machine's own by default. WALBOX_TEST_PG_PORT and
/// WALBOX_TEST_AMQP_PORT point the suite at private ones (scripts/fault-servers.sh), so the
/// long fault run's restarts disturb nothing else.
fn port_from_env(variable: &str, default: u16) -> u16 {
    std::env::var(variable)
        .ok()
        .and_then(|text| text.parse().ok())
        .unwrap_or(default)
}

pub fn pg_port() -> u16 {
    port_from_env("WALBOX_TEST_PG_PORT", 5432)
}

pub fn amqp_port() -> u16 {
    port_from_env("WALBOX_TEST_AMQP_PORT", 5672)
}

pub fn amqp_url() -> String {
    format!("amqp://guest:guest@127.0.0.1:{}/%2f", amqp_port())
}

pub fn admin_url(database: &str) -> String {
    format!("postgres://postgres@{PG_HOST}:{}/{database}", pg_port())
}

pub async fn pg_connect(url: &str) -> Client {
    let (client, connection) = tokio_postgres::connect(url, NoTls)
        .await
        .expect("connect to PostgreSQL");
    tokio::spawn(connection);
    client
}

/// One test's private world.
pub struct TestEnv {
    pub name: String,
    pub db: Client,
    pub amqp: Connection,
    pub channel: Channel,
    children: Vec<Child>,
    log_dir: PathBuf,
    /// Ports walbox is pointed at (a proxy's, to cut the link).
    pub postgres_port: u16,
    pub amqp_port: u16,
    /// Durable queues to delete at cleanup.
    durable_queues: Vec<String>,
    /// Exchanges besides the test's own one, to delete at cleanup.
    exchanges: Vec<String>,
    /// The walbox binary `walbox` and `spawn_run` start (a benchmark may compare another).
    pub binary: PathBuf,
}

impl TestEnv {
    /// A fresh database holding the outbox table of sql/outbox.sql, and a declared exchange.
    pub async fn new(test: &str) -> TestEnv {
        // The run tag (set by scripts/test.sh) lets the leftover-slot check see only this run's
        // slots, not those of another run sharing the server.
        let run = std::env::var("WALBOX_TEST_RUN").unwrap_or_else(|_| "dev".into());
        let name = format!(
            "wbt_{}_{}_{}_{}",
            run,
            test,
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        let postgres = pg_connect(&admin_url("postgres")).await;
        postgres
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await
            .expect("create database");
        let db = pg_connect(&admin_url(&name)).await;
        db.batch_execute(OUTBOX_SQL)
            .await
            .expect("create outbox table");
        let amqp = Connection::connect(&amqp_url(), ConnectionProperties::default())
            .await
            .expect("connect to RabbitMQ");
        let channel = amqp.create_channel().await.expect("channel");
        declare_topic_exchange(&channel, &name).await;
        let log_dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(&name);
        std::fs::create_dir_all(&log_dir).expect("log dir");
        TestEnv {
            name,
            db,
            amqp,
            channel,
            children: Vec::new(),
            log_dir,
            postgres_port: pg_port(),
            amqp_port: amqp_port(),
            durable_queues: Vec::new(),
            exchanges: Vec::new(),
            binary: PathBuf::from(env!("CARGO_BIN_EXE_walbox")),
        }
    }

    pub fn postgres_url(&self) -> String {
        admin_url(&self.name)
    }

    /// The flags that point walbox at this test's objects.
    pub fn args(&self) -> Vec<String> {
        vec![
            "--postgres-url".into(),
            format!(
                "postgres://postgres@{PG_HOST}:{}/{}",
                self.postgres_port, self.name
            ),
            "--amqp-url".into(),
            format!("amqp://guest:guest@127.0.0.1:{}/%2f", self.amqp_port),
            "--slot".into(),
            self.name.clone(),
            "--publication".into(),
            self.name.clone(),
            "--exchange".into(),
            self.name.clone(),
        ]
    }

    /// Run a walbox subcommand to completion.
    pub fn walbox(&self, subcommand: &str, extra: &[&str]) -> std::process::Output {
        // A `run` that a test lets run to its end must not take the default metrics port,
        // which tests running at the same time would race for.
        let metrics_addr: &[&str] = if subcommand == "run" && !extra.contains(&"--metrics-addr") {
            &["--metrics-addr", "127.0.0.1:0"]
        } else {
            &[]
        };
        Command::new(&self.binary)
            .arg(subcommand)
            .args(self.args())
            .args(metrics_addr)
            .args(extra)
            .stdin(Stdio::null())
            .output()
            .expect("run walbox")
    }

    /// [`TestEnv::args`] with the value of `flag` replaced (e.g. another --postgres-url).
    pub fn args_with(&self, flag: &str, value: &str) -> Vec<String> {
        let mut args = self.args();
        let at = args
            .iter()
            .position(|arg| arg == flag)
            .unwrap_or_else(|| panic!("{flag} is not one of TestEnv::args"));
        args[at + 1] = value.to_owned();
        args
    }

    /// Start `walbox run` in the background; its log goes to a file under target/.
    pub fn spawn_run(&mut self, extra: &[&str]) -> usize {
        self.spawn_run_with(self.args(), extra)
    }

    /// Like [`TestEnv::spawn_run`] with other connection and naming flags than
    /// [`TestEnv::args`].
    pub fn spawn_run_with(&mut self, args: Vec<String>, extra: &[&str]) -> usize {
        let index = self.children.len();
        let log =
            std::fs::File::create(self.log_dir.join(format!("run-{index}.log"))).expect("log");
        // Many relays run at once: unless the test chooses an address, let each pick a port.
        let metrics_addr: &[&str] = if extra.contains(&"--metrics-addr") {
            &[]
        } else {
            &["--metrics-addr", "127.0.0.1:0"]
        };
        let child = Command::new(&self.binary)
            .arg("run")
            .args(args)
            .args(["--max-retry-delay-ms", "1000", "--log-format", "json"])
            .args(metrics_addr)
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn walbox run");
        self.children.push(child);
        index
    }

    pub fn run_log(&self, index: usize) -> String {
        std::fs::read_to_string(self.log_dir.join(format!("run-{index}.log"))).unwrap_or_default()
    }

    pub fn pid(&self, index: usize) -> u32 {
        self.children[index].id()
    }

    /// Peak resident memory of a running walbox, in KiB (VmHWM).
    pub fn peak_rss_kib(&self, index: usize) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid(index)))
            .unwrap_or_default();
        status
            .lines()
            .find_map(|line| line.strip_prefix("VmHWM:"))
            .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    }

    /// SIGKILL: no goodbye, no final flush.
    pub fn kill(&mut self, index: usize) {
        let child = &mut self.children[index];
        let _ = child.kill();
        let _ = child.wait();
    }

    /// SIGTERM, then wait for the exit status.
    pub fn terminate(&mut self, index: usize) -> std::process::ExitStatus {
        let child = &mut self.children[index];
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = child.try_wait().expect("wait") {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "walbox did not stop within 30 s of SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn try_wait(&mut self, index: usize) -> Option<std::process::ExitStatus> {
        self.children[index].try_wait().expect("wait")
    }

    /// A durable queue bound to the exchange with `#`, that outlives this test's connection
    /// (for faults that restart the broker); deleted at cleanup. Returns its name.
    pub async fn durable_queue(&mut self, suffix: &str, arguments: FieldTable) -> String {
        let queue = format!("{}_{suffix}", self.name);
        self.channel
            .queue_declare(
                queue.as_str().into(),
                QueueDeclareOptions {
                    durable: true,
                    ..Default::default()
                },
                arguments,
            )
            .await
            .expect("declare durable queue");
        self.channel
            .queue_bind(
                queue.as_str().into(),
                self.name.as_str().into(),
                "#".into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .expect("bind durable queue");
        self.durable_queues.push(queue.clone());
        queue
    }

    /// A queue bound to the exchange with `pattern`, consumed by this test (acking each
    /// delivery in [`receive`]).
    pub async fn queue(&self, suffix: &str, pattern: &str) -> Consumer {
        self.queue_with(suffix, pattern, false).await
    }

    /// Like [`TestEnv::queue`]; with `no_ack` the broker forgets each message as it sends it,
    /// for draining large volumes quickly.
    pub async fn queue_with(&self, suffix: &str, pattern: &str, no_ack: bool) -> Consumer {
        let queue = format!("{}_{suffix}", self.name);
        consume_bound(&self.channel, &self.name, &queue, pattern, no_ack).await
    }

    /// Another durable topic exchange of this test (e.g. a dead-letter exchange), with an
    /// exclusive queue bound to it with `#`; both are gone after the test.
    pub async fn extra_exchange(&mut self, suffix: &str) -> (String, Consumer) {
        let exchange = format!("{}_{suffix}", self.name);
        declare_topic_exchange(&self.channel, &exchange).await;
        self.exchanges.push(exchange.clone());
        let queue = format!("{exchange}_q");
        let consumer = consume_bound(&self.channel, &exchange, &queue, "#", false).await;
        (exchange, consumer)
    }

    /// Delete exchange `name` at cleanup (one walbox declared, or this test declared itself).
    pub fn delete_exchange_at_cleanup(&mut self, name: &str) {
        self.exchanges.push(name.to_owned());
    }

    /// Delete queue `name` at cleanup (one walbox declared).
    pub fn delete_queue_at_cleanup(&mut self, name: &str) {
        self.durable_queues.push(name.to_owned());
    }

    /// Insert one outbox event in its own transaction; returns its id.
    pub async fn insert(&self, aggregate_type: &str, event_type: &str, payload: &str) -> String {
        let row = self
            .db
            .query_one(
                "INSERT INTO outbox (aggregate_type, aggregate_id, event_type, payload) \
                 VALUES ($1, 'a-1', $2, $3::text::jsonb) RETURNING id::text",
                &[&aggregate_type, &event_type, &payload],
            )
            .await
            .expect("insert");
        row.get(0)
    }

    pub async fn current_wal_lsn(&self) -> Lsn {
        let row = self
            .db
            .query_one("SELECT pg_current_wal_lsn()::text", &[])
            .await
            .unwrap();
        Lsn::from_str(row.get::<_, &str>(0)).unwrap()
    }

    pub async fn slot_confirmed(&self) -> Option<Lsn> {
        let row = self
            .db
            .query_opt(
                "SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = $1",
                &[&self.name],
            )
            .await
            .unwrap()?;
        row.get::<_, Option<&str>>(0)
            .map(|text| Lsn::from_str(text).unwrap())
    }

    /// Wait until the slot's confirmed position reaches `target`.
    pub async fn wait_confirmed(&self, target: Lsn, within: Duration) -> Lsn {
        let deadline = Instant::now() + within;
        loop {
            let confirmed = self.slot_confirmed().await.unwrap_or_default();
            if confirmed >= target || Instant::now() > deadline {
                return confirmed;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Wait until walbox streams from the slot. A slot being created also shows as active
    /// (held by the creating backend while it waits for a consistent point, and events
    /// committed before that point are not captured), so this waits for a walsender.
    pub async fn wait_slot_active(&self, within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            let streaming = self
                .db
                .query_opt(
                    "SELECT 1 FROM pg_replication_slots s JOIN pg_stat_replication r \
                     ON r.pid = s.active_pid WHERE s.slot_name = $1",
                    &[&self.name],
                )
                .await
                .unwrap()
                .is_some();
            if streaming {
                return;
            }
            assert!(Instant::now() < deadline, "walbox never started streaming");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// Declare `name` as a durable topic exchange, as walbox does.
pub async fn declare_topic_exchange(channel: &Channel, name: &str) {
    channel
        .exchange_declare(
            name.into(),
            ExchangeKind::Topic,
            ExchangeDeclareOptions {
                durable: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .expect("declare exchange");
}

/// An exclusive queue bound to `exchange` with `pattern`, and a consumer on it.
pub async fn consume_bound(
    channel: &Channel,
    exchange: &str,
    queue: &str,
    pattern: &str,
    no_ack: bool,
) -> Consumer {
    channel
        .queue_declare(
            queue.into(),
            QueueDeclareOptions {
                exclusive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .expect("declare queue");
    channel
        .queue_bind(
            queue.into(),
            exchange.into(),
            pattern.into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("bind queue");
    channel
        .basic_consume(
            queue.into(),
            "".into(),
            BasicConsumeOptions {
                no_ack,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .expect("consume")
}

/// Receive `count` deliveries (acking each), or fewer if `within` runs out.
pub async fn receive(consumer: &mut Consumer, count: usize, within: Duration) -> Vec<Delivery> {
    receive_with(consumer, count, within, true).await
}

/// Like [`receive`], for a consumer started with `no_ack` (nothing to acknowledge).
pub async fn receive_unacked(
    consumer: &mut Consumer,
    count: usize,
    within: Duration,
) -> Vec<Delivery> {
    receive_with(consumer, count, within, false).await
}

async fn receive_with(
    consumer: &mut Consumer,
    count: usize,
    within: Duration,
    ack: bool,
) -> Vec<Delivery> {
    let deadline = tokio::time::Instant::now() + within;
    let mut deliveries = Vec::with_capacity(count.min(10_000));
    while deliveries.len() < count {
        match tokio::time::timeout_at(deadline, consumer.next()).await {
            Ok(Some(Ok(delivery))) => {
                if ack {
                    delivery.ack(BasicAckOptions::default()).await.expect("ack");
                }
                deliveries.push(delivery);
            }
            Ok(Some(Err(error))) => panic!("consumer error: {error}"),
            Ok(None) | Err(_) => break,
        }
    }
    deliveries
}

/// Any deliveries arriving within `within`, for checking that nothing (more) came.
pub async fn receive_any(consumer: &mut Consumer, within: Duration) -> Vec<Delivery> {
    receive(consumer, usize::MAX, within).await
}

pub fn header_text(delivery: &Delivery, key: &str) -> Option<String> {
    use lapin::types::AMQPValue;
    let headers = delivery.properties.headers().as_ref()?;
    match headers.inner().get(key)? {
        AMQPValue::LongString(text) => Some(String::from_utf8_lossy(text.as_bytes()).into_owned()),
        AMQPValue::ShortString(text) => Some(text.as_str().to_owned()),
        other => Some(format!("{other:?}")),
    }
}

pub fn commit_lsn(delivery: &Delivery) -> Lsn {
    Lsn::from_str(&header_text(delivery, "x-commit-lsn").expect("x-commit-lsn")).expect("lsn")
}

pub fn message_id(delivery: &Delivery) -> String {
    delivery
        .properties
        .message_id()
        .as_ref()
        .expect("message_id")
        .as_str()
        .to_owned()
}

impl Drop for TestEnv {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
        let name = self.name.clone();
        let queues = std::mem::take(&mut self.durable_queues);
        let exchanges = std::mem::take(&mut self.exchanges);
        // Cleanup needs async clients; run it on its own runtime so it also works while a
        // failing test unwinds.
        let cleanup = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(cleanup(name, queues, exchanges));
        });
        let _ = cleanup.join();
    }
}

async fn cleanup(name: String, queues: Vec<String>, exchanges: Vec<String>) {
    let postgres = pg_connect(&admin_url("postgres")).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    // The test's slot and those named after it (a replay window's bookmark, replay copies).
    // A slot stays active until its walsender notices the client is gone.
    let prefix = format!("{}\\_%", name.replace('_', "\\_"));
    loop {
        let slots = postgres
            .query(
                "SELECT slot_name::text, active_pid FROM pg_replication_slots \
                 WHERE slot_name = $1 OR slot_name LIKE $2",
                &[&name, &prefix],
            )
            .await
            .unwrap();
        if slots.is_empty() {
            break;
        }
        for row in &slots {
            let slot: String = row.get(0);
            if let Some(pid) = row.get::<_, Option<i32>>(1) {
                let _ = postgres
                    .execute("SELECT pg_terminate_backend($1)", &[&pid])
                    .await;
            }
            let _ = postgres
                .execute("SELECT pg_drop_replication_slot($1)", &[&slot])
                .await;
        }
        if Instant::now() > deadline {
            eprintln!("could not drop the replication slots of {name}");
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let _ = postgres
        .batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        .await;
    if let Ok(amqp) = Connection::connect(&amqp_url(), ConnectionProperties::default()).await
        && let Ok(channel) = amqp.create_channel().await
    {
        for exchange in std::iter::once(&name).chain(&exchanges) {
            let _ = channel
                .exchange_delete(exchange.as_str().into(), ExchangeDeleteOptions::default())
                .await;
        }
        for queue in queues {
            let _ = channel
                .queue_delete(
                    queue.as_str().into(),
                    lapin::options::QueueDeleteOptions::default(),
                )
                .await;
        }
        let _ = amqp.close(200, "cleanup".into()).await;
    }
}
