//! Outbox rows (and logical decoding messages, [`logical`]) → AMQP messages: the validated [`Mapping`] (what `crate::config` makes of the
//! flags), the column map (with JSON paths into columns), templates and their filters, the
//! message id of id-less tables, and the message contract described in the docs
//! ([`contract`]). The body encodings themselves are in `crate::encode`. Nothing here reads
//! configuration: `config` depends on `outbox`, never the other way round.

pub mod columns;
pub(crate) mod contract;
pub mod event;
mod filter;
pub mod headers;
pub mod logical;
mod mapping;
pub(crate) mod message_id;
pub mod path;
mod row;
pub mod template;
pub mod timestamp;

pub use columns::{ColumnMap, Field};
pub use event::{EventError, OutboxMessage, OutboxShape, ShapeError, Transaction};
pub use logical::{LogicalMessages, MessageRoute, PrefixPattern};
pub use mapping::Mapping;
pub use template::Template;
