//! `rabbitmq-stream+tls://`: the stream client's TLS settings for one connection, and which of
//! its failures are definite.
//!
//! The client (`rabbitmq-stream-client` 0.11, `src/client/options.rs`) builds its rustls
//! configuration itself, from file paths (checked at startup, see `config::stream_tls`), with
//! the process's default crypto provider and webpki's verifier: the chain must lead to a CA of
//! `--amqp-ca-file` and the certificate must name the host connected to. That host is the
//! one of the URL for the first connection, and the leader's advertised host (RabbitMQ's
//! `stream.advertised_host`, by default the node's host name) when walbox moves to the leader,
//! so each node's certificate must name the host it advertises as well.

use std::io;
use std::sync::{Arc, Once};
use std::time::Duration;

use rabbitmq_stream_client::TlsConfiguration;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivatePkcs8KeyDer, ServerName};
use rustls::{ClientConfig, RootCertStore};
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tokio::time::timeout;
use tokio_rustls::TlsConnector;

use crate::config::StreamTls;

/// How long the probe of [`refusal_after_handshake`] waits for each step.
const PROBE_TIMEOUT: Duration = Duration::from_secs(3);

/// The client's settings for a connection to `host`. Err: why not (a host name the broker
/// advertised that TLS cannot verify; the client would panic on it).
pub(super) fn configuration(tls: &StreamTls, host: &str) -> Result<TlsConfiguration, String> {
    if ServerName::try_from(host).is_err() {
        return Err(format!(
            "`{host}` is not a name a TLS certificate can be checked against"
        ));
    }
    install_provider();
    let builder = TlsConfiguration::builder().add_root_certificates(&tls.ca_file);
    let builder = match &tls.client {
        Some((cert, key)) => builder.add_client_certificates_keys(cert, key),
        None => builder,
    };
    builder.build().map_err(str::to_owned)
}

/// The client asks rustls for the process's default crypto provider, and walbox's tree holds
/// two (ring, which walbox uses, and aws-lc-rs, which lapin brings), so rustls cannot pick one
/// and would panic: make ring the default once. An error means one is installed already.
fn install_provider() {
    static INSTALL: Once = Once::new();
    INSTALL.call_once(|| {
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

/// Why a TLS handshake failed, when it failed on TLS itself (a certificate the chain or the
/// name check refused, an alert from the broker, a peer that does not speak TLS): no retry
/// heals these, unlike a cut connection or a timeout (None).
pub(super) fn handshake_refusal(error: &io::Error) -> Option<String> {
    let tls = error.get_ref()?.downcast_ref::<rustls::Error>()?;
    Some(match tls {
        rustls::Error::InvalidCertificate(why) => format!(
            "TLS: the broker's certificate is not trusted ({why:?}); it must chain to a CA of \
             --amqp-ca-file and name the host connected to"
        ),
        rustls::Error::AlertReceived(alert) => format!(
            "TLS: the broker refused the handshake ({alert:?}); if it asks for a client \
             certificate, give one it trusts with --stream-client-cert-file and \
             --stream-client-key-file"
        ),
        other => format!("TLS handshake failed: {other}"),
    })
}

/// Whether the broker refused this client's certificate (or its absence), after a TLS
/// connection closed while the stream client was opening it. With TLS 1.3 the client's side of
/// the handshake is done before the broker checks the client's certificate, so the broker's
/// alert arrives with the first read, where the stream client only sees the connection
/// closed. This makes the same handshake again and reads: an alert is the definite answer;
/// anything else (no answer, a cut) is None, and the failure stays transient.
pub(super) async fn refusal_after_handshake(
    tls: &StreamTls,
    host: &str,
    port: u16,
) -> Option<String> {
    let config = Arc::new(probe_config(tls)?);
    let name = ServerName::try_from(host.to_owned()).ok()?;
    let tcp = timeout(PROBE_TIMEOUT, TcpStream::connect((host, port)))
        .await
        .ok()?
        .ok()?;
    let mut stream = match timeout(PROBE_TIMEOUT, TlsConnector::from(config).connect(name, tcp))
        .await
        .ok()?
    {
        Ok(stream) => stream,
        Err(error) => return handshake_refusal(&error),
    };
    // The stream protocol's client speaks first, so an accepted connection stays silent.
    match timeout(PROBE_TIMEOUT, stream.read(&mut [0u8; 1])).await {
        Ok(Err(error)) => handshake_refusal(&error),
        _ => None,
    }
}

/// The stream client's rustls configuration, rebuilt (webpki's verifier with the CA file, the
/// client certificate if any). None if the files cannot be read now.
fn probe_config(tls: &StreamTls) -> Option<ClientConfig> {
    let pem_certificates = |path: &std::path::Path| -> Option<Vec<CertificateDer<'static>>> {
        CertificateDer::pem_file_iter(path)
            .ok()?
            .collect::<Result<Vec<_>, _>>()
            .ok()
    };
    let mut roots = RootCertStore::empty();
    roots.add_parsable_certificates(pem_certificates(&tls.ca_file)?);
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .ok()?
        .with_root_certificates(roots);
    match &tls.client {
        None => Some(builder.with_no_client_auth()),
        Some((cert, key)) => {
            let key = PrivatePkcs8KeyDer::pem_file_iter(key).ok()?.next()?.ok()?;
            builder
                .with_client_auth_cert(pem_certificates(cert)?, key.into())
                .ok()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::CertificateError;

    #[test]
    fn certificate_failures_are_definite_and_cuts_are_not() {
        let refused = io::Error::new(
            io::ErrorKind::InvalidData,
            rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer),
        );
        let why = handshake_refusal(&refused).unwrap();
        assert!(why.contains("UnknownIssuer"), "{why}");
        let cut = io::Error::new(io::ErrorKind::ConnectionReset, "reset by peer");
        assert_eq!(handshake_refusal(&cut), None);
        let tls = StreamTls {
            ca_file: "/nonexistent/ca.pem".into(),
            client: None,
        };
        assert!(configuration(&tls, "[::1]").is_err());
        assert!(configuration(&tls, "localhost").is_ok());
    }
}
