//! How walbox declares the exchanges it publishes to (`--exchange-kind`,
//! `--exchange-durable`, `--exchange-auto-delete`, `--exchange-declare`): plain values,
//! validated by [`super::mapping`] and acted on by `crate::publish::topology`.

use std::fmt;

/// The exchange types walbox can declare.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Kind {
    Topic,
    Direct,
    Fanout,
    Headers,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Topic => "topic",
            Kind::Direct => "direct",
            Kind::Fanout => "fanout",
            Kind::Headers => "headers",
        }
    }
}

/// What walbox does about an exchange before publishing to it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum DeclareMode {
    /// Declare it as specified: created if missing, an error if it exists otherwise.
    Declare,
    /// Check that it exists (any settings); an error if it does not.
    Passive,
    /// Nothing: a missing exchange shows up as the broker closing the channel on publish.
    None,
}

impl DeclareMode {
    pub fn name(self) -> &'static str {
        match self {
            DeclareMode::Declare => "declare",
            DeclareMode::Passive => "passive",
            DeclareMode::None => "none",
        }
    }
}

/// How the events' exchanges are declared.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ExchangeSpec {
    pub kind: Kind,
    pub durable: bool,
    pub auto_delete: bool,
    pub mode: DeclareMode,
}

impl ExchangeSpec {
    /// walbox's own default, and how the dead-letter exchange is always declared.
    pub const DURABLE_TOPIC: ExchangeSpec = ExchangeSpec {
        kind: Kind::Topic,
        durable: true,
        auto_delete: false,
        mode: DeclareMode::Declare,
    };
}

impl fmt::Display for ExchangeSpec {
    /// `fanout, durable, auto-delete` / `topic, durable` / `direct, transient`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let durable = if self.durable { "durable" } else { "transient" };
        write!(f, "{}, {durable}", self.kind.name())?;
        if self.auto_delete {
            f.write_str(", auto-delete")?;
        }
        Ok(())
    }
}

/// `--unroutable`: what walbox does with an event the broker returns because no queue is bound
/// for it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum UnroutableMode {
    /// Retry it until a queue takes it; the slot waits before it.
    Hold,
    /// Count it and go on, as publish/subscribe frameworks do.
    Drop,
    /// Declare the exchanges with an alternate exchange that takes it.
    AlternateExchange,
}

impl UnroutableMode {
    pub fn name(self) -> &'static str {
        match self {
            UnroutableMode::Hold => "hold",
            UnroutableMode::Drop => "drop",
            UnroutableMode::AlternateExchange => "alternate-exchange",
        }
    }
}

/// What walbox does with an event the broker returns as unroutable, validated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Unroutable {
    /// Hold it and retry until a queue is bound: walbox's default for its own table, where a
    /// missing queue is a mistake to wait out.
    Hold,
    /// Count it and go on: nobody subscribes to that event (yet), and the framework whose
    /// conventions walbox follows would have published it without `mandatory` for the broker
    /// to drop.
    Drop,
    /// The events' exchanges are declared with this alternate exchange, where the broker sends
    /// what no queue takes: nothing is dropped and nothing held. A return then means the
    /// alternate exchange routed it nowhere either, and the event is held.
    AlternateExchange(String),
}

impl Unroutable {
    /// The alternate exchange the events' exchanges are declared with, if any.
    pub fn alternate_exchange(&self) -> Option<&str> {
        match self {
            Unroutable::AlternateExchange(name) => Some(name),
            Unroutable::Hold | Unroutable::Drop => None,
        }
    }
}
