//! Poison events on a real RabbitMQ: an event the broker refuses every time must not block the
//! relay silently. With `--dead-letter-exchange` a record of it goes there (with confirms) and
//! the relay goes on; without one walbox stays up, halted and not ready, on that event.
//!
//! The poison is a real, permanent refusal by the shared broker, needing no broker
//! configuration: a `CC` header must be an array for RabbitMQ's sender-selected distribution,
//! so an event whose headers column says `{"CC": "oops"}` makes the broker close the channel
//! with PRECONDITION_FAILED ("invalid message: unacceptable_type_in_header"), exactly as a
//! message over `max_message_size` does.

mod common;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use common::http::{get, sample, served_address};
use common::*;
use walbox::lsn::Lsn;

const WAIT: Duration = Duration::from_secs(30);

/// Insert one event whose headers the broker refuses; returns its id.
async fn insert_poison(env: &TestEnv) -> String {
    env.db
        .query_one(
            "INSERT INTO outbox (aggregate_type, aggregate_id, event_type, payload, headers) \
             VALUES ('order', 'o-bad', 'created', '{\"n\": \"poison\"}', '{\"CC\": \"oops\"}') \
             RETURNING id::text",
            &[],
        )
        .await
        .expect("insert poison")
        .get(0)
}

#[tokio::test]
async fn a_poison_event_goes_to_the_dead_letter_exchange_and_the_relay_goes_on() {
    let mut env = TestEnv::new("poison_dlx").await;
    let mut consumer = env.queue("all", "#").await;
    let (dead_letter_exchange, mut dead_letters) = env.extra_exchange("dlx").await;
    let run = env.spawn_run(&[
        "--dead-letter-exchange",
        &dead_letter_exchange,
        "--poison-after",
        "2",
    ]);
    env.wait_slot_active(WAIT).await;

    // Many events around the poison one, so that it is refused among many in flight.
    let batch = "INSERT INTO outbox (aggregate_type, aggregate_id, event_type, payload) \
                 SELECT 'order', 'o-' || g, 'created', jsonb_build_object('n', g) \
                 FROM generate_series(1, 50) g RETURNING id::text";
    let before: Vec<String> = env
        .db
        .query(batch, &[])
        .await
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect();
    // The poison event shares its transaction with a good event after it.
    let poison = "00000000-0000-4000-8000-0000000000b1".to_owned();
    let same_transaction = "00000000-0000-4000-8000-0000000000b2".to_owned();
    env.db
        .batch_execute(&format!(
            "BEGIN; \
             INSERT INTO outbox (id, aggregate_type, aggregate_id, event_type, payload, headers) \
               VALUES ('{poison}', 'order', 'o-bad', 'created', '{{\"n\": \"poison\"}}', '{{\"CC\": \"oops\"}}'); \
             INSERT INTO outbox (id, aggregate_type, aggregate_id, event_type, payload) \
               VALUES ('{same_transaction}', 'order', 'o-2', 'created', '{{\"n\": 2}}'); \
             COMMIT;"
        ))
        .await
        .unwrap();
    let xid: i64 = env
        .db
        .query_one(
            "SELECT xmin::text::bigint FROM outbox WHERE id = $1::text::uuid",
            &[&poison],
        )
        .await
        .unwrap()
        .get(0);
    let after: Vec<String> = env
        .db
        .query(batch, &[])
        .await
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect();
    let end = env.current_wal_lsn().await;

    let records = receive(&mut dead_letters, 1, WAIT).await;
    assert_eq!(
        records.len(),
        1,
        "no dead-letter record; log:\n{}",
        env.run_log(run)
    );
    let record = &records[0];
    assert_eq!(message_id(record), poison);
    let body: serde_json::Value = serde_json::from_slice(&record.data).expect("record is JSON");
    assert_eq!(body["id"], poison.as_str());
    assert_eq!(body["xid"], xid);
    assert_eq!(body["exchange"], env.name.as_str());
    assert_eq!(body["routing_key"], "order.created");
    assert_eq!(body["payload"], r#"{"n": "poison"}"#);
    assert_eq!(body["payload_size"], 15);
    assert!(
        body["reason"]
            .as_str()
            .is_some_and(|reason| reason.contains("PRECONDITION_FAILED")),
        "{body}"
    );
    let commit: Lsn = body["commit_lsn"].as_str().unwrap().parse().unwrap();
    assert_eq!(commit_lsn(record), commit);

    // Everything else arrives (events before the poison one may come twice: at least once).
    let wanted: HashSet<String> = before
        .into_iter()
        .chain(after)
        .chain([same_transaction])
        .collect();
    assert_eq!(wanted.len(), 101);
    let mut seen = HashSet::new();
    let deadline = tokio::time::Instant::now() + WAIT;
    while !wanted.is_subset(&seen) && tokio::time::Instant::now() < deadline {
        for delivery in receive(&mut consumer, 200, Duration::from_secs(1)).await {
            seen.insert(message_id(&delivery));
        }
    }
    assert!(
        wanted.is_subset(&seen),
        "missing {:?}; log:\n{}",
        wanted.difference(&seen).collect::<Vec<_>>(),
        env.run_log(run)
    );
    assert!(
        !seen.contains(&poison),
        "the poison event itself never arrives"
    );

    let confirmed = env.wait_confirmed(end, WAIT).await;
    assert!(
        confirmed >= end,
        "slot stuck at {confirmed}, expected {end}; log:\n{}",
        env.run_log(run)
    );
    assert!(
        receive_any(&mut dead_letters, Duration::from_millis(500))
            .await
            .is_empty(),
        "one record per poison event"
    );
    assert!(env.try_wait(run).is_none(), "walbox is still running");
}

#[tokio::test]
async fn without_a_dead_letter_exchange_walbox_halts_on_the_poison_event() {
    let mut env = TestEnv::new("poison_halt").await;
    let mut consumer = env.queue("all", "#").await;
    let run = env.spawn_run(&["--poison-after", "2"]);
    let addr = served_address(&env, run, WAIT).await;
    env.wait_slot_active(WAIT).await;
    // Let the idle position be acknowledged first, so the slot's position below is meaningful.
    let idle = env.current_wal_lsn().await;
    env.wait_confirmed(idle, WAIT).await;

    let poison = insert_poison(&env).await;
    let after_poison = env.current_wal_lsn().await;
    let later = env.insert("order", "created", "{\"n\": 2}").await;

    let deadline = Instant::now() + WAIT;
    let body = loop {
        let answer = get(&addr, "/readyz").await;
        if let Some((503, body)) = &answer
            && body.contains("halted")
        {
            break body.clone();
        }
        assert!(
            Instant::now() < deadline,
            "never halted (last /readyz {answer:?}); log:\n{}",
            env.run_log(run)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(body.trim(), "not ready: halted");
    let (status, scrape) = get(&addr, "/metrics").await.expect("/metrics");
    assert_eq!(status, 200);
    assert_eq!(sample(&scrape, "walbox_state{state=\"halted\"}"), Some(1.0));
    assert!(
        sample(&scrape, "walbox_poison_refusals_total").is_some_and(|n| n >= 3.0),
        "one refusal to isolate it, two counted: {scrape}"
    );
    assert_eq!(
        sample(&scrape, "walbox_events_dead_lettered_total"),
        Some(0.0)
    );

    // The error line names the event, its commit and the ways out.
    let log = env.run_log(run);
    let halted_line = log
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .find(|entry| entry["level"] == "ERROR" && entry["event_id"] == poison.as_str())
        .unwrap_or_else(|| panic!("no error line naming {poison}; log:\n{log}"));
    let message = halted_line["message"].as_str().unwrap();
    let commit: Lsn = halted_line["commit_lsn"].as_str().unwrap().parse().unwrap();
    assert!(commit < after_poison);
    assert!(message.contains(&commit.to_string()), "{message}");
    assert!(message.contains("--dead-letter-exchange"), "{message}");
    let skip_to = Lsn(commit.0 + 1).to_string();
    assert!(
        message.contains(&format!("walbox run --start-lsn {skip_to}")),
        "{message}"
    );

    // It stays up, retrying; nothing past the poison event is acknowledged or delivered.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(env.try_wait(run).is_none(), "walbox must stay up");
    let held = env.slot_confirmed().await.unwrap();
    assert!(
        held <= commit,
        "slot confirmed {held} past the poison event's commit {commit}"
    );
    assert!(
        receive_any(&mut consumer, Duration::from_millis(500))
            .await
            .is_empty(),
        "an event after the poison one was delivered"
    );
    assert_eq!(get(&addr, "/readyz").await.map(|(code, _)| code), Some(503));
    // A halted walbox is not fit to take over either: the orchestrator's probe says so too.
    assert_eq!(
        get(&addr, "/standbyz").await.map(|(code, _)| code),
        Some(503)
    );

    // The way out the log gives works: skip past the poison event's transaction.
    assert!(env.terminate(run).success());
    let skipped = env.spawn_run(&["--start-lsn", &skip_to]);
    let deliveries = receive(&mut consumer, 1, WAIT).await;
    assert_eq!(
        deliveries.iter().map(message_id).collect::<Vec<_>>(),
        vec![later],
        "log:\n{}",
        env.run_log(skipped)
    );
}

#[tokio::test]
async fn unroutable_events_are_held_never_dead_lettered() {
    let mut env = TestEnv::new("poison_unroutable").await;
    let (dead_letter_exchange, mut dead_letters) = env.extra_exchange("dlx").await;
    let run = env.spawn_run(&[
        "--dead-letter-exchange",
        &dead_letter_exchange,
        "--poison-after",
        "1",
    ]);
    env.wait_slot_active(WAIT).await;
    // No queue is bound to the events' exchange: every attempt comes back unroutable.
    let id = env.insert("order", "created", "{}").await;
    let deadline = Instant::now() + WAIT;
    while env.run_log(run).matches("unroutable").count() < 3 {
        assert!(
            Instant::now() < deadline,
            "not retried; log:\n{}",
            env.run_log(run)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        receive_any(&mut dead_letters, Duration::from_millis(500))
            .await
            .is_empty(),
        "an unroutable event is not poison; log:\n{}",
        env.run_log(run)
    );
    let mut consumer = env.queue("late", "#").await;
    let deliveries = receive(&mut consumer, 1, WAIT).await;
    assert_eq!(
        deliveries.iter().map(message_id).collect::<Vec<_>>(),
        vec![id],
        "log:\n{}",
        env.run_log(run)
    );
}

/// The broker's `max_message_size`, when the tests run against a broker with a small one.
fn broker_max_message_size() -> usize {
    std::env::var("WALBOX_TEST_MAX_MESSAGE_SIZE")
        .ok()
        .and_then(|text| text.parse().ok())
        .expect("WALBOX_TEST_MAX_MESSAGE_SIZE names the broker's max_message_size")
}

/// Needs a broker with a small `max_message_size` (the default 128 MiB is too large to test
/// cheaply, and the machine's broker is shared): scripts/limited-broker.sh makes one.
#[tokio::test]
#[ignore = "needs a broker with a small max_message_size: see scripts/limited-broker.sh"]
async fn an_event_larger_than_the_brokers_maximum_is_dead_lettered() {
    let limit = broker_max_message_size();
    let mut env = TestEnv::new("poison_size").await;
    let mut consumer = env.queue("all", "#").await;
    let (dead_letter_exchange, mut dead_letters) = env.extra_exchange("dlx").await;
    let run = env.spawn_run(&[
        "--dead-letter-exchange",
        &dead_letter_exchange,
        "--poison-after",
        "2",
    ]);
    env.wait_slot_active(WAIT).await;
    let rows = limit / 32 + 100;
    let large: String = env
        .db
        .query_one(
            "INSERT INTO outbox (aggregate_type, aggregate_id, event_type, payload) \
             SELECT 'blob', 'b-1', 'stored', jsonb_build_object('blob', string_agg(md5(g::text), '')) \
             FROM generate_series(1, $1::int) g RETURNING id::text",
            &[&(rows as i32)],
        )
        .await
        .unwrap()
        .get(0);
    let after = env.insert("order", "created", "{\"n\": 1}").await;
    let end = env.current_wal_lsn().await;

    let records = receive(&mut dead_letters, 1, WAIT).await;
    assert_eq!(records.len(), 1, "log:\n{}", env.run_log(run));
    let body: serde_json::Value = serde_json::from_slice(&records[0].data).unwrap();
    assert_eq!(body["id"], large.as_str());
    assert!(
        body["reason"]
            .as_str()
            .is_some_and(|reason| reason.contains("larger than configured max size")),
        "{body}"
    );
    assert!(body["payload_size"].as_u64().unwrap() > limit as u64);
    assert_eq!(body["payload_included"], false);
    let deliveries = receive(&mut consumer, 1, WAIT).await;
    assert_eq!(
        deliveries.iter().map(message_id).collect::<Vec<_>>(),
        vec![after],
        "log:\n{}",
        env.run_log(run)
    );
    assert!(env.wait_confirmed(end, WAIT).await >= end);
}

/// Insert one event whose headers column holds a `size`-byte header: its content-header frame
/// is larger than the connection's negotiated `frame_max` (RabbitMQ's default is 128 KiB).
async fn insert_large_header(env: &TestEnv, size: i32) -> String {
    env.db
        .query_one(
            "INSERT INTO outbox (aggregate_type, aggregate_id, event_type, payload, headers) \
             VALUES ('order', 'o-big', 'created', '{\"n\": \"big\"}', \
                     jsonb_build_object('x-big', repeat('h', $1::int))) RETURNING id::text",
            &[&size],
        )
        .await
        .expect("insert an event with a large header")
        .get(0)
}

/// How many sessions the run opened (each one logs "streaming" once connected).
fn sessions(log: &str) -> usize {
    log.matches("\"message\":\"streaming\"").count()
}

/// Issue #19 item 6: headers and properties over `frame_max` made the broker close the
/// connection (501 FRAME_ERROR) and walbox reconnect forever, dead-letter exchange or not.
/// walbox checks the frame size before sending: the event is poison, dead-lettered, and the
/// next event is delivered.
#[tokio::test]
async fn an_event_whose_headers_exceed_the_frame_is_dead_lettered() {
    let mut env = TestEnv::new("poison_frame").await;
    let mut consumer = env.queue("all", "#").await;
    let (dead_letter_exchange, mut dead_letters) = env.extra_exchange("dlx").await;
    let run = env.spawn_run(&[
        "--dead-letter-exchange",
        &dead_letter_exchange,
        "--poison-after",
        "2",
    ]);
    env.wait_slot_active(WAIT).await;
    let before = env.insert("order", "created", "{\"n\": 1}").await;
    let big = insert_large_header(&env, 200_000).await;
    let after = env.insert("order", "created", "{\"n\": 2}").await;
    let end = env.current_wal_lsn().await;

    let started = Instant::now();
    let records = receive(&mut dead_letters, 1, WAIT).await;
    let log = env.run_log(run);
    assert_eq!(
        records.len(),
        1,
        "no dead-letter record in {} s ({} sessions); log:\n{log}",
        started.elapsed().as_secs(),
        sessions(&log),
    );
    let body: serde_json::Value = serde_json::from_slice(&records[0].data).unwrap();
    assert_eq!(body["id"], big.as_str());
    let reason = body["reason"].as_str().unwrap_or_default();
    assert!(reason.contains("frame"), "{body}");
    // The record itself must fit: the large header is left out of it, its size said.
    let original = header_text(&records[0], "x-original-headers").unwrap_or_default();
    assert!(original.len() < 20_000, "{} bytes", original.len());

    let mut seen = HashSet::new();
    let deadline = tokio::time::Instant::now() + WAIT;
    while !(seen.contains(&before) && seen.contains(&after))
        && tokio::time::Instant::now() < deadline
    {
        for delivery in receive(&mut consumer, 10, Duration::from_secs(1)).await {
            seen.insert(message_id(&delivery));
        }
    }
    assert!(
        seen.contains(&before) && seen.contains(&after),
        "{seen:?}; log:\n{}",
        env.run_log(run)
    );
    assert!(
        !seen.contains(&big),
        "the oversized event itself never arrives"
    );
    assert!(env.wait_confirmed(end, WAIT).await >= end);
    let log = env.run_log(run);
    eprintln!(
        "dead-lettered in {} ms; {} sessions in all",
        started.elapsed().as_millis(),
        sessions(&log)
    );
    assert!(
        sessions(&log) <= 6,
        "{} sessions; log:\n{log}",
        sessions(&log)
    );
    assert!(env.try_wait(run).is_none(), "walbox is still running");
}

/// Without a dead-letter exchange the oversized event halts walbox, the error naming the
/// event and the frame size; nothing after it is acknowledged.
#[tokio::test]
async fn without_a_dead_letter_exchange_an_event_over_the_frame_halts_walbox() {
    let mut env = TestEnv::new("poison_frame_halt").await;
    let mut consumer = env.queue("all", "#").await;
    let run = env.spawn_run(&["--poison-after", "2"]);
    env.wait_slot_active(WAIT).await;
    let idle = env.current_wal_lsn().await;
    env.wait_confirmed(idle, WAIT).await;
    let big = insert_large_header(&env, 200_000).await;
    env.insert("order", "created", "{\"n\": 2}").await;

    let deadline = Instant::now() + WAIT;
    let halted = loop {
        let log = env.run_log(run);
        let line = log
            .lines()
            .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
            .find(|entry| entry["level"] == "ERROR" && entry["event_id"] == big.as_str());
        if let Some(line) = line {
            break line;
        }
        assert!(
            Instant::now() < deadline,
            "never halted ({} sessions); log:\n{log}",
            sessions(&log)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let reason = halted["reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains("frame") && reason.contains("bytes"),
        "{halted}"
    );
    let commit: Lsn = halted["commit_lsn"].as_str().unwrap().parse().unwrap();
    assert!(env.slot_confirmed().await.unwrap() <= commit);
    assert!(
        receive_any(&mut consumer, Duration::from_millis(500))
            .await
            .is_empty(),
        "an event after the oversized one was delivered"
    );
    assert!(env.try_wait(run).is_none(), "walbox must stay up");
}
