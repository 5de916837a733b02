//! The cut-over from a framework's own publisher to walbox, per framework (issue #20): rows in
//! every state the framework writes are in its table before walbox's slot exists, the old
//! publisher keeps marking rows published while walbox starts, a writer keeps inserting, and
//! walbox starts with the preset's backfill (`--backfill`).
//!
//! The oracle is exact: every insert and every update of the old publisher records its
//! transaction id, and the backfill's record keeps the snapshot it read in
//! (`pg_current_snapshot()` of the exported snapshot). A row is owed by the backfill when its
//! insert is visible in that snapshot and its state there (the last visible update's, else the
//! inserted one) is not published; a row whose insert is not visible comes from the slot. The
//! scene asserts that exactly those rows arrive, each once, the backfilled ones first and in
//! the framework's creation order, then the new ones in commit order.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::sync::Mutex;
use tokio_postgres::Client;

use super::*;

/// One framework's table, as its ORM writes it.
pub(crate) trait Framework: Sync {
    /// The table's DDL.
    fn ddl(&self) -> &'static str;
    /// The table, quoted, for the test's own queries.
    fn table(&self) -> &'static str;
    /// walbox's backfill record table (in the outbox table's schema).
    fn record_table(&self) -> &'static str {
        "walbox_backfill"
    }
    /// The id column (the message_id) and the created_at column, quoted.
    fn id_column(&self) -> &'static str;
    fn created_column(&self) -> &'static str;
    /// The states a row can be in, and whether each counts as published.
    fn states(&self) -> &'static [(&'static str, bool)];
    /// Insert row number `n` in state `state` (an index into [`Framework::states`]) created
    /// `age_ms` ago, in the caller's open transaction; returns its id (the message_id).
    fn insert(
        &self,
        db: &Client,
        n: i64,
        state: usize,
        age_ms: i32,
    ) -> impl Future<Output = String> + Send;
    /// The old publisher's updates of one unpublished row, each its own transaction (`$1` is
    /// the id as text), and whether the row counts as published after each.
    fn publish_steps(&self) -> &'static [(&'static str, bool)];
    /// walbox's flags for this framework (besides the connection and naming ones).
    fn walbox_args(&self, env: &TestEnv) -> Vec<String>;
}

/// One recorded write: the row, whether it is published afterwards, the writing transaction.
#[derive(Clone, Debug)]
struct Write {
    id: String,
    published: bool,
    xid: String,
}

/// Insert a row in a transaction of its own, recording its transaction id.
async fn insert_row<F: Framework>(
    framework: &F,
    db: &Client,
    n: i64,
    state: usize,
    age_ms: i32,
) -> Write {
    db.batch_execute("BEGIN").await.unwrap();
    let id = framework.insert(db, n, state, age_ms).await;
    let xid: String = db
        .query_one("SELECT pg_current_xact_id()::text", &[])
        .await
        .unwrap()
        .get(0);
    db.batch_execute("COMMIT").await.unwrap();
    Write {
        id,
        published: framework.states()[state].1,
        xid,
    }
}

/// Run the scene: `consumer` receives what walbox publishes with the preset's topology.
pub(crate) async fn cut_over_scene<F: Framework>(
    env: &mut TestEnv,
    framework: &F,
    consumer: &mut lapin::Consumer,
) {
    env.db.batch_execute(framework.ddl()).await.expect("DDL");
    // Rows in every state, interleaved in creation time.
    let states = framework.states().len();
    let mut writes = Vec::new();
    let mut inserted = Vec::new();
    for n in 0..(states * 12) as i64 {
        let write = insert_row(
            framework,
            &env.db,
            n,
            n as usize % states,
            60_000 - n as i32,
        )
        .await;
        inserted.push(write.id.clone());
        writes.push(write);
    }
    let unpublished: Vec<String> = writes
        .iter()
        .filter(|write| !write.published)
        .map(|write| write.id.clone())
        .collect();
    let log = Arc::new(Mutex::new(writes));
    let stop = Arc::new(AtomicBool::new(false));
    let through = Arc::new(AtomicBool::new(false));

    // The old publisher, still running: marks the unpublished rows published, one by one. The
    // first half before walbox starts, the next quarter while it starts, the last quarter
    // once its backfill is under way (so some updates surely come after the snapshot).
    let publisher = {
        let (log, stop, url) = (Arc::clone(&log), Arc::clone(&stop), env.postgres_url());
        let through = Arc::clone(&through);
        let steps = framework.publish_steps();
        let record = format!(
            "SELECT 1 FROM {} WHERE slot_name = '{}' AND state <> 'creating'",
            framework.record_table(),
            env.name
        );
        let mut rows = unpublished.clone();
        rows.reverse();
        async move {
            let db = pg_connect(&url).await;
            let count = rows.len();
            for (at, id) in rows.into_iter().enumerate() {
                if at == count * 3 / 4 {
                    while !matches!(db.query_opt(&record, &[]).await, Ok(Some(_))) {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                }
                for (sql, published) in steps {
                    if stop.load(Ordering::Relaxed) {
                        return;
                    }
                    db.batch_execute("BEGIN").await.unwrap();
                    db.execute(*sql, &[&id])
                        .await
                        .expect("the old publisher's update");
                    let xid: String = db
                        .query_one("SELECT pg_current_xact_id()::text", &[])
                        .await
                        .unwrap()
                        .get(0);
                    db.batch_execute("COMMIT").await.unwrap();
                    let write = Write {
                        id: id.clone(),
                        published: *published,
                        xid,
                    };
                    log.lock().await.push(write);
                    let pause = if at < count / 2 { 5 } else { 40 };
                    tokio::time::sleep(Duration::from_millis(pause)).await;
                }
            }
            through.store(true, Ordering::Relaxed);
        }
    };
    // A service still inserting events (unpublished, as its framework inserts them).
    let writer = {
        let (log, stop, url) = (Arc::clone(&log), Arc::clone(&stop), env.postgres_url());
        async move {
            let db = pg_connect(&url).await;
            let mut new = Vec::new();
            let mut n = 1_000;
            while !stop.load(Ordering::Relaxed) {
                let write = insert_row(framework, &db, n, 0, 0).await;
                new.push(write.id.clone());
                log.lock().await.push(write);
                n += 1;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            new
        }
    };
    let scene = async {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let args = framework.walbox_args(env);
        let run = start_walbox(env, args, &["--backfill"]).await;
        // Until the old publisher is through (its last quarter waits for the backfill).
        let deadline = std::time::Instant::now() + WAIT;
        while !through.load(Ordering::Relaxed) && std::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        stop.store(true, Ordering::Relaxed);
        run
    };
    let ((), new, run) = tokio::join!(publisher, writer, scene);

    // The oracle.
    let snapshot: String = env
        .db
        .query_one(
            &format!(
                "SELECT snapshot FROM {} WHERE slot_name = $1 AND state = 'done'",
                framework.record_table()
            ),
            &[&env.name],
        )
        .await
        .expect("the backfill's record, done")
        .get(0);
    let writes = log.lock().await.clone();
    let mut visible = HashSet::new();
    for write in &writes {
        let seen: bool = env
            .db
            .query_one(
                "SELECT pg_visible_in_snapshot(($1::text)::xid8, ($2::text)::pg_snapshot)",
                &[&write.xid, &snapshot],
            )
            .await
            .unwrap()
            .get(0);
        if seen {
            visible.insert(write.xid.clone());
        }
    }
    let mut state_at_snapshot: BTreeMap<String, bool> = BTreeMap::new();
    let mut in_snapshot = HashSet::new();
    let mut known = HashSet::new();
    let mut raced = (0, 0);
    for write in &writes {
        let seen = visible.contains(&write.xid);
        if known.insert(write.id.clone()) {
            // The insert.
            if seen {
                in_snapshot.insert(write.id.clone());
                state_at_snapshot.insert(write.id.clone(), write.published);
            }
            continue;
        }
        // An update of the old publisher: it counts if the snapshot saw it.
        if seen {
            state_at_snapshot.insert(write.id.clone(), write.published);
            raced.0 += 1;
        } else {
            raced.1 += 1;
        }
    }
    let owed: HashSet<&String> = state_at_snapshot
        .iter()
        .filter(|(_, published)| !**published)
        .map(|(id, _)| id)
        .collect();
    let live: Vec<&String> = new.iter().filter(|id| !in_snapshot.contains(*id)).collect();
    assert!(
        raced.0 > 0 && raced.1 > 0,
        "the old publisher's updates did not race the cut-over (before {}, after {}); \
         the scene proves nothing",
        raced.0,
        raced.1
    );
    assert!(!live.is_empty(), "no row was inserted after the cut-over");

    // Exactly those, each once: the backfilled first in creation order, then the new ones.
    let expected_count = owed.len() + live.len();
    let deliveries = receive(consumer, expected_count, WAIT).await;
    assert_eq!(
        deliveries.len(),
        expected_count,
        "expected {} backfilled and {} streamed rows; log:\n{}",
        owed.len(),
        live.len(),
        env.run_log(run)
    );
    let extra: Vec<String> = receive_any(consumer, QUIET)
        .await
        .iter()
        .map(message_id)
        .collect();
    assert!(
        extra.is_empty(),
        "sent more than once or not owed: {extra:?}"
    );
    let ids: Vec<String> = deliveries.iter().map(message_id).collect();
    let (backfilled, streamed) = ids.split_at(owed.len());
    let creation_order: Vec<String> = env
        .db
        .query(
            &format!(
                "SELECT {id}::text FROM {table} WHERE {id}::text = ANY($1) ORDER BY {created}, {id}",
                id = framework.id_column(),
                table = framework.table(),
                created = framework.created_column(),
            ),
            &[&owed.iter().map(|id| id.as_str()).collect::<Vec<_>>()],
        )
        .await
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect();
    assert_eq!(
        backfilled,
        creation_order.as_slice(),
        "the backfilled rows, in creation order (log:\n{})",
        env.run_log(run)
    );
    assert!(
        deliveries[..owed.len()]
            .iter()
            .all(|d| header_text(d, "x-backfill").is_some())
    );
    let live: Vec<String> = live.into_iter().cloned().collect();
    assert_eq!(streamed, live.as_slice(), "the new rows, in commit order");
    assert!(
        deliveries[owed.len()..]
            .iter()
            .all(|d| header_text(d, "x-backfill").is_none())
    );
    eprintln!(
        "cut-over: {} rows before the slot ({} unpublished), {} owed by the snapshot, old \
         publisher's updates {} before / {} after it, {} new rows streamed",
        inserted.len(),
        unpublished.len(),
        owed.len(),
        raced.0,
        raced.1,
        live.len()
    );
}
