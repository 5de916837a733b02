//! TLS for `rabbitmq-stream+tls://`: the CA file (`--amqp-ca-file`, as for amqps://) and the
//! optional client certificate, checked at startup so that the stream client never meets a
//! file it cannot use.
//!
//! The stream client (`rabbitmq-stream-client` 0.11, `src/client/options.rs`) takes file paths,
//! not a rustls configuration, and reads them on every connection. It trusts exactly the CA
//! file it is given (no system roots), unwraps while reading it (`roots.add(cert).unwrap()`), and
//! takes the first PKCS#8 key of the key file (`.next().unwrap()`): a certificate rustls cannot
//! use or a key in another format would panic there. The checks below are the same parsing, done
//! once, as a usage error.

use std::path::{Path, PathBuf};

use rustls::RootCertStore;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivatePkcs8KeyDer};

use super::ConfigError;
use super::secrets::read_certificates;

/// The files a TLS stream connection uses, all checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct StreamTls {
    /// The CAs the broker's certificate must chain to (and only these).
    pub(crate) ca_file: PathBuf,
    /// Certificate chain and PKCS#8 key, for a listener that asks for a client certificate.
    pub(crate) client: Option<(PathBuf, PathBuf)>,
}

/// The flags the TLS settings come from.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct StreamTlsFlags<'a> {
    pub(crate) ca_file: Option<&'a Path>,
    pub(crate) client_cert: Option<&'a Path>,
    pub(crate) client_key: Option<&'a Path>,
}

impl StreamTlsFlags<'_> {
    /// The checked settings, for a target with a `rabbitmq-stream+tls://` node.
    pub(crate) fn validate(&self) -> Result<StreamTls, ConfigError> {
        let ca_file = self.ca_file.ok_or_else(|| {
            ConfigError(
                "rabbitmq-stream+tls:// needs --amqp-ca-file: the stream client trusts only the \
                 CAs of that file (for a broker with a public certificate, give the system's \
                 bundle, e.g. /etc/ssl/certs/ca-certificates.crt)"
                    .into(),
            )
        })?;
        let mut roots = RootCertStore::empty();
        for certificate in certificates("--amqp-ca-file", ca_file)? {
            roots.add(certificate).map_err(|error| {
                ConfigError(format!(
                    "--amqp-ca-file {} holds a certificate rustls cannot use as a CA: {error}",
                    ca_file.display()
                ))
            })?;
        }
        let client = match (self.client_cert, self.client_key) {
            (None, None) => None,
            (Some(cert), Some(key)) => {
                certificates("--stream-client-cert-file", cert)?;
                pkcs8_key(key)?;
                Some((cert.to_owned(), key.to_owned()))
            }
            _ => {
                return Err(ConfigError(
                    "give --stream-client-cert-file and --stream-client-key-file together".into(),
                ));
            }
        };
        Ok(StreamTls {
            ca_file: ca_file.to_owned(),
            client,
        })
    }

    /// Whether a client certificate was asked for (it needs a TLS node).
    pub(crate) fn wants_client_certificate(&self) -> bool {
        self.client_cert.is_some() || self.client_key.is_some()
    }
}

fn read(flag: &str, path: &Path) -> Result<Vec<u8>, ConfigError> {
    std::fs::read(path).map_err(|error| {
        ConfigError(format!(
            "{flag} {}: cannot read it: {error}",
            path.display()
        ))
    })
}

/// The PEM certificates of `path`: at least one, each well formed.
fn certificates(flag: &str, path: &Path) -> Result<Vec<CertificateDer<'static>>, ConfigError> {
    Ok(read_certificates(flag, path)?.1)
}

/// The key file must start its keys with a PKCS#8 one (`BEGIN PRIVATE KEY`): the only form the
/// stream client reads.
fn pkcs8_key(path: &Path) -> Result<(), ConfigError> {
    let flag = "--stream-client-key-file";
    let pem = read(flag, path)?;
    match PrivatePkcs8KeyDer::pem_slice_iter(&pem).next() {
        Some(Ok(_)) => Ok(()),
        Some(Err(error)) => Err(ConfigError(format!(
            "{flag} {} is not a PEM key: {error}",
            path.display()
        ))),
        None => Err(ConfigError(format!(
            "{flag} {} holds no PKCS#8 key (BEGIN PRIVATE KEY); convert it with \
             `openssl pkcs8 -topk8 -nocrypt -in KEY -out KEY.pk8`",
            path.display()
        ))),
    }
}

/// `text` in a file of this test process's own (the caller removes it).
#[cfg(test)]
pub(crate) fn test_file(name: &str, text: &str) -> PathBuf {
    let path = std::env::temp_dir().join(format!("walbox-{}-{name}", std::process::id()));
    std::fs::write(&path, text).unwrap();
    path
}

/// A CA certificate for unit tests (P-256, valid until 2126).
#[cfg(test)]
pub(crate) const TEST_CA: &str = "-----BEGIN CERTIFICATE-----
MIIBkzCCATmgAwIBAgIUYM+QSoaLFzYBfXDTPdNdZ+MyZTgwCgYIKoZIzj0EAwIw
HjEcMBoGA1UEAwwTd2FsYm94IHVuaXQgdGVzdCBDQTAgFw0yNjEyMDYyMDI0NTRa
GA8yMTI2MTExMjIwMjQ1NFowHjEcMBoGA1UEAwwTd2FsYm94IHVuaXQgdGVzdCBD
QTBZMBMGByqGSM49AgEGCCqGSM49AwEHA0IABJgmG8W+B7cktvG+QyCy7JqAFpVI
zjJRIUGhe3uha3tU7EUsuD1HLhoFEX0PJfpPtsDo6i/jGJRS+Lzrc3eaD7WjUzBR
MB0GA1UdDgQWBBSmxFY8lQglfuMhq1rtyyhbM8SvWTAfBgNVHSMEGDAWgBSmxFY8
lQglfuMhq1rtyyhbM8SvWTAPBgNVHRMBAf8EBTADAQH/MAoGCCqGSM49BAMCA0gA
MEUCIGOrO1rejr9AErKUE69MygPcQBY+nKf27aebeQNCRETYAiEApPjzxoFxSwwv
wRAckaZovVxkt3JTLG4r/m0e1zJm6Wc=
-----END CERTIFICATE-----
";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_files_are_checked_before_the_stream_client_reads_them() {
        let missing = StreamTlsFlags::default().validate().unwrap_err();
        assert!(missing.0.contains("needs --amqp-ca-file"), "{}", missing.0);
        let empty = test_file("empty.pem", "not pem\n");
        let flags = StreamTlsFlags {
            ca_file: Some(&empty),
            ..StreamTlsFlags::default()
        };
        assert!(flags.validate().unwrap_err().0.contains("holds no PEM"));
        let ca = test_file("ca.pem", TEST_CA);
        let rsa_key = test_file(
            "rsa.key",
            "-----BEGIN RSA PRIVATE KEY-----\nAAAA\n-----END RSA PRIVATE KEY-----\n",
        );
        let half = StreamTlsFlags {
            ca_file: Some(&ca),
            client_cert: Some(&ca),
            client_key: None,
        };
        assert!(half.validate().unwrap_err().0.contains("together"));
        let wrong_key = StreamTlsFlags {
            client_key: Some(&rsa_key),
            ..half
        };
        assert!(wrong_key.validate().unwrap_err().0.contains("PKCS#8"));
        for path in [empty, ca, rsa_key] {
            std::fs::remove_file(path).unwrap();
        }
    }
}
