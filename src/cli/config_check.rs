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
    Ok(())
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
        if matches!(flag, "help" | "version" | "config") {
            continue;
        }
        let id = arg.get_id().as_str();
        let Some(values) = matches.get_raw(id) else {
            continue;
        };
        let value: Vec<String> = values.map(|v| v.to_string_lossy().into_owned()).collect();
        let value = redacted(flag, &value.join(","));
        let source = if parsed.from_file.contains(flag) {
            "file".to_owned()
        } else {
            match value_source(&parsed.matches, flag) {
                Some(ValueSource::CommandLine) => "flag".to_owned(),
                Some(ValueSource::EnvVariable) => arg
                    .get_env()
                    .map(|env| format!("env {}", env.to_string_lossy()))
                    .unwrap_or_else(|| "env".to_owned()),
                _ => "default".to_owned(),
            }
        };
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
