//! Outbox rows → AMQP messages: the column map (with JSON paths into columns), templates and
//! their filters, the message id of id-less tables, and the message contract described in
//! README.md. The body encodings themselves are in `crate::encode`.

pub mod columns;
pub mod event;
mod filter;
pub mod headers;
mod message_id;
pub mod path;
mod row;
pub mod template;
pub mod timestamp;

pub use columns::{ColumnMap, Field};
pub use event::{OutboxMessage, OutboxShape, ShapeError, Transaction};
pub use template::Template;
