//! The command-line reference in the docs, generated from the flags themselves so the two
//! cannot drift (a test compares the committed pages with this output): every subcommand with
//! its help text, and every option with its environment variable, default and the subcommands
//! that take it.

use clap::{Arg, Command, CommandFactory};

use super::Cli;

/// A Markdown table of the subcommands `walbox --help` lists: name and help text.
pub fn commands_table() -> String {
    let mut table = String::from("| Command | What it does |\n|---|---|\n");
    for (path, command) in subcommands() {
        let about = command
            .get_long_about()
            .or(command.get_about())
            .map(|about| cell(&about.to_string()))
            .unwrap_or_default();
        table.push_str(&format!("| `walbox {path}` | {about} |\n"));
    }
    table
}

/// A Markdown table of every option of every subcommand: flag (= file key), environment
/// variable, default, the subcommands that take it, meaning.
pub fn options_table() -> String {
    let commands = subcommands();
    let mut options: Vec<(Arg, Vec<String>)> = Vec::new();
    for (path, command) in &commands {
        for arg in command.get_arguments().filter(|arg| documented(arg)) {
            match options
                .iter_mut()
                .find(|(known, _)| known.get_long() == arg.get_long())
            {
                Some((_, paths)) => paths.push(path.clone()),
                None => options.push((arg.clone(), vec![path.clone()])),
            }
        }
    }
    let mut table = String::from(
        "| Flag / file key | Environment | Default | Commands | Meaning |\n|---|---|---|---|---|\n",
    );
    for (arg, paths) in options {
        let taken_by = match paths.len() == commands.len() {
            true => "all".to_owned(),
            false => paths.join(", "),
        };
        table.push_str(&row(&arg, &taken_by));
    }
    table
}

/// The visible subcommands that do something (not the `config` group itself), with the path
/// a user types (`run`, `config check`), in `--help` order.
fn subcommands() -> Vec<(String, Command)> {
    let mut command = Cli::command();
    command.build();
    let mut found = Vec::new();
    for sub in command.get_subcommands().filter(|sub| listed(sub)) {
        match sub.has_subcommands() {
            true => found.extend(sub.get_subcommands().filter(|inner| listed(inner)).map(
                |inner| {
                    (
                        format!("{} {}", sub.get_name(), inner.get_name()),
                        inner.clone(),
                    )
                },
            )),
            false => found.push((sub.get_name().to_owned(), sub.clone())),
        }
    }
    found
}

/// Not hidden, and not clap's own `help` subcommand.
fn listed(command: &Command) -> bool {
    !command.is_hide_set() && command.get_name() != "help"
}

fn documented(arg: &Arg) -> bool {
    arg.get_long()
        .is_some_and(|long| long != "help" && long != "version")
        && !arg.is_hide_set()
}

fn row(arg: &Arg, taken_by: &str) -> String {
    let long = arg.get_long().unwrap_or_default();
    let env = arg
        .get_env()
        .map(|env| format!("`{}`", env.to_string_lossy()))
        .unwrap_or_default();
    let defaults: Vec<String> = arg
        .get_default_values()
        .iter()
        .map(|value| value.to_string_lossy().into_owned())
        .collect();
    let default = match defaults.join(",") {
        text if text.is_empty() => String::new(),
        text => format!("`{text}`"),
    };
    let help = arg
        .get_help()
        .map(|help| cell(&help.to_string()))
        .unwrap_or_default();
    format!("| `--{long}` | {env} | {default} | {taken_by} | {help} |\n")
}

/// Text fit for one Markdown table cell (a `<` would open an HTML tag).
fn cell(text: &str) -> String {
    text.replace('|', "\\|")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('\n', " ")
}
