//! The optional TOML configuration file (`--config walbox.toml`): its keys become the flags'
//! defaults, so clap's own order gives flag > environment > file > built-in default.
//!
//! Keys are the long flag names (`postgres-url`, or `postgres_url`); a key walbox does not
//! know is an error rather than a silently ignored typo.

use std::collections::BTreeSet;
use std::ffi::OsString;
use std::path::{Path, PathBuf};

use clap::{ArgMatches, Command, CommandFactory, FromArgMatches};

use super::{Cli, ConfigError};

/// What the command line, the environment and the file say, parsed.
pub struct Parsed {
    pub cli: Cli,
    pub matches: ArgMatches,
    /// Flags (by long name) whose value came from the file, unless a flag or variable
    /// overrode it.
    pub from_file: BTreeSet<String>,
    pub file: Option<PathBuf>,
}

/// Why parsing stopped: clap's own errors (including --help and --version) print
/// themselves; a bad file is a usage error.
pub enum ParseError {
    Clap(clap::Error),
    File(ConfigError),
}

pub fn parse<I>(argv: I) -> Result<Parsed, ParseError>
where
    I: IntoIterator<Item = OsString>,
{
    let argv: Vec<OsString> = argv.into_iter().collect();
    let mut command = Cli::command();
    let mut file_keys = BTreeSet::new();
    let file = config_path(&argv);
    if let Some(path) = &file {
        let table = read(path).map_err(ParseError::File)?;
        for (key, value) in table {
            let flag = key.replace('_', "-");
            let values = values(path, &key, &value).map_err(ParseError::File)?;
            if values.len() != 1 && !repeatable(&command, &flag) {
                return Err(ParseError::File(ConfigError(format!(
                    "{}: `{key}` takes one value, not a list",
                    path.display()
                ))));
            }
            command = with_default(command, &flag, &values).ok_or_else(|| {
                ParseError::File(ConfigError(format!(
                    "{}: unknown key `{key}`; keys are walbox's long flag names (see \
                     `walbox run --help`)",
                    path.display()
                )))
            })?;
            file_keys.insert(flag);
        }
    }
    let matches = command
        .try_get_matches_from(&argv)
        .map_err(ParseError::Clap)?;
    let cli = Cli::from_arg_matches(&matches).map_err(ParseError::Clap)?;
    let from_file = file_keys
        .into_iter()
        .filter(|flag| {
            matches!(
                value_source(&matches, flag),
                Some(clap::parser::ValueSource::DefaultValue)
            )
        })
        .collect();
    Ok(Parsed {
        cli,
        matches,
        from_file,
        file,
    })
}

/// `--config PATH`, `--config=PATH`, or WALBOX_CONFIG. Read before clap runs, because the
/// file changes what clap is told.
fn config_path(argv: &[OsString]) -> Option<PathBuf> {
    let mut args = argv.iter().skip(1).map(|arg| arg.to_string_lossy());
    while let Some(arg) = args.next() {
        if arg == "--" {
            break;
        }
        if arg == "--config" {
            return args.next().map(|path| PathBuf::from(path.as_ref()));
        }
        if let Some(path) = arg.strip_prefix("--config=") {
            return Some(PathBuf::from(path));
        }
    }
    std::env::var_os("WALBOX_CONFIG")
        .filter(|path| !path.is_empty())
        .map(PathBuf::from)
}

fn read(path: &Path) -> Result<toml::Table, ConfigError> {
    let text = std::fs::read_to_string(path)
        .map_err(|error| ConfigError(format!("cannot read {}: {error}", path.display())))?;
    text.parse::<toml::Table>()
        .map_err(|error| ConfigError(format!("{} is not valid TOML: {error}", path.display())))
}

/// A file value as the texts a flag would take: one, or (for a repeatable flag such as
/// `header` or `amqp-url`) an array of them.
fn values(path: &Path, key: &str, value: &toml::Value) -> Result<Vec<String>, ConfigError> {
    match value {
        toml::Value::Array(items) => items.iter().map(|item| scalar(path, key, item)).collect(),
        other => Ok(vec![scalar(path, key, other)?]),
    }
}

/// Whether the flag `flag` may be given more than once (in any subcommand that has it).
fn repeatable(command: &Command, flag: &str) -> bool {
    command.get_arguments().any(|arg| {
        arg.get_long() == Some(flag) && matches!(arg.get_action(), clap::ArgAction::Append)
    }) || command.get_subcommands().any(|sub| repeatable(sub, flag))
}

/// A file value as the text a flag would take.
fn scalar(path: &Path, key: &str, value: &toml::Value) -> Result<String, ConfigError> {
    match value {
        toml::Value::String(text) => Ok(text.clone()),
        toml::Value::Integer(number) => Ok(number.to_string()),
        toml::Value::Float(number) => Ok(number.to_string()),
        toml::Value::Boolean(flag) => Ok(flag.to_string()),
        other => Err(ConfigError(format!(
            "{}: `{key}` must be a string, number or boolean (or a list of them for a \
             repeatable flag), not {}",
            path.display(),
            other.type_str()
        ))),
    }
}

/// Make `values` the default of every argument with the long name `flag`, wherever it
/// appears (the common flags are in several subcommands). None if no command has it.
fn with_default(command: Command, flag: &str, values: &[String]) -> Option<Command> {
    if flag == "config" {
        return None;
    }
    let mut found = false;
    let command = set_default(command, flag, values, &mut found);
    found.then_some(command)
}

fn set_default(mut command: Command, flag: &str, values: &[String], found: &mut bool) -> Command {
    let ids: Vec<clap::Id> = command
        .get_arguments()
        .filter(|arg| arg.get_long() == Some(flag))
        .map(|arg| arg.get_id().clone())
        .collect();
    for id in ids {
        *found = true;
        let values = values.to_vec();
        command = command.mut_arg(id, |arg| arg.default_values(values));
    }
    let names: Vec<String> = command
        .get_subcommands()
        .map(|sub| sub.get_name().to_owned())
        .collect();
    for name in names {
        command = command.mut_subcommand(name, |sub| set_default(sub, flag, values, found));
    }
    command
}

/// Where the value of the flag `flag` came from, in the innermost subcommand that has it.
pub fn value_source(matches: &ArgMatches, flag: &str) -> Option<clap::parser::ValueSource> {
    let id = flag.replace('-', "_");
    if let Some((_, sub)) = matches.subcommand()
        && let Some(source) = value_source(sub, flag)
    {
        return Some(source);
    }
    matches
        .ids()
        .any(|known| known.as_str() == id)
        .then(|| matches.value_source(&id))
        .flatten()
}
