//! A column reference with an optional JSON path into the column: `Content->Headers`.
//!
//! Some frameworks store a whole message in one column (CAP keeps `{"Headers": {..},
//! "Value": ..}` in `Content`); a path lets a field or a template placeholder take one part of
//! it. The arrow is PostgreSQL's own JSON operator, so the syntax reads as SQL does.

use std::fmt;

use serde_json::Value;

/// A column name and the object keys to follow inside its JSON value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ColumnRef {
    column: String,
    path: Vec<String>,
}

impl ColumnRef {
    /// `column` or `column->key->key`. Names are literal: no quoting, case-sensitive.
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut parts = text.split("->").map(str::trim);
        let column = parts.next().unwrap_or_default();
        if column.is_empty() {
            return Err(format!("`{text}` names no column"));
        }
        let path: Vec<String> = parts.map(str::to_owned).collect();
        if path.iter().any(String::is_empty) {
            return Err(format!("`{text}` has an empty key after `->`"));
        }
        Ok(ColumnRef {
            column: column.to_owned(),
            path,
        })
    }

    pub fn column(&self) -> &str {
        &self.column
    }

    pub fn path(&self) -> &[String] {
        &self.path
    }

    pub fn has_path(&self) -> bool {
        !self.path.is_empty()
    }
}

impl fmt::Display for ColumnRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.column)?;
        for key in &self.path {
            write!(f, "->{key}")?;
        }
        Ok(())
    }
}

/// Follow `path` (object keys) from `value`; `None` where a key is missing or a value on the
/// way is not an object (like PostgreSQL's `->`, which gives NULL there).
pub(crate) fn follow<'v>(value: &'v Value, path: &[String]) -> Option<&'v Value> {
    path.iter()
        .try_fold(value, |value, key| value.as_object()?.get(key))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_columns_and_paths() {
        let plain = ColumnRef::parse("Content").unwrap();
        assert_eq!(plain.column(), "Content");
        assert!(!plain.has_path());
        let deep = ColumnRef::parse("Content->Headers->cap-msg-id").unwrap();
        assert_eq!(deep.column(), "Content");
        assert_eq!(deep.path(), ["Headers", "cap-msg-id"]);
        assert_eq!(deep.to_string(), "Content->Headers->cap-msg-id");
        assert!(ColumnRef::parse("->a").is_err());
        assert!(ColumnRef::parse("a->").is_err());
        assert!(ColumnRef::parse("a->->b").is_err());
    }

    #[test]
    fn follows_object_keys_only() {
        let value: Value = serde_json::json!({"Headers": {"a": "1"}, "Value": [1]});
        let path = |keys: &[&str]| keys.iter().map(|k| (*k).to_owned()).collect::<Vec<_>>();
        assert_eq!(
            follow(&value, &path(&["Headers", "a"])),
            Some(&Value::from("1"))
        );
        assert_eq!(follow(&value, &path(&["Value", "0"])), None);
        assert_eq!(follow(&value, &path(&["Missing"])), None);
        assert_eq!(follow(&value, &[]), Some(&value));
    }
}
