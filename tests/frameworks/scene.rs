//! Harness pieces the framework scenes share: the framework's own broker objects (deleted
//! afterwards), declares and bindings as a framework's consumer makes them, and checks on what arrived.

use super::*;

/// [`TestEnv::args`] without `--exchange`, so the preset's exchange applies.
pub(crate) fn preset_args(env: &TestEnv) -> Vec<String> {
    let mut args = env.args();
    let at = args
        .iter()
        .position(|arg| arg == "--exchange")
        .expect("TestEnv::args names the exchange");
    args.drain(at..at + 2);
    args
}

/// Queues and exchanges a scene declares under the framework's own names; deleted when the
/// scene ends, even when it fails.
pub(crate) struct BrokerObjects {
    pub(crate) queues: Vec<String>,
    pub(crate) exchanges: Vec<String>,
}

impl BrokerObjects {
    pub(crate) fn new() -> BrokerObjects {
        BrokerObjects {
            queues: Vec::new(),
            exchanges: Vec::new(),
        }
    }
}

impl Drop for BrokerObjects {
    fn drop(&mut self) {
        let queues = std::mem::take(&mut self.queues);
        let exchanges = std::mem::take(&mut self.exchanges);
        let cleanup = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async move {
                let Ok(amqp) =
                    Connection::connect(&amqp_url(), ConnectionProperties::default()).await
                else {
                    return;
                };
                let Ok(channel) = amqp.create_channel().await else {
                    return;
                };
                for queue in queues {
                    let _ = channel
                        .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
                        .await;
                }
                for exchange in exchanges {
                    let _ = channel
                        .exchange_delete(exchange.as_str().into(), ExchangeDeleteOptions::default())
                        .await;
                }
                let _ = amqp.close(200, "cleanup".into()).await;
            });
        });
        let _ = cleanup.join();
    }
}

pub(crate) async fn declare_exchange(
    channel: &Channel,
    objects: &mut BrokerObjects,
    name: &str,
    kind: ExchangeKind,
    durable: bool,
    auto_delete: bool,
) {
    channel
        .exchange_declare(
            name.into(),
            kind,
            ExchangeDeclareOptions {
                durable,
                auto_delete,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap_or_else(|error| panic!("declare exchange {name}: {error}"));
    objects.exchanges.push(name.to_owned());
}

pub(crate) async fn declare_queue(
    channel: &Channel,
    objects: &mut BrokerObjects,
    name: &str,
    options: QueueDeclareOptions,
    arguments: FieldTable,
) {
    channel
        .queue_declare(name.into(), options, arguments)
        .await
        .unwrap_or_else(|error| panic!("declare queue {name}: {error}"));
    objects.queues.push(name.to_owned());
}

pub(crate) async fn bind_queue(channel: &Channel, queue: &str, exchange: &str, routing_key: &str) {
    channel
        .queue_bind(
            queue.into(),
            exchange.into(),
            routing_key.into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap_or_else(|error| panic!("bind {queue} to {exchange}: {error}"));
}

pub(crate) async fn bind_exchange(channel: &Channel, destination: &str, source: &str) {
    channel
        .exchange_bind(
            destination.into(),
            source.into(),
            "".into(),
            ExchangeBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap_or_else(|error| panic!("bind exchange {source} -> {destination}: {error}"));
}

pub(crate) async fn consume(channel: &Channel, queue: &str) -> Consumer {
    channel
        .basic_consume(
            queue.into(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap_or_else(|error| panic!("consume {queue}: {error}"))
}

/// `walbox run` with `args` and `extra`, once it streams from its slot. Fails at once, with
/// walbox's log, when walbox exits instead (a refused preset, a topology mismatch).
pub(crate) async fn start_walbox(env: &mut TestEnv, args: Vec<String>, extra: &[&str]) -> usize {
    let run = env.spawn_run_with(args, extra);
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        if let Some(status) = env.try_wait(run) {
            panic!("walbox exited ({status}); log:\n{}", env.run_log(run));
        }
        let streaming = env
            .db
            .query_opt(
                "SELECT 1 FROM pg_replication_slots s JOIN pg_stat_replication r \
                 ON r.pid = s.active_pid WHERE s.slot_name = $1",
                &[&env.name],
            )
            .await
            .expect("slot state")
            .is_some();
        if streaming {
            return run;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "walbox never started streaming; log:\n{}",
            env.run_log(run)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Receive exactly `count` messages, then make sure no other one comes (the framework's later
/// UPDATEs of its rows must not be relayed).
pub(crate) async fn receive_exactly(
    env: &TestEnv,
    run: usize,
    consumer: &mut Consumer,
    count: usize,
) -> Vec<Delivery> {
    let deliveries = receive(consumer, count, WAIT).await;
    assert_eq!(
        deliveries.len(),
        count,
        "expected {count} messages; walbox log:\n{}",
        env.run_log(run)
    );
    // walbox delivers at least once: after a reconnect a message may come again, identical and
    // from the same commit (x-commit-lsn). Anything else — an UPDATE relayed would come from
    // a later commit — is a message the framework's writes must not have caused.
    let same = |a: &Delivery, b: &Delivery| {
        a.exchange == b.exchange
            && a.routing_key == b.routing_key
            && a.data == b.data
            && header_text(a, "x-commit-lsn") == header_text(b, "x-commit-lsn")
    };
    let unexpected: Vec<String> = receive_any(consumer, QUIET)
        .await
        .iter()
        .filter(|extra| !deliveries.iter().any(|delivery| same(delivery, extra)))
        .map(|extra| String::from_utf8_lossy(&extra.data).into_owned())
        .collect();
    assert!(
        unexpected.is_empty(),
        "{} message(s) besides the inserts (an UPDATE relayed?): {unexpected:?}",
        unexpected.len()
    );
    deliveries
}

pub(crate) fn body_json(delivery: &Delivery) -> Value {
    serde_json::from_slice(&delivery.data).unwrap_or_else(|error| {
        panic!(
            "body is not JSON ({error}): {}",
            String::from_utf8_lossy(&delivery.data)
        )
    })
}

pub(crate) fn json_of(text: &str) -> Value {
    serde_json::from_str(text).expect("test JSON")
}

pub(crate) fn content_type(delivery: &Delivery) -> Option<&str> {
    delivery
        .properties
        .content_type()
        .as_ref()
        .map(ShortString::as_str)
}

pub(crate) fn type_property(delivery: &Delivery) -> Option<&str> {
    delivery.properties.kind().as_ref().map(ShortString::as_str)
}

pub(crate) fn headers(delivery: &Delivery) -> Option<&BTreeMap<ShortString, AMQPValue>> {
    delivery
        .properties
        .headers()
        .as_ref()
        .map(|table| table.inner())
}

/// A header that must be an AMQP long string (what .NET's RabbitMQ client hands consumers as
/// byte[], which CAP, NServiceBus and eShop decode as UTF-8).
pub(crate) fn string_header(delivery: &Delivery, key: &str) -> String {
    match headers(delivery).and_then(|table| table.get(key)) {
        Some(AMQPValue::LongString(text)) => String::from_utf8_lossy(text.as_bytes()).into_owned(),
        other => panic!("header {key} is not a string: {other:?}"),
    }
}

/// .NET's `Guid.TryParse` in its usual "D" form (8-4-4-4-12 hex digits).
pub(crate) fn is_guid(text: &str) -> bool {
    let groups: Vec<&str> = text.split('-').collect();
    groups.len() == 5
        && groups
            .iter()
            .zip([8, 4, 4, 4, 12])
            .all(|(group, len)| group.len() == len && group.chars().all(|c| c.is_ascii_hexdigit()))
}

/// Whether PostgreSQL parses `text` as a timestamp with time zone (ISO 8601 / RFC 3339, as
/// System.Text.Json and the CloudEvents SDKs read `time` and `sentTime`).
pub(crate) async fn is_timestamp(env: &TestEnv, text: &str) -> bool {
    text.contains('T')
        && env
            .db
            .query_one("SELECT $1::text::timestamptz", &[&text])
            .await
            .is_ok()
}

/// Hold the framework's fixed-name exchange (`cap.default.router`, `eshop_event_bus`) for one
/// test at a time: every test of that framework declares it and deletes it when it ends, which
/// would remove another running test's bindings. Take it before declaring anything; the guard,
/// dropped last, outlives the test's [`BrokerObjects`].
pub(crate) async fn exclusive(exchange: &str) -> tokio::sync::OwnedMutexGuard<()> {
    static LOCKS: std::sync::Mutex<BTreeMap<String, std::sync::Arc<tokio::sync::Mutex<()>>>> =
        std::sync::Mutex::new(BTreeMap::new());
    let lock = std::sync::Arc::clone(
        LOCKS
            .lock()
            .unwrap()
            .entry(exchange.to_owned())
            .or_default(),
    );
    lock.lock_owned().await
}
