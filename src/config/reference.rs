//! The options reference in the docs, generated from the flags themselves so the two cannot
//! drift (a test compares them).

use clap::{Arg, CommandFactory};

use super::Cli;

/// A Markdown table of every option of `walbox run` (and the global ones): flag,
/// environment variable, default, meaning. File keys are the flag names.
pub fn options_table() -> String {
    let mut command = Cli::command();
    command.build();
    let run = command
        .find_subcommand("run")
        .expect("walbox has a run subcommand")
        .clone();
    let mut table =
        String::from("| Flag / file key | Environment | Default | Meaning |\n|---|---|---|---|\n");
    for arg in run.get_arguments().filter(|arg| documented(arg)) {
        table.push_str(&row(arg));
    }
    table
}

fn documented(arg: &Arg) -> bool {
    arg.get_long()
        .is_some_and(|long| long != "help" && long != "version")
        && !arg.is_hide_set()
}

fn row(arg: &Arg) -> String {
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
        .map(|help| help.to_string().replace('|', "\\|"))
        .unwrap_or_default();
    format!("| `--{long}` | {env} | {default} | {help} |\n")
}
