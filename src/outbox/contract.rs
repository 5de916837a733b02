//! The message contract (docs: concepts/message-contract.md): the AMQP properties and walbox's own
//! headers that every message walbox publishes carries. Events ([`super::OutboxShape`]) and
//! dead-letter records (`crate::engine::poison`) both build them here, so the two cannot drift
//! apart.

use amq_protocol::protocol::BasicProperties;
use amq_protocol::types::{AMQPValue, FieldTable, LongString, ShortString};

use super::Transaction;
use super::timestamp::postgres_micros_to_unix_micros;
use crate::encode::TraceContext;

/// AMQP delivery mode 2: the broker writes the message to disk.
pub(crate) const PERSISTENT: u8 = 2;

/// The `app_id` of every message walbox publishes.
const APP_ID: &str = "walbox";

/// Header: the aggregate type column's value (when the column is mapped).
pub(crate) const AGGREGATE_TYPE: &str = "x-aggregate-type";
/// Header: the aggregate id column's value (when the column is mapped).
pub(crate) const AGGREGATE_ID: &str = "x-aggregate-id";
/// Header: the LSN of the event's commit record.
pub(crate) const COMMIT_LSN: &str = "x-commit-lsn";
/// Header: the event's transaction id.
pub(crate) const XID: &str = "x-xid";
/// Header: `true` on a message sent again by `walbox replay`.
pub(crate) const REPLAY: &str = "x-replay";
/// Header: `true` on a message read from the table rather than the WAL (the cut-over
/// backfill, `walbox backfill`). Never dead-lettered, so not among [`WALBOX_HEADERS`].
pub(crate) const BACKFILL: &str = "x-backfill";

/// Header: the event's W3C `traceparent` (README "Trace context").
pub(crate) const TRACEPARENT: &str = "traceparent";
/// Header: the event's W3C `tracestate`, only with a traceparent.
pub(crate) const TRACESTATE: &str = "tracestate";

/// The headers walbox itself writes. Every other header comes from the row (its headers
/// column), a `--header` template or the body encoding.
pub(crate) const WALBOX_HEADERS: [&str; 5] =
    [AGGREGATE_TYPE, AGGREGATE_ID, COMMIT_LSN, XID, REPLAY];

/// What one message's properties say; the rest of the contract (persistent, `app_id`) is the
/// same for every message.
pub(crate) struct Properties {
    /// None only when the id does not fit AMQP's 255 bytes (a row that could not become a
    /// message, sent to the dead-letter exchange).
    pub(crate) message_id: Option<ShortString>,
    pub(crate) content_type: Option<ShortString>,
    /// Seconds since the Unix epoch.
    pub(crate) timestamp: u64,
    /// Left out when None.
    pub(crate) message_type: Option<ShortString>,
}

impl Properties {
    /// The AMQP properties of the contract, carrying `headers`.
    pub(crate) fn build(self, headers: FieldTable) -> BasicProperties {
        let mut properties = BasicProperties::default()
            .with_delivery_mode(PERSISTENT)
            .with_timestamp(self.timestamp)
            .with_app_id(ShortString::from(APP_ID))
            .with_headers(headers);
        if let Some(message_id) = self.message_id {
            properties = properties.with_message_id(message_id);
        }
        if let Some(content_type) = self.content_type {
            properties = properties.with_content_type(content_type);
        }
        if let Some(message_type) = self.message_type {
            properties = properties.with_type(message_type);
        }
        properties
    }
}

/// The timestamp property of an event without a usable `created_at`: its commit time.
pub(crate) fn commit_timestamp(transaction: &Transaction) -> u64 {
    seconds(postgres_micros_to_unix_micros(
        transaction.commit_time_micros,
    ))
}

/// Unix microseconds → the timestamp property (whole seconds; 0 before 1970).
pub(crate) fn seconds(unix_micros: i64) -> u64 {
    u64::try_from(unix_micros.div_euclid(1_000_000)).unwrap_or(0)
}

/// `x-commit-lsn` and `x-xid`: where the event stands in the WAL.
pub(crate) fn add_position_headers(headers: &mut FieldTable, transaction: &Transaction) {
    headers.insert(
        COMMIT_LSN.into(),
        AMQPValue::LongString(LongString::from(transaction.commit_lsn.to_string())),
    );
    headers.insert(
        XID.into(),
        AMQPValue::LongLongInt(i64::from(transaction.xid)),
    );
}

/// `x-aggregate-type` and `x-aggregate-id`, each when its column is mapped (Some; an empty
/// text for NULL).
pub(crate) fn add_aggregate_headers(
    headers: &mut FieldTable,
    aggregate_type: Option<&str>,
    aggregate_id: Option<&str>,
) {
    for (name, value) in [
        (AGGREGATE_TYPE, aggregate_type),
        (AGGREGATE_ID, aggregate_id),
    ] {
        if let Some(value) = value {
            headers.insert(
                name.into(),
                AMQPValue::LongString(LongString::from(value.as_bytes())),
            );
        }
    }
}

/// `traceparent` and `tracestate` (when it has one): the event's trace context where W3C
/// Trace Context propagators on AMQP look for it, whatever the body encoding. They replace a
/// header of the same name from the row, so the pair always belongs together.
pub(crate) fn add_trace_headers(headers: &mut FieldTable, trace: &TraceContext<'_>) {
    headers.insert(
        TRACEPARENT.into(),
        AMQPValue::LongString(LongString::from(trace.traceparent)),
    );
    match trace.tracestate {
        Some(tracestate) => {
            headers.insert(
                TRACESTATE.into(),
                AMQPValue::LongString(LongString::from(tracestate)),
            );
        }
        // A tracestate the row gave with another traceparent (rare): the table has no
        // remove, so it is rebuilt without it.
        None if headers.contains_key(TRACESTATE) => {
            let mut kept = headers.inner().clone();
            kept.remove(TRACESTATE);
            *headers = FieldTable::from(kept);
        }
        None => {}
    }
}

/// `x-replay: true`.
pub(crate) fn add_replay_header(headers: &mut FieldTable) {
    headers.insert(REPLAY.into(), AMQPValue::Boolean(true));
}

/// `headers` with `x-backfill: true` in place of `x-commit-lsn` and `x-xid`: a row read from
/// the table has no commit of walbox's knowing (its insert may be long gone from the WAL).
pub(crate) fn backfilled(headers: &FieldTable) -> FieldTable {
    let mut kept: std::collections::BTreeMap<ShortString, AMQPValue> = headers
        .inner()
        .iter()
        .filter(|(name, _)| ![COMMIT_LSN, XID].contains(&name.as_str()))
        .map(|(name, value)| (name.clone(), value.clone()))
        .collect();
    kept.insert(BACKFILL.into(), AMQPValue::Boolean(true));
    kept.into()
}
