//! One inserted outbox row → one AMQP message, following the message contract.
//!
//! An [`OutboxShape`] is built from the table's Relation message (column positions and types,
//! resolved once); [`OutboxShape::message`] then turns each Insert into an [`OutboxMessage`]
//! without looking anything up by name.

use bytes::Bytes;
use lapin::BasicProperties;
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};

use super::columns::{ColumnMap, Field, Origin};
use super::headers::add_json_headers;
use super::routing::{ResolvedTemplate, Template, TemplateError};
use super::timestamp::{parse_unix_seconds, postgres_micros_to_unix_seconds};
use crate::lsn::Lsn;
use crate::pgoutput::{ColumnValue, Relation, TupleData};

/// Type OIDs walbox understands (pg_type.oid, stable across PostgreSQL versions).
mod oid {
    pub(super) const BYTEA: u32 = 17;
    pub(super) const TEXT: u32 = 25;
    pub(super) const JSON: u32 = 114;
    pub(super) const BPCHAR: u32 = 1042;
    pub(super) const VARCHAR: u32 = 1043;
    pub(super) const JSONB: u32 = 3802;
}

/// AMQP delivery mode 2: the broker writes the message to disk.
pub const PERSISTENT: u8 = 2;

/// What the payload column holds, which decides the body bytes and the content type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PayloadKind {
    Json,
    Text,
    Bytes,
}

impl PayloadKind {
    pub fn from_type_oid(type_oid: u32) -> Option<Self> {
        match type_oid {
            oid::JSON | oid::JSONB => Some(PayloadKind::Json),
            oid::TEXT | oid::VARCHAR | oid::BPCHAR => Some(PayloadKind::Text),
            oid::BYTEA => Some(PayloadKind::Bytes),
            _ => None,
        }
    }

    fn content_type(self) -> &'static str {
        match self {
            PayloadKind::Json => "application/json",
            PayloadKind::Text => "text/plain; charset=utf-8",
            PayloadKind::Bytes => "application/octet-stream",
        }
    }
}

/// The transaction an event belongs to, from its Begin message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Transaction {
    pub xid: u32,
    /// LSN of the commit record (Begin's final LSN): the `x-commit-lsn` header.
    pub commit_lsn: Lsn,
    pub commit_time_micros: i64,
}

/// Why a table cannot be relayed as configured.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ShapeError {
    #[error(
        "column `{column}` (mapped to {field}) is not in table {table}; add it or change \
         --columns"
    )]
    MissingColumn {
        table: String,
        field: Field,
        column: String,
    },
    #[error(
        "payload column `{column}` of {table} has an unsupported type (oid {type_oid}); use \
         jsonb, json, text or bytea"
    )]
    UnsupportedPayload {
        table: String,
        column: String,
        type_oid: u32,
    },
    #[error("{0}")]
    Template(#[from] TemplateError),
}

/// Column positions of one version of the outbox table.
#[derive(Clone, Debug)]
pub struct OutboxShape {
    relation_id: u32,
    id: usize,
    aggregate_type: usize,
    aggregate_id: usize,
    event_type: usize,
    payload: usize,
    payload_kind: PayloadKind,
    headers: Option<usize>,
    created_at: Option<usize>,
    exchange: Option<usize>,
    routing_key: ResolvedTemplate,
}

/// A message ready to publish.
#[derive(Debug)]
pub struct OutboxMessage {
    /// The row's exchange column, when set; otherwise the configured exchange.
    pub exchange: Option<ShortString>,
    pub routing_key: ShortString,
    pub body: Bytes,
    pub properties: BasicProperties,
    /// The event id, for log lines about this event.
    pub id: String,
    /// Set when the headers column could not be used (the event still goes out).
    pub headers_warning: Option<String>,
}

impl OutboxMessage {
    /// Mark a message sent again by `walbox replay`: header `x-replay: true`, so consumers
    /// can tell a deliberate replay from a redelivery.
    pub fn mark_replayed(&mut self) {
        let mut headers = self.properties.headers().clone().unwrap_or_default();
        headers.insert("x-replay".into(), AMQPValue::Boolean(true));
        self.properties = std::mem::take(&mut self.properties).with_headers(headers);
    }
}

/// Why one row cannot become a message.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum EventError {
    #[error("the insert has {found} columns but the table's relation has {expected}")]
    ColumnCount { expected: usize, found: usize },
    #[error("{what} is longer than AMQP's 255-byte limit ({len} bytes)")]
    TooLong { what: &'static str, len: usize },
    #[error("bytea payload is not in PostgreSQL's hex format")]
    BadBytea,
}

impl OutboxShape {
    /// Resolve the column map and the routing-key template against a Relation message.
    pub fn from_relation(
        relation: &Relation,
        map: &ColumnMap,
        template: &Template,
    ) -> Result<Self, ShapeError> {
        let table = format!("{}.{}", relation.namespace, relation.name);
        let position = |field: Field| -> Result<Option<usize>, ShapeError> {
            let Some(column) = map.column(field) else {
                return Ok(None);
            };
            match relation.columns.iter().position(|c| c.name == column) {
                Some(index) => Ok(Some(index)),
                None if field.is_required() || map.origin(field) == Some(Origin::Explicit) => {
                    Err(ShapeError::MissingColumn {
                        table: table.clone(),
                        field,
                        column: column.to_owned(),
                    })
                }
                None => Ok(None),
            }
        };
        let required = |field: Field| -> Result<usize, ShapeError> {
            position(field)?.ok_or_else(|| ShapeError::MissingColumn {
                table: table.clone(),
                field,
                column: field.name().to_owned(),
            })
        };
        let payload = required(Field::Payload)?;
        let payload_type = relation.columns[payload].type_oid;
        let payload_kind = PayloadKind::from_type_oid(payload_type).ok_or_else(|| {
            ShapeError::UnsupportedPayload {
                table: table.clone(),
                column: relation.columns[payload].name.clone(),
                type_oid: payload_type,
            }
        })?;
        let routing_key = template.resolve(
            map,
            relation.columns.iter().map(|column| column.name.as_str()),
        )?;
        Ok(OutboxShape {
            relation_id: relation.relation_id,
            id: required(Field::Id)?,
            aggregate_type: required(Field::AggregateType)?,
            aggregate_id: required(Field::AggregateId)?,
            event_type: required(Field::EventType)?,
            payload,
            payload_kind,
            headers: position(Field::Headers)?,
            created_at: position(Field::CreatedAt)?,
            exchange: position(Field::Exchange)?,
            routing_key,
        })
    }

    pub fn relation_id(&self) -> u32 {
        self.relation_id
    }

    /// Build the message for one inserted row. `routing_key` is scratch space reused per event.
    pub fn message(
        &self,
        row: &TupleData,
        transaction: &Transaction,
        routing_key: &mut String,
    ) -> Result<OutboxMessage, EventError> {
        let columns = &row.columns;
        let expected = self.routing_key_max_column().max(self.max_column()) + 1;
        if columns.len() < expected {
            return Err(EventError::ColumnCount {
                expected,
                found: columns.len(),
            });
        }
        let text = |index: usize| -> Option<&[u8]> {
            match columns.get(index)? {
                ColumnValue::Text(bytes) | ColumnValue::Binary(bytes) => Some(bytes.as_ref()),
                ColumnValue::Null | ColumnValue::UnchangedToast => None,
            }
        };
        let text_lossy = |index: usize| text(index).map(String::from_utf8_lossy);

        self.routing_key.render(routing_key, text);
        let routing_key = short_string("routing key", routing_key.as_str())?;

        let id = text_lossy(self.id).unwrap_or_default().into_owned();
        let event_type = text_lossy(self.event_type).unwrap_or_default();
        let aggregate_type = text_lossy(self.aggregate_type).unwrap_or_default();
        let aggregate_id = text_lossy(self.aggregate_id).unwrap_or_default();

        let body = match (columns.get(self.payload), self.payload_kind) {
            (Some(ColumnValue::Text(bytes)), PayloadKind::Bytes) => decode_bytea_hex(bytes)?,
            (Some(ColumnValue::Text(bytes) | ColumnValue::Binary(bytes)), _) => bytes.clone(),
            _ => Bytes::new(),
        };

        let mut headers = FieldTable::default();
        let mut headers_warning = None;
        if let Some(json) = self.headers.and_then(text)
            && let Err(problem) = add_json_headers(&mut headers, json)
        {
            headers_warning = Some(format!("headers column is {problem}; headers ignored"));
        }

        headers.insert(
            "x-aggregate-type".into(),
            AMQPValue::LongString(LongString::from(aggregate_type.as_bytes())),
        );
        headers.insert(
            "x-aggregate-id".into(),
            AMQPValue::LongString(LongString::from(aggregate_id.as_bytes())),
        );
        headers.insert(
            "x-commit-lsn".into(),
            AMQPValue::LongString(LongString::from(transaction.commit_lsn.to_string())),
        );
        headers.insert(
            "x-xid".into(),
            AMQPValue::LongLongInt(i64::from(transaction.xid)),
        );

        let timestamp = self
            .created_at
            .and_then(text_lossy)
            .and_then(|created_at| parse_unix_seconds(&created_at))
            .unwrap_or_else(|| postgres_micros_to_unix_seconds(transaction.commit_time_micros));

        let properties = BasicProperties::default()
            .with_delivery_mode(PERSISTENT)
            .with_message_id(short_string("event id", &id)?)
            .with_type(short_string("event type", &event_type)?)
            .with_content_type(self.payload_kind.content_type().into())
            .with_timestamp(timestamp)
            .with_app_id("walbox".into())
            .with_headers(headers);

        let exchange = match self.exchange.and_then(text_lossy) {
            Some(name) if !name.is_empty() => Some(short_string("exchange", &name)?),
            _ => None,
        };

        Ok(OutboxMessage {
            exchange,
            routing_key,
            body,
            properties,
            id,
            headers_warning,
        })
    }

    fn max_column(&self) -> usize {
        [
            self.id,
            self.aggregate_type,
            self.aggregate_id,
            self.event_type,
            self.payload,
        ]
        .into_iter()
        .chain(self.headers)
        .chain(self.created_at)
        .chain(self.exchange)
        .max()
        .unwrap_or(0)
    }

    fn routing_key_max_column(&self) -> usize {
        self.routing_key.max_column().unwrap_or(0)
    }
}

fn short_string(what: &'static str, text: &str) -> Result<ShortString, EventError> {
    ShortString::try_new(text).map_err(|_| EventError::TooLong {
        what,
        len: text.len(),
    })
}

/// bytea's text output is `\x` followed by two hex digits per byte.
fn decode_bytea_hex(text: &[u8]) -> Result<Bytes, EventError> {
    let hex = text.strip_prefix(b"\\x").ok_or(EventError::BadBytea)?;
    if hex.len() % 2 != 0 {
        return Err(EventError::BadBytea);
    }
    let nibble = |digit: u8| -> Result<u8, EventError> {
        match digit {
            b'0'..=b'9' => Ok(digit - b'0'),
            b'a'..=b'f' => Ok(digit - b'a' + 10),
            b'A'..=b'F' => Ok(digit - b'A' + 10),
            _ => Err(EventError::BadBytea),
        }
    };
    hex.chunks_exact(2)
        .map(|pair| Ok(nibble(pair[0])? << 4 | nibble(pair[1])?))
        .collect::<Result<Vec<u8>, _>>()
        .map(Bytes::from)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pgoutput::RelationColumn;

    fn relation(columns: &[(&str, u32)]) -> Relation {
        Relation {
            relation_id: 16384,
            namespace: "public".into(),
            name: "outbox".into(),
            replica_identity: b'd',
            columns: columns
                .iter()
                .map(|(name, type_oid)| RelationColumn {
                    flags: 0,
                    name: (*name).into(),
                    type_oid: *type_oid,
                    type_modifier: -1,
                })
                .collect(),
        }
    }

    fn outbox_relation() -> Relation {
        relation(&[
            ("id", 2950),
            ("aggregate_type", oid::TEXT),
            ("aggregate_id", oid::TEXT),
            ("event_type", oid::TEXT),
            ("payload", oid::JSONB),
            ("headers", oid::JSONB),
            ("created_at", 1184),
        ])
    }

    fn row(values: &[Option<&str>]) -> TupleData {
        TupleData {
            columns: values
                .iter()
                .map(|value| match value {
                    Some(text) => ColumnValue::Text(Bytes::copy_from_slice(text.as_bytes())),
                    None => ColumnValue::Null,
                })
                .collect(),
        }
    }

    const TRANSACTION: Transaction = Transaction {
        xid: 742,
        commit_lsn: Lsn(0x16B3748),
        commit_time_micros: 1_000_000,
    };

    fn shape(relation: &Relation, map: &str, template: &str) -> Result<OutboxShape, ShapeError> {
        OutboxShape::from_relation(
            relation,
            &ColumnMap::parse(map).unwrap(),
            &Template::parse(template).unwrap(),
        )
    }

    #[test]
    fn a_row_becomes_a_message_with_the_full_contract() {
        let shape = shape(&outbox_relation(), "", "{aggregate_type}.{event_type}").unwrap();
        let message = shape
            .message(
                &row(&[
                    Some("6f1c0d3e-0000-4000-8000-000000000001"),
                    Some("order"),
                    Some("o-17"),
                    Some("created"),
                    Some(r#"{"total": 12}"#),
                    Some(r#"{"trace": "t1"}"#),
                    Some("2026-11-22 14:59:17.5+00"),
                ]),
                &TRANSACTION,
                &mut String::new(),
            )
            .unwrap();
        assert_eq!(message.routing_key.as_str(), "order.created");
        assert_eq!(message.exchange, None);
        assert_eq!(&message.body[..], br#"{"total": 12}"#);
        let properties = &message.properties;
        assert_eq!(properties.delivery_mode(), &Some(2));
        assert_eq!(
            properties.message_id().as_ref().map(ShortString::as_str),
            Some("6f1c0d3e-0000-4000-8000-000000000001")
        );
        assert_eq!(
            properties.kind().as_ref().map(ShortString::as_str),
            Some("created")
        );
        assert_eq!(
            properties.content_type().as_ref().map(ShortString::as_str),
            Some("application/json")
        );
        assert_eq!(properties.timestamp(), &Some(1_795_359_557));
        assert_eq!(
            properties.app_id().as_ref().map(ShortString::as_str),
            Some("walbox")
        );
        let headers = properties.headers().as_ref().unwrap().inner();
        assert_eq!(
            headers.get("trace"),
            Some(&AMQPValue::LongString("t1".into()))
        );
        assert_eq!(
            headers.get("x-aggregate-type"),
            Some(&AMQPValue::LongString("order".into()))
        );
        assert_eq!(
            headers.get("x-aggregate-id"),
            Some(&AMQPValue::LongString("o-17".into()))
        );
        assert_eq!(
            headers.get("x-commit-lsn"),
            Some(&AMQPValue::LongString("0/16B3748".into()))
        );
        assert_eq!(headers.get("x-xid"), Some(&AMQPValue::LongLongInt(742)));
        assert_eq!(message.headers_warning, None);
    }

    #[test]
    fn nulls_give_empty_parts_and_commit_time() {
        let shape = shape(&outbox_relation(), "", "{aggregate_type}.{event_type}").unwrap();
        let message = shape
            .message(
                &row(&[
                    Some("1"),
                    None,
                    Some("a"),
                    Some("e"),
                    None,
                    Some("[1]"),
                    None,
                ]),
                &TRANSACTION,
                &mut String::new(),
            )
            .unwrap();
        assert_eq!(message.routing_key.as_str(), ".e");
        assert!(message.body.is_empty());
        assert_eq!(message.properties.timestamp(), &Some(946_684_801));
        assert_eq!(
            message.headers_warning.as_deref(),
            Some("headers column is a JSON array rather than an object; headers ignored")
        );
    }

    #[test]
    fn bytea_payload_is_decoded_and_text_gets_its_content_type() {
        let table = relation(&[
            ("id", 2950),
            ("aggregate_type", oid::TEXT),
            ("aggregate_id", oid::TEXT),
            ("event_type", oid::TEXT),
            ("payload", oid::BYTEA),
        ]);
        let shape = shape(&table, "", "x").unwrap();
        let message = shape
            .message(
                &row(&[
                    Some("1"),
                    Some("a"),
                    Some("b"),
                    Some("c"),
                    Some("\\x00ff41"),
                ]),
                &TRANSACTION,
                &mut String::new(),
            )
            .unwrap();
        assert_eq!(&message.body[..], &[0x00, 0xff, 0x41]);
        assert_eq!(
            message
                .properties
                .content_type()
                .as_ref()
                .map(ShortString::as_str),
            Some("application/octet-stream")
        );
        assert_eq!(decode_bytea_hex(b"\\x0"), Err(EventError::BadBytea));
        assert_eq!(decode_bytea_hex(b"00"), Err(EventError::BadBytea));
    }

    #[test]
    fn row_exchange_overrides_the_default() {
        let mut table = outbox_relation();
        table.columns.push(RelationColumn {
            flags: 0,
            name: "exchange".into(),
            type_oid: oid::TEXT,
            type_modifier: -1,
        });
        let shape = shape(&table, "", "k").unwrap();
        let values = [
            Some("1"),
            Some("a"),
            Some("b"),
            Some("c"),
            Some("{}"),
            None,
            None,
        ];
        let mut with = values.to_vec();
        with.push(Some("billing"));
        let message = shape
            .message(&row(&with), &TRANSACTION, &mut String::new())
            .unwrap();
        assert_eq!(
            message.exchange.as_ref().map(ShortString::as_str),
            Some("billing")
        );
        let mut without = values.to_vec();
        without.push(None);
        let message = shape
            .message(&row(&without), &TRANSACTION, &mut String::new())
            .unwrap();
        assert_eq!(message.exchange, None);
    }

    #[test]
    fn shape_errors_name_the_problem() {
        let table = relation(&[("id", 2950), ("payload", oid::JSONB)]);
        assert!(matches!(
            shape(&table, "", "k"),
            Err(ShapeError::MissingColumn {
                field: Field::AggregateType,
                ..
            })
        ));
        let table = relation(&[
            ("id", 2950),
            ("aggregate_type", oid::TEXT),
            ("aggregate_id", oid::TEXT),
            ("event_type", oid::TEXT),
            ("payload", 23),
        ]);
        assert!(matches!(
            shape(&table, "", "k"),
            Err(ShapeError::UnsupportedPayload { .. })
        ));
        // An explicitly mapped optional column must exist; a preset one may be absent.
        let table = relation(&[
            ("id", 2950),
            ("aggregate_type", oid::TEXT),
            ("aggregate_id", oid::TEXT),
            ("event_type", oid::TEXT),
            ("payload", oid::TEXT),
        ]);
        assert!(shape(&table, "", "k").is_ok());
        assert!(matches!(
            shape(&table, "headers=meta", "k"),
            Err(ShapeError::MissingColumn {
                field: Field::Headers,
                ..
            })
        ));
        assert!(matches!(
            shape(&table, "", "{tenant}"),
            Err(ShapeError::Template(_))
        ));
    }

    #[test]
    fn debezium_table_is_relayed() {
        let table = relation(&[
            ("id", 2950),
            ("aggregatetype", oid::VARCHAR),
            ("aggregateid", oid::VARCHAR),
            ("type", oid::VARCHAR),
            ("payload", oid::JSONB),
        ]);
        let shape = shape(&table, "debezium", "{aggregate_type}.{event_type}").unwrap();
        let message = shape
            .message(
                &row(&[
                    Some("1"),
                    Some("Order"),
                    Some("9"),
                    Some("Shipped"),
                    Some("{}"),
                ]),
                &TRANSACTION,
                &mut String::new(),
            )
            .unwrap();
        assert_eq!(message.routing_key.as_str(), "Order.Shipped");
    }

    #[test]
    fn short_rows_are_an_error_not_a_panic() {
        let shape = shape(&outbox_relation(), "", "k").unwrap();
        assert!(matches!(
            shape.message(&row(&[Some("1")]), &TRANSACTION, &mut String::new()),
            Err(EventError::ColumnCount { .. })
        ));
    }
}
