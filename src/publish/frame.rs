//! The size of a message's AMQP 0-9-1 content-header frame, whichever client sends it: the
//! broker closes the whole connection (501 FRAME_ERROR) when one frame exceeds the negotiated
//! `frame_max`, so walbox measures the frame first and refuses the message itself.
//!
//! A message's body is split over as many body frames as it needs, but its properties and
//! headers table travel in one content-header frame that cannot be split.

use amq_protocol::frame::WriteContext;
use amq_protocol::protocol::BasicProperties;
use amq_protocol::protocol::basic::gen_properties;

/// Frame type, channel and payload size in front; the frame-end octet behind.
const FRAME_OVERHEAD: usize = 1 + 2 + 4 + 1;
/// The content header's class id, weight and body size before the properties.
const HEADER_FIELDS: usize = 2 + 2 + 8;

/// The whole content-header frame of a message with `properties`, in bytes, encoded as
/// amq-protocol encodes it (the encoding both lapin and the broker use).
pub(crate) fn content_header_size(properties: &BasicProperties) -> usize {
    let encoded = gen_properties(properties)(WriteContext::from(Vec::with_capacity(256)));
    // Encoding into a Vec cannot fail; were it to, an unmeasurable header is treated as too
    // large rather than sent blind.
    let properties = encoded.map_or(usize::MAX - FRAME_OVERHEAD - HEADER_FIELDS, |written| {
        written.write.len()
    });
    FRAME_OVERHEAD + HEADER_FIELDS + properties
}

/// Why a message with `properties` cannot go out on a connection whose `frame_max` is given
/// (0: no limit), or `None` when it fits.
pub(crate) fn too_large(properties: &BasicProperties, frame_max: u32) -> Option<String> {
    if frame_max == 0 {
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
    use amq_protocol::types::{AMQPValue, FieldTable, LongString};

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
}
