//! The two kinds of failure walbox knows, decided where an error is born.
//!
//! A *transient* failure (a network cut, a broker or database restart, the slot held by another
//! walbox) is retried by the supervisor with backoff; nothing the user does is needed. A *definite*
//! failure (wrong `wal_level`, a missing table or column, a dropped slot, bad credentials, a bad
//! configuration) cannot heal by retrying: walbox stops and the message says what to do.

use std::fmt;

use crate::lsn::Lsn;

/// A failure of the relay, classified.
#[derive(Debug, thiserror::Error)]
pub(crate) enum Error {
    /// Retry with backoff; readiness is false meanwhile.
    #[error("{0}")]
    Transient(String),
    /// The slot is held by another consumer (another walbox): stand by and try again soon,
    /// so this one takes over within seconds once the other is gone.
    #[error("{0}")]
    SlotInUse(String),
    /// Stop with this message; it names the problem and the fix.
    #[error("{0}")]
    Definite(String),
    /// The request asks for what does not exist (a replay from before the retained window):
    /// like a usage error, exit 2, and the message names what can be asked for.
    #[error("{0}")]
    OutOfRange(String),
    /// The broker refused one specific event in a way that retrying it will not heal: it
    /// closed the channel with PRECONDITION_FAILED in answer to that event's publish (message
    /// larger than its maximum, a header it will not accept). Transient for the session; the
    /// poison tracker counts it against the event.
    #[error("{0}")]
    Refused(Refusal),
    /// The configuration is wrong in a way only the server could tell (a routing-key
    /// placeholder that names no column of the table): a usage error, exit 2, like a
    /// malformed flag.
    #[error("{0}")]
    Usage(String),
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

impl Error {
    pub(crate) fn transient(message: impl fmt::Display) -> Self {
        Error::Transient(message.to_string())
    }

    pub(crate) fn definite(message: impl fmt::Display) -> Self {
        Error::Definite(message.to_string())
    }

    pub(crate) fn is_transient(&self) -> bool {
        matches!(
            self,
            Error::Transient(_) | Error::SlotInUse(_) | Error::Refused(_)
        )
    }

    /// Classify an error from the control-plane SQL connection.
    pub(crate) fn from_postgres(context: &str, error: &tokio_postgres::Error) -> Self {
        let Some(db) = error.as_db_error() else {
            let text = with_causes(error);
            if tls_refused(&text) {
                return Error::definite(format!("{context}: {text}; {TLS_FIX}"));
            }
            // No server error: the connection itself failed or was closed.
            return Error::transient(format!("{context}: {text}"));
        };
        let code = db.code().code();
        let message = format!("{context}: {} (SQLSTATE {code})", db.message());
        match code {
            // Authentication failures and a missing database or role will not heal by retrying.
            "28P01" | "28000" | "3D000" => Error::definite(format!(
                "{message}; check the user, password and database in --postgres-url"
            )),
            // A missing privilege: sql/roles.sql grants what walbox needs.
            "42501" => Error::definite(format!(
                "{message}; the role in --postgres-url lacks a privilege walbox needs: \
                 sql/roles.sql shows the grants (REPLICATION, SELECT on the outbox table) and \
                 how the table's owner creates the publication beforehand"
            )),
            // The server is starting up, shutting down or out of connections.
            "57P01" | "57P02" | "57P03" | "53300" => Error::transient(message),
            c if c.starts_with("08") => Error::transient(message),
            _ => Error::definite(message),
        }
    }

    /// Classify an error from the replication connection.
    pub(crate) fn from_replication(error: &pgwire_replication::PgWireError) -> Self {
        use pgwire_replication::PgWireError as E;
        match error {
            E::Io(_) | E::Task(_) => Error::transient(format!("replication connection: {error}")),
            // The client says its worker is already gone: the session ended while a receive
            // was cancelled (pgwire-replication then logs the first cause itself). The link is
            // down, nothing is wrong with the configuration: reconnect.
            E::Internal(_) => Error::transient(format!("replication connection ended: {error}")),
            E::Tls(text) if tls_refused(text) => {
                Error::definite(format!("replication connection: {error}; {TLS_FIX}"))
            }
            // Anything else during the handshake (a reset, a timeout) is the network's doing.
            E::Tls(_) => Error::transient(format!("replication connection: {error}")),
            E::Auth(_) => Error::definite(format!(
                "replication connection: {error}; check the user and password in --postgres-url \
                 and that the role has the REPLICATION attribute"
            )),
            E::Server(text) if text.contains("55006") || text.contains("is active for PID") => {
                Error::SlotInUse(format!(
                    "the replication slot is in use by another consumer: {text}"
                ))
            }
            E::Server(text)
                if text.contains("57P01") || text.contains("57P02") || text.contains("57P03") =>
            {
                Error::transient(format!("replication connection: {text}"))
            }
            E::Server(text) if text.contains("does not exist") && text.contains("slot") => {
                Error::definite(format!(
                    "the replication slot disappeared while walbox was using it ({text}). It was \
                     dropped by someone else; walbox will not recreate it by itself because events \
                     committed since then would be lost. Run `walbox setup` to create a new slot \
                     (events committed while no slot existed are not relayed)"
                ))
            }
            E::Server(text)
                if text.contains("can no longer get changes") || text.contains("invalidated") =>
            {
                Error::definite(format!(
                    "the replication slot was invalidated ({text}): PostgreSQL removed WAL it still \
                     needed (max_slot_wal_keep_size). Events in that WAL are lost to walbox; drop and \
                     recreate the slot with `walbox teardown` and `walbox setup`"
                ))
            }
            _ => Error::definite(format!("replication connection: {error}")),
        }
    }

    /// Classify an error from the AMQP connection.
    pub(crate) fn from_amqp(context: &str, error: &lapin::Error) -> Self {
        let text = error.to_string();
        if tls_refused(&text) {
            return Error::definite(format!(
                "{context}: {text}; check --amqp-ca-file (the CA that signed the broker's \
                 certificate) and the host name in --amqp-url (it must be in the certificate)"
            ));
        }
        if text.contains("ACCESS_REFUSED") || text.contains("access refused") {
            Error::definite(format!(
                "{context}: {text}; check the user, password and vhost in --amqp-url"
            ))
        } else {
            Error::transient(format!("{context}: {text}"))
        }
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

const TLS_FIX: &str = "check sslmode and sslrootcert in --postgres-url (sslrootcert must be \
                       the CA that signed the server's certificate; verify-full also needs the \
                       host name in it) and that the server has ssl=on";

/// A TLS failure that retrying cannot fix: the peer's certificate was refused, the server
/// does not do TLS, or the TLS settings are unusable. (rustls and the client libraries word
/// these the same way whichever connection failed.)
fn tls_refused(text: &str) -> bool {
    [
        "invalid peer certificate",
        "does not support TLS",
        "TLS config error",
    ]
    .iter()
    .any(|needle| text.contains(needle))
}

pub(crate) type Result<T, E = Error> = std::result::Result<T, E>;
