//! The amqprs channel walbox declares exchanges and queues on. amqprs reports a refused
//! declare only as "the channel closed"; the broker's reply code and text arrive in the
//! channel's close callback, which keeps them here for the error message.

use std::sync::{Arc, Mutex};

use amq_protocol::types::FieldTable as WalboxTable;
use amqprs::callbacks::ChannelCallback;
use amqprs::channel::{
    Channel, ExchangeDeclareArguments, QueueBindArguments, QueueDeclareArguments,
};
use amqprs::{Ack, BasicProperties, Cancel, CloseChannel, Nack, Return};
use async_trait::async_trait;

use super::properties::table;
use crate::config::{DeclareMode, ExchangeSpec};
use crate::error::Error;
use crate::publish::refusal::Refusal;

/// The broker's reply when it closed the channel.
type Reply = Arc<Mutex<Option<(u16, String)>>>;

pub(crate) struct AmqprsDeclarer {
    channel: Channel,
    closed: Reply,
}

impl AmqprsDeclarer {
    /// Use `channel` for declares.
    pub(super) async fn new(channel: Channel) -> Result<Self, amqprs::error::Error> {
        let closed = Reply::default();
        channel
            .register_callback(CloseKeeper(Arc::clone(&closed)))
            .await?;
        Ok(AmqprsDeclarer { channel, closed })
    }

    pub(crate) async fn exchange_declare(
        &self,
        name: &str,
        spec: ExchangeSpec,
        arguments: &WalboxTable,
    ) -> Result<(), Refusal> {
        let mut declare = ExchangeDeclareArguments::new(name, spec.kind.name());
        declare.passive = spec.mode == DeclareMode::Passive;
        declare.durable = spec.durable;
        declare.auto_delete = spec.auto_delete;
        declare.arguments = table(arguments);
        let result = self.channel.exchange_declare(declare).await;
        self.refusal(&format!("declaring exchange {name}"), result)
    }

    pub(crate) async fn durable_queue_bound_to(&self, name: &str) -> Result<(), Refusal> {
        let context = format!("declaring queue {name}");
        let declared = self
            .channel
            .queue_declare(QueueDeclareArguments::durable_client_named(name))
            .await
            .map(|_| ());
        self.refusal(&context, declared)?;
        let bound = self
            .channel
            .queue_bind(QueueBindArguments::new(name, name, ""))
            .await;
        self.refusal(&context, bound)
    }

    /// A failed request: the broker's refusal if it closed the channel, else the failure.
    fn refusal(
        &self,
        context: &str,
        result: Result<(), amqprs::error::Error>,
    ) -> Result<(), Refusal> {
        let Err(error) = result else {
            return Ok(());
        };
        let reply = self.closed.lock().expect("never poisoned").clone();
        Err(match reply {
            Some((code, text)) => Refusal::Refused { code, text },
            None => Refusal::Failed(Error::from_amqprs(context, &error)),
        })
    }

    pub(crate) async fn close(self) {
        let _ = self.channel.close().await;
    }
}

/// Keeps the reply of a channel close the broker sent.
struct CloseKeeper(Reply);

type CallbackResult<T> = std::result::Result<T, amqprs::error::Error>;

#[async_trait]
impl ChannelCallback for CloseKeeper {
    async fn close(&mut self, _channel: &Channel, close: CloseChannel) -> CallbackResult<()> {
        let reply = (close.reply_code(), close.reply_text().clone());
        *self.0.lock().expect("never poisoned") = Some(reply);
        Ok(())
    }

    async fn cancel(&mut self, _channel: &Channel, _cancel: Cancel) -> CallbackResult<()> {
        Ok(())
    }

    async fn flow(&mut self, _channel: &Channel, active: bool) -> CallbackResult<bool> {
        Ok(active)
    }

    // Nothing is published on this channel.
    async fn publish_ack(&mut self, _channel: &Channel, _ack: Ack) {}

    async fn publish_nack(&mut self, _channel: &Channel, _nack: Nack) {}

    async fn publish_return(
        &mut self,
        _channel: &Channel,
        _ret: Return,
        _properties: BasicProperties,
        _content: Vec<u8>,
    ) {
    }
}
