//! Reading the outbox table for the backfill: one read-only repeatable-read transaction (in
//! the slot's exported snapshot at the cut-over), a cursor over the selected rows in key
//! order, and batches of rows handed to the publishing side through a bounded channel.
//!
//! Rows are fetched with the simple query protocol, so each value arrives as the text its
//! type's output function writes, which is what pgoutput sends for an insert; with the same
//! session settings as the replication connection ([`crate::source::TEXT_SETTINGS`]) a row
//! renders here exactly as it would have arrived from the slot, and becomes the same message.
//! Memory is bounded by the batch size (adapted to the rows' size) times the channel's depth.

use bytes::Bytes;
use futures_util::{StreamExt, pin_mut};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, SimpleQueryMessage};

use super::query::{Column, Key, Query, Sql, Table};
use crate::config::{Config, TableName};
use crate::control::connect_client;
use crate::error::{Error, Result};
use crate::pgoutput::{ColumnValue, TupleData};
use crate::source::TEXT_SETTINGS;

/// A row read from the table: its values as pgoutput would send them, and its order key.
#[derive(Debug)]
pub(crate) struct Row {
    pub(crate) tuple: TupleData,
    pub(crate) key: Key,
}

/// What the reading task hands over: a batch of rows, in key order.
pub(crate) type Batch = Vec<Row>;

/// Bytes of row data per fetch the batch size aims at.
const BATCH_BYTES: usize = 4 << 20;
/// Rows per fetch: the first, and the bounds of the adapted size.
const FIRST_BATCH: usize = 256;
const MAX_BATCH: usize = 2048;
/// Batches read ahead of the publisher.
const READ_AHEAD: usize = 2;

/// The reading session's `application_name` (pg_stat_activity).
pub(crate) const APPLICATION_NAME: &str = "walbox-backfill";

/// An open reading transaction.
pub(crate) struct Reader {
    client: Client,
}

fn sql_error(context: &'static str) -> impl Fn(tokio_postgres::Error) -> Error {
    move |error| Error::from_postgres(context, error)
}

fn params(sql: &Sql) -> Vec<&(dyn ToSql + Sync)> {
    sql.params
        .iter()
        .map(|param| param as &(dyn ToSql + Sync))
        .collect()
}

impl Reader {
    /// Open a read-only repeatable-read transaction: in `snapshot` (an exported one) when
    /// given, else in a snapshot of its own.
    pub(crate) async fn open(config: &Config, snapshot: Option<&str>) -> Result<Reader> {
        let client = connect_client(config).await?;
        let mut setup: String = TEXT_SETTINGS
            .iter()
            .map(|(name, value)| format!("SET {name} = '{value}'; "))
            .collect();
        // A broker that holds the backfill back leaves this transaction idle; a server-wide
        // idle timeout must not end it (and with it the cut-over's snapshot).
        // Named, so pg_stat_activity shows whose transaction holds the snapshot (its xmin).
        setup.push_str(&format!(
            "SET application_name = '{APPLICATION_NAME}'; \
             SET idle_in_transaction_session_timeout = 0; SET statement_timeout = 0; \
             BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY;"
        ));
        if let Some(name) = snapshot {
            // Checked to be hex digits and dashes (crate::source::export).
            setup.push_str(&format!(" SET TRANSACTION SNAPSHOT '{name}';"));
        }
        client
            .batch_execute(&setup)
            .await
            .map_err(sql_error("opening the backfill's reading transaction"))?;
        Ok(Reader { client })
    }

    /// The table's columns as pgoutput sends them (generated ones are not published).
    pub(crate) async fn table(&self, name: &TableName) -> Result<Table> {
        let rows = self
            .client
            .query(
                "SELECT c.oid, a.attname::text, a.atttypid, a.atttypmod, \
                 format_type(a.atttypid, a.atttypmod), a.attnotnull \
                 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
                 JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 \
                 AND NOT a.attisdropped AND a.attgenerated = '' \
                 WHERE n.nspname = $1 AND c.relname = $2 AND c.relkind IN ('r', 'p') \
                 ORDER BY a.attnum",
                &[&name.schema.as_str(), &name.name.as_str()],
            )
            .await
            .map_err(sql_error("reading the outbox table's columns"))?;
        let oid = rows
            .first()
            .map(|row| row.get::<_, u32>(0))
            .ok_or_else(|| {
                Error::definite(format!("table {name} does not exist in this database"))
            })?;
        let columns = rows
            .iter()
            .map(|row| Column {
                name: row.get(1),
                type_oid: row.get(2),
                type_modifier: row.get(3),
                sql_type: row.get(4),
                not_null: row.get(5),
            })
            .collect();
        Ok(Table {
            name: name.clone(),
            oid,
            columns,
        })
    }

    /// The snapshot this transaction reads in, as `pg_current_snapshot()` shows it.
    pub(crate) async fn snapshot(&self) -> Result<String> {
        let row = self
            .client
            .query_one("SELECT pg_current_snapshot()::text", &[])
            .await
            .map_err(sql_error("reading the backfill's snapshot"))?;
        Ok(row.get(0))
    }

    /// How many rows `query` selects.
    pub(crate) async fn count(&self, query: &Query<'_>) -> Result<i64> {
        let sql = query.count();
        let row = self
            .client
            .query_one(&sql.text, &params(&sql))
            .await
            .map_err(predicate_error)?;
        Ok(row.get(0))
    }

    /// The key of the last row `query` selects.
    pub(crate) async fn last_key(&self, query: &Query<'_>) -> Result<Option<Key>> {
        let sql = query.last_key();
        let row = self
            .client
            .query_opt(&sql.text, &params(&sql))
            .await
            .map_err(predicate_error)?;
        Ok(row.map(|row| (0..row.len()).map(|index| row.get(index)).collect()))
    }

    /// Read the rows `query` selects on a task of their own, in batches through the returned
    /// channel; the task's result says whether it read to the end. `key` lists the key
    /// columns' indexes, `id` the id column's (a row without an id cannot keep its
    /// message_id, so it ends the read with an error).
    pub(crate) fn read(
        self,
        query: &Query<'_>,
        id: usize,
    ) -> (mpsc::Receiver<Batch>, JoinHandle<Result<()>>) {
        let (sender, batches) = mpsc::channel(READ_AHEAD);
        let sql = query.rows();
        let key = query.key.to_vec();
        let task = tokio::spawn(async move { self.fetch_all(sql, key, id, sender).await });
        (batches, task)
    }

    async fn fetch_all(
        self,
        sql: Sql,
        key: Vec<usize>,
        id: usize,
        sender: mpsc::Sender<Batch>,
    ) -> Result<()> {
        self.client
            .execute(
                &format!("DECLARE walbox_backfill NO SCROLL CURSOR FOR {}", sql.text),
                &params(&sql),
            )
            .await
            .map_err(predicate_error)?;
        let mut size = FIRST_BATCH;
        loop {
            let (batch, bytes) = self.fetch(size, &key, id).await?;
            if batch.is_empty() {
                break;
            }
            size = next_size(batch.len(), bytes);
            if sender.send(batch).await.is_err() {
                // The publishing side stopped: nothing more is wanted.
                return Ok(());
            }
        }
        // Read-only: ending the transaction releases the snapshot and nothing else.
        self.client
            .batch_execute("COMMIT")
            .await
            .map_err(sql_error("ending the backfill's reading transaction"))
    }

    /// The next `size` rows, and their size in bytes.
    async fn fetch(&self, size: usize, key: &[usize], id: usize) -> Result<(Batch, usize)> {
        let stream = self
            .client
            .simple_query_raw(&format!("FETCH {size} FROM walbox_backfill"))
            .await
            .map_err(sql_error("reading the outbox table"))?;
        pin_mut!(stream);
        let mut batch = Vec::with_capacity(size);
        let mut bytes = 0;
        while let Some(message) = stream.next().await {
            let message = message.map_err(sql_error("reading the outbox table"))?;
            let SimpleQueryMessage::Row(row) = message else {
                continue;
            };
            let columns: Vec<ColumnValue> = (0..row.len())
                .map(|index| match row.get(index) {
                    Some(text) => {
                        bytes += text.len();
                        ColumnValue::Text(Bytes::copy_from_slice(text.as_bytes()))
                    }
                    None => ColumnValue::Null,
                })
                .collect();
            let key: Key = key
                .iter()
                .map(|index| row.get(*index).map(str::to_owned))
                .collect();
            if row.get(id).is_none_or(str::is_empty) {
                return Err(Error::definite(format!(
                    "a row of the outbox table has no id (key {}), so it cannot be sent with the \
                     message_id it would have had; give it one, or leave it out with the \
                     backfill's predicate",
                    super::record::show_key(&key)
                )));
            }
            batch.push(Row {
                tuple: TupleData { columns },
                key,
            });
        }
        Ok((batch, bytes))
    }
}

/// The next batch size: about [`BATCH_BYTES`] of rows the size of the last batch's.
fn next_size(rows: usize, bytes: usize) -> usize {
    let per_row = (bytes / rows.max(1)).max(1);
    (BATCH_BYTES / per_row).clamp(1, MAX_BATCH)
}

/// An error of the statements that carry the predicate: most likely the predicate itself.
fn predicate_error(error: tokio_postgres::Error) -> Error {
    Error::from_postgres(
        "selecting the rows to backfill (check the backfill's predicate: it is SQL over the \
         outbox table's columns)",
        error,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_aim_at_a_few_megabytes() {
        assert_eq!(next_size(256, 256 * 100), MAX_BATCH);
        assert_eq!(next_size(10, 10 * 1_000_000), 4);
        assert_eq!(next_size(1, 100 << 20), 1);
        assert_eq!(next_size(0, 0), MAX_BATCH);
    }
}
