//! Names walbox writes into SQL or derives from the user's: PostgreSQL identifiers, the
//! outbox table, and the replay window's slots named after the live one.

use std::fmt;

use super::ConfigError;

/// A PostgreSQL identifier, validated (non-empty, at most 63 bytes, no NUL) and always quoted
/// when written into SQL.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Identifier(String);

impl Identifier {
    pub(crate) fn new(what: &str, text: &str) -> Result<Self, ConfigError> {
        if text.is_empty() || text.len() > 63 || text.contains('\0') {
            return Err(ConfigError(format!(
                "{what} `{text}` is not a valid PostgreSQL name (1 to 63 bytes, no NUL)"
            )));
        }
        Ok(Identifier(text.to_owned()))
    }

    pub(crate) fn as_str(&self) -> &str {
        &self.0
    }

    /// The identifier as SQL text: double-quoted, inner quotes doubled.
    pub(crate) fn quoted(&self) -> String {
        format!("\"{}\"", self.0.replace('"', "\"\""))
    }
}

impl fmt::Display for Identifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The outbox table's schema and name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct TableName {
    pub(crate) schema: Identifier,
    pub(crate) name: Identifier,
}

impl TableName {
    pub(crate) fn parse(text: &str) -> Result<Self, ConfigError> {
        let (schema, name) = text.split_once('.').unwrap_or(("public", text));
        Ok(TableName {
            schema: Identifier::new("schema", schema)?,
            name: Identifier::new("table", name)?,
        })
    }

    pub(crate) fn quoted(&self) -> String {
        format!("{}.{}", self.schema.quoted(), self.name.quoted())
    }
}

impl fmt::Display for TableName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.schema, self.name)
    }
}

/// Longest slot name PostgreSQL takes (NAMEDATALEN - 1).
const MAX_SLOT_NAME: usize = 63;
const BOOKMARK_SUFFIX: &str = "_bookmark";
/// A replay's temporary copy: `<slot>_replay_<pid>`, the pid up to 7 digits.
const COPY_SUFFIX_MAX: usize = "_replay_".len() + 7;

/// The longest `--slot` that leaves room for the replay window's bookmark and copies' names.
pub(crate) const MAX_SLOT_WITH_REPLAY: usize = MAX_SLOT_NAME - COPY_SUFFIX_MAX;

/// `<slot>_bookmark`: the slot that keeps the replay window; none when `slot` is too long to
/// have one.
pub(crate) fn bookmark_name(slot: &Identifier) -> Option<Identifier> {
    derived(format!("{slot}{BOOKMARK_SUFFIX}"))
}

/// `<slot>_replay_<pid>`: the temporary copy one replay streams from.
pub(crate) fn copy_name(slot: &Identifier) -> Option<Identifier> {
    derived(format!("{slot}_replay_{}", std::process::id()))
}

fn derived(name: String) -> Option<Identifier> {
    Identifier::new("derived slot name", &name).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers_are_quoted() {
        let table = TableName::parse(r#"sales.out"box"#).unwrap();
        assert_eq!(table.quoted(), r#""sales"."out""box""#);
        assert_eq!(
            TableName::parse("outbox").unwrap().schema.as_str(),
            "public"
        );
    }
}
