//! Logical decoding messages (`pg_logical_emit_message`) → messages: which prefixes are
//! relayed (`--messages`), and each relayed message as a row, so the column map, templates,
//! presets and body encodings work on it exactly as on an outbox row.
//!
//! A logical message has no table. walbox shows it as a row of a table of three columns:
//!
//! | column | value |
//! | --- | --- |
//! | `id` | its message id, from its WAL position (given by the engine) |
//! | `prefix` | its prefix (text) |
//! | `content` | its content: jsonb when the bytes are JSON, else text when they are UTF-8, else bytea |
//!
//! with the column map `id=id, event_type=prefix, payload=content` (every other field
//! unmapped), so `{prefix}`, `{event_type}`, `{content->key}` and `{payload->key}` are what
//! templates read. The content's type is decided per message from its bytes, because
//! PostgreSQL sends both forms of `pg_logical_emit_message` (text and bytea content) the same
//! way: a shape is resolved for each of the three types once, at start.
//!
//! Each `--messages` route names a prefix (or, ending in `*`, every prefix that starts with
//! what comes before it) and the [`Mapping`] its messages are published with; the first route
//! that matches a message's prefix is its route.

use bytes::Bytes;

use super::event::{OutboxShape, ShapeError};
use super::mapping::Mapping;
use crate::pgoutput::{ColumnValue, LogicalMessage, Relation, RelationColumn, TupleData};

/// The column map of a logical message's row.
pub const MESSAGE_COLUMNS: &str = "id=id,aggregate_type=,aggregate_id=,event_type=prefix,\
    payload=content,headers=,created_at=,exchange=,traceparent=,tracestate=";

/// Type OIDs of the `content` column, one per [`Content`] kind (pg_type.oid).
const JSONB: u32 = 3802;
const TEXT: u32 = 25;
const BYTEA: u32 = 17;

/// Which prefixes a route takes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PrefixPattern {
    text: String,
    /// `text` ended in `*`: every prefix that starts with the rest matches.
    starts_with: bool,
}

impl PrefixPattern {
    /// `orders` matches the prefix `orders` only; `orders.*` every prefix starting with
    /// `orders.`. Empty, and U+FFFD (which the replication client puts in place of a prefix's
    /// bytes that are not UTF-8, so such a pattern could match prefixes nobody wrote), are
    /// refused.
    pub fn parse(text: &str) -> Result<Self, String> {
        if text.contains('\u{FFFD}') {
            return Err(format!(
                "prefix `{text}` contains U+FFFD, which stands for bytes that are not UTF-8"
            ));
        }
        let (text, starts_with) = match text.strip_suffix('*') {
            Some(head) => (head, true),
            None => (text, false),
        };
        if text.is_empty() && !starts_with {
            return Err("an empty prefix; name one, or `*` for every prefix".into());
        }
        Ok(PrefixPattern {
            text: text.to_owned(),
            starts_with,
        })
    }

    pub fn matches(&self, prefix: &str) -> bool {
        match self.starts_with {
            true => prefix.starts_with(&self.text),
            false => prefix == self.text,
        }
    }
}

impl std::fmt::Display for PrefixPattern {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.text)?;
        if self.starts_with {
            f.write_str("*")?;
        }
        Ok(())
    }
}

/// One `--messages` route, validated: its prefixes and what their messages become.
#[derive(Clone, Debug)]
pub struct MessageRoute {
    pub pattern: PrefixPattern,
    pub mapping: Mapping,
}

/// What a message's content is, which decides the `content` column's type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Content {
    Json,
    Text,
    Bytes,
}

impl Content {
    fn of(content: &[u8]) -> Content {
        if serde_json::from_slice::<serde::de::IgnoredAny>(content).is_ok() {
            Content::Json
        } else if std::str::from_utf8(content).is_ok() {
            Content::Text
        } else {
            Content::Bytes
        }
    }

    fn type_oid(self) -> u32 {
        match self {
            Content::Json => JSONB,
            Content::Text => TEXT,
            Content::Bytes => BYTEA,
        }
    }
}

/// A route with its shapes resolved: one per content type, in [`Content`] order.
#[derive(Clone, Debug)]
struct Route {
    pattern: PrefixPattern,
    shapes: [OutboxShape; 3],
}

/// The relayed prefixes and their shapes. Empty: no logical message is relayed.
#[derive(Clone, Debug, Default)]
pub struct LogicalMessages {
    routes: Vec<Route>,
}

impl LogicalMessages {
    /// Resolve every route's templates against a logical message's columns. An error names
    /// the route's pattern.
    pub fn new(routes: &[MessageRoute]) -> Result<Self, (PrefixPattern, ShapeError)> {
        let routes = routes
            .iter()
            .map(|route| {
                let shape = |content: Content| {
                    OutboxShape::from_relation(&relation(content), &route.mapping)
                        .map_err(|error| (route.pattern.clone(), error))
                };
                Ok(Route {
                    pattern: route.pattern.clone(),
                    shapes: [
                        shape(Content::Json)?,
                        shape(Content::Text)?,
                        shape(Content::Bytes)?,
                    ],
                })
            })
            .collect::<Result<_, _>>()?;
        Ok(LogicalMessages { routes })
    }

    pub fn is_empty(&self) -> bool {
        self.routes.is_empty()
    }

    /// The patterns, in order, for log lines.
    pub fn patterns(&self) -> Vec<String> {
        self.routes.iter().map(|r| r.pattern.to_string()).collect()
    }

    /// The shape and the row of `message`, whose message id is `id`; None when no route
    /// takes its prefix.
    pub(crate) fn row(
        &self,
        message: &LogicalMessage,
        id: &str,
    ) -> Option<(&OutboxShape, TupleData)> {
        let route = self
            .routes
            .iter()
            .find(|route| route.pattern.matches(&message.prefix))?;
        let content = Content::of(&message.content);
        let shape = &route.shapes[content as usize];
        let text = |text: &str| ColumnValue::Text(Bytes::copy_from_slice(text.as_bytes()));
        let content = match content {
            Content::Json | Content::Text => ColumnValue::Text(message.content.clone()),
            // bytea columns arrive as PostgreSQL's hex text; the row reads them that way.
            Content::Bytes => text(&bytea_hex(&message.content)),
        };
        let tuple = TupleData {
            columns: vec![text(id), text(&message.prefix), content],
        };
        Some((shape, tuple))
    }
}

/// The table a logical message is a row of, with its content of type `content`.
fn relation(content: Content) -> Relation {
    let column = |name: &str, type_oid: u32| RelationColumn {
        flags: 0,
        name: name.into(),
        type_oid,
        type_modifier: -1,
    };
    Relation {
        relation_id: 0,
        namespace: "walbox".into(),
        name: "logical_message".into(),
        replica_identity: b'n',
        columns: vec![
            column("id", TEXT),
            column("prefix", TEXT),
            column("content", content.type_oid()),
        ],
    }
}

/// bytea's text output: `\x` and two hex digits per byte.
fn bytea_hex(bytes: &[u8]) -> String {
    let mut text = String::with_capacity(2 + bytes.len() * 2);
    text.push_str("\\x");
    for byte in bytes {
        text.push_str(&format!("{byte:02x}"));
    }
    text
}

/// What the payload of a message with this content is (for tests and docs).
#[cfg(test)]
fn payload_kind(content: &[u8]) -> crate::encode::PayloadKind {
    crate::encode::PayloadKind::from_type_oid(Content::of(content).type_oid())
        .expect("a payload type")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::encode::{Encoding, PayloadKind};
    use crate::lsn::Lsn;
    use crate::outbox::{ColumnMap, Template, Transaction};
    use amq_protocol::types::{AMQPValue, ShortString};

    const TRANSACTION: Transaction = Transaction {
        xid: 900,
        commit_lsn: Lsn(0x16B_3748),
        commit_time_micros: 1_000_000,
    };
    const ID: &str = "0d9b2a64-5a0b-5d2e-9f1a-000000000001";

    fn route(pattern: &str, routing_key: &str) -> MessageRoute {
        MessageRoute {
            pattern: PrefixPattern::parse(pattern).unwrap(),
            mapping: Mapping {
                columns: ColumnMap::parse(MESSAGE_COLUMNS).unwrap(),
                ..Mapping::with_columns("", routing_key)
            },
        }
    }

    fn message(prefix: &str, content: &[u8]) -> LogicalMessage {
        LogicalMessage {
            flags: 1,
            lsn: Lsn(0x16B_3700),
            prefix: prefix.into(),
            content: Bytes::copy_from_slice(content),
        }
    }

    fn build(messages: &LogicalMessages, message: &LogicalMessage) -> crate::outbox::OutboxMessage {
        let (shape, tuple) = messages.row(message, ID).expect("a route");
        shape
            .message(&tuple, &TRANSACTION, 3, &mut String::new())
            .unwrap()
    }

    #[test]
    fn patterns_match_one_prefix_or_a_family() {
        let exact = PrefixPattern::parse("orders").unwrap();
        assert!(exact.matches("orders"));
        assert!(!exact.matches("orders.v2"));
        assert!(!exact.matches("order"));
        let family = PrefixPattern::parse("orders.*").unwrap();
        assert!(family.matches("orders.created"));
        assert!(family.matches("orders."));
        assert!(!family.matches("orders"));
        assert!(PrefixPattern::parse("*").unwrap().matches(""));
        assert!(PrefixPattern::parse("").is_err());
        assert!(PrefixPattern::parse("a\u{FFFD}").is_err());
        assert_eq!(family.to_string(), "orders.*");
    }

    #[test]
    fn a_message_becomes_a_message_like_a_row() {
        let messages =
            LogicalMessages::new(&[route("orders", "{prefix}.{content->kind}")]).unwrap();
        let built = build(
            &messages,
            &message("orders", br#"{"kind": "paid", "n": 7}"#),
        );
        assert_eq!(built.id, ID);
        assert_eq!(built.routing_key.as_str(), "orders.paid");
        assert_eq!(&built.body[..], br#"{"kind": "paid", "n": 7}"#);
        let properties = &built.properties;
        assert_eq!(
            properties.message_id().as_ref().map(ShortString::as_str),
            Some(ID)
        );
        // The event type is the prefix: it is the `type` property.
        assert_eq!(
            properties.kind().as_ref().map(ShortString::as_str),
            Some("orders")
        );
        assert_eq!(
            properties.content_type().as_ref().map(ShortString::as_str),
            Some("application/json")
        );
        assert_eq!(
            built.header("x-commit-lsn"),
            Some(&AMQPValue::LongString("0/16B3748".into()))
        );
        assert_eq!(built.header("x-xid"), Some(&AMQPValue::LongLongInt(900)));
        // No aggregate columns: no x-aggregate-* headers.
        assert_eq!(built.header("x-aggregate-type"), None);
    }

    #[test]
    fn the_content_type_follows_the_bytes() {
        assert_eq!(payload_kind(br#"{"a": 1}"#), PayloadKind::Json);
        assert_eq!(payload_kind(b"plain words"), PayloadKind::Text);
        assert_eq!(payload_kind(b""), PayloadKind::Text);
        assert_eq!(payload_kind(b"\x00\xff"), PayloadKind::Bytes);
        let messages = LogicalMessages::new(&[route("p", "k")]).unwrap();
        let text = build(&messages, &message("p", b"plain words"));
        assert_eq!(
            text.properties
                .content_type()
                .as_ref()
                .map(ShortString::as_str),
            Some("text/plain; charset=utf-8")
        );
        let bytes = build(&messages, &message("p", b"\x00\xff\x41"));
        assert_eq!(&bytes.body[..], b"\x00\xff\x41");
        assert_eq!(
            bytes
                .properties
                .content_type()
                .as_ref()
                .map(ShortString::as_str),
            Some("application/octet-stream")
        );
    }

    #[test]
    fn the_first_matching_route_decides_and_other_prefixes_have_none() {
        let mut special = route("audit.login", "login");
        special.mapping.exchange = Template::parse("security").unwrap();
        special.mapping.own_exchange = true;
        let messages = LogicalMessages::new(&[special, route("audit.*", "audit")]).unwrap();
        let login = build(&messages, &message("audit.login", b"{}"));
        assert_eq!(login.routing_key.as_str(), "login");
        assert_eq!(
            login.exchange.as_ref().map(ShortString::as_str),
            Some("security")
        );
        let other = build(&messages, &message("audit.logout", b"{}"));
        assert_eq!(other.routing_key.as_str(), "audit");
        assert_eq!(other.exchange, None, "the publisher's own exchange");
        assert!(messages.row(&message("orders", b"{}"), ID).is_none());
        assert!(messages.row(&message("audit", b"{}"), ID).is_none());
    }

    #[test]
    fn encodings_and_presets_work_on_messages() {
        let mut cloudevents = route("Shop.Orders.OrderPaid", "{event_type|short}");
        cloudevents.mapping.body = Encoding::CloudEvents;
        let messages = LogicalMessages::new(&[cloudevents]).unwrap();
        let built = build(&messages, &message("Shop.Orders.OrderPaid", br#"{"n": 1}"#));
        assert_eq!(built.routing_key.as_str(), "OrderPaid");
        let event: serde_json::Value = serde_json::from_slice(&built.body).unwrap();
        assert_eq!(event["id"], serde_json::json!(ID));
        assert_eq!(event["type"], serde_json::json!("Shop.Orders.OrderPaid"));
        assert_eq!(event["data"], serde_json::json!({"n": 1}));
    }

    #[test]
    fn a_template_that_reads_no_column_of_a_message_is_refused_at_start() {
        let error =
            LogicalMessages::new(&[route("orders", "{aggregate_type}.{event_type}")]).unwrap_err();
        assert_eq!(error.0.to_string(), "orders");
        assert!(
            matches!(error.1, ShapeError::Template { .. }),
            "{:?}",
            error.1
        );
    }

    #[test]
    fn bytea_hex_is_postgres_text_output() {
        assert_eq!(bytea_hex(b"\x00\xffA"), "\\x00ff41");
        assert_eq!(bytea_hex(b""), "\\x");
    }
}
