//! Template filters: the small set of text transformations the frameworks' naming
//! conventions need (`{event_type|short}` gives a .NET type's short name).

use std::borrow::Cow;

use super::row::Value;

/// One filter of a placeholder, applied left to right.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Filter {
    /// .NET short type name: after the last `.`, then after the last `+` (nested types).
    Short,
    /// Everything before the last `.`; empty without a dot.
    Namespace,
    /// After the last `.`, keeping `+` (a nested type's `Outer+Inner`).
    Name,
    /// `+` → `-` (MassTransit names a nested type's exchange `Ns:Outer-Inner`).
    Dash,
    Lower,
    /// The value as a JSON value: json/jsonb text and JSON path values as they are, any
    /// other text as a JSON string literal, NULL as `null`.
    Json,
}

impl Filter {
    pub(crate) const NAMES: &'static str = "short, namespace, name, dash, lower, json";

    pub(crate) fn from_name(name: &str) -> Option<Self> {
        match name {
            "short" => Some(Filter::Short),
            "namespace" => Some(Filter::Namespace),
            "name" => Some(Filter::Name),
            "dash" => Some(Filter::Dash),
            "lower" => Some(Filter::Lower),
            "json" => Some(Filter::Json),
            _ => None,
        }
    }
}

/// Bytes as text, invalid UTF-8 replaced. Valid text (nearly always) is checked by
/// `str::from_utf8`, several times faster than `from_utf8_lossy`'s byte-wise walk; this runs
/// for every field of every event.
pub(crate) fn utf8(bytes: &[u8]) -> Cow<'_, str> {
    match std::str::from_utf8(bytes) {
        Ok(text) => Cow::Borrowed(text),
        Err(_) => String::from_utf8_lossy(bytes),
    }
}

/// The text a value renders as without filters: a JSON string's content, other JSON values
/// as compact JSON, NULL as nothing.
pub(crate) fn plain(value: Value<'_>) -> Cow<'_, str> {
    match value {
        Value::Null => Cow::Borrowed(""),
        Value::Text { bytes, .. } => utf8(bytes),
        Value::Json(serde_json::Value::String(text)) => Cow::Borrowed(text),
        Value::Json(serde_json::Value::Null) => Cow::Borrowed(""),
        Value::Json(json) => Cow::Owned(json.to_string()),
    }
}

/// Apply `filters` to `value`, appending the result to `out`.
pub(crate) fn apply(value: Value<'_>, filters: &[Filter], out: &mut String) {
    let Some((first, rest)) = filters.split_first() else {
        out.push_str(&plain(value));
        return;
    };
    // The first filter sees the value itself (json needs to know what it is); later ones
    // see the text the earlier ones made.
    let mut text = match first {
        Filter::Json => Cow::Owned(json(value)),
        other => transform(*other, plain(value)),
    };
    for filter in rest {
        text = match filter {
            Filter::Json => Cow::Owned(json_string(&text)),
            other => transform(*other, text),
        };
    }
    out.push_str(&text);
}

fn transform(filter: Filter, text: Cow<'_, str>) -> Cow<'_, str> {
    match filter {
        Filter::Short => {
            let after_dot = text.rsplit('.').next().unwrap_or_default();
            let short = after_dot.rsplit('+').next().unwrap_or_default();
            Cow::Owned(short.to_owned())
        }
        Filter::Namespace => match text.rfind('.') {
            Some(dot) => Cow::Owned(text[..dot].to_owned()),
            None => Cow::Borrowed(""),
        },
        Filter::Name => match text.rfind('.') {
            Some(dot) => Cow::Owned(text[dot + 1..].to_owned()),
            None => text,
        },
        Filter::Dash => Cow::Owned(text.replace('+', "-")),
        Filter::Lower => Cow::Owned(text.to_lowercase()),
        Filter::Json => Cow::Owned(json_string(&text)),
    }
}

fn json(value: Value<'_>) -> String {
    match value {
        Value::Null => "null".to_owned(),
        Value::Text { bytes, json: true } => String::from_utf8_lossy(bytes).into_owned(),
        Value::Text { bytes, json: false } => json_string(&String::from_utf8_lossy(bytes)),
        Value::Json(json) => json.to_string(),
    }
}

fn json_string(text: &str) -> String {
    serde_json::Value::from(text).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn utf8_borrows_valid_text_and_replaces_invalid_bytes() {
        assert!(matches!(
            utf8("ordre créé".as_bytes()),
            Cow::Borrowed("ordre créé")
        ));
        assert_eq!(utf8(b"a\xFFb"), "a\u{FFFD}b");
    }

    fn text(text: &str) -> Value<'_> {
        Value::Text {
            bytes: text.as_bytes(),
            json: false,
        }
    }

    fn run(value: Value<'_>, filters: &[Filter]) -> String {
        let mut out = String::new();
        apply(value, filters, &mut out);
        out
    }

    #[test]
    fn short_and_namespace_follow_dotnet_type_names() {
        let name = text("Ordering.API.Application.IntegrationEvents.OrderStartedIntegrationEvent");
        assert_eq!(run(name, &[Filter::Short]), "OrderStartedIntegrationEvent");
        assert_eq!(
            run(name, &[Filter::Namespace]),
            "Ordering.API.Application.IntegrationEvents"
        );
        assert_eq!(run(text("Shop.Events+Inner"), &[Filter::Short]), "Inner");
        assert_eq!(run(text("Plain"), &[Filter::Short]), "Plain");
        assert_eq!(run(text("Plain"), &[Filter::Namespace]), "");
        assert_eq!(run(text("A.B"), &[Filter::Short, Filter::Lower]), "b");
        let nested = text("Shop.Events.Outer+Inner");
        assert_eq!(run(nested, &[Filter::Name]), "Outer+Inner");
        assert_eq!(run(nested, &[Filter::Name, Filter::Dash]), "Outer-Inner");
        assert_eq!(run(nested, &[Filter::Namespace]), "Shop.Events");
    }

    #[test]
    fn json_knows_what_the_value_is() {
        assert_eq!(run(text(r#"say "hi""#), &[Filter::Json]), r#""say \"hi\"""#);
        let jsonb = Value::Text {
            bytes: br#"{"a": 1}"#,
            json: true,
        };
        assert_eq!(run(jsonb, &[Filter::Json]), r#"{"a": 1}"#);
        assert_eq!(run(Value::Null, &[Filter::Json]), "null");
        let inner = serde_json::json!({"n": [1, 2]});
        assert_eq!(run(Value::Json(&inner), &[Filter::Json]), r#"{"n":[1,2]}"#);
        assert_eq!(run(Value::Json(&inner), &[]), r#"{"n":[1,2]}"#);
        let string = serde_json::json!("x");
        assert_eq!(run(Value::Json(&string), &[]), "x");
        assert_eq!(run(Value::Json(&string), &[Filter::Json]), r#""x""#);
        assert_eq!(run(text("A.B"), &[Filter::Short, Filter::Json]), r#""B""#);
    }

    proptest! {
        #[test]
        fn json_filter_always_gives_valid_json(raw in any::<String>(), filters in proptest::collection::vec(0..5usize, 0..3)) {
            let mut chain: Vec<Filter> = filters
                .into_iter()
                .map(|i| [Filter::Short, Filter::Namespace, Filter::Name, Filter::Dash, Filter::Lower][i])
                .collect();
            chain.push(Filter::Json);
            let out = run(text(&raw), &chain);
            prop_assert!(serde_json::from_str::<serde_json::Value>(&out).is_ok(), "{}", out);
        }
    }
}
