//! One inserted row, read by column position: the values a field or a template placeholder
//! points at, with JSON paths followed.
//!
//! A column that some reference reads through a JSON path is parsed once per row, up front
//! ([`Row::new`]), however many references read it.

use bytes::Bytes;
use serde_json::Value as Json;

use super::path::follow;
use crate::pgoutput::ColumnValue;

/// Where a value comes from, resolved against the table's columns.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Source {
    pub(crate) index: usize,
    /// The column's type is json or jsonb: its text is JSON already.
    pub(crate) json_column: bool,
    pub(crate) path: Vec<String>,
}

/// One value of a row.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) enum Value<'a> {
    /// SQL NULL, an unchanged TOASTed value, or a JSON path that leads nowhere.
    Null,
    /// A column's text; `json` when the column's type is json or jsonb.
    Text { bytes: &'a [u8], json: bool },
    /// A value found inside a column by a JSON path.
    Json(&'a Json),
}

impl Value<'_> {
    pub(crate) fn is_null(&self) -> bool {
        matches!(self, Value::Null | Value::Json(Json::Null))
    }
}

/// Why a row's value cannot be read.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("column `{column}` is read through a JSON path but its value is not JSON: {problem}")]
pub struct NotJson {
    pub column: String,
    pub problem: String,
}

/// The row's columns and the JSON values of the columns read through paths.
pub(crate) struct Row<'a> {
    columns: &'a [ColumnValue],
    parsed: Vec<(usize, Result<Json, NotJson>)>,
}

impl<'a> Row<'a> {
    /// `json_columns`: the positions (and names, for errors) of the columns read through a
    /// JSON path; each is parsed here once.
    pub(crate) fn new(columns: &'a [ColumnValue], json_columns: &[(usize, String)]) -> Self {
        let parsed = json_columns
            .iter()
            .map(|(index, name)| {
                let json = match text(columns, *index) {
                    None => Ok(Json::Null),
                    Some(bytes) => serde_json::from_slice(bytes).map_err(|error| NotJson {
                        column: name.clone(),
                        problem: error.to_string(),
                    }),
                };
                (*index, json)
            })
            .collect();
        Row { columns, parsed }
    }

    /// Column `index`'s text, `None` for NULL.
    pub(crate) fn text(&self, index: usize) -> Option<&'a [u8]> {
        text(self.columns, index)
    }

    /// Column `index`'s raw value (for the payload bytes, shared rather than copied).
    pub(crate) fn bytes(&self, index: usize) -> Option<&'a Bytes> {
        match self.columns.get(index)? {
            ColumnValue::Text(bytes) | ColumnValue::Binary(bytes) => Some(bytes),
            ColumnValue::Null | ColumnValue::UnchangedToast => None,
        }
    }

    /// The value `source` points at.
    pub(crate) fn value(&self, source: &Source) -> Result<Value<'_>, NotJson> {
        if source.path.is_empty() {
            return Ok(match self.text(source.index) {
                Some(bytes) => Value::Text {
                    bytes,
                    json: source.json_column,
                },
                None => Value::Null,
            });
        }
        let json = self
            .parsed
            .iter()
            .find(|(index, _)| *index == source.index)
            .map(|(_, json)| json)
            .expect("every column read through a path is parsed in Row::new");
        match json {
            Ok(json) => Ok(follow(json, &source.path).map_or(Value::Null, Value::Json)),
            Err(error) => Err(NotJson {
                column: error.column.clone(),
                problem: error.problem.clone(),
            }),
        }
    }
}

fn text(columns: &[ColumnValue], index: usize) -> Option<&[u8]> {
    match columns.get(index)? {
        ColumnValue::Text(bytes) | ColumnValue::Binary(bytes) => Some(bytes.as_ref()),
        ColumnValue::Null | ColumnValue::UnchangedToast => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pgoutput::fixture::columns;

    fn source(index: usize, path: &[&str]) -> Source {
        Source {
            index,
            json_column: false,
            path: path.iter().map(|key| (*key).to_owned()).collect(),
        }
    }

    #[test]
    fn reads_columns_and_paths() {
        let values = columns(&[
            Some("7"),
            Some(r#"{"Headers":{"a":"x"},"Value":{"n":1}}"#),
            None,
        ]);
        let row = Row::new(&values, &[(1, "Content".into())]);
        assert_eq!(
            row.value(&source(0, &[])),
            Ok(Value::Text {
                bytes: b"7",
                json: false
            })
        );
        assert_eq!(
            row.value(&source(1, &["Headers", "a"])),
            Ok(Value::Json(&Json::from("x")))
        );
        assert_eq!(row.value(&source(1, &["Nope"])), Ok(Value::Null));
        assert_eq!(row.value(&source(2, &[])), Ok(Value::Null));
        assert_eq!(row.value(&source(9, &[])), Ok(Value::Null));
    }

    #[test]
    fn a_path_into_text_that_is_not_json_is_an_error() {
        let values = columns(&[Some("not json")]);
        let row = Row::new(&values, &[(0, "Content".into())]);
        let error = row.value(&source(0, &["Value"])).unwrap_err();
        assert_eq!(error.column, "Content");
        // A NULL column read through a path is just NULL.
        let values = columns(&[None]);
        let row = Row::new(&values, &[(0, "Content".into())]);
        assert_eq!(row.value(&source(0, &["Value"])), Ok(Value::Null));
    }
}
