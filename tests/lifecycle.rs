//! The outbox table's whole life on a real PostgreSQL and RabbitMQ (issue #19): a partitioned
//! outbox, a table dropped and created again, a publication that does not publish inserts or
//! filters rows, and changes to the publication or the table while walbox runs.
//!
//! Every test counts: the rows committed against the messages delivered, and where walbox must
//! stop, that it stopped with a definite error (exit 1) and that the slot was not acknowledged
//! past the first row it did not deliver.

mod common;

use std::collections::HashSet;
use std::process::ExitStatus;
use std::time::{Duration, Instant};

use common::*;
use lapin::Consumer;
use walbox::lsn::Lsn;

const WAIT: Duration = Duration::from_secs(30);

/// sql/outbox.sql's columns, partitioned by created_at (the key must be in the primary key).
const PARTITIONED_OUTBOX: &str = "DROP TABLE outbox; \
    CREATE TABLE outbox ( \
      id uuid NOT NULL DEFAULT gen_random_uuid(), \
      aggregate_type text NOT NULL, aggregate_id text NOT NULL, event_type text NOT NULL, \
      payload jsonb NOT NULL, headers jsonb, created_at timestamptz NOT NULL DEFAULT now(), \
      PRIMARY KEY (id, created_at)) PARTITION BY RANGE (created_at); \
    CREATE TABLE outbox_2024 PARTITION OF outbox FOR VALUES FROM ('2024-01-01') TO ('2025-01-01'); \
    CREATE TABLE outbox_2025 PARTITION OF outbox FOR VALUES FROM ('2025-01-01') TO ('2026-01-01');";

/// Insert `count` events, each in its own transaction, with `created_at` = `at`; their ids.
async fn insert_at(env: &TestEnv, count: usize, at: &str) -> Vec<String> {
    let mut ids = Vec::with_capacity(count);
    for n in 0..count {
        let row = env
            .db
            .query_one(
                "INSERT INTO outbox (aggregate_type, aggregate_id, event_type, payload, created_at) \
                 VALUES ('order', 'o-1', 'created', jsonb_build_object('n', $1::int), $2::text::timestamptz) \
                 RETURNING id::text",
                &[&(n as i32), &at],
            )
            .await
            .expect("insert");
        ids.push(row.get(0));
    }
    ids
}

/// Insert `count` events now, each in its own transaction; their ids.
async fn insert_now(env: &TestEnv, count: usize) -> Vec<String> {
    let mut ids = Vec::with_capacity(count);
    for _ in 0..count {
        ids.push(env.insert("order", "created", r#"{"n": 1}"#).await);
    }
    ids
}

/// Receive until every id in `expected` arrived or `within` ran out; the ids received.
async fn delivered(
    consumer: &mut Consumer,
    expected: &HashSet<String>,
    within: Duration,
) -> HashSet<String> {
    let deadline = Instant::now() + within;
    let mut seen = HashSet::new();
    while !expected.is_subset(&seen) && Instant::now() < deadline {
        let left = deadline.saturating_duration_since(Instant::now());
        for delivery in receive(consumer, 1, left.min(Duration::from_millis(500))).await {
            seen.insert(message_id(&delivery));
        }
    }
    seen
}

/// Wait until walbox `run` exits, at most `within`.
async fn exited(env: &mut TestEnv, run: usize, within: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + within;
    loop {
        if let Some(status) = env.try_wait(run) {
            return Some(status);
        }
        if Instant::now() > deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Before/after numbers of one scenario, for the assertion messages.
fn tally(
    committed: &HashSet<String>,
    seen: &HashSet<String>,
    confirmed: Option<Lsn>,
    mark: Lsn,
) -> String {
    format!(
        "{} committed, {} of them delivered; slot confirmed_flush_lsn {}, WAL before the first \
         row {mark}",
        committed.len(),
        committed.intersection(seen).count(),
        confirmed.map_or("none".to_owned(), |lsn| lsn.to_string()),
    )
}

#[tokio::test]
async fn a_partitioned_outbox_is_relayed_while_partitions_come_and_go() {
    let mut env = TestEnv::new("lc_part").await;
    env.db.batch_execute(PARTITIONED_OUTBOX).await.unwrap();
    let mut consumer = env.queue("all", "#").await;
    let run = env.spawn_run(&[]);
    env.wait_slot_active(WAIT).await;
    let mark = env.current_wal_lsn().await;

    let mut committed: HashSet<String> = HashSet::new();
    committed.extend(insert_at(&env, 5, "2024-06-01 00:00:00+00").await);
    committed.extend(insert_at(&env, 5, "2025-06-01 00:00:00+00").await);
    // A new partition attached while walbox runs, then rows routed to it.
    env.db
        .batch_execute(
            "CREATE TABLE outbox_2026 (LIKE outbox INCLUDING DEFAULTS); \
             ALTER TABLE outbox ATTACH PARTITION outbox_2026 \
               FOR VALUES FROM ('2026-01-01') TO ('2027-01-01');",
        )
        .await
        .unwrap();
    committed.extend(insert_at(&env, 5, "2026-06-01 00:00:00+00").await);
    // The oldest partition detached and dropped (pruning old events), the next one dropped.
    env.db
        .batch_execute("ALTER TABLE outbox DETACH PARTITION outbox_2024; DROP TABLE outbox_2024;")
        .await
        .unwrap();
    committed.extend(insert_at(&env, 5, "2025-07-01 00:00:00+00").await);
    env.db
        .batch_execute("DROP TABLE outbox_2025")
        .await
        .unwrap();
    committed.extend(insert_at(&env, 5, "2026-07-01 00:00:00+00").await);
    let after = env.current_wal_lsn().await;

    let seen = delivered(&mut consumer, &committed, WAIT).await;
    let confirmed = env.wait_confirmed(after, WAIT).await;
    assert!(
        committed.is_subset(&seen) && confirmed >= after,
        "{}; log:\n{}",
        tally(&committed, &seen, Some(confirmed), mark),
        env.run_log(run)
    );
    assert_eq!(seen.len(), committed.len(), "nothing else arrived");
}

#[tokio::test]
async fn an_outbox_dropped_and_created_again_stops_walbox_before_the_new_rows() {
    let mut env = TestEnv::new("lc_recreate").await;
    let mut consumer = env.queue("all", "#").await;
    let run = env.spawn_run(&[]);
    env.wait_slot_active(WAIT).await;
    let before: HashSet<String> = insert_now(&env, 3).await.into_iter().collect();
    let seen = delivered(&mut consumer, &before, WAIT).await;
    assert_eq!(seen, before, "log:\n{}", env.run_log(run));

    // An ORM migration rebuilds the table; the FOR TABLE publication loses it.
    env.db
        .batch_execute(&format!("DROP TABLE outbox; {OUTBOX_SQL}"))
        .await
        .unwrap();
    let mark = env.current_wal_lsn().await;
    let lost: HashSet<String> = insert_now(&env, 5).await.into_iter().collect();

    stops_before(
        &mut env,
        run,
        &mut consumer,
        &lost,
        mark,
        "was dropped and created again",
    )
    .await;
}

/// Assert that walbox `run` stopped with a definite error (exit 1) that says `what`, that
/// none of `lost` arrived, and that the slot was not acknowledged past `mark` (the WAL
/// position before the first of them). Prints the numbers.
async fn stops_before(
    env: &mut TestEnv,
    run: usize,
    consumer: &mut Consumer,
    lost: &HashSet<String>,
    mark: Lsn,
    what: &str,
) {
    let status = exited(env, run, Duration::from_secs(15)).await;
    let seen = delivered(consumer, lost, Duration::from_secs(1)).await;
    let confirmed = env.slot_confirmed().await;
    let numbers = tally(lost, &seen, confirmed, mark);
    eprintln!("{what}: {numbers}; exit {status:?}");
    let log = env.run_log(run);
    assert_eq!(
        status.and_then(|status| status.code()),
        Some(1),
        "walbox must stop with a definite error; {numbers}; log:\n{log}"
    );
    assert!(
        confirmed.is_some_and(|confirmed| confirmed <= mark),
        "the slot passed rows walbox did not deliver: {numbers}"
    );
    assert!(
        log.contains(what),
        "the error names what changed; log:\n{log}"
    );
}

/// Start walbox, wait until it streams, and have it deliver three events first.
async fn relaying(env: &mut TestEnv, consumer: &mut Consumer) -> usize {
    let run = env.spawn_run(&[]);
    env.wait_slot_active(WAIT).await;
    let first: HashSet<String> = insert_now(env, 3).await.into_iter().collect();
    let seen = delivered(consumer, &first, WAIT).await;
    assert_eq!(seen, first, "log:\n{}", env.run_log(run));
    run
}

#[tokio::test]
async fn an_outbox_made_anew_under_a_publication_for_all_tables_is_followed() {
    let mut env = TestEnv::new("lc_alltables").await;
    let mut consumer = env.queue("all", "#").await;
    env.db
        .batch_execute(&format!(
            "CREATE PUBLICATION {} FOR ALL TABLES WITH (publish = 'insert', \
             publish_via_partition_root = true); \
             CREATE TABLE audit (id serial PRIMARY KEY, note text)",
            env.name
        ))
        .await
        .unwrap();
    let run = relaying(&mut env, &mut consumer).await;
    // Another table's rows come through the publication too: skipped, as its Relation proves.
    env.db
        .batch_execute("INSERT INTO audit (note) VALUES ('a'), ('b')")
        .await
        .unwrap();
    env.db
        .batch_execute(&format!("DROP TABLE outbox; {OUTBOX_SQL}"))
        .await
        .unwrap();
    let mark = env.current_wal_lsn().await;
    let committed: HashSet<String> = insert_now(&env, 5).await.into_iter().collect();
    let after = env.current_wal_lsn().await;
    let seen = delivered(&mut consumer, &committed, WAIT).await;
    let confirmed = env.wait_confirmed(after, WAIT).await;
    let numbers = tally(&committed, &seen, Some(confirmed), mark);
    eprintln!("FOR ALL TABLES, table made anew: {numbers}");
    assert!(
        committed.is_subset(&seen) && confirmed >= after,
        "{numbers}; log:\n{}",
        env.run_log(run)
    );
    assert_eq!(seen.len(), committed.len(), "nothing else arrived");
    assert!(env.try_wait(run).is_none(), "walbox goes on");
}

#[tokio::test]
async fn a_publication_switched_off_and_on_again_stops_walbox_before_the_rows_it_hid() {
    let mut env = TestEnv::new("lc_flip").await;
    let mut consumer = env.queue("all", "#").await;
    let run = relaying(&mut env, &mut consumer).await;
    let mark = env.current_wal_lsn().await;
    env.db
        .batch_execute(&format!(
            "ALTER PUBLICATION {} SET (publish = 'update')",
            env.name
        ))
        .await
        .unwrap();
    let hidden: HashSet<String> = insert_now(&env, 4).await.into_iter().collect();
    // Back on within the same second: the publication reads as before.
    env.db
        .batch_execute(&format!(
            "ALTER PUBLICATION {} SET (publish = 'insert')",
            env.name
        ))
        .await
        .unwrap();
    insert_now(&env, 2).await;
    stops_before(
        &mut env,
        run,
        &mut consumer,
        &hidden,
        mark,
        "changed and changed back",
    )
    .await;
}

#[tokio::test]
async fn a_table_taken_out_of_the_publication_stops_walbox() {
    let mut env = TestEnv::new("lc_dropped").await;
    let mut consumer = env.queue("all", "#").await;
    let run = relaying(&mut env, &mut consumer).await;
    let mark = env.current_wal_lsn().await;
    env.db
        .batch_execute(&format!("ALTER PUBLICATION {} DROP TABLE outbox", env.name))
        .await
        .unwrap();
    let lost: HashSet<String> = insert_now(&env, 3).await.into_iter().collect();
    stops_before(
        &mut env,
        run,
        &mut consumer,
        &lost,
        mark,
        "was removed from publication",
    )
    .await;
}

#[tokio::test]
async fn a_partition_set_unlogged_stops_walbox() {
    // PostgreSQL refuses SET UNLOGGED for a table listed in a publication, but not for a
    // partition of one (nor for a table covered FOR ALL TABLES or IN SCHEMA).
    let mut env = TestEnv::new("lc_unlogged").await;
    env.db.batch_execute(PARTITIONED_OUTBOX).await.unwrap();
    env.db
        .batch_execute("CREATE TABLE outbox_rest PARTITION OF outbox DEFAULT")
        .await
        .unwrap();
    let mut consumer = env.queue("all", "#").await;
    let run = relaying(&mut env, &mut consumer).await;
    let mark = env.current_wal_lsn().await;
    env.db
        .batch_execute("ALTER TABLE outbox_2025 SET UNLOGGED")
        .await
        .unwrap();
    let lost: HashSet<String> = insert_at(&env, 3, "2025-05-01 00:00:00+00")
        .await
        .into_iter()
        .collect();
    stops_before(&mut env, run, &mut consumer, &lost, mark, "is UNLOGGED").await;
}

/// `walbox run` against a publication made beforehand: its exit code and log.
async fn run_against(definition: &str, what: &str) -> (Option<i32>, String) {
    let mut env = TestEnv::new(what).await;
    env.db
        .batch_execute(&format!("CREATE PUBLICATION {} {definition}", env.name))
        .await
        .unwrap();
    let run = env.spawn_run(&[]);
    let deadline = Instant::now() + WAIT;
    while Instant::now() < deadline {
        if let Some(status) = env.try_wait(run) {
            return (status.code(), env.run_log(run));
        }
        if streaming(&env).await {
            return (None, env.run_log(run));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!(
        "walbox neither stopped nor streamed; log:\n{}",
        env.run_log(run)
    );
}

/// Whether a walsender streams from the test's slot.
async fn streaming(env: &TestEnv) -> bool {
    env.db
        .query_opt(
            "SELECT 1 FROM pg_replication_slots s JOIN pg_stat_replication r \
             ON r.pid = s.active_pid WHERE s.slot_name = $1",
            &[&env.name],
        )
        .await
        .unwrap()
        .is_some()
}

#[tokio::test]
async fn a_row_filter_or_a_column_list_without_the_mapped_columns_is_refused() {
    let (code, log) = run_against(
        "FOR TABLE outbox WHERE (event_type <> 'internal') WITH (publish = 'insert')",
        "lc_filter",
    )
    .await;
    assert_eq!(code, Some(1), "{log}");
    assert!(log.contains("row filter"), "{log}");
    let (code, log) = run_against(
        "FOR TABLE outbox (id, aggregate_type, event_type) WITH (publish = 'insert')",
        "lc_columns",
    )
    .await;
    assert_eq!(code, Some(1), "{log}");
    assert!(
        log.contains("publishes only columns (id, aggregate_type, event_type)"),
        "{log}"
    );
    // A column list that keeps every mapped column is fine.
    let (code, log) = run_against(
        "FOR TABLE outbox (id, aggregate_type, aggregate_id, event_type, payload, headers, \
         created_at) WITH (publish = 'insert')",
        "lc_allcolumns",
    )
    .await;
    assert_eq!(code, None, "still running; {log}");
}

#[tokio::test]
async fn a_publication_that_does_not_publish_inserts_is_refused() {
    let mut env = TestEnv::new("lc_noinsert").await;
    let mut consumer = env.queue("all", "#").await;
    env.db
        .batch_execute(&format!(
            "CREATE PUBLICATION {} FOR TABLE outbox WITH (publish = 'update')",
            env.name
        ))
        .await
        .unwrap();
    let run = env.spawn_run(&[]);
    let status = exited(&mut env, run, Duration::from_secs(5)).await;
    let mark = env.current_wal_lsn().await;
    let committed: HashSet<String> = insert_now(&env, 3).await.into_iter().collect();
    let seen = delivered(&mut consumer, &committed, Duration::from_secs(3)).await;
    let after = env.current_wal_lsn().await;
    let status = match status {
        Some(status) => Some(status),
        None => exited(&mut env, run, Duration::from_secs(2)).await,
    };
    let confirmed = env.slot_confirmed().await;
    let numbers = tally(&committed, &seen, confirmed, mark);
    let log = env.run_log(run);
    assert_eq!(
        status.and_then(|status| status.code()),
        Some(1),
        "walbox must refuse the publication; {numbers}; slot past them: {}; log:\n{log}",
        confirmed.is_some_and(|confirmed| confirmed >= after)
    );
    assert!(
        confirmed.is_none_or(|confirmed| confirmed <= mark),
        "{numbers}"
    );
    assert!(
        log.contains("publish = 'update, insert'"),
        "the error gives the statement that fixes it; log:\n{log}"
    );
}

#[tokio::test]
async fn a_partitioned_outbox_without_publish_via_partition_root_is_refused_then_set_up() {
    let mut env = TestEnv::new("lc_viaroot").await;
    env.db.batch_execute(PARTITIONED_OUTBOX).await.unwrap();
    let mut consumer = env.queue("all", "#").await;
    // A publication and a slot made before walbox knew about partitions.
    env.db
        .batch_execute(&format!(
            "CREATE PUBLICATION {} FOR TABLE outbox WITH (publish = 'insert')",
            env.name
        ))
        .await
        .unwrap();
    env.db
        .execute(
            "SELECT pg_create_logical_replication_slot($1, 'pgoutput')",
            &[&env.name],
        )
        .await
        .unwrap();
    let mark = env.current_wal_lsn().await;
    let mut committed: HashSet<String> = HashSet::new();
    committed.extend(insert_at(&env, 4, "2025-03-01 00:00:00+00").await);

    let refused = env.spawn_run(&[]);
    let status = exited(&mut env, refused, WAIT).await;
    let log = env.run_log(refused);
    assert_eq!(status.and_then(|status| status.code()), Some(1), "{log}");
    assert!(
        log.contains("SET (publish_via_partition_root = true)"),
        "{log}"
    );
    let confirmed = env.slot_confirmed().await;
    assert!(
        confirmed.is_some_and(|confirmed| confirmed <= mark),
        "slot {confirmed:?}"
    );

    let setup = env.walbox("setup", &[]);
    let said = String::from_utf8_lossy(&setup.stdout);
    assert!(
        setup.status.success(),
        "{said}{}",
        String::from_utf8_lossy(&setup.stderr)
    );
    assert!(
        said.contains("publish_via_partition_root turned on"),
        "{said}"
    );
    committed.extend(insert_at(&env, 3, "2024-03-01 00:00:00+00").await);
    let after = env.current_wal_lsn().await;

    // The rows written before (published under the partition's name) and after.
    let run = env.spawn_run(&[]);
    let seen = delivered(&mut consumer, &committed, WAIT).await;
    let confirmed = env.wait_confirmed(after, WAIT).await;
    let numbers = tally(&committed, &seen, Some(confirmed), mark);
    eprintln!("publish_via_partition_root turned on by setup: {numbers}");
    assert!(
        committed.is_subset(&seen) && confirmed >= after,
        "{numbers}; log:\n{}",
        env.run_log(run)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_is_acknowledged_while_the_guard_cannot_read() {
    let mut env = TestEnv::new("lc_blocked").await;
    let mut consumer = env.queue("all", "#").await;
    let run = relaying(&mut env, &mut consumer).await;
    let address = common::http::served_address(&env, run, WAIT).await;
    wait_ready(&address, true).await;

    // The guard reads pg_inherits (for partitions); the relay itself never does for a plain
    // table. Locked, every reading waits until its statement times out.
    let locker = pg_connect(&env.postgres_url()).await;
    locker
        .batch_execute("BEGIN; LOCK TABLE pg_catalog.pg_inherits IN ACCESS EXCLUSIVE MODE")
        .await
        .unwrap();
    let mark = env.current_wal_lsn().await;
    let held: HashSet<String> = insert_now(&env, 5).await.into_iter().collect();
    let seen = delivered(&mut consumer, &held, WAIT).await;
    assert_eq!(seen, held, "the relay goes on");
    wait_ready(&address, false).await;
    let confirmed = env.slot_confirmed().await;
    assert!(
        confirmed.is_some_and(|confirmed| confirmed <= mark),
        "acknowledged {confirmed:?} past {mark} without a reading"
    );
    locker.batch_execute("COMMIT").await.unwrap();
    let after = env.current_wal_lsn().await;
    assert!(env.wait_confirmed(after, WAIT).await >= after);
    wait_ready(&address, true).await;

    // The guard's connection killed: it reconnects, and acknowledging goes on.
    env.db
        .execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = $1",
            &[&format!("walbox-guard/{}", env.name)],
        )
        .await
        .unwrap();
    let more: HashSet<String> = insert_now(&env, 2).await.into_iter().collect();
    let after = env.current_wal_lsn().await;
    assert_eq!(delivered(&mut consumer, &more, WAIT).await, more);
    assert!(env.wait_confirmed(after, WAIT).await >= after);
    assert!(env.try_wait(run).is_none(), "log:\n{}", env.run_log(run));
}

/// Wait until /readyz says `ready`.
async fn wait_ready(address: &str, ready: bool) {
    let want = if ready { 200 } else { 503 };
    let deadline = Instant::now() + WAIT;
    loop {
        let status = common::http::get(address, "/readyz")
            .await
            .map(|(code, _)| code);
        if status == Some(want) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "/readyz never answered {want}: {status:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_transaction_that_alters_the_publication_holds_acknowledgements() {
    let mut env = TestEnv::new("lc_pending").await;
    let mut consumer = env.queue("all", "#").await;
    let run = relaying(&mut env, &mut consumer).await;
    let migration = pg_connect(&env.postgres_url()).await;
    migration
        .batch_execute(&format!(
            "BEGIN; ALTER PUBLICATION {} SET (publish = 'insert, update')",
            env.name
        ))
        .await
        .unwrap();
    let mark = env.current_wal_lsn().await;
    let rows: HashSet<String> = insert_now(&env, 3).await.into_iter().collect();
    assert_eq!(delivered(&mut consumer, &rows, WAIT).await, rows);
    // Several readings pass meanwhile; none may prove anything while the change is open.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let confirmed = env.slot_confirmed().await;
    assert!(
        confirmed.is_some_and(|confirmed| confirmed <= mark),
        "acknowledged {confirmed:?} past {mark} while the publication was being altered"
    );
    migration.batch_execute("ROLLBACK").await.unwrap();
    let after = env.current_wal_lsn().await;
    assert!(env.wait_confirmed(after, WAIT).await >= after);
    assert!(env.try_wait(run).is_none(), "log:\n{}", env.run_log(run));
}

/// Trigger-based partitioning by inheritance (PostgreSQL before 10, pg_partman 4's trigger
/// mode): a BEFORE INSERT trigger on the outbox puts each row into a child table made with
/// INHERITS. `SELECT * FROM outbox` shows the rows, but pgoutput publishes a child's rows only
/// when the publication covers the child itself (FOR TABLE adds the children that exist when
/// it runs, not later ones).
const ROUTE_TO_CHILD: &str = "CREATE FUNCTION outbox_route() RETURNS trigger LANGUAGE plpgsql AS \
    $$ BEGIN INSERT INTO outbox_2026 VALUES (NEW.*); RETURN NULL; END $$; \
    CREATE TRIGGER outbox_route BEFORE INSERT ON outbox \
      FOR EACH ROW EXECUTE FUNCTION outbox_route();";

/// Insert `count` events through the outbox (a routing trigger returns no row, so the id is
/// chosen here); their ids.
async fn insert_routed(env: &TestEnv, count: usize) -> HashSet<String> {
    let mut ids = HashSet::new();
    for _ in 0..count {
        let id: String = env
            .db
            .query_one("SELECT gen_random_uuid()::text", &[])
            .await
            .unwrap()
            .get(0);
        env.db
            .execute(
                "INSERT INTO outbox (id, aggregate_type, aggregate_id, event_type, payload) \
                 VALUES ($1::text::uuid, 'order', 'o-1', 'created', '{}')",
                &[&id],
            )
            .await
            .expect("insert");
        ids.insert(id);
    }
    ids
}

#[tokio::test]
async fn an_inheritance_child_outside_the_publication_stops_walbox() {
    let mut env = TestEnv::new("lc_inherit").await;
    let mut consumer = env.queue("all", "#").await;
    let run = relaying(&mut env, &mut consumer).await;
    let mark = env.current_wal_lsn().await;
    env.db
        .batch_execute(&format!(
            "CREATE TABLE outbox_2026 () INHERITS (outbox); {ROUTE_TO_CHILD}"
        ))
        .await
        .unwrap();
    let lost = insert_routed(&env, 5).await;
    stops_before(&mut env, run, &mut consumer, &lost, mark, "inherits from").await;
}

#[tokio::test]
async fn an_inheritance_child_in_the_publication_is_relayed() {
    let mut env = TestEnv::new("lc_inherit_in").await;
    let mut consumer = env.queue("all", "#").await;
    let run = relaying(&mut env, &mut consumer).await;
    env.db
        .batch_execute(&format!(
            "BEGIN; CREATE TABLE outbox_2026 () INHERITS (outbox); \
             ALTER PUBLICATION {} ADD TABLE outbox_2026; {ROUTE_TO_CHILD} COMMIT;",
            env.name
        ))
        .await
        .unwrap();
    let committed = insert_routed(&env, 5).await;
    let after = env.current_wal_lsn().await;
    let seen = delivered(&mut consumer, &committed, WAIT).await;
    let confirmed = env.wait_confirmed(after, WAIT).await;
    let numbers = tally(&committed, &seen, Some(confirmed), after);
    eprintln!("inheritance child in the publication: {numbers}");
    assert!(
        committed.is_subset(&seen) && confirmed >= after,
        "{numbers}; log:\n{}",
        env.run_log(run)
    );
    assert!(env.try_wait(run).is_none(), "walbox goes on");
}

#[tokio::test]
async fn an_outbox_published_as_its_partitioned_parent_is_refused() {
    // The outbox is one partition of a bigger partitioned table, and a publication FOR ALL
    // TABLES with publish_via_partition_root = true: PostgreSQL publishes the outbox's rows as
    // rows of the parent (its OID and name), never as the outbox's.
    let mut env = TestEnv::new("lc_parent").await;
    env.db
        .batch_execute(&format!(
            "DROP TABLE outbox; \
             CREATE TABLE events ( \
               id uuid NOT NULL DEFAULT gen_random_uuid(), \
               aggregate_type text NOT NULL, aggregate_id text NOT NULL, \
               event_type text NOT NULL, payload jsonb NOT NULL, headers jsonb, \
               created_at timestamptz NOT NULL DEFAULT now()) PARTITION BY LIST (aggregate_type); \
             CREATE TABLE outbox PARTITION OF events FOR VALUES IN ('order'); \
             CREATE PUBLICATION {} FOR ALL TABLES WITH (publish = 'insert', \
               publish_via_partition_root = true)",
            env.name
        ))
        .await
        .unwrap();
    let mut consumer = env.queue("all", "#").await;
    let run = env.spawn_run(&[]);
    // Streaming (before the fix) or refused at start (after it): the rows come after either.
    let deadline = Instant::now() + WAIT;
    while !streaming(&env).await && env.try_wait(run).is_none() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mark = env.current_wal_lsn().await;
    let committed = insert_routed(&env, 5).await;
    let after = env.current_wal_lsn().await;
    let status = exited(&mut env, run, Duration::from_secs(15)).await;
    let seen = delivered(&mut consumer, &committed, Duration::from_secs(5)).await;
    let confirmed = env.slot_confirmed().await;
    let numbers = tally(&committed, &seen, confirmed, mark);
    eprintln!("outbox published as its parent: {numbers}; WAL after them {after}; exit {status:?}");
    let log = env.run_log(run);
    assert_eq!(
        status.and_then(|status| status.code()),
        Some(1),
        "walbox must refuse to relay; {numbers}; log:\n{log}"
    );
    assert!(
        confirmed.is_none_or(|confirmed| confirmed <= mark),
        "the slot passed rows walbox did not deliver: {numbers}"
    );
    assert!(log.contains("as rows of public.events"), "log:\n{log}");
}
