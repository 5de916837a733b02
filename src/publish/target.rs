//! `--target`: the publisher a session uses, AMQP queues or a stream, behind the one seam.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use super::amqp::{AmqpPublisher, LapinConfirm};
use super::stream::{StreamConfirm, StreamPublisher};
use super::{Outcome, Position, Publisher};
use crate::error::Result;
use crate::outbox::OutboxMessage;

pub(crate) enum Target {
    Amqp(AmqpPublisher),
    Stream(StreamPublisher),
}

pub(crate) enum TargetConfirm {
    Amqp(LapinConfirm),
    Stream(StreamConfirm),
}

impl Future for TargetConfirm {
    type Output = Outcome;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Outcome> {
        // Both confirms are Unpin (they box or own plain futures).
        match self.get_mut() {
            TargetConfirm::Amqp(confirm) => Pin::new(confirm).poll(cx),
            TargetConfirm::Stream(confirm) => Pin::new(confirm).poll(cx),
        }
    }
}

impl Publisher for Target {
    type Confirm = TargetConfirm;

    async fn publish(&self, message: OutboxMessage, position: Position) -> Result<TargetConfirm> {
        Ok(match self {
            Target::Amqp(amqp) => TargetConfirm::Amqp(amqp.publish(message, position).await?),
            Target::Stream(stream) => {
                TargetConfirm::Stream(stream.publish(message, position).await?)
            }
        })
    }

    fn is_connected(&self) -> bool {
        match self {
            Target::Amqp(amqp) => amqp.is_connected(),
            Target::Stream(stream) => stream.is_connected(),
        }
    }

    async fn close(self) {
        match self {
            Target::Amqp(amqp) => amqp.close().await,
            Target::Stream(stream) => stream.close().await,
        }
    }
}
