//! Which table each Relation message describes, and so which inserts are outbox events: the
//! only place where the apply step decides to drop an insert.
//!
//! pgoutput announces every table with a Relation message (its OID, schema, name and columns)
//! before the first change to it in a session, and again after it changed; an Insert names its
//! table only by that OID. An insert is relayed when its Relation is the outbox table, skipped
//! only when its Relation proved it is another table, and never silently otherwise:
//!
//! | Relation | what it is | what happens |
//! |---|---|---|
//! | the OID the session follows | the outbox (a rename keeps the OID; the guard stops on it) | relayed |
//! | a partition of the outbox (the guard's list) | rows written while `publish_via_partition_root` was off, or an inheritance child's | relayed: they are outbox rows |
//! | the outbox's name, another OID | the table was dropped and created again | followed if the publication covers it by name (FOR ALL TABLES, IN SCHEMA), else a definite stop |
//! | another name and OID, unknown to a guard reading at or past its commit | another table of the publication | skipped (the engine asks for that reading first: a partition or inheritance child made since is known to it) |
//! | never announced | a protocol violation | a definite stop |
//!
//! What cannot be proven here: a partition dropped since its rows were written with
//! `publish_via_partition_root` off looks like another table (the catalogs no longer know it).
//! walbox refuses to run without that option on a partitioned outbox, so such rows can only
//! come from before the option was turned on.

use std::collections::{HashMap, HashSet};

use tracing::{info, warn};

use super::guard::Outbox;
use crate::config::TableName;
use crate::error::Error;
use crate::lsn::Lsn;
use crate::outbox::{Mapping, OutboxShape};
use crate::pgoutput::Relation;

/// What a Relation message describes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    Outbox,
    /// A partition of the outbox published under its own name.
    Partition,
    /// A table with the outbox's name and another OID; `follow`: covered from its creation on.
    Recreated {
        follow: bool,
    },
    Other,
}

/// Classify a Relation. `named`: it carries the configured schema and name; `followed`: the
/// OID the session follows (the guard's, until a recreation is followed); `outbox`: the
/// guard's view (None: no guard, a replay without the catalogs' word).
pub(crate) fn classify(
    relation_id: u32,
    named: bool,
    followed: Option<u32>,
    outbox: Option<&Outbox>,
) -> Kind {
    if followed == Some(relation_id) {
        return Kind::Outbox;
    }
    if outbox.is_some_and(|outbox| outbox.partitions.contains(&relation_id)) {
        return Kind::Partition;
    }
    match (named, followed) {
        (true, None) => Kind::Outbox,
        (true, Some(_)) => Kind::Recreated {
            follow: outbox.is_some_and(|outbox| outbox.follows_recreation),
        },
        (false, _) => Kind::Other,
    }
}

/// The tables a session has been told about.
#[derive(Debug, Default)]
pub(crate) struct Tables {
    /// Outbox shapes by relation id: the table, partitions published under their own name,
    /// and a table followed after it was made anew.
    shapes: HashMap<u32, OutboxShape>,
    /// The OID of the outbox table the session follows.
    followed: Option<u32>,
    /// Relations proven to be other tables.
    others: HashSet<u32>,
}

impl Tables {
    /// Take in a Relation message. `commit_lsn`: of the transaction it arrived in, for errors.
    pub(crate) fn relation(
        &mut self,
        relation: &Relation,
        table: &TableName,
        mapping: &Mapping,
        outbox: Option<&Outbox>,
        commit_lsn: Option<Lsn>,
    ) -> Result<(), Error> {
        let named =
            relation.namespace == table.schema.as_str() && relation.name == table.name.as_str();
        let id = relation.relation_id;
        let followed = self.followed.or(outbox.map(|outbox| outbox.oid));
        let kind = classify(id, named, followed, outbox);
        let at = commit_lsn.map_or_else(|| "?".to_owned(), |lsn| lsn.to_string());
        match kind {
            Kind::Other => {
                self.others.insert(id);
                return Ok(());
            }
            Kind::Recreated { follow: false } => {
                return Err(Error::definite(format!(
                    "the outbox table {table} was dropped and created again: the transaction \
                     committed at {at} has rows of a table of that name with OID {id}, while \
                     walbox relayed OID {}. The publication covered the old table by itself \
                     (FOR TABLE), so rows of the new one committed before it was added to the \
                     publication were never published. walbox acknowledged nothing from this \
                     transaction on. Start walbox once with --start-lsn after this commit ({at}), \
                     then re-send the new table's rows committed before it with `walbox \
                     backfill` (see the docs' \"When the outbox table or the publication \
                     changes\")",
                    followed.unwrap_or_default()
                )));
            }
            Kind::Recreated { follow: true } => {
                info!(%table, before = followed.unwrap_or_default(), after = id,
                "decoding reaches the outbox table made anew; the publication covers it by name, so walbox follows it")
            }
            Kind::Partition => {
                warn!(%table, partition = %format!("{}.{}", relation.namespace, relation.name),
                "rows of a partition published under its own name (written while publish_via_partition_root was off): relaying them as the outbox's")
            }
            Kind::Outbox => {}
        }
        let shape = OutboxShape::from_relation(relation, mapping).map_err(|problem| {
            Error::definite(format!(
                "the outbox table changed so that it can no longer be relayed: {problem}. \
                 Nothing after this point was acknowledged"
            ))
        })?;
        self.others.remove(&id);
        self.shapes.insert(id, shape);
        if kind != Kind::Partition {
            self.followed = Some(id);
        }
        Ok(())
    }

    /// Whether `relation`, as `outbox` knows the table, is another table whose inserts would be
    /// skipped. The guard's list of partitions and children may be older than the commit
    /// the Relation comes with, so the engine asks for a newer one before believing that.
    pub(crate) fn would_skip(
        &self,
        relation: &Relation,
        table: &TableName,
        outbox: Option<&Outbox>,
    ) -> bool {
        let named =
            relation.namespace == table.schema.as_str() && relation.name == table.name.as_str();
        let followed = self.followed.or(outbox.map(|outbox| outbox.oid));
        classify(relation.relation_id, named, followed, outbox) == Kind::Other
    }

    /// The shape of an insert's table: Some to relay it, None for another table's.
    pub(crate) fn shape(&self, relation_id: u32) -> Result<Option<&OutboxShape>, Error> {
        if let Some(shape) = self.shapes.get(&relation_id) {
            return Ok(Some(shape));
        }
        // Its Relation named another table, and it is neither the outbox nor a partition of it.
        if self.others.contains(&relation_id) {
            return Ok(None);
        }
        Err(Error::definite(format!(
            "an insert arrived for relation {relation_id}, which no Relation message announced: \
             PostgreSQL's logical replication protocol sends one before a table's first change \
             in a session. walbox cannot tell whether it is the outbox and stops rather than \
             skip it; please report this with the server version"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pgoutput::fixture::{RELATION_ID, outbox_relation};

    fn outbox(follows_recreation: bool) -> Outbox {
        Outbox {
            oid: RELATION_ID,
            partitions: vec![500, 501],
            follows_recreation,
        }
    }

    fn table() -> TableName {
        TableName::parse("public.outbox").unwrap()
    }

    fn mapping() -> Mapping {
        Mapping::with_columns("outbox", "{aggregate_type}.{event_type}")
    }

    fn relation(id: u32, name: &str) -> Relation {
        Relation {
            relation_id: id,
            name: name.into(),
            ..outbox_relation()
        }
    }

    #[test]
    fn each_relation_is_classified_by_its_proof() {
        let guarded = outbox(false);
        let o = Some(&guarded);
        let id = RELATION_ID;
        assert_eq!(classify(id, true, Some(id), o), Kind::Outbox);
        assert_eq!(classify(id, false, Some(id), o), Kind::Outbox, "renamed");
        assert_eq!(classify(500, false, Some(id), o), Kind::Partition);
        assert_eq!(
            classify(9, true, Some(id), o),
            Kind::Recreated { follow: false }
        );
        let by_name = outbox(true);
        assert_eq!(
            classify(9, true, Some(id), Some(&by_name)),
            Kind::Recreated { follow: true }
        );
        assert_eq!(classify(9, false, Some(id), o), Kind::Other);
        // A replay without the guard: the first table of the outbox's name is the outbox,
        // another one later is a recreation it cannot prove lossless.
        assert_eq!(classify(9, true, None, None), Kind::Outbox);
        assert_eq!(
            classify(10, true, Some(9), None),
            Kind::Recreated { follow: false }
        );
    }

    #[test]
    fn an_insert_is_dropped_only_for_a_table_proven_to_be_another() {
        let mut tables = Tables::default();
        let guarded = outbox(false);
        let (table, mapping) = (table(), mapping());
        assert!(
            tables.shape(RELATION_ID).is_err(),
            "no Relation yet: a protocol violation, not a skip"
        );
        tables
            .relation(
                &relation(77, "audit"),
                &table,
                &mapping,
                Some(&guarded),
                None,
            )
            .unwrap();
        assert!(
            tables.shape(77).unwrap().is_none(),
            "another table: skipped"
        );
        tables
            .relation(
                &relation(RELATION_ID, "outbox"),
                &table,
                &mapping,
                Some(&guarded),
                None,
            )
            .unwrap();
        assert!(tables.shape(RELATION_ID).unwrap().is_some());
        tables
            .relation(
                &relation(501, "outbox_2025"),
                &table,
                &mapping,
                Some(&guarded),
                None,
            )
            .unwrap();
        assert!(
            tables.shape(501).unwrap().is_some(),
            "a partition's rows are relayed"
        );
        assert!(tables.shape(78).is_err(), "never announced");
    }

    #[test]
    fn a_recreated_table_is_followed_only_when_the_publication_covers_it_by_name() {
        let (table, mapping) = (table(), mapping());
        let mut tables = Tables::default();
        let error = tables
            .relation(
                &relation(9, "outbox"),
                &table,
                &mapping,
                Some(&outbox(false)),
                Some(Lsn(0x10)),
            )
            .unwrap_err();
        assert!(
            error.to_string().contains("dropped and created again"),
            "{error}"
        );
        assert!(!error.is_transient());
        assert!(tables.shape(9).is_err(), "nothing taken in");

        let mut tables = Tables::default();
        let by_name = outbox(true);
        tables
            .relation(
                &relation(RELATION_ID, "outbox"),
                &table,
                &mapping,
                Some(&by_name),
                None,
            )
            .unwrap();
        tables
            .relation(
                &relation(9, "outbox"),
                &table,
                &mapping,
                Some(&by_name),
                None,
            )
            .unwrap();
        assert!(tables.shape(9).unwrap().is_some());
        assert_eq!(tables.followed, Some(9));
    }
}
