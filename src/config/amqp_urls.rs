//! `--amqp-url` as a list of broker nodes: validated, and redacted whenever shown.
//!
//! A RabbitMQ cluster is several nodes, any of which takes publishes to a quorum queue or a
//! stream. The flag may be repeated or hold a comma-separated list (a comma inside one URL is
//! written `%2C`); walbox connects to the first node that answers and moves on when one fails.

use std::fmt;
use std::str::FromStr;

use super::ConfigError;
use super::secrets::{SecretUrl, redact_url};

/// The broker nodes, in the order given; never empty.
#[derive(Clone)]
pub(crate) struct AmqpUrls(Vec<SecretUrl>);

impl AmqpUrls {
    /// Each entry of `given` may itself be a comma-separated list.
    pub(crate) fn parse(given: &[String]) -> Result<Self, ConfigError> {
        let mut urls = Vec::new();
        for url in given.iter().flat_map(|entry| entry.split(',')) {
            let url = url.trim();
            if url.is_empty() {
                continue;
            }
            if !(url.starts_with("amqp://") || url.starts_with("amqps://")) {
                return Err(ConfigError(format!(
                    "--amqp-url `{}` must start with amqp:// or amqps://",
                    redact_url(url)
                )));
            }
            // The publisher parses the URL again when connecting; parsing it here makes a
            // malformed one a usage error.
            amq_protocol::uri::AMQPUri::from_str(url).map_err(|error| {
                ConfigError(format!(
                    "--amqp-url `{}` is not a valid AMQP URL: {error}",
                    redact_url(url)
                ))
            })?;
            urls.push(SecretUrl::new(url.to_owned()));
        }
        if urls.is_empty() {
            return Err(ConfigError("--amqp-url names no broker".into()));
        }
        Ok(AmqpUrls(urls))
    }

    #[cfg(test)]
    fn iter(&self) -> impl Iterator<Item = &SecretUrl> {
        self.0.iter()
    }

    pub(crate) fn len(&self) -> usize {
        self.0.len()
    }

    /// The `index`-th URL, counting round the list.
    pub(crate) fn get(&self, index: usize) -> &SecretUrl {
        &self.0[index % self.0.len()]
    }
}

impl fmt::Display for AmqpUrls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (index, url) in self.0.iter().enumerate() {
            if index > 0 {
                f.write_str(",")?;
            }
            fmt::Display::fmt(url, f)?;
        }
        Ok(())
    }
}

impl fmt::Debug for AmqpUrls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(given: &[&str]) -> Result<AmqpUrls, ConfigError> {
        AmqpUrls::parse(&given.iter().map(|s| s.to_string()).collect::<Vec<_>>())
    }

    #[test]
    fn repeated_and_comma_separated_urls_make_one_list_in_order() {
        let urls = parse(&[
            "amqp://u:p1@a:5672/%2f,amqp://u:p2@b:5672/%2f",
            " amqps://u:p3@c:5671/vh ",
        ])
        .unwrap();
        let exposed: Vec<_> = urls.iter().map(|url| url.expose().to_owned()).collect();
        assert_eq!(
            exposed,
            [
                "amqp://u:p1@a:5672/%2f",
                "amqp://u:p2@b:5672/%2f",
                "amqps://u:p3@c:5671/vh"
            ]
        );
        assert_eq!(urls.len(), 3);
        assert_eq!(urls.get(4).expose(), "amqp://u:p2@b:5672/%2f");
    }

    #[test]
    fn every_url_is_redacted_when_shown() {
        let urls = parse(&["amqp://u:secret1@a/%2f,amqp://u:secret2@b/%2f"]).unwrap();
        for shown in [urls.to_string(), format!("{urls:?}")] {
            assert_eq!(shown, "amqp://u:***@a/%2f,amqp://u:***@b/%2f");
        }
    }

    #[test]
    fn a_bad_entry_is_a_usage_error_that_hides_its_password() {
        for bad in [
            &["amqp://u:p@a/%2f,http://u:hunter2@b/"][..],
            &["amqp://u:hunter2@a:notaport/%2f"],
            &[","],
            &[],
        ] {
            let error = parse(bad).expect_err("refused");
            assert!(!error.0.contains("hunter2"), "{}", error.0);
        }
    }
}
