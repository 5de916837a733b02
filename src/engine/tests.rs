//! In-process tests of the session engine with the live policy: a scripted replication
//! stream, the in-memory publisher answering as each test case says, and a check, at every
//! acknowledgement, that the flush LSN never passes an event the broker did not positively
//! confirm — whatever mix of confirms, nacks, returns, closed channels and lost connections,
//! with outbox rows and logical decoding messages (relayed or not, in a transaction or not)
//! mixed in the stream — nor one the guard had not proven the publication to cover.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use clap::Parser;
use proptest::prelude::*;
use tokio::sync::{Semaphore, watch};

use super::guard::{Guard, Proof};
use super::poison::Poison;
use super::session::{End, Session};
use super::{Changes, Live, Supervisor};
use crate::config::{Cli, Command, Config, RunConfig};
use crate::error::{Error, Result};
use crate::lsn::Lsn;
use crate::outbox::Transaction;
use crate::pgoutput::fixture::{RELATION_ID, outbox_relation, row};
use crate::pgoutput::{ColumnValue, Insert, LogicalMessage, Message};
use crate::publish::memory::{Broker, MemoryPublisher};
use crate::publish::{Outcome, Position, Refused};
use crate::source::{Change, Origin};
use crate::telemetry::Telemetry;

/// walbox relaying the logical messages of prefix `ev` (and not `other`).
fn config() -> Config {
    config_with(&[])
}

/// The same with walbox run's `flags` added.
fn config_with(flags: &[&str]) -> Config {
    let argv = ["walbox", "run", "--messages", "ev"].iter().chain(flags);
    let Command::Run(run) = Cli::try_parse_from(argv).unwrap().command else {
        unreachable!()
    };
    Config::from_args(&run.common).unwrap()
}

/// A logical decoding message: relayed (prefix `ev`) or not (`other`).
fn logical(transactional: bool, relayed: bool, lsn: Lsn, id: &str) -> Change {
    Change::Message(Message::Message(LogicalMessage {
        flags: u8::from(transactional),
        lsn,
        prefix: if relayed { "ev" } else { "other" }.into(),
        content: bytes::Bytes::from(format!(r#"{{"script_id": "{id}"}}"#)),
    }))
}

/// One item of a scripted transaction.
#[derive(Clone, Copy, Debug)]
enum Item {
    Row,
    /// A transactional logical message; relayed or not.
    Message(bool),
}

/// A scripted transaction: its items, whether an idle keepalive follows, and whether a
/// non-transactional logical message follows (relayed or not).
#[derive(Clone, Debug)]
struct Tx {
    items: Vec<Item>,
    keepalive: bool,
    after: Option<bool>,
}

/// Transactions of rows only (the shape of the first tests).
fn rows_only(transactions: &[(usize, bool)]) -> Vec<Tx> {
    transactions
        .iter()
        .map(|&(size, keepalive)| Tx {
            items: vec![Item::Row; size],
            keepalive,
            after: None,
        })
        .collect()
}

fn insert(id: &str) -> Change {
    Change::Message(Message::Insert(Insert {
        relation_id: RELATION_ID,
        new_tuple: row(&[
            Some(id),
            Some("order"),
            Some("o-1"),
            Some("created"),
            Some(r#"{"n": 1}"#),
            None,
            Some("2026-12-02 10:00:00+00"),
        ]),
    }))
}

/// An event of the script: its script id and the LSN that, once the flush LSN passes it,
/// lets PostgreSQL forget the event (its transaction's commit record; for a non-transactional
/// logical message, the byte before the end of its record).
#[derive(Clone, Debug)]
struct Event {
    id: String,
    commit_lsn: Lsn,
}

impl Event {
    fn new(id: &str, commit_lsn: Lsn) -> Event {
        Event {
            id: id.to_owned(),
            commit_lsn,
        }
    }
}

/// The script id of a published message: a row's id, or the id inside a logical message's
/// content.
fn script_id(message: &crate::outbox::OutboxMessage) -> String {
    match serde_json::from_slice::<serde_json::Value>(&message.body) {
        Ok(serde_json::Value::Object(object)) if object.contains_key("script_id") => {
            object["script_id"].as_str().unwrap_or_default().to_owned()
        }
        _ => message.id.clone(),
    }
}

/// The scripted replication stream. Every acknowledgement is checked against what the broker
/// confirmed at that moment.
struct Script {
    changes: VecDeque<Change>,
    events: Vec<Event>,
    broker: Broker,
    acknowledged: Arc<Mutex<Vec<Lsn>>>,
    violations: Arc<Mutex<Vec<String>>>,
    /// The guard's proof as the test last set it.
    proven: Arc<Mutex<Lsn>>,
    /// `--unroutable drop`: an event the broker returned may be passed too.
    drops_returns: bool,
}

impl Changes for Script {
    async fn next(&mut self) -> Result<Option<Change>> {
        match self.changes.pop_front() {
            Some(change) => Ok(Some(change)),
            // A live stream that has nothing more to say stays open.
            None => std::future::pending().await,
        }
    }

    fn acknowledge(&self, lsn: Lsn) {
        self.acknowledged.lock().unwrap().push(lsn);
        let proven = *self.proven.lock().unwrap();
        if lsn > proven {
            self.violations.lock().unwrap().push(format!(
                "acknowledged {lsn} past the guard's proof {proven}"
            ));
        }
        let sent = self.broker.sent.lock().unwrap();
        for event in &self.events {
            // PostgreSQL may forget everything before `lsn`: the event's transaction is gone
            // once `lsn` passes its commit record.
            if lsn <= event.commit_lsn {
                continue;
            }
            let confirmed = sent.iter().any(|sent| {
                script_id(&sent.message) == event.id
                    && (sent.confirmed || (self.drops_returns && sent.returned))
            });
            if !confirmed {
                self.violations.lock().unwrap().push(format!(
                    "acknowledged {lsn} past event {} (commit {}) which the broker has not confirmed",
                    event.id, event.commit_lsn
                ));
            }
        }
    }
}

/// What the broker does next.
#[derive(Clone, Debug)]
enum Action {
    Confirm(usize),
    Nack(usize),
    Return(usize),
    /// The broker closes the channel in answer to one message (406: too large).
    Close(usize),
    LoseConnection,
    /// The guard proves the publication covered the table up to this many bytes further.
    Prove(u16),
    /// Let the engine run for a while.
    Wait,
}

fn actions() -> impl Strategy<Value = Vec<Action>> {
    proptest::collection::vec(
        prop_oneof![
            12 => any::<usize>().prop_map(Action::Confirm),
            1 => any::<usize>().prop_map(Action::Nack),
            1 => any::<usize>().prop_map(Action::Return),
            1 => any::<usize>().prop_map(Action::Close),
            1 => Just(Action::LoseConnection),
            3 => any::<u16>().prop_map(Action::Prove),
            4 => Just(Action::Wait),
        ],
        0..60,
    )
}

/// Transactions of 0 to 3 events (rows and logical messages), each followed or not by an idle
/// keepalive and by a non-transactional logical message.
fn transactions() -> impl Strategy<Value = Vec<Tx>> {
    let item = prop_oneof![3 => Just(Item::Row), 1 => any::<bool>().prop_map(Item::Message)];
    let tx = (
        proptest::collection::vec(item, 0..4),
        any::<bool>(),
        proptest::option::of(any::<bool>()),
    )
        .prop_map(|(items, keepalive, after)| Tx {
            items,
            keepalive,
            after,
        });
    proptest::collection::vec(tx, 1..12)
}

fn script(transactions: &[Tx], broker: &Broker) -> Script {
    let mut changes = VecDeque::new();
    let mut events = Vec::new();
    let mut lsn = 0x1000u64;
    for (number, tx) in transactions.iter().enumerate() {
        let commit_lsn = Lsn(lsn + 0x80);
        changes.push_back(Change::Begin(Transaction {
            xid: 1000 + number as u32,
            commit_lsn,
            commit_time_micros: 0,
        }));
        if number == 0 {
            changes.push_back(Change::Message(Message::Relation(outbox_relation())));
        }
        for (index, item) in tx.items.iter().enumerate() {
            let id = format!("{number}-{index}");
            match item {
                Item::Row => changes.push_back(insert(&id)),
                Item::Message(relayed) => {
                    changes.push_back(logical(true, *relayed, Lsn(lsn + 0x10), &id))
                }
            }
            if matches!(item, Item::Row | Item::Message(true)) {
                events.push(Event::new(&id, commit_lsn));
            }
        }
        changes.push_back(Change::Commit {
            end_lsn: Lsn(commit_lsn.0 + 0x20),
        });
        if tx.keepalive {
            changes.push_back(Change::Keepalive {
                wal_end: Lsn(commit_lsn.0 + 0x40),
            });
        }
        if let Some(relayed) = tx.after {
            // Its record ends at commit + 0x48: PostgreSQL may forget it once the flush LSN
            // gets there.
            let end = Lsn(commit_lsn.0 + 0x48);
            let id = format!("{number}-after");
            changes.push_back(logical(false, relayed, end, &id));
            if relayed {
                events.push(Event::new(&id, Lsn(end.0 - 1)));
            }
        }
        lsn += 0x100;
    }
    Script {
        changes,
        events,
        broker: broker.clone(),
        acknowledged: Arc::default(),
        violations: Arc::default(),
        proven: Arc::default(),
        drops_returns: false,
    }
}

/// Answer the `pick`-th unanswered message (if any) with `outcome`.
fn answer(broker: &Broker, pick: usize, outcome: impl FnOnce() -> Outcome) -> bool {
    let mut sent = broker.sent.lock().unwrap();
    let open: Vec<usize> = (0..sent.len())
        .filter(|&i| !sent[i].confirmed && sent[i].is_open())
        .collect();
    match open.get(pick % open.len().max(1)) {
        Some(&index) => sent[index].answer(outcome()),
        None => false,
    }
}

async fn settle() {
    for _ in 0..32 {
        tokio::task::yield_now().await;
    }
}

/// Run one session over the script while the broker acts; returns how it ended, what was
/// acknowledged, the violations seen, and whether everything was confirmed in the end.
fn run_case(transactions: &[Tx], actions: &[Action]) -> (Vec<String>, bool, Vec<Lsn>, Lsn) {
    let (violations, complete, acknowledged, last, _) = run_case_sent(transactions, actions);
    (violations, complete, acknowledged, last)
}

/// What the broker got: script id, message id, position, in publishing order.
type Published = Vec<(String, String, Position)>;

/// [`run_case`], with what was published.
fn run_case_sent(
    transactions: &[Tx],
    actions: &[Action],
) -> (Vec<String>, bool, Vec<Lsn>, Lsn, Published) {
    run_case_sent_with(transactions, actions, &[])
}

/// [`run_case`] with walbox run's `flags`.
fn run_case_with(
    transactions: &[Tx],
    actions: &[Action],
    flags: &[&str],
) -> (Vec<String>, bool, Vec<Lsn>, Lsn) {
    let (violations, complete, acknowledged, last, _) =
        run_case_sent_with(transactions, actions, flags);
    (violations, complete, acknowledged, last)
}

/// [`run_case_sent`] with walbox run's `flags`.
fn run_case_sent_with(
    transactions: &[Tx],
    actions: &[Action],
    flags: &[&str],
) -> (Vec<String>, bool, Vec<Lsn>, Lsn, Published) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let config = config_with(flags);
        let telemetry = Arc::new(Telemetry::default());
        let broker = Broker::default();
        let mut script = script(transactions, &broker);
        script.drops_returns = config.unroutable == crate::config::Unroutable::Drop;
        let last_boundary = script
            .changes
            .iter()
            .filter_map(|change| match change {
                Change::Commit { end_lsn } => Some(*end_lsn),
                Change::Keepalive { wal_end } => Some(*wal_end),
                Change::Message(Message::Message(message)) if !message.transactional() => {
                    Some(message.lsn)
                }
                _ => None,
            })
            .max()
            .unwrap();
        let acknowledged = Arc::clone(&script.acknowledged);
        let violations = Arc::clone(&script.violations);
        let proven = Arc::clone(&script.proven);
        let (guard, prove) = Guard::manual(Proof::default());
        let start = Lsn(0x100);
        let window = Arc::new(Semaphore::new(config.max_in_flight));
        let mut session = Session::start(
            &config,
            script,
            MemoryPublisher::new(broker.clone()),
            start,
            Arc::clone(&window),
            false,
            &telemetry,
        );
        session.guard_with(guard);
        // The proof moves first, the acknowledgement after it.
        let prove_to = |lsn: Lsn| {
            let mut proven = proven.lock().unwrap();
            *proven = (*proven).max(lsn);
            let through = *proven;
            prove.send_modify(|proof| proof.through = through);
        };
        let mut poison = Poison::new(5, None);
        let mut live = Live {
            config: &config,
            telemetry: &telemetry,
            poison: &mut poison,
            window,
            careful: false,
        };
        let (stop, mut shutdown) = watch::channel(false);
        let mut refused = false;
        let driver = async {
            settle().await;
            for action in actions {
                match action {
                    Action::Confirm(pick) => {
                        answer(&broker, *pick, || Outcome::Confirmed);
                    }
                    Action::Nack(pick) => {
                        refused |= answer(&broker, *pick, || Outcome::Refused(Refused::Nacked));
                    }
                    Action::Return(pick) => {
                        refused |= answer(&broker, *pick, || {
                            Outcome::Refused(Refused::Returned {
                                reply_code: 312,
                                reply_text: "NO_ROUTE".into(),
                                exchange: "outbox".into(),
                                routing_key: "order.created".into(),
                            })
                        });
                    }
                    Action::Close(pick) => {
                        refused |= answer(&broker, *pick, || {
                            Outcome::Refused(Refused::ChannelClosed {
                                reply_code: 406,
                                reply_text: "PRECONDITION_FAILED - message size 70000 is larger than configured max size 65536".into(),
                            })
                        });
                    }
                    Action::LoseConnection => {
                        broker.lose_connection();
                        refused = true;
                    }
                    Action::Prove(bytes) => {
                        let current = *proven.lock().unwrap();
                        prove_to(Lsn(current.as_u64().max(0x1000) + u64::from(*bytes)));
                    }
                    Action::Wait => tokio::time::sleep(std::time::Duration::from_millis(2)).await,
                }
                settle().await;
            }
            // The guard proves everything in the end: a session that was not refused must then
            // reach the last boundary.
            prove_to(Lsn(u64::MAX));
            // Without a refusal, the broker confirms whatever is still open.
            if !refused {
                while answer(&broker, 0, || Outcome::Confirmed) {}
                settle().await;
            }
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            settle().await;
            let _ = stop.send(true);
        };
        let (end, ()) = tokio::join!(session.run(&mut live, &mut shutdown), driver);
        let complete = match end {
            End::Stopped => {
                let drained = session.drain(Some(std::time::Duration::from_secs(1))).await;
                drained.verdict.ok() == Some(last_boundary)
            }
            _ => false,
        };
        let acknowledged = acknowledged.lock().unwrap().clone();
        let published = broker
            .sent
            .lock()
            .unwrap()
            .iter()
            .map(|sent| (script_id(&sent.message), sent.message.id.clone(), sent.position))
            .collect();
        let violations = violations.lock().unwrap().clone();
        (
            violations,
            complete || refused,
            acknowledged,
            last_boundary,
            published,
        )
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// The flush LSN never passes an event that was not positively confirmed; and a session
    /// whose broker confirmed everything gets the flush LSN to the last boundary.
    #[test]
    fn the_flush_lsn_never_passes_an_unconfirmed_event(
        transactions in transactions(),
        actions in actions(),
    ) {
        let (violations, complete_unless_refused, acknowledged, _) = run_case(&transactions, &actions);
        prop_assert!(violations.is_empty(), "{violations:?}");
        prop_assert!(complete_unless_refused, "everything was confirmed, yet the flush LSN stopped short");
        prop_assert!(acknowledged.windows(2).all(|pair| pair[0] <= pair[1]), "went backwards: {acknowledged:?}");
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    /// With `--unroutable drop`, the flush LSN passes a returned event, and still never one
    /// that was nacked, lost with the connection or refused with the channel.
    #[test]
    fn dropping_returns_passes_nothing_else_unconfirmed(
        transactions in transactions(),
        actions in actions(),
    ) {
        let (violations, _, acknowledged, _) =
            run_case_with(&transactions, &actions, &["--unroutable", "drop"]);
        prop_assert!(violations.is_empty(), "{violations:?}");
        prop_assert!(acknowledged.windows(2).all(|pair| pair[0] <= pair[1]), "went backwards: {acknowledged:?}");
    }
}

#[test]
fn a_nack_holds_the_flush_lsn_before_its_transaction() {
    // Two transactions of two events; the second event of the first is nacked.
    let transactions = [(2, false), (2, false)];
    let actions = [
        Action::Confirm(0),
        Action::Nack(0),
        Action::Confirm(0),
        Action::Confirm(0),
    ];
    let (violations, _, acknowledged, _) = run_case(&rows_only(&transactions), &actions);
    assert!(violations.is_empty(), "{violations:?}");
    assert!(
        acknowledged.iter().all(|&lsn| lsn <= Lsn(0x1080)),
        "acknowledged past the nacked event's commit: {acknowledged:?}"
    );
}

#[test]
fn confirming_everything_acknowledges_the_last_commit() {
    let transactions = [(1, false), (3, true), (0, false), (2, false)];
    let (violations, complete, acknowledged, last) = run_case(
        &rows_only(&transactions),
        &[Action::Confirm(1), Action::Wait],
    );
    assert!(violations.is_empty(), "{violations:?}");
    assert!(complete);
    assert_eq!(acknowledged.last(), Some(&last));
}

/// A stop request while the in-flight window is full and no verdict ever comes (a broker that
/// blocks publishers) ends the session at once, and the drain gives up after its grace with
/// the flush LSN before every unanswered event.
#[test]
fn a_stop_with_the_window_full_and_no_confirms_ends_within_the_grace() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let config = config();
        let telemetry = Arc::new(Telemetry::default());
        let broker = Broker::default();
        // Eight one-event transactions, a window of two: the third publish waits for a permit.
        let script = script(&rows_only(&[(1, false); 8]), &broker);
        let start = Lsn(0x100);
        let window = Arc::new(Semaphore::new(2));
        let mut session = Session::start(
            &config,
            script,
            MemoryPublisher::new(broker.clone()),
            start,
            Arc::clone(&window),
            false,
            &telemetry,
        );
        let mut poison = Poison::new(5, None);
        let mut live = Live {
            config: &config,
            telemetry: &telemetry,
            poison: &mut poison,
            window,
            careful: false,
        };
        let (stop, mut shutdown) = watch::channel(false);
        let stopper = async {
            settle().await;
            assert_eq!(broker.sent.lock().unwrap().len(), 2, "the window is full");
            let _ = stop.send(true);
        };
        let stopped = tokio::time::timeout(std::time::Duration::from_secs(5), async {
            tokio::join!(session.run(&mut live, &mut shutdown), stopper).0
        })
        .await
        .expect("the session ends when asked to stop, though a publish is waiting");
        assert!(matches!(stopped, End::Stopped), "{stopped:?}");
        let grace = std::time::Duration::from_millis(200);
        let asked = std::time::Instant::now();
        let drained = session.drain(Some(grace)).await;
        assert!(
            asked.elapsed() < grace * 5,
            "the drain took {:?}",
            asked.elapsed()
        );
        assert!(drained.verdict.is_err(), "nothing was confirmed");
        assert_eq!(
            drained.flushed, start,
            "the flush LSN stays before the unanswered events"
        );
    });
}

/// One session of six one-event transactions with `window`: the broker returns the first
/// message once the engine has published what the window lets it. How the session ended, and
/// how many messages went out before the return.
fn published_before_a_return(
    config: &Config,
    window: Arc<Semaphore>,
    careful: bool,
) -> (End, usize) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let telemetry = Arc::new(Telemetry::default());
        let broker = Broker::default();
        let script = script(&rows_only(&[(1, false); 6]), &broker);
        let mut session = Session::start(
            config,
            script,
            MemoryPublisher::new(broker.clone()),
            Lsn(0x100),
            Arc::clone(&window),
            false,
            &telemetry,
        );
        let mut poison = Poison::new(5, None);
        let mut live = Live {
            config,
            telemetry: &telemetry,
            poison: &mut poison,
            window,
            careful,
        };
        let (_stop, mut shutdown) = watch::channel(false);
        let broker_answers = async {
            settle().await;
            let sent = broker.sent.lock().unwrap().len();
            answer(&broker, 0, || {
                Outcome::Refused(Refused::Returned {
                    reply_code: 312,
                    reply_text: "NO_ROUTE".into(),
                    exchange: "outbox".into(),
                    routing_key: "order.created".into(),
                })
            });
            sent
        };
        let (end, sent) = tokio::join!(session.run(&mut live, &mut shutdown), broker_answers);
        (end, sent)
    })
}

/// After a return (or a nack) the next sessions publish one message at a time until the held
/// event is confirmed: retrying it does not send the events after it again each time.
#[test]
fn a_held_event_is_retried_alone() {
    let Command::Run(args) = Cli::try_parse_from(["walbox", "run"]).unwrap().command else {
        unreachable!()
    };
    let config = Config::from_args(&args.common).unwrap();
    let run = RunConfig::from_args(&args).unwrap();
    let telemetry = Arc::new(Telemetry::default());
    let mut supervisor = Supervisor::new(&config, &run, &telemetry);

    let (window, careful) = supervisor.window();
    let (end, sent) = published_before_a_return(&config, window, careful);
    assert_eq!(
        sent, 6,
        "the full window: every event went out before the verdict"
    );
    let End::Failed(failure) = end else {
        panic!("a return ends the session: {end:?}");
    };
    assert!(
        matches!(&failure.error, Error::Held(held) if held.event_id == "0-0"),
        "{failure:?}"
    );
    supervisor.delay_after(failure).unwrap();

    for _retry in 0..3 {
        let (window, careful) = supervisor.window();
        assert!(careful);
        let (end, sent) = published_before_a_return(&config, window, careful);
        assert_eq!(sent, 1, "only the held event goes out again");
        let End::Failed(failure) = end else {
            panic!("{end:?}");
        };
        supervisor.delay_after(failure).unwrap();
    }
    // Once the flush LSN passes the held event, the full window again.
    let _ = supervisor.poison.progressed(Lsn(0x1100));
    assert!(!supervisor.window().1);
}

#[test]
fn rows_and_messages_keep_their_order_and_their_positions() {
    use crate::outbox::message_id::from_position;
    let transactions = [Tx {
        items: vec![
            Item::Row,
            Item::Message(true),
            Item::Message(false),
            Item::Row,
            Item::Message(true),
        ],
        keepalive: false,
        after: Some(true),
    }];
    let (violations, complete, acknowledged, last, published) =
        run_case_sent(&transactions, &[Action::Wait]);
    assert!(violations.is_empty(), "{violations:?}");
    assert!(complete);
    assert_eq!(acknowledged.last(), Some(&last));
    let commit = Lsn(0x1080);
    let script_ids: Vec<&str> = published.iter().map(|(id, _, _)| id.as_str()).collect();
    // In stream order; the message of prefix `other` is not published but holds index 2.
    assert_eq!(script_ids, ["0-0", "0-1", "0-3", "0-4", "0-after"]);
    let positions: Vec<Position> = published.iter().map(|(_, _, p)| *p).collect();
    let at = |index| Position {
        commit_lsn: commit,
        index,
    };
    assert_eq!(
        positions,
        [
            at(0),
            at(1),
            at(3),
            at(4),
            Position::of_message(Lsn(0x10C8))
        ]
    );
    // A logical message's id is the id of its position (rows here have ids of their own).
    assert_eq!(published[1].1, from_position(commit, 1));
    assert_eq!(published[4].1, from_position(Lsn(0x10C0), 524_287));
}

/// One session over `transactions` whose broker confirms everything and whose guard proves
/// only up to `proven`, then trips (or not); how it ended and what was acknowledged.
fn guarded_case(transactions: &[(usize, bool)], proven: Lsn, trip: bool) -> (End, Vec<Lsn>) {
    let broker = Broker::default();
    let script = script(&rows_only(transactions), &broker);
    let proof = Proof {
        through: proven,
        ..Proof::default()
    };
    guarded_script(script, &broker, (proof, None), trip)
}

/// [`guarded_case`] over a script made (and perhaps changed) by the caller.
/// `guard`: the guard's proof, and the server the session streams from (told the guard before
/// the session runs; resuming at 0x100).
fn guarded_script(
    script: Script,
    broker: &Broker,
    guard: (Proof, Option<Origin>),
    trip: bool,
) -> (End, Vec<Lsn>) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let config = config();
        let telemetry = Arc::new(Telemetry::default());
        let acknowledged = Arc::clone(&script.acknowledged);
        let window = Arc::new(Semaphore::new(config.max_in_flight));
        let mut session = Session::start(
            &config,
            script,
            MemoryPublisher::new(broker.clone()),
            Lsn(0x100),
            Arc::clone(&window),
            false,
            &telemetry,
        );
        let (proof, follows) = guard;
        let (guard, prove) = Guard::manual(proof);
        if let Some(on) = follows {
            guard.follow(on, Lsn(0x100));
        }
        session.guard_with(guard);
        let mut poison = Poison::new(5, None);
        let mut live = Live {
            config: &config,
            telemetry: &telemetry,
            poison: &mut poison,
            window,
            careful: false,
        };
        let (stop, mut shutdown) = watch::channel(false);
        let driver = async {
            settle().await;
            while answer(broker, 0, || Outcome::Confirmed) {}
            settle().await;
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            if trip {
                prove.send_modify(|proof| proof.tripped = Some("publication p was dropped".into()));
            }
            settle().await;
            let _ = stop.send(true);
        };
        let (end, ()) = tokio::join!(session.run(&mut live, &mut shutdown), driver);
        let acknowledged = acknowledged.lock().unwrap().clone();
        (end, acknowledged)
    })
}

#[test]
fn acknowledgements_wait_for_the_guards_proof() {
    // Everything is confirmed, but the guard proved the publication only up to 0x1150, inside
    // the second transaction (commits at 0x1080 and 0x1180).
    let (end, acknowledged) = guarded_case(&[(2, false), (2, true)], Lsn(0x1150), false);
    assert!(matches!(end, End::Stopped), "{end:?}");
    assert_eq!(acknowledged, vec![Lsn(0x1150)]);
}

fn timeline(timeline: u32) -> Origin {
    Origin {
        system_id: "7716301900226987530".into(),
        timeline,
    }
}

#[test]
fn after_a_failover_the_old_primarys_proof_acknowledges_nothing() {
    // The guard proved through 0x5000 on timeline 1; the session resumed at 0x100 on the
    // promoted standby (timeline 2), whose commits at 0x1080 and 0x1180 the broker confirms.
    // No reading was taken on timeline 2 yet: 0x5000 says nothing about its WAL.
    let broker = Broker::default();
    let script = script(&rows_only(&[(1, true), (1, true)]), &broker);
    let proof = Proof {
        through: Lsn(0x5000),
        on: Some(timeline(1)),
        ..Proof::default()
    };
    let (end, acknowledged) = guarded_script(script, &broker, (proof, Some(timeline(2))), false);
    assert!(matches!(end, End::Stopped), "{end:?}");
    assert_eq!(acknowledged, Vec::<Lsn>::new());
}

#[test]
fn on_the_same_server_the_proof_carries_over_to_the_next_session() {
    let broker = Broker::default();
    let script = script(&rows_only(&[(1, true), (1, true)]), &broker);
    let proof = Proof {
        through: Lsn(0x5000),
        on: Some(timeline(1)),
        ..Proof::default()
    };
    let (end, acknowledged) = guarded_script(script, &broker, (proof, Some(timeline(1))), false);
    assert!(matches!(end, End::Stopped), "{end:?}");
    assert!(
        acknowledged.last().is_some_and(|&lsn| lsn >= Lsn(0x1180)),
        "{acknowledged:?}"
    );
}

#[test]
fn a_tripped_guard_ends_the_session_with_its_definite_error() {
    let (end, acknowledged) = guarded_case(&[(1, false), (1, true)], Lsn(0x1000), true);
    let End::Failed(failure) = end else {
        panic!("the session must fail, ended {end:?}");
    };
    assert!(!failure.error.is_transient(), "{}", failure.error);
    assert!(failure.error.to_string().contains("was dropped"));
    assert!(
        acknowledged.iter().all(|&lsn| lsn <= Lsn(0x1000)),
        "{acknowledged:?}"
    );
}

#[test]
fn an_unchanged_toast_marker_in_an_outbox_insert_is_a_definite_stop() {
    // Two transactions of one row each (commits at 0x1080 and 0x1180); the second row's
    // payload comes as pgoutput's "unchanged TOAST" marker, which PostgreSQL never writes in an
    // insert. Read as NULL it would go out as an event with an empty payload.
    let broker = Broker::default();
    let mut script = script(&rows_only(&[(1, true), (1, true)]), &broker);
    let second = script
        .changes
        .iter_mut()
        .filter_map(|change| match change {
            Change::Message(Message::Insert(insert)) => Some(insert),
            _ => None,
        })
        .nth(1)
        .unwrap();
    second.new_tuple.columns[4] = ColumnValue::UnchangedToast;
    let proof = Proof {
        through: Lsn(u64::MAX),
        ..Proof::default()
    };
    let (end, acknowledged) = guarded_script(script, &broker, (proof, None), false);
    let End::Failed(failure) = end else {
        panic!("the session must fail, ended {end:?}");
    };
    let message = failure.error.to_string();
    assert!(!failure.error.is_transient(), "{message}");
    assert!(message.contains("column `payload`"), "{message}");
    assert!(message.contains("x-commit-lsn 0/1180"), "{message}");
    // The first event went out and was confirmed; the second never reached the broker, and
    // nothing at or past its commit was acknowledged.
    let sent: Vec<String> = broker
        .sent
        .lock()
        .unwrap()
        .iter()
        .map(|sent| script_id(&sent.message))
        .collect();
    assert_eq!(sent, vec!["0-0".to_owned()]);
    assert!(
        acknowledged.iter().all(|&lsn| lsn <= Lsn(0x1180)),
        "{acknowledged:?}"
    );
}
