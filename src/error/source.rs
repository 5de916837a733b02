//! Errors of the replication connection (pgwire-replication), classified by error variant and
//! by the server's SQLSTATE.
//!
//! pgwire-replication hands a server's ErrorResponse over as text that ends in the response's
//! code field, `… (SQLSTATE 55006)`; [`server_code`] reads that code back. Its TLS failures
//! are text only, so they are the one place where walbox must look at words: a refused
//! certificate or unusable TLS settings stop walbox, anything else during the handshake is the
//! network's doing. (The control connection, which always connects first with the same TLS
//! settings, classifies its TLS failures by type.)

use pgwire_replication::PgWireError;
use tokio_postgres::error::SqlState;

use super::control::sqlstate;
use super::{Disposition, TLS_FIX};

/// A failure of the replication connection: the client's error, what it means, and what to do.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub(crate) struct SourceError {
    message: String,
    disposition: Disposition,
    source: PgWireError,
}

impl SourceError {
    pub(super) fn new(error: PgWireError) -> Self {
        let (disposition, message) = classify(&error);
        SourceError {
            message,
            disposition,
            source: error,
        }
    }

    pub(crate) fn disposition(&self) -> Disposition {
        self.disposition
    }
}

/// The SQLSTATE at the end of a server error as pgwire-replication formats it.
pub(super) fn server_code(text: &str) -> Option<SqlState> {
    let start = text.rfind("(SQLSTATE ")? + "(SQLSTATE ".len();
    let code = text[start..].strip_suffix(')')?;
    (code.len() == 5).then(|| SqlState::from_code(code))
}

fn classify(error: &PgWireError) -> (Disposition, String) {
    use PgWireError as E;
    match error {
        E::Io(_) | E::Task(_) => (
            Disposition::Retry,
            format!("replication connection: {error}"),
        ),
        // The client says its worker is already gone: the session ended while a receive was
        // cancelled (pgwire-replication then logs the first cause itself). The link is down,
        // nothing is wrong with the configuration: reconnect.
        E::Internal(_) => (
            Disposition::Retry,
            format!("replication connection ended: {error}"),
        ),
        E::Tls(text)
            if [
                "invalid peer certificate",
                "does not support TLS",
                "TLS config error",
            ]
            .iter()
            .any(|refusal| text.contains(refusal)) =>
        {
            (
                Disposition::Stop,
                format!("replication connection: {error}; {TLS_FIX}"),
            )
        }
        E::Tls(_) => (
            Disposition::Retry,
            format!("replication connection: {error}"),
        ),
        E::Auth(_) => (
            Disposition::Stop,
            format!(
                "replication connection: {error}; check the user and password in \
                 --postgres-url and that the role has the REPLICATION attribute"
            ),
        ),
        E::Server(text) => match server_code(text) {
            Some(SqlState::OBJECT_IN_USE) => (
                Disposition::StandBy,
                format!("the replication slot is in use by another consumer: {text}"),
            ),
            // The slot (or the publication it streams) was dropped.
            Some(SqlState::UNDEFINED_OBJECT) => (
                Disposition::Stop,
                format!(
                    "the replication slot or its publication disappeared while walbox was \
                     using it ({text}). It was dropped by someone else; walbox will not \
                     recreate it by itself because events committed since then would be lost. \
                     Run `walbox setup` to create a new slot (events committed while no slot \
                     existed are not relayed)"
                ),
            ),
            // "can no longer get changes from replication slot": invalidated.
            Some(SqlState::OBJECT_NOT_IN_PREREQUISITE_STATE) => (
                Disposition::Stop,
                format!(
                    "the replication slot was invalidated ({text}): PostgreSQL removed WAL it \
                     still needed (max_slot_wal_keep_size). Events in that WAL are lost to \
                     walbox; drop the slot (`SELECT pg_drop_replication_slot('<slot>')`, as \
                     walbox's role) and run `walbox setup`"
                ),
            ),
            Some(code) => sqlstate(&code, format!("replication connection: {text}")),
            None => (
                Disposition::Stop,
                format!("replication connection: {error}"),
            ),
        },
        _ => (
            Disposition::Stop,
            format!("replication connection: {error}"),
        ),
    }
}
