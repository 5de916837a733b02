//! The RabbitMQ publisher: one connection, one confirm-mode channel. Every message goes out on
//! that channel in the order it was handed over, so every queue sees commit order; the
//! broker's answer to each comes back as its [`LapinConfirm`].

use std::future::Future;
use std::pin::Pin;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::Poll;

use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::tcp::OwnedTLSConfig;
use lapin::types::{LongString, ShortString};
use lapin::uri::AMQPUri;
use lapin::{Channel, Connection, ConnectionProperties, DefaultConnectionBuilder};
use lapin::{Confirmation, PublisherConfirm};

use super::declare::Declarer;
use super::topology::Topology;
use super::{Outcome, Position, Publisher, Refused};
use super::{frame, nodes};
use crate::config::{Config, DeclareMode, SecretUrl};
use crate::error::{Disposition, Error, Result};
use crate::outbox::OutboxMessage;

type WriteFuture = Pin<Box<dyn Future<Output = lapin::Result<PublisherConfirm>> + Send>>;

/// The broker's answer to one message whose frames are queued on the channel: being written,
/// or written and awaiting the answer.
pub(crate) struct LapinConfirm {
    state: State,
}

enum State {
    /// walbox refused to send it (the reason): it could never go out on this connection.
    Rejected(String),
    Writing(WriteFuture),
    Written(PublisherConfirm),
    Answered,
}

impl Future for LapinConfirm {
    type Output = Outcome;

    fn poll(mut self: Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> Poll<Outcome> {
        loop {
            match &mut self.state {
                State::Rejected(reason) => {
                    let reason = std::mem::take(reason);
                    self.state = State::Answered;
                    return Poll::Ready(Outcome::Refused(Refused::Rejected { reason }));
                }
                State::Writing(writing) => match writing.as_mut().poll(cx) {
                    Poll::Ready(Ok(written)) => self.state = State::Written(written),
                    Poll::Ready(Err(error)) => {
                        self.state = State::Answered;
                        return Poll::Ready(outcome(Err(error)));
                    }
                    Poll::Pending => return Poll::Pending,
                },
                State::Written(confirm) => {
                    let answer = std::task::ready!(Pin::new(confirm).poll(cx));
                    self.state = State::Answered;
                    return Poll::Ready(outcome(answer));
                }
                State::Answered => {
                    return Poll::Ready(Outcome::Refused(Refused::Lost(Error::definite(
                        "a confirm was polled after it resolved (a walbox bug)",
                    ))));
                }
            }
        }
    }
}

/// lapin's answer → the seam's outcome. Only a plain ack confirms: an ack carrying a returned
/// message means unroutable.
fn outcome(answer: lapin::Result<Confirmation>) -> Outcome {
    match answer {
        Ok(Confirmation::Ack(None)) => Outcome::Confirmed,
        Ok(Confirmation::Ack(Some(returned))) => Outcome::Refused(Refused::Returned {
            reply_code: returned.reply_code,
            reply_text: returned.reply_text.to_string(),
            exchange: returned.delivery.exchange.to_string(),
            routing_key: returned.delivery.routing_key.to_string(),
        }),
        Ok(Confirmation::Nack(_)) => Outcome::Refused(Refused::Nacked),
        Ok(Confirmation::NotRequested) => Outcome::Refused(Refused::Lost(Error::definite(
            "publisher confirms are not enabled on the channel (a walbox bug)",
        ))),
        Err(error) => match error.kind() {
            lapin::ErrorKind::ProtocolError(amqp) => Outcome::Refused(Refused::ChannelClosed {
                reply_code: amqp.get_id(),
                reply_text: amqp.get_message().to_string(),
            }),
            _ => Outcome::Refused(Refused::Lost(Error::from_amqp(
                "waiting for the broker's confirm",
                &error,
            ))),
        },
    }
}

pub(crate) struct AmqpPublisher {
    connection: Connection,
    channel: Channel,
    /// The fixed exchange, when `--exchange` has no placeholder (declared at connect).
    exchange: ShortString,
    /// Declares each exchange before the first publish to it on this connection.
    topology: Topology,
    /// The connection's negotiated frame size: a content header larger than this would make
    /// the broker close the whole connection.
    frame_max: u32,
    /// walbox refused a message on this connection: nothing after it may go out (it would
    /// overtake the refused event in its queue), so the session ends at its verdict.
    refused: AtomicBool,
}

impl AmqpPublisher {
    /// Connect to the first node of `--amqp-url` that answers (see [`nodes`]); open a
    /// confirm-mode channel and declare the exchange unless told not to.
    pub(crate) async fn connect(config: &Config) -> Result<Self> {
        nodes::connect_any(&config.amqp_url, |url| Self::connect_node(config, url)).await
    }

    /// [`AmqpPublisher::connect`] to one node.
    async fn connect_node(config: &Config, url: &SecretUrl) -> Result<Self> {
        let connection = open(config, url).await?;
        let channel = connection
            .create_channel()
            .await
            .map_err(|e| Error::from_amqp("opening a channel", &e))?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .map_err(|e| Error::from_amqp("enabling publisher confirms", &e))?;
        let declares = connection
            .create_channel()
            .await
            .map_err(|e| Error::from_amqp("opening a channel for declares", &e))?;
        let alternate = config.unroutable.alternate_exchange();
        let topology = Topology::new(config.exchange_spec, alternate, Declarer::Lapin(declares));
        topology.ensure_alternate().await?;
        let exchange = ShortString::from(config.mapping.exchange.as_constant().unwrap_or(""));
        topology.ensure(&exchange, "--exchange").await?;
        let frame_max = connection.configuration().frame_max();
        Ok(AmqpPublisher {
            connection,
            channel,
            exchange,
            topology,
            frame_max,
            refused: AtomicBool::new(false),
        })
    }

    /// Declare `name` (the dead-letter exchange) as a durable topic exchange, or check it
    /// exists with `--exchange-declare passive`; nothing with `none`.
    pub(crate) async fn declare_dead_letter(&self, name: &str, mode: DeclareMode) -> Result<()> {
        self.topology.ensure_dead_letter(name, mode).await
    }
}

/// Open a lapin connection to `url`.
async fn open(config: &Config, url: &SecretUrl) -> Result<Connection> {
    let properties = ConnectionProperties::default()
        .with_connection_name(LongString::from(format!("walbox/{}", config.slot)));
    let connecting = format!("connecting to {url}");
    let mut uri = AMQPUri::from_str(url.expose())
        .map_err(|e| Error::definite(format!("{connecting}: {e}")))?;
    if let Some(password) = &config.amqp_password {
        uri.authority.userinfo.password = password.expose().to_owned();
    }
    // With amqps://, the CA file's certificates are trusted in addition to the system's.
    let tls = OwnedTLSConfig {
        identity: None,
        cert_chain: config.amqp_ca.as_ref().map(|ca| ca.pem.clone()),
    };
    DefaultConnectionBuilder::new()
        .map_err(|e| Error::from_amqp(&connecting, &e))?
        .with_uri(uri)
        .with_properties(properties)
        .with_tls_config(tls)
        .connect()
        .await
        .map_err(|e| Error::from_amqp(&connecting, &e))
}

/// Whether the broker at `url` refuses walbox's login, asked with lapin, which announces
/// `authentication_failure_close` and so gets the broker's reply code (amqprs does not: RabbitMQ
/// closes its login without one, which reads like a network failure). The definite error if
/// it does; None if it logs in or fails otherwise.
pub(crate) async fn login_refused(config: &Config, url: &SecretUrl) -> Option<Error> {
    match open(config, url).await {
        Ok(connection) => {
            let _ = connection.close(200, "walbox login check".into()).await;
            None
        }
        Err(error) if error.disposition() == Disposition::Stop => Some(error),
        Err(_) => None,
    }
}

impl Publisher for AmqpPublisher {
    type Confirm = LapinConfirm;

    /// Hand one message to the broker: persistent, mandatory, on the one channel.
    ///
    /// lapin queues a publish's frames on the connection during the future's first poll and
    /// then waits for the I/O loop to write them. Polling once here fixes the message's place
    /// in the channel's order at once; the write and the broker's answer are awaited later by
    /// the confirm tracker, so publishing never waits for a round trip.
    async fn publish(&self, message: OutboxMessage, _position: Position) -> Result<LapinConfirm> {
        if self.refused.load(Ordering::SeqCst) {
            return Err(Error::transient(
                "an earlier event of this session was refused; nothing after it is published",
            ));
        }
        if let Some(reason) = frame::too_large(&message.properties, self.frame_max) {
            self.refused.store(true, Ordering::SeqCst);
            return Ok(LapinConfirm {
                state: State::Rejected(reason),
            });
        }
        let channel = self.channel.clone();
        let exchange = match message.exchange {
            Some(exchange) => {
                self.topology.ensure(&exchange, "--exchange").await?;
                exchange
            }
            None => self.exchange.clone(),
        };
        let mut writing: WriteFuture = Box::pin(async move {
            channel
                .basic_publish(
                    exchange,
                    message.routing_key,
                    BasicPublishOptions {
                        mandatory: true,
                        ..BasicPublishOptions::default()
                    },
                    &message.body,
                    message.properties,
                )
                .await
        });
        let state = match futures_util::poll!(writing.as_mut()) {
            Poll::Ready(written) => {
                State::Written(written.map_err(|e| Error::from_amqp("publishing", &e))?)
            }
            Poll::Pending => State::Writing(writing),
        };
        Ok(LapinConfirm { state })
    }

    /// Both the connection and the channel are open. lapin notices a dead link on its own
    /// (socket error, missed heartbeats); this lets an idle relay notice it too.
    fn is_connected(&self) -> bool {
        self.connection.status().connected() && self.channel.status().connected()
    }

    async fn close(self) {
        self.topology.close().await;
        let _ = self.channel.close(200, "walbox stopping".into()).await;
        let _ = self.connection.close(200, "walbox stopping".into()).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lapin::protocol::{AMQPError, AMQPErrorKind, AMQPSoftError};

    fn closed_with(kind: AMQPSoftError, text: &str) -> lapin::Result<Confirmation> {
        Err(
            lapin::ErrorKind::ProtocolError(AMQPError::new(AMQPErrorKind::Soft(kind), text.into()))
                .into(),
        )
    }

    #[test]
    fn only_a_plain_ack_is_confirmed() {
        assert!(matches!(
            outcome(Ok(Confirmation::Ack(None))),
            Outcome::Confirmed
        ));
        assert!(matches!(
            outcome(Ok(Confirmation::Nack(None))),
            Outcome::Refused(Refused::Nacked)
        ));
        assert!(matches!(
            outcome(Ok(Confirmation::NotRequested)),
            Outcome::Refused(Refused::Lost(_))
        ));
        let io: lapin::Result<Confirmation> = Err(lapin::ErrorKind::IOError(std::sync::Arc::new(
            std::io::Error::other("reset"),
        ))
        .into());
        assert!(
            matches!(outcome(io), Outcome::Refused(Refused::Lost(error)) if error.is_transient())
        );
    }

    #[test]
    fn a_closed_channel_keeps_its_reply_code() {
        let answer = closed_with(
            AMQPSoftError::PRECONDITIONFAILED,
            "PRECONDITION_FAILED - message size 70000 is larger than configured max size 65536",
        );
        match outcome(answer) {
            Outcome::Refused(Refused::ChannelClosed {
                reply_code,
                reply_text,
            }) => {
                assert_eq!(reply_code, 406);
                assert!(reply_text.contains("larger than configured max size"));
            }
            other => panic!("expected a closed channel, got {other:?}"),
        }
    }
}
