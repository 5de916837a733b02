//! `--messages`: which logical decoding messages walbox relays, and how each prefix's messages
//! are published (docs: concepts/logical-messages.md).
//!
//! One value is `PREFIX[;exchange=TEMPLATE][;routing-key=TEMPLATE][;type=TEMPLATE]`; a comma
//! separates several values (`\,` is a comma that does not), so one environment variable or
//! file line can hold them all. A setting a route leaves out comes from the rows' own
//! (`--exchange`, `--message-type`), except the routing key: the built-in
//! `{aggregate_type}.{event_type}` reads fields a logical message does not have, so a route
//! without a routing key of its own, and no `--routing-key` given, uses `{event_type}` (the
//! prefix).

use super::ConfigError;
use super::mapping::MappingArgs;
use crate::outbox::logical::MESSAGE_COLUMNS;
use crate::outbox::{ColumnMap, LogicalMessages, Mapping, MessageRoute, PrefixPattern, Template};

/// The settings one route may give, as written after `;`.
const KEYS: [&str; 3] = ["exchange", "routing-key", "type"];

/// One `--messages` value, split.
#[derive(Debug, Default, PartialEq, Eq)]
struct Spec {
    prefix: String,
    exchange: Option<String>,
    routing_key: Option<String>,
    message_type: Option<String>,
}

/// The routes `--messages` asks for, resolved against a logical message's columns; empty when
/// none is given.
pub(super) fn logical_messages(
    args: &MappingArgs,
    rows: &Mapping,
) -> Result<LogicalMessages, ConfigError> {
    let mut routes: Vec<MessageRoute> = Vec::new();
    for spec in args.messages.iter().flat_map(|text| split(text)) {
        let spec = parse(&spec)?;
        let pattern = PrefixPattern::parse(&spec.prefix)
            .map_err(|problem| ConfigError(format!("--messages: {problem}")))?;
        if routes.iter().any(|route| route.pattern == pattern) {
            return Err(ConfigError(format!(
                "--messages names prefix `{pattern}` twice; give each prefix once"
            )));
        }
        routes.push(MessageRoute {
            mapping: route_mapping(args, rows, &spec)?,
            pattern,
        });
    }
    LogicalMessages::new(&routes).map_err(|(pattern, error)| {
        ConfigError(format!(
            "--messages {pattern}: {error} (a logical message is a row of the columns id, \
             prefix and content; give the route its own ;routing-key=, ;exchange= or ;type=)"
        ))
    })
}

/// The rows' mapping with a logical message's columns and the route's own templates.
fn route_mapping(args: &MappingArgs, rows: &Mapping, spec: &Spec) -> Result<Mapping, ConfigError> {
    let template = |key: &str, text: &str| {
        Template::parse(text)
            .map_err(|error| ConfigError(format!("--messages {} ;{key}: {error}", spec.prefix)))
    };
    let (rows_routing_key, default) = args.setting("routing-key");
    let routing_key = match (&spec.routing_key, default) {
        (Some(text), _) => template("routing-key", text)?,
        (None, true) => template("routing-key", "{event_type}")?,
        (None, false) => template("routing-key", &rows_routing_key)?,
    };
    let exchange = match &spec.exchange {
        Some(text) => template("exchange", text)?,
        None => rows.exchange.clone(),
    };
    if exchange.as_constant().is_some_and(|name| name.len() > 255) {
        return Err(ConfigError(format!(
            "--messages {} ;exchange is longer than 255 bytes",
            spec.prefix
        )));
    }
    let message_type = match &spec.message_type {
        Some(text) => Some(template("type", text)?),
        None => rows.message_type.clone(),
    };
    Ok(Mapping {
        columns: ColumnMap::parse(MESSAGE_COLUMNS).expect("the message columns parse"),
        own_exchange: exchange != rows.exchange,
        exchange,
        routing_key,
        message_type,
        ..rows.clone()
    })
}

/// One value as the routes it lists: split at each comma not written `\,`.
fn split(text: &str) -> Vec<String> {
    let mut specs = vec![String::new()];
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\\' if chars.peek() == Some(&',') => {
                chars.next();
                specs.last_mut().expect("one").push(',');
            }
            ',' => specs.push(String::new()),
            other => specs.last_mut().expect("one").push(other),
        }
    }
    specs
        .into_iter()
        .map(|spec| spec.trim().to_owned())
        .filter(|spec| !spec.is_empty())
        .collect()
}

/// `PREFIX;key=value;…`: a `;` starts a setting only when one of [`KEYS`] and `=` follow it,
/// so prefixes and templates may hold other semicolons.
fn parse(text: &str) -> Result<Spec, ConfigError> {
    let starts = |at: usize| {
        KEYS.iter()
            .find(|key| text[at + 1..].starts_with(&format!("{key}=")))
            .copied()
    };
    let mut cuts: Vec<(usize, &str)> = text
        .match_indices(';')
        .filter_map(|(at, _)| starts(at).map(|key| (at, key)))
        .collect();
    let prefix_end = cuts.first().map_or(text.len(), |(at, _)| *at);
    let mut spec = Spec {
        prefix: text[..prefix_end].to_owned(),
        ..Spec::default()
    };
    cuts.push((text.len(), ""));
    for pair in cuts.windows(2) {
        let ((at, key), (end, _)) = (pair[0], pair[1]);
        let value = text[at + 1 + key.len() + 1..end].to_owned();
        let slot = match key {
            "exchange" => &mut spec.exchange,
            "routing-key" => &mut spec.routing_key,
            _ => &mut spec.message_type,
        };
        if slot.replace(value).is_some() {
            return Err(ConfigError(format!(
                "--messages `{text}` gives ;{key}= twice"
            )));
        }
    }
    Ok(spec)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Test {
        #[command(flatten)]
        mapping: MappingArgs,
    }

    fn routes(argv: &[&str]) -> Result<LogicalMessages, ConfigError> {
        let mut all = vec!["test"];
        all.extend_from_slice(argv);
        let args = Test::try_parse_from(all).unwrap().mapping;
        logical_messages(&args, &args.mapping()?)
    }

    #[test]
    fn a_value_splits_into_prefix_and_settings() {
        assert_eq!(
            parse("orders;exchange=shop;routing-key={prefix}.{content->kind};type=T").unwrap(),
            Spec {
                prefix: "orders".into(),
                exchange: Some("shop".into()),
                routing_key: Some("{prefix}.{content->kind}".into()),
                message_type: Some("T".into()),
            }
        );
        // A semicolon that starts no known setting belongs to the prefix or the template.
        assert_eq!(parse("a;b;type=x;y").unwrap().prefix, "a;b");
        assert_eq!(
            parse("a;b;type=x;y").unwrap().message_type.as_deref(),
            Some("x;y")
        );
        assert!(parse("a;type=x;type=y").is_err());
        assert_eq!(
            split(r"orders, audit.*;routing-key=a\,b,"),
            ["orders", "audit.*;routing-key=a,b"]
        );
    }

    #[test]
    fn routes_resolve_or_say_why_not() {
        let messages = routes(&["--messages", "orders,audit.*;exchange=audit"]).unwrap();
        assert_eq!(messages.patterns(), ["orders", "audit.*"]);
        assert!(routes(&[]).unwrap().is_empty());
        // A route inherits a given routing key: one reading row fields fails at start.
        let error = routes(&["--routing-key", "{aggregate_id}", "--messages", "orders"])
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("--messages orders") && error.contains("aggregate_id"),
            "{error}"
        );
        assert!(routes(&["--messages", "orders", "--messages", "orders"]).is_err());
        assert!(routes(&["--messages", ";type=x"]).is_err());
    }

    #[test]
    fn presets_apply_to_message_routes() {
        // nservicebus: exchange {event_type|namespace}:{event_type|short}, headers with {id}.
        let messages = routes(&["--preset", "nservicebus", "--messages", "Shop.Orders.*"]);
        assert!(messages.is_ok(), "{:?}", messages.err());
    }
}
