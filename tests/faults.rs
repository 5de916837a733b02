//! Delivery under failure, with faults injected for real while a load generator commits events
//! and a consumer drains the queue: walbox killed, the broker restarted, the AMQP and the
//! replication links cut through a proxy, PostgreSQL restarted (fast and immediate), the broker
//! nacking a full queue, unroutable messages, and a second walbox standing by.
//!
//! After each run: every committed event arrived (lost = 0), first deliveries follow commit
//! order, and every event walbox sent again had not been acknowledged to PostgreSQL when the
//! fault struck. `WALBOX_FAULT_ROUNDS` sets the faults per kind (default 1; the long mode used
//! for the report is 13). The kinds run one at a time: some restart shared servers.

mod common;

use std::collections::{HashMap, HashSet};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::proxy::Proxy;
use common::*;
use futures_util::StreamExt;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicQosOptions, QueueBindOptions};
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::{Connection, ConnectionProperties};
use walbox::lsn::Lsn;

/// Kinds that restart shared servers must not overlap with each other.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const MAX_IN_FLIGHT: &str = "256";

fn rounds() -> usize {
    std::env::var("WALBOX_FAULT_ROUNDS")
        .ok()
        .and_then(|text| text.parse().ok())
        .unwrap_or(1)
}

/// A small random number without a dependency: good enough to vary timings.
fn jitter(below: u64) -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    u64::from(nanos) % below.max(1)
}

/// Writers committing outbox events: mixed transaction sizes, many aggregates; they reconnect
/// when PostgreSQL goes away.
struct Load {
    stop: Arc<AtomicBool>,
    writers: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    fn start(url: String, writers: usize) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let writers = (0..writers)
            .map(|writer| {
                let stop = Arc::clone(&stop);
                let url = url.clone();
                tokio::spawn(async move {
                    let mut sequence = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        let Ok((mut client, connection)) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await else {
                            tokio::time::sleep(Duration::from_millis(200)).await;
                            continue;
                        };
                        tokio::spawn(connection);
                        while !stop.load(Ordering::Relaxed) {
                            let rows = match jitter(20) {
                                0 => 200,
                                n => 1 + n % 8,
                            };
                            let Ok(tx) = client.transaction().await else { break };
                            let mut failed = false;
                            for _ in 0..rows {
                                sequence += 1;
                                let payload = format!("{{\"writer\": {writer}, \"sequence\": {sequence}}}");
                                let aggregate = format!("agg-{}", sequence % 50);
                                if tx
                                    .execute(
                                        "INSERT INTO outbox (aggregate_type, aggregate_id, event_type, payload) \
                                         VALUES ('load', $1, 'tick', $2::text::jsonb)",
                                        &[&aggregate, &payload],
                                    )
                                    .await
                                    .is_err()
                                {
                                    failed = true;
                                    break;
                                }
                            }
                            if failed || tx.commit().await.is_err() {
                                break;
                            }
                            tokio::time::sleep(Duration::from_millis(5 + jitter(20))).await;
                        }
                    }
                })
            })
            .collect();
        Load { stop, writers }
    }

    async fn stop(self) {
        self.stop.store(true, Ordering::Relaxed);
        for writer in self.writers {
            let _ = writer.await;
        }
    }
}

/// One delivery as the consumer saw it.
#[derive(Clone, Debug)]
struct Seen {
    id: String,
    commit_lsn: Lsn,
    writer: i64,
    sequence: i64,
    /// The broker delivered it before, to a consumer that went away without acking.
    redelivered: bool,
}

/// A consumer of a durable queue that reconnects across broker restarts.
struct Drain {
    seen: Arc<Mutex<Vec<Seen>>>,
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl Drain {
    fn start(queue: String) -> Drain {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (record, halt) = (Arc::clone(&seen), Arc::clone(&stop));
        let task = tokio::spawn(async move {
            while !halt.load(Ordering::Relaxed) {
                let Ok(connection) =
                    Connection::connect(&amqp_url(), ConnectionProperties::default()).await
                else {
                    tokio::time::sleep(Duration::from_millis(300)).await;
                    continue;
                };
                let Ok(channel) = connection.create_channel().await else {
                    continue;
                };
                let _ = channel.basic_qos(500, BasicQosOptions::default()).await;
                let Ok(mut consumer) = channel
                    .basic_consume(
                        queue.as_str().into(),
                        "".into(),
                        BasicConsumeOptions::default(),
                        FieldTable::default(),
                    )
                    .await
                else {
                    tokio::time::sleep(Duration::from_millis(300)).await;
                    continue;
                };
                while !halt.load(Ordering::Relaxed) {
                    match tokio::time::timeout(Duration::from_millis(200), consumer.next()).await {
                        // A consumer of a connection the broker's restart closed can stay
                        // silent instead of ending: reconnect rather than wait on it forever.
                        Err(_)
                            if connection.status().connected() && channel.status().connected() =>
                        {
                            continue;
                        }
                        Err(_) => break,
                        Ok(Some(Ok(delivery))) => {
                            let body: serde_json::Value =
                                serde_json::from_slice(&delivery.data).unwrap_or_default();
                            record.lock().unwrap().push(Seen {
                                id: message_id(&delivery),
                                commit_lsn: commit_lsn(&delivery),
                                writer: body["writer"].as_i64().unwrap_or(-1),
                                sequence: body["sequence"].as_i64().unwrap_or(-1),
                                redelivered: delivery.redelivered,
                            });
                            if delivery.ack(BasicAckOptions::default()).await.is_err() {
                                break;
                            }
                        }
                        Ok(_) => break,
                    }
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        });
        Drain { seen, stop, task }
    }

    async fn stop(self) -> Vec<Seen> {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.task.await;
        Arc::try_unwrap(self.seen)
            .map(|m| m.into_inner().unwrap())
            .unwrap_or_default()
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fault {
    Kill,
    BrokerRestart,
    AmqpCut,
    PostgresRestartFast,
    PostgresRestartImmediate,
    ReplicationCut,
    Unroutable,
}

fn run_command(program: &str, args: &[&str]) {
    let status = Command::new(program)
        .args(args)
        .status()
        .unwrap_or_else(|e| panic!("{program}: {e}"));
    assert!(status.success(), "{program} {args:?} failed: {status}");
}

/// `rabbitmqctl` on the broker the tests use (WALBOX_TEST_RABBIT_NODE names a private one).
fn rabbitmqctl(action: &str) {
    match std::env::var("WALBOX_TEST_RABBIT_NODE") {
        Ok(node) => run_command("rabbitmqctl", &["-q", "-n", &node, action]),
        Err(_) => run_command("rabbitmqctl", &["-q", action]),
    }
}

fn postgres_cluster() -> (String, String) {
    let output = Command::new("pg_lsclusters")
        .arg("--no-header")
        .output()
        .expect("pg_lsclusters");
    let text = String::from_utf8_lossy(&output.stdout);
    let port = pg_port().to_string();
    let line = text
        .lines()
        .find(|line| line.split_whitespace().nth(2) == Some(port.as_str()))
        .unwrap_or_else(|| panic!("no PostgreSQL cluster on port {port}"));
    let mut fields = line.split_whitespace();
    (
        fields.next().unwrap().to_owned(),
        fields.next().unwrap().to_owned(),
    )
}

fn restart_postgres(mode: &str) {
    let (version, cluster) = postgres_cluster();
    run_command(
        "pg_ctlcluster",
        &[
            "--skip-systemctl-redirect",
            &version,
            &cluster,
            "restart",
            "-m",
            mode,
        ],
    );
}

/// What one fault left behind, read right after it: the slot's confirmed position, and the
/// server's WAL position (every event committed before the fault lies before it).
struct Mark {
    confirmed: Lsn,
    wal_at_mark: Lsn,
}

async fn mark(slot: &str) -> Mark {
    for _ in 0..100 {
        if let Ok((client, connection)) =
            tokio_postgres::connect(&admin_url("postgres"), tokio_postgres::NoTls).await
        {
            tokio::spawn(connection);
            if let Ok(Some(row)) = client
                .query_opt(
                    "SELECT confirmed_flush_lsn::text, pg_current_wal_lsn()::text \
                     FROM pg_replication_slots WHERE slot_name = $1",
                    &[&slot],
                )
                .await
            {
                return Mark {
                    confirmed: row.get::<_, &str>(0).parse().unwrap(),
                    wal_at_mark: row.get::<_, &str>(1).parse().unwrap(),
                };
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("cannot read the slot's position");
}

/// The whole scenario for one kind of fault.
async fn survive(fault: Fault) {
    let _serial = SERIAL.lock().await;
    let rounds = rounds();
    let mut env = TestEnv::new(&format!("{fault:?}").to_lowercase()).await;
    let amqp_proxy = Proxy::start(amqp_port()).await;
    let postgres_proxy = Proxy::start(pg_port()).await;
    if fault == Fault::AmqpCut {
        env.amqp_port = amqp_proxy.port;
    }
    if fault == Fault::ReplicationCut {
        env.postgres_port = postgres_proxy.port;
    }
    let queue = env.durable_queue("q", FieldTable::default()).await;
    let setup = env.walbox("setup", &[]);
    assert!(
        setup.status.success(),
        "{}",
        String::from_utf8_lossy(&setup.stderr)
    );
    let mut run = env.spawn_run(&["--max-in-flight", MAX_IN_FLIGHT]);
    env.wait_slot_active(Duration::from_secs(30)).await;

    let drain = Drain::start(queue.clone());
    let load = Load::start(env.postgres_url(), 3);
    let mut marks = Vec::new();
    for _ in 0..rounds {
        tokio::time::sleep(Duration::from_millis(800 + jitter(1500))).await;
        match fault {
            Fault::Kill => {
                env.kill(run);
                marks.push(mark(&env.name).await);
                run = env.spawn_run(&["--max-in-flight", MAX_IN_FLIGHT]);
            }
            Fault::BrokerRestart => {
                tokio::task::spawn_blocking(|| rabbitmqctl("stop_app"))
                    .await
                    .unwrap();
                marks.push(mark(&env.name).await);
                tokio::time::sleep(Duration::from_millis(500 + jitter(1500))).await;
                tokio::task::spawn_blocking(|| rabbitmqctl("start_app"))
                    .await
                    .unwrap();
            }
            Fault::AmqpCut | Fault::ReplicationCut => {
                let proxy = if fault == Fault::AmqpCut {
                    &amqp_proxy
                } else {
                    &postgres_proxy
                };
                proxy.cut();
                marks.push(mark(&env.name).await);
                tokio::time::sleep(Duration::from_millis(300 + jitter(2000))).await;
                proxy.restore();
            }
            Fault::PostgresRestartFast | Fault::PostgresRestartImmediate => {
                let mode = if fault == Fault::PostgresRestartFast {
                    "fast"
                } else {
                    "immediate"
                };
                // The slot's position just before the restart is at most what walbox resumes
                // from (walbox remembers what it confirmed, even where an immediate shutdown
                // loses the slot's last position). The WAL position bounds the commits before
                // the crash only once read after it; read before, a commit between the two
                // would be blamed on the next fault.
                let before = mark(&env.name).await;
                tokio::task::spawn_blocking(move || restart_postgres(mode))
                    .await
                    .unwrap();
                let after = mark(&env.name).await;
                marks.push(Mark {
                    confirmed: before.confirmed,
                    wal_at_mark: after.wal_at_mark,
                });
            }
            Fault::Unroutable => {
                env.channel
                    .queue_unbind(
                        queue.as_str().into(),
                        env.name.as_str().into(),
                        "#".into(),
                        FieldTable::default(),
                    )
                    .await
                    .unwrap();
                marks.push(mark(&env.name).await);
                tokio::time::sleep(Duration::from_millis(1000 + jitter(2000))).await;
                env.channel
                    .queue_bind(
                        queue.as_str().into(),
                        env.name.as_str().into(),
                        "#".into(),
                        QueueBindOptions::default(),
                        FieldTable::default(),
                    )
                    .await
                    .unwrap();
            }
        }
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    load.stop().await;

    let client = pg_connect(&env.postgres_url()).await;
    let committed: HashSet<String> = client
        .query("SELECT id::text FROM outbox", &[])
        .await
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect();
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let arrived: HashSet<String> = drain
            .seen
            .lock()
            .unwrap()
            .iter()
            .map(|seen| seen.id.clone())
            .collect();
        if committed.is_subset(&arrived) || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let seen = drain.stop().await;
    let logs: String = (0..=run).map(|index| env.run_log(index)).collect();
    report_and_check(fault, rounds, &committed, &seen, &marks, &logs);
    drop(client);
}

fn report_and_check(
    fault: Fault,
    rounds: usize,
    committed: &HashSet<String>,
    seen: &[Seen],
    marks: &[Mark],
    log: &str,
) {
    let mut first: HashMap<&str, usize> = HashMap::new();
    let mut walbox_duplicates = 0;
    let mut broker_redeliveries = 0;
    for (index, delivery) in seen.iter().enumerate() {
        if first.contains_key(delivery.id.as_str()) {
            if delivery.redelivered {
                broker_redeliveries += 1;
                continue;
            }
            walbox_duplicates += 1;
            // Sent again by walbox, so some fault after its commit made walbox resume from
            // before it; walbox resumes from at least what the slot had confirmed at that
            // fault, and the slot's position only grows, so it must not have been confirmed
            // at the first fault after its commit. (Which fault it was cannot be told from the
            // delivery order: a copy can wait in the queue behind a backlog while later faults
            // strike.)
            if let Some(mark) = marks
                .iter()
                .find(|mark| mark.wal_at_mark > delivery.commit_lsn)
            {
                assert!(
                    delivery.commit_lsn >= mark.confirmed,
                    "{fault:?}: event {} committed at {} was sent again although the slot had \
                     confirmed {} at the first fault after its commit",
                    delivery.id,
                    delivery.commit_lsn,
                    mark.confirmed
                );
            }
        } else {
            first.insert(&delivery.id, index);
        }
    }
    let lost: Vec<&String> = committed
        .iter()
        .filter(|id| !first.contains_key(id.as_str()))
        .collect();
    let firsts: Vec<&Seen> = seen
        .iter()
        .enumerate()
        .filter(|(index, delivery)| first[delivery.id.as_str()] == *index)
        .map(|(_, delivery)| delivery)
        .collect();
    let window = MAX_IN_FLIGHT.parse().unwrap();
    let order = check_order(&firsts, &held_events(log), window);
    eprintln!(
        "fault {fault:?}: faults={rounds} committed={} delivered={} unique={} walbox_duplicates={walbox_duplicates} \
         broker_redeliveries={broker_redeliveries} lost={} overtaken_after_a_refusal={} \
         order_violations={}",
        committed.len(),
        seen.len(),
        first.len(),
        lost.len(),
        order.allowed,
        order.violations.len()
    );
    assert!(
        committed.len() > 50,
        "{fault:?}: the load generator committed too little: {}",
        committed.len()
    );
    assert!(
        lost.is_empty(),
        "{fault:?}: {} events lost, e.g. {:?}; log:\n{log}",
        lost.len(),
        lost.first()
    );
    assert!(
        order.violations.is_empty(),
        "{fault:?}: first deliveries out of commit order beyond what a refusal allows: {:?}",
        &order.violations[..order.violations.len().min(5)]
    );
}

/// The events walbox said the broker returned or nacked (it logs each held event).
fn held_events(log: &str) -> HashSet<String> {
    ["returned event ", "nacked event "]
        .iter()
        .flat_map(|said| log.match_indices(said).map(move |(at, _)| at + said.len()))
        .filter_map(|start| log[start..].split_whitespace().next())
        .map(str::to_owned)
        .collect()
}

/// First deliveries checked against the order each queue is promised (docs/src/concepts/
/// delivery.md): commit order, and insert order within a transaction, except that the events
/// published after one the broker returned or nacked (at most `window` − 1, in flight when
/// that verdict came) may reach the queue before it.
struct Order {
    /// Out of order, as the exception allows.
    allowed: usize,
    /// Out of order beyond it: (overtaken event, latest event delivered before it).
    violations: Vec<(String, String)>,
}

fn check_order(firsts: &[&Seen], held: &HashSet<String>, window: usize) -> Order {
    // Rank in commit order; within a transaction (one writer's) by the writer's sequence.
    let mut by_commit: Vec<&Seen> = firsts.to_vec();
    by_commit.sort_by_key(|seen| (seen.commit_lsn, seen.writer, seen.sequence));
    let rank: HashMap<&str, usize> = by_commit
        .iter()
        .enumerate()
        .map(|(rank, seen)| (seen.id.as_str(), rank))
        .collect();
    let held_ranks: std::collections::BTreeSet<usize> = held
        .iter()
        .filter_map(|id| rank.get(id.as_str()).copied())
        .collect();
    let mut order = Order {
        allowed: 0,
        violations: Vec::new(),
    };
    let mut latest: Option<&Seen> = None;
    for seen in firsts {
        let here = rank[seen.id.as_str()];
        match latest {
            Some(before) if rank[before.id.as_str()] > here => {
                let overtaker = rank[before.id.as_str()];
                // The last held event at or before this one: the overtaking events were
                // published after it, within one window of it.
                let excused = held_ranks
                    .range(..=here)
                    .next_back()
                    .is_some_and(|&refused| overtaker - refused < window);
                if excused {
                    order.allowed += 1;
                } else {
                    order.violations.push((seen.id.clone(), before.id.clone()));
                }
            }
            _ => latest = Some(seen),
        }
    }
    order
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn survives_sigkill() {
    survive(Fault::Kill).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn survives_broker_restart() {
    survive(Fault::BrokerRestart).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn survives_amqp_link_cut() {
    survive(Fault::AmqpCut).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn survives_postgres_fast_restart() {
    survive(Fault::PostgresRestartFast).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn survives_postgres_immediate_restart() {
    survive(Fault::PostgresRestartImmediate).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn survives_replication_link_cut() {
    survive(Fault::ReplicationCut).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn holds_unroutable_events_until_a_queue_is_bound() {
    survive(Fault::Unroutable).await;
}

/// A queue that refuses publishes when full (x-overflow=reject-publish): the broker nacks,
/// walbox holds and retries with backoff, and everything arrives once the queue drains.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn survives_broker_nacks_from_a_full_queue() {
    let _serial = SERIAL.lock().await;
    let mut env = TestEnv::new("nack").await;
    let mut arguments = FieldTable::default();
    arguments.insert("x-max-length".into(), AMQPValue::LongLongInt(100));
    arguments.insert(
        "x-overflow".into(),
        AMQPValue::LongString(LongString::from("reject-publish")),
    );
    let queue = env.durable_queue("q", arguments).await;
    assert!(env.walbox("setup", &[]).status.success());
    let run = env.spawn_run(&["--max-in-flight", MAX_IN_FLIGHT]);
    env.wait_slot_active(Duration::from_secs(30)).await;
    let load = Load::start(env.postgres_url(), 3);
    let nacks = |log: &str| log.matches("nacked").count();
    let mut seen = Vec::new();
    let mut held = Lsn::ZERO;
    for round in 0..rounds() {
        // Nobody drains: the queue fills and the broker starts refusing, again.
        let before = nacks(&env.run_log(run));
        let deadline = Instant::now() + Duration::from_secs(30);
        while nacks(&env.run_log(run)) == before {
            assert!(
                Instant::now() < deadline,
                "round {round}: walbox saw no nack; log:\n{}",
                env.run_log(run)
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        held = mark(&env.name).await.confirmed;
        let drain = Drain::start(queue.clone());
        tokio::time::sleep(Duration::from_millis(1500 + jitter(1000))).await;
        seen.extend(drain.stop().await);
    }
    let drain = Drain::start(queue);
    load.stop().await;
    let committed: HashSet<String> = env
        .db
        .query("SELECT id::text FROM outbox", &[])
        .await
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect();
    let deadline = Instant::now() + Duration::from_secs(120);
    while Instant::now() < deadline {
        let arrived: HashSet<String> = drain
            .seen
            .lock()
            .unwrap()
            .iter()
            .chain(&seen)
            .map(|seen| seen.id.clone())
            .collect();
        if committed.is_subset(&arrived) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    seen.extend(drain.stop().await);
    let unique: HashSet<&String> = seen.iter().map(|seen| &seen.id).collect();
    let lost = committed.iter().filter(|id| !unique.contains(id)).count();
    let log = env.run_log(run);
    let mut first = HashSet::new();
    let firsts: Vec<&Seen> = seen
        .iter()
        .filter(|delivery| first.insert(delivery.id.as_str()))
        .collect();
    let order = check_order(&firsts, &held_events(&log), MAX_IN_FLIGHT.parse().unwrap());
    eprintln!(
        "fault Nack: faults={} committed={} delivered={} unique={} duplicates={} lost={lost} \
         overtaken_after_a_refusal={} order_violations={} (slot held at {held} while refused)",
        rounds(),
        committed.len(),
        seen.len(),
        unique.len(),
        seen.len() - unique.len(),
        order.allowed,
        order.violations.len()
    );
    assert_eq!(lost, 0, "events lost after nacks; log:\n{log}");
    assert!(
        order.violations.is_empty(),
        "first deliveries out of commit order beyond what a nack allows: {:?}",
        &order.violations[..order.violations.len().min(5)]
    );
}

/// A second walbox on the same slot stands by and takes over within 5 seconds of the first
/// one's death, with nothing lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standby_walbox_takes_over() {
    let _serial = SERIAL.lock().await;
    let mut env = TestEnv::new("standby").await;
    let queue = env.durable_queue("q", FieldTable::default()).await;
    assert!(env.walbox("setup", &[]).status.success());
    let mut active = env.spawn_run(&[]);
    env.wait_slot_active(Duration::from_secs(30)).await;
    let drain = Drain::start(queue);
    let load = Load::start(env.postgres_url(), 2);
    let mut takeovers = Vec::new();
    for _ in 0..rounds() {
        let standby = env.spawn_run(&[]);
        let deadline = Instant::now() + Duration::from_secs(15);
        while !env.run_log(standby).contains("standing by") {
            assert!(
                Instant::now() < deadline,
                "the second walbox never said it stands by; log:\n{}",
                env.run_log(standby)
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(env.try_wait(standby).is_none(), "the standby must stay up");
        tokio::time::sleep(Duration::from_millis(1000 + jitter(1500))).await;

        let killed_at = Instant::now();
        env.kill(active);
        let deadline = killed_at + Duration::from_secs(20);
        while env.run_log(standby).matches("\"streaming\"").count() == 0 {
            assert!(
                Instant::now() < deadline,
                "no takeover; log:\n{}",
                env.run_log(standby)
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let takeover = killed_at.elapsed();
        assert!(
            takeover < Duration::from_secs(5),
            "takeover took {takeover:?}"
        );
        takeovers.push(takeover.as_millis());
        active = standby;
    }
    eprintln!("standby took over {takeovers:?} ms after the active walbox was killed");

    tokio::time::sleep(Duration::from_secs(1)).await;
    load.stop().await;
    let committed: HashSet<String> = env
        .db
        .query("SELECT id::text FROM outbox", &[])
        .await
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect();
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        let arrived: HashSet<String> = drain
            .seen
            .lock()
            .unwrap()
            .iter()
            .map(|seen| seen.id.clone())
            .collect();
        if committed.is_subset(&arrived) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let seen = drain.stop().await;
    let unique: HashSet<&String> = seen.iter().map(|seen| &seen.id).collect();
    let lost = committed.iter().filter(|id| !unique.contains(id)).count();
    eprintln!(
        "fault Standby: faults={} committed={} delivered={} lost={lost}",
        takeovers.len(),
        committed.len(),
        seen.len()
    );
    assert_eq!(lost, 0);
}

/// `rabbitmqctl` with arguments, on the broker the tests use; its output.
fn rabbitmqctl_output(args: &[&str]) -> String {
    let node = std::env::var("WALBOX_TEST_RABBIT_NODE").ok();
    let mut command = Command::new("rabbitmqctl");
    command.arg("-q");
    if let Some(node) = &node {
        command.args(["-n", node]);
    }
    let output = command.args(args).output().expect("rabbitmqctl");
    assert!(output.status.success(), "rabbitmqctl {args:?}: {output:?}");
    String::from_utf8_lossy(&output.stdout).trim().to_owned()
}

/// A broker memory alarm for as long as this lives: the broker blocks every connection that
/// publishes, so no confirm comes. Dropping it puts the memory watermark back.
struct MemoryAlarm {
    previous: Vec<String>,
}

impl MemoryAlarm {
    fn raise() -> MemoryAlarm {
        let said =
            rabbitmqctl_output(&["eval", "vm_memory_monitor:get_vm_memory_high_watermark()."]);
        // A fraction (`0.4`) or `{absolute,Bytes}`.
        let previous = match said.strip_prefix("{absolute,") {
            Some(rest) => vec!["absolute".to_owned(), rest.trim_end_matches('}').to_owned()],
            None => vec![said],
        };
        let alarm = MemoryAlarm { previous };
        rabbitmqctl_output(&["set_vm_memory_high_watermark", "0.0000001"]);
        let deadline = Instant::now() + Duration::from_secs(20);
        while !rabbitmqctl_output(&["eval", "rabbit_alarm:get_alarms()."]).contains("memory") {
            assert!(Instant::now() < deadline, "the memory alarm did not go off");
            std::thread::sleep(Duration::from_millis(200));
        }
        alarm
    }
}

impl Drop for MemoryAlarm {
    fn drop(&mut self) {
        let mut args = vec!["set_vm_memory_high_watermark"];
        args.extend(self.previous.iter().map(String::as_str));
        rabbitmqctl_output(&args);
    }
}

/// SIGTERM while the in-flight window is full and no confirm comes (a broker memory alarm):
/// walbox exits within `--shutdown-grace` and a small margin, the slot not past the first
/// event the broker did not take, and after the alarm clears a new walbox delivers every
/// event. Runs only where it may alarm the broker (a private node, or CI's).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_under_a_memory_alarm_exits_within_the_grace() {
    stop_under_a_memory_alarm(false).await;
}

/// As [`sigterm_under_a_memory_alarm_exits_within_the_grace`], with the session failing on
/// the PostgreSQL side meanwhile (its walsender terminated) while messages wait for their
/// confirms: closing the blocked broker connection (which answers no close) must not hang
/// walbox, which reconnects and still stops within the grace.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_failing_under_a_memory_alarm_reconnects_and_stops_within_the_grace() {
    stop_under_a_memory_alarm(true).await;
}

async fn stop_under_a_memory_alarm(cut_replication: bool) {
    const GRACE_SECS: u64 = 5;
    /// Closing the connections after the grace takes at most 3 s (engine/mod.rs), and a
    /// loaded machine a little more.
    const MARGIN: Duration = Duration::from_secs(5);
    let _serial = SERIAL.lock().await;
    let mut env = TestEnv::new("memalarm").await;
    let mut consumer = env.queue("q", "#").await;
    let grace = GRACE_SECS.to_string();
    let run = env.spawn_run(&["--max-in-flight", "8", "--shutdown-grace", &grace]);
    env.wait_slot_active(Duration::from_secs(30)).await;
    let before = env.insert("order", "before", "{}").await;
    let arrived = receive(&mut consumer, 1, Duration::from_secs(30)).await;
    assert_eq!(
        arrived.iter().map(message_id).collect::<Vec<_>>(),
        [before.as_str()]
    );

    let alarm = tokio::task::spawn_blocking(MemoryAlarm::raise)
        .await
        .unwrap();
    // Cutting the replication connection ends the session only while walbox is not waiting
    // for a window permit: then fewer events than the window.
    let count = if cut_replication { 3 } else { 40 };
    let mut committed = Vec::new();
    for n in 0..count {
        committed.push(
            env.insert("order", "blocked", &format!("{{\"n\": {n}}}"))
                .await,
        );
    }
    // walbox publishes (filling its window of 8) and waits for confirms that do not come.
    tokio::time::sleep(Duration::from_secs(3)).await;
    if cut_replication {
        let sessions = env.run_log(run).matches("session ended").count();
        env.db
            .execute(
                "SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots \
                 WHERE slot_name = $1",
                &[&env.name],
            )
            .await
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(15);
        while env.run_log(run).matches("session ended").count() == sessions {
            assert!(
                Instant::now() < deadline,
                "the failed session never ended (closing the blocked broker connection hangs?)"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        eprintln!("memory alarm: the failed session ended; walbox reconnects");
        env.wait_slot_active(Duration::from_secs(30)).await;
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let mut seen: Vec<(String, Lsn)> = receive_any(&mut consumer, Duration::from_millis(500))
        .await
        .iter()
        .map(|delivery| (message_id(delivery), commit_lsn(delivery)))
        .collect();
    let taken_before_stop = seen.len();

    let exited = sigterm_and_wait(&mut env, run, Duration::from_secs(30)).await;
    let slot_at_exit = env.slot_confirmed().await.unwrap();
    eprintln!(
        "memory alarm: SIGTERM with --shutdown-grace {GRACE_SECS}: {}; {taken_before_stop} \
         events taken by the broker before the stop; slot at {slot_at_exit}",
        match &exited {
            Some((after, status)) => format!("exited after {after:?} ({status})"),
            None => "still running 30 s later".to_owned(),
        }
    );
    let Some((after, status)) = exited else {
        env.kill(run);
        drop(alarm);
        panic!(
            "walbox was still running 30 s after SIGTERM; log:\n{}",
            env.run_log(run)
        );
    };
    assert!(
        after <= Duration::from_secs(GRACE_SECS) + MARGIN,
        "walbox took {after:?} to exit after SIGTERM; log:\n{}",
        env.run_log(run)
    );
    assert!(status.success(), "exit status {status}");

    drop(alarm);
    let again = env.spawn_run(&["--max-in-flight", "8"]);
    let deadline = Instant::now() + Duration::from_secs(60);
    while seen.iter().map(|(id, _)| id).collect::<HashSet<_>>().len() < committed.len()
        && Instant::now() < deadline
    {
        for delivery in receive_any(&mut consumer, Duration::from_millis(500)).await {
            seen.push((message_id(&delivery), commit_lsn(&delivery)));
        }
    }
    let unique: HashSet<&String> = seen.iter().map(|(id, _)| id).collect();
    let lost: Vec<&String> = committed.iter().filter(|id| !unique.contains(id)).collect();
    // The first event the broker had not taken when walbox stopped: the slot must not be past
    // its commit.
    let taken: HashSet<&String> = seen[..taken_before_stop].iter().map(|(id, _)| id).collect();
    let first_untaken = seen
        .iter()
        .filter(|(id, _)| !taken.contains(id))
        .map(|(_, lsn)| *lsn)
        .min();
    eprintln!(
        "memory alarm: committed={} delivered={} unique={} lost={} duplicates={} first \
         untaken commit={first_untaken:?}",
        committed.len(),
        seen.len(),
        unique.len(),
        lost.len(),
        seen.len() - unique.len()
    );
    assert!(lost.is_empty(), "lost after the restart: {lost:?}");
    if let Some(first_untaken) = first_untaken {
        assert!(
            slot_at_exit <= first_untaken,
            "the slot ({slot_at_exit}) passed an event the broker had not taken ({first_untaken})"
        );
    }
    assert!(env.terminate(again).success());
}

/// SIGTERM to run `run`; how long it took to exit and how, or None if it still ran after
/// `within`.
async fn sigterm_and_wait(
    env: &mut TestEnv,
    run: usize,
    within: Duration,
) -> Option<(Duration, std::process::ExitStatus)> {
    let _ = Command::new("kill")
        .args(["-TERM", &env.pid(run).to_string()])
        .status();
    let asked = Instant::now();
    loop {
        if let Some(status) = env.try_wait(run) {
            return Some((asked.elapsed(), status));
        }
        if asked.elapsed() > within {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
