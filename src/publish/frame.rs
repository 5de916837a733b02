//! The size of a message's AMQP 0-9-1 content-header frame, whichever client sends it: the
//! broker closes the whole connection (501 FRAME_ERROR) when one frame exceeds the negotiated
//! `frame_max`, so walbox measures the frame first and refuses the message itself.
//!
//! A message's body is split over as many body frames as it needs, but its properties and
//! headers table travel in one content-header frame that cannot be split.

use amq_protocol::frame::WriteContext;
use amq_protocol::protocol::BasicProperties;
use amq_protocol::protocol::basic::gen_properties;
use amq_protocol::types::{AMQPValue, FieldTable, ShortString};

/// Frame type, channel and payload size in front; the frame-end octet behind.
const FRAME_OVERHEAD: usize = 1 + 2 + 4 + 1;
/// The content header's class id, weight and body size before the properties.
const HEADER_FIELDS: usize = 2 + 2 + 8;
/// The property flags: one short, as basic's 14 properties need no continuation flag.
const PROPERTY_FLAGS: usize = 2;

/// The whole content-header frame of a message with `properties`, in bytes, encoded as
/// amq-protocol encodes it (the encoding both lapin and the broker use). It allocates and
/// encodes: the hot path asks [`content_header_bound`] first and comes here only near the limit.
pub(crate) fn content_header_size(properties: &BasicProperties) -> usize {
    let encoded = gen_properties(properties)(WriteContext::from(Vec::with_capacity(256)));
    // Encoding into a Vec cannot fail; were it to, an unmeasurable header is treated as too
    // large rather than sent blind.
    let properties = encoded.map_or(usize::MAX - FRAME_OVERHEAD - HEADER_FIELDS, |written| {
        written.write.len()
    });
    FRAME_OVERHEAD + HEADER_FIELDS + properties
}

/// An upper bound of [`content_header_size`], added up from the properties' lengths without
/// encoding or allocating. Every length prefix and type tag is counted at its full width, so
/// it never falls below the encoded size (today it equals it; the tests compare the two on
/// varied headers). Saturating: an absurd header only makes the bound larger.
pub(crate) fn content_header_bound(properties: &BasicProperties) -> usize {
    let short = |value: &Option<ShortString>| value.as_ref().map_or(0, |s| 1 + s.as_str().len());
    let octet = |value: &Option<u8>| usize::from(value.is_some());
    let strings = [
        properties.content_type(),
        properties.content_encoding(),
        properties.correlation_id(),
        properties.reply_to(),
        properties.expiration(),
        properties.message_id(),
        properties.kind(),
        properties.user_id(),
        properties.app_id(),
        properties.cluster_id(),
    ];
    let fixed = octet(properties.delivery_mode())
        + octet(properties.priority())
        + properties.timestamp().map_or(0, |_| 8);
    strings
        .into_iter()
        .map(short)
        .fold(
            FRAME_OVERHEAD + HEADER_FIELDS + PROPERTY_FLAGS + fixed,
            usize::saturating_add,
        )
        .saturating_add(properties.headers().as_ref().map_or(0, table_bound))
}

/// A field table: its 4-byte length, then each name (a short string) and tagged value.
fn table_bound(table: &FieldTable) -> usize {
    table.inner().iter().fold(4usize, |sum, (name, value)| {
        sum.saturating_add(1 + name.as_str().len())
            .saturating_add(value_bound(value))
    })
}

/// One value of a table or array: its 1-byte type tag, then the value as AMQP 0-9-1 lays it
/// out (strings, arrays and byte arrays behind a length prefix).
fn value_bound(value: &AMQPValue) -> usize {
    let payload = match value {
        AMQPValue::Void => 0,
        AMQPValue::Boolean(_) | AMQPValue::ShortShortInt(_) | AMQPValue::ShortShortUInt(_) => 1,
        AMQPValue::ShortInt(_) | AMQPValue::ShortUInt(_) => 2,
        AMQPValue::LongInt(_) | AMQPValue::LongUInt(_) | AMQPValue::Float(_) => 4,
        AMQPValue::DecimalValue(_) => 5,
        AMQPValue::LongLongInt(_) | AMQPValue::Double(_) | AMQPValue::Timestamp(_) => 8,
        AMQPValue::ShortString(text) => 1usize.saturating_add(text.as_str().len()),
        AMQPValue::LongString(text) => 4usize.saturating_add(text.as_bytes().len()),
        AMQPValue::ByteArray(bytes) => 4usize.saturating_add(bytes.as_slice().len()),
        AMQPValue::FieldArray(items) => items
            .as_slice()
            .iter()
            .fold(4usize, |sum, item| sum.saturating_add(value_bound(item))),
        AMQPValue::FieldTable(table) => table_bound(table),
    };
    1 + payload
}

/// Why a message with `properties` cannot go out on a connection whose `frame_max` is given
/// (0: no limit), or `None` when it fits. Per event, so the bound decides alone when it fits;
/// only a header near or above the limit is encoded to be measured exactly (and a bound that
/// over-counts then refuses nothing that fits).
pub(crate) fn too_large(properties: &BasicProperties, frame_max: u32) -> Option<String> {
    if frame_max == 0 || content_header_bound(properties) <= frame_max as usize {
        return None;
    }
    let size = content_header_size(properties);
    (size > frame_max as usize).then(|| {
        format!(
            "its properties and headers need a {size}-byte content-header frame, above the \
             connection's negotiated frame_max of {frame_max} bytes (the broker would close \
             the connection with 501 FRAME_ERROR)"
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use amq_protocol::frame::{AMQPContentHeader, AMQPFrame, gen_frame};
    use amq_protocol::types::{ByteArray, DecimalValue, FieldArray, LongString};
    use proptest::prelude::*;

    fn with_header(size: usize) -> BasicProperties {
        let mut headers = FieldTable::default();
        headers.insert(
            "x-big".into(),
            AMQPValue::LongString(LongString::from("h".repeat(size))),
        );
        BasicProperties::default()
            .with_message_id("m-1".into())
            .with_headers(headers)
    }

    #[test]
    fn the_size_is_the_encoded_frames() {
        for properties in [
            BasicProperties::default(),
            with_header(10),
            with_header(5000),
        ] {
            let frame = AMQPFrame::Header(
                1,
                AMQPContentHeader {
                    class_id: 60,
                    body_size: 42,
                    properties: properties.clone(),
                },
            );
            let encoded = gen_frame(&frame)(WriteContext::from(Vec::new())).unwrap();
            assert_eq!(content_header_size(&properties), encoded.write.len());
            assert_eq!(content_header_bound(&properties), encoded.write.len());
        }
    }

    #[test]
    fn a_header_over_the_frame_is_refused_with_its_size() {
        assert_eq!(too_large(&with_header(1000), 131_072), None);
        assert_eq!(too_large(&with_header(200_000), 0), None);
        let reason = too_large(&with_header(200_000), 131_072).expect("too large");
        // 2 flag bytes, the message id (1 + 3), the table (4 + 1 + 5 + 1 + 4 + 200,000) and
        // the 20 bytes around them. RabbitMQ compares the frame's payload (the size minus 8)
        // with frame_max minus 8: the same test.
        assert!(reason.contains("200041-byte"), "{reason}");
        assert!(reason.contains("131072"), "{reason}");
    }

    /// Names and short strings stay within the 255 bytes a short string can carry.
    fn short() -> impl Strategy<Value = String> {
        "[a-z0-9._-]{0,40}|[\\PC]{0,30}".prop_filter("a short string", |s| s.len() <= 255)
    }

    /// Every kind of field value, tables and arrays nested a few levels deep.
    fn value() -> impl Strategy<Value = AMQPValue> {
        let leaf = prop_oneof![
            Just(AMQPValue::Void),
            any::<bool>().prop_map(AMQPValue::Boolean),
            any::<i8>().prop_map(AMQPValue::ShortShortInt),
            any::<u8>().prop_map(AMQPValue::ShortShortUInt),
            any::<i16>().prop_map(AMQPValue::ShortInt),
            any::<u16>().prop_map(AMQPValue::ShortUInt),
            any::<i32>().prop_map(AMQPValue::LongInt),
            any::<u32>().prop_map(AMQPValue::LongUInt),
            any::<i64>().prop_map(AMQPValue::LongLongInt),
            any::<f32>().prop_map(AMQPValue::Float),
            any::<f64>().prop_map(AMQPValue::Double),
            (any::<u8>(), any::<u32>())
                .prop_map(|(scale, value)| AMQPValue::DecimalValue(DecimalValue { scale, value })),
            any::<u64>().prop_map(AMQPValue::Timestamp),
            short().prop_map(|s| AMQPValue::ShortString(s.into())),
            ".{0,600}".prop_map(|s| AMQPValue::LongString(LongString::from(s))),
            prop::collection::vec(any::<u8>(), 0..300)
                .prop_map(|b| AMQPValue::ByteArray(ByteArray::from(b))),
        ];
        leaf.prop_recursive(3, 48, 6, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..6)
                    .prop_map(|items| AMQPValue::FieldArray(FieldArray::from(items))),
                table(inner).prop_map(AMQPValue::FieldTable),
            ]
        })
    }

    fn table(values: impl Strategy<Value = AMQPValue>) -> impl Strategy<Value = FieldTable> {
        prop::collection::vec((short(), values), 0..8).prop_map(|entries| {
            let mut table = FieldTable::default();
            for (name, value) in entries {
                table.insert(name.into(), value);
            }
            table
        })
    }

    /// Each property present or absent, the headers any table.
    fn properties() -> impl Strategy<Value = BasicProperties> {
        let strings = prop::collection::vec(prop::option::of(short()), 10);
        let numbers = (
            prop::option::of(any::<u8>()),
            prop::option::of(any::<u8>()),
            prop::option::of(any::<u64>()),
        );
        (strings, numbers, prop::option::of(table(value()))).prop_map(
            |(strings, (mode, priority, timestamp), headers)| {
                let mut text = strings.into_iter().map(|s| s.map(ShortString::from));
                let mut properties = BasicProperties::default();
                let setters: [fn(BasicProperties, ShortString) -> BasicProperties; 10] = [
                    BasicProperties::with_content_type,
                    BasicProperties::with_content_encoding,
                    BasicProperties::with_correlation_id,
                    BasicProperties::with_reply_to,
                    BasicProperties::with_expiration,
                    BasicProperties::with_message_id,
                    BasicProperties::with_type,
                    BasicProperties::with_user_id,
                    BasicProperties::with_app_id,
                    BasicProperties::with_cluster_id,
                ];
                for set in setters {
                    if let Some(Some(value)) = text.next() {
                        properties = set(properties, value);
                    }
                }
                if let Some(mode) = mode {
                    properties = properties.with_delivery_mode(mode);
                }
                if let Some(priority) = priority {
                    properties = properties.with_priority(priority);
                }
                if let Some(timestamp) = timestamp {
                    properties = properties.with_timestamp(timestamp);
                }
                if let Some(headers) = headers {
                    properties = properties.with_headers(headers);
                }
                properties
            },
        )
    }

    proptest! {
        /// The cheap bound never under-counts the encoded frame (a message it lets through
        /// fits), and is not loose either (the exact encode stays the rare path).
        #[test]
        fn the_bound_covers_the_encoded_size(properties in properties()) {
            let exact = content_header_size(&properties);
            let bound = content_header_bound(&properties);
            prop_assert!(bound >= exact, "bound {} below the encoded {}", bound, exact);
            prop_assert_eq!(bound, exact);
        }

        /// With the bound in front, the verdict is still the exact size's, at every limit
        /// around it.
        #[test]
        fn the_verdict_is_the_exact_sizes(properties in properties(), slack in -64i64..64) {
            let exact = content_header_size(&properties);
            let frame_max = u32::try_from((exact as i64 + slack).max(1)).unwrap();
            prop_assert_eq!(
                too_large(&properties, frame_max).is_some(),
                exact > frame_max as usize
            );
        }
    }
}
