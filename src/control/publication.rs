//! The publication and the outbox table as the catalogs show them, read together with the WAL
//! position the reading holds for ([`Reading`]); what must be true of them for every outbox
//! insert to reach walbox ([`Problem`]); and what may not change while walbox relays
//! ([`Pinned`], [`Change`]). `setup` and `run` check a reading before streaming; the guard
//! (engine/guard.rs) compares one with the pinned state once a period.
//!
//! # Why each condition
//!
//! pgoutput sends walbox an insert only if, at the insert's place in the WAL, the publication
//! exists, publishes inserts, covers the table (`FOR TABLE`, `FOR TABLES IN SCHEMA` or
//! `FOR ALL TABLES`), lets the row through its row filter and keeps the mapped columns in its
//! column list. A partition's rows carry the partitioned table's name only with
//! `publish_via_partition_root`. An UNLOGGED table (or partition) writes no WAL, and a foreign
//! partition stores its rows on another server. Any of these failing drops rows without a
//! word, so each is a [`Problem`].
//!
//! # What a reading holds for
//!
//! A reading is two statements on one connection: first `pg_current_wal_lsn()` (the position
//! L), then the catalogs in a fresh snapshot. A DDL transaction whose commit record lies before
//! L had changed the catalog rows before L was read, so the catalog statement sees either its
//! result, or the old row version with the DDL's xid in `xmax` still in progress for this
//! snapshot (a commit waiting for a synchronous standby is in that state). That second case
//! is *pending*: the reading proves nothing until the transaction ended. A reading without
//! pending rows, unchanged from the pinned state, proves the configuration for every commit
//! before L; a DDL committed at or after L only affects commits after it.

use std::collections::BTreeSet;
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::Deserialize;

use super::Control;
use crate::config::{Identifier, TableName};
use crate::error::{Error, Result};
use crate::lsn::Lsn;
use crate::outbox::{Mapping, OutboxShape};
use crate::pgoutput::Relation;
use crate::source::Origin;

/// One catalog row version: its OID and the transaction that wrote it. A row written again
/// (an ALTER, a DROP and ADD) gets another xmin, a row made again another OID.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize)]
pub(crate) struct RowVersion {
    pub(crate) oid: u32,
    pub(crate) xmin: u32,
}

/// The publication's `pg_publication` row.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub(crate) struct PublicationRow {
    #[serde(flatten)]
    pub(crate) version: RowVersion,
    pub(crate) all_tables: bool,
    pub(crate) insert: bool,
    pub(crate) update: bool,
    pub(crate) delete: bool,
    pub(crate) truncate: bool,
    pub(crate) via_root: bool,
    /// An unfinished transaction is changing or dropping it.
    pub(crate) pending: bool,
}

impl PublicationRow {
    /// The `publish` list, as `ALTER PUBLICATION … SET (publish = …)` takes it.
    fn publish(&self) -> Vec<&'static str> {
        [
            (self.insert, "insert"),
            (self.update, "update"),
            (self.delete, "delete"),
            (self.truncate, "truncate"),
        ]
        .into_iter()
        .filter_map(|(on, name)| on.then_some(name))
        .collect()
    }

    /// The options as `CREATE PUBLICATION … WITH` writes them, for naming a change.
    fn options(&self) -> String {
        format!(
            "publish = '{}', publish_via_partition_root = {}",
            self.publish().join(", "),
            self.via_root
        )
    }
}

/// The table the configured name resolves to (`pg_class`).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub(crate) struct TableRow {
    pub(crate) oid: u32,
    /// `relkind`: r (table), p (partitioned table), v, m, f, …
    pub(crate) kind: String,
    pub(crate) pending: bool,
}

/// The table's `pg_publication_rel` row in the publication.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub(crate) struct MembershipRow {
    #[serde(flatten)]
    pub(crate) version: RowVersion,
    pub(crate) row_filter: bool,
    /// The column list's column names; None publishes every column.
    pub(crate) columns: Option<Vec<String>>,
    pub(crate) pending: bool,
}

/// The `pg_publication_namespace` row of the table's schema in the publication.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub(crate) struct SchemaRow {
    #[serde(flatten)]
    pub(crate) version: RowVersion,
    pub(crate) pending: bool,
}

/// The table or one of its partitions (at any depth).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub(crate) struct Member {
    pub(crate) oid: u32,
    /// schema.name
    pub(crate) name: String,
    pub(crate) kind: String,
    /// `relpersistence`: p (permanent), u (unlogged), t (temporary).
    pub(crate) persistence: String,
    pub(crate) pending: bool,
    /// pgoutput sends its inserts: it is the table, a declarative partition (published
    /// through the root), or an inheritance child the publication covers in its own right.
    pub(crate) covered: bool,
}

/// The catalogs about the publication and the table, and the WAL position they hold for.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub(crate) struct Reading {
    /// Read before the catalogs: see the module doc.
    #[serde(skip, default)]
    pub(crate) wal: Lsn,
    /// The database's clock when `wal` was read.
    #[serde(skip, default)]
    pub(crate) at: String,
    /// The server the reading was taken on (cluster and timeline): a proof holds only for
    /// the server history it was read on.
    #[serde(skip, default)]
    pub(crate) origin: Option<Origin>,
    pub(crate) publication: Option<PublicationRow>,
    pub(crate) table: Option<TableRow>,
    /// The current schema.name of the table pinned earlier (None: it is gone, or none).
    pub(crate) pinned_name: Option<String>,
    pub(crate) relations: Vec<MembershipRow>,
    pub(crate) schemas: Vec<SchemaRow>,
    /// The table first, then its partitions.
    pub(crate) members: Vec<Member>,
    /// The partitioned table (schema.name) whose rows pgoutput publishes the table's rows as:
    /// the table is a partition, the publication covers an ancestor of it and publishes via
    /// the root. None: its rows are published as its own.
    #[serde(default)]
    pub(crate) published_as: Option<String>,
}

/// Why the table's inserts would not all reach walbox.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Problem {
    NoPublication,
    NoTable,
    NotATable {
        kind: String,
    },
    NotCovered,
    NoInserts {
        publish: Vec<&'static str>,
    },
    NotViaRoot,
    RowFilter,
    ColumnList {
        columns: Vec<String>,
        why: String,
    },
    Unlogged {
        name: String,
    },
    Foreign {
        name: String,
    },
    /// An inheritance child (`INHERITS`) the publication does not cover itself.
    ChildNotCovered {
        name: String,
    },
    /// The table is a partition whose rows are published as an ancestor's.
    PublishedAsAncestor {
        ancestor: String,
    },
}

/// How the publication covers the table. A witness that lasts from one reading to the next
/// covered the table in between: its row was neither removed nor written again.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Witness {
    /// `FOR ALL TABLES` (the publication row itself is pinned).
    AllTables,
    /// `FOR TABLE`: the table's `pg_publication_rel` row.
    Table(RowVersion),
    /// `FOR TABLES IN SCHEMA`: the schema's `pg_publication_namespace` row.
    Schema(RowVersion),
}

impl Witness {
    /// Covers whatever table carries the name, not one table: a table dropped and created
    /// again is covered from the moment it exists.
    fn covers_by_name(self) -> bool {
        !matches!(self, Witness::Table(_))
    }
}

impl Reading {
    /// Every way the publication covers the table.
    pub(crate) fn witnesses(&self) -> BTreeSet<Witness> {
        let all = self
            .publication
            .as_ref()
            .filter(|publication| publication.all_tables)
            .map(|_| Witness::AllTables);
        let tables = self.relations.iter().map(|row| Witness::Table(row.version));
        let schemas = self.schemas.iter().map(|row| Witness::Schema(row.version));
        all.into_iter().chain(tables).chain(schemas).collect()
    }

    fn partitioned(&self) -> bool {
        self.table.as_ref().is_some_and(|table| table.kind == "p")
    }

    /// The partitions of the table (without the table itself).
    pub(crate) fn partitions(&self) -> Vec<u32> {
        let table = self.table.as_ref().map(|table| table.oid);
        self.members
            .iter()
            .map(|member| member.oid)
            .filter(|oid| Some(*oid) != table)
            .collect()
    }

    /// What keeps inserts from reaching walbox. `column_list` says whether a column list
    /// keeps every mapped column (Err: why not).
    pub(crate) fn problems(
        &self,
        column_list: impl Fn(&[String]) -> Result<(), String>,
    ) -> Vec<Problem> {
        let Some(publication) = &self.publication else {
            return vec![Problem::NoPublication];
        };
        let Some(table) = &self.table else {
            return vec![Problem::NoTable];
        };
        if table.kind != "r" && table.kind != "p" {
            return vec![Problem::NotATable {
                kind: table.kind.clone(),
            }];
        }
        let mut problems = Vec::new();
        if let Some(ancestor) = &self.published_as {
            problems.push(Problem::PublishedAsAncestor {
                ancestor: ancestor.clone(),
            });
        }
        if self.witnesses().is_empty() {
            problems.push(Problem::NotCovered);
        }
        if !publication.insert {
            problems.push(Problem::NoInserts {
                publish: publication.publish(),
            });
        }
        if self.partitioned() && !publication.via_root {
            problems.push(Problem::NotViaRoot);
        }
        for row in &self.relations {
            if row.row_filter {
                problems.push(Problem::RowFilter);
            }
            if let Some(columns) = &row.columns
                && let Err(why) = column_list(columns)
            {
                problems.push(Problem::ColumnList {
                    columns: columns.clone(),
                    why,
                });
            }
        }
        problems.extend(self.members.iter().filter_map(Self::member_problem));
        problems
    }

    fn member_problem(member: &Member) -> Option<Problem> {
        let name = member.name.clone();
        if member.kind == "f" {
            Some(Problem::Foreign { name })
        } else if member.persistence != "p" {
            Some(Problem::Unlogged { name })
        } else if !member.covered {
            Some(Problem::ChildNotCovered { name })
        } else {
            None
        }
    }

    /// What an unfinished transaction is changing, if anything.
    pub(crate) fn pending(&self) -> Option<String> {
        let mut what = Vec::new();
        if self.publication.as_ref().is_some_and(|p| p.pending) {
            what.push("the publication".to_owned());
        }
        if self.table.as_ref().is_some_and(|t| t.pending) {
            what.push("the table".to_owned());
        }
        if self.relations.iter().any(|row| row.pending) {
            what.push("the table's membership in the publication".to_owned());
        }
        if self.schemas.iter().any(|row| row.pending) {
            what.push("the schema's membership in the publication".to_owned());
        }
        what.extend(
            self.members
                .iter()
                .filter(|member| member.pending)
                .map(|member| format!("table {}", member.name)),
        );
        (!what.is_empty()).then(|| what.join(", "))
    }
}

/// The names a message about the publication and the table needs.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Names<'a> {
    pub(crate) publication: &'a Identifier,
    pub(crate) table: &'a TableName,
}

impl Problem {
    /// What is wrong and the statement that fixes it.
    pub(crate) fn explain(&self, names: Names<'_>) -> String {
        let (p, t) = (names.publication, names.table);
        let (pq, tq) = (p.quoted(), t.quoted());
        let recreate_membership = format!(
            "BEGIN; ALTER PUBLICATION {pq} DROP TABLE {tq}; ALTER PUBLICATION {pq} ADD TABLE \
             {tq}; COMMIT;"
        );
        match self {
            Problem::NoPublication => format!(
                "publication {p} does not exist. `walbox setup` creates it, or have the table's \
                 owner run `CREATE PUBLICATION {pq} FOR TABLE {tq} WITH (publish = 'insert', \
                 publish_via_partition_root = true)`"
            ),
            Problem::NoTable => format!(
                "table {t} does not exist in this database. Create it (sql/outbox.sql has the \
                 default shape) or point --table at your outbox table"
            ),
            Problem::NotATable { kind } => format!(
                "{t} is not a table (relkind '{kind}'): only a table's or a partitioned table's \
                 inserts are written to the WAL as rows of it. Point --table at the table"
            ),
            Problem::NotCovered => format!(
                "publication {p} exists but does not include {t}. Run `ALTER PUBLICATION {pq} \
                 ADD TABLE {tq}` or choose another --publication"
            ),
            Problem::NoInserts { publish } => {
                let mut fixed = publish.clone();
                fixed.push("insert");
                format!(
                    "publication {p} does not publish inserts (publish = '{}'), so PostgreSQL \
                     would send walbox none of {t}'s rows. Run `ALTER PUBLICATION {pq} SET \
                     (publish = '{}')`",
                    publish.join(", "),
                    fixed.join(", ")
                )
            }
            Problem::NotViaRoot => format!(
                "table {t} is partitioned and publication {p} publishes each partition's rows \
                 under the partition's own name (publish_via_partition_root is off). `walbox \
                 setup` turns it on when its role owns the publication; or run `ALTER \
                 PUBLICATION {pq} SET (publish_via_partition_root = true)`"
            ),
            Problem::RowFilter => format!(
                "publication {p} publishes only the rows of {t} that pass a row filter (WHERE): \
                 walbox would never see the others. Publish every row: `{recreate_membership}`"
            ),
            Problem::ColumnList { columns, why } => format!(
                "publication {p} publishes only columns ({}) of {t}: {why}. Publish every \
                 column: `{recreate_membership}`",
                columns.join(", ")
            ),
            Problem::Unlogged { name } => format!(
                "table {name} is UNLOGGED: its rows are not written to the WAL, so walbox never \
                 sees them. Run `ALTER TABLE {} SET LOGGED`",
                quote_qualified(name)
            ),
            Problem::Foreign { name } => format!(
                "partition {name} of {t} is a foreign table: rows routed to it are stored on \
                 another server and never reach this server's WAL. Detach it: `ALTER TABLE {tq} \
                 DETACH PARTITION {}`",
                quote_qualified(name)
            ),
            Problem::PublishedAsAncestor { ancestor } => format!(
                "table {t} is a partition of {ancestor}, and publication {p} covers {ancestor} \
                 with publish_via_partition_root on, so PostgreSQL publishes {t}'s rows as rows \
                 of {ancestor}, never as {t}'s. Point --table at {ancestor} (every partition's \
                 rows are then events), or relay {t} through a publication of its own: \
                 `CREATE PUBLICATION ... FOR TABLE {tq} WITH (publish = 'insert')`"
            ),
            Problem::ChildNotCovered { name } => format!(
                "table {name} inherits from {t} (INHERITS), so its rows are rows of {t}, but \
                 publication {p} does not cover {name} itself (pgoutput publishes a child's \
                 rows only then; FOR TABLE adds the children that exist when it runs, not later \
                 ones), so walbox would never see them. Run `ALTER PUBLICATION {pq} ADD TABLE \
                 {}` in the transaction that creates such a child, or, if its rows are not \
                 events, `ALTER TABLE {} NO INHERIT {tq}`",
                quote_qualified(name),
                quote_qualified(name)
            ),
        }
    }
}

/// `schema.name` (as the catalogs gave it) quoted for SQL.
fn quote_qualified(name: &str) -> String {
    let (schema, table) = name.split_once('.').unwrap_or(("public", name));
    format!(
        "\"{}\".\"{}\"",
        schema.replace('"', "\"\""),
        table.replace('"', "\"\"")
    )
}

/// What changed since the pinned reading, in a way that can lose rows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Change {
    PublicationDropped,
    PublicationRecreated,
    PublicationAltered { before: String, after: String },
    TableDropped,
    TableRenamed { to: String },
    TableRecreated { before: u32, after: u32 },
    RemovedFromPublication,
    Problem(Problem),
}

impl Change {
    pub(crate) fn explain(&self, names: Names<'_>) -> String {
        let (p, t) = (names.publication, names.table);
        match self {
            Change::PublicationDropped => format!("publication {p} was dropped"),
            Change::PublicationRecreated => {
                format!("publication {p} was dropped and created again")
            }
            Change::PublicationAltered { before, after } if before == after => format!(
                "publication {p} was altered (its options read the same now: `{after}`; an \
                 option changed and changed back, or its owner or name changed)"
            ),
            Change::PublicationAltered { before, after } => {
                format!("publication {p} was altered: `{before}` became `{after}`")
            }
            Change::TableDropped => format!("table {t} was dropped"),
            Change::TableRenamed { to } => format!("table {t} was renamed to {to}"),
            Change::TableRecreated { before, after } => format!(
                "table {t} was dropped and created again (OID {before} became {after}), and \
                 publication {p} covered the old table by itself (FOR TABLE), so rows of the \
                 new one were not published until it was added"
            ),
            Change::RemovedFromPublication => {
                format!("table {t} was removed from publication {p}")
            }
            Change::Problem(problem) => problem.explain(names),
        }
    }
}

/// What a reading says compared with the pinned state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Nothing that matters changed: the configuration held through the reading's WAL
    /// position. The pinned state to compare the next reading with.
    Holds(Pinned),
    /// An unfinished transaction changes what was read: nothing is proven yet.
    Pending(String),
    Changed(Change),
}

/// The state of the first reading that passed, as far as it must stay.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Pinned {
    publication: PublicationRow,
    /// The OID of the table the name resolves to.
    table: u32,
    /// The witnesses that lasted through every reading since.
    witnesses: BTreeSet<Witness>,
}

impl Pinned {
    /// Pin a reading that has no problem and no pending row.
    pub(crate) fn pin(reading: &Reading) -> Option<Pinned> {
        Some(Pinned {
            publication: reading.publication.clone()?,
            table: reading.table.as_ref()?.oid,
            witnesses: reading.witnesses(),
        })
    }

    pub(crate) fn table(&self) -> u32 {
        self.table
    }

    /// Whether a table of the same name made anew is covered from its creation on (the
    /// publication covers it by name: FOR ALL TABLES or FOR TABLES IN SCHEMA).
    pub(crate) fn follows_recreation(&self) -> bool {
        self.witnesses
            .iter()
            .any(|witness| witness.covers_by_name())
    }

    /// Compare a later reading with this state.
    pub(crate) fn judge(
        &self,
        reading: &Reading,
        column_list: impl Fn(&[String]) -> Result<(), String>,
    ) -> Verdict {
        if let Err(change) = self.same_publication(reading) {
            return Verdict::Changed(change);
        }
        let table = match self.same_table(reading) {
            Ok(table) => table,
            Err(change) => return Verdict::Changed(change),
        };
        let witnesses: BTreeSet<Witness> = self
            .witnesses
            .intersection(&reading.witnesses())
            .copied()
            .collect();
        if witnesses.is_empty() {
            return Verdict::Changed(Change::RemovedFromPublication);
        }
        if let Some(problem) = reading.problems(column_list).into_iter().next() {
            return Verdict::Changed(Change::Problem(problem));
        }
        if let Some(what) = reading.pending() {
            return Verdict::Pending(what);
        }
        Verdict::Holds(Pinned {
            publication: self.publication.clone(),
            table,
            witnesses,
        })
    }

    fn same_publication(&self, reading: &Reading) -> Result<(), Change> {
        let Some(now) = &reading.publication else {
            return Err(Change::PublicationDropped);
        };
        if now.version.oid != self.publication.version.oid {
            return Err(Change::PublicationRecreated);
        }
        if now.version.xmin != self.publication.version.xmin {
            return Err(Change::PublicationAltered {
                before: self.publication.options(),
                after: now.options(),
            });
        }
        Ok(())
    }

    /// The table the name resolves to now, if it is the pinned one or one made anew that the
    /// publication covers from its creation on.
    fn same_table(&self, reading: &Reading) -> Result<u32, Change> {
        let renamed = || {
            reading
                .pinned_name
                .clone()
                .map(|to| Change::TableRenamed { to })
        };
        let Some(table) = &reading.table else {
            return Err(renamed().unwrap_or(Change::TableDropped));
        };
        if table.oid == self.table {
            return Ok(table.oid);
        }
        if let Some(change) = renamed() {
            return Err(change);
        }
        let lasting = self
            .witnesses
            .intersection(&reading.witnesses())
            .any(|witness| witness.covers_by_name());
        if lasting {
            Ok(table.oid)
        } else {
            Err(Change::TableRecreated {
                before: self.table,
                after: table.oid,
            })
        }
    }
}

impl fmt::Display for Witness {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Witness::AllTables => f.write_str("FOR ALL TABLES"),
            Witness::Table(_) => f.write_str("FOR TABLE"),
            Witness::Schema(_) => f.write_str("FOR TABLES IN SCHEMA"),
        }
    }
}

/// Whether a column list keeps every column the mapping reads: the table's description cut
/// down to the list must still give an outbox shape. Without a description (no column list)
/// there is nothing to check.
pub(crate) fn columns_kept(
    description: Option<Relation>,
    mapping: Mapping,
) -> impl Fn(&[String]) -> Result<(), String> {
    move |columns| {
        let Some(description) = &description else {
            return Ok(());
        };
        let mut published = description.clone();
        published
            .columns
            .retain(|column| columns.contains(&column.name));
        OutboxShape::from_relation(&published, &mapping)
            .map(|_| ())
            .map_err(|problem| problem.to_string())
    }
}

/// `column <> '0' AND NOT visible`: the row version's xmax names a transaction that this
/// statement's snapshot still sees as running (a change or a lock not finished). The 32-bit
/// xid is widened to the xid8 nearest the snapshot's xmax; xids from before the wrap are
/// vacuumed away long before they could be mistaken.
fn pending(xmax: &str) -> String {
    format!(
        "({xmax}::text <> '0' AND NOT pg_visible_in_snapshot(GREATEST(snap.x + \
         ({xmax}::text::bigint - snap.x % 4294967296 + 6442450944) % 4294967296 - 2147483648, \
         0)::text::xid8, snap.s))"
    )
}

/// The catalog statement of a reading. $1 publication, $2 schema, $3 table, $4 the pinned
/// table's OID (0: none). `schemas`: the server has `pg_publication_namespace` (15 and later).
fn reading_sql(schemas: bool) -> String {
    let schema_rows = if schemas {
        format!(
            "(SELECT jsonb_agg(jsonb_build_object('oid', s.oid::int8, 'xmin', \
             s.xmin::text::int8, 'pending', {})) FROM pg_publication_namespace s, pub, tab, snap \
             WHERE s.pnpubid = pub.oid AND s.pnnspid = tab.relnamespace)",
            pending("s.xmax")
        )
    } else {
        "NULL::jsonb".to_owned()
    };
    // An inheritance child's rows are published only when the publication covers the child
    // itself; a declarative partition's go through the root (publish_via_partition_root).
    let child_in_schema = if schemas {
        " OR EXISTS (SELECT 1 FROM pg_publication_namespace s, pub \
           WHERE s.pnpubid = pub.oid AND s.pnnspid = c.relnamespace)"
    } else {
        ""
    };
    // pgoutput publishes a partition's rows as its topmost ancestor the publication covers,
    // when the publication publishes via the root (get_rel_sync_entry).
    let ancestor_in_schema = if schemas {
        " OR EXISTS (SELECT 1 FROM pg_publication_namespace s \
           WHERE s.pnpubid = pub.oid AND s.pnnspid = c.relnamespace)"
    } else {
        ""
    };
    format!(
        "WITH RECURSIVE \
         snap AS (SELECT pg_current_snapshot() AS s, \
                  pg_snapshot_xmax(pg_current_snapshot())::text::bigint AS x), \
         tab AS (SELECT c.oid, c.relkind, c.relnamespace, {tab_pending} AS pending \
                 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace, snap \
                 WHERE n.nspname = $2 AND c.relname = $3), \
         pub AS (SELECT p.*, p.xmin, {pub_pending} AS pending FROM pg_publication p, snap \
                 WHERE p.pubname = $1), \
         tree(oid) AS (SELECT oid FROM tab \
                 UNION SELECT i.inhrelid FROM pg_inherits i JOIN tree ON i.inhparent = tree.oid), \
         rel AS (SELECT r.*, r.xmin, {rel_pending} AS pending FROM pg_publication_rel r, pub, tab, snap \
                 WHERE r.prpubid = pub.oid AND r.prrelid = tab.oid) \
         SELECT jsonb_build_object( \
           'publication', (SELECT jsonb_build_object('oid', oid::int8, 'xmin', xmin::text::int8, \
              'all_tables', puballtables, 'insert', pubinsert, 'update', pubupdate, \
              'delete', pubdelete, 'truncate', pubtruncate, 'via_root', pubviaroot, \
              'pending', pending) FROM pub), \
           'table', (SELECT jsonb_build_object('oid', oid::int8, 'kind', relkind, \
              'pending', pending) FROM tab), \
           'pinned_name', (SELECT n.nspname || '.' || c.relname FROM pg_class c \
              JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = $4::int8::oid), \
           'relations', COALESCE((SELECT jsonb_agg(jsonb_build_object('oid', r.oid::int8, \
              'xmin', r.xmin::text::int8, 'pending', r.pending, \
              'row_filter', to_jsonb(r) ->> 'prqual' IS NOT NULL, \
              'columns', CASE WHEN jsonb_typeof(to_jsonb(r) -> 'prattrs') = 'array' THEN \
                 to_jsonb(ARRAY(SELECT a.attname::text FROM pg_attribute a \
                   WHERE a.attrelid = r.prrelid AND a.attnum IN \
                   (SELECT jsonb_array_elements_text(to_jsonb(r) -> 'prattrs')::int2) \
                   ORDER BY a.attnum)) END)) FROM rel r), '[]'), \
           'schemas', COALESCE({schema_rows}, '[]'), \
           'published_as', (SELECT n.nspname || '.' || c.relname \
              FROM pg_partition_ancestors((SELECT oid FROM tab)) WITH ORDINALITY a(relid, depth) \
              JOIN pg_class c ON c.oid = a.relid JOIN pg_namespace n ON n.oid = c.relnamespace, pub \
              WHERE a.relid <> (SELECT oid FROM tab) AND pub.pubviaroot \
                AND (pub.puballtables OR EXISTS (SELECT 1 FROM pg_publication_rel r \
                  WHERE r.prpubid = pub.oid AND r.prrelid = a.relid){ancestor_in_schema}) \
              ORDER BY a.depth DESC LIMIT 1), \
           'members', COALESCE((SELECT jsonb_agg(jsonb_build_object('oid', c.oid::int8, \
              'name', n.nspname || '.' || c.relname, 'kind', c.relkind, \
              'persistence', c.relpersistence, 'pending', {member_pending}, \
              'covered', c.oid = (SELECT oid FROM tab) OR c.relispartition \
                OR COALESCE((SELECT puballtables FROM pub), false) \
                OR EXISTS (SELECT 1 FROM pg_publication_rel r, pub \
                  WHERE r.prpubid = pub.oid AND r.prrelid = c.oid){child_in_schema}) \
              ORDER BY c.oid <> (SELECT oid FROM tab), c.oid) \
              FROM tree JOIN pg_class c ON c.oid = tree.oid \
              JOIN pg_namespace n ON n.oid = c.relnamespace, snap), '[]'))::text",
        tab_pending = pending("c.xmax"),
        pub_pending = pending("p.xmax"),
        rel_pending = pending("r.xmax"),
        member_pending = pending("c.xmax"),
    )
}

impl Control {
    /// Name this session (pg_stat_activity's application_name) and bound each statement.
    pub(crate) async fn name_session(&self, name: &str, timeout: Duration) -> Result<()> {
        self.client
            .query_one(
                "SELECT set_config('application_name', $1, false), \
                 set_config('statement_timeout', $2, false)",
                &[&name, &format!("{}ms", timeout.as_millis())],
            )
            .await
            .map_err(Self::sql_error("setting up the guard's session"))?;
        Ok(())
    }

    /// Read the publication and the table, with the WAL position the reading holds for.
    /// `pinned`: the table pinned earlier, to tell where it went if the name moved on.
    pub(crate) async fn read_catalog(
        &self,
        names: Names<'_>,
        pinned: Option<u32>,
    ) -> Result<Reading> {
        let position = self
            .client
            .query_one(
                "SELECT CASE WHEN NOT pg_is_in_recovery() THEN pg_current_wal_lsn()::text END, \
                 clock_timestamp()::text, current_setting('server_version_num')::int, \
                 (SELECT system_identifier::text FROM pg_control_system()), \
                 CASE WHEN NOT pg_is_in_recovery() \
                 THEN substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8) END",
                &[],
            )
            .await
            .map_err(Self::sql_error("reading the current WAL position"))?;
        // A standby (one host of a URL that went to it, or a server being promoted) has no WAL
        // position of its own to prove anything for: wait for the primary.
        let wal: &str = position.get::<_, Option<&str>>(0).ok_or_else(|| {
            Error::transient("the server is a standby (in recovery): waiting for the primary")
        })?;
        let wal = Lsn::from_str(wal).map_err(Error::definite)?;
        let schemas = position.get::<_, i32>(2) >= 150_000;
        let row = self
            .client
            .query_one(
                &reading_sql(schemas),
                &[
                    &names.publication.as_str(),
                    &names.table.schema.as_str(),
                    &names.table.name.as_str(),
                    &i64::from(pinned.unwrap_or(0)),
                ],
            )
            .await
            .map_err(Self::sql_error(
                "reading the publication and the outbox table from the catalogs",
            ))?;
        let mut reading: Reading = serde_json::from_str(row.get(0)).map_err(|error| {
            Error::definite(format!(
                "could not read the catalogs' answer about the publication ({error}); this is \
                 a walbox bug, please report it"
            ))
        })?;
        reading.wal = wal;
        reading.at = position.get(1);
        // The timeline from the current WAL file's name (any role may read it; IDENTIFY_SYSTEM
        // needs a replication connection).
        let timeline = position.get::<_, Option<&str>>(4);
        reading.origin = timeline
            .and_then(|hex| u32::from_str_radix(hex, 16).ok())
            .map(|timeline| Origin {
                system_id: position.get(3),
                timeline,
            });
        Ok(reading)
    }
}

#[cfg(test)]
mod tests;
