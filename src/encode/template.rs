//! The `template` encoding: `--body-template` rendered over the row (by the outbox side),
//! checked to be one JSON value, sent as `application/json`. For home-grown envelopes such as
//! `{"Id": {id|json}, "Content": {payload|json}}`.

use std::borrow::Cow;

use bytes::Bytes;

use super::{EncodeError, Encoded, Encoder, Event};

/// How much of a rendered body an error message quotes.
const EXCERPT: usize = 120;

#[derive(Debug)]
pub(crate) struct BodyTemplate;

impl Encoder for BodyTemplate {
    fn encode(&self, event: &Event<'_>) -> Result<Encoded, EncodeError> {
        let rendered = event.rendered_body.ok_or(EncodeError::Missing {
            encoding: "template",
            what: "a rendered body template",
        })?;
        if let Err(error) = serde_json::from_str::<serde::de::IgnoredAny>(rendered) {
            let mut end = rendered.len().min(EXCERPT);
            while !rendered.is_char_boundary(end) {
                end -= 1;
            }
            return Err(EncodeError::TemplateNotJson {
                problem: error.to_string(),
                excerpt: rendered[..end].to_owned(),
            });
        }
        Ok(Encoded {
            body: Bytes::copy_from_slice(rendered.as_bytes()),
            content_type: Cow::Borrowed("application/json"),
            headers: Vec::new(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::encode::PayloadKind;
    use crate::encode::testing::event;

    #[test]
    fn json_passes_and_anything_else_is_an_error() {
        let payload = Bytes::new();
        let mut event = event(&payload, PayloadKind::Json);
        event.rendered_body = Some(r#"{"Id": "1", "Content": "{\"a\":1}"}"#);
        let encoded = BodyTemplate.encode(&event).unwrap();
        assert_eq!(&encoded.body[..], br#"{"Id": "1", "Content": "{\"a\":1}"}"#);
        assert_eq!(encoded.content_type, "application/json");
        event.rendered_body = Some(r#"{"Id": 1, "Content": not json}"#);
        assert!(matches!(
            BodyTemplate.encode(&event),
            Err(EncodeError::TemplateNotJson { .. })
        ));
        event.rendered_body = Some(r#"{"a": 1} {"b": 2}"#);
        assert!(BodyTemplate.encode(&event).is_err());
    }
}
