//! The `headers` column (a JSON object) → AMQP message headers.
//!
//! Strings, numbers, booleans and null keep their AMQP types so consumers in any language read
//! them naturally; nested objects and arrays travel as their JSON text.

use amq_protocol::types::{AMQPValue, FieldTable, LongString, ShortString};
use serde_json::{Map, Value};

/// Add every key of a JSON object to `table`, and give the object back when `keep` asks for it
/// (MassTransit's envelope carries the headers too). Returns an error text when the value is
/// not a JSON object (the event is still delivered, without those headers).
pub fn add_json_headers(
    table: &mut FieldTable,
    json: &[u8],
    keep: bool,
) -> Result<Option<Map<String, Value>>, String> {
    let value: Value =
        serde_json::from_slice(json).map_err(|error| format!("not valid JSON: {error}"))?;
    let Value::Object(object) = value else {
        return Err(format!("a JSON {} rather than an object", kind(&value)));
    };
    if keep {
        add_object_headers(table, &object);
        return Ok(Some(object));
    }
    // The common case: the object is not needed afterwards, so its keys and values move
    // into the table without copies.
    for (key, value) in object {
        let Ok(key) = ShortString::try_new(key) else {
            continue; // AMQP header names stop at 255 bytes; such a key cannot be sent.
        };
        table.insert(key, amqp_value(value));
    }
    Ok(None)
}

/// Add every key of `object` to `table`.
pub fn add_object_headers(table: &mut FieldTable, object: &Map<String, Value>) {
    for (key, value) in object {
        let Ok(key) = ShortString::try_new(key.clone()) else {
            continue; // AMQP header names stop at 255 bytes; such a key cannot be sent.
        };
        table.insert(key, amqp_value(value.clone()));
    }
}

fn amqp_value(value: Value) -> AMQPValue {
    match value {
        Value::Null => AMQPValue::Void,
        Value::Bool(flag) => AMQPValue::Boolean(flag),
        Value::Number(number) => match number.as_i64() {
            Some(integer) => AMQPValue::LongLongInt(integer),
            None => AMQPValue::Double(number.as_f64().unwrap_or(f64::NAN)),
        },
        Value::String(text) => AMQPValue::LongString(LongString::from(text)),
        nested @ (Value::Array(_) | Value::Object(_)) => {
            AMQPValue::LongString(LongString::from(nested.to_string()))
        }
    }
}

/// An AMQP header table as a JSON object (the reverse of [`add_json_headers`], for a
/// dead-letter record that carries an event's headers as text): strings, numbers, booleans
/// and void keep their JSON types; byte arrays and the other AMQP types travel as their
/// debug text.
pub(crate) fn to_json(table: &FieldTable) -> Value {
    Value::Object(
        table
            .into_iter()
            .map(|(name, value)| (name.to_string(), json_value(value)))
            .collect(),
    )
}

fn json_value(value: &AMQPValue) -> Value {
    match value {
        AMQPValue::Void => Value::Null,
        AMQPValue::Boolean(flag) => Value::Bool(*flag),
        AMQPValue::LongString(text) => {
            Value::String(String::from_utf8_lossy(text.as_bytes()).into_owned())
        }
        AMQPValue::ShortString(text) => Value::String(text.to_string()),
        AMQPValue::ShortShortInt(n) => Value::from(*n),
        AMQPValue::ShortShortUInt(n) => Value::from(*n),
        AMQPValue::ShortInt(n) => Value::from(*n),
        AMQPValue::ShortUInt(n) => Value::from(*n),
        AMQPValue::LongInt(n) => Value::from(*n),
        AMQPValue::LongUInt(n) => Value::from(*n),
        AMQPValue::LongLongInt(n) => Value::from(*n),
        AMQPValue::Timestamp(n) => Value::from(*n),
        AMQPValue::Float(n) => Value::from(*n),
        AMQPValue::Double(n) => Value::from(*n),
        AMQPValue::FieldTable(table) => to_json(table),
        AMQPValue::FieldArray(array) => {
            Value::Array(array.as_slice().iter().map(json_value).collect())
        }
        other => Value::String(format!("{other:?}")),
    }
}

fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn object_keys_become_typed_headers() {
        let mut table = FieldTable::default();
        add_json_headers(
            &mut table,
            br#"{"trace":"abc","n":3,"f":1.5,"ok":true,"none":null,"nested":{"a":[1,2]}}"#,
            false,
        )
        .unwrap();
        let inner = table.inner();
        assert_eq!(
            inner.get("trace"),
            Some(&AMQPValue::LongString("abc".into()))
        );
        assert_eq!(inner.get("n"), Some(&AMQPValue::LongLongInt(3)));
        assert_eq!(inner.get("f"), Some(&AMQPValue::Double(1.5)));
        assert_eq!(inner.get("ok"), Some(&AMQPValue::Boolean(true)));
        assert_eq!(inner.get("none"), Some(&AMQPValue::Void));
        assert_eq!(
            inner.get("nested"),
            Some(&AMQPValue::LongString(r#"{"a":[1,2]}"#.into()))
        );
    }

    #[test]
    fn non_objects_are_reported() {
        let mut table = FieldTable::default();
        assert_eq!(
            add_json_headers(&mut table, b"[1,2]", false),
            Err("a JSON array rather than an object".into())
        );
        assert!(add_json_headers(&mut table, b"{oops", false).is_err());
        assert!(table.inner().is_empty());
    }
}
