//! The routing-key template, e.g. `{aggregate_type}.{event_type}`.
//!
//! A template is parsed once from configuration, resolved against the table's columns when a
//! Relation message describes them, and rendered per event with no lookups by name.
//! Placeholders are field names (see [`Field`]) or any column of the table.

use super::columns::{ColumnMap, Field};

#[derive(Clone, Debug, PartialEq, Eq)]
enum Part {
    Literal(String),
    Placeholder(String),
}

/// A parsed routing-key template.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Template {
    source: String,
    parts: Vec<Part>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TemplateError {
    #[error("routing-key template `{0}` has a `{{` without a matching `}}`")]
    Unclosed(String),
    #[error("routing-key template `{0}` has a `}}` without a matching `{{`")]
    Unopened(String),
    #[error("routing-key template `{0}` has an empty placeholder `{{}}`")]
    EmptyPlaceholder(String),
    #[error(
        "routing-key template placeholder `{{{placeholder}}}` is neither a field (id, \
         aggregate_type, aggregate_id, event_type, payload, headers, created_at, exchange) mapped \
         to a column nor a column of the table"
    )]
    UnknownPlaceholder { placeholder: String },
}

/// A template whose placeholders are column positions in the table's rows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResolvedTemplate {
    parts: Vec<ResolvedPart>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum ResolvedPart {
    Literal(String),
    Column(usize),
}

impl Template {
    pub fn parse(text: &str) -> Result<Self, TemplateError> {
        let mut parts = Vec::new();
        let mut rest = text;
        while !rest.is_empty() {
            match (rest.find('{'), rest.find('}')) {
                (Some(open), close) if close.is_none_or(|close| close > open) => {
                    if open > 0 {
                        parts.push(Part::Literal(rest[..open].to_owned()));
                    }
                    let after = &rest[open + 1..];
                    let close = after
                        .find('}')
                        .ok_or_else(|| TemplateError::Unclosed(text.to_owned()))?;
                    let name = &after[..close];
                    if name.contains('{') {
                        return Err(TemplateError::Unclosed(text.to_owned()));
                    }
                    if name.trim().is_empty() {
                        return Err(TemplateError::EmptyPlaceholder(text.to_owned()));
                    }
                    parts.push(Part::Placeholder(name.trim().to_owned()));
                    rest = &after[close + 1..];
                }
                (_, Some(_)) => return Err(TemplateError::Unopened(text.to_owned())),
                (None, None) => {
                    parts.push(Part::Literal(rest.to_owned()));
                    rest = "";
                }
                (Some(_), None) => unreachable!("covered by the first arm"),
            }
        }
        Ok(Template {
            source: text.to_owned(),
            parts,
        })
    }

    #[cfg(test)]
    fn placeholders(&self) -> impl Iterator<Item = &str> {
        self.parts.iter().filter_map(|part| match part {
            Part::Placeholder(name) => Some(name.as_str()),
            Part::Literal(_) => None,
        })
    }

    /// Resolve each placeholder to the position of its column among `columns` (the table's
    /// column names in row order).
    pub fn resolve<'a>(
        &self,
        map: &ColumnMap,
        columns: impl Iterator<Item = &'a str> + Clone,
    ) -> Result<ResolvedTemplate, TemplateError> {
        let parts = self
            .parts
            .iter()
            .map(|part| match part {
                Part::Literal(text) => Ok(ResolvedPart::Literal(text.clone())),
                Part::Placeholder(name) => {
                    let column = Field::from_name(name)
                        .and_then(|field| map.column(field))
                        .unwrap_or(name.as_str());
                    columns
                        .clone()
                        .position(|candidate| candidate == column)
                        .map(ResolvedPart::Column)
                        .ok_or_else(|| TemplateError::UnknownPlaceholder {
                            placeholder: name.clone(),
                        })
                }
            })
            .collect::<Result<_, _>>()?;
        Ok(ResolvedTemplate { parts })
    }
}

impl std::fmt::Display for Template {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.source)
    }
}

impl ResolvedTemplate {
    /// The highest column position the template reads, if it reads any.
    pub fn max_column(&self) -> Option<usize> {
        self.parts
            .iter()
            .filter_map(|part| match part {
                ResolvedPart::Column(index) => Some(*index),
                ResolvedPart::Literal(_) => None,
            })
            .max()
    }

    /// Render into `out`; `value(i)` gives column `i`'s text, `None` for NULL (an empty
    /// segment, never an error).
    pub fn render<'v>(&self, out: &mut String, value: impl Fn(usize) -> Option<&'v [u8]>) {
        out.clear();
        for part in &self.parts {
            match part {
                ResolvedPart::Literal(text) => out.push_str(text),
                ResolvedPart::Column(index) => {
                    if let Some(bytes) = value(*index) {
                        out.push_str(&String::from_utf8_lossy(bytes));
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const COLUMNS: [&str; 4] = ["id", "aggregate_type", "event_type", "tenant"];

    fn render(template: &str, values: [Option<&'static str>; 4]) -> String {
        let resolved = Template::parse(template)
            .unwrap()
            .resolve(&ColumnMap::outbox(), COLUMNS.iter().copied())
            .unwrap();
        let mut out = String::new();
        resolved.render(&mut out, |i| values[i].map(str::as_bytes));
        out
    }

    #[test]
    fn default_template_renders_type_and_event() {
        let values = [Some("1"), Some("order"), Some("created"), Some("acme")];
        assert_eq!(
            render("{aggregate_type}.{event_type}", values),
            "order.created"
        );
        assert_eq!(
            render("events.{tenant}.{aggregate_type}", values),
            "events.acme.order"
        );
        assert_eq!(render("fixed", values), "fixed");
    }

    #[test]
    fn null_renders_as_an_empty_segment() {
        let values = [Some("1"), None, Some("created"), None];
        assert_eq!(render("{aggregate_type}.{event_type}", values), ".created");
    }

    #[test]
    fn placeholders_follow_the_column_map() {
        let map = ColumnMap::parse("aggregate_type=kind").unwrap();
        let resolved = Template::parse("{aggregate_type}")
            .unwrap()
            .resolve(&map, ["id", "kind"].into_iter())
            .unwrap();
        let mut out = String::new();
        resolved.render(&mut out, |i| [Some(&b"7"[..]), Some(&b"invoice"[..])][i]);
        assert_eq!(out, "invoice");
    }

    #[test]
    fn malformed_templates_are_refused() {
        assert!(matches!(
            Template::parse("{a"),
            Err(TemplateError::Unclosed(_))
        ));
        assert!(matches!(
            Template::parse("a}"),
            Err(TemplateError::Unopened(_))
        ));
        assert!(matches!(
            Template::parse("{{a}}"),
            Err(TemplateError::Unclosed(_))
        ));
        assert!(matches!(
            Template::parse("x.{}"),
            Err(TemplateError::EmptyPlaceholder(_))
        ));
        let unknown = Template::parse("{colour}")
            .unwrap()
            .resolve(&ColumnMap::outbox(), COLUMNS.iter().copied());
        assert_eq!(
            unknown,
            Err(TemplateError::UnknownPlaceholder {
                placeholder: "colour".into()
            })
        );
    }

    proptest! {
        #[test]
        fn parse_never_panics_and_keeps_literal_text(text in ".{0,40}") {
            if let Ok(template) = Template::parse(&text) {
                let resolved = template.resolve(&ColumnMap::outbox(), std::iter::empty());
                if template.placeholders().count() == 0 {
                    let mut out = String::new();
                    resolved.unwrap().render(&mut out, |_| None);
                    prop_assert_eq!(out, text);
                }
            }
        }

        #[test]
        fn rendering_substitutes_every_placeholder(
            literals in proptest::collection::vec("[a-z.]{0,5}", 1..5),
            value in "[a-z0-9]{0,8}",
        ) {
            let mut template = String::new();
            let mut expected = String::new();
            for literal in &literals {
                template.push_str(literal);
                template.push_str("{tenant}");
                expected.push_str(literal);
                expected.push_str(&value);
            }
            let resolved = Template::parse(&template)
                .unwrap()
                .resolve(&ColumnMap::outbox(), COLUMNS.iter().copied())
                .unwrap();
            let mut out = String::new();
            resolved.render(&mut out, |i| (i == 3).then_some(value.as_bytes()));
            prop_assert_eq!(out, expected);
        }
    }
}
