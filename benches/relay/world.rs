//! One measurement's private world on the bench's servers: a database holding the outbox table
//! (also the slot's and publication's name), a durable topic exchange and a durable queue (or
//! stream) bound to it with `#`, and the relay processes started for it. Every name starts with
//! `wbb_<pid>_`; everything is dropped when the [`World`] is dropped (also while a failed
//! measurement unwinds), by [`cleanup_all`] on Ctrl-C, and by [`sweep_stale`] at the next
//! start if this process was killed outright. A replication slot left behind would pin WAL
//! forever.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use lapin::options::{
    BasicConsumeOptions, ExchangeDeclareOptions, ExchangeDeleteOptions, QueueBindOptions,
    QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{Channel, Connection, ConnectionProperties, Consumer, ExchangeKind};
use tokio_postgres::{Client, NoTls};

use super::amqp::{self, Deliveries};
use super::stream;

/// The servers, from `WALBOX_BENCH_POSTGRES` (a URL without database), `WALBOX_BENCH_AMQP_URL`
/// and `WALBOX_BENCH_STREAM_URL`; by default the machine's own PostgreSQL and RabbitMQ.
struct Servers {
    postgres: String,
    amqp: String,
    stream: String,
}

fn servers() -> &'static Servers {
    static SERVERS: OnceLock<Servers> = OnceLock::new();
    SERVERS.get_or_init(|| {
        let var = |name: &str, default: &str| {
            std::env::var(name)
                .ok()
                .filter(|value| !value.trim().is_empty())
                .unwrap_or_else(|| default.to_owned())
        };
        Servers {
            postgres: var(
                "WALBOX_BENCH_POSTGRES",
                "postgres://postgres@127.0.0.1:5432",
            )
            .trim_end_matches('/')
            .to_owned(),
            amqp: var(
                "WALBOX_BENCH_AMQP_URL",
                "amqp://guest:guest@127.0.0.1:5672/%2f",
            ),
            stream: var(
                "WALBOX_BENCH_STREAM_URL",
                "rabbitmq-stream://guest:guest@127.0.0.1:5552/%2f",
            ),
        }
    })
}

/// The broker's AMQP 0-9-1 URL (its first node, where queues and streams are declared).
pub fn amqp_url() -> &'static str {
    &servers().amqp
}

/// The broker's stream protocol URL (same node).
pub fn stream_url() -> &'static str {
    &servers().stream
}
const OUTBOX_SQL: &str = include_str!("../../sql/outbox.sql");

/// The environment variable that makes this bench binary a helper process: `poller` (the
/// polling relay), `publisher` (the ceiling's raw lapin publisher) or `stream-publisher` (the
/// raw stream publisher).
pub const ROLE: &str = "WALBOX_BENCH_ROLE";

/// The walbox binary cargo built for this bench (the release one under `cargo bench`), or
/// `WALBOX_BENCH_WALBOX`: another build of walbox, for an A/B of two binaries in alternating
/// runs on the same servers.
pub static WALBOX: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    std::env::var("WALBOX_BENCH_WALBOX").unwrap_or_else(|_| env!("CARGO_BIN_EXE_walbox").to_owned())
});

/// Without TLS, for walbox as for the polling relay and the harness: walbox's default
/// (`prefer`, as in libpq) would encrypt its connections to a server with ssl=on and the
/// others not, which is no like-for-like comparison.
pub fn pg_url(database: &str) -> String {
    format!("{}/{database}?sslmode=disable", servers().postgres)
}

pub async fn pg_connect(url: &str) -> Result<Client> {
    let (client, connection) = tokio_postgres::connect(url, NoTls)
        .await
        .with_context(|| format!("connecting to {url}"))?;
    tokio::spawn(connection);
    Ok(client)
}

/// Names whose resources may exist right now, for [`cleanup_all`].
static LIVE: Mutex<BTreeSet<String>> = Mutex::new(BTreeSet::new());
/// Child processes running right now.
static CHILDREN: Mutex<BTreeSet<u32>> = Mutex::new(BTreeSet::new());
static NEXT: AtomicU32 = AtomicU32::new(0);

fn prefix() -> String {
    format!("wbb_{}_", std::process::id())
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QueueKind {
    Classic,
    Quorum,
    /// A stream, written over the stream protocol (walbox `--target stream`, the raw stream
    /// publisher) and read by a stream consumer.
    Stream,
}

impl QueueKind {
    pub fn name(self) -> &'static str {
        match self {
            QueueKind::Classic => "classic",
            QueueKind::Quorum => "quorum",
            QueueKind::Stream => "stream",
        }
    }

    /// The kind [`QueueKind::name`] names (classic for an unknown name).
    pub fn named(name: &str) -> QueueKind {
        match name {
            "quorum" => QueueKind::Quorum,
            "stream" => QueueKind::Stream,
            _ => QueueKind::Classic,
        }
    }

    fn x_queue_type(self) -> Option<&'static str> {
        match self {
            QueueKind::Classic => None,
            QueueKind::Quorum => Some("quorum"),
            QueueKind::Stream => Some("stream"),
        }
    }
}

pub struct World {
    pub name: String,
    pub queue: String,
    /// The world's own database (absent for a measurement without PostgreSQL).
    pub db: Option<Client>,
    pub kind: QueueKind,
    pub channel: Channel,
    _amqp: Connection,
    children: Vec<Child>,
    log_dir: PathBuf,
}

impl World {
    /// Create the database (when `with_db`) with sql/outbox.sql, the exchange and the queue.
    pub async fn new(tag: &str, with_db: bool, queue: QueueKind, log_dir: &Path) -> Result<World> {
        let name = format!("{}{}_{tag}", prefix(), NEXT.fetch_add(1, Ordering::Relaxed));
        LIVE.lock().unwrap().insert(name.clone());
        // From here on, Drop cleans up whatever was created.
        let amqp = Connection::connect(amqp_url(), ConnectionProperties::default())
            .await
            .context("connecting to RabbitMQ")?;
        let channel = amqp.create_channel().await?;
        let mut world = World {
            queue: format!("{name}_q"),
            name,
            db: None,
            kind: queue,
            channel,
            _amqp: amqp,
            children: Vec::new(),
            log_dir: log_dir.to_owned(),
        };
        if with_db {
            let admin = pg_connect(&pg_url("postgres")).await?;
            admin
                .batch_execute(&format!("CREATE DATABASE {}", world.name))
                .await
                .context("creating the bench database")?;
            let db = pg_connect(&pg_url(&world.name)).await?;
            db.batch_execute(OUTBOX_SQL)
                .await
                .context("creating the outbox table")?;
            world.db = Some(db);
        }
        world
            .channel
            .exchange_declare(
                world.name.as_str().into(),
                ExchangeKind::Topic,
                ExchangeDeclareOptions {
                    durable: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await?;
        let mut arguments = FieldTable::default();
        if let Some(kind) = queue.x_queue_type() {
            arguments.insert("x-queue-type".into(), AMQPValue::LongString(kind.into()));
        }
        world
            .channel
            .queue_declare(
                world.queue.as_str().into(),
                QueueDeclareOptions {
                    durable: true,
                    ..Default::default()
                },
                arguments,
            )
            .await?;
        world
            .channel
            .queue_bind(
                world.queue.as_str().into(),
                world.name.as_str().into(),
                "#".into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await?;
        Ok(world)
    }

    pub fn db(&self) -> &Client {
        self.db.as_ref().expect("this world has a database")
    }

    pub fn pg_url(&self) -> String {
        pg_url(&self.name)
    }

    /// Start consuming the queue (the broker forgets each message as it sends it), or the
    /// stream from its first offset.
    pub async fn consume(&self) -> Result<Deliveries> {
        if self.kind == QueueKind::Stream {
            return stream::consume(stream_url(), &self.queue).await;
        }
        let consumer: Consumer = self
            .channel
            .basic_consume(
                self.queue.as_str().into(),
                "".into(),
                BasicConsumeOptions {
                    no_ack: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await?;
        Ok(amqp::deliveries(consumer))
    }

    fn walbox_args(&self) -> Vec<String> {
        [
            "--postgres-url",
            &self.pg_url(),
            "--amqp-url",
            amqp_url(),
            "--slot",
            &self.name,
            "--publication",
            &self.name,
            "--exchange",
            &self.name,
            "--log-format",
            "json",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    }

    /// `walbox setup`: the slot exists when this returns, so every later insert is captured.
    pub fn walbox_setup(&self) -> Result<()> {
        let output = Command::new(&*WALBOX)
            .arg("setup")
            .args(self.walbox_args())
            .stdin(Stdio::null())
            .output()
            .context("running walbox setup")?;
        if !output.status.success() {
            bail!(
                "walbox setup failed ({}): {}{}",
                output.status,
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            );
        }
        Ok(())
    }

    /// Start `walbox run` (log under target/bench-logs); returns its pid.
    pub fn spawn_walbox(&mut self) -> Result<u32> {
        let mut command = Command::new(&*WALBOX);
        // No metrics server: another walbox on this shared machine may hold the default port.
        command
            .arg("run")
            .args(self.walbox_args())
            .env("WALBOX_METRICS_ADDR", "none");
        if self.kind == QueueKind::Stream {
            command.args(stream::walbox_args(stream_url(), &self.queue));
        }
        self.spawn(command, "walbox")
    }

    /// Start the polling relay (this bench binary in its poller role); returns its pid.
    pub fn spawn_poller(&mut self, batch: usize, interval_ms: u64) -> Result<u32> {
        let mut command = Command::new(std::env::current_exe()?);
        command
            .arg("--bench")
            .env(ROLE, "poller")
            .env(
                "WALBOX_BENCH_PG_URL",
                format!("{}&application_name={}", self.pg_url(), self.poller_app()),
            )
            .env("WALBOX_BENCH_AMQP_URL", amqp_url())
            .env("WALBOX_BENCH_EXCHANGE", &self.name)
            .env("WALBOX_BENCH_POLL_BATCH", batch.to_string())
            .env("WALBOX_BENCH_POLL_INTERVAL_MS", interval_ms.to_string());
        self.spawn(command, "poller")
    }

    /// Start the ceiling's raw publisher (this bench binary in its publisher role): lapin to
    /// the exchange, or for a stream the stream client to the stream.
    /// `stream_batch`: at most this many messages per publish frame (stream only; default the
    /// crate's producer's 100).
    pub fn spawn_publisher(
        &mut self,
        events: usize,
        bytes: usize,
        window: usize,
        stream_batch: Option<usize>,
    ) -> Result<u32> {
        let mut command = Command::new(std::env::current_exe()?);
        let role = match self.kind {
            QueueKind::Stream => "stream-publisher",
            _ => "publisher",
        };
        command
            .arg("--bench")
            .env(ROLE, role)
            .env("WALBOX_BENCH_AMQP_URL", amqp_url())
            .env("WALBOX_BENCH_STREAM_URL", stream_url())
            .env("WALBOX_BENCH_STREAM", &self.queue)
            .env(
                "WALBOX_BENCH_STREAM_BATCH",
                stream_batch.unwrap_or(100).to_string(),
            )
            .env("WALBOX_BENCH_EXCHANGE", &self.name)
            .env("WALBOX_BENCH_PUBLISH_EVENTS", events.to_string())
            .env("WALBOX_BENCH_PUBLISH_BYTES", bytes.to_string())
            .env("WALBOX_BENCH_PUBLISH_WINDOW", window.to_string());
        self.spawn(command, "publisher")
    }

    /// The application_name of the polling relay's PostgreSQL session.
    pub fn poller_app(&self) -> String {
        format!("{}_poller", self.name)
    }

    fn spawn(&mut self, mut command: Command, what: &str) -> Result<u32> {
        std::fs::create_dir_all(&self.log_dir)?;
        let path = self.log_dir.join(format!("{}_{what}.log", self.name));
        let log = std::fs::File::create(&path)?;
        let child = command
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {what}"))?;
        let pid = child.id();
        CHILDREN.lock().unwrap().insert(pid);
        self.children.push(child);
        Ok(pid)
    }

    /// The last lines of a child's log, for error messages.
    pub fn log_tail(&self, what: &str) -> String {
        let path = self.log_dir.join(format!("{}_{what}.log", self.name));
        let text = std::fs::read_to_string(path).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(15)..].join("\n")
    }

    /// Fail if a child has exited already (a relay that died cannot be measured).
    pub fn check_children(&mut self) -> Result<()> {
        for child in &mut self.children {
            if let Some(status) = child.try_wait()? {
                bail!("a relay process exited early: {status}");
            }
        }
        Ok(())
    }

    /// SIGTERM every child and wait for it (SIGKILL after 30 s).
    pub fn stop_children(&mut self) {
        for child in &mut self.children {
            if child.try_wait().ok().flatten().is_none() {
                let _ = Command::new("kill")
                    .args(["-TERM", &child.id().to_string()])
                    .stderr(Stdio::null())
                    .status();
            }
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        for mut child in self.children.drain(..) {
            while child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
            CHILDREN.lock().unwrap().remove(&child.id());
        }
    }

    /// The walsender streaming this world's slot, once walbox streams (a slot being created
    /// also shows as active, held by the creating backend, so this joins pg_stat_replication).
    pub async fn walsender_pid(&self, within: Duration) -> Result<u32> {
        let deadline = Instant::now() + within;
        loop {
            let row = self
                .db()
                .query_opt(
                    "SELECT r.pid FROM pg_replication_slots s JOIN pg_stat_replication r \
                     ON r.pid = s.active_pid WHERE s.slot_name = $1",
                    &[&self.name],
                )
                .await?;
            if let Some(row) = row {
                return Ok(row.get::<_, i32>(0) as u32);
            }
            if Instant::now() > deadline {
                bail!(
                    "walbox never started streaming; its log:\n{}",
                    self.log_tail("walbox")
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The PostgreSQL backend serving the sessions named `application`, once there is one.
    pub async fn backend_pid(&self, application: &str, within: Duration) -> Result<u32> {
        let deadline = Instant::now() + within;
        loop {
            let row = self
                .db()
                .query_opt(
                    "SELECT pid FROM pg_stat_activity WHERE application_name = $1 LIMIT 1",
                    &[&application],
                )
                .await?;
            if let Some(row) = row {
                return Ok(row.get::<_, i32>(0) as u32);
            }
            if Instant::now() > deadline {
                bail!("no PostgreSQL session named {application} appeared");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Wait until no session named `application` is left (a backend flushes its table
    /// statistics when it exits).
    pub async fn wait_sessions_gone(&self, application: &str) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            let row = self
                .db()
                .query_one(
                    "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1",
                    &[&application],
                )
                .await?;
            if row.get::<_, i64>(0) == 0 {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        bail!("sessions named {application} did not end")
    }
}

impl Drop for World {
    fn drop(&mut self) {
        self.stop_children();
        let name = self.name.clone();
        // Cleanup needs async clients; it runs on its own runtime so it also works while a
        // failed measurement unwinds.
        let _ = std::thread::spawn(move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime")
                .block_on(cleanup(&name))
        })
        .join();
    }
}

/// Drop the slot (terminating its walsender first), the database, the exchange and the queue
/// of `name`.
async fn cleanup(name: &str) {
    if let Ok(postgres) = pg_connect(&pg_url("postgres")).await {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let slot = postgres
                .query_opt(
                    "SELECT active_pid FROM pg_replication_slots WHERE slot_name = $1",
                    &[&name],
                )
                .await;
            let Ok(Some(row)) = slot else { break };
            if let Some(pid) = row.get::<_, Option<i32>>(0) {
                let _ = postgres
                    .execute("SELECT pg_terminate_backend($1)", &[&pid])
                    .await;
            }
            if postgres
                .execute("SELECT pg_drop_replication_slot($1)", &[&name])
                .await
                .is_ok()
            {
                break;
            }
            if Instant::now() > deadline {
                eprintln!("relay bench: could not drop replication slot {name}: drop it by hand");
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let _ = postgres
            .batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
            .await;
    }
    if let Ok(amqp) = Connection::connect(amqp_url(), ConnectionProperties::default()).await
        && let Ok(channel) = amqp.create_channel().await
    {
        let _ = channel
            .queue_delete(
                format!("{name}_q").as_str().into(),
                QueueDeleteOptions::default(),
            )
            .await;
        let _ = channel
            .exchange_delete(name.into(), ExchangeDeleteOptions::default())
            .await;
        let _ = amqp.close(200, "bench cleanup".into()).await;
    }
    LIVE.lock().unwrap().remove(name);
}

/// On Ctrl-C or SIGTERM: kill the relays and remove everything this run created.
pub async fn cleanup_all() {
    let children: Vec<u32> = CHILDREN.lock().unwrap().iter().copied().collect();
    for pid in children {
        let _ = Command::new("kill")
            .args(["-KILL", &pid.to_string()])
            .stderr(Stdio::null())
            .status();
    }
    let names: Vec<String> = LIVE.lock().unwrap().iter().cloned().collect();
    for name in names {
        cleanup(&name).await;
    }
}

/// Remove what an earlier run of this bench left behind when it was killed outright: `wbb_`
/// slots and databases whose creating process is gone.
pub async fn sweep_stale() -> Result<()> {
    let postgres = pg_connect(&pg_url("postgres")).await?;
    let rows = postgres
        .query(
            "SELECT slot_name::text FROM pg_replication_slots WHERE slot_name LIKE 'wbb\\_%' \
             UNION SELECT datname::text FROM pg_database WHERE datname LIKE 'wbb\\_%'",
            &[],
        )
        .await?;
    for row in rows {
        let name: String = row.get(0);
        let owner = name
            .split('_')
            .nth(1)
            .and_then(|pid| pid.parse::<u32>().ok());
        let alive = owner.is_some_and(|pid| Path::new(&format!("/proc/{pid}")).exists());
        if !alive {
            eprintln!("relay bench: removing {name}, left behind by an earlier run");
            cleanup(&name).await;
        }
    }
    Ok(())
}

/// Slots of this run still present (there should be none once every world is dropped).
pub async fn leftover_slots() -> Result<Vec<String>> {
    let postgres = pg_connect(&pg_url("postgres")).await?;
    let rows = postgres
        .query(
            "SELECT slot_name::text FROM pg_replication_slots WHERE starts_with(slot_name::text, $1)",
            &[&prefix()],
        )
        .await?;
    Ok(rows.iter().map(|row| row.get(0)).collect())
}
