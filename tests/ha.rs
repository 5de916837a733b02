//! High availability on PostgreSQL 17 and a three-node RabbitMQ 4.0 cluster
//! (scripts/trixie-servers.sh): a failover to a standby holding a synchronized slot, each broker
//! node killed in turn, a rolling restart of the cluster, and a failover to a standby whose slot
//! was never synchronized. Under continuous load from several writers (transactions of 1, 3
//! and 10 rows) with a consumer draining a quorum queue, every row in the outbox table of the
//! final primary must arrive: lost = 0. Duplicates are allowed and counted.
//!
//! These tests need the private servers, so they are ignored by a plain `cargo test`;
//! scripts/test.sh starts the servers and runs them with `--ignored --test-threads=1` (each
//! test resets the PostgreSQL pair). WALBOX_HA_ROUNDS (default 1) repeats each scenario for
//! the long mode; every round prints one line of counts.

mod common;

use std::collections::{HashMap, HashSet};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicQosOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{Connection, ConnectionProperties};
use tokio_postgres::NoTls;
use walbox::lsn::Lsn;

use common::pg_connect as connect;
use common::trixie::{base, env_count, multi_host_url, primary_port, servers};
use common::{commit_lsn, declare_topic_exchange, message_id};

const DATABASE: &str = "ha";
const SLOT: &str = "ha_slot";
const EXCHANGE: &str = "ha_events";

/// A quorum queue of its own per round: deleting one and declaring it again by the same name
/// while a node recovers can leave that node's member offline (its old Raft server still runs).
fn queue_name(scenario: &str, round: usize) -> String {
    format!("ha_{scenario}_{}_{round}", std::process::id())
}

fn amqp_urls() -> Vec<String> {
    (672..=674)
        .map(|offset| format!("amqp://guest:guest@127.0.0.1:{}/%2f", base() + offset))
        .collect()
}

fn rounds() -> usize {
    env_count("WALBOX_HA_ROUNDS", 1)
}

/// Fresh primary and standby with the outbox table; `sync` false leaves the standby without
/// slot synchronization (scenario 4).
async fn fresh_postgres(sync: bool) {
    servers(&["pg-reset"]);
    if !sync {
        servers(&["pg-sync", "off"]);
    }
    let admin = connect(&format!(
        "postgres://postgres@127.0.0.1:{}/postgres",
        primary_port()
    ))
    .await;
    admin
        .batch_execute(&format!("CREATE DATABASE {DATABASE}"))
        .await
        .unwrap();
    let db = connect(&multi_host_url(DATABASE)).await;
    db.batch_execute(common::OUTBOX_SQL).await.unwrap();
}

/// A durable quorum queue with a member on each node, bound to the events' exchange.
async fn fresh_queue(queue: &str) {
    let amqp = connect_any_node().await;
    let channel = amqp.create_channel().await.unwrap();
    declare_topic_exchange(&channel, EXCHANGE).await;
    let mut arguments = FieldTable::default();
    arguments.insert(
        "x-queue-type".into(),
        AMQPValue::LongString("quorum".into()),
    );
    arguments.insert("x-quorum-initial-group-size".into(), AMQPValue::LongInt(3));
    channel
        .queue_declare(
            queue.into(),
            QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            arguments,
        )
        .await
        .unwrap();
    channel
        .queue_bind(
            queue.into(),
            EXCHANGE.into(),
            "#".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    let _ = amqp.close(200, "done".into()).await;
}

async fn delete_queue(queue: &str) {
    let amqp = connect_any_node().await;
    let channel = amqp.create_channel().await.unwrap();
    let deleting = channel.queue_delete(queue.into(), Default::default());
    let _ = tokio::time::timeout(Duration::from_secs(30), deleting).await;
    let _ = tokio::time::timeout(BROKER_CLOSE, amqp.close(200, "done".into())).await;
}

async fn connect_any_node() -> Connection {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        for url in amqp_urls() {
            if let Ok(connection) = Connection::connect(&url, ConnectionProperties::default()).await
            {
                return connection;
            }
        }
        assert!(Instant::now() < deadline, "no RabbitMQ node answers");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// walbox's flags for these tests: both PostgreSQL hosts, all three broker nodes.
fn walbox_args() -> Vec<String> {
    vec![
        "--postgres-url".into(),
        multi_host_url(DATABASE),
        "--amqp-url".into(),
        amqp_urls().join(","),
        "--slot".into(),
        SLOT.into(),
        "--publication".into(),
        SLOT.into(),
        "--exchange".into(),
        EXCHANGE.into(),
    ]
}

fn walbox_setup() {
    let output = Command::new(env!("CARGO_BIN_EXE_walbox"))
        .arg("setup")
        .args(walbox_args())
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "walbox setup: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    println!("{}", String::from_utf8_lossy(&output.stdout));
}

/// `walbox run` in the background, its log in a file under target/.
struct Relay {
    child: Child,
    log: std::path::PathBuf,
}

impl Relay {
    fn start(name: &str) -> Relay {
        let log =
            std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("ha-{name}.log"));
        let child = Command::new(env!("CARGO_BIN_EXE_walbox"))
            .arg("run")
            .args(walbox_args())
            .args([
                "--max-retry-delay-ms",
                "1000",
                "--log-format",
                "json",
                "--metrics-addr",
                "127.0.0.1:0",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        Relay { child, log }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGTERM and wait.
    fn stop(mut self) {
        let _ = Command::new("kill")
            .arg(self.child.id().to_string())
            .status();
        let _ = self.child.wait();
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Writers inserting transactions of 1, 3 and 10 rows until stopped, reconnecting (to
/// whichever host is the primary) when their connection fails. Returns the ids of rows whose
/// commit PostgreSQL acknowledged.
struct Load {
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<Vec<String>>>,
}

impl Load {
    fn start(writers: usize) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let tasks = (0..writers)
            .map(|writer| tokio::spawn(write(writer, Arc::clone(&stop))))
            .collect();
        Load { stop, tasks }
    }

    async fn finish(self) -> Vec<String> {
        self.stop.store(true, Ordering::Relaxed);
        let mut committed = Vec::new();
        for task in self.tasks {
            committed.extend(task.await.unwrap());
        }
        committed
    }
}

async fn write(writer: usize, stop: Arc<AtomicBool>) -> Vec<String> {
    let sizes = [1i32, 3, 10];
    let mut committed = Vec::new();
    let mut client: Option<tokio_postgres::Client> = None;
    let mut round = 0usize;
    while !stop.load(Ordering::Relaxed) {
        if client.as_ref().is_none_or(|c| c.is_closed()) {
            client = match tokio_postgres::connect(&multi_host_url(DATABASE), NoTls).await {
                Ok((client, connection)) => {
                    tokio::spawn(connection);
                    Some(client)
                }
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                }
            };
        }
        let db = client.as_mut().unwrap();
        let size = sizes[round % sizes.len()];
        round += 1;
        let outcome = async {
            let transaction = db.transaction().await?;
            let rows = transaction
                .query(
                    "INSERT INTO outbox (aggregate_type, aggregate_id, event_type, payload) \
                     SELECT 'ha', $1, 'e', jsonb_build_object('n', n) \
                     FROM generate_series(1, $2) n RETURNING id::text",
                    &[&format!("w{writer}"), &size],
                )
                .await?;
            transaction.commit().await?;
            Ok::<_, tokio_postgres::Error>(
                rows.iter().map(|row| row.get(0)).collect::<Vec<String>>(),
            )
        };
        match outcome.await {
            Ok(ids) => committed.extend(ids),
            Err(_) => {
                client = None;
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
        tokio::time::sleep(Duration::from_millis(40)).await;
    }
    committed
}

/// One delivery as the consumer saw it.
#[derive(Clone)]
struct Seen {
    id: String,
    commit: Lsn,
    at: Instant,
}

/// A consumer draining the quorum queue from whichever node answers, acknowledging each
/// delivery after recording it; it moves to another node when its own fails.
struct Drain {
    seen: Arc<Mutex<Vec<Seen>>>,
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl Drain {
    fn start(queue: &str) -> Drain {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let task = tokio::spawn(drain(
            queue.to_owned(),
            Arc::clone(&seen),
            Arc::clone(&stop),
        ));
        Drain { seen, stop, task }
    }

    fn snapshot(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    /// Wait until every id of `expected` has been seen, or `within` passes.
    async fn wait_for(&self, expected: &HashSet<String>, within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            let seen: HashSet<String> = self.snapshot().into_iter().map(|s| s.id).collect();
            if expected.is_subset(&seen) || Instant::now() > deadline {
                return;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    async fn finish(self) -> Vec<Seen> {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.task.await;
        Arc::try_unwrap(self.seen)
            .map(|seen| seen.into_inner().unwrap())
            .unwrap_or_default()
    }
}

async fn drain(queue: String, seen: Arc<Mutex<Vec<Seen>>>, stop: Arc<AtomicBool>) {
    let urls = amqp_urls();
    let mut node = 0usize;
    while !stop.load(Ordering::Relaxed) {
        let url = &urls[node % urls.len()];
        node += 1;
        // Every await on the broker is bounded: a node going down mid-handshake or mid-close
        // can leave lapin waiting for an answer that never comes (a rolling restart once hung
        // the drain here, with no socket left open).
        let connecting = Connection::connect(url, ConnectionProperties::default());
        let Ok(Ok(connection)) = tokio::time::timeout(Duration::from_secs(5), connecting).await
        else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let consumed = async {
            let channel = connection.create_channel().await?;
            channel.basic_qos(500, BasicQosOptions::default()).await?;
            channel
                .basic_consume(
                    queue.as_str().into(),
                    "".into(),
                    BasicConsumeOptions::default(),
                    FieldTable::default(),
                )
                .await
        };
        let Ok(Ok(mut consumer)) = tokio::time::timeout(Duration::from_secs(5), consumed).await
        else {
            let _ = tokio::time::timeout(BROKER_CLOSE, connection.close(200, "done".into())).await;
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        };
        while !stop.load(Ordering::Relaxed) {
            match tokio::time::timeout(Duration::from_millis(500), consumer.next()).await {
                Ok(Some(Ok(delivery))) => {
                    seen.lock().unwrap().push(Seen {
                        id: message_id(&delivery),
                        commit: commit_lsn(&delivery),
                        at: Instant::now(),
                    });
                    let acking = delivery.ack(BasicAckOptions::default());
                    if !matches!(
                        tokio::time::timeout(Duration::from_secs(5), acking).await,
                        Ok(Ok(_))
                    ) {
                        break;
                    }
                }
                Ok(Some(Err(_)) | None) => break,
                Err(_) if !connection.status().connected() => break,
                Err(_) => {}
            }
        }
        let _ = tokio::time::timeout(BROKER_CLOSE, connection.close(200, "done".into())).await;
    }
}

/// How long the test's own AMQP clients wait for a close to be answered.
const BROKER_CLOSE: Duration = Duration::from_secs(2);

/// The counts of one round, checked: every row of the final primary's outbox arrived.
struct Counts {
    committed: usize,
    /// Acknowledged by the old primary, never received by the standby (only after a kill).
    committed_missing: usize,
    in_table: usize,
    delivered: usize,
    duplicates: usize,
    lost: usize,
    longest_pause: Duration,
}

impl Counts {
    fn print(&self, scenario: &str, round: usize, resume: Duration) {
        println!(
            "ha: scenario={scenario} round={round} committed={} not_on_new_primary={} in_table={} \
             delivered={} duplicates={} lost={} longest_delivery_pause_ms={} resume_ms={}",
            self.committed,
            self.committed_missing,
            self.in_table,
            self.delivered,
            self.duplicates,
            self.lost,
            self.longest_pause.as_millis(),
            resume.as_millis()
        );
    }
}

/// `clean_stop`: the old primary (if any) was stopped cleanly, so every acknowledged commit
/// must be on the final primary; after a SIGKILL, commits its standby had not received are
/// gone with it (asynchronous streaming replication), and are counted instead.
/// The ids in the final primary's outbox table: what must arrive.
async fn table_ids() -> HashSet<String> {
    let db = connect(&multi_host_url(DATABASE)).await;
    db.query("SELECT id::text FROM outbox", &[])
        .await
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect()
}

async fn count(committed: &[String], seen: &[Seen], clean_stop: bool) -> Counts {
    let in_table = table_ids().await;
    let mut times: HashMap<&str, usize> = HashMap::new();
    for s in seen {
        *times.entry(s.id.as_str()).or_default() += 1;
    }
    let lost = in_table
        .iter()
        .filter(|id| !times.contains_key(id.as_str()))
        .count();
    let duplicates = times.values().map(|n| n - 1).sum();
    let longest_pause = seen
        .windows(2)
        .map(|pair| pair[1].at.duration_since(pair[0].at))
        .max()
        .unwrap_or_default();
    let committed_missing = committed
        .iter()
        .filter(|id| !in_table.contains(*id))
        .count();
    assert!(
        !clean_stop || committed_missing == 0,
        "{committed_missing} acknowledged commits are not in the final primary's table"
    );
    Counts {
        committed: committed.len(),
        committed_missing,
        in_table: in_table.len(),
        delivered: times.len(),
        duplicates,
        lost,
        longest_pause,
    }
}

/// First deliveries come in commit order (later copies may repeat older events).
fn assert_first_deliveries_in_commit_order(seen: &[Seen]) {
    let mut first = HashSet::new();
    let mut last = Lsn(0);
    for s in seen {
        if first.insert(s.id.as_str()) {
            assert!(
                s.commit >= last,
                "event {} (commit {}) first arrived after one committed at {last}",
                s.id,
                s.commit
            );
            last = s.commit;
        }
    }
}

/// A test's end: the slot dropped wherever it is, so nothing keeps WAL.
async fn drop_slot() {
    if let Ok((db, connection)) = tokio_postgres::connect(&multi_host_url(DATABASE), NoTls).await {
        tokio::spawn(connection);
        let _ = db
            .execute(
                "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots \
                 WHERE slot_name = $1",
                &[&SLOT],
            )
            .await;
    }
}

/// Scenario 1: the primary stops (odd rounds: a fast shutdown) or dies (even rounds, in the
/// long mode: SIGKILL to its processes), the standby holding a synchronized slot is promoted;
/// walbox resumes on it from the synchronized slot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs scripts/trixie-servers.sh (scripts/test.sh runs it)"]
async fn failover_to_a_synchronized_standby_loses_nothing() {
    for round in 1..=rounds() {
        fresh_postgres(true).await;
        let queue = queue_name("failover", round);
        fresh_queue(&queue).await;
        walbox_setup();
        let relay = Relay::start("failover");
        let drain = Drain::start(&queue);
        let load = Load::start(3);
        tokio::time::sleep(Duration::from_secs(3)).await;
        servers(&["pg-wait-synced", SLOT, "120"]);
        tokio::time::sleep(Duration::from_secs(2)).await;
        let clean_stop = round % 2 == 1;
        servers(&[if clean_stop { "pg-stop" } else { "pg-kill" }, "primary"]);
        servers(&["pg-promote"]);
        let promoted = Instant::now();
        tokio::time::sleep(Duration::from_secs(6)).await;
        let committed = load.finish().await;
        let expected = table_ids().await;
        drain.wait_for(&expected, Duration::from_secs(90)).await;
        let seen = drain.finish().await;
        delete_queue(&queue).await;
        // Resumed: the first delivery after the promotion.
        let resume = seen
            .iter()
            .find(|s| s.at > promoted)
            .map(|s| s.at.duration_since(promoted))
            .unwrap_or(Duration::MAX);
        let counts = count(&committed, &seen, clean_stop).await;
        counts.print(
            if clean_stop {
                "failover-stop"
            } else {
                "failover-kill"
            },
            round,
            resume,
        );
        let log = relay.log();
        relay.stop();
        drop_slot().await;
        assert_eq!(counts.lost, 0, "events lost; walbox's log:\n{log}");
        assert!(
            counts.in_table > 0 && resume < Duration::from_secs(60),
            "{log}"
        );
        assert_first_deliveries_in_commit_order(&seen);
    }
}

/// Scenario 4: the standby does not synchronize slots; after the failover walbox stops with
/// the definite error, creates no slot on the new primary and publishes nothing from it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs scripts/trixie-servers.sh (scripts/test.sh runs it)"]
async fn failover_to_an_unsynchronized_standby_stops_with_a_definite_error() {
    for round in 1..=rounds() {
        fresh_postgres(false).await;
        let queue = queue_name("unsynchronized", round);
        fresh_queue(&queue).await;
        walbox_setup();
        let mut relay = Relay::start("unsynchronized");
        let drain = Drain::start(&queue);
        let load = Load::start(2);
        tokio::time::sleep(Duration::from_secs(3)).await;
        let before = load.finish().await;
        let expected: HashSet<String> = before.iter().cloned().collect();
        drain.wait_for(&expected, Duration::from_secs(60)).await;
        servers(&["pg-stop", "primary"]);
        servers(&["pg-promote"]);
        let promoted = Instant::now();
        let after = Load::start(1);
        let status = loop {
            if let Some(status) = relay.child.try_wait().unwrap() {
                break status;
            }
            assert!(
                promoted.elapsed() < Duration::from_secs(90),
                "walbox still runs after a failover that lost its slot:\n{}",
                relay.log()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        let stopped_after = promoted.elapsed();
        let after_ids: HashSet<String> = after.finish().await.into_iter().collect();
        tokio::time::sleep(Duration::from_secs(1)).await;
        let seen = drain.finish().await;
        delete_queue(&queue).await;
        let log = relay.log();
        assert_eq!(status.code(), Some(1), "{log}");
        assert!(
            log.contains("failed over") && log.contains("no replication slot"),
            "the error says a failover lost the slot:\n{log}"
        );
        let delivered: HashSet<&str> = seen.iter().map(|s| s.id.as_str()).collect();
        let lost_before = expected
            .iter()
            .filter(|id| !delivered.contains(id.as_str()))
            .count();
        let published_after = after_ids
            .iter()
            .filter(|id| delivered.contains(id.as_str()))
            .count();
        println!(
            "ha: scenario=unsynchronized round={round} committed_before={} delivered={} \
             lost_before={lost_before} committed_after={} published_after={published_after} \
             stopped_after_ms={}",
            expected.len(),
            delivered.len(),
            after_ids.len(),
            stopped_after.as_millis()
        );
        assert_eq!(lost_before, 0);
        assert_eq!(
            published_after, 0,
            "walbox published from a slot it must not have"
        );
        let db = connect(&multi_host_url(DATABASE)).await;
        let slots: i64 = db
            .query_one(
                "SELECT count(*) FROM pg_replication_slots WHERE slot_name = $1",
                &[&SLOT],
            )
            .await
            .unwrap()
            .get(0);
        assert_eq!(slots, 0, "walbox recreated the slot on the new primary");

        // A walbox started afresh against the promoted server must not make a new slot either:
        // it cannot know whether one was lost, so only `walbox setup` may create it.
        let mut fresh = Relay::start("unsynchronized-fresh");
        let started = Instant::now();
        let status = loop {
            if let Some(status) = fresh.child.try_wait().unwrap() {
                break status;
            }
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "a fresh walbox runs on a promoted server without its slot:\n{}",
                fresh.log()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        let log = fresh.log();
        assert_eq!(status.code(), Some(1), "{log}");
        assert!(
            log.contains("was promoted") && log.contains("walbox setup"),
            "the error says the server was promoted and what to do:\n{log}"
        );
        let slots: i64 = db
            .query_one(
                "SELECT count(*) FROM pg_replication_slots WHERE slot_name = $1",
                &[&SLOT],
            )
            .await
            .unwrap()
            .get(0);
        assert_eq!(
            slots, 0,
            "a fresh walbox created the slot on the promoted server"
        );
    }
}

/// Scenario 2: each RabbitMQ node killed and restarted in turn, the one walbox is connected
/// to included.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs scripts/trixie-servers.sh (scripts/test.sh runs it)"]
async fn each_broker_node_killed_in_turn_loses_nothing() {
    for round in 1..=rounds() {
        fresh_postgres(true).await;
        let queue = queue_name("kills", round);
        fresh_queue(&queue).await;
        walbox_setup();
        let relay = Relay::start("node-kills");
        let drain = Drain::start(&queue);
        let load = Load::start(3);
        tokio::time::sleep(Duration::from_secs(3)).await;
        let started = Instant::now();
        for node in ["1", "2", "3"] {
            servers(&["rabbit-kill", node]);
            tokio::time::sleep(Duration::from_secs(4)).await;
            servers(&["rabbit-start", node]);
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
        let committed = load.finish().await;
        let expected = table_ids().await;
        drain.wait_for(&expected, Duration::from_secs(90)).await;
        let seen = drain.finish().await;
        delete_queue(&queue).await;
        let counts = count(&committed, &seen, true).await;
        counts.print("node-kills", round, counts.longest_pause);
        println!(
            "ha: node-kills round {round} took {} ms",
            started.elapsed().as_millis()
        );
        let log = relay.log();
        relay.stop();
        drop_slot().await;
        assert_eq!(counts.lost, 0, "events lost; walbox's log:\n{log}");
        assert!(
            log.contains("connected to another broker node"),
            "walbox never moved to another node:\n{log}"
        );
    }
}

/// Scenario 3: a rolling restart of the whole cluster.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs scripts/trixie-servers.sh (scripts/test.sh runs it)"]
async fn a_rolling_restart_of_the_cluster_loses_nothing() {
    for round in 1..=rounds() {
        fresh_postgres(true).await;
        let queue = queue_name("rolling", round);
        fresh_queue(&queue).await;
        walbox_setup();
        let relay = Relay::start("rolling");
        let drain = Drain::start(&queue);
        let load = Load::start(3);
        tokio::time::sleep(Duration::from_secs(3)).await;
        let started = Instant::now();
        servers(&["rabbit-rolling"]);
        tokio::time::sleep(Duration::from_secs(3)).await;
        let committed = load.finish().await;
        let expected = table_ids().await;
        drain.wait_for(&expected, Duration::from_secs(90)).await;
        let seen = drain.finish().await;
        delete_queue(&queue).await;
        let counts = count(&committed, &seen, true).await;
        counts.print("rolling", round, counts.longest_pause);
        println!(
            "ha: rolling round {round} took {} ms",
            started.elapsed().as_millis()
        );
        let log = relay.log();
        relay.stop();
        drop_slot().await;
        assert_eq!(counts.lost, 0, "events lost; walbox's log:\n{log}");
    }
}

/// Insert `transactions` transactions of 10 rows each through `db`, one at a time; returns the
/// ids whose commit PostgreSQL acknowledged.
async fn insert_batches(
    db: &tokio_postgres::Client,
    tag: &str,
    transactions: usize,
) -> Vec<String> {
    let mut ids = Vec::new();
    for _ in 0..transactions {
        let rows = db
            .query(
                "INSERT INTO outbox (aggregate_type, aggregate_id, event_type, payload) \
                 SELECT 'ha', $1, 'e', jsonb_build_object('n', n) \
                 FROM generate_series(1, 10) n RETURNING id::text",
                &[&tag],
            )
            .await
            .unwrap();
        ids.extend(rows.iter().map(|row| row.get::<_, String>(0)));
    }
    ids
}

/// Scenario 5 (issue 19 item 4): the standby's synchronized slot copy is behind what walbox
/// confirmed. The primary does not hold logical changes back for the standby
/// (`synchronized_standby_slots` empty) and the standby's WAL receiver is stopped while walbox
/// relays 400 more events; the primary stops, the standby is promoted, 300 events are
/// committed on the new primary. Those 400 were delivered but are not in the new primary's
/// history; walbox must not resume from where it stood on the old timeline (beyond the fork
/// point, so PostgreSQL would skip the new primary's commits below it): every row of the new
/// primary's table arrives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs scripts/trixie-servers.sh (scripts/test.sh runs it)"]
async fn failover_to_a_lagging_standby_resumes_within_the_new_history() {
    for round in 1..=rounds() {
        fresh_postgres(true).await;
        let primary_url = |port: u16| format!("postgres://postgres@127.0.0.1:{port}/{DATABASE}");
        let admin = connect(&primary_url(primary_port())).await;
        admin
            .batch_execute("ALTER SYSTEM SET synchronized_standby_slots = ''")
            .await
            .unwrap();
        admin
            .batch_execute("SELECT pg_reload_conf()")
            .await
            .unwrap();
        let queue = queue_name("lagging", round);
        fresh_queue(&queue).await;
        walbox_setup();
        let relay = Relay::start("lagging");
        let drain = Drain::start(&queue);
        let first: HashSet<String> = insert_batches(&admin, "first", 10)
            .await
            .into_iter()
            .collect();
        drain.wait_for(&first, Duration::from_secs(60)).await;
        servers(&["pg-wait-synced", SLOT, "120"]);
        // Let the sync worker copy the position that covers the first events, then cut the
        // standby off: its WAL receiver (and with it the slot sync) stops.
        tokio::time::sleep(Duration::from_secs(2)).await;
        let standby = connect(&primary_url(common::trixie::standby_port())).await;
        standby
            .batch_execute("ALTER SYSTEM SET primary_conninfo = ''")
            .await
            .unwrap();
        standby
            .batch_execute("SELECT pg_reload_conf()")
            .await
            .unwrap();
        let cut_off = Instant::now();
        while standby
            .query_one("SELECT count(*) FROM pg_stat_wal_receiver", &[])
            .await
            .unwrap()
            .get::<_, i64>(0)
            > 0
        {
            assert!(
                cut_off.elapsed() < Duration::from_secs(30),
                "the WAL receiver runs on"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let copy: Option<String> = standby
            .query_one(
                "SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = $1",
                &[&SLOT],
            )
            .await
            .unwrap()
            .get(0);
        let gone: HashSet<String> = insert_batches(&admin, "gone", 40)
            .await
            .into_iter()
            .collect();
        drain.wait_for(&gone, Duration::from_secs(60)).await;
        // walbox confirms them to the old primary: its slot passes their commits.
        let confirmed_old: String = admin
            .query_one("SELECT pg_current_wal_lsn()::text", &[])
            .await
            .map(|row| row.get(0))
            .unwrap_or_default();
        let passed = Instant::now();
        while !admin
            .query_one(
                "SELECT confirmed_flush_lsn >= $2::text::pg_lsn FROM pg_replication_slots \
                 WHERE slot_name = $1",
                &[&SLOT, &confirmed_old],
            )
            .await
            .unwrap()
            .get::<_, bool>(0)
        {
            assert!(
                passed.elapsed() < Duration::from_secs(60),
                "walbox never confirmed the events to the old primary:\n{}",
                relay.log()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        drop(admin);
        servers(&["pg-stop", "primary"]);
        servers(&["pg-promote"]);
        let promoted = Instant::now();
        let new_primary = connect(&primary_url(common::trixie::standby_port())).await;
        let after: HashSet<String> = insert_batches(&new_primary, "after", 30)
            .await
            .into_iter()
            .collect();
        drain.wait_for(&after, Duration::from_secs(60)).await;
        let seen = drain.finish().await;
        delete_queue(&queue).await;
        let delivered: HashSet<&str> = seen.iter().map(|s| s.id.as_str()).collect();
        let count_in = |ids: &HashSet<String>| {
            ids.iter()
                .filter(|id| delivered.contains(id.as_str()))
                .count()
        };
        let counts = count(&[], &seen, false).await;
        let slot_now: Option<String> = new_primary
            .query_one(
                "SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = $1",
                &[&SLOT],
            )
            .await
            .unwrap()
            .get(0);
        println!(
            "ha: scenario=lagging round={round} first={}/{} gone_delivered={}/{} \
             committed_after={} delivered_after={} in_table={} lost={} duplicates={} \
             copy_at_cut={copy:?} confirmed_on_old={confirmed_old} slot_on_new={slot_now:?} \
             after_promotion_ms={}",
            count_in(&first),
            first.len(),
            count_in(&gone),
            gone.len(),
            after.len(),
            count_in(&after),
            counts.in_table,
            counts.lost,
            counts.duplicates,
            promoted.elapsed().as_millis()
        );
        let log = relay.log();
        relay.stop();
        drop_slot().await;
        assert_eq!(count_in(&first), first.len(), "{log}");
        assert_eq!(count_in(&gone), gone.len(), "{log}");
        assert_eq!(counts.lost, 0, "events lost; walbox's log:\n{log}");
        assert_eq!(count_in(&after), after.len(), "{log}");
        // Commit order holds within the new timeline (its positions reuse the old one's).
        let on_new: Vec<Seen> = seen
            .iter()
            .filter(|s| after.contains(&s.id))
            .cloned()
            .collect();
        assert_first_deliveries_in_commit_order(&on_new);
        assert!(
            log.contains("forked"),
            "walbox says the new primary's history forked before what it confirmed:\n{log}"
        );
    }
}
