//! Events nobody subscribes to, on a real RabbitMQ: what `--unroutable` does with an event
//! the broker returns because no queue is bound for it, and what that costs the events after
//! it. Every test counts: committed events against deliveries, duplicates, and the slot's
//! position against the events' commits.

mod common;

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use common::http::{get, sample, served_address};
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

/// [`TestEnv::args`] without `--exchange`, so that a preset's exchanges apply.
fn args_without_exchange(env: &TestEnv) -> Vec<String> {
    let mut args = env.args();
    let at = args.iter().position(|arg| arg == "--exchange").unwrap();
    args.drain(at..at + 2);
    args
}

/// The value of `series` in walbox's metrics, once served.
async fn metric(env: &TestEnv, run: usize, series: &str) -> Option<f64> {
    let addr = served_address(env, run, WAIT).await;
    let (_, scrape) = get(&addr, "/metrics").await?;
    sample(&scrape, series)
}

/// A framework preset that drops unroutable events, as the framework itself does: an event of
/// a type nobody subscribes to (no queue bound to its type's exchange), then one of a type
/// with a subscriber. The second arrives once, the slot passes both, nothing is sent again,
/// and the drop is counted. `exchange` names a type's exchange as the preset does.
async fn a_preset_drops_an_event_nobody_subscribes_to(
    preset: &str,
    exchange: fn(&str, &str) -> String,
) {
    let mut env = TestEnv::new(&format!("unroutable_{preset}")).await;
    // Type names of this test only: the exchanges are the broker's, shared with other tests.
    let namespace = env.name.clone();
    let subscribed = exchange(&namespace, "OrderShipped");
    let nobody = exchange(&namespace, "NobodyListens");
    declare_fanout_exchange(&env.channel, &subscribed).await;
    env.delete_exchange_at_cleanup(&subscribed);
    env.delete_exchange_at_cleanup(&nobody);
    let mut subscriber = consume_bound(
        &env.channel,
        &subscribed,
        &format!("{namespace}_sub"),
        "",
        false,
    )
    .await;
    let args = args_without_exchange(&env);
    let run = env.spawn_run_with(args, &["--preset", preset]);
    env.wait_slot_active(WAIT).await;

    let dropped = env
        .insert("order", &format!("{namespace}.NobodyListens"), "{\"n\": 1}")
        .await;
    let delivered = env
        .insert("order", &format!("{namespace}.OrderShipped"), "{\"n\": 2}")
        .await;
    let end = env.current_wal_lsn().await;
    let arrived = ids(&receive(&mut subscriber, 1, WAIT).await);
    let slot = env.wait_confirmed(end, WAIT).await;
    let later = ids(&receive_any(&mut subscriber, Duration::from_secs(2)).await);
    let log = env.run_log(run);
    let sessions_ended = log.matches("session ended").count();
    let dropped_metric = metric(
        &env,
        run,
        "walbox_unroutable_events_total{outcome=\"dropped\"}",
    )
    .await;
    eprintln!(
        "{preset}: the subscribed event delivered {} time(s) (+{} later); slot {slot} (WAL \
         {end}); sessions ended: {sessions_ended}; dropped metric {dropped_metric:?}",
        arrived.len(),
        later.len()
    );
    assert_eq!(arrived, [delivered], "the event with a subscriber arrives");
    assert!(later.is_empty(), "nothing is sent again: {later:?}");
    assert!(slot >= end, "the slot passes both events: {slot} < {end}");
    assert_eq!(sessions_ended, 0, "no retry; log:\n{log}");
    assert_eq!(dropped_metric, Some(1.0));
    assert!(
        log.contains("dropping an event no queue takes") && log.contains(&dropped),
        "the drop is logged with the event's id; log:\n{log}"
    );
}

/// Declare `name` as a durable fanout exchange, as the framework presets have walbox do.
async fn declare_fanout_exchange(channel: &lapin::Channel, name: &str) {
    channel
        .exchange_declare(
            name.into(),
            lapin::ExchangeKind::Fanout,
            lapin::options::ExchangeDeclareOptions {
                durable: true,
                ..Default::default()
            },
            lapin::types::FieldTable::default(),
        )
        .await
        .expect("declare fanout exchange");
}

#[tokio::test]
async fn masstransit_drops_an_event_nobody_subscribes_to() {
    // MassTransit's entity name: `Namespace:Type`.
    a_preset_drops_an_event_nobody_subscribes_to("masstransit", |namespace, name| {
        format!("{namespace}:{name}")
    })
    .await;
}

#[tokio::test]
async fn nservicebus_drops_an_event_nobody_subscribes_to() {
    // NServiceBus's conventional routing: `Namespace:Type`.
    a_preset_drops_an_event_nobody_subscribes_to("nservicebus", |namespace, name| {
        format!("{namespace}:{name}")
    })
    .await;
}

/// `--unroutable alternate-exchange`: walbox declares the exchange with an alternate exchange
/// (and that one with a queue), so an event no queue takes lands there: nothing held, nothing
/// dropped, nothing sent again, and the slot passes it.
#[tokio::test]
async fn an_alternate_exchange_takes_what_no_queue_takes() {
    let mut env = TestEnv::new("unroutable_ae").await;
    let events = format!("{}_events", env.name);
    let alternate = format!("{}_ae", env.name);
    env.delete_exchange_at_cleanup(&events);
    env.delete_exchange_at_cleanup(&alternate);
    env.delete_queue_at_cleanup(&alternate);
    let args = env.args_with("--exchange", &events);
    let flags = [
        "--unroutable",
        "alternate-exchange",
        "--alternate-exchange",
        &alternate,
    ];
    let run = env.spawn_run_with(args, &flags);
    env.wait_slot_active(WAIT).await;
    let mut orders = consume_bound(
        &env.channel,
        &events,
        &format!("{}_orders", env.name),
        "order.#",
        false,
    )
    .await;

    let unroutable = env.insert("nobody", "created", "{}").await;
    let routed = env.insert("order", "created", "{}").await;
    let end = env.current_wal_lsn().await;
    let arrived = ids(&receive(&mut orders, 1, WAIT).await);
    let slot = env.wait_confirmed(end, WAIT).await;
    // The alternate exchange's queue, declared by walbox, holds the unroutable event.
    let mut kept = env
        .channel
        .basic_consume(
            alternate.as_str().into(),
            "".into(),
            lapin::options::BasicConsumeOptions::default(),
            lapin::types::FieldTable::default(),
        )
        .await
        .expect("consume the alternate exchange's queue");
    let diverted = ids(&receive(&mut kept, 1, WAIT).await);
    let later = ids(&receive_any(&mut orders, Duration::from_secs(2)).await);
    let log = env.run_log(run);
    let sessions_ended = log.matches("session ended").count();
    eprintln!(
        "alternate exchange: routed event delivered {:?}, the unroutable one kept in {alternate}: \
         {:?}; slot {slot} (WAL {end}); sessions ended: {sessions_ended}",
        arrived.len(),
        diverted.len()
    );
    assert_eq!(arrived, [routed]);
    assert_eq!(
        diverted,
        [unroutable],
        "the alternate exchange's queue holds it"
    );
    assert!(later.is_empty(), "nothing is sent again: {later:?}");
    assert!(slot >= end, "the slot passes both events: {slot} < {end}");
    assert_eq!(sessions_ended, 0, "nothing held; log:\n{log}");
}

/// An exchange that exists without the alternate exchange `--unroutable alternate-exchange`
/// asks for cannot be declared with it: walbox stops with a definite error saying what to do.
#[tokio::test]
async fn an_existing_exchange_without_the_alternate_exchange_is_a_definite_error() {
    let mut env = TestEnv::new("unroutable_ae_existing").await;
    let alternate = format!("{}_ae", env.name);
    env.delete_exchange_at_cleanup(&alternate);
    env.delete_queue_at_cleanup(&alternate);
    // TestEnv declared the test's exchange without an alternate exchange.
    let output = env.walbox(
        "run",
        &[
            "--unroutable",
            "alternate-exchange",
            "--alternate-exchange",
            &alternate,
        ],
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("alternate exchange") && stderr.contains("--exchange-declare passive"),
        "{stderr}"
    );
}
