//! walbox's message properties (amq-protocol's types, in which the message contract builds
//! them) in amqprs's types, for the amqprs publisher and its declares.

use amq_protocol::protocol::BasicProperties as WalboxProperties;
use amq_protocol::types::{AMQPValue, FieldTable as WalboxTable};
use amqprs::{BasicProperties, FieldTable, FieldValue};

/// walbox's message properties (amq-protocol's types, as the message contract builds them)
/// in amqprs's types.
pub(super) fn properties(from: &WalboxProperties) -> BasicProperties {
    let mut to = BasicProperties::default();
    let text =
        |value: &Option<amq_protocol::types::ShortString>| value.as_ref().map(|v| v.to_string());
    if let Some(v) = text(from.message_id()) {
        to.with_message_id(&v);
    }
    if let Some(v) = text(from.content_type()) {
        to.with_content_type(&v);
    }
    if let Some(v) = text(from.content_encoding()) {
        to.with_content_encoding(&v);
    }
    if let Some(v) = text(from.kind()) {
        to.with_message_type(&v);
    }
    if let Some(v) = text(from.app_id()) {
        to.with_app_id(&v);
    }
    if let Some(v) = text(from.correlation_id()) {
        to.with_correlation_id(&v);
    }
    if let Some(v) = text(from.reply_to()) {
        to.with_reply_to(&v);
    }
    if let Some(v) = text(from.expiration()) {
        to.with_expiration(&v);
    }
    if let Some(v) = text(from.user_id()) {
        to.with_user_id(&v);
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
    use super::*;
    use amq_protocol::types::{FieldArray, ShortString};

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
}
