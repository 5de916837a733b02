//! CloudEvents 1.0 in binary mode for RabbitMQ: the payload is the body as it is, its content
//! type is `datacontenttype`, and every other attribute is an AMQP header named `ce-<name>`
//! (the RabbitMQ protocol binding of Knative eventing-rabbitmq, which the CloudEvents Python
//! SDK implements as `cloudevents.core.bindings.rabbitmq`). The distributed-tracing
//! extension's attributes go the same way, as `ce-traceparent` and `ce-tracestate`, beside the
//! protocol's own `traceparent` / `tracestate` headers that the outbox side adds.

use std::borrow::Cow;

use amq_protocol::types::{AMQPValue, LongString, ShortString};

use super::cloudevents::{attributes, data};
use super::{EncodeError, Encoded, Encoder, Event};

#[derive(Debug)]
pub(crate) struct Binary;

impl Encoder for Binary {
    fn encode(&self, event: &Event<'_>) -> Result<Encoded, EncodeError> {
        let attributes = attributes(event, "cloudevents-binary")?;
        let content_type = data(event)?
            .content_type()
            .unwrap_or(event.payload_kind.content_type());
        let header = |name: &str, value: &str| {
            (
                ShortString::from(name),
                AMQPValue::LongString(LongString::from(value)),
            )
        };
        let mut headers = vec![
            header("ce-specversion", "1.0"),
            header("ce-id", attributes.id),
            header("ce-source", attributes.source),
            header("ce-type", attributes.kind),
            header("ce-time", &attributes.time),
        ];
        if let Some(subject) = attributes.subject {
            headers.push(header("ce-subject", subject));
        }
        if let Some(trace) = attributes.trace {
            headers.push(header("ce-traceparent", trace.traceparent));
            if let Some(tracestate) = trace.tracestate {
                headers.push(header("ce-tracestate", tracestate));
            }
        }
        Ok(Encoded {
            body: event.payload.clone(),
            content_type: Cow::Borrowed(content_type),
            headers,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::encode::PayloadKind;
    use crate::encode::testing::event;
    use bytes::Bytes;

    #[test]
    fn attributes_travel_as_ce_headers_and_the_payload_as_body() {
        let payload = Bytes::from_static(br#"{"total": 12}"#);
        let encoded = Binary.encode(&event(&payload, PayloadKind::Text)).unwrap();
        assert_eq!(encoded.body, payload);
        assert_eq!(encoded.content_type, "application/json");
        let header = |name: &str| {
            encoded
                .headers
                .iter()
                .find(|(key, _)| key.as_str() == name)
                .map(|(_, value)| value.clone())
        };
        let text = |value: &str| Some(AMQPValue::LongString(value.into()));
        assert_eq!(header("ce-specversion"), text("1.0"));
        assert_eq!(
            header("ce-id"),
            text("6f1c0d3e-0000-4000-8000-000000000001")
        );
        assert_eq!(header("ce-source"), text("/shop/orders"));
        assert_eq!(header("ce-type"), text("Shop.Orders.OrderCreated"));
        assert_eq!(header("ce-time"), text("2026-11-22T14:59:17.123456Z"));
        assert_eq!(header("ce-subject"), text("o-17"));
        assert_eq!(header("ce-datacontenttype"), None);
        assert_eq!(header("ce-traceparent"), None);
    }

    #[test]
    fn a_trace_context_travels_as_ce_traceparent_and_ce_tracestate() {
        use crate::encode::testing::TRACE;
        let payload = Bytes::from_static(b"{}");
        let mut traced = event(&payload, PayloadKind::Json);
        traced.trace = Some(TRACE);
        let encoded = Binary.encode(&traced).unwrap();
        let header = |name: &str| {
            encoded
                .headers
                .iter()
                .find(|(key, _)| key.as_str() == name)
                .map(|(_, value)| value.clone())
        };
        assert_eq!(
            header("ce-traceparent"),
            Some(AMQPValue::LongString(TRACE.traceparent.into()))
        );
        assert_eq!(
            header("ce-tracestate"),
            Some(AMQPValue::LongString(TRACE.tracestate.unwrap().into()))
        );
    }
}
