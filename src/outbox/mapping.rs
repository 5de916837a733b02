//! What a row becomes on the wire, validated: the column map, the exchange, routing-key and
//! message-type templates, extra headers, the body encoding and its CloudEvents attributes.
//! `crate::config` builds it from the flags (`--columns`, `--exchange`, `--preset`, ...);
//! [`super::OutboxShape::from_relation`] resolves it against the table.

use amq_protocol::types::ShortString;

use super::{ColumnMap, Template};
use crate::encode::Encoding;

/// What rows become on the wire.
#[derive(Clone, Debug)]
pub struct Mapping {
    pub columns: ColumnMap,
    pub exchange: Template,
    pub routing_key: Template,
    /// None: the event type, when the table has an event type column (the default).
    pub message_type: Option<Template>,
    /// Header name and value template, in order.
    pub headers: Vec<(ShortString, Template)>,
    pub body: Encoding,
    /// Set exactly when `body` is Template.
    pub body_template: Option<Template>,
    pub ce_source: Template,
    pub ce_type: Template,
    /// walbox's own headers (`x-aggregate-*`, `x-commit-lsn`, `x-xid`).
    pub walbox_headers: bool,
    /// `--partition-key`: rendered per event onto [`super::OutboxMessage::partition_key`] for
    /// a super stream to route by; None: nothing to route by (a plain stream, the AMQP
    /// target, or `--partition-key-header`).
    pub partition_key: Option<Template>,
    /// Name the exchange on every message even when it is one fixed name: a logical message
    /// route (`--messages`) whose exchange is not the one the publisher sends to by default.
    pub own_exchange: bool,
}

impl Mapping {
    /// The exchange's template text (a fixed name, or a per-row template), for log lines.
    pub fn exchange_text(&self) -> String {
        self.exchange.to_string()
    }

    /// walbox's default mapping with this column map and routing key (what `--columns` and
    /// `--routing-key` alone give), for the unit tests of the row → message step.
    #[cfg(test)]
    pub(crate) fn with_columns(columns: &str, routing_key: &str) -> Mapping {
        let template = |text: &str| Template::parse(text).expect("test template parses");
        Mapping {
            columns: ColumnMap::parse(columns).expect("test column map parses"),
            exchange: template("outbox"),
            routing_key: template(routing_key),
            message_type: None,
            headers: Vec::new(),
            body: Encoding::Raw,
            body_template: None,
            ce_source: template("walbox"),
            ce_type: template("{event_type}"),
            walbox_headers: true,
            partition_key: None,
            own_exchange: false,
        }
    }
}
