//! `--target stream` on PostgreSQL 17 and a three-node RabbitMQ 4.0 cluster
//! (scripts/trixie-servers.sh): exactly once, keyed on the WAL position.
//!
//! - Exactly once under faults: writers commit transactions of 1 to 7 rows while walbox is
//!   killed with SIGKILL at random moments and the node leading the stream is stopped and
//!   started again (the leader moves); then the whole stream is read back: every committed
//!   event exactly once, in commit order, zero duplicates. `WALBOX_STREAM_ROUNDS` (default 3)
//!   is the number of kills; the long mode uses 20 or more.
//! - Super stream: the same faults (kills only) with three partitions and twelve aggregates:
//!   each aggregate's events in one partition, in commit order, zero duplicates per partition.
//! - A failover to a standby holding a synchronized slot (`synchronized_standby_slots`): the
//!   stream holds exactly the final primary's table, no duplicates, in commit order.
//! - An event too large for a publish frame: refused before it is sent, nothing after it is
//!   published, walbox halts on it as a poison event.
//! - A rewound LSN: the stream holds an id beyond the end of this server's WAL (as after a
//!   failover to a standby that lacked it): walbox stops with the definite error, exit 1.
//! - A super stream's routing change (issue #19 item 8): a partition's leader hangs
//!   (`rabbit-freeze`) while the other partitions store later events, walbox is killed, the
//!   node killed and started again, and walbox restarts with another `--partition-key`:
//!   every committed event in the partitions (duplicates across the change allowed, never
//!   a loss). Before the routing was part of the producer names: 595 of 6,660 lost.
//! - Logical decoding messages (`--messages`): writers commit rows with transactional
//!   messages among them (one of a prefix that is not relayed) and write non-transactional
//!   ones between, while walbox is killed: every committed row and relayed message exactly
//!   once, the skipped prefix never, in WAL order.
//! - Over TLS (the nodes' TLS stream listeners, certificates made by the script, a client
//!   certificate required): exactly once across two kills, each session moving to the leader
//!   by its advertised name; a wrong CA, a host the certificate does not name and a missing
//!   client certificate each stop `walbox run` with exit 1 and the reason.
//!
//! Ignored by a plain `cargo test`; scripts/test.sh runs them after tests/ha.rs on the same
//! servers (`--ignored --test-threads=1`; each test resets the PostgreSQL pair).

mod common;

use std::collections::HashSet;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use rabbitmq_stream_client::types::{Message, OffsetSpecification, SimpleValue};
use rabbitmq_stream_client::{Client, ClientOptions, Environment};
use tokio_postgres::NoTls;
use walbox::lsn::Lsn;

use common::pg_connect as connect;
use common::trixie::{base, env_count, multi_host_url, primary_port, servers};

const DATABASE: &str = "stream_relay";

fn primary_url(database: &str) -> String {
    format!(
        "postgres://postgres@127.0.0.1:{}/{database}",
        primary_port()
    )
}

fn stream_port(node: u16) -> u16 {
    base() + 551 + node
}

fn stream_urls() -> String {
    (1..=3)
        .map(|node| {
            format!(
                "rabbitmq-stream://guest:guest@127.0.0.1:{}/%2f",
                stream_port(node)
            )
        })
        .collect::<Vec<_>>()
        .join(",")
}

fn rounds() -> usize {
    env_count("WALBOX_STREAM_ROUNDS", 3)
}

/// Names of this run's own: slot, stream.
fn name(what: &str) -> String {
    format!("stream_{what}_{}", std::process::id())
}

/// A fresh primary with the outbox table in its own database.
async fn fresh_postgres() {
    servers(&["pg-reset"]);
    let admin = connect(&primary_url("postgres")).await;
    admin
        .batch_execute(&format!("CREATE DATABASE {DATABASE}"))
        .await
        .unwrap();
    let db = connect(&primary_url(DATABASE)).await;
    db.batch_execute(common::OUTBOX_SQL).await.unwrap();
}

fn walbox_args(slot: &str, stream: &str) -> Vec<String> {
    vec![
        "--postgres-url".into(),
        primary_url(DATABASE),
        "--slot".into(),
        slot.into(),
        "--publication".into(),
        slot.into(),
        "--target".into(),
        "stream".into(),
        "--stream".into(),
        stream.into(),
        "--stream-url".into(),
        stream_urls(),
    ]
}

fn walbox(subcommand: &str, args: &[String]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_walbox"))
        .arg(subcommand)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

/// `walbox setup` with these flags; it must succeed.
fn walbox_setup(args: &[String]) -> std::process::Output {
    let setup = walbox("setup", args);
    assert!(
        setup.status.success(),
        "walbox setup: {}",
        String::from_utf8_lossy(&setup.stderr)
    );
    setup
}

/// A test's log file under target/, emptied: each run appends to it.
fn fresh_log(file: &str) -> std::path::PathBuf {
    let log = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(file);
    let _ = std::fs::remove_file(&log);
    log
}

/// `walbox run` in the background, its log appended to a file under target/.
fn spawn_run(args: &[String], log: &std::path::Path) -> Child {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .unwrap();
    Command::new(env!("CARGO_BIN_EXE_walbox"))
        .arg("run")
        .args(args)
        .args([
            "--max-retry-delay-ms",
            "1000",
            "--metrics-addr",
            "none",
            "--log-format",
            "json",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(file)
        .spawn()
        .unwrap()
}

/// Writers committing transactions of 1 to 7 rows until stopped; returns the ids whose
/// commit PostgreSQL acknowledged.
fn start_writers(
    writers: usize,
    stop: Arc<AtomicBool>,
) -> Vec<tokio::task::JoinHandle<Vec<String>>> {
    start_writers_at(&primary_url(DATABASE), writers, stop)
}

/// The same against `url`, reconnecting (to whichever host is the primary) when a
/// connection fails.
fn start_writers_at(
    url: &str,
    writers: usize,
    stop: Arc<AtomicBool>,
) -> Vec<tokio::task::JoinHandle<Vec<String>>> {
    (0..writers)
        .map(|writer| {
            let stop = Arc::clone(&stop);
            let url = url.to_owned();
            tokio::spawn(async move {
                let mut client: Option<tokio_postgres::Client> = None;
                let mut committed = Vec::new();
                let mut round = 0i32;
                while !stop.load(Ordering::Relaxed) {
                    if client.as_ref().is_none_or(|c| c.is_closed()) {
                        client = match tokio_postgres::connect(&url, NoTls).await {
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
                    let db = client.as_mut().expect("connected");
                    let size = 1 + (round * 5 + writer as i32 * 3) % 7;
                    // Twelve aggregates, each written by every writer.
                    let spread = round * 3 + writer as i32;
                    round += 1;
                    let outcome = async {
                        let transaction = db.transaction().await?;
                        let rows = transaction
                            .query(
                                "INSERT INTO outbox (aggregate_type, aggregate_id, event_type, \
                                 payload) SELECT 'stream', 'k' || ((n * 7 + $1) % 12), 'e', \
                                 jsonb_build_object('n', n) \
                                 FROM generate_series(1, $2) n RETURNING id::text",
                                &[&spread, &size],
                            )
                            .await?;
                        transaction.commit().await?;
                        Ok::<_, tokio_postgres::Error>(
                            rows.iter()
                                .map(|row| row.get::<_, String>(0))
                                .collect::<Vec<_>>(),
                        )
                    };
                    match outcome.await {
                        Ok(ids) => committed.extend(ids),
                        Err(_) => {
                            client = None;
                            tokio::time::sleep(Duration::from_millis(200)).await;
                        }
                    }
                    tokio::time::sleep(Duration::from_millis(15)).await;
                }
                committed
            })
        })
        .collect()
}

fn message_id(message: &Message) -> String {
    let id = message
        .properties()
        .and_then(|p| p.message_id.clone())
        .expect("a message id");
    id.try_into().expect("a string message id")
}

fn commit_lsn(message: &Message) -> Lsn {
    match message
        .application_properties()
        .and_then(|a| a.get("x-commit-lsn"))
    {
        Some(SimpleValue::String(text)) => text.parse().expect("an LSN"),
        other => panic!("x-commit-lsn is {other:?}"),
    }
}

/// Every message of `stream`, from its first offset, until `expected` have come or nothing
/// new came for 10 s, and then for as long as more come within 3 s: (event id, commit LSN).
async fn read_stream(stream: &str, expected: usize) -> Vec<(String, Lsn)> {
    read_events(stream, expected, Duration::from_secs(3))
        .await
        .into_iter()
        .map(|event| (event.id, event.commit))
        .collect()
}

/// One event as read back from a stream.
struct Event {
    id: String,
    commit: Lsn,
    aggregate: String,
}

fn event(message: &Message) -> Event {
    let aggregate = match message
        .application_properties()
        .and_then(|a| a.get("x-aggregate-id"))
    {
        Some(SimpleValue::String(text)) => text.clone(),
        other => panic!("x-aggregate-id is {other:?}"),
    };
    Event {
        id: message_id(message),
        commit: commit_lsn(message),
        aggregate,
    }
}

async fn read_events(stream: &str, expected: usize, trailing: Duration) -> Vec<Event> {
    let environment = Environment::builder()
        .host("127.0.0.1")
        .port(stream_port(1))
        .build()
        .await
        .expect("stream environment");
    let mut consumer = environment
        .consumer()
        .offset(OffsetSpecification::First)
        .build(stream)
        .await
        .expect("a consumer");
    let mut seen = Vec::new();
    while seen.len() < expected {
        match tokio::time::timeout(Duration::from_secs(10), consumer.next()).await {
            Ok(Some(Ok(delivery))) => seen.push(event(delivery.message())),
            Ok(Some(Err(error))) => panic!("consuming the stream: {error:?}"),
            Ok(None) | Err(_) => break,
        }
    }
    // Anything beyond what was expected would be a duplicate: look for it a little longer.
    while let Ok(Some(Ok(delivery))) = tokio::time::timeout(trailing, consumer.next()).await {
        seen.push(event(delivery.message()));
    }
    let _ = consumer.handle().close().await;
    seen
}

async fn stream_client(node: u16) -> Option<Client> {
    let options = ClientOptions::builder()
        .host("127.0.0.1")
        .port(stream_port(node))
        .build();
    match tokio::time::timeout(Duration::from_secs(5), Client::connect(options)).await {
        Ok(Ok(client)) => Some(client),
        _ => None,
    }
}

/// The node (1..=3) leading `stream`, asking the nodes that answer; None while none knows.
async fn leader(stream: &str) -> Option<u16> {
    for node in 1..=3 {
        let Some(client) = stream_client(node).await else {
            continue;
        };
        let metadata = client.metadata(vec![stream.to_owned()]).await;
        let _ = client.close().await;
        if let Some(meta) = metadata.ok().and_then(|mut m| m.remove(stream)) {
            return Some((meta.leader.port as u16) - base() - 551);
        }
    }
    None
}

/// Stop the node leading `stream`, wait until another node leads it, start the node again.
async fn move_leader(stream: &str) -> (u16, u16) {
    let node = leader(stream).await.expect("the stream has a leader");
    servers(&["rabbit-stop", &node.to_string()]);
    let deadline = Instant::now() + Duration::from_secs(90);
    let moved = loop {
        match leader(stream).await {
            Some(now) if now != node => break now,
            _ => {
                assert!(Instant::now() < deadline, "no new leader for {stream}");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    };
    servers(&["rabbit-start", &node.to_string()]);
    (node, moved)
}

async fn delete_stream(stream: &str) {
    for node in 1..=3 {
        if let Some(client) = stream_client(node).await {
            let _ = client.delete_stream(stream).await;
            let _ = client.close().await;
            return;
        }
    }
}

async fn drop_slot(slot: &str) {
    let admin = connect(&primary_url("postgres")).await;
    let _ = admin
        .execute(
            "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots \
             WHERE slot_name = $1",
            &[&slot],
        )
        .await;
}

async fn slot_confirmed(slot: &str) -> Option<Lsn> {
    let admin = connect(&primary_url("postgres")).await;
    let row = admin
        .query_opt(
            "SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = $1",
            &[&slot],
        )
        .await
        .unwrap()?;
    row.get::<_, Option<String>>(0)
        .map(|text| text.parse().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs scripts/trixie-servers.sh (run by scripts/test.sh)"]
async fn exactly_once_across_kills_and_a_leader_move() {
    fresh_postgres().await;
    let slot = name("slot");
    let stream = name("events");
    let args = walbox_args(&slot, &stream);
    let setup = walbox_setup(&args);
    println!("{}", String::from_utf8_lossy(&setup.stdout));
    let log = fresh_log("stream-exactly-once.log");

    let stop = Arc::new(AtomicBool::new(false));
    let writers = start_writers(3, Arc::clone(&stop));
    let mut relay = spawn_run(&args, &log);
    let kills = rounds();
    // A pseudo-random but repeatable pause before each kill: 0.3 to 2.2 s.
    let mut seed = u64::from(std::process::id());
    let leader_move_at = kills / 2;
    for round in 0..kills {
        tokio::time::sleep(next_kill_pause(&mut seed)).await;
        relay.kill().unwrap();
        relay.wait().unwrap();
        if round == leader_move_at {
            // walbox restarts while the leader's node is down, and publishes to the new one.
            relay = spawn_run(&args, &log);
            let (node, moved) = move_leader(&stream).await;
            println!(
                "stopped node {node}, the stream's leader; node {moved} took over; node {node} is back"
            );
        } else {
            relay = spawn_run(&args, &log);
        }
    }
    let (committed, status) = stop_writers_and_walbox(&stop, writers, &slot, &log, relay).await;

    let seen = read_stream(&stream, committed.len()).await;
    let committed_set: HashSet<&String> = committed.iter().collect();
    let mut distinct = HashSet::new();
    let duplicates = seen.iter().filter(|(id, _)| !distinct.insert(id)).count();
    let missing = committed_set
        .iter()
        .filter(|id| !distinct.contains(**id))
        .count();
    let unaligned = seen.iter().filter(|(_, lsn)| lsn.as_u64() % 8 != 0).count();
    let out_of_order = seen.windows(2).filter(|pair| pair[1].1 < pair[0].1).count();
    println!(
        "stream exactly-once: kills={kills} leader_moves=1 committed={} in_stream={} \
         duplicates={duplicates} missing={missing} out_of_order={out_of_order} \
         unaligned_commit_lsns={unaligned}",
        committed.len(),
        seen.len()
    );
    let log_text = std::fs::read_to_string(&log).unwrap_or_default();
    let republished = republished(&log_text);
    println!(
        "events republished after kills and dropped by the broker as duplicates: {republished}"
    );

    delete_stream(&stream).await;
    drop_slot(&slot).await;
    assert!(status.success(), "walbox exited {status} on SIGTERM");
    assert_eq!(duplicates, 0, "duplicates in the stream");
    assert_eq!(missing, 0, "committed events missing from the stream");
    assert_eq!(
        seen.len(),
        committed.len(),
        "the stream holds what was committed"
    );
    assert_eq!(out_of_order, 0, "the stream is in commit order");
    assert_eq!(unaligned, 0, "every commit LSN is 8-byte aligned");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs scripts/trixie-servers.sh (run by scripts/test.sh)"]
async fn a_rewound_lsn_stops_walbox() {
    fresh_postgres().await;
    let slot = name("rewound");
    let stream = name("rewound");
    let args = walbox_args(&slot, &stream);
    walbox_setup(&args);
    // The stream holds an event of this slot's producer at commit FF/0, far beyond this
    // fresh server's WAL: what a failover to a standby lacking that WAL would look like.
    let environment = Environment::builder()
        .host("127.0.0.1")
        .port(stream_port(1))
        .build()
        .await
        .unwrap();
    let mut producer = environment
        .producer()
        .name(&format!("walbox-{slot}-g0"))
        .build(&stream)
        .await
        .unwrap();
    let ahead: u64 = (0xFF_0000_0000u64 >> 3) << 19;
    let confirmed = producer
        .send_with_confirm(
            Message::builder()
                .body(b"from another timeline".to_vec())
                .publishing_id(ahead)
                .build(),
        )
        .await
        .unwrap();
    assert!(confirmed.confirmed());
    producer.close().await.unwrap();

    // `walbox status` shows what the stream stored for the producer.
    let status = walbox("status", &args);
    let status_text = String::from_utf8_lossy(&status.stdout);
    assert!(
        status.status.success()
            && status_text.contains(&format!("stored publishing id {ahead} (commit FF/0)")),
        "walbox status: {status_text}{}",
        String::from_utf8_lossy(&status.stderr)
    );

    let started = Instant::now();
    let output = Command::new(env!("CARGO_BIN_EXE_walbox"))
        .arg("run")
        .args(&args)
        .args(["--metrics-addr", "none"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    println!(
        "walbox exited {} after {:?}",
        output.status,
        started.elapsed()
    );
    delete_stream(&stream).await;
    drop_slot(&slot).await;
    assert_eq!(
        output.status.code(),
        Some(1),
        "a definite error; stderr:\n{stderr}"
    );
    assert!(
        stderr.contains("beyond the end of this PostgreSQL server's WAL")
            && stderr.contains("FF/0"),
        "stderr:\n{stderr}"
    );
}

/// The pause before the next kill, pseudo-random but repeatable from `seed`: 0.3 to 2.2 s.
fn next_kill_pause(seed: &mut u64) -> Duration {
    *seed = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    Duration::from_millis(300 + (*seed >> 33) % 1900)
}

/// The end of a kill test: one more second of load, the writers stopped and what they
/// committed collected; once walbox confirmed all of it, walbox is stopped (SIGTERM) and its
/// exit status returned beside the committed ids.
async fn stop_writers_and_walbox(
    stop: &AtomicBool,
    writers: Vec<tokio::task::JoinHandle<Vec<String>>>,
    slot: &str,
    log: &std::path::Path,
    mut relay: Child,
) -> (Vec<String>, std::process::ExitStatus) {
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, Ordering::Relaxed);
    let mut committed = Vec::new();
    for writer in writers {
        committed.extend(writer.await.unwrap());
    }
    wait_caught_up(slot, log).await;
    let _ = Command::new("kill").arg(relay.id().to_string()).status();
    let status = relay.wait().unwrap();
    (committed, status)
}

/// Wait until walbox confirmed everything written so far.
async fn wait_caught_up(slot: &str, log: &std::path::Path) {
    let end = {
        let admin = connect(&primary_url("postgres")).await;
        let row = admin
            .query_one("SELECT pg_current_wal_lsn()::text", &[])
            .await
            .unwrap();
        row.get::<_, String>(0).parse::<Lsn>().unwrap()
    };
    let deadline = Instant::now() + Duration::from_secs(90);
    while slot_confirmed(slot).await.is_none_or(|lsn| lsn < end) {
        assert!(
            Instant::now() < deadline,
            "walbox did not confirm up to {end}; log:\n{}",
            std::fs::read_to_string(log).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs scripts/trixie-servers.sh (run by scripts/test.sh)"]
async fn super_stream_keeps_each_key_in_order_in_one_partition() {
    fresh_postgres().await;
    let slot = name("super");
    let super_stream = name("super");
    let mut args = walbox_args(&slot, &super_stream);
    let at = args.iter().position(|arg| arg == "--stream").unwrap();
    args[at] = "--super-stream".into();
    args.extend(["--super-stream-partitions".into(), "3".into()]);
    walbox_setup(&args);
    let log = fresh_log("stream-super.log");

    let stop = Arc::new(AtomicBool::new(false));
    let writers = start_writers(3, Arc::clone(&stop));
    let mut relay = spawn_run(&args, &log);
    let kills = rounds();
    let mut seed = u64::from(std::process::id()) ^ 0x5eed;
    for _ in 0..kills {
        tokio::time::sleep(next_kill_pause(&mut seed)).await;
        relay.kill().unwrap();
        relay.wait().unwrap();
        relay = spawn_run(&args, &log);
    }
    let (committed, status) = stop_writers_and_walbox(&stop, writers, &slot, &log, relay).await;

    let mut in_stream = 0;
    let mut duplicates = 0;
    let mut out_of_order = 0;
    let mut distinct = HashSet::new();
    // key → the partition it was seen in.
    let mut home: std::collections::HashMap<String, usize> = std::collections::HashMap::new();
    let mut split_keys = 0;
    let mut per_partition = Vec::new();
    for partition in 0..3 {
        // How many each partition holds is not known: read until nothing comes for 5 s.
        let stream = format!("{super_stream}-{partition}");
        let events = read_events(&stream, 0, Duration::from_secs(5)).await;
        per_partition.push(events.len());
        in_stream += events.len();
        let mut last: std::collections::HashMap<&str, Lsn> = std::collections::HashMap::new();
        for event in &events {
            if !distinct.insert(event.id.clone()) {
                duplicates += 1;
            }
            if *home.entry(event.aggregate.clone()).or_insert(partition) != partition {
                split_keys += 1;
            }
            let previous = last.insert(event.aggregate.as_str(), event.commit);
            if previous.is_some_and(|previous| previous > event.commit) {
                out_of_order += 1;
            }
        }
    }
    let missing = committed
        .iter()
        .filter(|id| !distinct.contains(*id))
        .count();
    println!(
        "super stream: kills={kills} partitions={per_partition:?} keys={} committed={} \
         in_stream={in_stream} duplicates={duplicates} missing={missing} \
         keys_in_two_partitions={split_keys} out_of_order_per_key={out_of_order} \
         republished_and_dropped={}",
        home.len(),
        committed.len(),
        republished(&std::fs::read_to_string(&log).unwrap_or_default())
    );

    if let Some(client) = stream_client(1).await {
        let _ = client.delete_super_stream(&super_stream).await;
        let _ = client.close().await;
    }
    drop_slot(&slot).await;
    assert!(status.success(), "walbox exited {status} on SIGTERM");
    assert_eq!(duplicates, 0, "duplicates in the partitions");
    assert_eq!(missing, 0, "committed events missing from the partitions");
    assert_eq!(in_stream, committed.len());
    assert_eq!(split_keys, 0, "each key lives in one partition");
    assert_eq!(out_of_order, 0, "each key's events are in commit order");
    assert!(
        per_partition.iter().filter(|&&count| count > 0).count() > 1,
        "the keys spread over the partitions: {per_partition:?}"
    );
}

/// The events walbox's log says it republished and the broker dropped as duplicates.
fn republished(log: &str) -> u64 {
    log.lines()
        .filter(|line| line.contains("the broker drops them as duplicates"))
        .filter_map(|line| {
            let start = line.find("\"republished\":")? + "\"republished\":".len();
            let digits: String = line[start..]
                .chars()
                .take_while(char::is_ascii_digit)
                .collect();
            digits.parse::<u64>().ok()
        })
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs scripts/trixie-servers.sh (run by scripts/test.sh)"]
async fn exactly_once_across_a_failover_to_a_synchronized_standby() {
    fresh_postgres().await;
    let slot = name("failover");
    let stream = name("failover");
    let mut args = walbox_args(&slot, &stream);
    args[1] = multi_host_url(DATABASE);
    walbox_setup(&args);
    let log = fresh_log("stream-failover.log");
    let stop = Arc::new(AtomicBool::new(false));
    let writers = start_writers_at(&multi_host_url(DATABASE), 3, Arc::clone(&stop));
    let mut relay = spawn_run(&args, &log);
    tokio::time::sleep(Duration::from_secs(3)).await;
    servers(&["pg-wait-synced", &slot, "120"]);
    tokio::time::sleep(Duration::from_secs(2)).await;
    servers(&["pg-stop", "primary"]);
    servers(&["pg-promote"]);
    tokio::time::sleep(Duration::from_secs(6)).await;
    stop.store(true, Ordering::Relaxed);
    let mut acknowledged = Vec::new();
    for writer in writers {
        acknowledged.extend(writer.await.unwrap());
    }
    // What must be in the stream: the final primary's table.
    let db = connect(&multi_host_url(DATABASE)).await;
    let in_table: Vec<String> = db
        .query("SELECT id::text FROM outbox", &[])
        .await
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect();
    let end: Lsn = db
        .query_one("SELECT pg_current_wal_lsn()::text", &[])
        .await
        .unwrap()
        .get::<_, String>(0)
        .parse()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(90);
    while confirmed_on(&db, &slot).await.is_none_or(|lsn| lsn < end) {
        assert!(
            Instant::now() < deadline,
            "walbox did not confirm up to {end} on the new primary; log:\n{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let _ = Command::new("kill").arg(relay.id().to_string()).status();
    let status = relay.wait().unwrap();
    let seen = read_stream(&stream, in_table.len()).await;
    let mut distinct = HashSet::new();
    let duplicates = seen.iter().filter(|(id, _)| !distinct.insert(id)).count();
    let missing = in_table.iter().filter(|id| !distinct.contains(*id)).count();
    let out_of_order = seen.windows(2).filter(|pair| pair[1].1 < pair[0].1).count();
    let table: HashSet<&String> = in_table.iter().collect();
    let not_in_table = acknowledged.iter().filter(|id| !table.contains(id)).count();
    println!(
        "stream failover: in_table={} in_stream={} duplicates={duplicates} missing={missing} \
         out_of_order={out_of_order} acknowledged_not_on_new_primary={not_in_table} \
         republished_and_dropped={}",
        in_table.len(),
        seen.len(),
        republished(&std::fs::read_to_string(&log).unwrap_or_default())
    );
    let _ = db
        .execute(
            "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots \
             WHERE slot_name = $1",
            &[&slot],
        )
        .await;
    delete_stream(&stream).await;
    assert!(status.success(), "walbox exited {status} on SIGTERM");
    assert_eq!(duplicates, 0, "duplicates in the stream");
    assert_eq!(
        missing, 0,
        "rows of the new primary missing from the stream"
    );
    assert_eq!(
        seen.len(),
        in_table.len(),
        "the stream holds the new primary's table"
    );
    assert_eq!(out_of_order, 0, "the stream is in commit order");
}

async fn confirmed_on(db: &tokio_postgres::Client, slot: &str) -> Option<Lsn> {
    db.query_opt(
        "SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = $1",
        &[&slot],
    )
    .await
    .ok()
    .flatten()
    .and_then(|row| row.get::<_, Option<String>>(0))
    .and_then(|text| text.parse::<Lsn>().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs scripts/trixie-servers.sh (run by scripts/test.sh)"]
async fn an_event_too_large_for_a_frame_is_poison_and_nothing_after_it_is_lost() {
    fresh_postgres().await;
    let slot = name("large");
    let stream = name("large");
    let args = walbox_args(&slot, &stream);
    walbox_setup(&args);
    let db = connect(&primary_url(DATABASE)).await;
    let insert = |payload: String| {
        format!(
            "INSERT INTO outbox (aggregate_type, aggregate_id, event_type, payload) \
             VALUES ('stream', 'k', 'e', '{payload}'::jsonb)"
        )
    };
    db.batch_execute(&insert("{\"n\": 1}".into()))
        .await
        .unwrap();
    // Above the 1 MiB frame the stream connection allows.
    let large = format!("{{\"blob\": \"{}\"}}", "x".repeat(1_100_000));
    db.batch_execute(&insert(large)).await.unwrap();
    db.batch_execute(&insert("{\"n\": 3}".into()))
        .await
        .unwrap();
    let log = fresh_log("stream-large.log");
    let mut relay_args = args.clone();
    relay_args.extend(["--poison-after".into(), "1".into()]);
    let mut relay = spawn_run(&relay_args, &log);
    let deadline = Instant::now() + Duration::from_secs(60);
    let text = loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if text.contains("halted on a poison event") || Instant::now() > deadline {
            break text;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    relay.kill().unwrap();
    relay.wait().unwrap();
    let seen = read_stream(&stream, 1).await;
    println!("stream too large: in_stream={}", seen.len());
    delete_stream(&stream).await;
    drop_slot(&slot).await;
    assert!(
        text.contains("halted on a poison event") && text.contains("-byte limit"),
        "log:\n{text}"
    );
    // The first event went out; the refused one did not, and nothing after it either.
    assert_eq!(seen.len(), 1, "{seen:?}");
}

/// Writers committing transactions of rows with a relayed logical message among them (and one
/// of prefix `skip`, not relayed), and every third round a non-transactional relayed message;
/// returns the keys of what was committed: row ids and the messages' `key`s.
fn start_message_writers(
    writers: usize,
    stop: Arc<AtomicBool>,
) -> Vec<tokio::task::JoinHandle<Vec<String>>> {
    (0..writers)
        .map(|writer| {
            let stop = Arc::clone(&stop);
            tokio::spawn(async move {
                let mut db = connect(&primary_url(DATABASE)).await;
                let mut committed = Vec::new();
                let mut round = 0i32;
                while !stop.load(Ordering::Relaxed) {
                    let size = 1 + (round * 5 + writer as i32 * 3) % 4;
                    let key = format!("w{writer}-r{round}");
                    let transaction = db.transaction().await.unwrap();
                    let rows = transaction
                        .query(
                            "INSERT INTO outbox (aggregate_type, aggregate_id, event_type, \
                             payload) SELECT 'stream', 'k', 'e', jsonb_build_object('n', n) \
                             FROM generate_series(1, $1) n RETURNING id::text",
                            &[&size],
                        )
                        .await
                        .unwrap();
                    for (prefix, key) in [("ev", key.clone()), ("skip", format!("{key}-skip"))] {
                        transaction
                            .execute(
                                "SELECT pg_logical_emit_message(true, $1, \
                                 jsonb_build_object('key', $2::text)::text)",
                                &[&prefix, &key],
                            )
                            .await
                            .unwrap();
                    }
                    transaction.commit().await.unwrap();
                    committed.extend(rows.iter().map(|row| row.get::<_, String>(0)));
                    committed.push(key.clone());
                    if round % 3 == 0 {
                        let lone = format!("{key}-lone");
                        db.execute(
                            "SELECT pg_logical_emit_message(false, 'ev', \
                             jsonb_build_object('key', $1::text)::text)",
                            &[&lone],
                        )
                        .await
                        .unwrap();
                        committed.push(lone);
                    }
                    round += 1;
                    tokio::time::sleep(Duration::from_millis(15)).await;
                }
                committed
            })
        })
        .collect()
}

/// Every message of `stream` as (key, x-commit-lsn): a logical message's `key` from its body,
/// a row's message id; read as [`read_events`] does.
async fn read_keys(stream: &str, expected: usize) -> Vec<(String, Lsn)> {
    let environment = Environment::builder()
        .host("127.0.0.1")
        .port(stream_port(1))
        .build()
        .await
        .expect("stream environment");
    let mut consumer = environment
        .consumer()
        .offset(OffsetSpecification::First)
        .build(stream)
        .await
        .expect("a consumer");
    let key = |message: &Message| {
        let body: Option<serde_json::Value> = message
            .data()
            .and_then(|data| serde_json::from_slice(data).ok());
        match body
            .as_ref()
            .and_then(|body| body.get("key"))
            .and_then(|k| k.as_str())
        {
            Some(key) => key.to_owned(),
            None => message_id(message),
        }
    };
    let mut seen = Vec::new();
    let mut wait = Duration::from_secs(10);
    loop {
        match tokio::time::timeout(wait, consumer.next()).await {
            Ok(Some(Ok(delivery))) => {
                let message = delivery.message();
                seen.push((key(message), commit_lsn(message)));
            }
            Ok(Some(Err(error))) => panic!("consuming the stream: {error:?}"),
            Ok(None) | Err(_) => break,
        }
        if seen.len() >= expected {
            // Anything beyond what was expected would be a duplicate: look a little longer.
            wait = Duration::from_secs(3);
        }
    }
    let _ = consumer.handle().close().await;
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs scripts/trixie-servers.sh (run by scripts/test.sh)"]
async fn logical_messages_exactly_once_across_kills() {
    fresh_postgres().await;
    let slot = name("messages");
    let stream = name("messages");
    let mut args = walbox_args(&slot, &stream);
    args.extend(["--messages".into(), "ev".into()]);
    walbox_setup(&args);
    let log = fresh_log("stream-messages.log");

    let stop = Arc::new(AtomicBool::new(false));
    let writers = start_message_writers(3, Arc::clone(&stop));
    let mut relay = spawn_run(&args, &log);
    let kills = rounds();
    let mut seed = u64::from(std::process::id()) ^ 0x3e55;
    for _ in 0..kills {
        tokio::time::sleep(next_kill_pause(&mut seed)).await;
        relay.kill().unwrap();
        relay.wait().unwrap();
        relay = spawn_run(&args, &log);
    }
    let (committed, status) = stop_writers_and_walbox(&stop, writers, &slot, &log, relay).await;

    let seen = read_keys(&stream, committed.len()).await;
    let committed_set: HashSet<&String> = committed.iter().collect();
    let mut distinct = HashSet::new();
    let duplicates = seen.iter().filter(|(key, _)| !distinct.insert(key)).count();
    let missing = committed_set
        .iter()
        .filter(|key| !distinct.contains(**key))
        .count();
    let skipped_prefix = seen
        .iter()
        .filter(|(key, _)| key.ends_with("-skip"))
        .count();
    let messages = seen.iter().filter(|(key, _)| key.starts_with('w')).count();
    let lone = seen
        .iter()
        .filter(|(key, _)| key.ends_with("-lone"))
        .count();
    let out_of_order = seen.windows(2).filter(|pair| pair[1].1 < pair[0].1).count();
    // Debezium's pitfall met: a non-transactional message whose LSN (its position's + 8, its
    // x-commit-lsn being its position's) is the commit LSN of the event after it (both must be
    // in the stream, each once).
    let shared_lsn = seen
        .windows(2)
        .filter(|pair| pair[0].0.ends_with("-lone") && pair[0].1.as_u64() + 8 == pair[1].1.as_u64())
        .count();
    println!(
        "stream with logical messages: kills={kills} committed={} in_stream={} messages={messages} \
         (non-transactional {lone}, {shared_lsn} with the next commit's LSN) \
         duplicates={duplicates} missing={missing} skipped_prefix_seen={skipped_prefix} \
         out_of_order={out_of_order} republished_and_dropped={}",
        committed.len(),
        seen.len(),
        republished(&std::fs::read_to_string(&log).unwrap_or_default())
    );

    delete_stream(&stream).await;
    drop_slot(&slot).await;
    assert!(status.success(), "walbox exited {status} on SIGTERM");
    assert_eq!(duplicates, 0, "duplicates in the stream");
    assert_eq!(missing, 0, "committed events missing from the stream");
    assert_eq!(skipped_prefix, 0, "a prefix that is not relayed");
    assert_eq!(
        seen.len(),
        committed.len(),
        "the stream holds what was committed"
    );
    assert_eq!(out_of_order, 0, "the stream is in WAL order");
    assert!(
        lone > 0 && messages > lone,
        "both kinds of message were relayed"
    );
}

/// `--stream-url` listing the nodes in this order.
fn stream_urls_of(nodes: &[u16]) -> String {
    nodes
        .iter()
        .map(|node| {
            format!(
                "rabbitmq-stream://guest:guest@127.0.0.1:{}/%2f",
                stream_port(*node)
            )
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// A super stream of `partitions` partitions whose leaders are spread over the nodes
/// (`balanced`): one node's failure then hits one partition, not all.
async fn create_balanced_super_stream(super_stream: &str, partitions: usize) {
    let client = stream_client(1).await.expect("stream node 1");
    let keys: Vec<String> = (0..partitions).map(|n| n.to_string()).collect();
    let names = keys.iter().map(|k| format!("{super_stream}-{k}")).collect();
    let arguments = [("queue-leader-locator".to_owned(), "balanced".to_owned())].into();
    let response = client
        .create_super_stream(super_stream, names, keys, arguments)
        .await
        .unwrap();
    let _ = client.close().await;
    assert!(
        response.is_ok(),
        "create super stream: {:?}",
        response.code()
    );
}

/// Issue #19 item 8. A partition's leader hangs (SIGSTOP) while walbox publishes: what walbox
/// sent to that partition is never stored, while the other partitions store later events.
/// walbox is killed, the hung node killed and started again, and walbox restarts with another
/// `--partition-key`: the events that were never stored are now routed to partitions whose
/// producers stored higher ids. Every committed event must be in the partitions (duplicates
/// across the change are allowed: the change starts a new producer identity).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs scripts/trixie-servers.sh (run by scripts/test.sh)"]
async fn a_routing_change_after_a_partition_stored_nothing_loses_nothing() {
    fresh_postgres().await;
    let slot = name("rerouted");
    let super_stream = name("rerouted");
    create_balanced_super_stream(&super_stream, 3).await;
    let mut leaders = Vec::new();
    for partition in 0..3 {
        let stream = format!("{super_stream}-{partition}");
        leaders.push(leader(&stream).await.expect("a partition leader"));
    }
    // The hung node leads partition 0 and no other partition all alone; walbox connects
    // through another node, so the others keep storing.
    let hung = leaders[0];
    assert!(
        leaders.iter().any(|&node| node != hung),
        "leaders: {leaders:?}"
    );
    let mut nodes: Vec<u16> = (1..=3).filter(|&node| node != hung).collect();
    nodes.push(hung);
    let mut args = walbox_args(&slot, &super_stream);
    let at = args.iter().position(|arg| arg == "--stream").unwrap();
    args[at] = "--super-stream".into();
    let at = args.iter().position(|arg| arg == "--stream-url").unwrap();
    args[at + 1] = stream_urls_of(&nodes);
    walbox_setup(&args);
    let log = fresh_log("stream-rerouted.log");

    let stop = Arc::new(AtomicBool::new(false));
    let writers = start_writers(3, Arc::clone(&stop));
    let mut relay = spawn_run(&args, &log);
    tokio::time::sleep(Duration::from_secs(4)).await;
    servers(&["rabbit-freeze", &hung.to_string()]);
    tokio::time::sleep(Duration::from_secs(2)).await;
    relay.kill().unwrap();
    relay.wait().unwrap();
    servers(&["rabbit-kill", &hung.to_string()]);
    servers(&["rabbit-start", &hung.to_string()]);
    let partition0 = format!("{super_stream}-0");
    let deadline = Instant::now() + Duration::from_secs(90);
    while leader(&partition0).await.is_none() {
        assert!(Instant::now() < deadline, "partition 0 has no leader");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // The routing change: every key now hashes differently.
    args.extend([
        "--partition-key".into(),
        "{aggregate_type}:{aggregate_id}".into(),
    ]);
    let relay = spawn_run(&args, &log);
    let (committed, status) = stop_writers_and_walbox(&stop, writers, &slot, &log, relay).await;

    let mut seen = Vec::new();
    let mut per_partition = Vec::new();
    for partition in 0..3 {
        let stream = format!("{super_stream}-{partition}");
        let events = read_events(&stream, 0, Duration::from_secs(5)).await;
        per_partition.push(events.len());
        seen.extend(events.into_iter().map(|event| event.id));
    }
    let mut distinct = HashSet::new();
    let duplicates = seen.iter().filter(|id| !distinct.insert(*id)).count();
    let committed_set: HashSet<&String> = committed.iter().collect();
    let missing = committed_set
        .iter()
        .filter(|id| !distinct.contains(**id))
        .count();
    let unknown = distinct
        .iter()
        .filter(|id| !committed_set.contains(*id))
        .count();
    let log_text = std::fs::read_to_string(&log).unwrap_or_default();
    println!(
        "routing change: hung node {hung} (leaders {leaders:?}) committed={} in_partitions={} \
         {per_partition:?} distinct={} duplicates={duplicates} missing={missing} \
         unknown={unknown} republished_and_dropped={}",
        committed.len(),
        seen.len(),
        distinct.len(),
        republished(&log_text)
    );

    if let Some(client) = stream_client(1).await {
        let _ = client.delete_super_stream(&super_stream).await;
        let _ = client.close().await;
    }
    drop_slot(&slot).await;
    assert!(status.success(), "walbox exited {status} on SIGTERM");
    assert_eq!(missing, 0, "committed events missing from the partitions");
    assert_eq!(
        unknown, 0,
        "events in the partitions that were never committed"
    );
    assert!(
        log_text.contains("the super stream's routing changed"),
        "walbox said nothing of the routing change:\n{log_text}"
    );
}

/// The certificates scripts/trixie-servers.sh made at `start` (its TLS_DIR).
fn tls_file(file: &str) -> String {
    let root = std::env::var("WALBOX_HA_ROOT").unwrap_or_else(|_| "/var/lib/walbox-ha".into());
    format!("{root}/rootfs/srv/walbox-ha/tls/{file}")
}

/// The nodes' TLS stream listeners at `host` (127.0.0.1: the certificate names it; 127.0.0.2:
/// the same listeners, a name the certificate lacks).
fn stream_tls_urls(host: &str) -> String {
    (1..=3)
        .map(|node| {
            format!(
                "rabbitmq-stream+tls://guest:guest@{host}:{}/%2f",
                stream_port(node) + 3
            )
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// `walbox_args` over TLS at `host`, trusting `ca` and presenting the client certificate when
/// `client_cert`.
fn tls_args(slot: &str, stream: &str, host: &str, ca: &str, client_cert: bool) -> Vec<String> {
    let mut args = walbox_args(slot, stream);
    let url = args.iter().position(|arg| arg == "--stream-url").unwrap() + 1;
    args[url] = stream_tls_urls(host);
    args.extend(["--amqp-ca-file".into(), tls_file(ca)]);
    if client_cert {
        args.extend([
            "--stream-client-cert-file".into(),
            tls_file("client.pem"),
            "--stream-client-key-file".into(),
            tls_file("client.key"),
        ]);
    }
    args
}

/// Over TLS, with kills: every committed event exactly once. The URLs name 127.0.0.1 and the
/// nodes advertise `localhost`, so every session moves to the leader by a second name, which
/// its certificate must carry (a failed move would be logged and publish through the first
/// node: the log must not show one).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs scripts/trixie-servers.sh (run by scripts/test.sh)"]
async fn exactly_once_over_tls() {
    fresh_postgres().await;
    let slot = name("tls");
    let stream = name("tls");
    let args = tls_args(&slot, &stream, "127.0.0.1", "ca.pem", true);
    walbox_setup(&args);
    let log = fresh_log("stream-tls.log");
    let stop = Arc::new(AtomicBool::new(false));
    let writers = start_writers(2, Arc::clone(&stop));
    let mut relay = spawn_run(&args, &log);
    let kills = 2;
    let mut seed = u64::from(std::process::id()) ^ 0x7115;
    for _ in 0..kills {
        tokio::time::sleep(next_kill_pause(&mut seed)).await;
        relay.kill().unwrap();
        relay.wait().unwrap();
        relay = spawn_run(&args, &log);
    }
    let (committed, status) = stop_writers_and_walbox(&stop, writers, &slot, &log, relay).await;
    let seen = read_stream(&stream, committed.len()).await;
    let mut distinct = HashSet::new();
    let duplicates = seen.iter().filter(|(id, _)| !distinct.insert(id)).count();
    let missing = committed.iter().filter(|id| !distinct.contains(id)).count();
    let log_text = std::fs::read_to_string(&log).unwrap_or_default();
    let leader_missed = log_text.matches("cannot reach the stream's leader").count();
    println!(
        "stream over TLS: kills={kills} committed={} in_stream={} duplicates={duplicates} \
         missing={missing} leader_moves_refused={leader_missed}",
        committed.len(),
        seen.len()
    );
    delete_stream(&stream).await;
    drop_slot(&slot).await;
    assert!(status.success(), "walbox exited {status} on SIGTERM");
    assert!(!committed.is_empty());
    assert_eq!(duplicates, 0, "duplicates in the stream");
    assert_eq!(missing, 0, "committed events missing from the stream");
    assert_eq!(seen.len(), committed.len());
    assert_eq!(leader_missed, 0, "log:\n{log_text}");
}

/// `walbox run` with `args` must stop by itself within 60 s: its exit code and log.
fn run_to_its_end(args: &[String], file: &str) -> (Option<i32>, String) {
    let log = fresh_log(file);
    let mut relay = spawn_run(args, &log);
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = relay.try_wait().unwrap() {
            break Some(status);
        }
        if Instant::now() > deadline {
            relay.kill().unwrap();
            relay.wait().unwrap();
            break None;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    (status.and_then(|status| status.code()), text)
}

/// What no retry can heal stops walbox with exit 1 and says why: a CA that did not sign the
/// broker's certificate, a certificate that does not name the host connected to, and no
/// client certificate for a listener that requires one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs scripts/trixie-servers.sh (run by scripts/test.sh)"]
async fn tls_refusals_stop_walbox() {
    fresh_postgres().await;
    let slot = name("tlsrefused");
    let stream = name("tlsrefused");
    walbox_setup(&tls_args(&slot, &stream, "127.0.0.1", "ca.pem", true));
    let cases = [
        (
            "wrong CA",
            "127.0.0.1",
            "other-ca.pem",
            true,
            "UnknownIssuer",
        ),
        (
            "host not named",
            "127.0.0.2",
            "ca.pem",
            true,
            "NotValidForName",
        ),
        (
            "no client certificate",
            "127.0.0.1",
            "ca.pem",
            false,
            "client certificate",
        ),
    ];
    let mut outcomes = Vec::new();
    for (case, host, ca, client_cert, expected) in cases {
        let args = tls_args(&slot, &stream, host, ca, client_cert);
        let (code, log) = run_to_its_end(&args, "stream-tls-refused.log");
        let stopped = log
            .lines()
            .find(|line| line.contains("walbox stopped"))
            .unwrap_or("")
            .to_owned();
        println!("stream TLS, {case}: exit {code:?}: {stopped}");
        outcomes.push((case, code, stopped, expected));
    }
    delete_stream(&stream).await;
    drop_slot(&slot).await;
    for (case, code, stopped, expected) in outcomes {
        assert_eq!(code, Some(1), "{case}: {stopped}");
        assert!(stopped.contains(expected), "{case}: {stopped}");
    }
}
