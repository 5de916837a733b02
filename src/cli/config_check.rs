//! `walbox config check`: validate what `walbox run` would be configured with and print the
//! effective configuration as TOML (usable as a `--config` file), secrets redacted, each line
//! saying where its value came from.

use clap::parser::ValueSource;
use clap::{ArgMatches, CommandFactory};

use crate::config::file::{Parsed, value_source};
use crate::config::mapping::{self, MappingArgs};
use crate::config::{Cli, Config, ConfigError, RunArgs, RunConfig, redact_url};

/// Validate, then print. A configuration that does not validate is an error naming the
/// problem (a usage error: exit 2).
pub(crate) fn check(parsed: &Parsed, run: &RunArgs) -> Result<(), ConfigError> {
    Config::from_args(&run.common)?;
    RunConfig::from_args(run)?;
    print!("{}", effective(parsed));
    print!("{}", implied_mapping(&run.common.mapping));
    print!("{}", header_line(parsed, &run.common.mapping)?);
    Ok(())
}

/// Every extra header, the preset's and the given ones merged as walbox applies them, on one
/// `header = [...]` line: a TOML file holds a key once, and loading this line back gives the
/// same headers (a given header replaces the preset's of its name).
fn header_line(parsed: &Parsed, args: &MappingArgs) -> Result<String, ConfigError> {
    let pairs = args.header_pairs()?;
    if pairs.is_empty() {
        return Ok(String::new());
    }
    let mut sources: Vec<String> = Vec::new();
    for (_, source) in &pairs {
        let source = match source {
            mapping::Source::Preset(preset) => format!("preset {}", preset.name()),
            _ => given_source(parsed, "header", Some("WALBOX_HEADER")),
        };
        if !sources.contains(&source) {
            sources.push(source);
        }
    }
    let values = toml::Value::Array(
        pairs
            .iter()
            .map(|(pair, _)| toml::Value::String(mapping::escape_pair(pair)))
            .collect(),
    );
    Ok(format!("header = {values}  # {}\n", sources.join(", ")))
}

/// Where a given flag's value came from: the file, the environment or the command line.
fn given_source(parsed: &Parsed, flag: &str, env: Option<&str>) -> String {
    if parsed.from_file.contains(flag) {
        return "file".to_owned();
    }
    match value_source(&parsed.matches, flag) {
        Some(ValueSource::CommandLine) => "flag".to_owned(),
        Some(ValueSource::EnvVariable) => {
            env.map_or_else(|| "env".to_owned(), |e| format!("env {e}"))
        }
        _ => "default".to_owned(),
    }
}

/// The mapping settings nobody gave (flag, environment, file): what the preset or the
/// built-in default makes them, so a preset's expansion is visible.
fn implied_mapping(args: &MappingArgs) -> String {
    args.implied()
        .into_iter()
        .map(|(flag, value, source)| {
            let source = match source {
                mapping::Source::Preset(preset) => format!("preset {}", preset.name()),
                mapping::Source::Default | mapping::Source::Given => "default".to_owned(),
            };
            format!("{flag} = {}  # {source}\n", toml_value(&value))
        })
        .collect()
}

/// The effective configuration as TOML lines with a comment naming each value's source.
pub(crate) fn effective(parsed: &Parsed) -> String {
    let mut command = Cli::command();
    command.build();
    let check = command
        .find_subcommand("config")
        .and_then(|config| config.find_subcommand("check"))
        .expect("walbox has config check")
        .clone();
    let matches = leaf(&parsed.matches);
    let mut text = String::new();
    if let Some(file) = &parsed.file {
        text.push_str(&format!("# configuration file: {}\n", file.display()));
    }
    for arg in check.get_arguments() {
        let Some(flag) = arg.get_long() else { continue };
        // The headers are printed merged with the preset's ([`header_line`]).
        if matches!(flag, "help" | "version" | "config" | "header") {
            continue;
        }
        let id = arg.get_id().as_str();
        let Some(values) = matches.get_raw(id) else {
            continue;
        };
        let value: Vec<String> = values.map(|v| v.to_string_lossy().into_owned()).collect();
        let value = redacted(flag, &value.join(","));
        let env = arg.get_env().map(|env| env.to_string_lossy());
        let source = given_source(parsed, flag, env.as_deref());
        text.push_str(&format!("{flag} = {}  # {source}\n", toml_value(&value)));
    }
    text
}

/// The matches of the innermost subcommand (`config check`).
fn leaf(matches: &ArgMatches) -> &ArgMatches {
    match matches.subcommand() {
        Some((_, sub)) => leaf(sub),
        None => matches,
    }
}

/// URLs lose their password; anything named like a password (not a password file) is hidden.
fn redacted(flag: &str, value: &str) -> String {
    if flag == "amqp-url" || flag == "stream-url" {
        // A list of broker nodes: every one loses its password.
        value
            .split(',')
            .map(redact_url)
            .collect::<Vec<_>>()
            .join(",")
    } else if flag.ends_with("-url") {
        redact_url(value)
    } else if flag.contains("password") && !flag.ends_with("-file") && !value.is_empty() {
        "***".to_owned()
    } else {
        value.to_owned()
    }
}

fn toml_value(value: &str) -> String {
    if value == "true" || value == "false" || value.parse::<i64>().is_ok() {
        value.to_owned()
    } else {
        toml::Value::String(value.to_owned()).to_string()
    }
}
