//! walbox: transactional-outbox events from PostgreSQL's write-ahead log to RabbitMQ, at least
//! once, in commit order, acknowledged to PostgreSQL only after the broker confirmed them.
//!
//! The modules follow the data path: [`source`] reads the slot and [`pgoutput`] decodes it,
//! [`outbox`] maps rows to messages, [`sink`] publishes and tracks confirms, [`watermark`]
//! turns confirms into the flush LSN, and [`pipeline`] wires and supervises them.
//! [`control`] is the control-plane SQL; [`telemetry`] reports what the data path records;
//! [`config`] and [`cli`] are the edges; [`tls`] is the control connection's TLS client.

pub mod cli;
pub mod config;
pub mod control;
pub mod encode;
pub mod error;
pub mod lsn;
pub mod outbox;
pub mod pgoutput;
pub mod pipeline;
pub mod replay;
pub mod sink;
pub mod source;
pub mod telemetry;
pub mod tls;
pub mod watermark;
