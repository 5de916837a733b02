//! Events nobody subscribes to, on a real RabbitMQ: what `--unroutable` does with an event
//! the broker returns because no queue is bound for it, and what that costs the events after
//! it. Every test counts: committed events against deliveries, duplicates, and the slot's
//! position against the events' commits.

mod common;

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use common::*;
use lapin::message::Delivery;

const WAIT: Duration = Duration::from_secs(30);

/// Insert `count` events of `aggregate_type` in one transaction each; their ids in commit
/// order.
async fn insert_each(env: &TestEnv, aggregate_type: &str, count: usize) -> Vec<String> {
    let mut ids = Vec::with_capacity(count);
    for n in 0..count {
        ids.push(
            env.insert(aggregate_type, "created", &format!("{{\"n\": {n}}}"))
                .await,
        );
    }
    ids
}

/// Message ids of `deliveries`, in arrival order.
fn ids(deliveries: &[Delivery]) -> Vec<String> {
    deliveries.iter().map(message_id).collect()
}

/// How many deliveries are copies of an earlier one.
fn duplicates(ids: &[String]) -> usize {
    ids.len() - ids.iter().collect::<HashSet<_>>().len()
}

/// The first delivery of each id, in arrival order.
fn firsts(ids: &[String]) -> Vec<String> {
    let mut seen = HashSet::new();
    ids.iter().filter(|id| seen.insert(*id)).cloned().collect()
}

/// `--unroutable hold` (walbox's default): an event no queue takes is held and retried, the
/// slot stays before it, and the events after it that do have a queue are not sent again on
/// every retry: the retries send the held event alone. Once a queue is bound, it arrives, the
/// events after it are sent once more (one window's duplicates), and the slot passes them all.
#[tokio::test]
async fn hold_retries_the_unroutable_event_alone_and_delivers_it_once_a_queue_is_bound() {
    let mut env = TestEnv::new("unroutable_hold").await;
    let mut orders = env.queue("orders", "order.#").await;
    // The events wait in the slot, so walbox's first session has them all in flight at once.
    assert!(env.walbox("setup", &[]).status.success());
    let held = env.insert("nobody", "created", "{}").await;
    let after = insert_each(&env, "order", 20).await;
    let run = env.spawn_run(&[]);

    // walbox retries the held event for a while (backoff up to 1 s here).
    let while_held = ids(&receive_any(&mut orders, Duration::from_secs(7)).await);
    let retries = env.run_log(run).matches("session ended").count();
    let slot_while_held = env.slot_confirmed().await.unwrap();
    eprintln!(
        "hold: {retries} sessions ended on the held event in 7 s; the {} routed events after \
         it were delivered {} times meanwhile ({} duplicates); slot at {slot_while_held}",
        after.len(),
        while_held.len(),
        duplicates(&while_held)
    );
    assert!(
        retries >= 3,
        "walbox retried the held event {retries} times"
    );
    assert_eq!(
        duplicates(&while_held),
        0,
        "the retries sent the later events again"
    );
    assert!(
        after.starts_with(&while_held),
        "first deliveries in commit order"
    );

    let mut nobody = env.queue("nobody", "nobody.#").await;
    let arrived = receive(&mut nobody, 1, WAIT).await;
    assert_eq!(
        ids(&arrived),
        std::slice::from_ref(&held),
        "the held event arrives once a queue is bound"
    );
    let held_commit = commit_lsn(&arrived[0]);
    assert!(
        slot_while_held <= held_commit,
        "the slot ({slot_while_held}) passed the held event's commit ({held_commit})"
    );
    let resent = ids(&receive_any(&mut orders, Duration::from_secs(3)).await);
    let end = env.current_wal_lsn().await;
    let slot = env.wait_confirmed(end, WAIT).await;
    let all: Vec<String> = while_held.iter().chain(&resent).cloned().collect();
    eprintln!(
        "hold: after binding: the held event delivered {} time(s); routed events delivered {} \
         times for {} events ({} duplicates); slot {slot} (WAL {end})",
        arrived.len(),
        all.len(),
        after.len(),
        duplicates(&all)
    );
    assert!(
        slot >= end,
        "the slot did not pass the events: {slot} < {end}"
    );
    assert_eq!(
        firsts(&all),
        after,
        "every routed event, first deliveries in commit order"
    );
    assert!(
        duplicates(&all) <= after.len(),
        "more than one window of duplicates: {}",
        duplicates(&all)
    );
    let counts: HashMap<&String, usize> = all.iter().fold(HashMap::new(), |mut counts, id| {
        *counts.entry(id).or_default() += 1;
        counts
    });
    assert!(
        counts.values().all(|&n| n <= 2),
        "an event was sent more than twice: {counts:?}"
    );
}
