//! Errors of the AMQP connection (amqprs or lapin), classified by the broker's reply code.

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
    /// lapin's error; amqprs's errors are text only.
    source: Option<lapin::Error>,
}

impl AmqpError {
    pub(super) fn new(context: &str, error: lapin::Error) -> Self {
        let (disposition, message) = classify(context, &error);
        AmqpError {
            message,
            disposition,
            source: Some(error),
        }
    }

    /// amqprs's error, classified by the reply code or TLS failure its text names (amqprs
    /// keeps the broker's close and rustls's error as text).
    pub(super) fn from_amqprs(context: &str, error: &amqprs::error::Error) -> Self {
        let (disposition, message) = classify_amqprs(context, &error.to_string());
        AmqpError {
            message,
            disposition,
            source: None,
        }
    }

    pub(crate) fn disposition(&self) -> Disposition {
        self.disposition
    }
}

fn classify_amqprs(context: &str, text: &str) -> (Disposition, String) {
    if text.contains("ACCESS_REFUSED") {
        return (
            Disposition::Stop,
            format!("{context}: {text}; {}", hint(ACCESS_REFUSED)),
        );
    }
    if text.contains("NOT_ALLOWED") {
        return (
            Disposition::Stop,
            format!("{context}: {text}; {}", hint(NOT_ALLOWED)),
        );
    }
    let tls = [
        "invalid peer certificate",
        "CertificateRequired",
        "BadCertificate",
    ];
    if tls.iter().any(|said| text.contains(said)) {
        return (
            Disposition::Stop,
            format!("{context}: {text}; {}", TLS_HINT),
        );
    }
    // A lost connection, a broker restarting, a channel closed for another reason.
    (Disposition::Retry, format!("{context}: {text}"))
}

/// What to do about a reply code that retrying cannot heal.
fn hint(code: u16) -> &'static str {
    if code == ACCESS_REFUSED {
        "check the user, password and vhost in --amqp-url, and the user's permissions: \
         configure and write on walbox's exchanges (walbox docs, \"Security\")"
    } else {
        "check that the vhost in --amqp-url exists and the user may use it"
    }
}

const TLS_HINT: &str = "check --amqp-ca-file (the CA that signed the broker's certificate) and \
                        the host name in --amqp-url (it must be in the certificate)";

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
