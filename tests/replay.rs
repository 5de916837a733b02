//! `walbox replay` and the replay window, end to end on the real servers: what a replay
//! republishes, that the live relay and its slot are left alone, the window's bounds, and that
//! a replay leaves no slot behind.

mod common;

use std::process::{Command, Output, Stdio};
use std::str::FromStr;
use std::time::{Duration, Instant};

use common::*;
use lapin::message::Delivery;
use walbox::lsn::Lsn;

const WAIT: Duration = Duration::from_secs(30);

fn bookmark_name(env: &TestEnv) -> String {
    format!("{}_bookmark", env.name)
}

async fn slot_position(env: &TestEnv, slot: &str) -> Option<Lsn> {
    let row = env
        .db
        .query_opt(
            "SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = $1",
            &[&slot],
        )
        .await
        .unwrap()?;
    row.get::<_, Option<&str>>(0)
        .map(|text| Lsn::from_str(text).unwrap())
}

async fn wait_bookmark(env: &TestEnv) -> Lsn {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(position) = slot_position(env, &bookmark_name(env)).await {
            return position;
        }
        assert!(Instant::now() < deadline, "no bookmark slot was created");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The slots named after this test's slot, besides the live one and the bookmark.
async fn replay_slots(env: &TestEnv) -> Vec<String> {
    env.db
        .query(
            "SELECT slot_name::text FROM pg_replication_slots WHERE slot_name LIKE $1",
            &[&format!("{}\\_replay\\_%", env.name.replace('_', "\\_"))],
        )
        .await
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect()
}

fn replay(env: &TestEnv, extra: &[&str]) -> Output {
    let output = env.walbox("replay", &[&["--log-format", "json"], extra].concat());
    eprintln!(
        "walbox replay {extra:?}: {:?}\nstdout: {}\nstderr: {}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

/// Commit `transactions` transactions of `per_transaction` events each.
async fn commit_events(env: &TestEnv, transactions: usize, per_transaction: i32) {
    for _ in 0..transactions {
        env.db
            .execute(
                "INSERT INTO outbox (aggregate_type, aggregate_id, event_type, payload) \
                 SELECT 'order', 'o-' || g, 'created', jsonb_build_object('n', g) \
                 FROM generate_series(1, $1) g",
                &[&per_transaction],
            )
            .await
            .unwrap();
    }
}

fn is_replay(delivery: &Delivery) -> bool {
    header_text(delivery, "x-replay").as_deref() == Some("Boolean(true)")
}

fn ids_and_commits(deliveries: &[&Delivery]) -> Vec<(String, Lsn)> {
    deliveries
        .iter()
        .map(|delivery| (message_id(delivery), commit_lsn(delivery)))
        .collect()
}

/// The distinct commit LSNs, in order of first appearance.
fn transactions(deliveries: &[(String, Lsn)]) -> Vec<Lsn> {
    let mut commits: Vec<Lsn> = Vec::new();
    for (_, commit) in deliveries {
        if commits.last() != Some(commit) {
            commits.push(*commit);
        }
    }
    commits
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replays_exactly_the_events_committed_in_the_range() {
    let mut env = TestEnv::new("replay").await;
    let mut consumer = env.queue("all", "#").await;
    let run = env.spawn_run(&["--replay-window", "1GB"]);
    env.wait_slot_active(WAIT).await;
    wait_bookmark(&env).await;

    commit_events(&env, 10, 3).await;
    let live: Vec<Delivery> = receive(&mut consumer, 30, WAIT).await;
    assert_eq!(live.len(), 30, "live relay; log:\n{}", env.run_log(run));
    assert!(live.iter().all(|delivery| !is_replay(delivery)));
    let live = ids_and_commits(&live.iter().collect::<Vec<_>>());
    let commits = transactions(&live);
    assert_eq!(commits.len(), 10);
    let live_slot = env.slot_confirmed().await.unwrap();

    // From the fourth transaction on, while new events keep committing on the live side.
    let from = commits[3];
    let concurrent = {
        let url = env.postgres_url();
        tokio::spawn(async move {
            let db = pg_connect(&url).await;
            for n in 0..20 {
                db.execute(
                    "INSERT INTO outbox (aggregate_type, aggregate_id, event_type, payload) \
                     VALUES ('order', 'late', 'created', jsonb_build_object('late', $1::int))",
                    &[&n],
                )
                .await
                .unwrap();
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };
    let output = replay(&env, &["--from-lsn", &from.to_string()]);
    concurrent.await.unwrap();
    assert!(output.status.success());
    let deliveries = receive(&mut consumer, usize::MAX, Duration::from_secs(5)).await;
    let (replayed, late): (Vec<&Delivery>, Vec<&Delivery>) =
        deliveries.iter().partition(|delivery| is_replay(delivery));
    let replayed = ids_and_commits(&replayed);
    // Everything from the fourth transaction on, in the same order, and nothing committed
    // after the replay started (it may include some of the concurrent events, which then also
    // came live, committed before it began).
    let expected: Vec<(String, Lsn)> = live
        .iter()
        .filter(|(_, commit)| *commit >= from)
        .cloned()
        .collect();
    assert_eq!(&replayed[..expected.len()], &expected[..]);
    let late = ids_and_commits(&late);
    assert_eq!(late.len(), 20, "the live relay went on during the replay");
    assert_eq!(
        &replayed[expected.len()..],
        &late[..replayed.len() - expected.len()],
        "replayed concurrent events are the earliest live ones, in order"
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        stdout.contains(&format!("replayed {} events", replayed.len())),
        "summary: {stdout}"
    );
    // The live slot moved only forward and is still held by the live relay; the replay's copy
    // is gone.
    assert!(env.slot_confirmed().await.unwrap() >= live_slot);
    env.wait_slot_active(WAIT).await;
    assert!(replay_slots(&env).await.is_empty());

    // Bounded: the fourth to the sixth transaction, inclusive.
    let output = replay(
        &env,
        &[
            "--from-lsn",
            &commits[3].to_string(),
            "--to-lsn",
            &commits[5].to_string(),
        ],
    );
    assert!(output.status.success());
    let bounded: Vec<Delivery> = receive(&mut consumer, usize::MAX, Duration::from_secs(3)).await;
    let bounded = ids_and_commits(&bounded.iter().collect::<Vec<_>>());
    assert_eq!(transactions(&bounded), commits[3..=5].to_vec());
    assert_eq!(bounded.len(), 9);

    // A dry run counts the same and publishes nothing.
    let output = replay(
        &env,
        &[
            "--from-lsn",
            &commits[3].to_string(),
            "--to-lsn",
            &commits[5].to_string(),
            "--dry-run",
        ],
    );
    assert!(output.status.success());
    assert!(
        String::from_utf8_lossy(&output.stdout).contains("would replay 9 events in 3 transactions")
    );
    assert!(
        receive_any(&mut consumer, Duration::from_secs(2))
            .await
            .is_empty()
    );
    assert!(replay_slots(&env).await.is_empty());
}

#[tokio::test]
async fn an_lsn_outside_the_window_is_refused_with_the_oldest_replayable_lsn() {
    let mut env = TestEnv::new("replayold").await;
    assert!(env.walbox("setup", &[]).status.success());
    let output = replay(&env, &["--from-lsn", "0/1"]);
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("--replay-window"));

    let _run = env.spawn_run(&["--replay-window", "24h"]);
    let oldest = wait_bookmark(&env).await;
    let output = replay(&env, &["--from-lsn", "0/1"]);
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains(&format!("the oldest replayable LSN is {oldest}")),
        "{stderr}"
    );
    let status = env.walbox("status", &["--json"]);
    let status: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    assert_eq!(status["replay_window"]["oldest_lsn"], oldest.to_string());

    // Bad LSN text and a range that ends before it starts are usage errors.
    for bad in [
        &["--from-lsn", "yesterday"][..],
        &["--from-lsn", "0/20", "--to-lsn", "0/10"],
    ] {
        assert_eq!(replay(&env, bad).status.code(), Some(2), "{bad:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bookmark_trails_the_live_slot_by_the_window() {
    let mut env = TestEnv::new("window").await;
    let mut consumer = env.queue_with("all", "#", true).await;
    let window: u64 = 64 * 1024;
    let run = env.spawn_run(&["--replay-window", "64kB"]);
    env.wait_slot_active(WAIT).await;
    let created_at = wait_bookmark(&env).await;
    // About 1 MB of WAL: many windows.
    commit_events(&env, 20, 50).await;
    assert_eq!(
        receive_unacked(&mut consumer, 1000, WAIT).await.len(),
        1000,
        "log:\n{}",
        env.run_log(run)
    );
    let end = env.current_wal_lsn().await;
    env.wait_confirmed(end, WAIT).await;
    // The keeper moves the bookmark every 2 s.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let live = env.slot_confirmed().await.unwrap();
    let bookmark = slot_position(&env, &bookmark_name(&env)).await.unwrap();
    let trail = live.as_u64() - bookmark.as_u64();
    eprintln!("live {live}, bookmark {bookmark}: trails by {trail} bytes (window {window})");
    assert!(bookmark > created_at, "the bookmark moved");
    assert!(
        (window..window + 16 * 1024).contains(&trail),
        "the bookmark trails by about the window: {trail} bytes; log:\n{}",
        env.run_log(run)
    );
    // What lies inside the window can be replayed (dry run); what lies before it cannot.
    let inside = Lsn(bookmark.as_u64() + 1);
    assert!(
        replay(&env, &["--from-lsn", &inside.to_string(), "--dry-run"])
            .status
            .success()
    );
    let before = Lsn(bookmark.as_u64() - 1);
    assert_eq!(
        replay(&env, &["--from-lsn", &before.to_string(), "--dry-run"])
            .status
            .code(),
        Some(2)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_or_killed_replay_says_where_to_resume_and_leaves_no_slot() {
    let mut env = TestEnv::new("replaykill").await;
    // No queue is bound: the live relay holds its events, but the window is kept regardless.
    let run = env.spawn_run(&["--replay-window", "1GB"]);
    env.wait_slot_active(WAIT).await;
    let from = wait_bookmark(&env).await;
    let before_insert = env.current_wal_lsn().await;
    env.db
        .execute(
            "INSERT INTO outbox (aggregate_type, aggregate_id, event_type, payload) \
             SELECT 'order', 'o-' || g, 'created', jsonb_build_object('n', g) \
             FROM generate_series(1, 20000) g",
            &[],
        )
        .await
        .unwrap();
    let after_insert = env.current_wal_lsn().await;
    env.terminate(run);

    // Unroutable: the broker returns the first replayed message, so nothing is confirmed.
    let output = replay(&env, &["--from-lsn", &from.to_string()]);
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("unroutable"), "{stderr}");
    let resume: Lsn = stderr
        .split("resume with `walbox replay --from-lsn ")
        .nth(1)
        .and_then(|rest| rest.split('`').next())
        .and_then(|text| text.parse().ok())
        .unwrap_or_else(|| panic!("no resume LSN in: {stderr}"));
    assert!(
        (from..after_insert).contains(&resume) && resume <= after_insert,
        "resume LSN {resume} within [{from}, {after_insert})"
    );
    // Resuming there covers the whole unconfirmed transaction.
    let output = replay(&env, &["--from-lsn", &resume.to_string(), "--dry-run"]);
    assert!(output.status.success());
    assert!(
        String::from_utf8_lossy(&output.stdout).contains("would replay 20000 events"),
        "(transaction committed after {before_insert})"
    );

    // Killed while streaming: its temporary slot goes with its session.
    let _queue = env.queue_with("all", "#", true).await;
    let mut child = Command::new(env!("CARGO_BIN_EXE_walbox"))
        .arg("replay")
        .args(env.args())
        .args(["--from-lsn", &from.to_string(), "--max-in-flight", "1"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + WAIT;
    while replay_slots(&env).await.is_empty() {
        assert!(Instant::now() < deadline, "the replay never made its slot");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(child.try_wait().unwrap().is_none(), "caught while running");
    child.kill().unwrap();
    child.wait().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !replay_slots(&env).await.is_empty() {
        assert!(
            Instant::now() < deadline,
            "a killed replay left its slot behind"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(slot_position(&env, &bookmark_name(&env)).await.is_some());
}
