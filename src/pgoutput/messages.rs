//! The pgoutput messages of protocol version 1, field by field as the PostgreSQL documentation
//! describes them ("Logical Replication Message Formats").

use bytes::Bytes;

use crate::lsn::Lsn;

/// One logical replication message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Message {
    Begin(Begin),
    Commit(Commit),
    Origin(Origin),
    Relation(Relation),
    Type(Type),
    Insert(Insert),
    Update(Update),
    Delete(Delete),
    Truncate(Truncate),
    Message(LogicalMessage),
    /// A message this decoder does not know (a newer protocol version); kept, not an error.
    Unknown {
        tag: u8,
        body: Bytes,
    },
}

/// `B`: the start of a transaction.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Begin {
    /// The LSN of the transaction's commit record.
    pub final_lsn: Lsn,
    /// Commit time, microseconds since 2000-01-01 00:00 UTC.
    pub commit_time_micros: i64,
    /// The transaction id.
    pub xid: u32,
}

/// `C`: the end of a transaction.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Commit {
    /// Unused; currently always 0.
    pub flags: u8,
    /// The LSN of the commit record.
    pub commit_lsn: Lsn,
    /// The end of the commit record. The next transaction's records start at or after it, so
    /// it is the position to confirm once the whole transaction is safe elsewhere.
    pub end_lsn: Lsn,
    /// Commit time, microseconds since 2000-01-01 00:00 UTC.
    pub commit_time_micros: i64,
}

/// `O`: the transaction came from another node through replication origin `name`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Origin {
    /// The commit LSN on the origin server.
    pub commit_lsn: Lsn,
    pub name: String,
}

/// `R`: the shape of a table, sent before the first change to it in a session and again after
/// it changes. Later changes refer to it by `relation_id`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Relation {
    /// The table's OID.
    pub relation_id: u32,
    /// Schema name; empty for pg_catalog.
    pub namespace: String,
    pub name: String,
    /// REPLICA IDENTITY setting: d (default), n (nothing), f (full), i (index).
    pub replica_identity: u8,
    pub columns: Vec<RelationColumn>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RelationColumn {
    /// 1 when the column is part of the replica identity key, else 0.
    pub flags: u8,
    pub name: String,
    /// The column's data type OID.
    pub type_oid: u32,
    /// The type modifier (atttypmod), -1 when none.
    pub type_modifier: i32,
}

/// `Y`: a non-builtin data type used by a following Relation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Type {
    pub type_oid: u32,
    /// Schema name; empty for pg_catalog.
    pub namespace: String,
    pub name: String,
}

/// `I`: a row was inserted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Insert {
    pub relation_id: u32,
    /// The new row (`N`).
    pub new_tuple: TupleData,
}

/// `U`: a row was updated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Update {
    pub relation_id: u32,
    /// The old key (`K`), present when the key changed and the identity is an index.
    pub old_key: Option<TupleData>,
    /// The whole old row (`O`), present with REPLICA IDENTITY FULL.
    pub old_tuple: Option<TupleData>,
    /// The new row (`N`).
    pub new_tuple: TupleData,
}

/// `D`: a row was deleted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Delete {
    pub relation_id: u32,
    /// The old key (`K`) with a key-based identity.
    pub old_key: Option<TupleData>,
    /// The whole old row (`O`) with REPLICA IDENTITY FULL.
    pub old_tuple: Option<TupleData>,
}

/// `T`: tables were truncated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Truncate {
    /// Bit 1: CASCADE; bit 2: RESTART IDENTITY.
    pub options: u8,
    pub relation_ids: Vec<u32>,
}

/// `M`: a message written with `pg_logical_emit_message`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogicalMessage {
    /// Bit 1: the message is transactional.
    pub flags: u8,
    /// The LSN of the message. PostgreSQL sends the *end* of the message's WAL record here
    /// (decode.c queues it with the record's end pointer), which can be the LSN of the next
    /// record: the next transaction's commit LSN, for one.
    pub lsn: Lsn,
    pub prefix: String,
    pub content: Bytes,
}

impl LogicalMessage {
    /// Written with `pg_logical_emit_message(true, …)`: part of its transaction, sent
    /// between its Begin and Commit, only if it commits.
    pub fn transactional(&self) -> bool {
        self.flags & 1 != 0
    }
}

/// The columns of one row, in the Relation's column order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TupleData {
    pub columns: Vec<ColumnValue>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ColumnValue {
    /// `n`: SQL NULL.
    Null,
    /// `u`: a TOASTed value that did not change (updates only); its bytes are not sent.
    UnchangedToast,
    /// `t`: the value in text format.
    Text(Bytes),
    /// `b`: the value in binary format (only when the binary option was requested).
    Binary(Bytes),
}
