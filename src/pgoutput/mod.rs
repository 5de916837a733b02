//! A pure decoder of pgoutput logical replication messages, protocol version 1: bytes in,
//! typed messages or an error out, never a panic and never I/O.
//!
//! The formats are PostgreSQL's "Streaming Replication Protocol"
//! (<https://www.postgresql.org/docs/current/protocol-replication.html>) and "Logical
//! Replication Message Formats"
//! (<https://www.postgresql.org/docs/current/protocol-logicalrep-message-formats.html>).
//! [`messages`] mirrors the second page message by message; below, one small function reads
//! each message. walbox receives Begin and Commit already framed by pgwire-replication, but
//! they are decoded here too, so this module can be tested and fuzzed on its own. Column
//! values are slices of the input buffer: a multi-megabyte payload is never copied here.

#[cfg(test)]
pub(crate) mod fixture;
pub mod messages;
mod reader;

use bytes::Bytes;

pub use messages::*;
use reader::Reader;

/// Why a message could not be decoded.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("empty message")]
    Empty,
    #[error("{message} message is truncated: {needed} more bytes needed, {remaining} left")]
    Truncated {
        message: &'static str,
        needed: usize,
        remaining: usize,
    },
    #[error("{message} message has an invalid length {length}")]
    InvalidLength { message: &'static str, length: i32 },
    #[error("{message} message has a string without its NUL terminator")]
    MissingTerminator { message: &'static str },
    #[error("{message} message has a string that is not UTF-8")]
    InvalidUtf8 { message: &'static str },
    #[error("{message} message has byte {found:#04x} where {expected} was expected")]
    UnexpectedByte {
        message: &'static str,
        found: u8,
        expected: &'static str,
    },
    #[error("{message} message has {count} bytes left over after its last field")]
    TrailingBytes { message: &'static str, count: usize },
}

/// Decode one pgoutput message (the payload of an XLogData message).
pub fn decode(data: &Bytes) -> Result<Message, DecodeError> {
    let tag = *data.first().ok_or(DecodeError::Empty)?;
    let message = match tag {
        b'B' => Message::Begin(begin(Reader::new("Begin", data, 1))?),
        b'C' => Message::Commit(commit(Reader::new("Commit", data, 1))?),
        b'O' => Message::Origin(origin(Reader::new("Origin", data, 1))?),
        b'R' => Message::Relation(relation(Reader::new("Relation", data, 1))?),
        b'Y' => Message::Type(type_message(Reader::new("Type", data, 1))?),
        b'I' => Message::Insert(insert(Reader::new("Insert", data, 1))?),
        b'U' => Message::Update(update(Reader::new("Update", data, 1))?),
        b'D' => Message::Delete(delete(Reader::new("Delete", data, 1))?),
        b'T' => Message::Truncate(truncate(Reader::new("Truncate", data, 1))?),
        b'M' => Message::Message(logical_message(Reader::new("Message", data, 1))?),
        _ => Message::Unknown {
            tag,
            body: data.slice(1..),
        },
    };
    Ok(message)
}

impl TryFrom<&Bytes> for Message {
    type Error = DecodeError;

    fn try_from(data: &Bytes) -> Result<Self, Self::Error> {
        decode(data)
    }
}

fn begin(mut r: Reader) -> Result<Begin, DecodeError> {
    let begin = Begin {
        final_lsn: r.lsn()?,
        commit_time_micros: r.i64()?,
        xid: r.u32()?,
    };
    r.finish()?;
    Ok(begin)
}

fn commit(mut r: Reader) -> Result<Commit, DecodeError> {
    let commit = Commit {
        flags: r.u8()?,
        commit_lsn: r.lsn()?,
        end_lsn: r.lsn()?,
        commit_time_micros: r.i64()?,
    };
    r.finish()?;
    Ok(commit)
}

fn origin(mut r: Reader) -> Result<Origin, DecodeError> {
    let origin = Origin {
        commit_lsn: r.lsn()?,
        name: r.string()?,
    };
    r.finish()?;
    Ok(origin)
}

fn relation(mut r: Reader) -> Result<Relation, DecodeError> {
    let relation_id = r.u32()?;
    let namespace = r.string()?;
    let name = r.string()?;
    let replica_identity = r.u8()?;
    let count = column_count(&mut r)?;
    let mut columns = Vec::with_capacity(count.min(1600));
    for _ in 0..count {
        columns.push(RelationColumn {
            flags: r.u8()?,
            name: r.string()?,
            type_oid: r.u32()?,
            type_modifier: r.i32()?,
        });
    }
    r.finish()?;
    Ok(Relation {
        relation_id,
        namespace,
        name,
        replica_identity,
        columns,
    })
}

fn type_message(mut r: Reader) -> Result<Type, DecodeError> {
    let type_message = Type {
        type_oid: r.u32()?,
        namespace: r.string()?,
        name: r.string()?,
    };
    r.finish()?;
    Ok(type_message)
}

fn insert(mut r: Reader) -> Result<Insert, DecodeError> {
    let relation_id = r.u32()?;
    expect(&mut r, b'N', "N (new tuple)")?;
    let new_tuple = tuple_data(&mut r)?;
    r.finish()?;
    Ok(Insert {
        relation_id,
        new_tuple,
    })
}

fn update(mut r: Reader) -> Result<Update, DecodeError> {
    let relation_id = r.u32()?;
    let mut old_key = None;
    let mut old_tuple = None;
    let new_tuple = loop {
        match r.u8()? {
            b'K' if old_key.is_none() && old_tuple.is_none() => old_key = Some(tuple_data(&mut r)?),
            b'O' if old_key.is_none() && old_tuple.is_none() => {
                old_tuple = Some(tuple_data(&mut r)?)
            }
            b'N' => break tuple_data(&mut r)?,
            found => {
                return Err(DecodeError::UnexpectedByte {
                    message: r.message(),
                    found,
                    expected: "K, O or N",
                });
            }
        }
    };
    r.finish()?;
    Ok(Update {
        relation_id,
        old_key,
        old_tuple,
        new_tuple,
    })
}

fn delete(mut r: Reader) -> Result<Delete, DecodeError> {
    let relation_id = r.u32()?;
    let (old_key, old_tuple) = match r.u8()? {
        b'K' => (Some(tuple_data(&mut r)?), None),
        b'O' => (None, Some(tuple_data(&mut r)?)),
        found => {
            return Err(DecodeError::UnexpectedByte {
                message: r.message(),
                found,
                expected: "K or O",
            });
        }
    };
    r.finish()?;
    Ok(Delete {
        relation_id,
        old_key,
        old_tuple,
    })
}

fn truncate(mut r: Reader) -> Result<Truncate, DecodeError> {
    let count = r.u32()?;
    let options = r.u8()?;
    let mut relation_ids = Vec::new();
    for _ in 0..count {
        relation_ids.push(r.u32()?);
    }
    r.finish()?;
    Ok(Truncate {
        options,
        relation_ids,
    })
}

fn logical_message(mut r: Reader) -> Result<LogicalMessage, DecodeError> {
    let message = LogicalMessage {
        flags: r.u8()?,
        lsn: r.lsn()?,
        prefix: r.string()?,
        content: r.sized_bytes()?,
    };
    r.finish()?;
    Ok(message)
}

/// TupleData: an Int16 column count, then one kind byte per column and, for text and binary
/// values, an Int32 length and the bytes.
fn tuple_data(r: &mut Reader) -> Result<TupleData, DecodeError> {
    let count = column_count(r)?;
    let mut columns = Vec::with_capacity(count.min(1600));
    for _ in 0..count {
        columns.push(match r.u8()? {
            b'n' => ColumnValue::Null,
            b'u' => ColumnValue::UnchangedToast,
            b't' => ColumnValue::Text(r.sized_bytes()?),
            b'b' => ColumnValue::Binary(r.sized_bytes()?),
            found => {
                return Err(DecodeError::UnexpectedByte {
                    message: r.message(),
                    found,
                    expected: "n, u, t or b",
                });
            }
        });
    }
    Ok(TupleData { columns })
}

fn column_count(r: &mut Reader) -> Result<usize, DecodeError> {
    let count = r.i16()?;
    usize::try_from(count).map_err(|_| DecodeError::InvalidLength {
        message: r.message(),
        length: i32::from(count),
    })
}

fn expect(r: &mut Reader, wanted: u8, expected: &'static str) -> Result<(), DecodeError> {
    match r.u8()? {
        found if found == wanted => Ok(()),
        found => Err(DecodeError::UnexpectedByte {
            message: r.message(),
            found,
            expected,
        }),
    }
}

#[cfg(test)]
mod tests;
