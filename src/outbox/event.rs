//! One inserted row → one AMQP message, following the message contract and the mapping
//! (`--columns`, templates, `--body`, `--header`).
//!
//! An [`OutboxShape`] is built from the table's Relation message (column positions and types,
//! templates resolved, once); [`OutboxShape::message`] then turns each Insert into an
//! [`OutboxMessage`] without looking anything up by name: it reads the row's fields, renders
//! the templates, hands an [`encode::Event`] to the body encoder, and assembles the
//! properties and headers.

use std::borrow::Cow;
use std::sync::Arc;

use amq_protocol::protocol::BasicProperties;
use amq_protocol::types::{AMQPValue, FieldTable, LongString, ShortString};
use bytes::Bytes;

use super::columns::{Field, Origin};
use super::contract;
use super::headers::{add_json_headers, add_object_headers};
use super::mapping::Mapping;
use super::message_id;
use super::row::{NotJson, Row, Source, Value};
use super::template::{ResolvedTemplate, TemplateError, resolve_source};
use super::timestamp::{parse_unix_micros, postgres_micros_to_unix_micros};
use crate::encode::{self, CloudEventAttributes, EncodeError, Encoder, PayloadKind, TraceContext};
use crate::lsn::Lsn;
use crate::pgoutput::{ColumnValue, Relation, TupleData};

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
    #[error("{flag}: {error}")]
    Template {
        flag: &'static str,
        error: TemplateError,
    },
}

/// Where the payload comes from.
#[derive(Clone, Debug)]
struct PayloadSource {
    source: Source,
    kind: PayloadKind,
}

/// Column positions and resolved templates of one version of the outbox table.
#[derive(Clone, Debug)]
pub struct OutboxShape {
    relation_id: u32,
    /// The relation's column names, in its order (for errors naming a column).
    column_names: Vec<String>,
    id: Option<Source>,
    aggregate_type: Option<Source>,
    aggregate_id: Option<Source>,
    event_type: Option<Source>,
    payload: PayloadSource,
    headers: Option<Source>,
    created_at: Option<Source>,
    exchange_column: Option<usize>,
    /// The trace context's columns, when the table has them.
    traceparent: Option<Source>,
    tracestate: Option<Source>,
    /// None when the exchange is one fixed name (the publisher's default).
    exchange: Option<ResolvedTemplate>,
    routing_key: ResolvedTemplate,
    /// None: the event type field, if mapped.
    message_type: Option<ResolvedTemplate>,
    extra_headers: Vec<(ShortString, ResolvedTemplate)>,
    ce: Option<(ResolvedTemplate, ResolvedTemplate)>,
    body_template: Option<ResolvedTemplate>,
    encoder: Arc<dyn Encoder>,
    /// The encoder wants the headers column as a JSON object (MassTransit's envelope).
    encoder_reads_headers: bool,
    walbox_headers: bool,
    /// Columns read through a JSON path, parsed once per row.
    json_columns: Vec<(usize, String)>,
    /// `--partition-key`, for a super stream.
    partition_key: Option<ResolvedTemplate>,
}

/// A message ready to publish.
#[derive(Debug)]
pub struct OutboxMessage {
    /// The rendered exchange (or the row's exchange column); None: the configured fixed one.
    pub exchange: Option<ShortString>,
    pub routing_key: ShortString,
    pub body: Bytes,
    pub properties: BasicProperties,
    /// The event id (the message id), for log lines about this event.
    pub id: String,
    /// Set when the headers column could not be used (the event still goes out).
    pub headers_warning: Option<String>,
    /// The rendered `--partition-key` a super stream routes by, carried beside the message
    /// rather than as a header (the wire stays as the mapping says); None without one.
    pub partition_key: Option<String>,
}

impl OutboxMessage {
    /// The header `name`, if the message has it.
    #[cfg(test)]
    pub(crate) fn header(&self, name: &str) -> Option<&AMQPValue> {
        self.properties.headers().as_ref()?.inner().get(name)
    }

    /// Mark a message sent again by `walbox replay`: header `x-replay: true`, so consumers
    /// can tell a deliberate replay from a redelivery.
    pub fn mark_replayed(&mut self) {
        let mut headers = self.properties.headers().clone().unwrap_or_default();
        contract::add_replay_header(&mut headers);
        self.properties = std::mem::take(&mut self.properties).with_headers(headers);
    }

    /// Mark a message built from a row read from the table (the backfill): header
    /// `x-backfill: true` instead of the WAL position headers, which such a row has none of.
    /// Everything else, `message_id` included, is what the row gives live.
    pub fn mark_backfilled(&mut self) {
        let headers = self.properties.headers().clone().unwrap_or_default();
        let headers = contract::backfilled(&headers);
        self.properties = std::mem::take(&mut self.properties).with_headers(headers);
    }
}

/// The headers a row gives (before the encoding's and walbox's own).
#[derive(Default)]
struct RowHeaders {
    headers: FieldTable,
    /// Set when the headers column could not be used.
    warning: Option<String>,
    /// The headers column's object, kept when the encoder reads it.
    object: Option<serde_json::Map<String, serde_json::Value>>,
}

/// An event's trace context, read from its row.
#[derive(Debug)]
struct OwnedTrace {
    traceparent: String,
    tracestate: Option<String>,
}

impl OwnedTrace {
    fn context(&self) -> TraceContext<'_> {
        TraceContext {
            traceparent: &self.traceparent,
            tracestate: self.tracestate.as_deref(),
        }
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
    #[error("{0}")]
    NotJson(#[from] NotJson),
    #[error("{0}")]
    Encode(#[from] EncodeError),
}

impl OutboxShape {
    /// Resolve the column map and the templates against a Relation message. The steps run in
    /// a fixed order, so a relation with several faults reports the same one every time.
    pub fn from_relation(relation: &Relation, mapping: &Mapping) -> Result<Self, ShapeError> {
        let at = Resolver {
            relation,
            mapping,
            table: format!("{}.{}", relation.namespace, relation.name),
        };
        let payload = at.payload()?;
        let exchange_column = at.field(Field::Exchange)?.map(|source| source.index);
        let exchange = match mapping.exchange.as_constant() {
            Some(_) if !mapping.own_exchange => None,
            _ => Some(at.template("--exchange", &mapping.exchange)?),
        };
        let extra_headers = mapping
            .headers
            .iter()
            .map(|(name, template)| Ok((name.clone(), at.template("--header", template)?)))
            .collect::<Result<Vec<_>, ShapeError>>()?;
        let ce = if mapping.body.is_cloudevents() {
            Some((
                at.template("--ce-source", &mapping.ce_source)?,
                at.template("--ce-type", &mapping.ce_type)?,
            ))
        } else {
            None
        };
        let body_template = at.optional("--body-template", mapping.body_template.as_ref())?;
        let partition_key = at.optional("--partition-key", mapping.partition_key.as_ref())?;
        let mut shape = OutboxShape {
            relation_id: relation.relation_id,
            column_names: relation.columns.iter().map(|c| c.name.clone()).collect(),
            id: at.field(Field::Id)?,
            aggregate_type: at.field(Field::AggregateType)?,
            aggregate_id: at.field(Field::AggregateId)?,
            event_type: at.field(Field::EventType)?,
            payload,
            headers: at.field(Field::Headers)?,
            created_at: at.field(Field::CreatedAt)?,
            exchange_column,
            traceparent: at.field(Field::Traceparent)?,
            tracestate: at.field(Field::Tracestate)?,
            exchange,
            routing_key: at.template("--routing-key", &mapping.routing_key)?,
            message_type: at.optional("--message-type", mapping.message_type.as_ref())?,
            extra_headers,
            ce,
            body_template,
            encoder: Arc::from(mapping.body.encoder()),
            encoder_reads_headers: mapping.body == encode::Encoding::MassTransit,
            walbox_headers: mapping.walbox_headers,
            json_columns: Vec::new(),
            partition_key,
        };
        shape.json_columns = shape.columns_read_through_paths(relation);
        Ok(shape)
    }

    fn columns_read_through_paths(&self, relation: &Relation) -> Vec<(usize, String)> {
        let fields = [
            &self.id,
            &self.aggregate_type,
            &self.aggregate_id,
            &self.event_type,
            &self.headers,
            &self.created_at,
            &self.traceparent,
            &self.tracestate,
        ]
        .into_iter()
        .flatten()
        .chain(std::iter::once(&self.payload.source))
        .filter(|source| !source.path.is_empty())
        .map(|source| source.index);
        let templates = self
            .templates()
            .flat_map(ResolvedTemplate::sources)
            .filter(|(_, path)| *path)
            .map(|(index, _)| index);
        let mut indexes: Vec<usize> = fields.chain(templates).collect();
        indexes.sort_unstable();
        indexes.dedup();
        indexes
            .into_iter()
            .map(|index| (index, relation.columns[index].name.clone()))
            .collect()
    }

    fn templates(&self) -> impl Iterator<Item = &ResolvedTemplate> {
        self.exchange
            .iter()
            .chain(std::iter::once(&self.routing_key))
            .chain(self.message_type.iter())
            .chain(self.extra_headers.iter().map(|(_, template)| template))
            .chain(self.ce.iter().flat_map(|(source, kind)| [source, kind]))
            .chain(self.body_template.iter())
            .chain(self.partition_key.iter())
    }

    pub fn relation_id(&self) -> u32 {
        self.relation_id
    }

    /// The index of the column `field` is read from, when it is a whole column (not a JSON
    /// path into one): the backfill orders and resumes by such columns.
    pub fn whole_column(&self, field: Field) -> Option<usize> {
        let source = match field {
            Field::Id => self.id.as_ref(),
            Field::CreatedAt => self.created_at.as_ref(),
            Field::AggregateType => self.aggregate_type.as_ref(),
            Field::AggregateId => self.aggregate_id.as_ref(),
            Field::EventType => self.event_type.as_ref(),
            Field::Headers => self.headers.as_ref(),
            Field::Payload => Some(&self.payload.source),
            Field::Traceparent => self.traceparent.as_ref(),
            Field::Tracestate => self.tracestate.as_ref(),
            Field::Exchange => return self.exchange_column,
        }?;
        source.path.is_empty().then_some(source.index)
    }

    /// Build the message for the `index`-th outbox row (from 0) of `transaction`.
    /// `routing_key` is scratch space reused per event.
    pub fn message(
        &self,
        tuple: &TupleData,
        transaction: &Transaction,
        index: u32,
        routing_key: &mut String,
    ) -> Result<OutboxMessage, EventError> {
        let row = self.row(tuple)?;
        self.routing_key.render(routing_key, &row)?;
        let routing_key = short_string("routing key", routing_key.as_str())?;
        let id = self.event_id(&row, transaction, index)?;
        let event_type = self
            .text(&row, self.event_type.as_ref())?
            .unwrap_or_default();
        let payload = self.payload(&row)?;
        let time_micros = self.time_micros(&row, transaction)?;
        // One scratch buffer for every template rendered below.
        let mut scratch = String::new();
        let RowHeaders {
            mut headers,
            warning: headers_warning,
            object: headers_object,
        } = self.row_headers(&row, &mut scratch)?;
        let trace = self.trace(&row, &headers)?;
        if let Some(trace) = &trace {
            contract::add_trace_headers(&mut headers, &trace.context());
        }

        let (ce_source, ce_type) = self.cloud_event_attributes(&row)?;
        let aggregate_id = self.text(&row, self.aggregate_id.as_ref())?;
        let rendered_body = self.rendered_body(&row)?;
        let encoded = self.encoder.encode(&encode::Event {
            id: &id,
            event_type: &event_type,
            payload: &payload,
            payload_kind: self.payload.kind,
            time_micros,
            headers: headers_object.as_ref(),
            ce: self.ce.as_ref().map(|_| CloudEventAttributes {
                source: &ce_source,
                kind: &ce_type,
                subject: aggregate_id.as_deref(),
            }),
            rendered_body: self.body_template.as_ref().map(|_| rendered_body.as_str()),
            trace: trace.as_ref().map(OwnedTrace::context),
        })?;
        for (name, value) in encoded.headers {
            headers.insert(name, value);
        }
        if self.walbox_headers {
            self.add_walbox_headers(&mut headers, &row, aggregate_id.as_deref(), transaction)?;
        }

        let message_type = self.message_type(&row, &event_type, &mut scratch)?;
        let properties = contract::Properties {
            message_id: Some(short_string("event id", &id)?),
            content_type: Some(short_string("content type", &encoded.content_type)?),
            timestamp: contract::seconds(time_micros),
            message_type: match message_type.is_empty() {
                true => None,
                false => Some(short_string("message type", &message_type)?),
            },
        }
        .build(headers);

        Ok(OutboxMessage {
            partition_key: self.partition_key(&row, &mut scratch)?,
            exchange: self.exchange(&row, &mut scratch)?,
            routing_key,
            body: encoded.body,
            properties,
            id,
            headers_warning,
        })
    }

    /// The insert's row, once it is known to have every column of the table's shape.
    fn row<'t>(&self, tuple: &'t TupleData) -> Result<Row<'t>, EventError> {
        if tuple.columns.len() < self.column_names.len() {
            return Err(EventError::ColumnCount {
                expected: self.column_names.len(),
                found: tuple.columns.len(),
            });
        }
        Ok(Row::new(&tuple.columns, &self.json_columns))
    }

    /// The name of the first column of an insert's row that carries pgoutput's "unchanged
    /// TOAST" marker (`u`) instead of a value. PostgreSQL sends it only for an update's column
    /// whose stored value did not change; an insert has no previous version to refer to, so
    /// the marker in one means the stream is not what PostgreSQL writes, and the value is
    /// unknown (not NULL). The row reader reads the marker as NULL, so the apply step asks
    /// this first.
    /// A column past the relation's (which [`Self::message`] refuses anyway) is named by its
    /// number.
    pub fn unchanged_toast(&self, tuple: &TupleData) -> Option<String> {
        let index = tuple
            .columns
            .iter()
            .position(|value| *value == ColumnValue::UnchangedToast)?;
        Some(self.column_names.get(index).map_or_else(
            || format!("number {}", index + 1),
            |name| format!("`{name}`"),
        ))
    }

    /// The rendered `--body-template` (empty without one).
    fn rendered_body(&self, row: &Row<'_>) -> Result<String, EventError> {
        let mut rendered = String::new();
        if let Some(template) = &self.body_template {
            template.render(&mut rendered, row)?;
        }
        Ok(rendered)
    }

    /// The id column's value, or (missing or empty) an id derived from the WAL position.
    fn event_id(
        &self,
        row: &Row<'_>,
        transaction: &Transaction,
        index: u32,
    ) -> Result<String, EventError> {
        Ok(match self.text(row, self.id.as_ref())? {
            Some(id) if !id.is_empty() => id.into_owned(),
            _ => message_id::from_position(transaction.commit_lsn, index),
        })
    }

    /// When the event happened (µs since the Unix epoch): created_at when it reads as a
    /// time, else the commit time.
    fn time_micros(&self, row: &Row<'_>, transaction: &Transaction) -> Result<i64, EventError> {
        Ok(self
            .text(row, self.created_at.as_ref())?
            .and_then(|created_at| parse_unix_micros(&created_at))
            .and_then(|micros| i64::try_from(micros).ok())
            .unwrap_or_else(|| postgres_micros_to_unix_micros(transaction.commit_time_micros)))
    }

    /// The headers from the row: the headers column's keys, then each `--header` template.
    fn row_headers(&self, row: &Row<'_>, scratch: &mut String) -> Result<RowHeaders, EventError> {
        let mut headers = self.headers_column(row)?;
        for (name, template) in &self.extra_headers {
            if template.all_null(row) && template.sources().next().is_some() {
                continue;
            }
            template.render(scratch, row)?;
            headers.headers.insert(
                name.clone(),
                AMQPValue::LongString(LongString::from(scratch.as_bytes())),
            );
        }
        Ok(headers)
    }

    /// The headers column's keys as headers. A value that is not a JSON object is left out
    /// with a warning: the event still goes out.
    fn headers_column(&self, row: &Row<'_>) -> Result<RowHeaders, EventError> {
        let mut headers = RowHeaders::default();
        let Some(source) = &self.headers else {
            return Ok(headers);
        };
        match row.value(source)? {
            Value::Text { bytes, .. } => {
                match add_json_headers(&mut headers.headers, bytes, self.encoder_reads_headers) {
                    Ok(object) => headers.object = object,
                    Err(problem) => {
                        headers.warning =
                            Some(format!("headers column is {problem}; headers ignored"));
                    }
                }
            }
            Value::Json(serde_json::Value::Object(object)) => {
                add_object_headers(&mut headers.headers, object);
                if self.encoder_reads_headers {
                    headers.object = Some(object.clone());
                }
            }
            Value::Json(serde_json::Value::Null) | Value::Null => {}
            Value::Json(other) => {
                headers.warning = Some(format!(
                    "headers value is {} rather than a JSON object; headers ignored",
                    other
                ));
            }
        }
        Ok(headers)
    }

    /// The event's trace context: the `traceparent` column (with the `tracestate` column)
    /// when it holds a value, else the `traceparent` and `tracestate` headers the row already
    /// gave (its headers column, or a `--header`). The pair always comes from one place, so a
    /// tracestate never travels with another trace's traceparent.
    fn trace(&self, row: &Row<'_>, headers: &FieldTable) -> Result<Option<OwnedTrace>, NotJson> {
        if let Some(traceparent) = self.text(row, self.traceparent.as_ref())?
            && !traceparent.is_empty()
        {
            let tracestate = self.text(row, self.tracestate.as_ref())?;
            return Ok(Some(OwnedTrace {
                traceparent: traceparent.into_owned(),
                tracestate: tracestate
                    .filter(|state| !state.is_empty())
                    .map(Cow::into_owned),
            }));
        }
        let header = |name: &str| match headers.inner().get(name) {
            Some(AMQPValue::LongString(text)) if !text.as_bytes().is_empty() => {
                Some(String::from_utf8_lossy(text.as_bytes()).into_owned())
            }
            _ => None,
        };
        Ok(header(contract::TRACEPARENT).map(|traceparent| OwnedTrace {
            traceparent,
            tracestate: header(contract::TRACESTATE),
        }))
    }

    /// The rendered CloudEvents `source` and `type` (empty without a CloudEvents encoding).
    fn cloud_event_attributes(&self, row: &Row<'_>) -> Result<(String, String), EventError> {
        let (mut ce_source, mut ce_type) = (String::new(), String::new());
        if let Some((source, kind)) = &self.ce {
            source.render(&mut ce_source, row)?;
            kind.render(&mut ce_type, row)?;
        }
        Ok((ce_source, ce_type))
    }

    /// walbox's own headers: the aggregate's type and id (when mapped) and the position.
    fn add_walbox_headers(
        &self,
        headers: &mut FieldTable,
        row: &Row<'_>,
        aggregate_id: Option<&str>,
        transaction: &Transaction,
    ) -> Result<(), EventError> {
        let aggregate_type = match &self.aggregate_type {
            Some(source) => Some(self.text(row, Some(source))?.unwrap_or_default()),
            None => None,
        };
        let aggregate_id = self
            .aggregate_id
            .as_ref()
            .map(|_| aggregate_id.unwrap_or_default());
        contract::add_aggregate_headers(headers, aggregate_type.as_deref(), aggregate_id);
        contract::add_position_headers(headers, transaction);
        Ok(())
    }

    /// The message's type property: the `--message-type` template, else the event type.
    fn message_type<'e>(
        &self,
        row: &Row<'_>,
        event_type: &'e str,
        scratch: &mut String,
    ) -> Result<Cow<'e, str>, EventError> {
        Ok(match &self.message_type {
            None => Cow::Borrowed(event_type),
            Some(template) => {
                template.render(scratch, row)?;
                Cow::Owned(std::mem::take(scratch))
            }
        })
    }

    /// The rendered `--partition-key`, when there is one.
    fn partition_key(
        &self,
        row: &Row<'_>,
        scratch: &mut String,
    ) -> Result<Option<String>, EventError> {
        Ok(match &self.partition_key {
            Some(template) => {
                template.render(scratch, row)?;
                Some(std::mem::take(scratch))
            }
            None => None,
        })
    }

    /// The row's exchange column when not empty, else the exchange template; None: the
    /// configured fixed exchange.
    fn exchange(
        &self,
        row: &Row<'_>,
        scratch: &mut String,
    ) -> Result<Option<ShortString>, EventError> {
        if let Some(name) = self.exchange_column.and_then(|index| row.text(index))
            && !name.is_empty()
        {
            return Ok(Some(short_string("exchange", &super::filter::utf8(name))?));
        }
        Ok(match &self.exchange {
            Some(template) => {
                template.render(scratch, row)?;
                Some(short_string("exchange", scratch)?)
            }
            None => None,
        })
    }

    /// The row as far as it can be read without the templates and the encoding, for the
    /// dead-letter record of a row that cannot become a message. Never fails: what cannot be
    /// read is left out (the id falls back to the WAL-position id, the body is the payload
    /// column's raw text).
    pub fn fallback(
        &self,
        tuple: &TupleData,
        transaction: &Transaction,
        index: u32,
    ) -> OutboxMessage {
        let row = Row::new(&tuple.columns, &self.json_columns);
        let read = |source: Option<&Source>| {
            self.text(&row, source)
                .ok()
                .flatten()
                .filter(|text| !text.is_empty())
                .map(Cow::into_owned)
        };
        let id = read(self.id.as_ref())
            .unwrap_or_else(|| message_id::from_position(transaction.commit_lsn, index));
        let mut routing_key = String::new();
        let routing_key = self
            .routing_key
            .render(&mut routing_key, &row)
            .ok()
            .and_then(|()| ShortString::try_new(routing_key).ok())
            .unwrap_or_default();
        let mut headers = FieldTable::default();
        if self.walbox_headers {
            let aggregate = |source: &Option<Source>| {
                source
                    .as_ref()
                    .map(|source| read(Some(source)).unwrap_or_default())
            };
            contract::add_aggregate_headers(
                &mut headers,
                aggregate(&self.aggregate_type).as_deref(),
                aggregate(&self.aggregate_id).as_deref(),
            );
            contract::add_position_headers(&mut headers, transaction);
        }
        let properties = contract::Properties {
            message_id: ShortString::try_new(id.clone()).ok(),
            content_type: None,
            timestamp: contract::commit_timestamp(transaction),
            message_type: read(self.event_type.as_ref()).and_then(|t| ShortString::try_new(t).ok()),
        }
        .build(headers);
        // A key that cannot be rendered (a JSON path into text that is not JSON) is empty.
        let partition_key = self.partition_key.as_ref().map(|template| {
            let mut key = String::new();
            match template.render(&mut key, &row) {
                Ok(()) => key,
                Err(_) => String::new(),
            }
        });
        OutboxMessage {
            exchange: None,
            routing_key,
            body: row
                .bytes(self.payload.source.index)
                .cloned()
                .unwrap_or_default(),
            properties,
            id,
            headers_warning: None,
            partition_key,
        }
    }

    /// A field's text (a JSON string's content, other JSON as text); None for NULL.
    fn text<'r>(
        &self,
        row: &'r Row<'_>,
        source: Option<&Source>,
    ) -> Result<Option<Cow<'r, str>>, NotJson> {
        let Some(source) = source else {
            return Ok(None);
        };
        Ok(match row.value(source)? {
            Value::Null | Value::Json(serde_json::Value::Null) => None,
            value => Some(super::filter::plain(value)),
        })
    }

    /// The payload bytes: the column's (bytea decoded), or the JSON text of a path's value.
    fn payload(&self, row: &Row<'_>) -> Result<Bytes, EventError> {
        let source = &self.payload.source;
        if !source.path.is_empty() {
            return Ok(match row.value(source)? {
                Value::Json(json) if !json.is_null() => Bytes::from(json.to_string()),
                _ => Bytes::new(),
            });
        }
        Ok(match (row.bytes(source.index), self.payload.kind) {
            (Some(bytes), PayloadKind::Bytes) => decode_bytea_hex(bytes)?,
            (Some(bytes), _) => bytes.clone(),
            (None, _) => Bytes::new(),
        })
    }
}

/// The mapping's fields and templates, resolved against one relation, each failure naming
/// the table.
struct Resolver<'a> {
    relation: &'a Relation,
    mapping: &'a Mapping,
    table: String,
}

impl Resolver<'_> {
    fn missing(&self, field: Field) -> ShapeError {
        ShapeError::MissingColumn {
            table: self.table.clone(),
            field,
            column: self
                .mapping
                .columns
                .column(field)
                .map_or_else(|| field.name().to_owned(), |c| c.column().to_owned()),
        }
    }

    /// Where `field` is read from: None when it is not mapped, or when a preset optional
    /// column is absent; a mapped column the relation lacks is an error.
    fn field(&self, field: Field) -> Result<Option<Source>, ShapeError> {
        let map = &self.mapping.columns;
        if map.column(field).is_none() {
            return Ok(None);
        }
        let name = super::path::ColumnRef::parse(field.name()).expect("field names parse");
        match resolve_source(map, self.relation, &name) {
            Some(source) => Ok(Some(source)),
            None if field.is_required() || map.origin(field) != Some(Origin::PresetOptional) => {
                Err(self.missing(field))
            }
            None => Ok(None),
        }
    }

    /// The payload's column (required) and how its type is read.
    fn payload(&self) -> Result<PayloadSource, ShapeError> {
        let source = self
            .field(Field::Payload)?
            .ok_or_else(|| self.missing(Field::Payload))?;
        let kind = if source.path.is_empty() {
            let column = &self.relation.columns[source.index];
            PayloadKind::from_type_oid(column.type_oid).ok_or_else(|| {
                ShapeError::UnsupportedPayload {
                    table: self.table.clone(),
                    column: column.name.clone(),
                    type_oid: column.type_oid,
                }
            })?
        } else {
            PayloadKind::Json
        };
        Ok(PayloadSource { source, kind })
    }

    /// `template`, given by `flag`, resolved against the relation's columns.
    fn template(
        &self,
        flag: &'static str,
        template: &super::Template,
    ) -> Result<ResolvedTemplate, ShapeError> {
        template
            .resolve(&self.mapping.columns, self.relation)
            .map_err(|error| ShapeError::Template { flag, error })
    }

    fn optional(
        &self,
        flag: &'static str,
        template: Option<&super::Template>,
    ) -> Result<Option<ResolvedTemplate>, ShapeError> {
        template.map(|t| self.template(flag, t)).transpose()
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
    use crate::outbox::Template;
    use crate::pgoutput::RelationColumn;
    use crate::pgoutput::TupleData;
    use crate::pgoutput::fixture::{oid, outbox_relation, outbox_row, relation, row};

    const TRANSACTION: Transaction = Transaction {
        xid: 742,
        commit_lsn: Lsn(0x16B3748),
        commit_time_micros: 1_000_000,
    };

    fn shape(relation: &Relation, map: &str, template: &str) -> Result<OutboxShape, ShapeError> {
        OutboxShape::from_relation(relation, &Mapping::with_columns(map, template))
    }

    /// The message of the first outbox row of [`TRANSACTION`] with these values.
    fn message(shape: &OutboxShape, values: &[Option<&str>]) -> Result<OutboxMessage, EventError> {
        shape.message(&row(values), &TRANSACTION, 0, &mut String::new())
    }

    fn text(value: &str) -> Option<AMQPValue> {
        Some(AMQPValue::LongString(value.into()))
    }

    #[test]
    fn a_row_becomes_a_message_with_the_full_contract() {
        let shape = shape(&outbox_relation(), "", "{aggregate_type}.{event_type}").unwrap();
        let message = shape
            .message(
                &outbox_row(r#"{"trace": "t1"}"#),
                &TRANSACTION,
                0,
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
        let message = message(
            &shape,
            &[
                Some("1"),
                None,
                Some("a"),
                Some("e"),
                None,
                Some("[1]"),
                None,
            ],
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
        let message = message(
            &shape,
            &[
                Some("1"),
                Some("a"),
                Some("b"),
                Some("c"),
                Some("\\x00ff41"),
            ],
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
        let routed = message(&shape, &with).unwrap();
        assert_eq!(
            routed.exchange.as_ref().map(ShortString::as_str),
            Some("billing")
        );
        let mut without = values.to_vec();
        without.push(None);
        assert_eq!(message(&shape, &without).unwrap().exchange, None);
    }

    #[test]
    fn shape_errors_name_the_problem() {
        let table = relation(&[("id", 2950), ("body", oid::JSONB)]);
        assert!(matches!(
            shape(&table, "", "k"),
            Err(ShapeError::MissingColumn {
                field: Field::Payload,
                ..
            })
        ));
        // Only the payload is required: every other field may be unmapped.
        let table = relation(&[("payload", oid::JSONB)]);
        assert!(shape(&table, "id=,aggregate_type=,aggregate_id=,event_type=", "k").is_ok());
        assert!(matches!(
            shape(&table, "", "k"),
            Err(ShapeError::MissingColumn {
                field: Field::Id,
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
            Err(ShapeError::Template { .. })
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
        let message = message(
            &shape,
            &[
                Some("1"),
                Some("Order"),
                Some("9"),
                Some("Shipped"),
                Some("{}"),
            ],
        )
        .unwrap();
        assert_eq!(message.routing_key.as_str(), "Order.Shipped");
    }

    #[test]
    fn short_rows_are_an_error_not_a_panic() {
        let shape = shape(&outbox_relation(), "", "k").unwrap();
        assert!(matches!(
            message(&shape, &[Some("1")]),
            Err(EventError::ColumnCount { .. })
        ));
    }

    const ORDER_CREATED: &str = "Shop.Orders.OrderCreated";

    fn ef_core_relation() -> Relation {
        relation(&[
            ("Id", 2950),
            ("OccurredOnUtc", 1184),
            ("Type", oid::TEXT),
            ("Content", oid::TEXT),
            ("ProcessedOnUtc", 1184),
        ])
    }

    #[test]
    fn an_id_less_table_gets_an_id_from_the_wal_position() {
        let table = relation(&[("payload", oid::JSONB)]);
        let shape = shape(
            &table,
            "id=,aggregate_type=,aggregate_id=,event_type=",
            "fixed",
        )
        .unwrap();
        let message = |index| {
            shape
                .message(&row(&[Some("{}")]), &TRANSACTION, index, &mut String::new())
                .unwrap()
        };
        let first = message(0);
        assert_eq!(
            first.id,
            message_id::from_position(TRANSACTION.commit_lsn, 0)
        );
        assert_eq!(
            first.id,
            message(0).id,
            "the same position gives the same id"
        );
        assert_ne!(first.id, message(1).id);
        assert_eq!(
            first
                .properties
                .message_id()
                .as_ref()
                .map(ShortString::as_str),
            Some(first.id.as_str())
        );
        // No event type column: no `type` property; no aggregate columns: no x-aggregate-*.
        assert_eq!(first.properties.kind(), &None);
        assert_eq!(first.header("x-aggregate-type"), None);
        assert_eq!(first.header("x-commit-lsn"), text("0/16B3748").as_ref());
    }

    #[test]
    fn the_ef_core_outbox_gets_its_envelope_from_a_body_template() {
        let mapping = Mapping {
            body: encode::Encoding::Template,
            body_template: Some(
                Template::parse_json(r#"{"Id": {id|json}, "Content": {payload|json}}"#).unwrap(),
            ),
            walbox_headers: false,
            ..Mapping::with_columns("outbox-messages", "outbox")
        };
        let shape = OutboxShape::from_relation(&ef_core_relation(), &mapping).unwrap();
        let content = r#"{"orderId": 7, "note": "say \"hi\""}"#;
        let message = message(
            &shape,
            &[
                Some("6f1c0d3e-0000-4000-8000-000000000001"),
                Some("2026-11-22 14:59:17.5+00"),
                Some(ORDER_CREATED),
                Some(content),
                None,
            ],
        )
        .unwrap();
        let body: serde_json::Value = serde_json::from_slice(&message.body).unwrap();
        assert_eq!(
            body,
            serde_json::json!({"Id": "6f1c0d3e-0000-4000-8000-000000000001", "Content": content})
        );
        assert_eq!(
            message
                .properties
                .content_type()
                .as_ref()
                .map(ShortString::as_str),
            Some("application/json")
        );
        assert_eq!(message.properties.timestamp(), &Some(1_795_359_557));
        assert_eq!(
            message
                .properties
                .headers()
                .as_ref()
                .map(|h| h.inner().len()),
            Some(0)
        );
    }

    #[test]
    fn encodings_set_body_and_content_type() {
        for (body, content_type) in [
            (
                encode::Encoding::CloudEvents,
                "application/cloudevents+json",
            ),
            (
                encode::Encoding::MassTransit,
                "application/vnd.masstransit+json",
            ),
            (encode::Encoding::CloudEventsBinary, "application/json"),
        ] {
            let mapping = Mapping {
                body,
                ..Mapping::with_columns("", "{aggregate_type}.{event_type}")
            };
            let shape = OutboxShape::from_relation(&outbox_relation(), &mapping).unwrap();
            let message = message(
                &shape,
                &[
                    Some("1"),
                    Some("order"),
                    Some("o-1"),
                    Some(ORDER_CREATED),
                    Some(r#"{"n": 1}"#),
                    Some(r#"{"trace": "t"}"#),
                    None,
                ],
            )
            .unwrap();
            assert_eq!(
                message
                    .properties
                    .content_type()
                    .as_ref()
                    .map(ShortString::as_str),
                Some(content_type)
            );
            if body == encode::Encoding::CloudEventsBinary {
                assert_eq!(message.header("ce-id"), text("1").as_ref());
                assert_eq!(&message.body[..], br#"{"n": 1}"#);
            } else {
                let parsed: serde_json::Value = serde_json::from_slice(&message.body).unwrap();
                assert!(parsed.is_object());
            }
        }
    }

    const TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    /// The outbox table with trace context columns.
    fn traced_relation() -> Relation {
        let mut table = outbox_relation();
        for name in ["traceparent", "tracestate"] {
            table.columns.push(RelationColumn {
                flags: 0,
                name: name.into(),
                type_oid: oid::TEXT,
                type_modifier: -1,
            });
        }
        table
    }

    /// A row of [`traced_relation`] with these headers and trace columns.
    fn traced_row(
        headers: Option<&str>,
        traceparent: Option<&str>,
        tracestate: Option<&str>,
    ) -> TupleData {
        row(&[
            Some("6f1c0d3e-0000-4000-8000-000000000001"),
            Some("order"),
            Some("o-17"),
            Some("Shop.Orders.OrderCreated"),
            Some(r#"{"total": 12}"#),
            headers,
            None,
            traceparent,
            tracestate,
        ])
    }

    fn traced_message(body: encode::Encoding, tuple: &TupleData) -> OutboxMessage {
        let mapping = Mapping {
            body,
            ..Mapping::with_columns("", "k")
        };
        let shape = OutboxShape::from_relation(&traced_relation(), &mapping).unwrap();
        shape
            .message(tuple, &TRANSACTION, 0, &mut String::new())
            .unwrap()
    }

    #[test]
    fn trace_columns_become_the_w3c_headers() {
        let tuple = traced_row(None, Some(TRACEPARENT), Some("congo=t61"));
        let message = traced_message(encode::Encoding::Raw, &tuple);
        assert_eq!(message.header("traceparent"), text(TRACEPARENT).as_ref());
        assert_eq!(message.header("tracestate"), text("congo=t61").as_ref());
        // NULL or empty trace columns: no trace headers at all.
        for empty in [None, Some("")] {
            let tuple = traced_row(None, empty, Some("congo=t61"));
            let message = traced_message(encode::Encoding::Raw, &tuple);
            assert_eq!(message.header("traceparent"), None);
            assert_eq!(message.header("tracestate"), None);
        }
    }

    #[test]
    fn the_headers_column_gives_the_trace_when_the_columns_do_not() {
        let headers = format!(r#"{{"traceparent": "{TRACEPARENT}", "tracestate": "rojo=1"}}"#);
        let tuple = traced_row(Some(&headers), None, None);
        let message = traced_message(encode::Encoding::CloudEventsBinary, &tuple);
        assert_eq!(message.header("traceparent"), text(TRACEPARENT).as_ref());
        assert_eq!(message.header("ce-traceparent"), text(TRACEPARENT).as_ref());
        assert_eq!(message.header("ce-tracestate"), text("rojo=1").as_ref());
        // A tracestate alone is no trace context (W3C reads it only after a traceparent).
        let tuple = traced_row(Some(r#"{"tracestate": "rojo=1"}"#), None, None);
        let message = traced_message(encode::Encoding::CloudEventsBinary, &tuple);
        assert_eq!(message.header("ce-traceparent"), None);
        assert_eq!(message.header("ce-tracestate"), None);
    }

    #[test]
    fn the_trace_column_wins_and_brings_its_own_tracestate() {
        let headers = r#"{"traceparent": "00-aaaa-bbbb-01", "tracestate": "other=1"}"#;
        let tuple = traced_row(Some(headers), Some(TRACEPARENT), None);
        let message = traced_message(encode::Encoding::Raw, &tuple);
        assert_eq!(message.header("traceparent"), text(TRACEPARENT).as_ref());
        // The header's tracestate belonged to another traceparent: it is dropped.
        assert_eq!(message.header("tracestate"), None);
    }

    #[test]
    fn every_encoding_carries_the_trace_where_its_consumers_look() {
        let tuple = traced_row(None, Some(TRACEPARENT), Some("congo=t61"));
        let structured = traced_message(encode::Encoding::CloudEvents, &tuple);
        let body: serde_json::Value = serde_json::from_slice(&structured.body).unwrap();
        assert_eq!(body["traceparent"], serde_json::json!(TRACEPARENT));
        assert_eq!(body["tracestate"], serde_json::json!("congo=t61"));
        assert_eq!(structured.header("traceparent"), text(TRACEPARENT).as_ref());
        let masstransit = traced_message(encode::Encoding::MassTransit, &tuple);
        assert_eq!(
            masstransit.header("MT-Activity-Id"),
            text(TRACEPARENT).as_ref()
        );
        assert_eq!(
            masstransit.header("traceparent"),
            text(TRACEPARENT).as_ref()
        );
        // Without a trace: none of it.
        let plain = traced_row(None, None, None);
        let structured = traced_message(encode::Encoding::CloudEvents, &plain);
        let body: serde_json::Value = serde_json::from_slice(&structured.body).unwrap();
        assert_eq!(body.get("traceparent"), None);
        let masstransit = traced_message(encode::Encoding::MassTransit, &plain);
        assert_eq!(masstransit.header("MT-Activity-Id"), None);
    }
}
