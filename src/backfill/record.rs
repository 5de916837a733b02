//! The cut-over backfill's durable record: one row per slot in the table `walbox_backfill`,
//! in the outbox table's schema.
//!
//! Why a table: the record must outlive a walbox killed at any moment, be written before the
//! slot exists (so a slot never exists without it while its backfill is unfinished), travel
//! with the database to a promoted standby, and be readable by `walbox status` from another
//! process. A row in the same database does all four. walbox writes it only while a backfill
//! runs; a role without the right to create it is told the statement to run.
//!
//! The rule it carries: while a slot's record is not `done`, walbox does not start the live
//! relay, so the slot's position cannot pass the cut-over's consistent point before every
//! row the backfill owes was confirmed. The record holds where to resume: the key of the last
//! row the broker confirmed (rows are sent in key order), and the key of the last row the
//! cut-over's snapshot selected, beyond which a later attempt does not read (rows inserted
//! after the cut-over come from the slot).

use std::fmt;

use serde::Serialize;
use tokio_postgres::Client;

use super::query::Key;
use crate::config::{Identifier, TableName};
use crate::error::{Error, Result};

/// The record table's name, in the outbox table's schema.
const TABLE: &str = "walbox_backfill";

/// Where a cut-over backfill stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum State {
    /// Asked for; the slot may not exist yet (its snapshot was never read).
    Creating,
    /// The slot exists; rows are being sent.
    Sending,
    /// Every row was confirmed; the live relay may go past the consistent point.
    Done,
}

impl State {
    fn as_str(self) -> &'static str {
        match self {
            State::Creating => "creating",
            State::Sending => "sending",
            State::Done => "done",
        }
    }

    fn parse(text: &str) -> Result<State> {
        match text {
            "creating" => Ok(State::Creating),
            "sending" => Ok(State::Sending),
            "done" => Ok(State::Done),
            other => Err(Error::definite(format!(
                "the backfill record has the unknown state `{other}` (a walbox bug or a \
                 hand-edited row)"
            ))),
        }
    }
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One slot's record.
#[derive(Clone, Debug, Serialize)]
pub(crate) struct Record {
    pub(crate) slot: String,
    pub(crate) state: State,
    pub(crate) predicate: String,
    /// The slot's consistent point: the boundary between the snapshot and the stream.
    pub(crate) consistent_lsn: Option<String>,
    /// The exported snapshot as `pg_current_snapshot()` shows it (`xmin:xmax:xip,…`): which
    /// transactions the backfill saw.
    pub(crate) snapshot: Option<String>,
    /// The key of the last row the snapshot selected; None: unknown (read to the end), or
    /// nothing selected when `rows_expected` is 0.
    pub(crate) end_key: Option<Key>,
    /// Rows the snapshot selected (None: unknown).
    pub(crate) rows_expected: Option<i64>,
    /// Rows the broker confirmed, over every attempt (repeats after a resume counted again).
    pub(crate) rows_confirmed: i64,
    /// The key of the last row confirmed: where the next attempt resumes.
    pub(crate) last_key: Option<Key>,
    pub(crate) attempts: i32,
    pub(crate) started_at: String,
    pub(crate) updated_at: String,
    pub(crate) finished_at: Option<String>,
}

/// The record table of the outbox table `outbox`.
pub(crate) fn table_of(outbox: &TableName) -> TableName {
    TableName {
        schema: outbox.schema.clone(),
        name: Identifier::new("table", TABLE).expect("a valid name"),
    }
}

/// The statement that makes the record table (what a role without CREATE is asked to have
/// run, and what sql/roles.sql runs).
pub(crate) fn create_sql(table: &TableName) -> String {
    format!(
        "CREATE TABLE IF NOT EXISTS {} (\n  slot_name text PRIMARY KEY,\n  state text NOT NULL,\n  \
         predicate text NOT NULL,\n  consistent_lsn pg_lsn,\n  snapshot text,\n  end_key text[],\n  \
         rows_expected bigint,\n  rows_confirmed bigint NOT NULL DEFAULT 0,\n  last_key text[],\n  \
         attempts integer NOT NULL DEFAULT 0,\n  started_at timestamptz NOT NULL DEFAULT now(),\n  \
         updated_at timestamptz NOT NULL DEFAULT now(),\n  finished_at timestamptz\n)",
        table.quoted()
    )
}

/// The record store: a connection and the table.
pub(crate) struct Records<'a> {
    pub(crate) client: &'a Client,
    pub(crate) table: TableName,
}

fn sql_error(context: &'static str) -> impl Fn(tokio_postgres::Error) -> Error {
    move |error| Error::from_postgres(context, error)
}

/// The record table as the connected role finds it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Found {
    Missing,
    Readable,
    /// There, but this role may not read it (made by another role for another deployment).
    Unreadable,
}

impl Records<'_> {
    /// Whether the record table exists (it is made by the first backfill) and may be read.
    async fn find(&self) -> Result<Found> {
        let row = self
            .client
            .query_one(
                "SELECT to_regclass($1) IS NOT NULL, \
                 coalesce(has_table_privilege(to_regclass($1), 'SELECT'), false)",
                &[&self.table.quoted()],
            )
            .await
            .map_err(sql_error("looking up the backfill record table"))?;
        Ok(match (row.get(0), row.get(1)) {
            (false, _) => Found::Missing,
            (true, true) => Found::Readable,
            (true, false) => Found::Unreadable,
        })
    }

    /// Make the record table if it is missing; a role that may not is told what to run.
    pub(crate) async fn ensure_table(&self) -> Result<()> {
        match self.find().await? {
            Found::Readable => return Ok(()),
            Found::Unreadable => return self.get("").await.map(|_| ()),
            Found::Missing => {}
        }
        let ddl = create_sql(&self.table);
        self.client.batch_execute(&ddl).await.map_err(|error| {
            Error::from_postgres(
                &format!(
                    "creating the backfill's record table {}, which keeps a backfill's progress \
                     so that a restart resumes it: have the schema's owner run `{ddl}; GRANT \
                     SELECT, INSERT, UPDATE, DELETE ON {} TO <walbox's role>` (`sql/roles.sql -v backfill=on` \
                     does)",
                    self.table,
                    self.table.quoted()
                ),
                error,
            )
        })
    }

    /// The slot's record, if there is one (and the table exists). A table this role may not
    /// read is an error: a backfill needs it, and so does the live relay, which may not pass a
    /// cut-over another role left unfinished (the table does not say whose records it holds).
    pub(crate) async fn get(&self, slot: &str) -> Result<Option<Record>> {
        match self.find().await? {
            Found::Missing => Ok(None),
            Found::Readable => self.read(slot).await,
            Found::Unreadable => Err(Error::definite(format!(
                "role may not read the backfill record table {}, so walbox cannot tell whether \
                 the cut-over backfill of slot {slot} is finished (relaying from the slot before \
                 it is would skip the rows it owes): have its owner run `GRANT SELECT, INSERT, \
                 UPDATE, DELETE ON {} TO <walbox's role>`",
                self.table,
                self.table.quoted()
            ))),
        }
    }

    /// [`Records::get`] for `walbox status` and `teardown`, which relay nothing: a record table
    /// this role may not read is passed over, with a warning.
    pub(crate) async fn get_readable(&self, slot: &str) -> Result<Option<Record>> {
        match self.find().await? {
            Found::Missing => Ok(None),
            Found::Readable => self.read(slot).await,
            Found::Unreadable => {
                tracing::warn!(table = %self.table, "the backfill record table exists but this role may not read it; showing no record of this slot");
                Ok(None)
            }
        }
    }

    async fn read(&self, slot: &str) -> Result<Option<Record>> {
        let row = self
            .client
            .query_opt(
                &format!(
                    "SELECT slot_name, state, predicate, consistent_lsn::text, snapshot, end_key, \
                     rows_expected, rows_confirmed, last_key, attempts, started_at::text, \
                     updated_at::text, finished_at::text FROM {} WHERE slot_name = $1",
                    self.table.quoted()
                ),
                &[&slot],
            )
            .await
            .map_err(sql_error("reading the backfill record"))?;
        let Some(row) = row else { return Ok(None) };
        Ok(Some(Record {
            slot: row.get(0),
            state: State::parse(row.get(1))?,
            predicate: row.get(2),
            consistent_lsn: row.get(3),
            snapshot: row.get(4),
            end_key: row.get(5),
            rows_expected: row.get(6),
            rows_confirmed: row.get(7),
            last_key: row.get(8),
            attempts: row.get(9),
            started_at: row.get(10),
            updated_at: row.get(11),
            finished_at: row.get(12),
        }))
    }

    /// Start a new cut-over backfill for `slot`: state `creating`, replacing any earlier record
    /// of that slot (a slot made again is a new cut-over).
    pub(crate) async fn begin(&self, slot: &str, predicate: &str) -> Result<()> {
        self.client
            .execute(
                &format!(
                    "INSERT INTO {} (slot_name, state, predicate) VALUES ($1, 'creating', $2) \
                     ON CONFLICT (slot_name) DO UPDATE SET state = 'creating', predicate = $2, \
                     consistent_lsn = NULL, snapshot = NULL, end_key = NULL, rows_expected = NULL, \
                     rows_confirmed = 0, last_key = NULL, attempts = 0, started_at = now(), \
                     updated_at = now(), finished_at = NULL",
                    self.table.quoted()
                ),
                &[&slot, &predicate],
            )
            .await
            .map_err(sql_error("writing the backfill record"))?;
        Ok(())
    }

    /// The slot exists and its snapshot was read: what the backfill owes.
    pub(crate) async fn sending(
        &self,
        slot: &str,
        consistent_lsn: &str,
        snapshot: &str,
        end_key: Option<&Key>,
        rows_expected: i64,
    ) -> Result<()> {
        self.client
            .execute(
                &format!(
                    "UPDATE {} SET state = 'sending', consistent_lsn = ($2::text)::pg_lsn, \
                     snapshot = $3, end_key = $4, rows_expected = $5, attempts = attempts + 1, \
                     updated_at = now() WHERE slot_name = $1",
                    self.table.quoted()
                ),
                &[&slot, &consistent_lsn, &snapshot, &end_key, &rows_expected],
            )
            .await
            .map_err(sql_error("writing the backfill record"))?;
        Ok(())
    }

    /// Another attempt begins (after a restart): count it, and keep `creating` as `sending`
    /// (its slot exists by now).
    pub(crate) async fn attempt(&self, slot: &str) -> Result<()> {
        self.client
            .execute(
                &format!(
                    "UPDATE {} SET state = 'sending', attempts = attempts + 1, updated_at = now() \
                     WHERE slot_name = $1",
                    self.table.quoted()
                ),
                &[&slot],
            )
            .await
            .map_err(sql_error("writing the backfill record"))?;
        Ok(())
    }

    /// Rows up to `last_key` are confirmed, `rows_confirmed` in all.
    pub(crate) async fn progress(
        &self,
        slot: &str,
        last_key: &Key,
        rows_confirmed: i64,
    ) -> Result<()> {
        self.client
            .execute(
                &format!(
                    "UPDATE {} SET last_key = $2, rows_confirmed = $3, updated_at = now() \
                     WHERE slot_name = $1",
                    self.table.quoted()
                ),
                &[&slot, last_key, &rows_confirmed],
            )
            .await
            .map_err(sql_error("writing the backfill's progress"))?;
        Ok(())
    }

    /// Every row the backfill owed was confirmed.
    pub(crate) async fn done(&self, slot: &str) -> Result<()> {
        self.client
            .execute(
                &format!(
                    "UPDATE {} SET state = 'done', finished_at = now(), updated_at = now() \
                     WHERE slot_name = $1",
                    self.table.quoted()
                ),
                &[&slot],
            )
            .await
            .map_err(sql_error("writing the backfill record"))?;
        Ok(())
    }

    /// Forget the slot's record (`walbox teardown`).
    pub(crate) async fn forget(&self, slot: &str) -> Result<bool> {
        if self.get_readable(slot).await?.is_none() {
            return Ok(false);
        }
        let deleted = self
            .client
            .execute(
                &format!("DELETE FROM {} WHERE slot_name = $1", self.table.quoted()),
                &[&slot],
            )
            .await
            .map_err(sql_error("deleting the backfill record"))?;
        Ok(deleted > 0)
    }

    /// Hold the slot's backfill for this session (a PostgreSQL advisory lock, released when the
    /// connection ends, so a killed walbox never leaves it held). False: another walbox holds
    /// it.
    pub(crate) async fn lock(&self, slot: &str) -> Result<bool> {
        let row = self
            .client
            .query_one(
                "SELECT pg_try_advisory_lock($1, hashtext($2))",
                &[&LOCK_CLASS, &slot],
            )
            .await
            .map_err(sql_error("taking the backfill's lock"))?;
        Ok(row.get(0))
    }
}

/// The first key of walbox's advisory locks ("walb"), so they do not collide with the
/// application's own.
const LOCK_CLASS: i32 = 0x7761_6c62;

/// How a key shows in logs and `status`: its values, comma-separated (NULL as `NULL`).
pub(crate) fn show_key(key: &Key) -> String {
    key.iter()
        .map(|value| value.as_deref().unwrap_or("NULL"))
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_record_table_lives_beside_the_outbox() {
        let outbox = TableName::parse("cap.published").unwrap();
        let table = table_of(&outbox);
        assert_eq!(table.quoted(), r#""cap"."walbox_backfill""#);
        assert!(
            create_sql(&table)
                .starts_with(r#"CREATE TABLE IF NOT EXISTS "cap"."walbox_backfill" ("#)
        );
    }

    #[test]
    fn sql_roles_makes_the_same_record_table() {
        let roles = include_str!("../../sql/roles.sql");
        let ddl = create_sql(&table_of(&TableName::parse("outbox").unwrap()));
        for column in ddl.lines().skip(1).filter(|line| !line.starts_with(')')) {
            let column = column.trim_end_matches(',');
            assert!(roles.contains(column), "sql/roles.sql lacks `{column}`");
        }
    }

    #[test]
    fn states_round_trip() {
        for state in [State::Creating, State::Sending, State::Done] {
            assert_eq!(State::parse(state.as_str()).unwrap(), state);
        }
        assert!(State::parse("copying").is_err());
    }

    #[test]
    fn keys_show_their_nulls() {
        assert_eq!(show_key(&vec![None, Some("7".into())]), "NULL, 7");
    }
}
