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
