//! The RabbitMQ publisher on amqprs (`--amqp-client amqprs`, the default): one connection,
//! one confirm-mode channel, and walbox's own confirm [`Ledger`]. amqprs only carries the
//! frames and hands over each `basic.ack`, `basic.nack` and `basic.return` in the order they
//! arrived, so a return is credited by its message's `message_id`, never by tag order (issue
//! #19 item 5: lapin 4.12 may credit a return to another message in flight).
//!
//! Every message goes out on the one channel in the order it was handed over, so every queue
//! sees commit order.

pub(crate) mod declare;
mod events;
mod properties;
mod tls;

use std::future::Future;
use std::pin::Pin;
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};

use amq_protocol::types::ShortString;
use amq_protocol::uri::{AMQPScheme, AMQPUri};
use amqprs::channel::{BasicPublishArguments, Channel, ConfirmSelectArguments};
use amqprs::connection::{Connection, OpenConnectionArguments};
use tokio::sync::oneshot;

use self::declare::AmqprsDeclarer;
use self::events::{Callbacks, Shared};
use super::declare::Declarer;
use super::ledger;
use super::topology::Topology;
use super::{Outcome, Position, Publisher, Refused, frame, nodes};
use crate::config::{Config, DeclareMode, SecretUrl};
use crate::error::{Error, Result};
use crate::outbox::OutboxMessage;

/// The broker's answer to one message: decided before sending, or awaited from the ledger.
pub(crate) enum AmqprsConfirm {
    Ready(Option<Outcome>),
    Waiting(oneshot::Receiver<Outcome>),
}

impl Future for AmqprsConfirm {
    type Output = Outcome;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Outcome> {
        match self.get_mut() {
            AmqprsConfirm::Ready(outcome) => Poll::Ready(outcome.take().unwrap_or_else(|| {
                Outcome::Refused(Refused::Lost(Error::definite(
                    "a confirm was polled after it resolved (a walbox bug)",
                )))
            })),
            AmqprsConfirm::Waiting(verdict) => Pin::new(verdict)
                .poll(cx)
                .map(|answer| answer.unwrap_or_else(|_| ledger::unanswered())),
        }
    }
}

pub(crate) struct AmqprsPublisher {
    connection: Connection,
    channel: Channel,
    /// The fixed exchange, when `--exchange` has no placeholder (declared at connect).
    exchange: String,
    /// Declares each exchange before the first publish to it on this connection.
    topology: Topology,
    shared: Arc<Shared>,
    /// Holds the ledger's tag order and the wire order together: one publish at a time.
    sending: tokio::sync::Mutex<()>,
    /// The connection's negotiated frame size: a content header larger than this would make
    /// the broker close the whole connection.
    frame_max: u32,
    /// walbox refused a message on this connection: nothing after it may go out (it would
    /// overtake the refused event in its queue), so the session ends at its verdict.
    refused: AtomicBool,
}

impl AmqprsPublisher {
    /// Connect to the first node of `--amqp-url` that answers (see [`nodes`]); open a
    /// confirm-mode channel and declare the exchange unless told not to.
    pub(crate) async fn connect(config: &Config) -> Result<Self> {
        nodes::connect_any(&config.amqp_url, |url| Self::connect_node(config, url)).await
    }

    /// [`AmqprsPublisher::connect`] to one node.
    async fn connect_node(config: &Config, url: &SecretUrl) -> Result<Self> {
        let connecting = format!("connecting to {url}");
        let connection = open(config, url, &connecting).await?;
        let link = |e: amqprs::error::Error| Error::from_amqprs(&connecting, &e);
        let shared = Shared::new();
        let callbacks = Callbacks(Arc::clone(&shared));
        connection
            .register_callback(callbacks.clone())
            .await
            .map_err(link)?;
        watch_network(&connection, &shared);
        let channel = connection.open_channel(None).await.map_err(link)?;
        channel.register_callback(callbacks).await.map_err(link)?;
        channel
            .confirm_select(ConfirmSelectArguments::default())
            .await
            .map_err(|e| Error::from_amqprs("enabling publisher confirms", &e))?;
        let declares = connection
            .open_channel(None)
            .await
            .map_err(|e| Error::from_amqprs("opening a channel for declares", &e))?;
        let declares = AmqprsDeclarer::new(declares)
            .await
            .map_err(|e| Error::from_amqprs("opening a channel for declares", &e))?;
        let alternate = config.unroutable.alternate_exchange();
        let topology = Topology::new(config.exchange_spec, alternate, Declarer::Amqprs(declares));
        topology.ensure_alternate().await?;
        let exchange = config.mapping.exchange.as_constant().unwrap_or("");
        topology
            .ensure(&ShortString::from(exchange), "--exchange")
            .await?;
        let frame_max = connection.frame_max();
        Ok(AmqprsPublisher {
            connection,
            channel,
            exchange: exchange.to_owned(),
            topology,
            shared,
            sending: tokio::sync::Mutex::new(()),
            frame_max,
            refused: AtomicBool::new(false),
        })
    }

    /// Declare `name` (the dead-letter exchange) as a durable topic exchange, or check it
    /// exists with `--exchange-declare passive`; nothing with `none`.
    pub(crate) async fn declare_dead_letter(&self, name: &str, mode: DeclareMode) -> Result<()> {
        self.topology.ensure_dead_letter(name, mode).await
    }

    /// The exchange a message goes to, declared first if it is a per-row one.
    async fn exchange_of<'m>(&'m self, message: &'m OutboxMessage) -> Result<&'m str> {
        match &message.exchange {
            Some(exchange) => {
                self.topology.ensure(exchange, "--exchange").await?;
                Ok(exchange.as_str())
            }
            None => Ok(self.exchange.as_str()),
        }
    }
}

/// Open the AMQP connection `url` names (with TLS for amqps://).
async fn open(config: &Config, url: &SecretUrl, connecting: &str) -> Result<Connection> {
    let uri = AMQPUri::from_str(url.expose())
        .map_err(|e| Error::definite(format!("{connecting}: {e}")))?;
    let password = match &config.amqp_password {
        Some(password) => password.expose().to_owned(),
        None => uri.authority.userinfo.password.clone(),
    };
    let mut arguments = OpenConnectionArguments::new(
        &uri.authority.host,
        uri.authority.port,
        &uri.authority.userinfo.username,
        &password,
    );
    arguments
        .virtual_host(&uri.vhost)
        .connection_name(&format!("walbox/{}", config.slot));
    if let Some(heartbeat) = uri.query.heartbeat {
        arguments.heartbeat(heartbeat);
    }
    if uri.scheme == AMQPScheme::AMQPS {
        let adaptor = tls::adaptor(config.amqp_ca.as_ref(), &uri.authority.host)
            .map_err(|e| Error::definite(format!("{connecting}: {e}")))?;
        arguments.tls_adaptor(adaptor);
    }
    match Connection::open(&arguments.finish()).await {
        Err(error) if closed_during_login(&error) => {
            // RabbitMQ answers a refused login by closing the socket when the client does not
            // announce `authentication_failure_close` (amqprs does not), which reads like a
            // broker going away: ask again with a client that gets the reply code.
            match super::amqp::login_refused(config, url).await {
                Some(refused) => Err(refused),
                None => Err(Error::from_amqprs(connecting, &error)),
            }
        }
        opened => opened.map_err(|e| Error::from_amqprs(connecting, &e)),
    }
}

/// The broker accepted the TCP connection and then closed it during the AMQP handshake.
fn closed_during_login(error: &amqprs::error::Error) -> bool {
    let text = error.to_string();
    matches!(error, amqprs::error::Error::NetworkError(_))
        && (text.contains("reset by peer") || text.contains("peer shutdown"))
}

/// A dead link (socket error, missed heartbeats) refuses every unconfirmed message as lost at
/// once: amqprs tells no channel callback, and a verdict nobody answers would hold the
/// session's shutdown for its whole grace.
fn watch_network(connection: &Connection, shared: &Arc<Shared>) {
    let connection = connection.clone();
    let shared = Arc::clone(shared);
    tokio::spawn(async move {
        if connection.listen_network_io_failure().await {
            shared.end(|| {
                Refused::Lost(Error::transient(
                    "the connection to the broker failed (network error or missed heartbeats)",
                ))
            });
        }
    });
}

/// Dropped before its message was fully handed to amqprs: refuses every later publish.
struct Unsent<'a>(&'a AtomicBool);

impl Drop for Unsent<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

impl Publisher for AmqprsPublisher {
    type Confirm = AmqprsConfirm;

    /// Hand one message to the broker: persistent, mandatory, on the one channel. Its ledger
    /// entry and its frames are queued under one lock, so the ledger's tag order is the wire
    /// order; the broker's answer is awaited later by the confirm tracker.
    async fn publish(&self, message: OutboxMessage, _position: Position) -> Result<AmqprsConfirm> {
        if self.refused.load(Ordering::SeqCst) {
            return Err(Error::transient(
                "an earlier event of this session was refused; nothing after it is published",
            ));
        }
        if self.shared.is_closed() {
            return Err(Error::transient("the channel to the broker is closed"));
        }
        let frame_max = self
            .frame_max
            .saturating_sub(properties::widening(&message.properties));
        if let Some(reason) = frame::too_large(&message.properties, frame_max) {
            self.refused.store(true, Ordering::SeqCst);
            return Ok(AmqprsConfirm::Ready(Some(Outcome::Refused(
                Refused::Rejected { reason },
            ))));
        }
        let exchange = self.exchange_of(&message).await?;
        let mut arguments = BasicPublishArguments::new(exchange, message.routing_key.as_str());
        arguments.mandatory(true);
        let properties = properties::properties(&message.properties);
        let message_id = message
            .properties
            .message_id()
            .as_ref()
            .map(|id| id.to_string());
        let _order = self.sending.lock().await;
        let verdict = self.shared.ledger().publish(message_id).1;
        // From here the ledger counts this message: if its frames do not all go out (the send
        // fails, or a stop drops this future half-way), the broker's tags no longer match the
        // ledger's, so nothing more may be published on this channel.
        let unsent = Unsent(&self.refused);
        // Bytes into Vec reuses the allocation when the body is not shared.
        self.channel
            .basic_publish(properties, Vec::from(message.body), arguments)
            .await
            .map_err(|e| Error::from_amqprs("publishing", &e))?;
        std::mem::forget(unsent);
        Ok(AmqprsConfirm::Waiting(verdict))
    }

    /// The connection and the channel are open. A closed one refuses every unconfirmed
    /// message at once, so nothing waits for a verdict that cannot come.
    fn is_connected(&self) -> bool {
        let open = !self.shared.is_closed() && self.connection.is_open() && self.channel.is_open();
        if !open {
            self.shared
                .end(|| Refused::Lost(Error::transient("the connection to the broker closed")));
        }
        open
    }

    async fn close(self) {
        self.topology.close().await;
        let _ = self.channel.close().await;
        let _ = self.connection.close().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A publish cut short after its ledger entry refuses the rest of the session; one that
    /// handed its frames over does not.
    #[test]
    fn a_publish_dropped_half_way_refuses_every_later_one() {
        let cut = AtomicBool::new(false);
        drop(Unsent(&cut));
        assert!(cut.load(Ordering::SeqCst));
        let sent = AtomicBool::new(false);
        std::mem::forget(Unsent(&sent));
        assert!(!sent.load(Ordering::SeqCst));
    }
}
