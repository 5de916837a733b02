//! Errors of the control-plane SQL connection (tokio-postgres), classified by SQLSTATE.

use tokio_postgres::error::SqlState;

use super::{Disposition, TLS_FIX, io_failure, tls_refused, with_causes};

/// A failure of control-plane SQL: the driver's error, what it means, and what to do.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub(crate) struct ControlError {
    message: String,
    disposition: Disposition,
    source: tokio_postgres::Error,
}

impl ControlError {
    pub(super) fn new(context: &str, error: tokio_postgres::Error) -> Self {
        let (disposition, message) = classify(context, &error);
        ControlError {
            message,
            disposition,
            source: error,
        }
    }

    pub(crate) fn disposition(&self) -> Disposition {
        self.disposition
    }
}

fn classify(context: &str, error: &tokio_postgres::Error) -> (Disposition, String) {
    let Some(db) = error.as_db_error() else {
        let text = with_causes(error);
        if tls_refused(error) {
            return (Disposition::Stop, format!("{context}: {text}; {TLS_FIX}"));
        }
        // No server error: the connection itself failed or was closed.
        if io_failure(error) || error.is_closed() {
            return (Disposition::Retry, format!("{context}: {text}"));
        }
        // Neither the server nor the network: the TLS negotiation was refused (a server
        // without ssl under sslmode=require) or the server is not PostgreSQL.
        return (Disposition::Stop, format!("{context}: {text}; {TLS_FIX}"));
    };
    let code = db.code();
    let message = format!("{context}: {} (SQLSTATE {})", db.message(), code.code());
    sqlstate(code, message)
}

/// What a SQLSTATE means for walbox (shared with the replication connection, whose server
/// errors carry the same codes).
pub(super) fn sqlstate(code: &SqlState, message: String) -> (Disposition, String) {
    let class = &code.code()[..2];
    if *code == SqlState::INVALID_PASSWORD
        || *code == SqlState::INVALID_AUTHORIZATION_SPECIFICATION
        || *code == SqlState::INVALID_CATALOG_NAME
    {
        // Authentication failures and a missing database or role will not heal by retrying.
        (
            Disposition::Stop,
            format!("{message}; check the user, password and database in --postgres-url"),
        )
    } else if *code == SqlState::INSUFFICIENT_PRIVILEGE {
        // A missing privilege: sql/roles.sql grants what walbox needs.
        (
            Disposition::Stop,
            format!(
                "{message}; the role in --postgres-url lacks a privilege walbox needs: \
                 sql/roles.sql shows the grants (REPLICATION, SELECT on the outbox table) and \
                 how the table's owner creates the publication beforehand"
            ),
        )
    } else if *code == SqlState::ADMIN_SHUTDOWN
        || *code == SqlState::CRASH_SHUTDOWN
        || *code == SqlState::CANNOT_CONNECT_NOW
        || *code == SqlState::TOO_MANY_CONNECTIONS
        || *code == SqlState::QUERY_CANCELED
        || class == "08"
    {
        // The server is starting up, shutting down or out of connections, the link broke, or
        // a statement ran out of time (statement_timeout) or was cancelled: none is about
        // what was asked.
        (Disposition::Retry, message)
    } else {
        (Disposition::Stop, message)
    }
}
