//! Errors of the AMQP connection (lapin), classified by the broker's reply code.

use super::{Disposition, tls_refused};

/// AMQP reply codes that retrying cannot heal.
const ACCESS_REFUSED: u16 = 403;
const NOT_ALLOWED: u16 = 530;

/// A failure of the AMQP side: lapin's error, what it means, and what to do.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub(crate) struct AmqpError {
    message: String,
    disposition: Disposition,
    source: lapin::Error,
}

impl AmqpError {
    pub(super) fn new(context: &str, error: lapin::Error) -> Self {
        let (disposition, message) = classify(context, &error);
        AmqpError {
            message,
            disposition,
            source: error,
        }
    }

    pub(crate) fn disposition(&self) -> Disposition {
        self.disposition
    }
}

fn classify(context: &str, error: &lapin::Error) -> (Disposition, String) {
    let text = error.to_string();
    match error.kind() {
        lapin::ErrorKind::ProtocolError(amqp) if amqp.get_id() == ACCESS_REFUSED => (
            Disposition::Stop,
            format!(
                "{context}: {text}; check the user, password and vhost in --amqp-url, and the \
                 user's permissions: configure and write on walbox's exchanges (walbox docs, \
                 \"Security\")"
            ),
        ),
        lapin::ErrorKind::ProtocolError(amqp) if amqp.get_id() == NOT_ALLOWED => (
            Disposition::Stop,
            format!(
                "{context}: {text}; check that the vhost in --amqp-url exists and the user may use it"
            ),
        ),
        lapin::ErrorKind::AuthProviderError(_) => (
            Disposition::Stop,
            format!("{context}: {text}; check the user and password in --amqp-url"),
        ),
        _ if tls_refused(error) => (
            Disposition::Stop,
            format!(
                "{context}: {text}; check --amqp-ca-file (the CA that signed the broker's \
                 certificate) and the host name in --amqp-url (it must be in the certificate)"
            ),
        ),
        // A lost connection, a broker restarting, a channel closed for another reason.
        _ => (Disposition::Retry, format!("{context}: {text}")),
    }
}
