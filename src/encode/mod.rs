//! Event → message body and content type, in the encoding the consumers expect: the payload
//! as it is ([`raw`]), CloudEvents 1.0 ([`cloudevents`] structured, [`cloudevents_binary`]),
//! MassTransit's envelope ([`masstransit`]) or a JSON body template ([`template`]).
//!
//! Every encoding is one small file behind the [`Encoder`] trait. An encoder sees an
//! [`Event`] whose templates are already rendered (by the outbox side) and never panics: a
//! row it cannot encode (a payload that must be JSON and is not) is an [`EncodeError`], which
//! the engine handles as a per-event failure.

pub(crate) mod cloudevents;
pub(crate) mod cloudevents_binary;
pub(crate) mod masstransit;
pub(crate) mod raw;
mod rfc3339;
pub(crate) mod template;

use std::borrow::Cow;
use std::fmt;

use amq_protocol::types::{AMQPValue, ShortString};
use bytes::Bytes;

/// What the payload column holds, which decides how an encoding reads it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PayloadKind {
    /// json or jsonb (or a JSON value taken from inside a column by a path).
    Json,
    /// text, varchar, char: often JSON written by an ORM into a text column.
    Text,
    /// bytea, decoded.
    Bytes,
}

impl PayloadKind {
    /// The type OIDs walbox accepts for a payload column (pg_type.oid, stable across
    /// PostgreSQL versions).
    pub fn from_type_oid(type_oid: u32) -> Option<Self> {
        match type_oid {
            114 | 3802 => Some(PayloadKind::Json),
            25 | 1042 | 1043 => Some(PayloadKind::Text),
            17 => Some(PayloadKind::Bytes),
            _ => None,
        }
    }

    /// The content type of the payload sent as it is.
    pub(crate) fn content_type(self) -> &'static str {
        match self {
            PayloadKind::Json => "application/json",
            PayloadKind::Text => "text/plain; charset=utf-8",
            PayloadKind::Bytes => "application/octet-stream",
        }
    }
}

/// One event, as an encoder sees it.
#[derive(Debug)]
pub(crate) struct Event<'a> {
    /// The message id (the id column, or one derived from the WAL position).
    pub(crate) id: &'a str,
    /// The event type (the event_type field; empty when unmapped).
    pub(crate) event_type: &'a str,
    /// The payload bytes (NULL: empty) and what they are.
    pub(crate) payload: &'a Bytes,
    pub(crate) payload_kind: PayloadKind,
    /// When the event happened: created_at, else the commit time (µs since the Unix epoch).
    pub(crate) time_micros: i64,
    /// The headers column's JSON object, when the table has one and it is an object.
    pub(crate) headers: Option<&'a serde_json::Map<String, serde_json::Value>>,
    /// Rendered CloudEvents attributes (only when the encoding is a CloudEvents one).
    pub(crate) ce: Option<CloudEventAttributes<'a>>,
    /// The rendered body template (only with `--body template`).
    pub(crate) rendered_body: Option<&'a str>,
    /// The W3C trace context the event carries, if any.
    pub(crate) trace: Option<TraceContext<'a>>,
}

/// W3C Trace Context (<https://www.w3.org/TR/trace-context/>) of one event: the producer's
/// span, which the consumer's span continues. The outbox side always sends it as the AMQP
/// headers `traceparent` and `tracestate` (what OpenTelemetry's messaging instrumentations and
/// NServiceBus read); an encoding whose consumers look elsewhere puts it there too.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct TraceContext<'a> {
    /// Never empty.
    pub(crate) traceparent: &'a str,
    /// Only with a traceparent: the W3C specification reads tracestate only after a valid
    /// traceparent. None when absent or empty.
    pub(crate) tracestate: Option<&'a str>,
}

/// CloudEvents context attributes rendered from their templates.
#[derive(Clone, Copy, Debug)]
pub(crate) struct CloudEventAttributes<'a> {
    pub(crate) source: &'a str,
    pub(crate) kind: &'a str,
    /// The aggregate id, when mapped and not NULL.
    pub(crate) subject: Option<&'a str>,
}

/// An encoded body and what goes with it.
#[derive(Debug, PartialEq)]
pub(crate) struct Encoded {
    pub(crate) body: Bytes,
    pub(crate) content_type: Cow<'static, str>,
    /// Headers the encoding itself defines (CloudEvents binary mode's `ce-` attributes).
    pub(crate) headers: Vec<(ShortString, AMQPValue)>,
}

/// Why one event cannot be encoded.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum EncodeError {
    #[error("the {encoding} body needs a JSON payload, and this one is not JSON: {problem}")]
    PayloadNotJson {
        encoding: &'static str,
        problem: String,
    },
    #[error("the body template rendered text that is not JSON ({problem}): {excerpt}")]
    TemplateNotJson { problem: String, excerpt: String },
    #[error("the {encoding} body needs {what}, and this event has none")]
    Missing {
        encoding: &'static str,
        what: &'static str,
    },
}

/// One body encoding.
pub(crate) trait Encoder: Send + Sync + fmt::Debug {
    fn encode(&self, event: &Event<'_>) -> Result<Encoded, EncodeError>;
}

/// The encodings `--body` names.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Encoding {
    /// The payload as it is (walbox's own contract).
    Raw,
    /// CloudEvents 1.0, structured JSON (application/cloudevents+json).
    #[value(name = "cloudevents")]
    CloudEvents,
    /// CloudEvents 1.0, binary mode: the payload as body, attributes as `ce-` headers.
    #[value(name = "cloudevents-binary")]
    CloudEventsBinary,
    /// MassTransit's JSON envelope (application/vnd.masstransit+json).
    #[value(name = "masstransit")]
    MassTransit,
    /// `--body-template`, rendered per event; it must give JSON.
    Template,
}

impl Encoding {
    pub(crate) fn encoder(self) -> Box<dyn Encoder> {
        match self {
            Encoding::Raw => Box::new(raw::Raw),
            Encoding::CloudEvents => Box::new(cloudevents::Structured),
            Encoding::CloudEventsBinary => Box::new(cloudevents_binary::Binary),
            Encoding::MassTransit => Box::new(masstransit::Envelope),
            Encoding::Template => Box::new(template::BodyTemplate),
        }
    }

    pub(crate) fn is_cloudevents(self) -> bool {
        matches!(self, Encoding::CloudEvents | Encoding::CloudEventsBinary)
    }

    pub fn name(self) -> &'static str {
        match self {
            Encoding::Raw => "raw",
            Encoding::CloudEvents => "cloudevents",
            Encoding::CloudEventsBinary => "cloudevents-binary",
            Encoding::MassTransit => "masstransit",
            Encoding::Template => "template",
        }
    }
}

/// The payload as one JSON value, checked and kept as its own text (no re-serialization).
/// NULL (an empty payload) is JSON null.
pub(crate) fn payload_json<'a>(
    event: &'a Event<'_>,
    encoding: &'static str,
) -> Result<&'a serde_json::value::RawValue, EncodeError> {
    if event.payload.is_empty() {
        return Ok(null());
    }
    serde_json::from_slice::<&serde_json::value::RawValue>(event.payload).map_err(|error| {
        EncodeError::PayloadNotJson {
            encoding,
            problem: error.to_string(),
        }
    })
}

fn null() -> &'static serde_json::value::RawValue {
    // "null" is valid JSON; a literal cannot fail to parse.
    serde_json::from_str("null").expect("null is JSON")
}

#[cfg(test)]
pub(crate) mod testing {
    use super::*;

    /// An event for encoder tests.
    pub(crate) fn event<'a>(payload: &'a Bytes, kind: PayloadKind) -> Event<'a> {
        Event {
            id: "6f1c0d3e-0000-4000-8000-000000000001",
            event_type: "Shop.Orders.OrderCreated",
            payload,
            payload_kind: kind,
            time_micros: 1_795_359_557_123_456,
            headers: None,
            ce: Some(CloudEventAttributes {
                source: "/shop/orders",
                kind: "Shop.Orders.OrderCreated",
                subject: Some("o-17"),
            }),
            rendered_body: None,
            trace: None,
        }
    }

    /// A trace context for encoder tests.
    pub(crate) const TRACE: TraceContext<'static> = TraceContext {
        traceparent: "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        tracestate: Some("congo=t61rcWkgMzE,rojo=00f067aa0ba902b7"),
    };
}
