//! An outbox message → the AMQP 1.0 message a stream stores: the same contract as the AMQP
//! path, moved to where AMQP 1.0 keeps it.
//!
//! | AMQP 0-9-1 (the queue path)   | on a stream                                   |
//! |-------------------------------|-----------------------------------------------|
//! | body                          | body (one data section, the same bytes)       |
//! | message-id, correlation-id    | properties: message-id, correlation-id        |
//! | content-type, content-encoding| properties: content-type, content-encoding    |
//! | reply-to, user-id             | properties: reply-to, user-id                 |
//! | routing key                   | properties: subject                           |
//! | type, app-id, timestamp       | application properties `type`, `app-id`, `timestamp` (Unix seconds) |
//! | headers (x-commit-lsn, …)     | application properties, same names and values |
//!
//! Nested header tables and arrays become their text form; everything else keeps its type.

use amq_protocol::types::AMQPValue;
use rabbitmq_stream_client::types::{Message, SimpleValue};

use crate::outbox::OutboxMessage;

/// The stream message for `message`, numbered `publishing_id`.
pub(crate) fn stream_message(message: &OutboxMessage, publishing_id: u64) -> Message {
    let p = &message.properties;
    let mut properties = Message::builder()
        .body(message.body.to_vec())
        .publishing_id(publishing_id)
        .properties()
        .message_id(message.id.clone())
        .subject(message.routing_key.as_str());
    if let Some(correlation_id) = p.correlation_id() {
        properties = properties.correlation_id(correlation_id.as_str().to_owned());
    }
    if let Some(content_type) = p.content_type() {
        properties = properties.content_type(content_type.as_str());
    }
    if let Some(content_encoding) = p.content_encoding() {
        properties = properties.content_encoding(content_encoding.as_str());
    }
    if let Some(reply_to) = p.reply_to() {
        properties = properties.reply_to(reply_to.as_str().to_owned());
    }
    if let Some(user_id) = p.user_id() {
        properties = properties.user_id(user_id.as_str().as_bytes().to_vec());
    }
    let mut application = properties.message_builder().application_properties();
    if let Some(kind) = p.kind() {
        application = application.insert("type", kind.as_str());
    }
    if let Some(app_id) = p.app_id() {
        application = application.insert("app-id", app_id.as_str());
    }
    if let Some(timestamp) = p.timestamp() {
        application = application.insert(
            "timestamp",
            SimpleValue::Long(i64::try_from(*timestamp).unwrap_or(i64::MAX)),
        );
    }
    if let Some(headers) = p.headers() {
        for (name, value) in headers.inner() {
            application = application.insert(name.as_str(), simple_value(value));
        }
    }
    application.message_builder().build()
}

/// A 64-bit integer as AMQP 1.0 `long`, except one in -128..=127, which goes as `int`:
/// rabbitmq-stream-protocol 0.11 writes such a long in its 2-byte `smalllong` form but counts
/// 3 bytes for it, so the publish frame's length is one byte too long and the broker misreads
/// the frames after it ("unknown command"; the connection fails, again on every retry).
/// `int`'s small form is counted right. (Seen with a non-transactional logical message's
/// `x-xid` 0; a headers column's `{"n": 7}` did the same.)
fn long(n: i64) -> SimpleValue {
    match i8::try_from(n) {
        Ok(small) => SimpleValue::Int(i32::from(small)),
        Err(_) => SimpleValue::Long(n),
    }
}

fn simple_value(value: &AMQPValue) -> SimpleValue {
    match value {
        AMQPValue::Boolean(flag) => SimpleValue::Boolean(*flag),
        AMQPValue::ShortShortInt(n) => SimpleValue::Byte(*n),
        AMQPValue::ShortShortUInt(n) => SimpleValue::Ubyte(*n),
        AMQPValue::ShortInt(n) => SimpleValue::Short(*n),
        AMQPValue::ShortUInt(n) => SimpleValue::Ushort(*n),
        AMQPValue::LongInt(n) => SimpleValue::Int(*n),
        AMQPValue::LongUInt(n) => SimpleValue::Uint(*n),
        AMQPValue::LongLongInt(n) => long(*n),
        AMQPValue::Float(n) => SimpleValue::Float((*n).into()),
        AMQPValue::Double(n) => SimpleValue::Double((*n).into()),
        AMQPValue::ShortString(text) => SimpleValue::String(text.as_str().to_owned()),
        AMQPValue::LongString(text) => {
            SimpleValue::String(String::from_utf8_lossy(text.as_bytes()).into_owned())
        }
        AMQPValue::Timestamp(seconds) => {
            SimpleValue::Long(i64::try_from(*seconds).unwrap_or(i64::MAX))
        }
        AMQPValue::ByteArray(bytes) => SimpleValue::Binary(bytes.as_slice().to_vec()),
        AMQPValue::Void => SimpleValue::Null,
        other => SimpleValue::String(format!("{other:?}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use amq_protocol::protocol::BasicProperties;
    use amq_protocol::types::{FieldTable, ShortString};
    use bytes::Bytes;

    #[test]
    fn the_contract_moves_to_amqp_1_0() {
        let mut headers = FieldTable::default();
        headers.insert(
            "x-commit-lsn".into(),
            AMQPValue::LongString("0/16B3748".into()),
        );
        headers.insert("n".into(), AMQPValue::LongLongInt(7));
        let message = OutboxMessage {
            exchange: None,
            routing_key: ShortString::from("order.created"),
            body: Bytes::from_static(b"{\"a\":1}"),
            properties: BasicProperties::default()
                .with_content_type("application/json".into())
                .with_type("order.created".into())
                .with_timestamp(1_700_000_000)
                .with_headers(headers),
            id: "e-1".into(),
            headers_warning: None,
            partition_key: None,
        };
        let stream = stream_message(&message, 42);
        assert_eq!(stream.publishing_id(), Some(&42));
        assert_eq!(stream.data(), Some(&b"{\"a\":1}"[..]));
        let properties = stream.properties().expect("properties");
        assert_eq!(properties.subject.as_deref(), Some("order.created"));
        let application = stream
            .application_properties()
            .expect("application properties");
        assert_eq!(
            application.get("x-commit-lsn"),
            Some(&SimpleValue::String("0/16B3748".into()))
        );
        assert_eq!(application.get("n"), Some(&SimpleValue::Int(7)));
        assert_eq!(
            application.get("type"),
            Some(&SimpleValue::String("order.created".into()))
        );
        assert_eq!(
            application.get("timestamp"),
            Some(&SimpleValue::Long(1_700_000_000))
        );
    }

    #[test]
    fn every_integer_header_is_counted_as_long_as_it_is_encoded() {
        use rabbitmq_stream_protocol::codec::Encoder;
        for n in [0, 1, -1, 127, -128, 128, -129, 70_000, i64::MAX, i64::MIN] {
            let mut headers = FieldTable::default();
            headers.insert("x-xid".into(), AMQPValue::LongLongInt(n));
            let message = OutboxMessage {
                exchange: None,
                routing_key: ShortString::from("k"),
                body: Bytes::from_static(b"{}"),
                properties: BasicProperties::default().with_headers(headers),
                id: "e-1".into(),
                headers_warning: None,
                partition_key: None,
            };
            let stream = stream_message(&message, 1);
            let mut written = Vec::new();
            stream.encode(&mut written).unwrap();
            assert_eq!(
                written.len(),
                stream.encoded_size() as usize,
                "header value {n}: the frame length must be the bytes written"
            );
        }
    }
}
