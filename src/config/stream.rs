//! `--target stream`: the stream's name and its broker nodes (`--stream-url`, or the hosts of
//! `--amqp-url` on the stream port), validated.

use std::fmt;
use std::sync::Arc;

use super::ConfigError;
use super::secrets::{Secret, redact_url};
use super::stream_tls::{StreamTls, StreamTlsFlags};
use crate::outbox::Template;

/// RabbitMQ's stream protocol port.
const STREAM_PORT: u16 = 5552;

/// RabbitMQ's stream protocol port over TLS.
const STREAM_TLS_PORT: u16 = 5551;

/// One broker node speaking the stream protocol.
#[derive(Clone)]
pub(crate) struct StreamNode {
    pub(crate) host: String,
    pub(crate) port: u16,
    pub(crate) user: String,
    pub(crate) password: Secret,
    pub(crate) vhost: String,
    /// `rabbitmq-stream+tls://`: the files its connections use (shared by the target's nodes).
    pub(crate) tls: Option<Arc<StreamTls>>,
}

impl fmt::Display for StreamNode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The vhost as a URL writes it (`/` is `%2f`).
        write!(
            f,
            "rabbitmq-stream{}://{}@{}:{}/{}",
            if self.tls.is_some() { "+tls" } else { "" },
            self.user,
            self.host,
            self.port,
            self.vhost.replace('%', "%25").replace('/', "%2f")
        )
    }
}

impl fmt::Debug for StreamNode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// The partition key of a super stream when `--partition-key` is not given: the aggregate id,
/// so one aggregate's events stay in one partition, in commit order.
const DEFAULT_PARTITION_KEY: &str = "{aggregate_id}";

/// What a super stream's partition key is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum PartitionKey {
    /// `--partition-key` (or its default): a template the outbox renders onto each message
    /// ([`crate::outbox::OutboxMessage::partition_key`]); the text is for log lines.
    Template(String),
    /// `--partition-key-header`: the value of this header.
    Header(String),
}

impl PartitionKey {
    /// From `--partition-key` and `--partition-key-header` (at most one), with the template
    /// the outbox renders (None when routing by a header).
    pub(crate) fn parse(
        template: Option<&str>,
        header: Option<&str>,
    ) -> Result<(Self, Option<Template>), ConfigError> {
        match (template, header) {
            (Some(_), Some(_)) => Err(ConfigError(
                "give --partition-key or --partition-key-header, not both".into(),
            )),
            (_, Some("")) => Err(ConfigError(
                "--partition-key-header is empty; name a header".into(),
            )),
            (_, Some(header)) => Ok((PartitionKey::Header(header.to_owned()), None)),
            (template, None) => {
                let text = template.unwrap_or(DEFAULT_PARTITION_KEY);
                let parsed = Template::parse(text)
                    .map_err(|error| ConfigError(format!("--partition-key: {error}")))?;
                Ok((PartitionKey::Template(text.to_owned()), Some(parsed)))
            }
        }
    }
}

impl fmt::Display for PartitionKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PartitionKey::Template(text) => write!(f, "{text}"),
            PartitionKey::Header(name) => write!(f, "header {name}"),
        }
    }
}

/// Where `--target stream` publishes.
#[derive(Clone, Debug)]
pub(crate) struct StreamTarget {
    pub(crate) stream: String,
    /// In the order given; never empty.
    pub(crate) nodes: Vec<StreamNode>,
    /// `walbox setup` (and `run`) create the stream when it is missing.
    pub(crate) declare: bool,
    /// `--super-stream`: what picks the partition; None: a plain stream.
    pub(crate) partition_key: Option<PartitionKey>,
    /// Partitions a missing super stream is created with.
    pub(crate) partitions: u16,
}

impl StreamTarget {
    /// `urls`: `--stream-url` entries (each may be comma-separated); empty: the hosts of
    /// `amqp_urls` on port 5552 (5551 for amqps://) with their credentials. `password` replaces
    /// every URL's; `tls` is read when a node asks for TLS.
    pub(crate) fn parse(
        stream: &str,
        urls: &[String],
        amqp_urls: &[String],
        password: Option<&Secret>,
        declare: bool,
        tls: StreamTlsFlags<'_>,
    ) -> Result<Self, ConfigError> {
        if stream.is_empty() || stream.len() > 255 {
            return Err(ConfigError(
                "--stream (or --super-stream) must name the stream, 1 to 255 bytes".into(),
            ));
        }
        let split = |given: &[String]| -> Vec<String> {
            given
                .iter()
                .flat_map(|entry| entry.split(','))
                .map(str::trim)
                .filter(|url| !url.is_empty())
                .map(str::to_owned)
                .collect()
        };
        let mut nodes = Vec::new();
        let (flag, list) = match split(urls) {
            list if list.is_empty() => ("--amqp-url", split(amqp_urls)),
            list => ("--stream-url", list),
        };
        // Read once, and only when a node asks for TLS.
        let mut settings: Option<Arc<StreamTls>> = None;
        let mut tls_settings = || -> Result<Arc<StreamTls>, ConfigError> {
            if settings.is_none() {
                settings = Some(Arc::new(tls.validate()?));
            }
            Ok(Arc::clone(settings.as_ref().expect("just set")))
        };
        for text in list {
            nodes.push(node(flag, &text, password, &mut tls_settings)?);
        }
        if nodes.is_empty() {
            return Err(ConfigError("--stream-url names no broker".into()));
        }
        if nodes.iter().all(|node| node.tls.is_none()) && tls.wants_client_certificate() {
            return Err(ConfigError(
                "--stream-client-cert-file and --stream-client-key-file need a \
                 rabbitmq-stream+tls:// --stream-url (or an amqps:// --amqp-url)"
                    .into(),
            ));
        }
        Ok(StreamTarget {
            stream: stream.to_owned(),
            nodes,
            declare,
            partition_key: None,
            partitions: 1,
        })
    }
}

fn node(
    flag: &str,
    text: &str,
    password: Option<&Secret>,
    tls_settings: &mut dyn FnMut() -> Result<Arc<StreamTls>, ConfigError>,
) -> Result<StreamNode, ConfigError> {
    let bad = |why: &str| ConfigError(format!("{flag} `{}` {why}", redact_url(text)));
    let url = url::Url::parse(text).map_err(|error| bad(&format!("is not a URL: {error}")))?;
    let (default_port, tls) = match (flag, url.scheme()) {
        ("--stream-url", "rabbitmq-stream") | ("--amqp-url", "amqp") => (STREAM_PORT, false),
        ("--stream-url", "rabbitmq-stream+tls") | ("--amqp-url", "amqps") => {
            (STREAM_TLS_PORT, true)
        }
        _ => {
            return Err(bad(
                "must start with rabbitmq-stream:// or rabbitmq-stream+tls://",
            ));
        }
    };
    let host = url
        .host_str()
        .filter(|host| !host.is_empty())
        .ok_or_else(|| bad("names no host"))?
        .to_owned();
    // The name the broker's certificate is checked against; the stream client would panic on
    // one rustls cannot take (an IPv6 literal in brackets).
    if tls && rustls::pki_types::ServerName::try_from(host.as_str()).is_err() {
        return Err(bad(
            "names a host that TLS cannot verify; give a DNS name or an IPv4 address",
        ));
    }
    let port = match flag {
        "--stream-url" => url.port().unwrap_or(default_port),
        _ => default_port,
    };
    let decode = |text: &str| percent_decode(text).ok_or_else(|| bad("has a malformed %-escape"));
    let user = match url.username() {
        "" => "guest".to_owned(),
        user => decode(user)?,
    };
    let password = match (password, url.password()) {
        (Some(secret), _) => secret.clone(),
        (None, Some(given)) => Secret::new(decode(given)?),
        (None, None) => Secret::new("guest".to_owned()),
    };
    let vhost = match url.path() {
        "" | "/" => "/".to_owned(),
        path => decode(&path[1..])?,
    };
    Ok(StreamNode {
        host,
        port,
        user,
        password,
        vhost,
        tls: if tls { Some(tls_settings()?) } else { None },
    })
}

/// `%2f` → `/`; None for a malformed escape.
fn percent_decode(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = text.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nodes_from_stream_urls_or_amqp_urls() {
        let target = StreamTarget::parse(
            "events",
            &["rabbitmq-stream://u:p%40ss@h1:47552/%2f,rabbitmq-stream://h2".into()],
            &[],
            None,
            true,
            StreamTlsFlags::default(),
        )
        .unwrap();
        let nodes: Vec<String> = target.nodes.iter().map(ToString::to_string).collect();
        assert_eq!(
            nodes,
            [
                "rabbitmq-stream://u@h1:47552/%2f",
                "rabbitmq-stream://guest@h2:5552/%2f"
            ]
        );
        assert_eq!(target.nodes[0].password.expose(), "p@ss");
        let derived = StreamTarget::parse(
            "events",
            &[],
            &["amqp://a:b@rabbit:5672/v1".into()],
            None,
            false,
            StreamTlsFlags::default(),
        )
        .unwrap();
        assert_eq!(
            derived.nodes[0].to_string(),
            "rabbitmq-stream://a@rabbit:5552/v1"
        );
        assert!(
            StreamTarget::parse(
                "",
                &[],
                &["amqp://h".into()],
                None,
                true,
                StreamTlsFlags::default()
            )
            .is_err()
        );
        assert!(
            StreamTarget::parse(
                "s",
                &["http://h".into()],
                &[],
                None,
                true,
                StreamTlsFlags::default()
            )
            .unwrap_err()
            .0
            .contains("rabbitmq-stream://")
        );
    }

    #[test]
    fn tls_nodes_need_a_checked_ca_file() {
        let urls = ["rabbitmq-stream+tls://u@localhost/%2f,rabbitmq-stream://h2".to_owned()];
        let no_ca = StreamTarget::parse("s", &urls, &[], None, true, StreamTlsFlags::default());
        assert!(no_ca.unwrap_err().0.contains("needs --amqp-ca-file"));
        let ca =
            super::super::stream_tls::test_file("stream-ca.pem", super::super::stream_tls::TEST_CA);
        let flags = StreamTlsFlags {
            ca_file: Some(&ca),
            ..StreamTlsFlags::default()
        };
        let target = StreamTarget::parse("s", &urls, &[], None, true, flags).unwrap();
        assert_eq!(
            target.nodes[0].to_string(),
            "rabbitmq-stream+tls://u@localhost:5551/%2f"
        );
        assert_eq!(target.nodes[0].tls.as_ref().unwrap().ca_file, ca);
        assert!(target.nodes[1].tls.is_none());
        let derived = StreamTarget::parse("s", &[], &["amqps://h".into()], None, true, flags);
        assert_eq!(
            derived.unwrap().nodes[0].to_string(),
            "rabbitmq-stream+tls://guest@h:5551/%2f"
        );
        let ipv6 = ["rabbitmq-stream+tls://[::1]:5551".to_owned()];
        let refused = StreamTarget::parse("s", &ipv6, &[], None, true, flags).unwrap_err();
        assert!(refused.0.contains("TLS cannot verify"), "{}", refused.0);
        let plain_with_cert = StreamTlsFlags {
            client_cert: Some(&ca),
            client_key: Some(&ca),
            ..flags
        };
        let plain = ["rabbitmq-stream://h".to_owned()];
        let refused = StreamTarget::parse("s", &plain, &[], None, true, plain_with_cert);
        assert!(
            refused
                .unwrap_err()
                .0
                .contains("need a rabbitmq-stream+tls://")
        );
        std::fs::remove_file(ca).unwrap();
    }
}
