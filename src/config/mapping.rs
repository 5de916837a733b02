//! The flags that decide what a row becomes on the wire (#11): preset, column map, exchange
//! and its topology, routing key, message type, headers, body encoding, CloudEvents
//! attributes. [`MappingArgs`] is flattened into the common arguments;
//! [`MappingArgs::mapping`] validates them into the outbox's [`Mapping`] and
//! [`MappingArgs::exchange_spec`] into how the exchange is declared.
//!
//! Each setting is resolved in this order: flag > environment > file (all three by clap) >
//! `--preset` > built-in default. [`MappingArgs::implied`] says which one gave each value, for
//! `walbox config check`.

use amq_protocol::types::ShortString;
use clap::Args;

use super::ConfigError;
pub use super::exchange::{DeclareMode, ExchangeSpec, Kind, Unroutable, UnroutableMode};
use super::preset::Preset;
use crate::encode::Encoding;
use crate::outbox::{ColumnMap, Mapping, Template};

#[derive(Debug, Clone, Default, Args)]
pub struct MappingArgs {
    /// Outbox table, as schema.name or name (schema public). Default: public.outbox; --preset cap sets cap.published, eshop and dapr public.IntegrationEventLog.
    #[arg(long, env = "WALBOX_TABLE")]
    pub table: Option<String>,

    /// A framework's conventions (cap, masstransit, nservicebus, eshop, dapr, cloudevents); any other mapping flag overrides what it sets.
    #[arg(long, env = "WALBOX_PRESET", value_enum)]
    pub preset: Option<Preset>,

    /// Column map: a table preset (outbox, debezium, outbox-messages, eshop, masa, cap) and/or field=column pairs, comma separated; column->key reads a JSON key inside a column. Default: outbox.
    #[arg(long, env = "WALBOX_COLUMNS")]
    pub columns: Option<String>,

    /// Exchange events are published to, a template (e.g. {event_type|short}); a row's exchange column wins. Default: outbox.
    #[arg(long, env = "WALBOX_EXCHANGE")]
    pub exchange: Option<String>,

    /// Exchange type walbox declares: topic, direct, fanout, headers. Default: topic.
    #[arg(long, env = "WALBOX_EXCHANGE_KIND", value_enum)]
    pub exchange_kind: Option<Kind>,

    /// Declare the exchange durable (true/false). Default: true.
    #[arg(long, env = "WALBOX_EXCHANGE_DURABLE")]
    pub exchange_durable: Option<bool>,

    /// Declare the exchange auto-delete (true/false). Default: false.
    #[arg(long, env = "WALBOX_EXCHANGE_AUTO_DELETE")]
    pub exchange_auto_delete: Option<bool>,

    /// declare (create it, or check an existing one matches), passive (it must exist), none (do nothing). Default: declare.
    #[arg(long, env = "WALBOX_EXCHANGE_DECLARE", value_enum)]
    pub exchange_declare: Option<DeclareMode>,

    /// Do not declare the exchange (it must exist): the same as --exchange-declare none.
    #[arg(long, env = "WALBOX_NO_DECLARE")]
    pub no_declare: bool,

    /// Routing-key template: {field} or {column} placeholders, filters such as {event_type|short}. Default: {aggregate_type}.{event_type}.
    #[arg(long, env = "WALBOX_ROUTING_KEY")]
    pub routing_key: Option<String>,

    /// AMQP `type` property template (left out when it renders empty). Default: {event_type}.
    #[arg(long, env = "WALBOX_MESSAGE_TYPE")]
    pub message_type: Option<String>,

    /// An extra header, NAME=TEMPLATE (repeatable, or several comma-separated: a comma followed by NAME= starts the next; write \, for a literal comma there); replaces a preset's header of that name.
    #[arg(long = "header", env = "WALBOX_HEADER")]
    pub header: Vec<String>,

    /// Body encoding: raw, cloudevents, cloudevents-binary, masstransit, template. Default: raw.
    #[arg(long, env = "WALBOX_BODY", value_enum)]
    pub body: Option<Encoding>,

    /// JSON body template for --body template, e.g. {"Id": {id|json}, "Content": {payload|json}}.
    #[arg(long, env = "WALBOX_BODY_TEMPLATE")]
    pub body_template: Option<String>,

    /// CloudEvents `source` template. Default: walbox.
    #[arg(long, env = "WALBOX_CE_SOURCE")]
    pub ce_source: Option<String>,

    /// CloudEvents `type` template. Default: {event_type}.
    #[arg(long, env = "WALBOX_CE_TYPE")]
    pub ce_type: Option<String>,

    /// Leave out walbox's own headers (x-aggregate-type, x-aggregate-id, x-commit-lsn, x-xid).
    #[arg(long, env = "WALBOX_NO_WALBOX_HEADERS")]
    pub no_walbox_headers: bool,

    /// An event no queue takes (the broker returns it): hold (retry it until a queue is bound; the slot waits), drop (count it and go on, as publish/subscribe frameworks do), alternate-exchange (the exchanges are declared with --alternate-exchange, which takes it). Default: hold; the framework presets drop.
    #[arg(long, env = "WALBOX_UNROUTABLE", value_enum)]
    pub unroutable: Option<UnroutableMode>,

    /// With --unroutable alternate-exchange: the exchange events no queue takes go to, declared fanout and durable with a durable queue of the same name bound to it. Default: walbox.unroutable.
    #[arg(long, env = "WALBOX_ALTERNATE_EXCHANGE")]
    pub alternate_exchange: Option<String>,

    /// Relay logical decoding messages (pg_logical_emit_message, PostgreSQL 14+) with this prefix (`audit.*`: every prefix starting with `audit.`), optionally with their own ;exchange=T;routing-key=T;type=T templates (repeatable; commas separate several; `\,` is a comma).
    #[arg(long, env = "WALBOX_MESSAGES")]
    pub messages: Vec<String>,
}

/// The alternate exchange's name when `--alternate-exchange` is not given.
const DEFAULT_ALTERNATE_EXCHANGE: &str = "walbox.unroutable";

/// Built-in defaults of the settings a preset may set.
const DEFAULTS: &[(&str, &str)] = &[
    ("table", "public.outbox"),
    ("columns", "outbox"),
    ("exchange", "outbox"),
    ("exchange-kind", "topic"),
    ("exchange-durable", "true"),
    ("exchange-auto-delete", "false"),
    ("exchange-declare", "declare"),
    ("routing-key", "{aggregate_type}.{event_type}"),
    ("message-type", "{event_type}"),
    ("body", "raw"),
    ("ce-source", "walbox"),
    ("ce-type", "{event_type}"),
    ("unroutable", "hold"),
];

/// Where a setting's value came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Source {
    /// A flag, an environment variable or the file (clap knows which).
    Given,
    Preset(Preset),
    Default,
}

impl MappingArgs {
    /// The value given for `flag` by flag, environment or file.
    fn given(&self, flag: &str) -> Option<String> {
        let text = |value: &Option<String>| value.clone();
        match flag {
            "table" => text(&self.table),
            "columns" => text(&self.columns),
            "exchange" => text(&self.exchange),
            "exchange-kind" => self.exchange_kind.map(|kind| kind.name().to_owned()),
            "exchange-durable" => self.exchange_durable.map(|flag| flag.to_string()),
            "exchange-auto-delete" => self.exchange_auto_delete.map(|flag| flag.to_string()),
            "exchange-declare" => self
                .exchange_declare
                .or(self.no_declare.then_some(DeclareMode::None))
                .map(|mode| mode.name().to_owned()),
            "routing-key" => text(&self.routing_key),
            "message-type" => text(&self.message_type),
            "body" => self.body.map(|body| body.name().to_owned()),
            "ce-source" => text(&self.ce_source),
            "ce-type" => text(&self.ce_type),
            "unroutable" => self.unroutable.map(|mode| mode.name().to_owned()),
            _ => None,
        }
    }

    /// The effective value of a template setting (`exchange`, `routing-key`,
    /// `message-type`) and whether the built-in default gave it, for the logical message
    /// routes that start from it.
    pub(super) fn setting(&self, flag: &str) -> (String, bool) {
        let (value, source) = self.resolve(flag);
        (value, source == Source::Default)
    }

    /// A setting's effective value and where it came from.
    fn resolve(&self, flag: &str) -> (String, Source) {
        if let Some(value) = self.given(flag) {
            return (value, Source::Given);
        }
        if let Some(preset) = self.preset
            && let Some((_, value)) = preset.values().iter().find(|(name, _)| *name == flag)
        {
            return ((*value).to_owned(), Source::Preset(preset));
        }
        let default = DEFAULTS
            .iter()
            .find(|(name, _)| *name == flag)
            .map(|(_, value)| *value)
            .unwrap_or_default();
        (default.to_owned(), Source::Default)
    }

    /// The outbox table's name as given, or as the preset or the default names it (validated
    /// by the caller).
    pub fn table(&self) -> String {
        self.resolve("table").0
    }

    /// The table preset the column map starts from (its first item, when it names one; else
    /// `outbox`, which a map of pairs alone starts from).
    pub fn columns_preset(&self) -> String {
        let columns = self.resolve("columns").0;
        let first = columns
            .split(',')
            .map(str::trim)
            .find(|item| !item.is_empty());
        match first {
            Some(name)
                if crate::outbox::columns::table_preset_names().any(|known| known == name) =>
            {
                name.to_owned()
            }
            _ => "outbox".to_owned(),
        }
    }

    /// How the exchange is declared (`--exchange-kind`, `--exchange-durable`, ...).
    pub fn exchange_spec(&self) -> Result<ExchangeSpec, ConfigError> {
        if self.no_declare
            && let Some(mode) = self.exchange_declare
            && mode != DeclareMode::None
        {
            return Err(ConfigError(format!(
                "--no-declare and --exchange-declare {} contradict each other; give one",
                mode.name()
            )));
        }
        let value = |flag: &str| self.resolve(flag).0;
        Ok(ExchangeSpec {
            kind: parse_enum("exchange-kind", &value("exchange-kind"))?,
            durable: parse_bool("exchange-durable", &value("exchange-durable"))?,
            auto_delete: parse_bool("exchange-auto-delete", &value("exchange-auto-delete"))?,
            mode: parse_enum("exchange-declare", &value("exchange-declare"))?,
        })
    }

    /// What happens to an event the broker returns as unroutable (`--unroutable`,
    /// `--alternate-exchange`).
    pub fn unroutable(&self) -> Result<Unroutable, ConfigError> {
        let mode: UnroutableMode = parse_enum("unroutable", &self.resolve("unroutable").0)?;
        match (mode, self.alternate_exchange.as_deref()) {
            (UnroutableMode::Hold, None) => Ok(Unroutable::Hold),
            (UnroutableMode::Drop, None) => Ok(Unroutable::Drop),
            (UnroutableMode::AlternateExchange, name) => {
                let name = name.unwrap_or(DEFAULT_ALTERNATE_EXCHANGE);
                if name.is_empty() || name.len() > 255 {
                    return Err(ConfigError(
                        "--alternate-exchange must be 1 to 255 bytes long".into(),
                    ));
                }
                Ok(Unroutable::AlternateExchange(name.to_owned()))
            }
            (other, Some(_)) => Err(ConfigError(format!(
                "--alternate-exchange is used with --unroutable alternate-exchange only, not \
                 --unroutable {}",
                other.name()
            ))),
        }
    }

    /// What rows become on the wire.
    pub fn mapping(&self) -> Result<Mapping, ConfigError> {
        let value = |flag: &str| self.resolve(flag).0;
        let template = |flag: &str| {
            Template::parse(&value(flag)).map_err(|error| ConfigError(format!("--{flag}: {error}")))
        };
        let columns =
            ColumnMap::parse(&value("columns")).map_err(|error| ConfigError(error.to_string()))?;
        let exchange = template("exchange")?;
        if exchange.as_constant().is_some_and(|name| name.len() > 255) {
            return Err(ConfigError("--exchange is longer than 255 bytes".into()));
        }
        let body: Encoding = parse_enum("body", &value("body"))?;
        let body_template = match (body, &self.body_template) {
            (Encoding::Template, Some(text)) => Some(
                Template::parse_json(text)
                    .map_err(|error| ConfigError(format!("--body-template: {error}")))?,
            ),
            (Encoding::Template, None) => {
                return Err(ConfigError(
                    "--body template needs --body-template, e.g. '{\"Id\": {id|json}, \
                     \"Content\": {payload|json}}'"
                        .into(),
                ));
            }
            (other, Some(_)) => {
                return Err(ConfigError(format!(
                    "--body-template is only used with --body template, not --body {}",
                    other.name()
                )));
            }
            (_, None) => None,
        };
        Ok(Mapping {
            columns,
            exchange,
            routing_key: template("routing-key")?,
            message_type: match self.resolve("message-type") {
                (_, Source::Default) => None,
                _ => Some(template("message-type")?),
            },
            headers: headers(self)?,
            body,
            body_template,
            ce_source: template("ce-source")?,
            ce_type: template("ce-type")?,
            walbox_headers: !self.no_walbox_headers,
            // Decided with the target (`--super-stream`), in `Config::from_args`.
            partition_key: None,
            own_exchange: false,
        })
    }

    /// Every setting a preset or a default decided, with its value, for `walbox config
    /// check` (the ones given by flag, environment or file it prints itself). The headers are
    /// not among them: [`MappingArgs::header_pairs`] gives them all, merged.
    pub fn implied(&self) -> Vec<(String, String, Source)> {
        DEFAULTS
            .iter()
            .map(|(flag, _)| (*flag, self.resolve(flag)))
            .filter(|(_, (_, source))| *source != Source::Given)
            .map(|(flag, (value, source))| (flag.to_owned(), value, source))
            .collect()
    }

    /// The extra headers as `NAME=TEMPLATE` pairs in the order they are added to a message:
    /// the preset's (unless a given one of that name replaces it), then the given ones, each
    /// with where it came from. A list of them, given back as `--header` values (e.g. by
    /// `walbox config check`'s output loaded as a file), makes the same headers.
    pub fn header_pairs(&self) -> Result<Vec<(String, Source)>, ConfigError> {
        Ok(merged_headers(self)?
            .into_iter()
            .map(|(name, template, source)| (format!("{name}={template}"), source))
            .collect())
    }
}

fn parse_enum<T: clap::ValueEnum>(flag: &str, text: &str) -> Result<T, ConfigError> {
    T::from_str(text, false).map_err(|_| {
        let known: Vec<String> = T::value_variants()
            .iter()
            .filter_map(|variant| variant.to_possible_value())
            .map(|value| value.get_name().to_owned())
            .collect();
        ConfigError(format!(
            "--{flag} `{text}` is not one of: {}",
            known.join(", ")
        ))
    })
}

fn parse_bool(flag: &str, text: &str) -> Result<bool, ConfigError> {
    text.parse()
        .map_err(|_| ConfigError(format!("--{flag} `{text}` is not true or false")))
}

fn preset_headers(preset: Preset) -> impl Iterator<Item = (&'static str, &'static str)> {
    preset
        .values()
        .iter()
        .filter(|(flag, _)| *flag == "header")
        .filter_map(|(_, pair)| pair.split_once('='))
}

/// The preset's headers, then the given ones (a given header replaces a preset's of the same
/// name), with where each came from.
fn merged_headers(args: &MappingArgs) -> Result<Vec<(String, String, Source)>, ConfigError> {
    let mut pairs: Vec<(String, String, Source)> = Vec::new();
    if let Some(preset) = args.preset {
        pairs.extend(
            preset_headers(preset)
                .map(|(n, t)| (n.to_owned(), t.to_owned(), Source::Preset(preset))),
        );
    }
    for given in args.header.iter().flat_map(|text| split_list(text)) {
        let (name, template) = given.split_once('=').ok_or_else(|| {
            ConfigError(format!(
                "--header `{given}` is not of the form NAME=TEMPLATE"
            ))
        })?;
        let name = name.trim();
        if name.is_empty() {
            return Err(ConfigError(format!("--header `{given}` has an empty name")));
        }
        pairs.retain(|(existing, _, _)| existing != name);
        pairs.push((name.to_owned(), template.to_owned(), Source::Given));
    }
    Ok(pairs)
}

/// The extra headers, parsed.
fn headers(args: &MappingArgs) -> Result<Vec<(ShortString, Template)>, ConfigError> {
    merged_headers(args)?
        .into_iter()
        .map(|(name, template, _)| {
            let parsed = Template::parse(&template)
                .map_err(|error| ConfigError(format!("--header {name}: {error}")))?;
            let name = ShortString::try_new(name.clone()).map_err(|_| {
                ConfigError(format!("--header name `{name}` is longer than 255 bytes"))
            })?;
            Ok((name, parsed))
        })
        .collect()
}

/// One `--header` value as the `NAME=TEMPLATE` pairs it lists. A comma separates two pairs
/// when what follows it up to the next `=` is a header name (no spaces, commas or
/// backslashes), so a value with a comma inside, e.g. a .NET assembly-qualified type name
/// (`Ns.Type, Assembly, Version=1.0`), stays whole; `\,` is a comma that never separates.
/// The same rule applies to flags, `WALBOX_HEADER` and the file, which is how an
/// environment variable carries several headers (`WALBOX_HEADER='a=x,b=y'`).
pub(crate) fn split_list(text: &str) -> Vec<String> {
    let mut pairs = Vec::new();
    let mut current = String::new();
    let mut rest = text;
    while let Some(c) = rest.chars().next() {
        rest = &rest[c.len_utf8()..];
        match c {
            '\\' if rest.starts_with(',') => {
                current.push(',');
                rest = &rest[1..];
            }
            ',' if starts_a_pair(rest) => pairs.push(std::mem::take(&mut current)),
            other => current.push(other),
        }
    }
    pairs.push(current);
    pairs
}

/// Whether `text` starts with `NAME=`.
fn starts_a_pair(text: &str) -> bool {
    match text.split_once('=') {
        Some((name, _)) => {
            !name.is_empty()
                && !name
                    .chars()
                    .any(|c| c.is_whitespace() || c == ',' || c == '\\')
        }
        None => false,
    }
}

/// A `NAME=TEMPLATE` pair written so that [`split_list`] reads it back as one pair: each comma
/// that would start another pair is escaped.
pub fn escape_pair(pair: &str) -> String {
    let mut escaped = String::with_capacity(pair.len());
    for (at, c) in pair.char_indices() {
        if c == ',' && starts_a_pair(&pair[at + 1..]) {
            escaped.push('\\');
        }
        escaped.push(c);
    }
    escaped
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outbox::Field;
    use clap::Parser;

    #[derive(Parser)]
    struct Test {
        #[command(flatten)]
        mapping: MappingArgs,
    }

    fn args(argv: &[&str]) -> Result<MappingArgs, ConfigError> {
        let mut all = vec!["test"];
        all.extend_from_slice(argv);
        let test = Test::try_parse_from(all).map_err(|error| ConfigError(error.to_string()))?;
        Ok(test.mapping)
    }

    fn mapping(argv: &[&str]) -> Result<Mapping, ConfigError> {
        args(argv)?.mapping()
    }

    fn spec(argv: &[&str]) -> Result<ExchangeSpec, ConfigError> {
        args(argv)?.exchange_spec()
    }

    #[test]
    fn defaults_are_walboxs_own_contract() {
        let mapping = mapping(&[]).unwrap();
        assert_eq!(mapping.exchange.as_constant(), Some("outbox"));
        assert_eq!(spec(&[]).unwrap(), ExchangeSpec::DURABLE_TOPIC);
        assert_eq!(
            mapping.routing_key.to_string(),
            "{aggregate_type}.{event_type}"
        );
        assert_eq!(mapping.body, Encoding::Raw);
        assert!(mapping.walbox_headers);
        assert!(mapping.headers.is_empty());
    }

    #[test]
    fn a_preset_sets_values_and_given_flags_override_them() {
        let eshop = mapping(&["--preset", "eshop"]).unwrap();
        assert_eq!(eshop.exchange.as_constant(), Some("eshop_event_bus"));
        let eshop_spec = spec(&["--preset", "eshop"]).unwrap();
        assert_eq!(eshop_spec.kind, Kind::Direct);
        assert!(!eshop_spec.durable);
        assert_eq!(eshop.routing_key.to_string(), "{event_type|short}");
        assert_eq!(
            eshop.columns.column(Field::Id).map(ToString::to_string),
            Some("EventId".into())
        );
        let overridden = [
            "--exchange",
            "mine",
            "--preset",
            "eshop",
            "--exchange-durable",
            "true",
        ];
        assert_eq!(
            mapping(&overridden).unwrap().exchange.as_constant(),
            Some("mine")
        );
        let overridden = spec(&overridden).unwrap();
        assert!(overridden.durable);
        assert_eq!(overridden.kind, Kind::Direct);
    }

    #[test]
    fn preset_headers_merge_with_given_ones() {
        let nsb = mapping(&[
            "--preset",
            "nservicebus",
            "--header",
            "NServiceBus.ContentType=text/json",
            "--header",
            "tenant={tenant}",
        ])
        .unwrap();
        let names: Vec<&str> = nsb.headers.iter().map(|(name, _)| name.as_str()).collect();
        assert_eq!(
            names,
            [
                "NServiceBus.EnclosedMessageTypes",
                "NServiceBus.MessageId",
                "NServiceBus.MessageIntent",
                "NServiceBus.ContentType",
                "tenant"
            ]
        );
        assert_eq!(nsb.headers[3].1.to_string(), "text/json");
    }

    #[test]
    fn every_preset_validates() {
        for preset in [
            "cap",
            "masstransit",
            "nservicebus",
            "eshop",
            "dapr",
            "cloudevents",
        ] {
            mapping(&["--preset", preset]).unwrap_or_else(|error| panic!("{preset}: {error}"));
            spec(&["--preset", preset]).unwrap_or_else(|error| panic!("{preset}: {error}"));
        }
    }

    #[test]
    fn bad_settings_are_usage_errors() {
        for bad in [
            &["--body", "template"][..],
            &["--body-template", "{}"],
            &["--body", "template", "--body-template", "{\"a\": {id"],
            &["--header", "no-equals"],
            &["--exchange", "{oops"],
            &["--no-declare", "--exchange-declare", "passive"],
            &["--columns", "payload="],
        ] {
            assert!(
                mapping(bad).is_err() || spec(bad).is_err(),
                "{bad:?} should be refused"
            );
        }
        assert!(spec(&["--exchange-kind", "x-delayed"]).is_err());
        assert_eq!(spec(&["--no-declare"]).unwrap().mode, DeclareMode::None);
    }

    #[test]
    fn implied_names_the_preset() {
        let test =
            Test::try_parse_from(["test", "--preset", "nservicebus", "--exchange", "x"]).unwrap();
        let implied = test.mapping.implied();
        assert!(!implied.iter().any(|(flag, _, _)| flag == "exchange"));
        assert!(implied.contains(&(
            "exchange-kind".into(),
            "fanout".into(),
            Source::Preset(Preset::NServiceBus)
        )));
        assert!(!implied.iter().any(|(flag, _, _)| flag == "header"));
        assert!(test.mapping.header_pairs().unwrap().contains(&(
            "NServiceBus.MessageId={id}".into(),
            Source::Preset(Preset::NServiceBus)
        )));
        assert!(implied.contains(&("ce-source".into(), "walbox".into(), Source::Default)));
    }

    #[test]
    fn a_header_list_splits_only_where_a_name_follows() {
        assert_eq!(split_list("a=x,b=y"), ["a=x", "b=y"]);
        assert_eq!(
            split_list("t=Ns.Type, Assembly, Version=1.0,u={id}"),
            ["t=Ns.Type, Assembly, Version=1.0", "u={id}"]
        );
        assert_eq!(split_list(r"a=x\,b=y"), ["a=x,b=y"]);
        assert_eq!(split_list(r#"j={"k":1,"l":2}"#), [r#"j={"k":1,"l":2}"#]);
        assert_eq!(escape_pair("a=x,b=y"), r"a=x\,b=y");
        assert_eq!(escape_pair("t=Ns.Type, Assembly"), "t=Ns.Type, Assembly");
    }

    proptest::proptest! {
        /// Pairs escaped and joined with commas split back into the same pairs.
        #[test]
        fn escaped_pairs_split_back(
            pairs in proptest::collection::vec(("[A-Za-z0-9._-]{1,8}", "[^\\\\]{0,12}"), 1..5)
        ) {
            let pairs: Vec<String> =
                pairs.iter().map(|(name, template)| format!("{name}={template}")).collect();
            let joined: Vec<String> = pairs.iter().map(|pair| escape_pair(pair)).collect();
            proptest::prop_assert_eq!(split_list(&joined.join(",")), pairs);
        }
    }

    /// A preset's mapping applied to a row of its framework's table.
    mod presets {
        use amq_protocol::types::AMQPValue;

        use super::*;
        use crate::lsn::Lsn;
        use crate::outbox::event::EventError;
        use crate::outbox::{OutboxShape, Transaction};
        use crate::pgoutput::Relation;
        use crate::pgoutput::fixture::{oid, relation, row};

        const TRANSACTION: Transaction = Transaction {
            xid: 742,
            commit_lsn: Lsn(0x16B3748),
            commit_time_micros: 1_000_000,
        };

        const ORDER_CREATED: &str = "Shop.Orders.OrderCreated";

        fn shape_with(relation: &Relation, argv: &[&str]) -> OutboxShape {
            OutboxShape::from_relation(relation, &mapping(argv).unwrap()).unwrap()
        }

        fn text(value: &str) -> Option<AMQPValue> {
            Some(AMQPValue::LongString(value.into()))
        }

        #[test]
        fn cap_takes_body_and_headers_from_inside_the_content_column() {
            let table = relation(&[
                ("Id", 20),
                ("Version", oid::VARCHAR),
                ("Name", oid::VARCHAR),
                ("Content", oid::TEXT),
                ("Retries", 23),
                ("Added", 1114),
                ("ExpiresAt", 1114),
                ("StatusName", oid::VARCHAR),
            ]);
            let shape = shape_with(&table, &["--preset", "cap"]);
            let content = r#"{"Headers":{"cap-msg-id":"1783","cap-msg-name":"orders.created","cap-msg-type":"Shop.Orders.OrderCreated","cap-senttime":"2026-11-22 14:59:17 +00:00"},"Value":{"orderId":7}}"#;
            let message = shape
                .message(
                    &row(&[
                        Some("1783"),
                        Some("v1"),
                        Some("orders.created"),
                        Some(content),
                        Some("0"),
                        Some("2026-11-22 14:59:17"),
                        None,
                        Some("Scheduled"),
                    ]),
                    &TRANSACTION,
                    0,
                    &mut String::new(),
                )
                .unwrap();
            assert_eq!(&message.body[..], br#"{"orderId":7}"#);
            assert_eq!(message.routing_key.as_str(), "orders.created");
            assert_eq!(
                message.exchange, None,
                "the fixed exchange is the publisher's"
            );
            assert_eq!(message.header("cap-msg-id"), text("1783").as_ref());
            assert_eq!(
                message.header("cap-msg-name"),
                text("orders.created").as_ref()
            );
            assert_eq!(message.id, "1783");
            // Content that is not JSON cannot be read through a path: a per-event error.
            let broken = shape.message(
                &row(&[
                    Some("1"),
                    None,
                    Some("n"),
                    Some("oops"),
                    None,
                    None,
                    None,
                    None,
                ]),
                &TRANSACTION,
                0,
                &mut String::new(),
            );
            assert!(matches!(broken, Err(EventError::NotJson(_))));
        }

        #[test]
        fn per_type_exchanges_and_framework_headers_render_per_row() {
            let table = relation(&[
                ("id", 2950),
                ("event_type", oid::TEXT),
                ("payload", oid::JSONB),
            ]);
            let shape = shape_with(
                &table,
                &[
                    "--preset",
                    "nservicebus",
                    "--columns",
                    "aggregate_type=,aggregate_id=",
                ],
            );
            let message = shape
                .message(
                    &row(&[Some("9"), Some(ORDER_CREATED), Some("{}")]),
                    &TRANSACTION,
                    0,
                    &mut String::new(),
                )
                .unwrap();
            assert_eq!(
                message.exchange.as_ref().map(ShortString::as_str),
                Some("Shop.Orders:OrderCreated")
            );
            assert_eq!(message.routing_key.as_str(), "");
            assert_eq!(
                message.header("NServiceBus.EnclosedMessageTypes"),
                text(ORDER_CREATED).as_ref()
            );
            assert_eq!(message.header("NServiceBus.MessageId"), text("9").as_ref());
            assert_eq!(
                message.properties.kind().as_ref().map(ShortString::as_str),
                Some(ORDER_CREATED)
            );
        }
    }
}
