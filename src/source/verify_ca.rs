//! `sslmode=verify-ca` for the replication connection, around a pgwire-replication bug.
//!
//! pgwire-replication 0.5.0's verify-ca refuses a certificate whose names do not include the
//! host connected to: its chain-only check recognises rustls's older name-mismatch error
//! (`NotValidForName`) but not the one current rustls returns (`NotValidForNameContext`), so it
//! behaves as verify-full. To give verify-ca its meaning, walbox first fetches the server's
//! certificate over a TLS connection of its own that checks the chain only (the control
//! connection's verifier, [`crate::tls`]), then asks pgwire-replication for verify-full against
//! a name taken from that very certificate. A server passing that check holds a certificate
//! signed by the trusted CA, which is all verify-ca asks for.

use std::net::IpAddr;
use std::sync::Arc;

use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use x509_cert::Certificate;
use x509_cert::der::Decode;
use x509_cert::ext::pkix::SubjectAltName;
use x509_cert::ext::pkix::name::GeneralName;

use crate::config::PostgresTls;
use crate::error::{Error, Result};

/// PostgreSQL's SSLRequest: length 8, request code 80877103.
const SSL_REQUEST: [u8; 8] = [0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f];

/// A name in the certificate of the server at `host:port`, after checking that a trusted CA
/// signed it. None if the certificate names nothing walbox can ask for (then
/// pgwire-replication's own check decides).
pub(crate) async fn name_to_verify(
    host: &str,
    port: u16,
    tls: &PostgresTls,
) -> Result<Option<String>> {
    let context = "fetching the server's certificate for the replication connection";
    let network = |error: std::io::Error| Error::transient(format!("{context}: {error}"));
    let mut tcp = TcpStream::connect((host, port)).await.map_err(network)?;
    tcp.write_all(&SSL_REQUEST).await.map_err(network)?;
    let mut answer = [0u8; 1];
    tcp.read_exact(&mut answer).await.map_err(network)?;
    if answer[0] != b'S' {
        return Err(Error::definite(format!(
            "{context}: the server does not support TLS; sslmode=verify-ca needs ssl=on"
        )));
    }
    let connector = tokio_rustls::TlsConnector::from(Arc::new(crate::tls::client_config(tls)?));
    let server_name = ServerName::try_from(host.to_owned())
        .map_err(|e| Error::definite(format!("{context}: host {host}: {e}")))?;
    let mut stream = connector.connect(server_name, tcp).await.map_err(|error| {
        let text = error.to_string();
        if text.contains("invalid peer certificate") {
            Error::definite(format!(
                "{context}: {text}; check sslrootcert in --postgres-url (the CA that signed \
                 the server's certificate)"
            ))
        } else {
            Error::transient(format!("{context}: {text}"))
        }
    })?;
    let certificate = stream
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|certificates| certificates.first())
        .cloned();
    // Only the certificate was wanted; the server sees a client leaving before its startup
    // message.
    let _ = stream.shutdown().await;
    Ok(certificate.and_then(|certificate| first_name(&certificate)))
}

/// The first DNS name or IP address of the certificate's subjectAltName, as text a
/// [`ServerName`] parses. A wildcard's `*` becomes a label it matches.
fn first_name(certificate: &CertificateDer<'_>) -> Option<String> {
    let certificate = Certificate::from_der(certificate.as_ref()).ok()?;
    let (_, names) = certificate
        .tbs_certificate
        .get::<SubjectAltName>()
        .ok()
        .flatten()?;
    names.0.iter().find_map(|name| match name {
        GeneralName::DnsName(dns) => {
            let dns = dns.as_str();
            let dns = match dns.strip_prefix("*.") {
                Some(rest) => format!("walbox.{rest}"),
                None => dns.to_owned(),
            };
            ServerName::try_from(dns.clone()).is_ok().then_some(dns)
        }
        GeneralName::IpAddress(octets) => match octets.as_bytes().len() {
            4 => <[u8; 4]>::try_from(octets.as_bytes())
                .ok()
                .map(|v4| IpAddr::from(v4).to_string()),
            16 => <[u8; 16]>::try_from(octets.as_bytes())
                .ok()
                .map(|v6| IpAddr::from(v6).to_string()),
            _ => None,
        },
        _ => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::pki_types::pem::PemObject;

    fn certificate(pem: &str) -> CertificateDer<'static> {
        CertificateDer::from_pem_slice(pem.as_bytes()).unwrap()
    }

    #[test]
    fn the_first_subject_alt_name_is_one_the_certificate_is_valid_for() {
        // subjectAltName = DNS:*.db.example.com, IP:10.1.2.3
        let wildcard = certificate(include_str!("../../tests/data/example-wildcard.pem"));
        assert_eq!(
            first_name(&wildcard).as_deref(),
            Some("walbox.db.example.com")
        );
        // No subjectAltName: nothing to ask for.
        let bare = certificate(include_str!("../../tests/data/example-ca.pem"));
        assert_eq!(first_name(&bare), None);
    }
}
