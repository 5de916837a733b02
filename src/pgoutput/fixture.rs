//! Test fixtures: decoded Relation and row messages as the decoder would hand them over, for
//! the unit tests of the modules that read them (outbox, engine) and for the benchmarks.
//!
//! The library compiles it under `cfg(test)`; a benchmark includes the file with
//! `#[path = "../src/pgoutput/fixture.rs"] mod fixture;` beside
//! `use walbox::pgoutput::{ColumnValue, Relation, RelationColumn, TupleData};`, which is why
//! it names those types through `super`.

use bytes::Bytes;

use super::{ColumnValue, Relation, RelationColumn, TupleData};

/// Type OIDs of the test tables' columns (PostgreSQL's `pg_type.oid`).
pub(crate) mod oid {
    pub(crate) const BYTEA: u32 = 17;
    pub(crate) const TEXT: u32 = 25;
    pub(crate) const VARCHAR: u32 = 1043;
    pub(crate) const TIMESTAMPTZ: u32 = 1184;
    pub(crate) const UUID: u32 = 2950;
    pub(crate) const JSONB: u32 = 3802;
}

/// The relation id of the outbox table in the fixtures.
pub(crate) const RELATION_ID: u32 = 16_384;

/// Table `public.outbox` with these columns (name, type OID); `id`, when there, is the key.
pub(crate) fn relation(columns: &[(&str, u32)]) -> Relation {
    Relation {
        relation_id: RELATION_ID,
        namespace: "public".into(),
        name: "outbox".into(),
        replica_identity: b'd',
        columns: columns
            .iter()
            .map(|&(name, type_oid)| RelationColumn {
                flags: u8::from(name == "id"),
                name: name.into(),
                type_oid,
                type_modifier: -1,
            })
            .collect(),
    }
}

/// The outbox table of sql/outbox.sql.
pub(crate) fn outbox_relation() -> Relation {
    relation(&[
        ("id", oid::UUID),
        ("aggregate_type", oid::TEXT),
        ("aggregate_id", oid::TEXT),
        ("event_type", oid::TEXT),
        ("payload", oid::JSONB),
        ("headers", oid::JSONB),
        ("created_at", oid::TIMESTAMPTZ),
    ])
}

/// Column values in text format; None is NULL.
pub(crate) fn columns(values: &[Option<&str>]) -> Vec<ColumnValue> {
    values
        .iter()
        .map(|value| match value {
            Some(text) => ColumnValue::Text(Bytes::copy_from_slice(text.as_bytes())),
            None => ColumnValue::Null,
        })
        .collect()
}

/// A row in text format; None is NULL.
pub(crate) fn row(values: &[Option<&str>]) -> TupleData {
    TupleData {
        columns: columns(values),
    }
}

/// A row of [`outbox_relation`] with every column set: id `6f1c0d3e-…-000000000001`, aggregate
/// `order` `o-17`, event type `created`, payload `{"total": 12}`, these headers, created at
/// 2026-11-22 14:59:17.5 UTC.
pub(crate) fn outbox_row(headers: &str) -> TupleData {
    row(&[
        Some("6f1c0d3e-0000-4000-8000-000000000001"),
        Some("order"),
        Some("o-17"),
        Some("created"),
        Some(r#"{"total": 12}"#),
        Some(headers),
        Some("2026-11-22 14:59:17.5+00"),
    ])
}
