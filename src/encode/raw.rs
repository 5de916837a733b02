//! The `raw` encoding: the payload bytes as they are, with the content type of the payload
//! column's type (walbox's own message contract).

use std::borrow::Cow;

use super::{EncodeError, Encoded, Encoder, Event};

#[derive(Debug)]
pub(crate) struct Raw;

impl Encoder for Raw {
    fn encode(&self, event: &Event<'_>) -> Result<Encoded, EncodeError> {
        Ok(Encoded {
            body: event.payload.clone(),
            content_type: Cow::Borrowed(event.payload_kind.content_type()),
            headers: Vec::new(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::encode::PayloadKind;
    use crate::encode::testing::event;
    use bytes::Bytes;

    #[test]
    fn the_payload_goes_as_it_is() {
        let payload = Bytes::from_static(b"\x00\xffnot json");
        let encoded = Raw.encode(&event(&payload, PayloadKind::Bytes)).unwrap();
        assert_eq!(encoded.body, payload);
        assert_eq!(encoded.content_type, "application/octet-stream");
        assert!(encoded.headers.is_empty());
    }
}
