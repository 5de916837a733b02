//! MassTransit's JSON envelope (`application/vnd.masstransit+json`), as its
//! SystemTextJsonMessageSerializer writes and reads it: camelCase `messageId`, `messageType`
//! (message URNs), `message`, `sentTime` and `headers`.
//!
//! The message URN of a .NET type `Namespace.TypeName` is `urn:message:Namespace:TypeName`.
//!
//! Trace context: MassTransit's receive activity takes its parent from the transport header
//! `MT-Activity-Id`, parsed as a W3C traceparent (`LogContextActivityExtensions.
//! StartReceiveActivity` → `GetParentActivityContext(context.TransportHeaders)`, which calls
//! `ActivityContext.TryParse(activityId, null, …)`; `DiagnosticHeaders.ActivityId`), and
//! reads no tracestate there. So an event's traceparent also goes out as that header.

use std::borrow::Cow;

use amq_protocol::types::{AMQPValue, LongString, ShortString};
use bytes::Bytes;
use serde::Serialize;
use serde_json::value::RawValue;

use super::rfc3339::rfc3339;
use super::{EncodeError, Encoded, Encoder, Event, payload_json};

pub(crate) const CONTENT_TYPE: &str = "application/vnd.masstransit+json";

/// The AMQP header MassTransit reads the sender's activity (a W3C traceparent) from.
pub(crate) const ACTIVITY_ID: &str = "MT-Activity-Id";

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct EnvelopeBody<'a> {
    message_id: &'a str,
    message_type: [String; 1],
    message: &'a RawValue,
    sent_time: String,
    headers: &'a serde_json::Map<String, serde_json::Value>,
}

/// `Shop.Orders.OrderCreated` → `urn:message:Shop.Orders:OrderCreated`; a name without a
/// namespace → `urn:message:OrderCreated`.
pub(crate) fn message_urn(type_name: &str) -> String {
    match type_name.rsplit_once('.') {
        Some((namespace, name)) => format!("urn:message:{namespace}:{name}"),
        None => format!("urn:message:{type_name}"),
    }
}

#[derive(Debug)]
pub(crate) struct Envelope;

impl Encoder for Envelope {
    fn encode(&self, event: &Event<'_>) -> Result<Encoded, EncodeError> {
        if event.event_type.is_empty() {
            return Err(EncodeError::Missing {
                encoding: "masstransit",
                what: "an event type (the message type's .NET full name)",
            });
        }
        let empty = serde_json::Map::new();
        let envelope = EnvelopeBody {
            message_id: event.id,
            message_type: [message_urn(event.event_type)],
            message: payload_json(event, "masstransit")?,
            sent_time: rfc3339(event.time_micros),
            headers: event.headers.unwrap_or(&empty),
        };
        let body = serde_json::to_vec(&envelope).expect("an envelope serializes to JSON");
        let headers = event
            .trace
            .map(|trace| {
                (
                    ShortString::from(ACTIVITY_ID),
                    AMQPValue::LongString(LongString::from(trace.traceparent)),
                )
            })
            .into_iter()
            .collect();
        Ok(Encoded {
            body: Bytes::from(body),
            content_type: Cow::Borrowed(CONTENT_TYPE),
            headers,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::encode::PayloadKind;
    use crate::encode::testing::event;
    use proptest::prelude::*;
    use serde_json::{Value, json};

    #[test]
    fn the_envelope_carries_the_message_and_its_urn() {
        let payload = Bytes::from_static(br#"{"orderId": 7}"#);
        let headers = json!({"tenant": "acme"});
        let mut event = event(&payload, PayloadKind::Json);
        event.headers = headers.as_object();
        let encoded = Envelope.encode(&event).unwrap();
        assert_eq!(encoded.content_type, CONTENT_TYPE);
        let body: Value = serde_json::from_slice(&encoded.body).unwrap();
        assert_eq!(
            body,
            json!({
                "messageId": "6f1c0d3e-0000-4000-8000-000000000001",
                "messageType": ["urn:message:Shop.Orders:OrderCreated"],
                "message": {"orderId": 7},
                "sentTime": "2026-11-22T14:59:17.123456Z",
                "headers": {"tenant": "acme"},
            })
        );
        assert_eq!(message_urn("OrderCreated"), "urn:message:OrderCreated");
        assert!(encoded.headers.is_empty(), "no trace context, no header");
    }

    #[test]
    fn a_traceparent_goes_out_as_mt_activity_id() {
        use crate::encode::testing::TRACE;
        let payload = Bytes::from_static(br#"{"orderId": 7}"#);
        let mut traced = event(&payload, PayloadKind::Json);
        traced.trace = Some(TRACE);
        let encoded = Envelope.encode(&traced).unwrap();
        assert_eq!(
            encoded.headers,
            vec![(
                ShortString::from("MT-Activity-Id"),
                AMQPValue::LongString(TRACE.traceparent.into())
            )]
        );
    }

    #[test]
    fn a_payload_that_is_not_json_or_a_missing_type_is_an_error() {
        let payload = Bytes::from_static(b"plain");
        assert!(matches!(
            Envelope.encode(&event(&payload, PayloadKind::Text)),
            Err(EncodeError::PayloadNotJson { .. })
        ));
        let payload = Bytes::from_static(b"{}");
        let mut untyped = event(&payload, PayloadKind::Json);
        untyped.event_type = "";
        assert!(matches!(
            Envelope.encode(&untyped),
            Err(EncodeError::Missing { .. })
        ));
    }

    proptest! {
        #[test]
        fn any_payload_gives_a_valid_envelope_or_an_error(
            payload in proptest::collection::vec(any::<u8>(), 0..64),
            type_name in ".{1,20}",
        ) {
            let payload = Bytes::from(payload);
            let mut event = event(&payload, PayloadKind::Text);
            event.event_type = &type_name;
            if let Ok(encoded) = Envelope.encode(&event) {
                let value: Value = serde_json::from_slice(&encoded.body).unwrap();
                prop_assert!(value["messageType"][0].as_str().unwrap().starts_with("urn:message:"));
            }
        }
    }
}
