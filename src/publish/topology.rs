//! The exchanges walbox publishes to: how each is declared (kind, durable, auto-delete; a full
//! declare, a passive check, or nothing), and which are already declared on this connection.
//!
//! With a per-row exchange (`--exchange '{event_type|short}'`) the exchange is declared before
//! the first publish to it on each connection, never per event. Declares go on a channel of
//! their own: a refused declare closes that channel, not the publishing one, so it can never be
//! mistaken for the broker refusing an in-flight event.
//!
//! A declare that does not match an existing exchange is a definite error that names what was
//! asked and what exists (from the broker's reply), and how to reconcile them.
//!
//! With `--unroutable alternate-exchange` every event exchange is declared with the argument
//! `alternate-exchange`, so the broker sends an event no queue takes there; the alternate
//! exchange itself is declared fanout and durable, with a durable queue of its name bound to
//! it, so that nothing it receives is discarded.

use std::collections::HashSet;
use std::sync::Mutex;

use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};

use super::declare::Declarer;
use super::refusal::Refusal;
use crate::config::{DeclareMode, ExchangeSpec, Kind};
use crate::error::{Error, Result};

/// The declares of one connection.
pub(crate) struct Topology {
    spec: ExchangeSpec,
    /// `--unroutable alternate-exchange`: where the broker sends what no queue takes.
    alternate: Option<ShortString>,
    channel: Declarer,
    declared: Mutex<HashSet<ShortString>>,
}

/// The exchange argument naming an alternate exchange (RabbitMQ's extension).
const ALTERNATE_EXCHANGE: &str = "alternate-exchange";

/// AMQP reply codes of a declare the broker refused.
const NOT_FOUND: u16 = 404;
const PRECONDITION_FAILED: u16 = 406;

impl Topology {
    /// `channel` is used for declares only.
    pub(crate) fn new(spec: ExchangeSpec, alternate: Option<&str>, channel: Declarer) -> Self {
        Topology {
            spec,
            alternate: alternate.map(ShortString::from),
            channel,
            declared: Mutex::new(HashSet::new()),
        }
    }

    /// Make sure `name` is declared as specified, once per connection. The default exchange
    /// (`""`) is never declared. `flag` names the setting that chose the exchange, for errors.
    pub(crate) async fn ensure(&self, name: &ShortString, flag: &str) -> Result<()> {
        let mut arguments = FieldTable::default();
        if let Some(alternate) = &self.alternate {
            arguments.insert(
                ALTERNATE_EXCHANGE.into(),
                AMQPValue::LongString(LongString::from(alternate.as_str())),
            );
        }
        self.declare(name, self.spec, arguments, flag).await
    }

    /// As [`Topology::ensure`], with another spec and no alternate exchange (the dead-letter
    /// exchange: a record that no queue takes is held, never sent elsewhere).
    pub(crate) async fn ensure_as(
        &self,
        name: &ShortString,
        spec: ExchangeSpec,
        flag: &str,
    ) -> Result<()> {
        self.declare(name, spec, FieldTable::default(), flag).await
    }

    /// Declare `name` (the dead-letter exchange) as a durable topic exchange, or check it
    /// exists with `--exchange-declare passive`; nothing with `none`.
    pub(crate) async fn ensure_dead_letter(&self, name: &str, mode: DeclareMode) -> Result<()> {
        let spec = ExchangeSpec {
            mode,
            ..ExchangeSpec::DURABLE_TOPIC
        };
        self.ensure_as(&ShortString::from(name), spec, "--dead-letter-exchange")
            .await
    }

    /// Declare the alternate exchange, if there is one: fanout and durable, with a durable
    /// queue of its name bound to it (with `--exchange-declare passive` only checked to exist;
    /// with `none` left alone).
    pub(crate) async fn ensure_alternate(&self) -> Result<()> {
        let Some(name) = &self.alternate else {
            return Ok(());
        };
        let spec = ExchangeSpec {
            kind: Kind::Fanout,
            mode: self.spec.mode,
            ..ExchangeSpec::DURABLE_TOPIC
        };
        self.ensure_as(name, spec, "--alternate-exchange").await?;
        if spec.mode != DeclareMode::Declare {
            return Ok(());
        }
        let declaring = format!("declaring the alternate exchange's queue {name}");
        self.channel
            .durable_queue_bound_to(name.as_str())
            .await
            .map_err(|refusal| refusal.into_error(&declaring))
    }

    async fn declare(
        &self,
        name: &ShortString,
        spec: ExchangeSpec,
        arguments: FieldTable,
        flag: &str,
    ) -> Result<()> {
        if name.as_str().is_empty() || spec.mode == DeclareMode::None || self.is_declared(name) {
            return Ok(());
        }
        self.channel
            .exchange_declare(name.as_str(), spec, arguments)
            .await
            .map_err(|refusal| declare_error(name.as_str(), spec, flag, refusal))?;
        tracing::debug!(exchange = %name, %spec, mode = spec.mode.name(), "exchange declared");
        self.declared
            .lock()
            .expect("the declared set is never left poisoned")
            .insert(name.clone());
        Ok(())
    }

    fn is_declared(&self, name: &ShortString) -> bool {
        self.declared
            .lock()
            .expect("the declared set is never left poisoned")
            .contains(name)
    }

    pub(crate) async fn close(self) {
        self.channel.close().await;
    }
}

/// A refused declare is definite (the broker will refuse it again until someone changes the
/// exchange or walbox's flags); anything else, such as a lost connection, is transient.
fn declare_error(name: &str, spec: ExchangeSpec, flag: &str, refusal: Refusal) -> Error {
    let (code, said) = match refusal {
        Refusal::Refused { code, text } => (code, text),
        Refusal::Failed(error) => return error,
    };
    match code {
        PRECONDITION_FAILED if said.contains("'alternate-exchange'") => Error::definite(format!(
            "exchange {name} exists with another alternate exchange than --unroutable \
             alternate-exchange asks for (the broker: {said}). Delete the exchange so that \
             walbox declares it anew, or set its alternate exchange by a RabbitMQ policy and \
             pass --exchange-declare passive, or choose another --unroutable"
        )),
        PRECONDITION_FAILED if spec.mode == DeclareMode::Declare => Error::definite(format!(
            "exchange {name} exists with other settings than walbox was asked to declare: asked \
             for {spec}; it exists with {} (the broker: {said}). Make --exchange-kind, \
             --exchange-durable and --exchange-auto-delete match it, or pass \
             --exchange-declare passive to use it as it is, or choose another {flag}",
            existing(&said, spec)
        )),
        NOT_FOUND if spec.mode == DeclareMode::Passive => Error::definite(format!(
            "exchange {name} does not exist and --exchange-declare is passive: create it, or \
             pass --exchange-declare declare (the broker: {said})"
        )),
        _ => Error::definite(format!(
            "declaring exchange {name} ({spec}) was refused: {said}; check {flag} and the \
             user's permissions"
        )),
    }
}

/// What exists, as far as the broker's reply tells. RabbitMQ names the first setting that
/// differs: `inequivalent arg 'type' for exchange 'x' in vhost '/': received 'fanout' but
/// current is 'topic'` (or `'durable'`, `'auto_delete'` with true/false).
fn existing(said: &str, asked: ExchangeSpec) -> String {
    let arg = said
        .split("inequivalent arg '")
        .nth(1)
        .and_then(|rest| rest.split('\'').next());
    let current = said
        .rsplit("current is '")
        .next()
        .filter(|_| said.contains("current is '"))
        .and_then(|rest| rest.split('\'').next());
    let (Some(arg), Some(current)) = (arg, current) else {
        return "different settings".to_owned();
    };
    let flip = |flag: bool| current.parse::<bool>().map_or(!flag, |value| value);
    match arg {
        "type" => format!("type {current}"),
        "durable" => {
            let durable = flip(asked.durable);
            format!("durable={durable} (not {})", asked.durable)
        }
        "auto_delete" => {
            let auto_delete = flip(asked.auto_delete);
            format!("auto-delete={auto_delete} (not {})", asked.auto_delete)
        }
        other => format!("{other} = {current}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_read_as_words() {
        assert_eq!(ExchangeSpec::DURABLE_TOPIC.to_string(), "topic, durable");
        let dapr = ExchangeSpec {
            kind: Kind::Fanout,
            durable: true,
            auto_delete: true,
            mode: DeclareMode::Declare,
        };
        assert_eq!(dapr.to_string(), "fanout, durable, auto-delete");
    }

    #[test]
    fn the_broker_reply_names_what_exists() {
        let asked = ExchangeSpec::DURABLE_TOPIC;
        assert_eq!(
            existing(
                "PRECONDITION_FAILED - inequivalent arg 'type' for exchange 'x' in vhost '/': \
                 received 'topic' but current is 'fanout'",
                asked
            ),
            "type fanout"
        );
        assert_eq!(
            existing(
                "PRECONDITION_FAILED - inequivalent arg 'durable' for exchange 'x' in vhost \
                 '/': received 'true' but current is 'false'",
                asked
            ),
            "durable=false (not true)"
        );
        assert_eq!(existing("something else", asked), "different settings");
    }
}
