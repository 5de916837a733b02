//! Templates over a row: `{aggregate_type}.{event_type}`, `{event_type|short}`,
//! `{"Id": {id|json}}`.
//!
//! Exchange, routing key, message type, header values, CloudEvents attributes and body
//! templates are all templates. A template is parsed once from configuration, resolved against
//! the table's columns when a Relation message describes them, and rendered per event with no
//! lookups by name. A placeholder is a field name (see [`Field`]) or any column of the table,
//! optionally a JSON path into it (`{Content->Headers->id}`), then filters (`|short`).

use super::columns::{ColumnMap, Field};
use super::filter::{Filter, apply};
use super::path::ColumnRef;
use super::row::{NotJson, Row, Source, Value};
use crate::pgoutput::Relation;

/// Type OIDs of json and jsonb.
const JSON_OIDS: [u32; 2] = [114, 3802];

#[derive(Clone, Debug, PartialEq, Eq)]
enum Part {
    Literal(String),
    Placeholder {
        name: ColumnRef,
        filters: Vec<Filter>,
    },
}

/// A parsed template.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Template {
    source: String,
    parts: Vec<Part>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TemplateError {
    #[error("template `{0}` has a `{{` without a matching `}}`")]
    Unclosed(String),
    #[error("template `{0}` has a `}}` without a matching `{{`")]
    Unopened(String),
    #[error("template `{0}` has an empty placeholder `{{}}`")]
    EmptyPlaceholder(String),
    #[error("template `{template}`: {problem}")]
    BadPlaceholder { template: String, problem: String },
    #[error(
        "template placeholder `{{{placeholder}}}` is neither a field (id, aggregate_type, \
         aggregate_id, event_type, payload, headers, created_at, exchange, traceparent, \
         tracestate) mapped to a column nor a column of the table"
    )]
    UnknownPlaceholder { placeholder: String },
}

/// A template whose placeholders point at column positions in the table's rows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResolvedTemplate {
    parts: Vec<ResolvedPart>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum ResolvedPart {
    Literal(String),
    /// A plain column read without path or filters: the routing key's common case, rendered
    /// without any conversion.
    Column(usize),
    Value {
        source: Source,
        filters: Vec<Filter>,
    },
}

impl Template {
    /// A template for a name (exchange, routing key, header): every `{` opens a placeholder.
    pub fn parse(text: &str) -> Result<Self, TemplateError> {
        Self::parse_with(text, false)
    }

    /// A template for a JSON body: a `{` opens a placeholder only when a name follows it
    /// (JSON's own braces are followed by `"`, `}` or white space), and a lone `}` is text.
    pub fn parse_json(text: &str) -> Result<Self, TemplateError> {
        Self::parse_with(text, true)
    }

    fn parse_with(text: &str, json: bool) -> Result<Self, TemplateError> {
        let mut parts = Vec::new();
        let mut literal = String::new();
        let mut rest = text;
        while let Some(at) = rest.find(['{', '}']) {
            literal.push_str(&rest[..at]);
            let brace = rest.as_bytes()[at];
            let after = &rest[at + 1..];
            if brace == b'}' {
                if !json {
                    return Err(TemplateError::Unopened(text.to_owned()));
                }
                literal.push('}');
                rest = after;
                continue;
            }
            let opens_name = after
                .chars()
                .next()
                .is_some_and(|c| !(c == '"' || c == '{' || c == '}' || c.is_whitespace()));
            if json && !opens_name {
                literal.push('{');
                rest = after;
                continue;
            }
            let close = after
                .find('}')
                .ok_or_else(|| TemplateError::Unclosed(text.to_owned()))?;
            let inner = &after[..close];
            if inner.contains('{') {
                return Err(TemplateError::Unclosed(text.to_owned()));
            }
            if inner.trim().is_empty() {
                return Err(TemplateError::EmptyPlaceholder(text.to_owned()));
            }
            if !literal.is_empty() {
                parts.push(Part::Literal(std::mem::take(&mut literal)));
            }
            parts.push(placeholder(text, inner)?);
            rest = &after[close + 1..];
        }
        literal.push_str(rest);
        if !literal.is_empty() {
            parts.push(Part::Literal(literal));
        }
        Ok(Template {
            source: text.to_owned(),
            parts,
        })
    }

    /// The text when the template has no placeholder.
    pub fn as_constant(&self) -> Option<&str> {
        match self.parts.as_slice() {
            [] => Some(""),
            [Part::Literal(text)] => Some(text),
            _ => None,
        }
    }

    pub fn placeholders(&self) -> impl Iterator<Item = String> + '_ {
        self.parts.iter().filter_map(|part| match part {
            Part::Placeholder { name, .. } => Some(name.to_string()),
            Part::Literal(_) => None,
        })
    }

    /// Resolve each placeholder to the position of its column in `relation`.
    pub fn resolve(
        &self,
        map: &ColumnMap,
        relation: &Relation,
    ) -> Result<ResolvedTemplate, TemplateError> {
        let parts = self
            .parts
            .iter()
            .map(|part| match part {
                Part::Literal(text) => Ok(ResolvedPart::Literal(text.clone())),
                Part::Placeholder { name, filters } => {
                    let source = resolve_source(map, relation, name).ok_or_else(|| {
                        TemplateError::UnknownPlaceholder {
                            placeholder: name.to_string(),
                        }
                    })?;
                    Ok(if source.path.is_empty() && filters.is_empty() {
                        ResolvedPart::Column(source.index)
                    } else {
                        ResolvedPart::Value {
                            source,
                            filters: filters.clone(),
                        }
                    })
                }
            })
            .collect::<Result<_, _>>()?;
        Ok(ResolvedTemplate { parts })
    }
}

fn placeholder(template: &str, inner: &str) -> Result<Part, TemplateError> {
    let bad = |problem: String| TemplateError::BadPlaceholder {
        template: template.to_owned(),
        problem,
    };
    let mut pieces = inner.split('|').map(str::trim);
    let name = ColumnRef::parse(pieces.next().unwrap_or_default()).map_err(bad)?;
    let filters = pieces
        .map(|filter| {
            Filter::from_name(filter).ok_or_else(|| {
                bad(format!(
                    "unknown filter `{filter}` (filters: {})",
                    Filter::NAMES
                ))
            })
        })
        .collect::<Result<_, _>>()?;
    Ok(Part::Placeholder { name, filters })
}

/// A field name follows the column map (and its path); any other name is a column.
pub(crate) fn resolve_source(
    map: &ColumnMap,
    relation: &Relation,
    name: &ColumnRef,
) -> Option<Source> {
    let (column, mut path) = match Field::from_name(name.column()).map(|field| map.column(field)) {
        Some(Some(mapped)) => (mapped.column(), mapped.path().to_vec()),
        Some(None) => return None,
        None => (name.column(), Vec::new()),
    };
    path.extend_from_slice(name.path());
    let index = relation.columns.iter().position(|c| c.name == column)?;
    Some(Source {
        index,
        json_column: JSON_OIDS.contains(&relation.columns[index].type_oid),
        path,
    })
}

impl std::fmt::Display for Template {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.source)
    }
}

impl ResolvedTemplate {
    /// Every source the template reads.
    pub(crate) fn sources(&self) -> impl Iterator<Item = (usize, bool)> + '_ {
        self.parts.iter().filter_map(|part| match part {
            ResolvedPart::Column(index) => Some((*index, false)),
            ResolvedPart::Value { source, .. } => Some((source.index, !source.path.is_empty())),
            ResolvedPart::Literal(_) => None,
        })
    }

    /// Render into `out` (cleared first). A NULL renders as nothing (an empty segment), never
    /// an error; the only error is a JSON path into a column whose text is not JSON.
    pub(crate) fn render(&self, out: &mut String, row: &Row<'_>) -> Result<(), NotJson> {
        out.clear();
        for part in &self.parts {
            match part {
                ResolvedPart::Literal(text) => out.push_str(text),
                ResolvedPart::Column(index) => {
                    if let Some(bytes) = row.text(*index) {
                        match std::str::from_utf8(bytes) {
                            Ok(text) => out.push_str(text),
                            Err(_) => out.push_str(&String::from_utf8_lossy(bytes)),
                        }
                    }
                }
                ResolvedPart::Value { source, filters } => {
                    let value = row.value(source)?;
                    apply(value, filters, out);
                }
            }
        }
        Ok(())
    }

    /// Whether every placeholder of the template reads NULL in `row` (a header template
    /// that renders from nothing is left out rather than sent empty).
    pub(crate) fn all_null(&self, row: &Row<'_>) -> bool {
        self.parts.iter().all(|part| match part {
            ResolvedPart::Literal(_) => false,
            ResolvedPart::Column(index) => row.text(*index).is_none(),
            ResolvedPart::Value { source, .. } => {
                row.value(source).is_ok_and(|value| Value::is_null(&value))
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pgoutput::fixture::{columns as values, relation};
    use proptest::prelude::*;

    fn table() -> Relation {
        relation(&[
            ("id", 2950),
            ("aggregate_type", 25),
            ("event_type", 25),
            ("tenant", 25),
            ("payload", 3802),
            ("Content", 25),
        ])
    }

    fn render_with(template: Template, map: &str, row: &[Option<&str>]) -> Result<String, NotJson> {
        let resolved = template
            .resolve(&ColumnMap::parse(map).unwrap(), &table())
            .unwrap();
        let columns = values(row);
        let json_columns: Vec<(usize, String)> = resolved
            .sources()
            .filter(|(_, path)| *path)
            .map(|(index, _)| (index, table().columns[index].name.clone()))
            .collect();
        let row = Row::new(&columns, &json_columns);
        let mut out = String::new();
        resolved.render(&mut out, &row)?;
        Ok(out)
    }

    fn render(template: &str, row: &[Option<&str>]) -> String {
        render_with(Template::parse(template).unwrap(), "", row).unwrap()
    }

    const ROW: [Option<&str>; 6] = [
        Some("1"),
        Some("order"),
        Some("Shop.Orders.OrderCreated"),
        Some("acme"),
        Some(r#"{"total": 5}"#),
        Some(r#"{"Headers": {"cap-msg-id": "42"}, "Value": {"n": 1}}"#),
    ];

    #[test]
    fn fields_columns_and_literals_render() {
        assert_eq!(
            render("{aggregate_type}.{event_type}", &ROW),
            "order.Shop.Orders.OrderCreated"
        );
        assert_eq!(render("events.{tenant}", &ROW), "events.acme");
        assert_eq!(render("fixed", &ROW), "fixed");
        assert_eq!(
            render("{event_type|namespace}:{event_type|short}", &ROW),
            "Shop.Orders:OrderCreated"
        );
        assert_eq!(render("{Content->Headers->cap-msg-id}", &ROW), "42");
        assert_eq!(render("{Content->Value}", &ROW), r#"{"n":1}"#);
    }

    #[test]
    fn null_renders_as_an_empty_segment() {
        let row = [Some("1"), None, Some("created"), None, None, None];
        assert_eq!(render("{aggregate_type}.{event_type}", &row), ".created");
        assert_eq!(render("{Content->Value}", &row), "");
    }

    #[test]
    fn placeholders_follow_the_column_map_and_its_paths() {
        let template = Template::parse("{headers->cap-msg-id}").unwrap();
        let out = render_with(template, "headers=Content->Headers", &ROW).unwrap();
        assert_eq!(out, "42");
        let template = Template::parse("{event_type}").unwrap();
        let out = render_with(template, "event_type=tenant", &ROW).unwrap();
        assert_eq!(out, "acme");
    }

    #[test]
    fn json_body_templates_keep_json_braces() {
        let template =
            Template::parse_json(r#"{"Id": {id|json}, "Content": {payload|json}, "E": {}}"#)
                .unwrap();
        let out = render_with(template, "", &ROW).unwrap();
        assert_eq!(out, r#"{"Id": "1", "Content": {"total": 5}, "E": {}}"#);
        let template = Template::parse_json(r#"{"Content": {Content|json}}"#).unwrap();
        let out = render_with(template, "", &ROW).unwrap();
        let parsed: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(parsed["Content"], serde_json::Value::from(ROW[5].unwrap()));
    }

    #[test]
    fn a_path_into_text_that_is_not_json_is_an_error() {
        let mut row = ROW;
        row[5] = Some("plain text");
        let template = Template::parse("{Content->Value}").unwrap();
        assert!(render_with(template, "", &row).is_err());
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
        assert!(matches!(
            Template::parse("{a|upper}"),
            Err(TemplateError::BadPlaceholder { .. })
        ));
        assert!(matches!(
            Template::parse_json(r#"{"a": {id"#),
            Err(TemplateError::Unclosed(_))
        ));
        for (template, map) in [("{colour}", ""), ("{aggregate_id}", "aggregate_id=")] {
            let unknown = Template::parse(template)
                .unwrap()
                .resolve(&ColumnMap::parse(map).unwrap(), &table());
            assert!(matches!(
                unknown,
                Err(TemplateError::UnknownPlaceholder { .. })
            ));
        }
    }

    #[test]
    fn constants_are_known_as_such() {
        assert_eq!(
            Template::parse("outbox").unwrap().as_constant(),
            Some("outbox")
        );
        assert_eq!(Template::parse("").unwrap().as_constant(), Some(""));
        assert_eq!(Template::parse("{id}").unwrap().as_constant(), None);
    }

    proptest! {
        #[test]
        fn parse_never_panics_and_keeps_literal_text(text in ".{0,40}") {
            for template in [Template::parse(&text), Template::parse_json(&text)].into_iter().flatten() {
                if template.placeholders().count() == 0 {
                    prop_assert_eq!(template.as_constant(), Some(text.as_str()));
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
            let mut row = ROW;
            row[3] = Some(value.as_str());
            prop_assert_eq!(render(&template, &row), expected);
        }

        #[test]
        fn a_json_body_template_of_json_filters_always_gives_json(
            id in any::<String>(),
            content in proptest::option::of(any::<String>()),
        ) {
            let template = Template::parse_json(r#"{"Id": {id|json}, "Content": {Content|json}, "T": {event_type|short|json}}"#).unwrap();
            let mut row = ROW;
            row[0] = Some(id.as_str());
            row[5] = content.as_deref();
            let out = render_with(template, "", &row).unwrap();
            let parsed: serde_json::Value = serde_json::from_str(&out).unwrap();
            prop_assert_eq!(&parsed["Id"], &serde_json::Value::from(id.as_str()));
            prop_assert_eq!(&parsed["Content"], &content.map_or(serde_json::Value::Null, serde_json::Value::from));
        }
    }
}
