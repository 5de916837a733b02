//! The reference pages of the docs, generated from the code so they cannot drift from it: the
//! command line from clap, the metrics from the registry, the exit codes from
//! [`super::EXIT_CODES`]. `tests/config.rs` compares the committed pages with
//! [`reference_pages`] (and with WALBOX_BLESS=1 writes them).

use crate::config::reference;
use crate::telemetry::{Health, Metrics};

/// What every generated page says first, so nobody edits it by hand.
const GENERATED: &str = "<!-- Generated from the code (src/cli/docs.rs); do not edit. \
                         Regenerate: WALBOX_BLESS=1 cargo test --test config reference_pages -->";

/// The generated pages: file name and content.
pub fn reference_pages() -> Vec<(&'static str, String)> {
    vec![
        ("cli.md", cli_page()),
        ("metrics.md", metrics_page()),
        ("exit-codes.md", exit_codes_page()),
    ]
}

fn cli_page() -> String {
    format!(
        "# Command line\n\n{GENERATED}\n\n\
         `walbox --help` and `walbox <command> --help` print the same texts. Every option can \
         also be given as its environment variable or as a key of the `--config` file (the \
         flag's long name): see [Configuration](../operations/configuration.md). A command \
         reads only the options in its column below and ignores the other variables, so one \
         environment or one file can serve every command.\n\n\
         ## Commands\n\n{}\n\
         ## Options\n\n{}",
        reference::commands_table(),
        reference::options_table()
    )
}

fn metrics_page() -> String {
    let metrics = Metrics::new();
    let exposition = metrics.render(&Health::default());
    let mut table = String::from("| Metric | Type | Labels | Meaning |\n|---|---|---|---|\n");
    for family in families(&exposition) {
        table.push_str(&format!(
            "| `{}` | {} | {} | {} |\n",
            family.exposed_name(),
            family.kind,
            family.labels_text(),
            family.help.replace('|', "\\|")
        ));
    }
    format!(
        "# Metrics\n\n{GENERATED}\n\n\
         Every metric `walbox run` serves on `/metrics` (Prometheus text format), from walbox's \
         metric registry. How to use them, and the alert rules and dashboard built on them: \
         [Metrics, health and logs](../operations/monitoring.md).\n\n{table}"
    )
}

fn exit_codes_page() -> String {
    let mut table = String::from("| Code | Meaning |\n|---|---|\n");
    for (code, meaning) in super::EXIT_CODES {
        table.push_str(&format!("| `{code}` | {meaning} |\n"));
    }
    format!(
        "# Exit codes\n\n{GENERATED}\n\n{table}\n\
         How errors are classified (transient, definite, poison) is described in \
         [Errors](errors.md).\n"
    )
}

/// One metric family of the text exposition: its `# HELP`, `# TYPE` and the label names of
/// its samples.
struct Family {
    name: String,
    kind: String,
    help: String,
    labels: Vec<String>,
}

impl Family {
    /// The name a query uses: counters carry `_total` on their samples.
    fn exposed_name(&self) -> String {
        match self.kind.as_str() {
            "counter" => format!("{}_total", self.name),
            _ => self.name.clone(),
        }
    }

    fn labels_text(&self) -> String {
        let mut labels: Vec<String> = self.labels.iter().map(|l| format!("`{l}`")).collect();
        if self.kind == "histogram" {
            labels.push("`le` (on `_bucket`)".to_owned());
        }
        labels.join(", ")
    }
}

/// The metric families of a text exposition, in order.
fn families(exposition: &str) -> Vec<Family> {
    let mut families: Vec<Family> = Vec::new();
    for line in exposition.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, help) = rest.split_once(' ').unwrap_or((rest, ""));
            families.push(Family {
                name: name.to_owned(),
                kind: String::new(),
                help: help.trim_end_matches('.').to_owned(),
                labels: Vec::new(),
            });
        } else if let Some(rest) = line.strip_prefix("# TYPE ")
            && let Some(family) = families.last_mut()
        {
            family.kind = rest.split_once(' ').map_or("", |(_, kind)| kind).to_owned();
        } else if let Some((_, labels)) = line.split_once('{')
            && let Some(family) = families.last_mut()
        {
            for pair in labels.split('}').next().unwrap_or("").split(',') {
                let Some((label, _)) = pair.split_once('=') else {
                    continue;
                };
                if label != "le" && !family.labels.iter().any(|known| known == label) {
                    family.labels.push(label.to_owned());
                }
            }
        }
    }
    families
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families_read_help_type_and_labels() {
        let text = "# HELP walbox_a_total Things.\n# TYPE walbox_a counter\n\
                    walbox_a_total{side=\"x\"} 1\nwalbox_a_total{side=\"y\"} 2\n\
                    # HELP walbox_h Seconds.\n# TYPE walbox_h histogram\n\
                    walbox_h_bucket{le=\"0.1\"} 0\nwalbox_h_sum 0\n";
        let found = families(text);
        assert_eq!(found.len(), 2);
        assert_eq!(found[0].kind, "counter");
        assert_eq!(found[0].labels, ["side"]);
        assert_eq!(found[1].exposed_name(), "walbox_h");
        assert!(found[1].labels.is_empty());
    }

    #[test]
    fn every_registered_metric_is_in_the_page() {
        let page = metrics_page();
        let table = Metrics::new().reference_table();
        for line in table.lines().skip(2) {
            let name = line.split('`').nth(1).expect("a metric name");
            assert!(page.contains(&format!("`{name}`")), "{name} missing");
        }
    }
}
