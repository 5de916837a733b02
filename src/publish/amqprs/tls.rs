//! TLS for amqps:// with amqprs: rustls (walbox's one TLS stack), trusting the bundled web
//! roots and the certificates of `--amqp-ca-file`, checking the host name of the URL.

use std::sync::Arc;

use amqprs::tls::TlsAdaptor;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use rustls::{ClientConfig, RootCertStore};
use tokio_rustls::TlsConnector;

use crate::config::CaFile;

/// The TLS client for a broker at `host`.
pub(super) fn adaptor(ca: Option<&CaFile>, host: &str) -> Result<TlsAdaptor, String> {
    let mut roots = RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(ca) = ca {
        let certificates = CertificateDer::pem_slice_iter(ca.pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("--amqp-ca-file is not PEM certificates: {e}"))?;
        let (added, _) = roots.add_parsable_certificates(certificates);
        if added == 0 {
            return Err("--amqp-ca-file holds no usable CA certificate".into());
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS setup: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(TlsAdaptor::new(
        TlsConnector::from(Arc::new(config)),
        host.to_owned(),
    ))
}
