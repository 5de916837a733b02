//! Control-plane SQL: server checks, the publication, the slot, status and teardown.
//!
//! Runs over an ordinary (non-replication) connection with tokio-postgres. Values always travel
//! as query parameters; names that SQL cannot take as parameters (publication, table in DDL)
//! are validated [`Identifier`]s and quoted, in the small statement builders at the end, which
//! are unit-tested.
//!
//! walbox needs no more than sql/roles.sql grants: LOGIN, REPLICATION and SELECT on the
//! outbox table. Creating the publication needs ownership of the table, so with that role
//! the table's owner creates it beforehand; [`Control::prepare`] then only checks it.

pub(crate) mod failover;
pub(crate) mod publication;

use std::str::FromStr;

use tokio_postgres::Client;
use tracing::{debug, warn};

use crate::config::{Config, Identifier, TableName};
use crate::error::{Error, Result};
use crate::lsn::Lsn;
use crate::outbox::template::TemplateError;
use crate::outbox::{Mapping, OutboxShape, ShapeError};
use crate::pgoutput::{Relation, RelationColumn};
use publication::{Names, Problem, Reading};

/// An open control-plane connection.
pub(crate) struct Control {
    client: Client,
}

/// What `pg_replication_slots` says about the slot.
#[derive(Clone, Debug, serde::Serialize)]
pub(crate) struct SlotInfo {
    pub(crate) slot_name: String,
    pub(crate) plugin: Option<String>,
    pub(crate) slot_type: String,
    pub(crate) database: Option<String>,
    pub(crate) active: bool,
    pub(crate) active_pid: Option<i32>,
    pub(crate) confirmed_flush_lsn: Option<String>,
    pub(crate) restart_lsn: Option<String>,
    pub(crate) wal_status: Option<String>,
    pub(crate) temporary: bool,
    /// Created to survive a failover (PostgreSQL 17; None before).
    pub(crate) failover: Option<bool>,
    /// On a standby (or a promoted one): a copy synchronized from the primary (PostgreSQL 17).
    pub(crate) synced: Option<bool>,
}

impl SlotInfo {
    pub(crate) fn confirmed_flush(&self) -> Option<Lsn> {
        self.confirmed_flush_lsn
            .as_deref()
            .and_then(|text| Lsn::from_str(text).ok())
    }
}

/// Whether an object was there already.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Ensured {
    Existed,
    Created,
}

impl Control {
    pub(crate) async fn connect(config: &Config) -> Result<Self> {
        Ok(Control {
            client: connect_client(config).await?,
        })
    }

    fn sql_error(context: &str) -> impl Fn(tokio_postgres::Error) -> Error + '_ {
        move |error| Error::from_postgres(context, error)
    }

    /// PostgreSQL 14 or later: walbox's replication client (pgwire-replication 0.5) always
    /// asks pgoutput for logical decoding messages (`messages 'true'`), an option PostgreSQL
    /// 14 brought; an older pgoutput refuses to start streaming ("unrecognized pgoutput
    /// option"), so walbox says why before it tries.
    pub(crate) async fn check_server_version(&self) -> Result<()> {
        let row = self
            .client
            .query_one(
                "SELECT current_setting('server_version_num')::int, \
                 current_setting('server_version')",
                &[],
            )
            .await
            .map_err(Self::sql_error("reading the server version"))?;
        match too_old(row.get(0), row.get(1)) {
            Some(error) => Err(error),
            None => Ok(()),
        }
    }

    /// wal_level must be logical for a logical slot to exist or stream.
    pub(crate) async fn check_wal_level(&self) -> Result<()> {
        let row = self
            .client
            .query_one("SELECT current_setting('wal_level')", &[])
            .await
            .map_err(Self::sql_error("reading wal_level"))?;
        let wal_level: String = row.get(0);
        if wal_level != "logical" {
            return Err(Error::definite(format!(
                "PostgreSQL has wal_level={wal_level}, and walbox needs wal_level=logical. Run \
                 `ALTER SYSTEM SET wal_level = logical;` as a superuser and restart PostgreSQL \
                 (scripts/ready.sh does this on a development machine)"
            )));
        }
        Ok(())
    }

    /// The table's columns in attribute order, as a Relation-shaped description.
    pub(crate) async fn describe_table(&self, table: &TableName) -> Result<Relation> {
        let rows = self
            .client
            .query(
                "SELECT c.oid, a.attname, a.atttypid, a.atttypmod \
                 FROM pg_class c \
                 JOIN pg_namespace n ON n.oid = c.relnamespace \
                 JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped \
                 WHERE n.nspname = $1 AND c.relname = $2 AND c.relkind IN ('r', 'p') \
                 ORDER BY a.attnum",
                &[&table.schema.as_str(), &table.name.as_str()],
            )
            .await
            .map_err(Self::sql_error("reading the outbox table's columns"))?;
        let Some(first) = rows.first() else {
            return Err(Error::definite(format!(
                "table {table} does not exist in this database. Create it (sql/outbox.sql has \
                 the default shape) or point --table at your outbox table"
            )));
        };
        let relation_id: u32 = first.get(0);
        Ok(Relation {
            relation_id,
            namespace: table.schema.as_str().to_owned(),
            name: table.name.as_str().to_owned(),
            replica_identity: b'd',
            columns: rows
                .iter()
                .map(|row| RelationColumn {
                    flags: 0,
                    name: row.get(1),
                    type_oid: row.get(2),
                    type_modifier: row.get(3),
                })
                .collect(),
        })
    }

    /// Check that the table has every mapped column with a usable type and that the
    /// templates' placeholders exist.
    pub(crate) async fn check_table(&self, config: &Config) -> Result<()> {
        let relation = self.describe_table(&config.table).await?;
        match OutboxShape::from_relation(&relation, &config.mapping) {
            Ok(_) => Ok(()),
            Err(
                problem @ ShapeError::Template {
                    error: TemplateError::UnknownPlaceholder { .. },
                    ..
                },
            ) => Err(Error::usage(format!("{problem} {}", config.table))),
            Err(problem) => Err(Error::definite(problem)),
        }
    }

    /// The role walbox connects as can create the slot and stream (REPLICATION) and read the
    /// outbox table (SELECT); a missing one is named with the statement that grants it.
    pub(crate) async fn check_privileges(&self, table: &TableName) -> Result<()> {
        let row = self
            .client
            .query_one(
                "SELECT current_user::text, r.rolsuper OR r.rolreplication, \
                 has_table_privilege(format('%I.%I', $1::text, $2::text), 'SELECT') \
                 FROM pg_roles r WHERE r.rolname = current_user",
                &[&table.schema.as_str(), &table.name.as_str()],
            )
            .await
            .map_err(Self::sql_error("checking the role's privileges"))?;
        let role = Identifier::new("role", row.get::<_, &str>(0)).map_err(Error::definite)?;
        let (replication, select): (bool, bool) = (row.get(1), row.get(2));
        if !replication {
            return Err(Error::definite(format!(
                "role {role} lacks the REPLICATION attribute, which logical replication needs. \
                 As a superuser run `ALTER ROLE {} REPLICATION` (see sql/roles.sql)",
                role.quoted()
            )));
        }
        if !select {
            return Err(Error::definite(format!(
                "role {role} may not read table {table}. As its owner run `GRANT SELECT ON {} \
                 TO {}` (see sql/roles.sql)",
                table.quoted(),
                role.quoted()
            )));
        }
        Ok(())
    }

    /// Create the publication for the table if it does not exist; then check, in the catalogs,
    /// that it delivers every insert of the table (see [`publication`]).
    pub(crate) async fn ensure_publication(
        &self,
        names: Names<'_>,
        mapping: &Mapping,
    ) -> Result<Ensured> {
        let (publication, table) = (names.publication, names.table);
        let ensured = if self.publication_exists(publication).await? {
            Ensured::Existed
        } else {
            let ddl = create_publication_sql(publication, table);
            self.client.batch_execute(&ddl).await.map_err(|error| {
                Error::from_postgres(
                    &format!(
                        "creating the publication, which needs ownership of {table}: have the \
                         table's owner run `{ddl}` beforehand (sql/roles.sql does)"
                    ),
                    error,
                )
            })?;
            Ensured::Created
        };
        let reading = self.read_catalog(names, None).await?;
        self.refuse_problems(&reading, names, mapping).await?;
        Ok(ensured)
    }

    /// Each problem of the reading, with its fix, as one definite error.
    pub(crate) async fn refuse_problems(
        &self,
        reading: &Reading,
        names: Names<'_>,
        mapping: &Mapping,
    ) -> Result<()> {
        let kept = self
            .column_list_check(reading, names.table, mapping)
            .await?;
        let problems: Vec<String> = reading
            .problems(kept)
            .iter()
            .map(|problem| problem.explain(names))
            .collect();
        if problems.is_empty() {
            return Ok(());
        }
        Err(Error::definite(problems.join("; and ")))
    }

    /// What a column list must keep: the columns the mapping reads, checked against the
    /// table's description (read only when the publication has a column list).
    pub(crate) async fn column_list_check(
        &self,
        reading: &Reading,
        table: &TableName,
        mapping: &Mapping,
    ) -> Result<impl Fn(&[String]) -> std::result::Result<(), String> + use<>> {
        let description = match reading.relations.iter().any(|row| row.columns.is_some()) {
            true => Some(self.describe_table(table).await?),
            false => None,
        };
        Ok(publication::columns_kept(description, mapping.clone()))
    }

    /// Turn on `publish_via_partition_root` when the table is partitioned and the publication
    /// has it off (`walbox setup`). Returns whether it did.
    pub(crate) async fn ensure_via_root(&self, names: Names<'_>) -> Result<bool> {
        let reading = self.read_catalog(names, None).await?;
        if !reading.problems(|_| Ok(())).contains(&Problem::NotViaRoot) {
            return Ok(false);
        }
        let ddl = format!(
            "ALTER PUBLICATION {} SET (publish_via_partition_root = true)",
            names.publication.quoted()
        );
        self.client.batch_execute(&ddl).await.map_err(|error| {
            Error::from_postgres(
                &format!(
                    "{}. Turning it on needs ownership of the publication: have its owner run \
                     `{ddl}`",
                    Problem::NotViaRoot.explain(names)
                ),
                error,
            )
        })?;
        Ok(true)
    }

    pub(crate) async fn slot(&self, slot: &Identifier) -> Result<Option<SlotInfo>> {
        let row = self
            .client
            .query_opt(
                // failover and synced exist from PostgreSQL 17 on: read through to_jsonb so
                // one statement serves every version.
                "SELECT slot_name::text, plugin::text, slot_type, database::text, active, \
                 active_pid, confirmed_flush_lsn::text, restart_lsn::text, wal_status, \
                 temporary, (to_jsonb(s) ->> 'failover')::bool, (to_jsonb(s) ->> 'synced')::bool \
                 FROM pg_replication_slots s WHERE slot_name = $1",
                &[&slot.as_str()],
            )
            .await
            .map_err(Self::sql_error("reading pg_replication_slots"))?;
        Ok(row.map(|row| SlotInfo {
            slot_name: row.get(0),
            plugin: row.get(1),
            slot_type: row.get(2),
            database: row.get(3),
            active: row.get(4),
            active_pid: row.get(5),
            confirmed_flush_lsn: row.get(6),
            restart_lsn: row.get(7),
            wal_status: row.get(8),
            temporary: row.get(9),
            failover: row.get(10),
            synced: row.get(11),
        }))
    }

    /// Check that an existing slot can be used by walbox on this database.
    pub(crate) async fn check_slot(&self, info: &SlotInfo) -> Result<()> {
        let slot = &info.slot_name;
        if info.slot_type != "logical" || info.plugin.as_deref() != Some("pgoutput") {
            return Err(Error::definite(format!(
                "replication slot {slot} exists but is a {} slot with plugin {}; walbox needs a \
                 logical slot with the pgoutput plugin. Choose another --slot, or drop it if it \
                 is unused: SELECT pg_drop_replication_slot('{}')",
                slot.replace('\'', "''"),
                info.slot_type,
                info.plugin.as_deref().unwrap_or("none")
            )));
        }
        let database = self.current_database().await?;
        if info.database.as_deref() != Some(database.as_str()) {
            return Err(Error::definite(format!(
                "replication slot {slot} belongs to database {}, not {database}; choose another \
                 --slot",
                info.database.as_deref().unwrap_or("?")
            )));
        }
        if info.wal_status.as_deref() == Some("lost") {
            return Err(Error::definite(format!(
                "replication slot {slot} is invalidated (wal_status=lost): PostgreSQL removed WAL \
                 it still needed, so events in it can no longer be relayed. Drop it with \
                 `SELECT pg_drop_replication_slot('{slot}')` (walbox's role may: it has \
                 REPLICATION), then run `walbox setup`; consider raising \
                 max_slot_wal_keep_size"
            )));
        }
        Ok(())
    }

    /// Create the logical slot (from PostgreSQL 17 on with failover, so a standby can keep
    /// a synchronized copy: see [`failover`]); returns the LSN from which it captures.
    pub(crate) async fn create_slot(&self, slot: &Identifier) -> Result<Lsn> {
        let (lsn, _failover) = self.create_failover_slot(slot).await?;
        Lsn::from_str(&lsn).map_err(Error::definite)
    }

    pub(crate) async fn current_database(&self) -> Result<String> {
        let row = self
            .client
            .query_one("SELECT current_database()::text", &[])
            .await
            .map_err(Self::sql_error("reading the current database"))?;
        Ok(row.get(0))
    }

    pub(crate) async fn current_wal_lsn(&self) -> Result<Lsn> {
        let row = self
            .client
            .query_one("SELECT pg_current_wal_lsn()::text", &[])
            .await
            .map_err(Self::sql_error("reading the current WAL position"))?;
        let lsn: String = row.get(0);
        Lsn::from_str(&lsn).map_err(Error::definite)
    }

    pub(crate) async fn publication_tables(&self, publication: &Identifier) -> Result<Vec<String>> {
        let rows = self
            .client
            .query(
                "SELECT schemaname || '.' || tablename FROM pg_publication_tables \
                 WHERE pubname = $1 ORDER BY 1",
                &[&publication.as_str()],
            )
            .await
            .map_err(Self::sql_error("reading the publication's tables"))?;
        Ok(rows.iter().map(|row| row.get(0)).collect())
    }

    pub(crate) async fn publication_exists(&self, publication: &Identifier) -> Result<bool> {
        Ok(self
            .client
            .query_opt(
                "SELECT 1 FROM pg_publication WHERE pubname = $1",
                &[&publication.as_str()],
            )
            .await
            .map_err(Self::sql_error("looking up the publication"))?
            .is_some())
    }

    /// The publication's owner, when the connected role may not drop it (only its owner, a
    /// member of the owning role, or a superuser may); None when it may, or it does not exist.
    pub(crate) async fn publication_owner_if_not_us(
        &self,
        publication: &Identifier,
    ) -> Result<Option<String>> {
        Ok(self
            .client
            .query_opt(
                "SELECT pg_get_userbyid(pubowner)::text FROM pg_publication \
                 WHERE pubname = $1 AND NOT pg_has_role(current_user, pubowner, 'USAGE')",
                &[&publication.as_str()],
            )
            .await
            .map_err(Self::sql_error("looking up the publication's owner"))?
            .map(|row| row.get(0)))
    }

    pub(crate) async fn drop_slot(&self, slot: &Identifier) -> Result<()> {
        self.client
            .execute("SELECT pg_drop_replication_slot($1)", &[&slot.as_str()])
            .await
            .map_err(Self::sql_error(
                "dropping the replication slot (stop every walbox using it first)",
            ))?;
        Ok(())
    }

    pub(crate) async fn drop_publication(&self, publication: &Identifier) -> Result<()> {
        self.client
            .batch_execute(&drop_publication_sql(publication))
            .await
            .map_err(Self::sql_error("dropping the publication"))
    }
}

/// A plain SQL connection to the primary, with the TLS settings of `--postgres-url` (the
/// control connection, and the backfill's reading and record-keeping ones).
pub(crate) async fn connect_client(config: &Config) -> Result<Client> {
    let tls = crate::tls::postgres_connector(&config.postgres_tls)?;
    let (client, connection) =
        config.postgres.connect(tls).await.map_err(|e| {
            Error::from_postgres(&format!("connecting to {}", config.postgres_url), e)
        })?;
    tokio::spawn(async move {
        if let Err(error) = connection.await {
            debug!(%error, "control connection closed");
        }
    });
    Ok(client)
}

/// Who may create a missing slot in [`Control::prepare`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum SlotCreation {
    /// `walbox setup`: the user asked for it.
    Always,
    /// The first session of `walbox run`: only on a server that was never promoted, since on a
    /// promoted one a missing slot may be one that a failover lost.
    UnlessPromoted,
    /// A running relay reconnecting: the slot it used has vanished.
    Never,
}

/// What [`Control::prepare`] found or made.
#[derive(Clone, Debug)]
pub(crate) struct Prepared {
    pub(crate) publication: Ensured,
    pub(crate) slot: Ensured,
    pub(crate) slot_info: SlotInfo,
}

impl Control {
    /// Everything `setup` checks and creates. `create` says who may make a missing slot: a
    /// slot that vanished must not silently come back, since the events committed while it
    /// was gone would be skipped.
    pub(crate) async fn prepare(&self, config: &Config, create: SlotCreation) -> Result<Prepared> {
        let publication = self.prepare_publication(config).await?;
        let timeline = self.timeline().await?;
        let found = self.slot(&config.slot).await?;
        if let Some(error) = Self::check_after_failover(config, found.as_ref(), timeline) {
            return Err(error);
        }
        let (slot, slot_info) = match found {
            Some(info) => {
                self.check_slot(&info).await?;
                if info.failover == Some(false) {
                    warn!(
                        slot = %config.slot,
                        "the replication slot was created without failover: a PostgreSQL \
                         failover loses it. `walbox setup` turns failover on"
                    );
                }
                (Ensured::Existed, info)
            }
            None if create != SlotCreation::Never => {
                if create == SlotCreation::UnlessPromoted
                    && let Some(error) = Self::refuse_slot_on_promoted_server(config, timeline)
                {
                    return Err(error);
                }
                self.create_slot(&config.slot).await?;
                let info = self.slot(&config.slot).await?.ok_or_else(|| {
                    Error::transient("the new replication slot is not visible yet")
                })?;
                (Ensured::Created, info)
            }
            None => {
                return Err(Error::definite(format!(
                    "replication slot {} disappeared while walbox was running: someone dropped \
                     it. walbox does not recreate it by itself, because events committed since \
                     then would be skipped without notice. Run `walbox setup` to create it again \
                     once you have accounted for those events",
                    config.slot
                )));
            }
        };
        Ok(Prepared {
            publication,
            slot,
            slot_info,
        })
    }
}

impl Control {
    /// What [`Control::prepare`] checks and makes before it comes to the slot: wal_level, the
    /// table and its mapped columns, the role's privileges, the publication.
    pub(crate) async fn prepare_publication(&self, config: &Config) -> Result<Ensured> {
        self.check_server_version().await?;
        self.check_wal_level().await?;
        self.check_table(config).await?;
        self.check_privileges(&config.table).await?;
        let names = Names {
            publication: &config.publication,
            table: &config.table,
        };
        self.ensure_publication(names, &config.mapping).await
    }
}

/// The replay window's bookmark slot (`walbox run --replay-window`, `walbox replay`).
impl Control {
    /// Create the bookmark slot if it is missing: a copy of the live slot when there is one, so
    /// the window starts at what walbox has relayed, else a new slot at the current position.
    pub(crate) async fn ensure_bookmark(
        &self,
        live: &Identifier,
        bookmark: &Identifier,
    ) -> Result<Ensured> {
        if self.slot(bookmark).await?.is_some() {
            return Ok(Ensured::Existed);
        }
        let created = if self.slot(live).await?.is_some() {
            self.client
                .execute(
                    "SELECT 1 FROM pg_copy_logical_replication_slot($1, $2)",
                    &[&live.as_str(), &bookmark.as_str()],
                )
                .await
        } else {
            self.client
                .execute(
                    "SELECT 1 FROM pg_create_logical_replication_slot($1, 'pgoutput')",
                    &[&bookmark.as_str()],
                )
                .await
        };
        created.map_err(Self::sql_error(
            "creating the replay window's bookmark slot",
        ))?;
        Ok(Ensured::Created)
    }

    /// Move a slot that nobody streams from forward to `to`; returns where it now stands.
    pub(crate) async fn advance_slot(&self, slot: &Identifier, to: Lsn) -> Result<Lsn> {
        let row = self
            .client
            .query_one(
                "SELECT end_lsn::text FROM pg_replication_slot_advance($1, ($2::text)::pg_lsn)",
                &[&slot.as_str(), &to.to_string()],
            )
            .await
            .map_err(Self::sql_error(
                "advancing the replay window's bookmark slot",
            ))?;
        let lsn: String = row.get(0);
        Lsn::from_str(&lsn).map_err(Error::definite)
    }
}

/// The one statement walbox creates a publication with: names quoted, never pasted raw.
fn create_publication_sql(publication: &Identifier, table: &TableName) -> String {
    format!(
        "CREATE PUBLICATION {} FOR TABLE {} WITH (publish = 'insert', \
         publish_via_partition_root = true)",
        publication.quoted(),
        table.quoted()
    )
}

fn drop_publication_sql(publication: &Identifier) -> String {
    format!("DROP PUBLICATION IF EXISTS {}", publication.quoted())
}

/// The first PostgreSQL release whose pgoutput takes the `messages` option.
const MESSAGES_SINCE: i32 = 140_000;

/// The definite error for a server older than [`MESSAGES_SINCE`], naming its version.
fn too_old(server_version_num: i32, server_version: &str) -> Option<Error> {
    (server_version_num < MESSAGES_SINCE).then(|| {
        Error::definite(format!(
            "PostgreSQL {server_version} is too old: walbox needs PostgreSQL 14 or later. Its \
             replication client asks pgoutput for logical decoding messages (the `messages` \
             option, new in 14; --messages relays them), which older servers refuse. Upgrade \
             the server"
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_server_before_14_is_a_definite_error_naming_its_version() {
        let error = too_old(130_016, "13.16 (Debian 13.16-1)").expect("too old");
        assert!(!error.is_transient());
        let text = error.to_string();
        assert!(text.contains("PostgreSQL 13.16 (Debian 13.16-1)"), "{text}");
        assert!(text.contains("14 or later"), "{text}");
        assert!(too_old(140_000, "14.0").is_none());
        assert!(too_old(150_010, "15.10").is_none());
        assert!(too_old(170_012, "17.12").is_none());
    }

    #[test]
    fn names_in_statements_are_quoted_identifiers() {
        let hostile = Identifier::new("--publication", r#"x" ; DROP TABLE outbox; --"#).unwrap();
        let table = TableName::parse(r#"Sales.Out"box"#).unwrap();
        assert_eq!(
            create_publication_sql(&hostile, &table),
            r#"CREATE PUBLICATION "x"" ; DROP TABLE outbox; --" FOR TABLE "Sales"."Out""box" WITH (publish = 'insert', publish_via_partition_root = true)"#
        );
        assert_eq!(
            drop_publication_sql(&hostile),
            r#"DROP PUBLICATION IF EXISTS "x"" ; DROP TABLE outbox; --""#
        );
    }
}
