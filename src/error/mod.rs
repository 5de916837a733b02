//! What went wrong, and what the supervisor does about it — decided where an error is born.
//!
//! # Error handling
//!
//! ```text
//!   replication connection ──▶ SourceError  (pgwire-replication error, SQLSTATE)  ─┐
//!   control-plane SQL      ──▶ ControlError (tokio-postgres error, SQLSTATE)       ├─▶ Error ─▶ Disposition
//!   AMQP connection        ──▶ AmqpError    (lapin error, AMQP reply code)        ─┤
//!   a refused event        ──▶ Refusal      (406 on one event's publish)          ─┤
//!   a returned/nacked one  ──▶ Held         (no queue, a full queue: retried)     ─┤
//!   walbox's own verdicts  ──▶ Own          (a message and its disposition)       ─┘
//! ```
//!
//! Each boundary has its own error type that keeps the library's error as its source and is
//! classified once, when it is made, from the server's SQLSTATE or the broker's reply code
//! (never from message text), with a message that says what to do. The supervisor acts only
//! on the [`Disposition`]: retry with backoff, stand by for the slot, count a poison event,
//! stop (exit 1), or stop as a usage error (exit 2).

mod amqp;
mod control;
mod source;
#[cfg(test)]
mod tests;

use std::fmt;

use crate::lsn::Lsn;

pub(crate) use amqp::AmqpError;
pub(crate) use control::ControlError;
pub(crate) use source::SourceError;

/// What the supervisor does about a failure.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Disposition {
    /// A network cut, a restart, a server that is busy: reconnect with backoff.
    Retry,
    /// Another walbox holds the slot: try again soon, to take over within seconds once it is
    /// released.
    StandBy,
    /// The broker refused one event: count it against the event (see engine/poison.rs).
    Poison,
    /// Retrying cannot heal it (a dropped slot, bad credentials, a missing privilege): stop
    /// with a message that names the fix; exit 1.
    Stop,
    /// The request or configuration is wrong in a way only the server could tell: exit 2.
    Usage,
}

/// A failure of the relay, classified.
#[derive(Debug, thiserror::Error)]
pub(crate) enum Error {
    #[error(transparent)]
    Source(#[from] SourceError),
    #[error(transparent)]
    Control(#[from] ControlError),
    #[error(transparent)]
    Amqp(#[from] AmqpError),
    /// The broker closed the channel with PRECONDITION_FAILED in answer to one event's
    /// publish (larger than its maximum, a header it will not accept).
    #[error("{0}")]
    Refused(Refusal),
    /// The broker did not take one event for a reason that heals on its side (no queue bound
    /// for it, a full queue that rejects publishes): walbox holds it and retries.
    #[error("{0}")]
    Held(Held),
    /// walbox's own verdict, not a server's.
    #[error("{}", .0.message)]
    Own(Own),
}

/// A failure walbox itself decided on (a stream that ended, a row it cannot map, a request
/// for history that is not kept).
#[derive(Debug)]
pub(crate) struct Own {
    pub(crate) disposition: Disposition,
    pub(crate) message: String,
}

/// Which event the broker refused, and what it said.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "the broker refused event {event_id} (commit {commit_lsn}) and closed the channel: {reason}"
)]
pub(crate) struct Refusal {
    pub(crate) event_id: String,
    pub(crate) commit_lsn: Lsn,
    pub(crate) reason: String,
}

/// Which event the broker returned or nacked, and what it said: the next sessions publish
/// one message at a time until it is confirmed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub(crate) struct Held {
    pub(crate) event_id: String,
    pub(crate) commit_lsn: Lsn,
    pub(crate) message: String,
}

impl Error {
    fn own(disposition: Disposition, message: impl fmt::Display) -> Self {
        Error::Own(Own {
            disposition,
            message: message.to_string(),
        })
    }

    /// Retry with backoff.
    pub(crate) fn transient(message: impl fmt::Display) -> Self {
        Error::own(Disposition::Retry, message)
    }

    /// Another walbox is doing this work: stand by and try again soon.
    pub(crate) fn stand_by(message: impl fmt::Display) -> Self {
        Error::own(Disposition::StandBy, message)
    }

    /// Stop; the message names the problem and the fix.
    pub(crate) fn definite(message: impl fmt::Display) -> Self {
        Error::own(Disposition::Stop, message)
    }

    /// The request asks for what does not exist or the configuration is wrong in a way only
    /// the server could tell: exit 2.
    pub(crate) fn usage(message: impl fmt::Display) -> Self {
        Error::own(Disposition::Usage, message)
    }

    pub(crate) fn disposition(&self) -> Disposition {
        match self {
            Error::Source(error) => error.disposition(),
            Error::Control(error) => error.disposition(),
            Error::Amqp(error) => error.disposition(),
            Error::Refused(_) => Disposition::Poison,
            Error::Held(_) => Disposition::Retry,
            Error::Own(own) => own.disposition,
        }
    }

    /// Retried by the supervisor in one way or another.
    pub(crate) fn is_transient(&self) -> bool {
        matches!(
            self.disposition(),
            Disposition::Retry | Disposition::StandBy | Disposition::Poison
        )
    }

    /// Classify an error from the control-plane SQL connection.
    pub(crate) fn from_postgres(context: &str, error: tokio_postgres::Error) -> Self {
        Error::Control(ControlError::new(context, error))
    }

    /// Classify an error from the replication connection.
    pub(crate) fn from_replication(error: pgwire_replication::PgWireError) -> Self {
        Error::Source(SourceError::new(error))
    }

    /// Classify an error from the AMQP connection.
    pub(crate) fn from_amqp(context: &str, error: &lapin::Error) -> Self {
        Error::Amqp(AmqpError::new(context, error.clone()))
    }

    pub(crate) fn from_amqprs(context: &str, error: &amqprs::error::Error) -> Self {
        Error::Amqp(AmqpError::from_amqprs(context, error))
    }
}

/// An error's message followed by those of its causes: tokio-postgres keeps the reason a TLS
/// handshake failed (e.g. the certificate's issuer is unknown) in the cause.
fn with_causes(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut cause = error.source();
    while let Some(inner) = cause {
        let message = inner.to_string();
        if !text.ends_with(&message) {
            text = format!("{text}: {message}");
        }
        cause = inner.source();
    }
    text
}

/// The errors in `error`'s source chain, itself first, looking inside `std::io::Error`s
/// (TLS libraries wrap their own error in one).
fn chain<'a>(
    error: &'a (dyn std::error::Error + 'static),
) -> impl Iterator<Item = &'a (dyn std::error::Error + 'static)> {
    let mut next = Some(error);
    std::iter::from_fn(move || {
        let current = next?;
        next = match current.downcast_ref::<std::io::Error>() {
            Some(io) => io
                .get_ref()
                .map(|inner| inner as &(dyn std::error::Error + 'static))
                .or_else(|| current.source()),
            None => current.source(),
        };
        Some(current)
    })
}

/// The peer's certificate or the TLS settings were refused (a rustls error, not a network
/// failure during the handshake): retrying cannot fix it.
fn tls_refused(error: &(dyn std::error::Error + 'static)) -> bool {
    chain(error).any(|cause| match cause.downcast_ref::<rustls::Error>() {
        Some(rustls::Error::InvalidCertificate(_))
        | Some(rustls::Error::InvalidCertRevocationList(_))
        | Some(rustls::Error::NoCertificatesPresented)
        | Some(rustls::Error::UnsupportedNameType)
        | Some(rustls::Error::General(_))
        | Some(rustls::Error::PeerIncompatible(_))
        | Some(rustls::Error::InconsistentKeys(_)) => true,
        Some(rustls::Error::AlertReceived(alert)) => !matches!(
            alert,
            rustls::AlertDescription::CloseNotify | rustls::AlertDescription::InternalError
        ),
        _ => false,
    })
}

/// Some I/O error in the chain: the network's doing.
fn io_failure(error: &(dyn std::error::Error + 'static)) -> bool {
    chain(error).any(|cause| cause.is::<std::io::Error>())
}

const TLS_FIX: &str = "check sslmode and sslrootcert in --postgres-url (sslrootcert must be \
                       the CA that signed the server's certificate; verify-full also needs the \
                       host name in it) and that the server has ssl=on";

pub(crate) type Result<T, E = Error> = std::result::Result<T, E>;
