//! CloudEvents 1.0 in structured mode: the whole event as one JSON object,
//! `application/cloudevents+json` (the JSON event format, and the AMQP/RabbitMQ bindings'
//! structured mode).
//!
//! An event with a trace context carries the distributed-tracing extension's attributes
//! `traceparent` and `tracestate` (cloudevents/spec `cloudevents/extensions/distributed-tracing.md`),
//! the same values as the protocol's own `traceparent` / `tracestate` headers, as that
//! extension requires of a single hop.
//!
//! `data` follows the payload: JSON (a json/jsonb column, or a text column whose text is JSON)
//! goes in as JSON with `datacontenttype` application/json; other text as a string with
//! text/plain; bytea as `data_base64` with application/octet-stream. A NULL payload leaves
//! `data` out.

use std::borrow::Cow;

use base64::Engine;
use bytes::Bytes;
use serde::Serialize;
use serde_json::value::RawValue;

use super::rfc3339::rfc3339;
use super::{EncodeError, Encoded, Encoder, Event, PayloadKind, TraceContext};

pub(crate) const CONTENT_TYPE: &str = "application/cloudevents+json";

/// What the payload is, for `data` and `datacontenttype`.
pub(crate) enum Data<'a> {
    None,
    Json(&'a RawValue),
    Text(&'a str),
    Bytes(&'a [u8]),
}

impl Data<'_> {
    pub(crate) fn content_type(&self) -> Option<&'static str> {
        match self {
            Data::None => None,
            Data::Json(_) => Some("application/json"),
            Data::Text(_) => Some("text/plain; charset=utf-8"),
            Data::Bytes(_) => Some("application/octet-stream"),
        }
    }
}

/// Classify the payload. A json/jsonb payload that does not parse is an error (PostgreSQL
/// never sends one); text is JSON when it parses, else a string.
pub(crate) fn data<'a>(event: &'a Event<'_>) -> Result<Data<'a>, EncodeError> {
    let payload: &Bytes = event.payload;
    if payload.is_empty() {
        return Ok(Data::None);
    }
    match event.payload_kind {
        PayloadKind::Json => serde_json::from_slice::<&RawValue>(payload)
            .map(Data::Json)
            .map_err(|error| EncodeError::PayloadNotJson {
                encoding: "cloudevents",
                problem: error.to_string(),
            }),
        PayloadKind::Text => match serde_json::from_slice::<&RawValue>(payload) {
            Ok(json) => Ok(Data::Json(json)),
            Err(_) => Ok(match std::str::from_utf8(payload) {
                Ok(text) => Data::Text(text),
                Err(_) => Data::Bytes(payload),
            }),
        },
        PayloadKind::Bytes => Ok(Data::Bytes(payload)),
    }
}

/// The attributes both modes send, with the event's own values.
pub(crate) struct Attributes<'a> {
    pub(crate) id: &'a str,
    pub(crate) source: &'a str,
    pub(crate) kind: &'a str,
    pub(crate) subject: Option<&'a str>,
    pub(crate) time: String,
    /// The distributed-tracing extension: `traceparent`, then `tracestate` if any.
    pub(crate) trace: Option<TraceContext<'a>>,
}

/// The attributes of `event`. `source` and `type` are required by the specification: an
/// event that renders either empty cannot be a CloudEvent.
pub(crate) fn attributes<'a>(
    event: &'a Event<'_>,
    encoding: &'static str,
) -> Result<Attributes<'a>, EncodeError> {
    let ce = event.ce.as_ref().ok_or(EncodeError::Missing {
        encoding,
        what: "CloudEvents attributes",
    })?;
    if ce.source.is_empty() {
        return Err(EncodeError::Missing {
            encoding,
            what: "a source (--ce-source rendered empty)",
        });
    }
    if ce.kind.is_empty() {
        return Err(EncodeError::Missing {
            encoding,
            what: "a type (--ce-type rendered empty)",
        });
    }
    if event.id.is_empty() {
        return Err(EncodeError::Missing {
            encoding,
            what: "an id",
        });
    }
    Ok(Attributes {
        id: event.id,
        source: ce.source,
        kind: ce.kind,
        subject: ce.subject.filter(|subject| !subject.is_empty()),
        time: rfc3339(event.time_micros),
        trace: event.trace,
    })
}

#[derive(Serialize)]
struct StructuredEvent<'a> {
    specversion: &'static str,
    id: &'a str,
    source: &'a str,
    #[serde(rename = "type")]
    kind: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    subject: Option<&'a str>,
    time: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    traceparent: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tracestate: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    datacontenttype: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    data: Option<DataValue<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    data_base64: Option<String>,
}

#[derive(Serialize)]
#[serde(untagged)]
enum DataValue<'a> {
    Json(&'a RawValue),
    Text(&'a str),
}

#[derive(Debug)]
pub(crate) struct Structured;

impl Encoder for Structured {
    fn encode(&self, event: &Event<'_>) -> Result<Encoded, EncodeError> {
        let attributes = attributes(event, "cloudevents")?;
        let data = data(event)?;
        let (value, base64) = match &data {
            Data::None => (None, None),
            Data::Json(json) => (Some(DataValue::Json(json)), None),
            Data::Text(text) => (Some(DataValue::Text(text)), None),
            Data::Bytes(bytes) => (
                None,
                Some(base64::engine::general_purpose::STANDARD.encode(bytes)),
            ),
        };
        let structured = StructuredEvent {
            specversion: "1.0",
            id: attributes.id,
            source: attributes.source,
            kind: attributes.kind,
            subject: attributes.subject,
            time: &attributes.time,
            traceparent: attributes.trace.map(|trace| trace.traceparent),
            tracestate: attributes.trace.and_then(|trace| trace.tracestate),
            datacontenttype: data.content_type(),
            data: value,
            data_base64: base64,
        };
        let body = serde_json::to_vec(&structured).expect("a CloudEvent serializes to JSON");
        Ok(Encoded {
            body: Bytes::from(body),
            content_type: Cow::Borrowed(CONTENT_TYPE),
            headers: Vec::new(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::encode::testing::event;
    use proptest::prelude::*;
    use serde_json::{Value, json};

    fn encode(payload: &[u8], kind: PayloadKind) -> Value {
        let payload = Bytes::copy_from_slice(payload);
        let encoded = Structured.encode(&event(&payload, kind)).unwrap();
        assert_eq!(encoded.content_type, CONTENT_TYPE);
        serde_json::from_slice(&encoded.body).unwrap()
    }

    #[test]
    fn json_payloads_become_json_data() {
        let event = encode(br#"{"total": 12}"#, PayloadKind::Json);
        assert_eq!(
            event,
            json!({
                "specversion": "1.0",
                "id": "6f1c0d3e-0000-4000-8000-000000000001",
                "source": "/shop/orders",
                "type": "Shop.Orders.OrderCreated",
                "subject": "o-17",
                "time": "2026-11-22T14:59:17.123456Z",
                "datacontenttype": "application/json",
                "data": {"total": 12},
            })
        );
        // JSON written into a text column is JSON data too.
        assert_eq!(
            encode(br#"[1, 2]"#, PayloadKind::Text)["data"],
            json!([1, 2])
        );
    }

    #[test]
    fn a_trace_context_becomes_the_distributed_tracing_attributes() {
        use crate::encode::testing::TRACE;
        let payload = Bytes::from_static(br#"{"total": 12}"#);
        let mut traced = event(&payload, PayloadKind::Json);
        traced.trace = Some(TRACE);
        let encoded = Structured.encode(&traced).unwrap();
        let value: Value = serde_json::from_slice(&encoded.body).unwrap();
        assert_eq!(value["traceparent"], json!(TRACE.traceparent));
        assert_eq!(value["tracestate"], json!(TRACE.tracestate.unwrap()));
        // No tracestate: the attribute is left out, not sent empty.
        traced.trace = Some(TraceContext {
            tracestate: None,
            ..TRACE
        });
        let encoded = Structured.encode(&traced).unwrap();
        let value: Value = serde_json::from_slice(&encoded.body).unwrap();
        assert_eq!(value["traceparent"], json!(TRACE.traceparent));
        assert_eq!(value.get("tracestate"), None);
        // No trace context: neither attribute (the first test's exact JSON shows it too).
        assert_eq!(encode(b"{}", PayloadKind::Json).get("traceparent"), None);
    }

    #[test]
    fn text_bytes_and_null_payloads() {
        let event = encode(b"plain words", PayloadKind::Text);
        assert_eq!(event["data"], json!("plain words"));
        assert_eq!(event["datacontenttype"], json!("text/plain; charset=utf-8"));
        let event = encode(b"\x00\xff", PayloadKind::Bytes);
        assert_eq!(event["data_base64"], json!("AP8="));
        assert_eq!(event.get("data"), None);
        let event = encode(b"", PayloadKind::Json);
        assert_eq!(event.get("data"), None);
        assert_eq!(event.get("datacontenttype"), None);
    }

    #[test]
    fn empty_required_attributes_are_an_error() {
        let payload = Bytes::from_static(b"{}");
        let mut no_source = event(&payload, PayloadKind::Json);
        no_source.ce.as_mut().unwrap().source = "";
        assert!(matches!(
            Structured.encode(&no_source),
            Err(EncodeError::Missing { .. })
        ));
        let mut bad_json = event(&payload, PayloadKind::Json);
        let broken = Bytes::from_static(b"{oops");
        bad_json.payload = &broken;
        assert!(matches!(
            Structured.encode(&bad_json),
            Err(EncodeError::PayloadNotJson { .. })
        ));
    }

    proptest! {
        #[test]
        fn any_payload_gives_a_valid_event_or_an_error(
            payload in proptest::collection::vec(any::<u8>(), 0..64),
            kind in 0..3usize,
            source in ".{0,12}",
        ) {
            let kind = [PayloadKind::Json, PayloadKind::Text, PayloadKind::Bytes][kind];
            let payload = Bytes::from(payload);
            let mut event = event(&payload, kind);
            event.ce.as_mut().unwrap().source = &source;
            if let Ok(encoded) = Structured.encode(&event) {
                let value: Value = serde_json::from_slice(&encoded.body).unwrap();
                prop_assert_eq!(&value["specversion"], &json!("1.0"));
                prop_assert_eq!(&value["source"], &json!(source));
            }
        }
    }
}
