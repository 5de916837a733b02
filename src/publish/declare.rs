//! The channel walbox declares exchanges and queues on, whichever AMQP client carries it. A
//! declare the broker refuses comes back with its reply code and text, so the topology can
//! say what exists and what to change.

use lapin::options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::{FieldTable, ShortString};
use lapin::{Channel, ExchangeKind};

use super::amqprs::declare::AmqprsDeclarer;
use super::refusal::Refusal;
use crate::config::{DeclareMode, ExchangeSpec, Kind};
use crate::error::Error;

/// A channel used for declares only.
pub(crate) enum Declarer {
    Lapin(Channel),
    Amqprs(AmqprsDeclarer),
}

/// lapin's error for a declare described by `context`: the broker's refusal, or a failure.
fn refusal_from_lapin(context: &str, error: lapin::Error) -> Refusal {
    match error.kind() {
        lapin::ErrorKind::ProtocolError(amqp) => Refusal::Refused {
            code: amqp.get_id(),
            text: amqp.get_message().to_string(),
        },
        _ => Refusal::Failed(Error::from_amqp(context, &error)),
    }
}

impl Declarer {
    /// Declare exchange `name` as `spec` says (passively with `--exchange-declare passive`).
    pub(crate) async fn exchange_declare(
        &self,
        name: &str,
        spec: ExchangeSpec,
        arguments: FieldTable,
    ) -> Result<(), Refusal> {
        match self {
            Declarer::Lapin(channel) => {
                let options = ExchangeDeclareOptions {
                    passive: spec.mode == DeclareMode::Passive,
                    durable: spec.durable,
                    auto_delete: spec.auto_delete,
                    ..ExchangeDeclareOptions::default()
                };
                channel
                    .exchange_declare(name.into(), lapin_kind(spec.kind), options, arguments)
                    .await
                    .map_err(|e| refusal_from_lapin(&format!("declaring exchange {name}"), e))
            }
            Declarer::Amqprs(channel) => channel.exchange_declare(name, spec, &arguments).await,
        }
    }

    /// Declare a durable queue named `name` and bind it to the exchange of the same name.
    pub(crate) async fn durable_queue_bound_to(&self, name: &str) -> Result<(), Refusal> {
        match self {
            Declarer::Lapin(channel) => {
                let context = format!("declaring queue {name}");
                let durable = QueueDeclareOptions {
                    durable: true,
                    ..QueueDeclareOptions::default()
                };
                channel
                    .queue_declare(name.into(), durable, FieldTable::default())
                    .await
                    .map_err(|e| refusal_from_lapin(&context, e))?;
                channel
                    .queue_bind(
                        name.into(),
                        name.into(),
                        ShortString::from(""),
                        QueueBindOptions::default(),
                        FieldTable::default(),
                    )
                    .await
                    .map_err(|e| refusal_from_lapin(&context, e))
            }
            Declarer::Amqprs(channel) => channel.durable_queue_bound_to(name).await,
        }
    }

    pub(crate) async fn close(self) {
        match self {
            Declarer::Lapin(channel) => {
                let _ = channel.close(200, "walbox stopping".into()).await;
            }
            Declarer::Amqprs(channel) => channel.close().await,
        }
    }
}

/// The lapin name of an exchange type.
fn lapin_kind(kind: Kind) -> ExchangeKind {
    match kind {
        Kind::Topic => ExchangeKind::Topic,
        Kind::Direct => ExchangeKind::Direct,
        Kind::Fanout => ExchangeKind::Fanout,
        Kind::Headers => ExchangeKind::Headers,
    }
}
