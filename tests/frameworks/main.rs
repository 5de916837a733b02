//! The framework presets end to end: for each framework, its outbox table as its ORM creates it
//! on PostgreSQL, rows written (and later updated) as the framework writes them, the broker
//! topology declared as the framework's consumer declares it, `walbox run --preset …`, and an
//! assertion for every wire fact that framework's consumer relies on. Each assertion names the
//! framework source file the fact comes from; docs/src/frameworks/index.md lists the facts per preset.
//!
//! No .NET runtime runs here, so the consumers are not the frameworks' own code: each test
//! reproduces the consumer's topology with the same declare arguments (so a walbox declare that
//! disagrees fails with PRECONDITION_FAILED, as it would against the real consumer) and checks
//! the message against what the consumer's code reads.
//!
//! The CloudEvents tests (cloudevents.rs) and the trace context test (trace.rs) are `#[ignore]`d:
//! they parse every message with the official CloudEvents SDKs and OpenTelemetry, which
//! `scripts/consumers.sh` installs; scripts/test.sh runs them after it.

#[path = "../common/mod.rs"]
mod common;
mod cutover;
mod scene;

mod cap;
mod cloudevents;
mod dapr;
mod efcore;
mod eshop;
mod masstransit;
mod nservicebus;
mod trace;

use std::collections::BTreeMap;
use std::process::Command;
use std::time::Duration;

use common::*;
use cutover::*;
use lapin::message::Delivery;
use lapin::options::{
    BasicConsumeOptions, ExchangeBindOptions, ExchangeDeclareOptions, ExchangeDeleteOptions,
    QueueBindOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{Channel, Connection, ConnectionProperties, Consumer, ExchangeKind};
use scene::*;
use serde_json::{Value, json};

pub(crate) const WAIT: Duration = Duration::from_secs(30);
/// How long to watch for a message that must not come (an UPDATE relayed by mistake).
pub(crate) const QUIET: Duration = Duration::from_secs(2);
