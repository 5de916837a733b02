//! Logical decoding messages as events (`--messages`, issue #23), end to end on the real
//! servers (PostgreSQL 15 by default; point `WALBOX_TEST_PG_PORT` at a PostgreSQL 17 to run
//! them there): commit order mixed with table events and prefix filtering, non-transactional
//! messages in WAL order (including one whose LSN is the next transaction's commit LSN), a
//! kill between a message and its commit, and a replay of a range that holds messages.
//! Every test counts: what was committed against what arrived, by message id.

mod common;

use std::str::FromStr;
use std::time::{Duration, Instant};

use common::*;
use lapin::message::Delivery;
use tokio_postgres::Client;
use walbox::lsn::Lsn;

const WAIT: Duration = Duration::from_secs(30);
/// How long to watch for a message that must not come.
const QUIET: Duration = Duration::from_secs(2);

/// uuid5(NAMESPACE_URL, "https://github.com/walbox/walbox#event-position"), as documented.
fn namespace() -> uuid::Uuid {
    uuid::Uuid::new_v5(
        &uuid::Uuid::NAMESPACE_URL,
        b"https://github.com/walbox/walbox#event-position",
    )
}

/// The documented id of the event at (commit LSN, index).
fn position_id(commit: Lsn, index: u32) -> String {
    uuid::Uuid::new_v5(&namespace(), format!("{commit}/{index}").as_bytes()).to_string()
}

/// The documented id of a non-transactional message PostgreSQL reports at `lsn`.
fn lone_message_id(lsn: Lsn) -> String {
    position_id(Lsn(lsn.as_u64() - 8), 524_287)
}

/// `pg_logical_emit_message` on `db`; returns the LSN it reports (the end of the record).
async fn emit(db: &Client, transactional: bool, prefix: &str, content: &str) -> Lsn {
    let row = db
        .query_one(
            "SELECT pg_logical_emit_message($1, $2, $3::text)::text",
            &[&transactional, &prefix, &content],
        )
        .await
        .expect("emit a logical message");
    Lsn::from_str(row.get::<_, &str>(0)).unwrap()
}

async fn insert_row(db: &Client, note: &str) -> String {
    let row = db
        .query_one(
            "INSERT INTO outbox (aggregate_type, aggregate_id, event_type, payload) \
             VALUES ('order', 'o-1', 'created', jsonb_build_object('note', $1::text)) \
             RETURNING id::text",
            &[&note],
        )
        .await
        .expect("insert");
    row.get(0)
}

fn body(delivery: &Delivery) -> String {
    String::from_utf8_lossy(&delivery.data).into_owned()
}

fn describe(deliveries: &[Delivery]) -> Vec<String> {
    deliveries
        .iter()
        .map(|d| format!("{} {} {}", message_id(d), d.routing_key, body(d)))
        .collect()
}

/// Receive exactly `count` deliveries, and then nothing more for a while.
async fn exactly(
    env: &TestEnv,
    run: usize,
    consumer: &mut lapin::Consumer,
    count: usize,
) -> Vec<Delivery> {
    let deliveries = receive(consumer, count, WAIT).await;
    assert_eq!(
        deliveries.len(),
        count,
        "got {:?}; log:\n{}",
        describe(&deliveries),
        env.run_log(run)
    );
    let extra = receive_any(consumer, QUIET).await;
    assert!(
        extra.is_empty(),
        "more than expected: {:?}",
        describe(&extra)
    );
    deliveries
}

async fn caught_up(env: &TestEnv) {
    let end = env.current_wal_lsn().await;
    // Past the last event, PostgreSQL may take up to wal_sender_timeout / 2 to send the
    // keepalive that lets walbox confirm the rest (tests/stream.rs waits as long).
    let confirmed = env.wait_confirmed(end, Duration::from_secs(90)).await;
    assert!(
        confirmed >= end,
        "the slot stopped at {confirmed}, short of {end}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_keep_commit_order_with_rows_and_only_listed_prefixes_go_out() {
    let mut env = TestEnv::new("msg_order").await;
    let mut consumer = env.queue("all", "#").await;
    let run = env.spawn_run(&["--messages", "ev,audit.*;routing-key=audit.{content->kind}"]);
    env.wait_slot_active(WAIT).await;

    // A: rows and transactional messages mixed; prefix `nope` is not listed.
    env.db.batch_execute("BEGIN").await.unwrap();
    let r1 = insert_row(&env.db, "r1").await;
    emit(&env.db, true, "ev", r#"{"n": 1}"#).await;
    emit(&env.db, true, "nope", r#"{"n": 2}"#).await;
    let r2 = insert_row(&env.db, "r2").await;
    emit(&env.db, true, "audit.login", r#"{"kind": "login"}"#).await;
    env.db.batch_execute("COMMIT").await.unwrap();
    // B: rolled back: neither its row nor its message exists.
    env.db.batch_execute("BEGIN").await.unwrap();
    insert_row(&env.db, "rolled back").await;
    emit(&env.db, true, "ev", r#"{"n": "rolled back"}"#).await;
    env.db.batch_execute("ROLLBACK").await.unwrap();
    // A non-transactional message on its own, and one from inside an open transaction C: it
    // stands where its record is in the WAL, before C's commit, so before C's rows.
    let lone = emit(&env.db, false, "ev", r#"{"n": "lone"}"#).await;
    env.db.batch_execute("BEGIN").await.unwrap();
    let r3 = insert_row(&env.db, "r3").await;
    let inside = emit(&env.db, false, "ev", r#"{"n": "inside"}"#).await;
    let r4 = insert_row(&env.db, "r4").await;
    env.db.batch_execute("COMMIT").await.unwrap();
    // Binary content, and a listed-family prefix that does not match (`audit` alone).
    env.db
        .execute(
            "SELECT pg_logical_emit_message(true, 'ev', '\\x00ff41'::bytea)",
            &[],
        )
        .await
        .unwrap();
    emit(&env.db, false, "audit", r#"{"kind": "not listed"}"#).await;

    let got = exactly(&env, run, &mut consumer, 9).await;
    let bodies: Vec<String> = got.iter().map(body).collect();
    let keys: Vec<&str> = got.iter().map(|d| d.routing_key.as_str()).collect();
    assert_eq!(message_id(&got[0]), r1);
    assert_eq!(bodies[1], r#"{"n": 1}"#);
    assert_eq!(message_id(&got[2]), r2);
    assert_eq!(bodies[3], r#"{"kind": "login"}"#);
    assert_eq!(bodies[4], r#"{"n": "lone"}"#);
    assert_eq!(bodies[5], r#"{"n": "inside"}"#);
    assert_eq!(message_id(&got[6]), r3);
    assert_eq!(message_id(&got[7]), r4);
    assert_eq!(&got[8].data[..], b"\x00\xffA");
    assert_eq!(keys[1], "ev");
    assert_eq!(keys[3], "audit.login");
    // Transaction A: one commit; message ids from (commit, index), `nope` holding index 2.
    let commit_a = commit_lsn(&got[0]);
    assert!(got[..4].iter().all(|d| commit_lsn(d) == commit_a));
    assert_eq!(message_id(&got[1]), position_id(commit_a, 1));
    assert_eq!(message_id(&got[3]), position_id(commit_a, 4));
    assert_eq!(header_text(&got[1], "x-xid"), header_text(&got[0], "x-xid"));
    // The lone messages: their own position (8 bytes before the LSN PostgreSQL reports), no
    // transaction, the documented id.
    assert_eq!(commit_lsn(&got[4]), Lsn(lone.as_u64() - 8));
    assert_eq!(message_id(&got[4]), lone_message_id(lone));
    assert_eq!(commit_lsn(&got[5]), Lsn(inside.as_u64() - 8));
    assert_eq!(message_id(&got[5]), lone_message_id(inside));
    assert_eq!(
        header_text(&got[4], "x-xid").as_deref(),
        Some("LongLongInt(0)")
    );
    assert!(
        inside < commit_lsn(&got[6]),
        "the lone message precedes C's commit"
    );
    // Content types by content; the prefix is the type property.
    assert_eq!(
        got[1]
            .properties
            .content_type()
            .as_ref()
            .map(|c| c.as_str()),
        Some("application/json")
    );
    assert_eq!(
        got[8]
            .properties
            .content_type()
            .as_ref()
            .map(|c| c.as_str()),
        Some("application/octet-stream")
    );
    assert_eq!(
        got[1].properties.kind().as_ref().map(|c| c.as_str()),
        Some("ev")
    );
    let distinct: std::collections::HashSet<String> = got.iter().map(message_id).collect();
    assert_eq!(distinct.len(), 9, "every event its own id");
    caught_up(&env).await;
}

/// Debezium's pitfall: PostgreSQL reports a message's *end* LSN, which can be the commit LSN
/// of the next transaction. A transaction is left open, a non-transactional message is
/// written, then the transaction commits at once: its commit record starts where the message
/// ended (tried until the server writes nothing else in between). Both arrive, message first,
/// each with its own id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_ending_where_the_next_commit_starts_keeps_its_own_id() {
    let mut env = TestEnv::new("msg_pitfall").await;
    let mut consumer = env.queue("all", "#").await;
    let run = env.spawn_run(&["--messages", "ev"]);
    env.wait_slot_active(WAIT).await;
    let other = pg_connect(&env.postgres_url()).await;
    let mut attempts = 0;
    loop {
        attempts += 1;
        env.db.batch_execute("BEGIN").await.unwrap();
        let row = insert_row(&env.db, "after the message").await;
        let lsn = emit(&other, false, "ev", r#"{"n": "lone"}"#).await;
        env.db.batch_execute("COMMIT").await.unwrap();
        let got = exactly(&env, run, &mut consumer, 2).await;
        assert_eq!(body(&got[0]), r#"{"n": "lone"}"#, "the message first");
        assert_eq!(message_id(&got[1]), row);
        assert_ne!(message_id(&got[0]), message_id(&got[1]));
        assert_eq!(message_id(&got[0]), lone_message_id(lsn));
        let commit = commit_lsn(&got[1]);
        assert!(lsn <= commit);
        if lsn == commit {
            println!("message at {lsn} = the next commit LSN, after {attempts} attempt(s)");
            break;
        }
        assert!(
            attempts < 20,
            "the server always wrote something between ({lsn} < {commit})"
        );
    }
    caught_up(&env).await;
}

/// A transaction whose first event is a relayed message, then 20 000 rows: walbox is killed
/// (SIGKILL) once the message arrived and before the slot passed the commit, then started
/// again. The message comes again with the same id; every row arrives; the slot ends past the
/// commit. Before that, walbox is killed while such a transaction is still open (the message
/// written, the commit not yet): it relays the message once, after the commit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kill_between_a_message_and_its_commit_sends_it_again_with_the_same_id() {
    let mut env = TestEnv::new("msg_kill").await;
    let mut consumer = env.queue("all", "#").await;
    let args = ["--messages", "ev"];
    let first = env.spawn_run(&args);
    env.wait_slot_active(WAIT).await;

    // Killed while the transaction is open (on a connection of its own: the checks on
    // env.db must not run inside it, where the statistics views would not move).
    let writer = pg_connect(&env.postgres_url()).await;
    writer.batch_execute("BEGIN").await.unwrap();
    emit(&writer, true, "ev", r#"{"n": "open"}"#).await;
    env.kill(first);
    let second = env.spawn_run(&args);
    env.wait_slot_active(WAIT).await;
    writer.batch_execute("COMMIT").await.unwrap();
    let got = exactly(&env, second, &mut consumer, 1).await;
    assert_eq!(body(&got[0]), r#"{"n": "open"}"#);
    assert_eq!(message_id(&got[0]), position_id(commit_lsn(&got[0]), 0));
    caught_up(&env).await;

    // Killed after the message went out, before its commit was confirmed.
    const ROWS: usize = 20_000;
    env.db.batch_execute("BEGIN").await.unwrap();
    emit(&env.db, true, "ev", r#"{"n": "big"}"#).await;
    env.db
        .execute(
            "INSERT INTO outbox (aggregate_type, aggregate_id, event_type, payload) \
             SELECT 'order', 'o-' || g, 'created', jsonb_build_object('n', g) \
             FROM generate_series(1, $1::int) g",
            &[&(ROWS as i32)],
        )
        .await
        .unwrap();
    env.db.batch_execute("COMMIT").await.unwrap();
    let head = receive(&mut consumer, 1, WAIT).await;
    assert_eq!(body(&head[0]), r#"{"n": "big"}"#);
    let commit = commit_lsn(&head[0]);
    env.kill(second);
    let confirmed = env.slot_confirmed().await.unwrap();
    assert!(
        confirmed <= commit,
        "killed before the commit was confirmed ({confirmed} > {commit})"
    );
    let third = env.spawn_run(&args);
    let mut all = head;
    all.extend(receive(&mut consumer, 2 * ROWS + 2, Duration::from_secs(60)).await);
    let messages: Vec<&Delivery> = all
        .iter()
        .filter(|d| body(d) == r#"{"n": "big"}"#)
        .collect();
    let ids: std::collections::HashSet<String> = all.iter().map(message_id).collect();
    println!(
        "kill between a message and its commit: {} deliveries, {} distinct ids, the message {} times",
        all.len(),
        ids.len(),
        messages.len()
    );
    assert!(messages.len() >= 2, "the message came again after the kill");
    assert!(
        messages
            .iter()
            .all(|d| message_id(d) == position_id(commit, 0))
    );
    assert_eq!(
        ids.len(),
        ROWS + 1,
        "every row and the message, none lost; log:\n{}",
        env.run_log(third)
    );
    caught_up(&env).await;
}

/// `walbox replay` of a range holding transactional and non-transactional messages: exactly
/// those events again, marked x-replay, with the ids they had.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_sends_the_messages_of_its_range_again_with_their_ids() {
    let mut env = TestEnv::new("msg_replay").await;
    let mut consumer = env.queue("all", "#").await;
    let run = env.spawn_run(&["--messages", "ev", "--replay-window", "1GB"]);
    env.wait_slot_active(WAIT).await;
    // The bookmark slot exists once the window is kept.
    let bookmark = format!("{}_bookmark", env.name);
    let deadline = Instant::now() + WAIT;
    while env
        .db
        .query_opt(
            "SELECT 1 FROM pg_replication_slots WHERE slot_name = $1",
            &[&bookmark],
        )
        .await
        .unwrap()
        .is_none()
    {
        assert!(Instant::now() < deadline, "no bookmark slot");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    for n in 0..3 {
        env.db.batch_execute("BEGIN").await.unwrap();
        insert_row(&env.db, &format!("row {n}")).await;
        emit(&env.db, true, "ev", &format!(r#"{{"tx": {n}}}"#)).await;
        env.db.batch_execute("COMMIT").await.unwrap();
        emit(&env.db, false, "ev", &format!(r#"{{"lone": {n}}}"#)).await;
    }
    let live = exactly(&env, run, &mut consumer, 9).await;
    caught_up(&env).await;
    // From the second transaction to the end.
    let from = commit_lsn(&live[3]);
    let output = env.walbox(
        "replay",
        &[
            "--messages",
            "ev",
            "--from-lsn",
            &from.to_string(),
            "--log-format",
            "json",
        ],
    );
    assert!(
        output.status.success(),
        "replay: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let replayed = exactly(&env, run, &mut consumer, 6).await;
    let expected: Vec<String> = live[3..].iter().map(message_id).collect();
    let got: Vec<String> = replayed.iter().map(message_id).collect();
    assert_eq!(
        got, expected,
        "the range's events, in order, with their ids"
    );
    assert!(
        replayed
            .iter()
            .all(|d| header_text(d, "x-replay").as_deref() == Some("Boolean(true)"))
    );
    let bodies: Vec<String> = replayed.iter().map(body).collect();
    assert_eq!(bodies[2], r#"{"lone": 1}"#);
    assert_eq!(bodies[5], r#"{"lone": 2}"#);

    // Bounded to that one transaction: its row and message, not the lone message after it.
    let to = from.to_string();
    let output = env.walbox(
        "replay",
        &["--messages", "ev", "--from-lsn", &to, "--to-lsn", &to],
    );
    assert!(output.status.success());
    let bounded = exactly(&env, run, &mut consumer, 2).await;
    let got: Vec<String> = bounded.iter().map(message_id).collect();
    assert_eq!(got, expected[..2]);
}

/// `walbox replay --from-lsn X` replays what committed at or after X, and the docs promise that
/// an `x-commit-lsn` value works as is: replaying from the `x-commit-lsn` of a non-transactional
/// message must send that message again, and replaying up to it (`--to-lsn`) must end with it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_from_a_lone_messages_commit_lsn_sends_that_message() {
    let mut env = TestEnv::new("msg_replay_lone").await;
    let mut consumer = env.queue("all", "#").await;
    let run = env.spawn_run(&["--messages", "ev", "--replay-window", "1GB"]);
    env.wait_slot_active(WAIT).await;
    let bookmark = format!("{}_bookmark", env.name);
    let deadline = Instant::now() + WAIT;
    while env
        .db
        .query_opt(
            "SELECT 1 FROM pg_replication_slots WHERE slot_name = $1",
            &[&bookmark],
        )
        .await
        .unwrap()
        .is_none()
    {
        assert!(Instant::now() < deadline, "no bookmark slot");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for n in 0..2 {
        insert_row(&env.db, &format!("row {n}")).await;
        emit(&env.db, false, "ev", &format!(r#"{{"lone": {n}}}"#)).await;
    }
    let live = exactly(&env, run, &mut consumer, 4).await;
    caught_up(&env).await;
    let ids: Vec<String> = live.iter().map(message_id).collect();
    let lone = commit_lsn(&live[1]).to_string();

    let replay = |extra: &[&str]| {
        let mut args = vec!["--messages", "ev", "--from-lsn", &lone];
        args.extend_from_slice(extra);
        let output = env.walbox("replay", &args);
        assert!(
            output.status.success(),
            "replay: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    };
    replay(&[]);
    let from = exactly(&env, run, &mut consumer, 3).await;
    let got: Vec<String> = from.iter().map(message_id).collect();
    assert_eq!(
        got,
        ids[1..],
        "from the lone message's x-commit-lsn: it, then what came after it"
    );
    replay(&["--to-lsn", &lone]);
    let only = exactly(&env, run, &mut consumer, 1).await;
    assert_eq!(
        message_id(&only[0]),
        ids[1],
        "from and to its x-commit-lsn: it alone"
    );
    caught_up(&env).await;
}

/// Wait for walbox run number `run` to exit; its log.
async fn exited(env: &mut TestEnv, run: usize) -> String {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(status) = env.try_wait(run) {
            assert!(!status.success(), "walbox stopped with a definite error");
            return env.run_log(run);
        }
        assert!(
            Instant::now() < deadline,
            "walbox did not stop on the message it cannot send; log:\n{}",
            env.run_log(run)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The `--start-lsn` walbox's stop message advises: `--start-lsn X` (`--start-lsn <X + 1>`
/// before walbox computed it).
fn advised_start(log: &str) -> Lsn {
    let at = log
        .find("--start-lsn ")
        .unwrap_or_else(|| panic!("no --start-lsn advice in the log:\n{log}"))
        + "--start-lsn ".len();
    let rest = &log[at..];
    if let Some(inner) = rest.strip_prefix('<') {
        let lsn = inner.split_whitespace().next().unwrap();
        assert!(inner[lsn.len()..].starts_with(" + 1>"), "{rest}");
        return Lsn(Lsn::from_str(lsn).unwrap().as_u64() + 1);
    }
    let lsn: String = rest
        .chars()
        .take_while(|c| c.is_ascii_hexdigit() || *c == '/')
        .collect();
    Lsn::from_str(&lsn).unwrap()
}

/// A non-transactional message walbox cannot turn into an AMQP message (its routing key would
/// be longer than 255 bytes) stops walbox, which says which `--start-lsn` skips it. Following
/// that advice must skip the message and nothing else — also when the next transaction's
/// commit record starts where the message's record ends (PostgreSQL reports a message's end as
/// its LSN): that transaction's row must still arrive. Tried until the server wrote nothing
/// between the message and the commit, so the case is met.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn skipping_an_unsendable_lone_message_as_advised_skips_nothing_else() {
    let mut env = TestEnv::new("msg_skip").await;
    let mut consumer = env.queue("all", "#").await;
    let route = "ev;routing-key={content->rk}";
    let mut run = env.spawn_run(&["--messages", route]);
    env.wait_slot_active(WAIT).await;
    let unsendable = format!(r#"{{"rk": "{}"}}"#, "k".repeat(300));
    for attempt in 1.. {
        env.db.batch_execute("BEGIN").await.unwrap();
        let row = insert_row(&env.db, "committed right after the message").await;
        let lsn = emit(&env.db, false, "ev", &unsendable).await;
        env.db.batch_execute("COMMIT").await.unwrap();
        let log = exited(&mut env, run).await;
        let skip_to = advised_start(&log);
        run = env.spawn_run(&["--messages", route, "--start-lsn", &skip_to.to_string()]);
        let got = receive(&mut consumer, 1, WAIT).await;
        assert_eq!(
            got.len(),
            1,
            "attempt {attempt}: the row committed right after the message (its record ends at \
             {lsn}) was lost: the advised --start-lsn {skip_to} skipped its transaction too; \
             log:\n{}",
            env.run_log(run)
        );
        assert_eq!(message_id(&got[0]), row, "the row, not the skipped message");
        if commit_lsn(&got[0]) == lsn {
            println!(
                "the next commit started where the message ended ({lsn}) in attempt {attempt}; \
                 advised --start-lsn {skip_to}"
            );
            break;
        }
        assert!(
            attempt < 20,
            "the server always wrote something between the message and the commit"
        );
    }
    let extra = receive_any(&mut consumer, QUIET).await;
    assert!(extra.is_empty(), "only the row: {:?}", describe(&extra));
    caught_up(&env).await;
}
