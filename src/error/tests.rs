//! The decision that keeps walbox up or stops it, table-driven: real server error codes and
//! messages (PostgreSQL 15 and RabbitMQ 3.10 wording) in, a disposition out.

use std::sync::Arc;

use lapin::protocol::{AMQPError, AMQPErrorKind, AMQPHardError, AMQPSoftError};
use pgwire_replication::PgWireError;
use tokio_postgres::error::SqlState;

use super::*;

/// Replication-connection errors as pgwire-replication reports them: a server ErrorResponse
/// becomes `<message> (SQLSTATE <code>)`.
#[test]
fn replication_errors_are_classified_by_variant_and_sqlstate() {
    let server = |text: &str| PgWireError::Server(text.into());
    let cases: Vec<(PgWireError, Disposition, &str)> = vec![
        (
            server(r#"replication slot "walbox" is active for PID 4242 (SQLSTATE 55006)"#),
            Disposition::StandBy,
            "in use by another consumer",
        ),
        (
            server(r#"replication slot "walbox" does not exist (SQLSTATE 42704)"#),
            Disposition::Stop,
            "disappeared",
        ),
        (
            server(r#"publication "walbox" does not exist (SQLSTATE 42704)"#),
            Disposition::Stop,
            "disappeared",
        ),
        (
            server(r#"can no longer get changes from replication slot "walbox" (SQLSTATE 55000)"#),
            Disposition::Stop,
            "invalidated",
        ),
        (
            server("terminating connection due to administrator command (SQLSTATE 57P01)"),
            Disposition::Retry,
            "administrator command",
        ),
        (
            server("the database system is starting up (SQLSTATE 57P03)"),
            Disposition::Retry,
            "starting up",
        ),
        (
            server("sorry, too many clients already (SQLSTATE 53300)"),
            Disposition::Retry,
            "too many clients",
        ),
        (
            server(r#"password authentication failed for user "walbox" (SQLSTATE 28P01)"#),
            Disposition::Stop,
            "check the user, password and database",
        ),
        (
            server(r#"database "nope" does not exist (SQLSTATE 3D000)"#),
            Disposition::Stop,
            "check the user, password and database",
        ),
        (
            server(r#"permission denied to start WAL sender (SQLSTATE 42501)"#),
            Disposition::Stop,
            "sql/roles.sql",
        ),
        (
            server(r#"syntax error at or near "START_REPLICATIO" (SQLSTATE 42601)"#),
            Disposition::Stop,
            "syntax error",
        ),
        (
            PgWireError::Io(Arc::new(std::io::Error::from(
                std::io::ErrorKind::ConnectionReset,
            ))),
            Disposition::Retry,
            "replication connection",
        ),
        (
            PgWireError::Internal("worker already joined".into()),
            Disposition::Retry,
            "ended",
        ),
        (
            PgWireError::Auth("SCRAM authentication failed".into()),
            Disposition::Stop,
            "REPLICATION attribute",
        ),
        (
            PgWireError::Tls(
                "TLS handshake failed: invalid peer certificate: UnknownIssuer".into(),
            ),
            Disposition::Stop,
            "sslrootcert",
        ),
        (
            PgWireError::Tls("TLS handshake failed: connection reset by peer".into()),
            Disposition::Retry,
            "replication connection",
        ),
    ];
    for (error, disposition, says) in cases {
        let shown = error.to_string();
        let error = Error::from_replication(error);
        assert_eq!(error.disposition(), disposition, "{shown}");
        assert!(
            error.to_string().contains(says),
            "{error} should say {says}"
        );
        assert!(
            std::error::Error::source(&error).is_some(),
            "the client's error is kept: {error}"
        );
    }
}

#[test]
fn the_sqlstate_is_read_from_the_end_of_a_server_error() {
    assert_eq!(
        source::server_code(r#"slot "a (SQLSTATE 1)" is active (SQLSTATE 55006)"#),
        Some(SqlState::OBJECT_IN_USE)
    );
    assert_eq!(source::server_code("unknown server error"), None);
    assert_eq!(source::server_code("odd (SQLSTATE 123)"), None);
}

/// Control-plane SQL errors: the SQLSTATE decides (tokio-postgres builds a `DbError` only from
/// a server's answer, so the table goes through the same function its errors go through).
#[test]
fn control_errors_are_classified_by_sqlstate() {
    let cases = [
        (
            SqlState::INVALID_PASSWORD,
            Disposition::Stop,
            "check the user, password",
        ),
        (
            SqlState::INVALID_AUTHORIZATION_SPECIFICATION,
            Disposition::Stop,
            "check the user, password",
        ),
        (
            SqlState::INVALID_CATALOG_NAME,
            Disposition::Stop,
            "check the user, password",
        ),
        (
            SqlState::INSUFFICIENT_PRIVILEGE,
            Disposition::Stop,
            "sql/roles.sql",
        ),
        (SqlState::ADMIN_SHUTDOWN, Disposition::Retry, ""),
        (SqlState::CRASH_SHUTDOWN, Disposition::Retry, ""),
        (SqlState::CANNOT_CONNECT_NOW, Disposition::Retry, ""),
        (SqlState::TOO_MANY_CONNECTIONS, Disposition::Retry, ""),
        (SqlState::CONNECTION_FAILURE, Disposition::Retry, ""),
        (SqlState::QUERY_CANCELED, Disposition::Retry, ""),
        (SqlState::UNDEFINED_TABLE, Disposition::Stop, ""),
        (SqlState::UNDEFINED_COLUMN, Disposition::Stop, ""),
        (
            SqlState::OBJECT_NOT_IN_PREREQUISITE_STATE,
            Disposition::Stop,
            "",
        ),
    ];
    for (code, disposition, says) in cases {
        let (got, message) =
            control::sqlstate(&code, format!("context (SQLSTATE {})", code.code()));
        assert_eq!(got, disposition, "{}", code.code());
        assert!(message.contains(says), "{message}");
    }
}

fn amqp(error: lapin::Error) -> Error {
    Error::from_amqp("connecting to amqp://guest:***@127.0.0.1:5672/%2f", &error)
}

fn closed(kind: AMQPErrorKind, text: &str) -> lapin::Error {
    lapin::ErrorKind::ProtocolError(AMQPError::new(kind, text.into())).into()
}

#[test]
fn amqp_errors_are_classified_by_reply_code() {
    let io = |error: std::io::Error| -> lapin::Error {
        lapin::ErrorKind::IOError(Arc::new(error)).into()
    };
    let unknown_issuer = rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer);
    let cases: Vec<(lapin::Error, Disposition, &str)> = vec![
        (
            closed(
                AMQPErrorKind::Soft(AMQPSoftError::ACCESSREFUSED),
                "ACCESS_REFUSED - Login was refused using authentication mechanism PLAIN. For details see the broker logfile.",
            ),
            Disposition::Stop,
            "check the user, password and vhost",
        ),
        (
            closed(
                AMQPErrorKind::Hard(AMQPHardError::NOTALLOWED),
                "NOT_ALLOWED - vhost nope not found",
            ),
            Disposition::Stop,
            "vhost",
        ),
        (
            closed(
                AMQPErrorKind::Hard(AMQPHardError::CONNECTIONFORCED),
                "CONNECTION_FORCED - broker forced connection closure with reason 'shutdown'",
            ),
            Disposition::Retry,
            "CONNECTION_FORCED",
        ),
        (
            closed(
                AMQPErrorKind::Soft(AMQPSoftError::NOTFOUND),
                "NOT_FOUND - no exchange 'outbox' in vhost '/'",
            ),
            Disposition::Retry,
            "NOT_FOUND",
        ),
        (
            io(std::io::Error::from(std::io::ErrorKind::ConnectionRefused)),
            Disposition::Retry,
            "connecting to",
        ),
        (
            io(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                unknown_issuer,
            )),
            Disposition::Stop,
            "--amqp-ca-file",
        ),
        (
            io(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                rustls::Error::AlertReceived(rustls::AlertDescription::CloseNotify),
            )),
            Disposition::Retry,
            "connecting to",
        ),
    ];
    for (error, disposition, says) in cases {
        let error = amqp(error);
        assert_eq!(error.disposition(), disposition, "{error}");
        assert!(
            error.to_string().contains(says),
            "{error} should say {says}"
        );
        assert!(
            std::error::Error::source(&error).is_some(),
            "lapin's error is kept"
        );
    }
}

#[test]
fn walbox_own_verdicts_and_refusals_carry_their_disposition() {
    assert_eq!(Error::transient("x").disposition(), Disposition::Retry);
    assert_eq!(Error::definite("x").disposition(), Disposition::Stop);
    assert_eq!(Error::usage("x").disposition(), Disposition::Usage);
    let refused = Error::Refused(Refusal {
        event_id: "e-1".into(),
        commit_lsn: Lsn(0x10),
        reason: "PRECONDITION_FAILED - message size 70000 is larger than configured max size 65536"
            .into(),
    });
    assert_eq!(refused.disposition(), Disposition::Poison);
    assert!(refused.is_transient());
    assert!(!Error::definite("x").is_transient());
}
