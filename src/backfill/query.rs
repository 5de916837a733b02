//! The backfill's SQL: which rows of the outbox table, in which order, from where to where.
//!
//! Rows go out in creation order: by the created_at column (when the column map has one as a
//! whole column) and then the id, which makes the order total. That order is also how a
//! backfill resumes: the *key* of the last row the broker confirmed is kept, and a later
//! attempt reads only the rows after it, up to the key of the last row the cut-over's snapshot
//! held. Key values travel as text parameters cast to the column's own type, so they compare
//! as the column does (`NULLS FIRST`, like the order). Identifiers are quoted; the only text
//! pasted into the SQL as written is the predicate the user gave (documented as such).

use crate::config::TableName;
use crate::pgoutput::{Relation, RelationColumn};

/// A row's order key: the text of each key column (None for NULL), as the server renders it.
pub(crate) type Key = Vec<Option<String>>;

/// One column of the table as the backfill reads it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Column {
    pub(crate) name: String,
    pub(crate) type_oid: u32,
    pub(crate) type_modifier: i32,
    /// The type as SQL writes it (`format_type`), for casting parameters.
    pub(crate) sql_type: String,
    pub(crate) not_null: bool,
}

/// The outbox table as the backfill reads it: its columns in the order pgoutput sends them
/// (generated columns are not published, so they are left out here too).
#[derive(Clone, Debug)]
pub(crate) struct Table {
    pub(crate) name: TableName,
    pub(crate) oid: u32,
    pub(crate) columns: Vec<Column>,
}

impl Table {
    /// The table as a Relation message would describe it, for [`crate::outbox::OutboxShape`].
    pub(crate) fn relation(&self) -> Relation {
        Relation {
            relation_id: self.oid,
            namespace: self.name.schema.as_str().to_owned(),
            name: self.name.name.as_str().to_owned(),
            replica_identity: b'd',
            columns: self
                .columns
                .iter()
                .map(|column| RelationColumn {
                    flags: 0,
                    name: column.name.clone(),
                    type_oid: column.type_oid,
                    type_modifier: column.type_modifier,
                })
                .collect(),
        }
    }

    fn quoted(&self, index: usize) -> String {
        quote(&self.columns[index].name)
    }
}

/// Which rows: all conditions hold.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Selection {
    /// An SQL condition over the table's columns (a preset's or the user's).
    pub(crate) predicate: Option<String>,
    /// Only rows after this key (a resumed backfill: the last confirmed row's).
    pub(crate) after: Option<Key>,
    /// Only rows up to and including this key (the last row of the cut-over's snapshot).
    pub(crate) through: Option<Key>,
    /// Column ranges (`walbox backfill --id-from` …).
    pub(crate) ranges: Vec<Range>,
}

/// `column >= value` or `column <= value`, the value cast to the column's type.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Range {
    pub(crate) column: usize,
    pub(crate) at_least: bool,
    pub(crate) value: String,
}

/// A statement and its text parameters.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Sql {
    pub(crate) text: String,
    pub(crate) params: Vec<String>,
}

/// Builds the statements for one table, key and selection.
pub(crate) struct Query<'a> {
    pub(crate) table: &'a Table,
    /// Column indexes of the order key, most significant first.
    pub(crate) key: &'a [usize],
    pub(crate) selection: &'a Selection,
}

impl Query<'_> {
    /// Every column, in the table's order, of the selected rows in key order.
    pub(crate) fn rows(&self) -> Sql {
        let columns: Vec<String> = (0..self.table.columns.len())
            .map(|index| self.table.quoted(index))
            .collect();
        let (condition, params) = self.condition();
        Sql {
            text: format!(
                "SELECT {} FROM {} WHERE {condition} ORDER BY {}",
                columns.join(", "),
                self.table.name.quoted(),
                self.order("ASC NULLS FIRST")
            ),
            params,
        }
    }

    /// How many rows are selected.
    pub(crate) fn count(&self) -> Sql {
        let (condition, params) = self.condition();
        Sql {
            text: format!(
                "SELECT count(*) FROM {} WHERE {condition}",
                self.table.name.quoted()
            ),
            params,
        }
    }

    /// The key of the last selected row, its columns as text.
    pub(crate) fn last_key(&self) -> Sql {
        let columns: Vec<String> = self
            .key
            .iter()
            .map(|index| format!("{}::text", self.table.quoted(*index)))
            .collect();
        let (condition, params) = self.condition();
        Sql {
            text: format!(
                "SELECT {} FROM {} WHERE {condition} ORDER BY {} LIMIT 1",
                columns.join(", "),
                self.table.name.quoted(),
                self.order("DESC NULLS LAST")
            ),
            params,
        }
    }

    fn order(&self, direction: &str) -> String {
        self.key
            .iter()
            .map(|index| format!("{} {direction}", self.table.quoted(*index)))
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// The WHERE condition and its parameters.
    fn condition(&self) -> (String, Vec<String>) {
        let mut params = Params::default();
        let mut parts = Vec::new();
        if let Some(predicate) = &self.selection.predicate {
            // The user's SQL, parenthesised so its ORs stay inside.
            parts.push(format!("({predicate})"));
        }
        if let Some(after) = &self.selection.after {
            parts.push(self.after(after, 0, &mut params));
        }
        if let Some(through) = &self.selection.through {
            parts.push(self.through(through, 0, &mut params));
        }
        for range in &self.selection.ranges {
            let operator = if range.at_least { ">=" } else { "<=" };
            let value = params.cast(&range.value, &self.table.columns[range.column]);
            parts.push(format!(
                "{} {operator} {value}",
                self.table.quoted(range.column)
            ));
        }
        if parts.is_empty() {
            parts.push("true".to_owned());
        }
        (parts.join(" AND "), params.values)
    }

    /// Rows whose key comes after `key` (from key column `at` on), in `NULLS FIRST` order.
    fn after(&self, key: &Key, at: usize, params: &mut Params) -> String {
        let column = &self.table.columns[self.key[at]];
        let name = self.table.quoted(self.key[at]);
        let last = at + 1 == self.key.len();
        match (&key[at], last) {
            // NULL sorts first: any value comes after it; NULL equals it.
            (None, true) => format!("{name} IS NOT NULL"),
            (None, false) => format!(
                "({name} IS NOT NULL OR ({name} IS NULL AND {}))",
                self.after(key, at + 1, params)
            ),
            (Some(value), true) => format!("{name} > {}", params.cast(value, column)),
            (Some(value), false) => {
                let value = params.cast(value, column);
                format!(
                    "({name} > {value} OR ({name} = {value} AND {}))",
                    self.after(key, at + 1, params)
                )
            }
        }
    }

    /// Rows whose key is at or before `key`.
    fn through(&self, key: &Key, at: usize, params: &mut Params) -> String {
        let column = &self.table.columns[self.key[at]];
        let name = self.table.quoted(self.key[at]);
        let last = at + 1 == self.key.len();
        let null_first = if column.not_null {
            String::new()
        } else {
            format!("{name} IS NULL OR ")
        };
        match (&key[at], last) {
            (None, true) => format!("{name} IS NULL"),
            (None, false) => format!("({name} IS NULL AND {})", self.through(key, at + 1, params)),
            (Some(value), true) => {
                format!("({null_first}{name} <= {})", params.cast(value, column))
            }
            (Some(value), false) => {
                let value = params.cast(value, column);
                format!(
                    "({null_first}{name} < {value} OR ({name} = {value} AND {}))",
                    self.through(key, at + 1, params)
                )
            }
        }
    }
}

/// The statement's parameters, numbered as they are added.
#[derive(Default)]
struct Params {
    values: Vec<String>,
}

impl Params {
    /// `value` as a parameter cast to `column`'s type (text in, so any type works without a
    /// binary codec; the type's input function parses what its output function wrote).
    fn cast(&mut self, value: &str, column: &Column) -> String {
        self.values.push(value.to_owned());
        format!("(${}::text)::{}", self.values.len(), column.sql_type)
    }
}

/// An identifier, quoted.
pub(crate) fn quote(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table() -> Table {
        let column = |name: &str, sql_type: &str, not_null: bool| Column {
            name: name.into(),
            type_oid: 0,
            type_modifier: -1,
            sql_type: sql_type.into(),
            not_null,
        };
        Table {
            name: TableName::parse(r#"public.Integration"Log"#).unwrap(),
            oid: 1,
            columns: vec![
                column("EventId", "uuid", true),
                column("Content", "text", true),
                column("CreationTime", "timestamp with time zone", false),
            ],
        }
    }

    #[test]
    fn rows_in_key_order_with_the_predicate_parenthesised() {
        let table = table();
        let selection = Selection {
            predicate: Some(r#""State" <> 2 OR "State" IS NULL"#.into()),
            ..Selection::default()
        };
        let query = Query {
            table: &table,
            key: &[2, 0],
            selection: &selection,
        };
        assert_eq!(
            query.rows().text,
            r#"SELECT "EventId", "Content", "CreationTime" FROM "public"."Integration""Log" WHERE ("State" <> 2 OR "State" IS NULL) ORDER BY "CreationTime" ASC NULLS FIRST, "EventId" ASC NULLS FIRST"#
        );
        assert_eq!(
            query.last_key().text,
            r#"SELECT "CreationTime"::text, "EventId"::text FROM "public"."Integration""Log" WHERE ("State" <> 2 OR "State" IS NULL) ORDER BY "CreationTime" DESC NULLS LAST, "EventId" DESC NULLS LAST LIMIT 1"#
        );
    }

    #[test]
    fn bounds_are_typed_parameters() {
        let table = table();
        let selection = Selection {
            predicate: None,
            after: Some(vec![
                Some("2026-01-01 00:00:00+00".into()),
                Some("a".into()),
            ]),
            through: Some(vec![None, Some("b".into())]),
            ranges: vec![Range {
                column: 0,
                at_least: true,
                value: "c".into(),
            }],
        };
        let query = Query {
            table: &table,
            key: &[2, 0],
            selection: &selection,
        };
        let count = query.count();
        assert_eq!(
            count.text,
            r#"SELECT count(*) FROM "public"."Integration""Log" WHERE ("CreationTime" > ($1::text)::timestamp with time zone OR ("CreationTime" = ($1::text)::timestamp with time zone AND "EventId" > ($2::text)::uuid)) AND ("CreationTime" IS NULL AND ("EventId" <= ($3::text)::uuid)) AND "EventId" >= ($4::text)::uuid"#
        );
        assert_eq!(count.params, ["2026-01-01 00:00:00+00", "a", "b", "c"]);
    }

    #[test]
    fn nothing_selected_means_every_row() {
        let table = table();
        let selection = Selection::default();
        let query = Query {
            table: &table,
            key: &[0],
            selection: &selection,
        };
        assert_eq!(
            query.count().text,
            r#"SELECT count(*) FROM "public"."Integration""Log" WHERE true"#
        );
    }
}
