//! The backfill's settings: which rows already in the outbox table walbox sends.
//!
//! At the cut-over (`walbox run --backfill` or `--backfill-where`, also on `walbox setup`) the
//! rows are those a predicate picks, read in the snapshot the new slot exports; `walbox
//! backfill` re-sends rows later by predicate, id range or creation-time range. A predicate is
//! SQL run on the server: a preset's is walbox's own text with quoted identifiers; a given one
//! (`--backfill-where`, `--where`) is pasted as written, the one place walbox runs user SQL,
//! and says so in its help.

use clap::Args;

use super::ConfigError;
use super::mapping::MappingArgs;

/// The cut-over backfill's flags (`walbox run`, `walbox setup`).
#[derive(Debug, Clone, Default, Args)]
pub struct BackfillArgs {
    /// When walbox creates its slot, first send the rows already in the table that are not yet published (the --columns preset's predicate: eshop and masa "State" <> 2, cap "StatusName" <> 'Succeeded', outbox-messages "ProcessedOnUtc" IS NULL), read in the slot's exported snapshot, in creation order, before the events committed after.
    #[arg(long, env = "WALBOX_BACKFILL")]
    pub backfill: bool,

    /// The cut-over backfill's predicate for any table: an SQL condition over its columns (e.g. "sent_at IS NULL"), run on the server as written; implies --backfill.
    #[arg(long, env = "WALBOX_BACKFILL_WHERE")]
    pub backfill_where: Option<String>,
}

/// `walbox backfill`'s selectors: which rows to re-send.
#[derive(Debug, Clone, Default, Args)]
pub struct ResendSelection {
    /// Re-send the rows the --columns preset calls not yet published (see --backfill).
    #[arg(long, env = "WALBOX_UNPUBLISHED")]
    pub unpublished: bool,

    /// Re-send the rows matching this SQL condition over the table's columns, run on the server as written.
    #[arg(long = "where", env = "WALBOX_WHERE")]
    pub where_clause: Option<String>,

    /// Only rows whose id is at or after this value (compared as the id column's type).
    #[arg(long, env = "WALBOX_ID_FROM")]
    pub id_from: Option<String>,

    /// Only rows whose id is at or before this value.
    #[arg(long, env = "WALBOX_ID_TO")]
    pub id_to: Option<String>,

    /// Only rows created at or after this time (the created_at column's type, e.g. 2026-01-31 12:00:00+00).
    #[arg(long, env = "WALBOX_CREATED_FROM")]
    pub created_from: Option<String>,

    /// Only rows created at or before this time.
    #[arg(long, env = "WALBOX_CREATED_TO")]
    pub created_to: Option<String>,

    /// Count what would be re-sent; publish nothing.
    #[arg(long)]
    pub dry_run: bool,
}

/// A predicate and where it came from, for logs, `status` and the progress record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Predicate {
    pub(crate) sql: String,
    /// `preset eshop`, `--backfill-where`, …
    pub(crate) origin: String,
}

/// The cut-over backfill, when asked for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct BackfillConfig {
    pub(crate) predicate: Predicate,
}

/// What `walbox backfill` re-sends: rows matching every given selector.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct ResendConfig {
    pub(crate) predicate: Option<Predicate>,
    pub(crate) id_from: Option<String>,
    pub(crate) id_to: Option<String>,
    pub(crate) created_from: Option<String>,
    pub(crate) created_to: Option<String>,
    pub(crate) dry_run: bool,
}

/// The "not yet published" predicate of each framework table `--columns` knows, read in the
/// framework's source: eShop's EventStateEnum and MASA's IntegrationEventStates (Published =
/// 2; NotPublished 0, InProgress 1 and PublishedFailed 3 are all unsent or may be), CAP's
/// StatusName (anything but Succeeded: Scheduled, Failed, Delayed, Queued), and the EF Core
/// pattern's ProcessedOnUtc (set by its job once sent). walbox's own table and Debezium's
/// keep no such state.
pub(crate) fn unpublished_predicate(table_preset: &str) -> Option<&'static str> {
    match table_preset {
        "eshop" | "masa" => Some(r#""State" <> 2"#),
        "cap" => Some(r#""StatusName" <> 'Succeeded'"#),
        "outbox-messages" => Some(r#""ProcessedOnUtc" IS NULL"#),
        _ => None,
    }
}

/// The preset's predicate, or why there is none.
fn preset_predicate(
    mapping: &MappingArgs,
    flag: &str,
    instead: &str,
) -> Result<Predicate, ConfigError> {
    let preset = mapping.columns_preset();
    match unpublished_predicate(&preset) {
        Some(sql) => Ok(Predicate {
            sql: sql.to_owned(),
            origin: format!("the {preset} column map's"),
        }),
        None => Err(ConfigError(format!(
            "{flag}: the {preset} column map has no \"not yet published\" state to select rows \
             by (eshop, masa, cap and outbox-messages have one); give {instead} with an SQL \
             condition instead"
        ))),
    }
}

/// A given predicate: anything but blank.
fn given_predicate(flag: &str, sql: &str) -> Result<Predicate, ConfigError> {
    if sql.trim().is_empty() {
        return Err(ConfigError(format!(
            "{flag} is empty; give an SQL condition"
        )));
    }
    Ok(Predicate {
        sql: sql.to_owned(),
        origin: flag.to_owned(),
    })
}

impl BackfillConfig {
    /// None when no backfill is asked for.
    pub(crate) fn from_args(
        args: &BackfillArgs,
        mapping: &MappingArgs,
    ) -> Result<Option<Self>, ConfigError> {
        let predicate = match (&args.backfill_where, args.backfill) {
            (Some(sql), _) => given_predicate("--backfill-where", sql)?,
            (None, true) => preset_predicate(mapping, "--backfill", "--backfill-where")?,
            (None, false) => return Ok(None),
        };
        Ok(Some(BackfillConfig { predicate }))
    }
}

impl ResendConfig {
    /// `to_stream`: whether the run's target is a stream, which a re-send cannot feed.
    pub(crate) fn from_args(
        args: &ResendSelection,
        mapping: &MappingArgs,
        to_stream: bool,
    ) -> Result<Self, ConfigError> {
        if to_stream {
            return Err(ConfigError(
                "walbox backfill publishes to exchanges (--target amqp): a stream's \
                 deduplication numbers events by their place in the WAL, which rows read from \
                 the table do not have"
                    .into(),
            ));
        }
        let predicate = match (&args.where_clause, args.unpublished) {
            (Some(_), true) => {
                return Err(ConfigError(
                    "give --where or --unpublished, not both (--where can hold the preset's \
                     condition and more)"
                        .into(),
                ));
            }
            (Some(sql), false) => Some(given_predicate("--where", sql)?),
            (None, true) => Some(preset_predicate(mapping, "--unpublished", "--where")?),
            (None, false) => None,
        };
        let text = |value: &Option<String>| value.clone().filter(|text| !text.trim().is_empty());
        let config = ResendConfig {
            predicate,
            id_from: text(&args.id_from),
            id_to: text(&args.id_to),
            created_from: text(&args.created_from),
            created_to: text(&args.created_to),
            dry_run: args.dry_run,
        };
        if config
            == (ResendConfig {
                dry_run: args.dry_run,
                ..ResendConfig::default()
            })
        {
            return Err(ConfigError(
                "walbox backfill needs a selection: --unpublished, --where, --id-from/--id-to \
                 or --created-from/--created-to (to re-send every row: --where true)"
                    .into(),
            ));
        }
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Test {
        #[command(flatten)]
        mapping: MappingArgs,
        #[command(flatten)]
        backfill: BackfillArgs,
        #[command(flatten)]
        resend: ResendSelection,
    }

    fn parse(argv: &[&str]) -> Test {
        let mut all = vec!["test"];
        all.extend_from_slice(argv);
        Test::try_parse_from(all).unwrap()
    }

    fn backfill(argv: &[&str]) -> Result<Option<BackfillConfig>, ConfigError> {
        let test = parse(argv);
        BackfillConfig::from_args(&test.backfill, &test.mapping)
    }

    #[test]
    fn each_framework_table_carries_its_unpublished_predicate() {
        for (argv, sql) in [
            (&["--preset", "eshop"][..], r#""State" <> 2"#),
            (&["--preset", "dapr"], r#""State" <> 2"#),
            (&["--preset", "cap"], r#""StatusName" <> 'Succeeded'"#),
            (
                &["--columns", "outbox-messages"],
                r#""ProcessedOnUtc" IS NULL"#,
            ),
            (&["--columns", "masa,id=Id"], r#""State" <> 2"#),
        ] {
            let mut with = argv.to_vec();
            with.push("--backfill");
            let config = backfill(&with).unwrap().expect("a backfill");
            assert_eq!(config.predicate.sql, sql, "{argv:?}");
        }
        assert_eq!(backfill(&["--preset", "eshop"]).unwrap(), None);
    }

    #[test]
    fn a_table_without_a_state_needs_a_given_predicate() {
        let error = backfill(&["--backfill"]).unwrap_err();
        assert!(error.0.contains("--backfill-where"), "{error}");
        let given = backfill(&["--backfill-where", "sent_at IS NULL"])
            .unwrap()
            .unwrap();
        assert_eq!(given.predicate.sql, "sent_at IS NULL");
        assert_eq!(given.predicate.origin, "--backfill-where");
        assert!(backfill(&["--backfill-where", "  "]).is_err());
    }

    #[test]
    fn a_resend_needs_a_selection() {
        let resend = |argv: &[&str]| {
            let test = parse(argv);
            ResendConfig::from_args(&test.resend, &test.mapping, false)
        };
        assert!(resend(&[]).is_err());
        assert!(resend(&["--dry-run"]).is_err());
        assert!(resend(&["--where", "a", "--unpublished", "--preset", "cap"]).is_err());
        let range = resend(&["--id-from", "10", "--id-to", "20"]).unwrap();
        assert_eq!(range.id_from.as_deref(), Some("10"));
        assert_eq!(range.predicate, None);
        let cap = resend(&["--preset", "cap", "--unpublished", "--dry-run"]).unwrap();
        assert!(cap.dry_run);
        assert_eq!(cap.predicate.unwrap().sql, r#""StatusName" <> 'Succeeded'"#);
        let test = parse(&["--where", "true"]);
        assert!(ResendConfig::from_args(&test.resend, &test.mapping, true).is_err());
    }
}
