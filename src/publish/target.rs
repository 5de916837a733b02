//! `--target`: the publisher a session uses, AMQP queues (with the client `--amqp-client`
//! names) or a stream, behind the one seam.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use super::amqp::{AmqpPublisher, LapinConfirm};
use super::amqprs::{AmqprsConfirm, AmqprsPublisher};
use super::stream::{StreamConfirm, StreamPublisher};
use super::{Outcome, Position, Publisher};
use crate::config::{AmqpClient, Config};
use crate::error::Result;
use crate::outbox::OutboxMessage;

pub(crate) enum Target {
    Amqp(AmqpPublisher),
    Amqprs(AmqprsPublisher),
    Stream(StreamPublisher),
}

impl Target {
    /// Connect to the broker with the AMQP client `--amqp-client` names, declaring the
    /// exchanges and, if given, the dead-letter exchange.
    pub(crate) async fn connect_amqp(config: &Config, dead_letter: Option<&str>) -> Result<Self> {
        let mode = config.exchange_spec.mode;
        Ok(match config.amqp_client {
            AmqpClient::Amqprs => {
                let publisher = AmqprsPublisher::connect(config).await?;
                if let Some(name) = dead_letter {
                    publisher.declare_dead_letter(name, mode).await?;
                }
                Target::Amqprs(publisher)
            }
            AmqpClient::Lapin => {
                let publisher = AmqpPublisher::connect(config).await?;
                if let Some(name) = dead_letter {
                    publisher.declare_dead_letter(name, mode).await?;
                }
                Target::Amqp(publisher)
            }
        })
    }
}

pub(crate) enum TargetConfirm {
    Amqp(LapinConfirm),
    Amqprs(AmqprsConfirm),
    Stream(StreamConfirm),
}

impl Future for TargetConfirm {
    type Output = Outcome;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Outcome> {
        // Both confirms are Unpin (they box or own plain futures).
        match self.get_mut() {
            TargetConfirm::Amqp(confirm) => Pin::new(confirm).poll(cx),
            TargetConfirm::Amqprs(confirm) => Pin::new(confirm).poll(cx),
            TargetConfirm::Stream(confirm) => Pin::new(confirm).poll(cx),
        }
    }
}

impl Publisher for Target {
    type Confirm = TargetConfirm;

    async fn publish(&self, message: OutboxMessage, position: Position) -> Result<TargetConfirm> {
        Ok(match self {
            Target::Amqp(amqp) => TargetConfirm::Amqp(amqp.publish(message, position).await?),
            Target::Amqprs(amqp) => TargetConfirm::Amqprs(amqp.publish(message, position).await?),
            Target::Stream(stream) => {
                TargetConfirm::Stream(stream.publish(message, position).await?)
            }
        })
    }

    fn is_connected(&self) -> bool {
        match self {
            Target::Amqp(amqp) => amqp.is_connected(),
            Target::Amqprs(amqp) => amqp.is_connected(),
            Target::Stream(stream) => stream.is_connected(),
        }
    }

    async fn close(self) {
        match self {
            Target::Amqp(amqp) => amqp.close().await,
            Target::Amqprs(amqp) => amqp.close().await,
            Target::Stream(stream) => stream.close().await,
        }
    }
}
