//! walbox: transactional-outbox events from PostgreSQL's write-ahead log to RabbitMQ, at least
//! once, in commit order, acknowledged to PostgreSQL only after the broker confirmed them.
//!
//! The modules follow the data path: [`source`] reads the slot and [`pgoutput`] decodes it,
//! [`outbox`] maps rows to messages, [`publish`] publishes and tracks confirms, [`watermark`]
//! turns confirms into the flush LSN, and [`engine`] wires and supervises them.
//! [`backfill`] sends rows already in the table (the cut-over, re-sends) through the same
//! message building and publisher. [`control`] is the control-plane SQL; [`telemetry`] reports what the data path records;
//! [`config`] and [`cli`] are the edges; [`tls`] is the control connection's TLS client.
//!
//! Modules are private to the crate unless the `walbox` binary, the tests, the benchmarks or
//! the fuzz target need them, and `unreachable_pub` flags a `pub` nobody outside can reach, so the
//! compiler reports what nothing uses.

#![warn(unreachable_pub)]

mod backfill;
pub mod cli;
pub mod config;
mod control;
pub mod encode;
mod engine;
mod error;
pub mod lsn;
pub mod outbox;
pub mod pgoutput;
mod publish;
mod replay;
mod shutdown;
mod source;
pub mod telemetry;
mod tls;
mod watermark;
