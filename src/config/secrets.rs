//! Secrets in the configuration: URLs whose password never prints, password files, and the
//! amqps:// CA file, read and checked at startup.

use std::fmt;
use std::path::Path;

use super::ConfigError;

/// A URL with a secret in it. Debug and Display show it with the password replaced.
#[derive(Clone)]
pub(crate) struct SecretUrl(String);

impl SecretUrl {
    pub(crate) fn new(url: String) -> Self {
        SecretUrl(url)
    }

    /// The URL itself, for connecting only.
    pub(crate) fn expose(&self) -> &str {
        &self.0
    }

    pub(crate) fn redacted(&self) -> String {
        redact_url(&self.0)
    }
}

impl fmt::Debug for SecretUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())
    }
}

impl fmt::Display for SecretUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())
    }
}

/// Replace the password of `scheme://user:password@host/...` (and `password=` in key=value
/// connection strings) with `***`.
pub(crate) fn redact_url(url: &str) -> String {
    if let Some(scheme_end) = url.find("://") {
        let rest = &url[scheme_end + 3..];
        let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
        if let Some(at) = rest[..authority_end].rfind('@')
            && let Some(colon) = rest[..at].find(':')
        {
            return format!(
                "{}{}:***{}",
                &url[..scheme_end + 3],
                &rest[..colon],
                &rest[at..]
            );
        }
        return url.to_owned();
    }
    url.split_whitespace()
        .map(|pair| match pair.split_once('=') {
            Some((key, _)) if key.eq_ignore_ascii_case("password") => format!("{key}=***"),
            _ => pair.to_owned(),
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// A password read from a file. Debug shows `***`.
#[derive(Clone)]
pub(crate) struct Secret(String);

impl Secret {
    pub(crate) fn new(secret: String) -> Self {
        Secret(secret)
    }

    /// The password itself, for connecting only.
    pub(crate) fn expose(&self) -> &str {
        &self.0
    }

    /// Read a password file: its whole content, less one trailing newline (`\n` or `\r\n`),
    /// which editors and `echo` add.
    pub(crate) fn from_file(flag: &str, path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|error| {
            ConfigError(format!(
                "{flag} {}: cannot read it: {error}",
                path.display()
            ))
        })?;
        let password = text
            .strip_suffix('\n')
            .map(|text| text.strip_suffix('\r').unwrap_or(text))
            .unwrap_or(&text);
        if password.is_empty() {
            return Err(ConfigError(format!("{flag} {} is empty", path.display())));
        }
        Ok(Secret(password.to_owned()))
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// A CA file for amqps://, read and checked at startup.
#[derive(Clone, Debug)]
pub(crate) struct CaFile {
    /// The file's PEM text.
    pub(crate) pem: String,
}

impl CaFile {
    pub(crate) fn read(flag: &str, path: &Path) -> Result<Self, ConfigError> {
        let (pem, _) = read_certificates(flag, path)?;
        Ok(CaFile { pem })
    }
}

/// The PEM text of `path` and the certificates in it: at least one, each well formed. Every
/// option that takes a certificate file (`--amqp-ca-file`, the stream target's client
/// certificate) reads it here, so each says the same thing about a bad file.
pub(crate) fn read_certificates(
    flag: &str,
    path: &Path,
) -> Result<(String, Vec<rustls::pki_types::CertificateDer<'static>>), ConfigError> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let pem = std::fs::read_to_string(path).map_err(|error| {
        ConfigError(format!(
            "{flag} {}: cannot read it: {error}",
            path.display()
        ))
    })?;
    let certificates = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|error| {
            ConfigError(format!(
                "{flag} {} is not PEM certificates: {error}",
                path.display()
            ))
        })?;
    if certificates.is_empty() {
        return Err(ConfigError(format!(
            "{flag} {} holds no PEM certificate",
            path.display()
        )));
    }
    Ok((pem, certificates))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(
            redact_url("postgres://walbox:s3cret@db:5432/app?sslmode=require"),
            "postgres://walbox:***@db:5432/app?sslmode=require"
        );
        assert_eq!(
            redact_url("amqp://guest:guest@h:5672/%2f"),
            "amqp://guest:***@h:5672/%2f"
        );
        assert_eq!(redact_url("amqp://h:5672"), "amqp://h:5672");
        assert_eq!(redact_url("postgres://user@h/db"), "postgres://user@h/db");
        assert_eq!(
            redact_url("host=db password=x user=y"),
            "host=db password=*** user=y"
        );
        let secret = SecretUrl::new("amqp://u:p@h".into());
        assert_eq!(
            format!("{secret} {secret:?}"),
            "amqp://u:***@h amqp://u:***@h"
        );
    }
}
