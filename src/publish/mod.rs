//! The publisher seam: hand a message over (dispatch), later learn whether the broker took it
//! (durable) — two steps, so publishing never waits for a round trip.
//!
//! [`Publisher::publish`] returns once the message's place in the order is fixed; the
//! [`Publisher::Confirm`] it returns resolves to an [`Outcome`]: `Confirmed` only when the
//! broker positively confirmed it. A nack, a mandatory return, a closed channel and a lost
//! connection are all `Refused`, and a confirm dropped unresolved is `Refused` too, so a lost
//! completion can never look like success. The [`confirm`] tracker feeds the outcomes, in
//! order, to the watermark; nothing else moves the flush LSN.
//!
//! Implementations: [`amqprs::AmqprsPublisher`] (RabbitMQ over AMQP 0-9-1, the default, with
//! walbox's own confirm [`ledger`]), [`amqp::AmqpPublisher`] (the same on lapin, the fallback),
//! [`stream::StreamPublisher`] (a RabbitMQ stream, deduplicated on the WAL position),
//! [`target::Target`] (whichever `--target` names), [`counting`] (the dry run: counts and
//! confirms at once) and, for tests, [`memory`] (answers as told).

pub(crate) mod amqp;
pub(crate) mod amqprs;
pub(crate) mod confirm;
pub(crate) mod counting;
pub(crate) mod declare;
pub(crate) mod frame;
pub(crate) mod ledger;
#[cfg(test)]
pub(crate) mod memory;
pub(crate) mod nodes;
pub(crate) mod refusal;
pub(crate) mod stream;
pub(crate) mod target;
pub(crate) mod topology;

use std::future::Future;

use crate::error::{Error, Result};
use crate::outbox::OutboxMessage;
pub(crate) use stream::id::Position;

/// Where the engine sends messages.
pub(crate) trait Publisher: Send + Sync {
    /// Resolves to the broker's verdict on one published message.
    type Confirm: Future<Output = Outcome> + Send + 'static;

    /// Dispatch `message`, the event at `position` in the WAL: when this returns, its place in
    /// the order is fixed. An error means the publisher can take nothing more (the session
    /// ends). Only the stream target uses the position (its publishing id).
    fn publish(
        &self,
        message: OutboxMessage,
        position: Position,
    ) -> impl Future<Output = Result<Self::Confirm>> + Send;

    /// The connection is still up (checked by the engine's heartbeat, so an idle relay
    /// notices a dead link too).
    fn is_connected(&self) -> bool;

    /// Close the connection politely.
    fn close(self) -> impl Future<Output = ()> + Send;
}

/// The broker's verdict on one message.
#[derive(Debug)]
pub(crate) enum Outcome {
    /// Positively confirmed: the only outcome that lets the flush LSN pass the message.
    Confirmed,
    Refused(Refused),
}

/// Why a message was not confirmed.
#[derive(Debug)]
pub(crate) enum Refused {
    /// The broker nacked it (e.g. a queue's overflow policy rejected it).
    Nacked,
    /// Unroutable with mandatory set: no queue is bound for its exchange and routing key.
    Returned {
        reply_code: u16,
        reply_text: String,
        exchange: String,
        routing_key: String,
    },
    /// The broker closed the channel with this AMQP reply code in answer to the message (406
    /// PRECONDITION_FAILED: too large, a header it rejects).
    ChannelClosed { reply_code: u16, reply_text: String },
    /// The stream answered the message with a publish error (its response code).
    StreamError { code: String },
    /// walbox refused to send it: the broker could never take it (too large for a frame).
    Rejected { reason: String },
    /// The link failed before an answer came (connection lost, channel gone, the confirm
    /// dropped unresolved); the error is classified where it was born.
    Lost(Error),
}
