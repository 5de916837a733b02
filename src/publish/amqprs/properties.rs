//! walbox's message properties (amq-protocol's types, in which the message contract builds
//! them) in amqprs's types, for the amqprs publisher and its declares.

use amq_protocol::protocol::BasicProperties as WalboxProperties;
use amq_protocol::types::{AMQPValue, FieldTable as WalboxTable, ShortString};
use amqprs::{BasicProperties, FieldTable, FieldValue};

/// walbox's message properties (amq-protocol's types, as the message contract builds them)
/// in amqprs's types.
pub(super) fn properties(from: &WalboxProperties) -> BasicProperties {
    let mut to = BasicProperties::default();
    // amqprs copies the text it is given into its own strings: lend it walbox's (no
    // `to_string()` through `Display` and a second copy for each field of each event).
    fn text(value: &Option<ShortString>) -> Option<&str> {
        value.as_ref().map(ShortString::as_str)
    }
    if let Some(v) = text(from.message_id()) {
        to.with_message_id(v);
    }
    if let Some(v) = text(from.content_type()) {
        to.with_content_type(v);
    }
    if let Some(v) = text(from.content_encoding()) {
        to.with_content_encoding(v);
    }
    if let Some(v) = text(from.kind()) {
        to.with_message_type(v);
    }
    if let Some(v) = text(from.app_id()) {
        to.with_app_id(v);
    }
    if let Some(v) = text(from.correlation_id()) {
        to.with_correlation_id(v);
    }
    if let Some(v) = text(from.reply_to()) {
        to.with_reply_to(v);
    }
    if let Some(v) = text(from.expiration()) {
        to.with_expiration(v);
    }
    if let Some(v) = text(from.user_id()) {
        to.with_user_id(v);
    }
    if let Some(v) = *from.delivery_mode() {
        to.with_delivery_mode(v);
    }
    if let Some(v) = *from.priority() {
        to.with_priority(v);
    }
    if let Some(v) = *from.timestamp() {
        to.with_timestamp(v);
    }
    if let Some(headers) = from.headers() {
        to.with_headers(table(headers));
    }
    to
}

pub(super) fn table(from: &WalboxTable) -> FieldTable {
    let mut to = FieldTable::new();
    for (name, value) in from {
        if let Ok(name) = name.as_str().try_into() {
            to.insert(name, field(value));
        }
    }
    to
}

/// One header value. A long string that is not UTF-8 travels as a byte array (amqprs's long
/// strings are Rust strings).
fn field(value: &AMQPValue) -> FieldValue {
    match value {
        AMQPValue::Boolean(v) => FieldValue::t(*v),
        AMQPValue::ShortShortInt(v) => FieldValue::b(*v),
        AMQPValue::ShortShortUInt(v) => FieldValue::B(*v),
        AMQPValue::ShortInt(v) => FieldValue::s(*v),
        AMQPValue::ShortUInt(v) => FieldValue::u(*v),
        AMQPValue::LongInt(v) => FieldValue::I(*v),
        AMQPValue::LongUInt(v) => FieldValue::i(*v),
        AMQPValue::LongLongInt(v) => FieldValue::l(*v),
        AMQPValue::Float(v) => FieldValue::f(*v),
        AMQPValue::Double(v) => FieldValue::d(*v),
        AMQPValue::DecimalValue(v) => {
            FieldValue::D(amqprs::DecimalValue::new(v.scale, v.value as i32))
        }
        AMQPValue::ShortString(v) => long_string(v.as_str().as_bytes()),
        AMQPValue::LongString(v) => long_string(v.as_bytes()),
        AMQPValue::FieldArray(values) => {
            let values: Vec<FieldValue> = values.as_slice().iter().map(field).collect();
            values.try_into().map_or(FieldValue::V, FieldValue::A)
        }
        AMQPValue::Timestamp(v) => FieldValue::T(*v),
        AMQPValue::FieldTable(v) => FieldValue::F(table(v)),
        AMQPValue::ByteArray(v) => v
            .as_slice()
            .to_vec()
            .try_into()
            .map_or(FieldValue::V, FieldValue::x),
        AMQPValue::Void => FieldValue::V,
    }
}

fn long_string(bytes: &[u8]) -> FieldValue {
    match std::str::from_utf8(bytes)
        .ok()
        .and_then(|text| text.try_into().ok())
    {
        Some(text) => FieldValue::S(text),
        None => bytes
            .to_vec()
            .try_into()
            .map_or(FieldValue::V, FieldValue::x),
    }
}

/// How many bytes longer amqprs's content header is than amq-protocol's for `from`: a short
/// string header value travels as a long string (amqprs has no short-string field), 3 bytes
/// more each. The frame check measures amq-protocol's encoding and subtracts this.
pub(super) fn widening(from: &WalboxProperties) -> u32 {
    from.headers().as_ref().map_or(0, widening_of_table)
}

fn widening_of_table(table: &WalboxTable) -> u32 {
    table.into_iter().map(|(_, value)| widening_of(value)).sum()
}

fn widening_of(value: &AMQPValue) -> u32 {
    match value {
        AMQPValue::ShortString(_) => 3,
        AMQPValue::FieldTable(table) => widening_of_table(table),
        AMQPValue::FieldArray(values) => values.as_slice().iter().map(widening_of).sum(),
        _ => 0,
    }
}

#[cfg(test)]
mod tests {
    use amq_protocol::types::{FieldArray, LongString};

    use super::*;

    #[test]
    fn short_strings_widen_by_three_bytes_each_nested_too() {
        let mut inner = WalboxTable::default();
        inner.insert("s".into(), AMQPValue::ShortString(ShortString::from("x")));
        let mut headers = WalboxTable::default();
        headers.insert("a".into(), AMQPValue::ShortString(ShortString::from("y")));
        headers.insert("t".into(), AMQPValue::FieldTable(inner));
        let array = FieldArray::from(vec![AMQPValue::ShortString(ShortString::from("z"))]);
        headers.insert("l".into(), AMQPValue::FieldArray(array));
        headers.insert("n".into(), AMQPValue::LongInt(7));
        let properties = WalboxProperties::default().with_headers(headers);
        assert_eq!(widening(&properties), 9);
        assert_eq!(widening(&WalboxProperties::default()), 0);
    }

    /// Every property and header walbox sets survives the conversion, with its value.
    #[test]
    fn every_property_and_header_arrives_as_it_was() {
        let mut headers = WalboxTable::default();
        let long = |text: &str| AMQPValue::LongString(LongString::from(text));
        headers.insert("aggregate_type".into(), long("order"));
        headers.insert("x-commit-lsn".into(), long("0/16B3748"));
        headers.insert("x-xid".into(), AMQPValue::LongLongInt(771));
        headers.insert("x-replay".into(), AMQPValue::Boolean(false));
        let bytes = AMQPValue::LongString(LongString::from(vec![0xff, 0x00]));
        headers.insert("raw".into(), bytes);
        let from = WalboxProperties::default()
            .with_message_id(ShortString::from("6c1b1c2e-0f6a-5b8e-9d1e-3f0c7a9b2d41"))
            .with_content_type(ShortString::from("application/json"))
            .with_content_encoding(ShortString::from("identity"))
            .with_type(ShortString::from("order.created"))
            .with_app_id(ShortString::from("walbox"))
            .with_correlation_id(ShortString::from("c-1"))
            .with_reply_to(ShortString::from("replies"))
            .with_expiration(ShortString::from("60000"))
            .with_user_id(ShortString::from("guest"))
            .with_delivery_mode(2)
            .with_priority(5)
            .with_timestamp(1_765_000_000)
            .with_headers(headers);
        let to = properties(&from);
        fn text(value: Option<&String>) -> Option<&str> {
            value.map(String::as_str)
        }
        assert_eq!(
            text(to.message_id()),
            Some("6c1b1c2e-0f6a-5b8e-9d1e-3f0c7a9b2d41")
        );
        assert_eq!(text(to.content_type()), Some("application/json"));
        assert_eq!(text(to.content_encoding()), Some("identity"));
        assert_eq!(text(to.message_type()), Some("order.created"));
        assert_eq!(text(to.app_id()), Some("walbox"));
        assert_eq!(text(to.correlation_id()), Some("c-1"));
        assert_eq!(text(to.reply_to()), Some("replies"));
        assert_eq!(text(to.expiration()), Some("60000"));
        assert_eq!(text(to.user_id()), Some("guest"));
        assert_eq!(to.delivery_mode(), Some(2));
        assert_eq!(to.priority(), Some(5));
        assert_eq!(to.timestamp(), Some(1_765_000_000));
        let headers = to.headers().expect("the headers").as_ref();
        let header = |name: &str| {
            headers
                .get(&name.try_into().expect("a short name"))
                .cloned()
        };
        assert_eq!(headers.len(), 5);
        assert_eq!(header("aggregate_type"), Some("order".into()));
        assert_eq!(header("x-commit-lsn"), Some("0/16B3748".into()));
        assert_eq!(header("x-xid"), Some(FieldValue::l(771)));
        assert_eq!(header("x-replay"), Some(FieldValue::t(false)));
        let raw = vec![0xff, 0x00].try_into().expect("a byte array");
        assert_eq!(header("raw"), Some(FieldValue::x(raw)));
    }
}
