//! The broker's frames for the publishing channel and its connection (acks, nacks, returns,
//! closes), handed to the confirm ledger in the order they arrived.
//!
//! amqprs runs one dispatcher task per channel that calls these callbacks one at a time, in
//! the order the frames came off the socket (a return's method, header and body are
//! assembled first), so a message's `basic.return` reaches the ledger before its ack.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use amqprs::callbacks::{ChannelCallback, ConnectionCallback};
use amqprs::channel::Channel;
use amqprs::connection::Connection;
use amqprs::{Ack, BasicProperties, Cancel, Close, CloseChannel, Nack, Return};
use async_trait::async_trait;
use tracing::{error, info, warn};

use crate::error::Error;
use crate::publish::Refused;
use crate::publish::ledger::{self, Ledger};

/// What the callbacks share with the publisher.
pub(super) struct Shared {
    pub(super) ledger: Mutex<Ledger>,
    /// The channel or connection ended: nothing more is published on it.
    pub(super) closed: AtomicBool,
    /// The broker blocked publishing (`connection.blocked`, a resource alarm).
    pub(super) blocked: AtomicBool,
}

impl Shared {
    pub(super) fn new() -> Arc<Self> {
        Arc::new(Shared {
            ledger: Mutex::new(Ledger::default()),
            closed: AtomicBool::new(false),
            blocked: AtomicBool::new(false),
        })
    }

    /// End the channel's bookkeeping: every unconfirmed message is refused with `why`.
    pub(super) fn end(&self, why: impl Fn() -> Refused) {
        self.closed.store(true, Ordering::SeqCst);
        self.ledger().fail_all(why);
    }

    pub(super) fn is_closed(&self) -> bool {
        self.closed.load(Ordering::SeqCst)
    }

    pub(super) fn ledger(&self) -> std::sync::MutexGuard<'_, Ledger> {
        self.ledger
            .lock()
            .expect("the ledger is never left poisoned: no panics under its lock")
    }

    /// A frame the ledger could not place: the bookkeeping is no longer sound, so the session
    /// ends and every unconfirmed message is re-sent by the next one.
    fn unplaced(&self, unplaced: ledger::Unplaced) {
        error!(reason = %unplaced.0, "ending the AMQP session");
        let reason = unplaced.0;
        self.end(|| Refused::Lost(Error::transient(reason.clone())));
    }

    fn place(&self, placed: Result<(), ledger::Unplaced>) {
        if let Err(unplaced) = placed {
            self.unplaced(unplaced);
        }
    }
}

/// The callbacks of the publishing channel and its connection.
#[derive(Clone)]
pub(super) struct Callbacks(pub(super) Arc<Shared>);

type CallbackResult<T> = std::result::Result<T, amqprs::error::Error>;

#[async_trait]
impl ChannelCallback for Callbacks {
    async fn close(&mut self, _channel: &Channel, close: CloseChannel) -> CallbackResult<()> {
        let (reply_code, reply_text) = (close.reply_code(), close.reply_text().clone());
        warn!(reply_code, %reply_text, "the broker closed the publishing channel");
        self.0.end(|| Refused::ChannelClosed {
            reply_code,
            reply_text: reply_text.clone(),
        });
        Ok(())
    }

    async fn cancel(&mut self, _channel: &Channel, _cancel: Cancel) -> CallbackResult<()> {
        Ok(())
    }

    async fn flow(&mut self, _channel: &Channel, active: bool) -> CallbackResult<bool> {
        Ok(active)
    }

    async fn publish_ack(&mut self, _channel: &Channel, ack: Ack) {
        let placed = self
            .0
            .ledger()
            .confirmed(ack.delivery_tag(), ack.mutiple(), true);
        self.0.place(placed);
    }

    async fn publish_nack(&mut self, _channel: &Channel, nack: Nack) {
        let placed = self
            .0
            .ledger()
            .confirmed(nack.delivery_tag(), nack.multiple(), false);
        self.0.place(placed);
    }

    async fn publish_return(
        &mut self,
        _channel: &Channel,
        ret: Return,
        properties: BasicProperties,
        _content: Vec<u8>,
    ) {
        let returned = ledger::Return {
            reply_code: ret.reply_code(),
            reply_text: ret.reply_text().clone(),
            exchange: ret.exchange().clone(),
            routing_key: ret.routing_key().clone(),
        };
        let message_id = properties.message_id().map(String::as_str);
        let placed = self.0.ledger().returned(message_id, returned);
        self.0.place(placed);
    }
}

#[async_trait]
impl ConnectionCallback for Callbacks {
    async fn close(&mut self, _connection: &Connection, close: Close) -> CallbackResult<()> {
        let reason = format!("the broker closed the connection: {close}");
        warn!(%reason);
        self.0
            .end(|| Refused::Lost(Error::transient(reason.clone())));
        Ok(())
    }

    async fn blocked(&mut self, _connection: &Connection, reason: String) {
        self.0.blocked.store(true, Ordering::SeqCst);
        warn!(%reason, "the broker blocked publishing (connection.blocked)");
    }

    async fn unblocked(&mut self, _connection: &Connection) {
        self.0.blocked.store(false, Ordering::SeqCst);
        info!("the broker unblocked publishing");
    }

    async fn secret_updated(&mut self, _connection: &Connection) {}
}
