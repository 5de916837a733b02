//! Outbox rows → AMQP messages: the column map, the routing-key template, and the message
//! contract (body, properties, headers) described in README.md.

pub mod columns;
pub mod event;
pub mod headers;
pub mod routing;
pub mod timestamp;

pub use columns::{ColumnMap, Field};
pub use event::{OutboxMessage, OutboxShape, ShapeError, Transaction};
pub use routing::Template;
