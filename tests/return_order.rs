//! Return attribution (issue #19 item 5): a `basic.return` must be credited to the message it
//! returns. A stand-in broker forces the frame order that exposes a client crediting returns
//! by anything else: the return of an unroutable event, then one `basic.ack` with `multiple`
//! covering it and the next (routed) event. walbox (`run`, the default `--unroutable hold`)
//! relays events each in its own transaction on the machine's PostgreSQL; every committed
//! event must end up taken (acked with no return) by the stand-in, and walbox's log must blame
//! only events the stand-in returned.

mod common;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use common::standin::{ReturnAck, Seen, StandIn};
use common::*;
use walbox::lsn::Lsn;

/// Events, each in its own transaction; every second one (from the first) is unroutable, so
/// the last is routed and every return has a routed event after it.
const EVENTS: usize = 12;
/// How long the slot may take to pass the last event (seven sessions at most here).
const WAIT: Duration = Duration::from_secs(15);

/// Passed explicitly: a walbox without the flag exits at once (usage error) instead of
/// silently testing its default client.
fn client_flag(client: &str) -> [&str; 2] {
    ["--amqp-client", client]
}

/// The ids walbox's log names in "the broker returned event <id>", in order.
fn blamed(log: &str) -> Vec<String> {
    log.split("returned event ")
        .skip(1)
        .filter_map(|rest| rest.split_whitespace().next())
        .map(str::to_owned)
        .collect()
}

/// Wait until the slot's confirmed position reaches `target` or `WAIT` runs out; panics if
/// walbox exits meanwhile (e.g. a build without `--amqp-client`).
async fn wait_for_slot(env: &mut TestEnv, run: usize, target: Lsn) -> Lsn {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(status) = env.try_wait(run) {
            panic!("walbox exited ({status}); log:\n{}", env.run_log(run));
        }
        let confirmed = env.slot_confirmed().await.unwrap_or_default();
        if confirmed >= target || Instant::now() > deadline {
            return confirmed;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// One relay through the stand-in.
struct Relayed {
    /// The committed events' ids, in commit order.
    ids: Vec<String>,
    unroutable: HashSet<String>,
    seen: Seen,
    log: String,
    /// The slot's confirmed position reached the WAL position after the last event.
    slot_passed: bool,
}

/// Relay `EVENTS` events through the stand-in with `client`.
async fn relay_through_returns(client: &str) -> Relayed {
    let mut env = TestEnv::new(&format!("return_order_{client}")).await;
    // The slot exists before the events, so walbox's first session publishes them together.
    let setup = env.walbox("setup", &[]);
    assert!(setup.status.success(), "setup: {setup:?}");
    let mut ids = Vec::with_capacity(EVENTS);
    for n in 0..EVENTS {
        let payload = format!("{{\"n\": {n}}}");
        ids.push(env.insert("order", "created", &payload).await);
    }
    let after_last = env.current_wal_lsn().await;
    let unroutable: HashSet<String> = ids.iter().step_by(2).cloned().collect();
    let standin = StandIn::start(unroutable.clone()).await;
    let args = env.args_with("--amqp-url", &standin.url());
    let run = env.spawn_run_with(args, &client_flag(client));
    let confirmed = wait_for_slot(&mut env, run, after_last).await;
    env.terminate(run);
    let seen = standin.seen();
    let log = env.run_log(run);
    eprintln!(
        "{client}: slot at {confirmed} (target {after_last}), {} connections",
        seen.connections
    );
    Relayed {
        ids,
        unroutable,
        seen,
        log,
        slot_passed: confirmed >= after_last,
    }
}

/// `e<n>` for an id, by its place in commit order.
fn label(ids: &[String], id: &str) -> String {
    ids.iter()
        .position(|other| other == id)
        .map_or_else(|| format!("?{id}"), |n| format!("e{n}"))
}

/// What the stand-in answered, a line per connection (`R`: returned, the connection's first
/// return, the one walbox acts on; `r`: returned after it, unread; `~`: its ack went out
/// alone), and what walbox's log blamed (`!`: an event the stand-in never returned).
fn story(ids: &[String], seen: &Seen, blamed: &[String]) -> String {
    let mut lines = String::new();
    for connection in 1..=seen.connections {
        let answers: Vec<String> = seen
            .answers
            .iter()
            .filter(|answer| answer.connection == connection)
            .map(|answer| {
                let mark = match (answer.returned, answer.first_return) {
                    (false, _) => "",
                    (true, true) => "R",
                    (true, false) => "r",
                };
                let alone = if answer.ack == Some(ReturnAck::Alone) {
                    "~"
                } else {
                    ""
                };
                format!("{}{mark}{alone}", label(ids, &answer.message_id))
            })
            .collect();
        lines += &format!("  connection {connection}: {}\n", answers.join(" "));
    }
    let returned: HashSet<&str> = seen.returned().collect();
    let blamed: Vec<String> = blamed
        .iter()
        .map(|id| {
            let wrong = if returned.contains(id.as_str()) {
                ""
            } else {
                "!"
            };
            format!("{}{wrong}", label(ids, id))
        })
        .collect();
    lines + &format!("  walbox blamed: {}", blamed.join(" "))
}

/// Every committed event taken, only returned events blamed, the frame order met.
async fn every_returned_event_is_published_again(client: &str) {
    let Relayed {
        ids,
        unroutable,
        seen,
        log,
        slot_passed,
    } = relay_through_returns(client).await;
    let taken: HashSet<&str> = seen.taken().collect();
    let missing: Vec<String> = ids
        .iter()
        .filter(|id| !taken.contains(id.as_str()))
        .map(|id| label(&ids, id))
        .collect();
    let returned: HashSet<&str> = seen.returned().collect();
    let blamed = blamed(&log);
    let wrongly_blamed: Vec<String> = blamed
        .iter()
        .filter(|id| !returned.contains(id.as_str()))
        .map(|id| label(&ids, id))
        .collect();
    let with_next = seen.first_returns_acked(ReturnAck::WithNext);
    eprintln!(
        "{client}: {} committed, {} never taken (lost); {} returns of {} unroutable events; of \
         the returns walbox acted on, {with_next} acked with the next event (ack multiple), {} \
         alone; walbox blamed {} returns, {} on an event the stand-in never returned\n{}",
        ids.len(),
        missing.len(),
        seen.returned().count(),
        unroutable.len(),
        seen.first_returns_acked(ReturnAck::Alone),
        blamed.len(),
        wrongly_blamed.len(),
        story(&ids, &seen, &blamed)
    );
    assert!(
        seen.unexpected.is_empty(),
        "frames the stand-in does not speak: {:?}",
        seen.unexpected
    );
    assert_eq!(
        returned.len(),
        unroutable.len(),
        "every unroutable event returned at least once"
    );
    // The first session publishes e0 and e1 without waiting for a verdict, so the order under
    // test is met at least there; after that, a session publishing one event at a time until
    // its held event is behind the flush may get a lone ack (LONE_ACK_AFTER).
    assert!(with_next >= 1, "the frame order under test never happened");
    assert!(
        missing.is_empty(),
        "{} of {} committed events never taken (lost): {missing:?}",
        missing.len(),
        ids.len()
    );
    assert!(
        wrongly_blamed.is_empty(),
        "walbox credited a return to an event the stand-in took: {wrongly_blamed:?}"
    );
    // Each unroutable event was returned first on some connection, the verdict walbox acts
    // on: its log names each, so the check above read real log lines.
    let unnamed: Vec<String> = ids
        .iter()
        .filter(|id| unroutable.contains(*id) && !blamed.contains(id))
        .map(|id| label(&ids, id))
        .collect();
    assert!(
        unnamed.is_empty(),
        "walbox's log never named these returned events: {unnamed:?}"
    );
    assert!(
        slot_passed,
        "the slot did not pass the events within {WAIT:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn amqprs_credits_each_return_to_the_event_it_returns() {
    every_returned_event_is_published_again("amqprs").await;
}

/// lapin 4.12.3 loses events here: on an ack with `multiple` it walks its pending delivery
/// tags in HashMap order and hands each the oldest waiting return
/// (`acknowledgement.rs`, `complete_pending_before`), so a returned event can be confirmed and
/// the routed one after it held in its place. Kept to document the bug (issue #19 item 5).
/// Measured in 21 runs: a return blamed on a routed event in 20, events lost in 15 (25 of 252
/// committed). A wrongly confirmed event is lost only when walbox acknowledged past it before
/// the session ended; otherwise the next session sends it again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "lapin 4.12.3 credits returns in HashMap order and loses events (issue #19 item 5)"]
async fn lapin_credits_returns_in_hash_order_and_loses_events() {
    every_returned_event_is_published_again("lapin").await;
}
