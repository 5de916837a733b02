//! A cursor over one message's bytes that reads the protocol's field types and reports a short
//! or malformed message as an error instead of panicking.

use bytes::Bytes;

use super::DecodeError;
use crate::lsn::Lsn;

pub(super) struct Reader<'a> {
    message: &'static str,
    data: &'a Bytes,
    position: usize,
}

impl<'a> Reader<'a> {
    /// Read `data` from `position` on; `message` names the message in errors.
    pub(crate) fn new(message: &'static str, data: &'a Bytes, position: usize) -> Self {
        Reader {
            message,
            data,
            position,
        }
    }

    fn take(&mut self, needed: usize) -> Result<&'a [u8], DecodeError> {
        let remaining = self.data.len().saturating_sub(self.position);
        if needed > remaining {
            return Err(DecodeError::Truncated {
                message: self.message,
                needed,
                remaining,
            });
        }
        let start = self.position;
        self.position += needed;
        Ok(&self.data[start..self.position])
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], DecodeError> {
        let mut bytes = [0; N];
        bytes.copy_from_slice(self.take(N)?);
        Ok(bytes)
    }

    pub(crate) fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.array::<1>()?[0])
    }

    pub(crate) fn i16(&mut self) -> Result<i16, DecodeError> {
        Ok(i16::from_be_bytes(self.array()?))
    }

    pub(crate) fn i32(&mut self) -> Result<i32, DecodeError> {
        Ok(i32::from_be_bytes(self.array()?))
    }

    pub(crate) fn u32(&mut self) -> Result<u32, DecodeError> {
        Ok(u32::from_be_bytes(self.array()?))
    }

    pub(crate) fn i64(&mut self) -> Result<i64, DecodeError> {
        Ok(i64::from_be_bytes(self.array()?))
    }

    pub(crate) fn lsn(&mut self) -> Result<Lsn, DecodeError> {
        Ok(Lsn(u64::from_be_bytes(self.array()?)))
    }

    /// A NUL-terminated UTF-8 string.
    pub(crate) fn string(&mut self) -> Result<String, DecodeError> {
        let rest = &self.data[self.position.min(self.data.len())..];
        let end = rest
            .iter()
            .position(|&b| b == 0)
            .ok_or(DecodeError::MissingTerminator {
                message: self.message,
            })?;
        let text = std::str::from_utf8(&rest[..end])
            .map_err(|_| DecodeError::InvalidUtf8 {
                message: self.message,
            })?
            .to_owned();
        self.position += end + 1;
        Ok(text)
    }

    /// An Int32 length followed by that many bytes, shared with the input (no copy).
    pub(crate) fn sized_bytes(&mut self) -> Result<Bytes, DecodeError> {
        let length = self.i32()?;
        let length = usize::try_from(length).map_err(|_| DecodeError::InvalidLength {
            message: self.message,
            length,
        })?;
        let start = self.position;
        self.take(length)?;
        Ok(self.data.slice(start..start + length))
    }

    /// Fail if anything is left: leftover bytes mean the message was misread.
    pub(crate) fn finish(self) -> Result<(), DecodeError> {
        let count = self.data.len().saturating_sub(self.position);
        if count > 0 {
            return Err(DecodeError::TrailingBytes {
                message: self.message,
                count,
            });
        }
        Ok(())
    }

    pub(crate) fn message(&self) -> &'static str {
        self.message
    }
}
