//! `--postgres-url` → a tokio-postgres [`tokio_postgres::Config`] plus the TLS settings that
//! libpq understands and tokio-postgres does not (`sslmode=verify-ca|verify-full`,
//! `sslrootcert`).
//!
//! tokio-postgres refuses both, so they are taken out of the text here, validated (the CA file
//! is read and must hold a certificate), and the rest is handed to tokio-postgres with an
//! `sslmode` it knows. Both forms libpq accepts work: `postgres://…?sslmode=…` and
//! `host=… sslmode=…`.

use std::path::PathBuf;
use std::str::FromStr;

use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;

use super::ConfigError;
use super::secrets::redact_url;

/// libpq's `sslmode`, without `allow` (plain first, TLS on refusal), which neither client
/// library offers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum SslMode {
    /// Never TLS.
    Disable,
    /// TLS if the server offers it, without checking its certificate; plain otherwise.
    Prefer,
    /// TLS always; the certificate is not checked.
    Require,
    /// TLS; the certificate must chain to a trusted CA. Any host name is accepted.
    VerifyCa,
    /// TLS; the certificate must chain to a trusted CA and name the host connected to.
    VerifyFull,
}

impl SslMode {
    fn parse(text: &str) -> Result<Self, ConfigError> {
        match text {
            "disable" => Ok(SslMode::Disable),
            "prefer" => Ok(SslMode::Prefer),
            "require" => Ok(SslMode::Require),
            "verify-ca" => Ok(SslMode::VerifyCa),
            "verify-full" => Ok(SslMode::VerifyFull),
            other => Err(ConfigError(format!(
                "--postgres-url: sslmode `{other}` is not one of disable, prefer, require, \
                 verify-ca, verify-full"
            ))),
        }
    }

    pub(crate) fn verifies_certificate(self) -> bool {
        matches!(self, SslMode::VerifyCa | SslMode::VerifyFull)
    }
}

/// The CAs a verifying mode trusts.
#[derive(Clone, Debug)]
pub(crate) enum RootCerts {
    /// `sslrootcert=path` (or libpq's default `~/.postgresql/root.crt`): the PEM certificates
    /// of that file, read and checked at startup.
    File {
        path: PathBuf,
        certificates: Vec<CertificateDer<'static>>,
    },
    /// `sslrootcert=system`: Mozilla's root certificates (webpki-roots), which is also what
    /// pgwire-replication trusts when given no file.
    System,
}

/// How walbox's PostgreSQL connections (control plane and replication) use TLS.
#[derive(Clone, Debug)]
pub(crate) struct PostgresTls {
    pub(crate) mode: SslMode,
    /// Some exactly when `mode` verifies the certificate.
    pub(crate) roots: Option<RootCerts>,
}

/// Parse and validate `--postgres-url`.
pub(crate) fn parse(url: &str) -> Result<(tokio_postgres::Config, PostgresTls), ConfigError> {
    let (rest, sslmode, sslrootcert) =
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            take_from_url(url)?
        } else {
            take_from_key_values(url)?
        };
    let mut postgres = tokio_postgres::Config::from_str(&rest).map_err(|error| {
        ConfigError(format!(
            "--postgres-url `{}` is not a valid PostgreSQL URL: {error}",
            redact_url(url)
        ))
    })?;
    let mut mode = match &sslmode {
        Some(text) => SslMode::parse(text)?,
        // libpq's default.
        None => SslMode::Prefer,
    };
    // As in libpq: `require` with a CA file given verifies the chain, like verify-ca.
    if mode == SslMode::Require && sslrootcert.is_some() {
        mode = SslMode::VerifyCa;
    }
    let roots = if mode.verifies_certificate() {
        Some(root_certs(sslrootcert.as_deref())?)
    } else {
        None
    };
    // walbox needs the primary: with several hosts, look for the one that takes writes (the
    // control connection; the replication connection asks each host itself, see
    // crate::source). An explicit `any` is as good as unset, since a standby cannot serve.
    if postgres.get_hosts().len() > 1 {
        postgres.target_session_attrs(tokio_postgres::config::TargetSessionAttrs::ReadWrite);
    }
    postgres.ssl_mode(match mode {
        SslMode::Disable => tokio_postgres::config::SslMode::Disable,
        SslMode::Prefer => tokio_postgres::config::SslMode::Prefer,
        // The verifying modes are tokio-postgres's `require` with a connector that checks the
        // certificate (crate::tls).
        SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull => {
            tokio_postgres::config::SslMode::Require
        }
    });
    Ok((postgres, PostgresTls { mode, roots }))
}

/// Where `config` connects: each host with its port, in the order given (libpq's multi-host
/// form, `host=a,b port=5432,5433` or `postgres://a:5432,b:5433/db`). With no host, libpq's
/// default socket directory.
pub(crate) fn endpoints(config: &tokio_postgres::Config) -> Vec<(String, u16)> {
    use tokio_postgres::config::Host;
    let ports = config.get_ports();
    let port = |index: usize| match ports {
        [] => 5432,
        [one] => *one,
        many => many.get(index).copied().unwrap_or(5432),
    };
    let hosts: Vec<String> = config
        .get_hosts()
        .iter()
        .map(|host| match host {
            Host::Tcp(name) => name.clone(),
            Host::Unix(path) => path.to_string_lossy().into_owned(),
        })
        .collect();
    if hosts.is_empty() {
        return vec![("/var/run/postgresql".to_owned(), port(0))];
    }
    hosts
        .into_iter()
        .enumerate()
        .map(|(index, host)| (host.clone(), port(index)))
        .collect()
}

/// `config` narrowed to its `index`-th host (see [`endpoints`]): everything else, credentials
/// and TLS included, is the same.
pub(crate) fn single_host(config: &tokio_postgres::Config, index: usize) -> tokio_postgres::Config {
    let (host, port) = endpoints(config).swap_remove(index);
    let mut one = tokio_postgres::Config::new();
    one.host(host).port(port);
    if let Some(address) = config.get_hostaddrs().get(index) {
        one.hostaddr(*address);
    }
    if let Some(user) = config.get_user() {
        one.user(user);
    }
    if let Some(password) = config.get_password() {
        one.password(password);
    }
    if let Some(dbname) = config.get_dbname() {
        one.dbname(dbname);
    }
    if let Some(options) = config.get_options() {
        one.options(options);
    }
    if let Some(name) = config.get_application_name() {
        one.application_name(name);
    }
    if let Some(timeout) = config.get_connect_timeout() {
        one.connect_timeout(*timeout);
    }
    if let Some(timeout) = config.get_tcp_user_timeout() {
        one.tcp_user_timeout(*timeout);
    }
    one.ssl_mode(config.get_ssl_mode())
        .ssl_negotiation(config.get_ssl_negotiation())
        .channel_binding(config.get_channel_binding())
        .keepalives(config.get_keepalives())
        .keepalives_idle(config.get_keepalives_idle());
    if let Some(interval) = config.get_keepalives_interval() {
        one.keepalives_interval(interval);
    }
    if let Some(retries) = config.get_keepalives_retries() {
        one.keepalives_retries(retries);
    }
    one
}

type Taken = (String, Option<String>, Option<String>);

/// Remove `sslmode` and `sslrootcert` from a URL's query string (percent-decoding them).
fn take_from_url(url: &str) -> Result<Taken, ConfigError> {
    let Some((base, query)) = url.split_once('?') else {
        return Ok((url.to_owned(), None, None));
    };
    let (mut sslmode, mut sslrootcert) = (None, None);
    let mut kept = Vec::new();
    for pair in query.split('&').filter(|pair| !pair.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        match key {
            "sslmode" => sslmode = Some(percent_decode(value)?),
            "sslrootcert" => sslrootcert = Some(percent_decode(value)?),
            _ => kept.push(pair),
        }
    }
    let rest = if kept.is_empty() {
        base.to_owned()
    } else {
        format!("{base}?{}", kept.join("&"))
    };
    Ok((rest, sslmode, sslrootcert))
}

fn percent_decode(text: &str) -> Result<String, ConfigError> {
    let bytes = text.as_bytes();
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut index = 0;
    while index < bytes.len() {
        if bytes[index] == b'%' {
            let hex = text
                .get(index + 1..index + 3)
                .and_then(|hex| u8::from_str_radix(hex, 16).ok())
                .ok_or_else(|| {
                    ConfigError(format!("--postgres-url: `{text}` has a malformed %-escape"))
                })?;
            decoded.push(hex);
            index += 3;
        } else {
            decoded.push(bytes[index]);
            index += 1;
        }
    }
    String::from_utf8(decoded)
        .map_err(|_| ConfigError(format!("--postgres-url: `{text}` is not UTF-8")))
}

/// Remove `sslmode` and `sslrootcert` from a libpq `key=value` string. The other pairs are
/// written back single-quoted, so their values survive whatever they contain.
fn take_from_key_values(text: &str) -> Result<Taken, ConfigError> {
    let (mut sslmode, mut sslrootcert) = (None, None);
    let mut kept = Vec::new();
    for (key, value) in key_values(text)? {
        match key.as_str() {
            "sslmode" => sslmode = Some(value),
            "sslrootcert" => sslrootcert = Some(value),
            _ => kept.push(format!(
                "{key}='{}'",
                value.replace('\\', "\\\\").replace('\'', "\\'")
            )),
        }
    }
    Ok((kept.join(" "), sslmode, sslrootcert))
}

/// libpq's `key = value` syntax: values bare or single-quoted, `\` escaping the next
/// character.
fn key_values(text: &str) -> Result<Vec<(String, String)>, ConfigError> {
    let malformed = || {
        ConfigError(format!(
            "--postgres-url `{}` is neither a postgres:// URL nor key=value pairs",
            redact_url(text)
        ))
    };
    let mut pairs = Vec::new();
    let mut chars = text.chars().peekable();
    loop {
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        if chars.peek().is_none() {
            return Ok(pairs);
        }
        let mut key = String::new();
        while let Some(c) = chars.next_if(|c| *c != '=' && !c.is_whitespace()) {
            key.push(c);
        }
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        if chars.next() != Some('=') || key.is_empty() {
            return Err(malformed());
        }
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        let mut value = String::new();
        if chars.next_if_eq(&'\'').is_some() {
            loop {
                match chars.next().ok_or_else(malformed)? {
                    '\'' => break,
                    '\\' => value.push(chars.next().ok_or_else(malformed)?),
                    c => value.push(c),
                }
            }
        } else {
            while let Some(c) = chars.next_if(|c| !c.is_whitespace()) {
                if c == '\\' {
                    value.push(chars.next().ok_or_else(malformed)?);
                } else {
                    value.push(c);
                }
            }
        }
        pairs.push((key, value));
    }
}

/// The CAs to trust: `sslrootcert`'s file, `system`, or libpq's default file.
fn root_certs(sslrootcert: Option<&str>) -> Result<RootCerts, ConfigError> {
    let path = match sslrootcert {
        Some("system") => return Ok(RootCerts::System),
        Some(path) => PathBuf::from(path),
        None => {
            let default = std::env::var_os("HOME")
                .map(|home| PathBuf::from(home).join(".postgresql/root.crt"))
                .filter(|path| path.exists());
            default.ok_or_else(|| {
                ConfigError(
                    "--postgres-url: sslmode verify-ca and verify-full check the server's \
                     certificate against a CA: add sslrootcert=/path/to/ca.pem (or \
                     sslrootcert=system for Mozilla's root certificates)"
                        .into(),
                )
            })?
        }
    };
    let certificates = CertificateDer::pem_file_iter(&path)
        .and_then(|certificates| certificates.collect::<Result<Vec<_>, _>>())
        .map_err(|error| {
            ConfigError(format!(
                "--postgres-url: sslrootcert {} cannot be read as PEM certificates: {error}",
                path.display()
            ))
        })?;
    if certificates.is_empty() {
        return Err(ConfigError(format!(
            "--postgres-url: sslrootcert {} holds no PEM certificate",
            path.display()
        )));
    }
    Ok(RootCerts::File { path, certificates })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(url: &str) -> SslMode {
        parse(url).unwrap().1.mode
    }

    #[test]
    fn modes_tokio_postgres_knows_pass_through() {
        assert_eq!(mode("postgres://u@h/db"), SslMode::Prefer);
        assert_eq!(mode("postgres://u@h/db?sslmode=disable"), SslMode::Disable);
        assert_eq!(mode("postgres://u@h/db?sslmode=require"), SslMode::Require);
        let (postgres, _) = parse("postgres://u@h/db?sslmode=require").unwrap();
        assert_eq!(
            postgres.get_ssl_mode(),
            tokio_postgres::config::SslMode::Require
        );
    }

    #[test]
    fn verifying_modes_need_a_ca_and_leave_the_rest_alone() {
        let dir = std::env::temp_dir().join(format!("walbox-pgurl-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        // Any well-formed certificate will do: this test only reads it.
        let ca = dir.join("ca.pem");
        std::fs::write(&ca, include_str!("../../tests/data/example-ca.pem")).unwrap();
        let url = format!(
            "postgres://u:p@h:5433/db?application_name=x&sslmode=verify-full&sslrootcert={}",
            ca.display()
        );
        let (postgres, tls) = parse(&url).unwrap();
        assert_eq!(tls.mode, SslMode::VerifyFull);
        assert!(
            matches!(tls.roots, Some(RootCerts::File { ref certificates, .. }) if certificates.len() == 1)
        );
        assert_eq!(postgres.get_application_name(), Some("x"));
        assert_eq!(
            postgres.get_ssl_mode(),
            tokio_postgres::config::SslMode::Require
        );

        let text = format!(
            "host=h user=u password='a b\\'c' dbname=db sslmode=verify-ca sslrootcert='{}'",
            ca.display()
        );
        let (postgres, tls) = parse(&text).unwrap();
        assert_eq!(tls.mode, SslMode::VerifyCa);
        assert_eq!(postgres.get_password(), Some(&b"a b'c"[..]));
        assert_eq!(postgres.get_dbname(), Some("db"));

        // libpq: require with a CA file checks the chain.
        let url = format!(
            "postgres://u@h/db?sslmode=require&sslrootcert={}",
            ca.display()
        );
        assert_eq!(mode(&url), SslMode::VerifyCa);
        assert!(matches!(
            parse("postgres://u@h/db?sslmode=verify-full&sslrootcert=system")
                .unwrap()
                .1
                .roots,
            Some(RootCerts::System)
        ));
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn several_hosts_mean_the_primary_and_each_can_be_reached_alone() {
        use tokio_postgres::config::TargetSessionAttrs;
        for url in [
            "postgres://u:pw@a:5433,b:5434/db?application_name=x",
            "host=a,b port=5433,5434 user=u password=pw dbname=db application_name=x",
        ] {
            let (postgres, _) = parse(url).unwrap();
            assert_eq!(
                postgres.get_target_session_attrs(),
                TargetSessionAttrs::ReadWrite,
                "{url}"
            );
            assert_eq!(
                endpoints(&postgres),
                [("a".to_owned(), 5433), ("b".to_owned(), 5434)]
            );
            let second = single_host(&postgres, 1);
            assert_eq!(endpoints(&second), [("b".to_owned(), 5434)]);
            assert_eq!(second.get_user(), Some("u"));
            assert_eq!(second.get_password(), Some(&b"pw"[..]));
            assert_eq!(second.get_dbname(), Some("db"));
            assert_eq!(second.get_application_name(), Some("x"));
        }
        // One port for all hosts; one host keeps libpq's default session attributes.
        let (postgres, _) = parse("host=a,b port=6000 dbname=db").unwrap();
        assert_eq!(
            endpoints(&postgres),
            [("a".to_owned(), 6000), ("b".to_owned(), 6000)]
        );
        let (postgres, _) = parse("postgres://u@a/db").unwrap();
        assert_eq!(postgres.get_target_session_attrs(), TargetSessionAttrs::Any);
        assert_eq!(endpoints(&postgres), [("a".to_owned(), 5432)]);
    }

    #[test]
    fn bad_tls_settings_are_usage_errors() {
        for bad in [
            "postgres://u@h/db?sslmode=sometimes",
            "postgres://u@h/db?sslmode=allow",
            "postgres://u@h/db?sslmode=verify-full&sslrootcert=/nonexistent/ca.pem",
            "postgres://u@h/db?sslmode=verify-ca&sslrootcert=/dev/null",
            "postgres://u@h/db?sslmode=verify-ca&sslrootcert=%zz",
            "host=h sslmode='verify-full",
        ] {
            assert!(parse(bad).is_err(), "{bad} should be refused");
        }
        let error = parse("postgres://u:hunter2@h/db?sslmode=nope&x").unwrap_err();
        assert!(!error.0.contains("hunter2"), "{}", error.0);
    }
}
