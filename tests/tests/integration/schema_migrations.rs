//! The schema agent's migrations against real PostgreSQL: expand/contract
//! under a pgbench load (no failed transaction, no lock wait beyond
//! lock_timeout, data identical), rollback to exactly the database before,
//! and bad input (invalid SQL, unknown table, applied twice, racing).

use std::collections::BTreeMap;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use agents::pg::Timeouts;
use domain::Limits;
use domain::target::ConnectionUrl;
use event_store::{AppendConfig, Appender, ReadConfig, Reader};
use schema::migration::{
    Format, HistoryStore, Migration, MigrationConfig, MigrationError, Migrator, NoProgress, Target,
};
use sqlx::{Connection, PgPool};
use tests::*;

/// lock_timeout of the tests' migrations.
const LOCK_TIMEOUT_MS: u64 = 200;

struct Fixture {
    store_db: TestDb,
    target_db: TestDb,
    store_pool: PgPool,
    target: Target,
    migrator: Migrator,
    committers: Vec<tokio::task::JoinHandle<()>>,
}

fn test_config() -> MigrationConfig {
    MigrationConfig {
        timeouts: Timeouts {
            lock_timeout_ms: LOCK_TIMEOUT_MS,
            statement_timeout_ms: 30_000,
            build_timeout_ms: 60_000,
            attempts_max: 50,
            retry_backoff_ms: 20,
        },
        backfill_batch_rows: 2_000,
        backfill_pause_ms: 5,
        progress_interval_ms: 100,
        migrations_dir: None,
    }
}

impl Fixture {
    async fn new() -> Fixture {
        let store_db = TestDb::create().await;
        let target_db = TestDb::create().await;
        let store_pool = store_db.pool().await;
        event_store::MIGRATOR.run(&store_pool).await.unwrap();
        let (appender, committers) = Appender::start(store_pool.clone(), AppendConfig::default());
        let reader = Reader::new(store_pool.clone(), ReadConfig::default());
        let migrator = Migrator::new(
            HistoryStore::new(appender, reader, Limits::default()),
            test_config(),
        );
        let target = Target {
            name: "app".into(),
            pool: sqlx::postgres::PgPoolOptions::new()
                .max_connections(4)
                .connect(&target_db.url)
                .await
                .unwrap(),
            url: ConnectionUrl::parse(&target_db.url).unwrap(),
        };
        Fixture {
            store_db,
            target_db,
            store_pool,
            target,
            migrator,
            committers,
        }
    }

    async fn pgbench_init(&self, scale: u32) {
        let status = tokio::process::Command::new(pg_bin("pgbench"))
            .args(["-i", "-q", "-s", &scale.to_string(), &self.target_db.url])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .await
            .unwrap();
        assert!(status.success(), "pgbench -i failed");
    }

    async fn drop(self) {
        self.target.pool.close().await;
        self.store_pool.close().await;
        for committer in self.committers {
            committer.abort();
        }
        self.target_db.drop_database().await;
        self.store_db.drop_database().await;
    }
}

fn pg_bin(name: &str) -> String {
    let dir = std::env::var("DBSWARM_PG_BIN").unwrap_or_else(|_| "/usr/lib/postgresql/15/bin".into());
    format!("{dir}/{name}")
}

fn yaml(text: &str) -> Migration {
    Migration::parse(text, Format::Yaml, None).unwrap()
}

const ACCOUNTS: &str = r#"
name: accounts_v2
operations:
  - rename_column: {table: pgbench_accounts, from: filler, to: note}
  - alter_column: {table: pgbench_accounts, column: abalance, type: bigint}
"#;

/// pgbench runs back to back (several clients, the built-in TPC-B-like
/// script) until told to stop; every run must end without a failed or
/// aborted transaction.
fn run_pgbench_until(url: String, stop: Arc<AtomicBool>) -> tokio::task::JoinHandle<(u64, Vec<String>)> {
    tokio::spawn(async move {
        let mut transactions = 0;
        let mut problems = Vec::new();
        while !stop.load(Ordering::SeqCst) {
            let output = tokio::process::Command::new(pg_bin("pgbench"))
                .args(["-n", "-c", "4", "-j", "2", "-T", "1", &url])
                .output()
                .await
                .unwrap();
            let stdout = String::from_utf8_lossy(&output.stdout).to_string();
            let stderr = String::from_utf8_lossy(&output.stderr).to_string();
            let failed_zero = stdout.contains("number of failed transactions: 0 ");
            if !output.status.success() || !failed_zero || stderr.contains("ERROR") {
                problems.push(format!("{stdout}\n{stderr}"));
            }
            transactions += stdout
                .lines()
                .find_map(|l| l.strip_prefix("number of transactions actually processed: "))
                .and_then(|n| n.split_whitespace().next()?.parse::<u64>().ok())
                .unwrap_or(0);
        }
        (transactions, problems)
    })
}

/// Samples pg_locks until told to stop; the longest wait for a table lock
/// on pgbench_accounts seen (PostgreSQL's own `waitstart`), ms.
fn sample_lock_waits(pool: PgPool, stop: Arc<AtomicBool>) -> tokio::task::JoinHandle<f64> {
    tokio::spawn(async move {
        let mut longest_ms: f64 = 0.0;
        while !stop.load(Ordering::SeqCst) {
            let waited: Option<f64> = sqlx::query_scalar(
                "SELECT max(extract(epoch FROM clock_timestamp() - l.waitstart) * 1000)::float8 \
                 FROM pg_locks l WHERE NOT l.granted AND l.locktype = 'relation' \
                 AND l.relation = 'pgbench_accounts'::regclass",
            )
            .fetch_one(&pool)
            .await
            .unwrap();
            longest_ms = longest_ms.max(waited.unwrap_or(0.0));
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        longest_ms
    })
}

/// Every account's balance is the sum of its history's deltas (pgbench's
/// TPC-B invariant): no write was lost or doubled.
async fn balances_match_history(pool: &PgPool) {
    let wrong: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pgbench_accounts a \
         LEFT JOIN (SELECT aid, sum(delta) AS total FROM pgbench_history GROUP BY aid) h USING (aid) \
         WHERE a.abalance <> coalesce(h.total, 0)",
    )
    .fetch_one(pool)
    .await
    .unwrap();
    assert_eq!(wrong, 0, "accounts whose balance differs from their history");
}

async fn columns(pool: &PgPool, table: &str) -> Vec<(String, String)> {
    sqlx::query_as(
        "SELECT column_name::text, data_type::text FROM information_schema.columns \
         WHERE table_schema = 'public' AND table_name = $1 ORDER BY ordinal_position",
    )
    .bind(table)
    .fetch_all(pool)
    .await
    .unwrap()
}

#[tokio::test]
async fn a_rename_and_a_type_change_expand_and_complete_while_pgbench_writes() {
    let f = Fixture::new().await;
    f.pgbench_init(1).await;
    let pool = &f.target.pool;
    let filler_before: String =
        sqlx::query_scalar("SELECT md5(string_agg(filler, ',' ORDER BY aid)) FROM pgbench_accounts")
            .fetch_one(pool)
            .await
            .unwrap();

    // Given pgbench writing continuously and a sampler of lock waits
    let stop = Arc::new(AtomicBool::new(false));
    let load = run_pgbench_until(f.target_db.url.clone(), stop.clone());
    let waits = sample_lock_waits(pool.clone(), stop.clone());
    tokio::time::sleep(Duration::from_millis(500)).await;

    // When the migration is applied (expand + backfill)
    let applied = f
        .migrator
        .apply(&f.target, yaml(ACCOUNTS), false, &NoProgress)
        .await
        .unwrap();
    assert_eq!(applied.state, "expanded");
    assert_eq!(applied.version, 1);
    assert_eq!(applied.version_schema.as_deref(), Some("public_accounts_v2"));
    assert!(applied.rows_backfilled >= 100_000, "{applied:?}");

    // Then both versions are readable and writable: the new one through its views
    let mut new_version = pool.acquire().await.unwrap();
    sqlx::raw_sql("SET search_path TO public_accounts_v2, public")
        .execute(&mut *new_version)
        .await
        .unwrap();
    let (note, balance): (String, i64) =
        sqlx::query_as("SELECT note, abalance FROM pgbench_accounts WHERE aid = 7")
            .fetch_one(&mut *new_version)
            .await
            .unwrap();
    assert_eq!(note.len(), 84);
    let _ = balance;
    // A new-version writer updates the bigint column; the old column follows (down)
    sqlx::raw_sql(
        "BEGIN; UPDATE pgbench_accounts SET abalance = abalance + 5 WHERE aid = 7; \
         INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) VALUES (1, 1, 7, 5, now()); COMMIT",
    )
    .execute(&mut *new_version)
    .await
    .unwrap();
    let (old, twin): (i32, i64) =
        sqlx::query_as("SELECT abalance, _dbswarm_new_abalance FROM public.pgbench_accounts WHERE aid = 7")
            .fetch_one(pool)
            .await
            .unwrap();
    assert_eq!(i64::from(old), twin, "old and new columns in sync");
    drop(new_version);
    let status = f.migrator.status(&f.target).await.unwrap();
    let active = status.active.unwrap();
    assert_eq!(active.migration.name, "accounts_v2");
    assert_eq!(active.backfill.len(), 1);
    assert_eq!(active.backfill[0].0, "public.pgbench_accounts");

    // When it completes, pgbench still writing
    tokio::time::sleep(Duration::from_millis(300)).await;
    let completed = f.migrator.complete(&f.target, None).await.unwrap();
    assert_eq!(completed.state, "completed");
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    stop.store(true, Ordering::SeqCst);
    let (transactions, problems) = load.await.unwrap();
    let longest_wait_ms = waits.await.unwrap();

    // Then no pgbench transaction failed, none waited for a lock beyond lock_timeout
    assert!(problems.is_empty(), "pgbench runs with problems: {problems:#?}");
    assert!(transactions > 100, "pgbench ran {transactions} transactions");
    assert!(
        longest_wait_ms < (LOCK_TIMEOUT_MS + 300) as f64,
        "a table lock waited {longest_wait_ms} ms (lock_timeout {LOCK_TIMEOUT_MS} ms, plus the DDL's own run time)"
    );
    // And the table has the new shape (the retyped column is a new one,
    // so it comes last), nothing of the migration left over
    assert_eq!(
        columns(pool, "pgbench_accounts").await,
        [
            ("aid".into(), "integer".into()),
            ("bid".into(), "integer".into()),
            ("note".into(), "character".into()),
            ("abalance".into(), "bigint".into()),
        ]
    );
    let triggers: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pg_trigger WHERE tgrelid = 'pgbench_accounts'::regclass AND NOT tgisinternal",
    )
    .fetch_one(pool)
    .await
    .unwrap();
    assert_eq!(triggers, 0);
    // And the data is what was written
    balances_match_history(pool).await;
    let note_after: String =
        sqlx::query_scalar("SELECT md5(string_agg(note, ',' ORDER BY aid)) FROM pgbench_accounts")
            .fetch_one(pool)
            .await
            .unwrap();
    assert_eq!(note_after, filler_before);
    // And the history has it as version 1, with its backfill progress as events
    let status = f.migrator.status(&f.target).await.unwrap();
    assert_eq!(status.applied.len(), 1);
    assert_eq!(status.applied[0].name, "accounts_v2");
    assert!(status.active.is_none());
    let types: Vec<String> = sqlx::query_scalar(
        "SELECT event_type FROM events WHERE stream_id = 'schema-app' ORDER BY event_version",
    )
    .fetch_all(&f.store_pool)
    .await
    .unwrap();
    assert_eq!(types.first().map(String::as_str), Some("MigrationStarted"));
    assert!(
        types.iter().any(|t| t == "MigrationBackfillProgressed"),
        "{types:?}"
    );
    assert_eq!(
        &types[types.len() - 2..],
        ["MigrationExpanded", "MigrationCompleted"]
    );

    // Applying it again is refused, and changes nothing
    let again = f
        .migrator
        .apply(&f.target, yaml(ACCOUNTS), false, &NoProgress)
        .await
        .unwrap_err();
    assert!(
        again
            .to_string()
            .contains("'accounts_v2' is already applied (version 1)"),
        "{again}"
    );
    f.drop().await;
}

/// What "the database as it was" compares: columns, constraints, indexes,
/// triggers, functions, schemas and views, and every row.
async fn snapshot(pool: &PgPool) -> BTreeMap<&'static str, Vec<String>> {
    let queries = [
        (
            "columns",
            "SELECT table_schema || '.' || table_name || '.' || column_name || ' ' || data_type || ' ' || is_nullable || ' ' || coalesce(column_default, '') \
             FROM information_schema.columns WHERE table_schema NOT IN ('pg_catalog', 'information_schema') ORDER BY 1",
        ),
        (
            "constraints",
            "SELECT conrelid::regclass::text || ' ' || conname || ' ' || pg_get_constraintdef(oid) || ' ' || convalidated \
             FROM pg_constraint WHERE connamespace = 'public'::regnamespace ORDER BY 1",
        ),
        (
            "indexes",
            "SELECT indexdef FROM pg_indexes WHERE schemaname = 'public' ORDER BY 1",
        ),
        (
            "triggers",
            "SELECT tgname FROM pg_trigger WHERE NOT tgisinternal ORDER BY 1",
        ),
        (
            "functions",
            "SELECT proname FROM pg_proc WHERE pronamespace = 'public'::regnamespace ORDER BY 1",
        ),
        (
            "schemas",
            "SELECT nspname FROM pg_namespace WHERE nspname NOT LIKE 'pg\\_%' ORDER BY 1",
        ),
        (
            "accounts",
            "SELECT md5(string_agg(a::text, ',' ORDER BY aid)) FROM pgbench_accounts a",
        ),
        (
            "branches",
            "SELECT md5(string_agg(b::text, ',' ORDER BY bid)) FROM pgbench_branches b",
        ),
    ];
    let mut found = BTreeMap::new();
    for (name, sql) in queries {
        let rows: Vec<Option<String>> = sqlx::query_scalar(sql).fetch_all(pool).await.unwrap();
        found.insert(name, rows.into_iter().map(Option::unwrap_or_default).collect());
    }
    found
}

#[tokio::test]
async fn rollback_before_complete_leaves_the_database_exactly_as_it_was() {
    let f = Fixture::new().await;
    f.pgbench_init(1).await;
    let pool = &f.target.pool;
    let before = snapshot(pool).await;

    // Given a migration with every kind of operation, applied (expanded)
    let migration = yaml(
        r#"
name: everything
operations:
  - sql:
      up: "CREATE TABLE audit (id bigint PRIMARY KEY, note text); CREATE INDEX CONCURRENTLY audit_note ON audit (note)"
      down: "DROP TABLE audit"
  - rename_column: {table: pgbench_accounts, from: filler, to: note}
  - alter_column: {table: pgbench_accounts, column: abalance, type: bigint}
  - alter_column: {table: pgbench_branches, column: filler, not_null: true, up: "coalesce(filler, 'none')"}
  - add_column: {table: pgbench_tellers, column: region, type: text, default: "'north'", not_null: true}
  - create_index: {name: accounts_bid, table: pgbench_accounts, columns: [bid]}
"#,
    );
    let applied = f
        .migrator
        .apply(&f.target, migration.clone(), false, &NoProgress)
        .await
        .unwrap();
    assert_eq!(applied.state, "expanded");
    let region: String = sqlx::query_scalar("SELECT region FROM public_everything.pgbench_tellers LIMIT 1")
        .fetch_one(pool)
        .await
        .unwrap();
    assert_eq!(region, "north", "existing rows backfilled with the default");
    let branch_filler: String =
        sqlx::query_scalar("SELECT filler FROM public_everything.pgbench_branches LIMIT 1")
            .fetch_one(pool)
            .await
            .unwrap();
    assert_eq!(
        branch_filler.trim_end(),
        "none",
        "NULL fillers backfilled with 'up'"
    );
    assert_ne!(snapshot(pool).await, before);

    // When it is rolled back
    let rolled_back = f.migrator.rollback(&f.target, Some("everything")).await.unwrap();
    assert_eq!(rolled_back.state, "rolled_back");

    // Then schema and data are exactly as before
    assert_eq!(snapshot(pool).await, before);
    let status = f.migrator.status(&f.target).await.unwrap();
    assert!(status.active.is_none() && status.applied.is_empty());
    assert_eq!(status.abandoned, ["everything"]);
    // And a second rollback finds nothing to roll back
    let nothing = f.migrator.rollback(&f.target, None).await.unwrap_err();
    assert!(
        nothing.to_string().contains("no migration is in progress"),
        "{nothing}"
    );
    // And the same migration can be applied again, then completed
    f.migrator
        .apply(&f.target, migration, true, &NoProgress)
        .await
        .unwrap();
    let tellers = columns(pool, "pgbench_tellers").await;
    assert_eq!(tellers.last().unwrap(), &("region".to_owned(), "text".to_owned()));
    let not_null: String = sqlx::query_scalar(
        "SELECT is_nullable::text FROM information_schema.columns WHERE table_name = 'pgbench_branches' AND column_name = 'filler'",
    )
    .fetch_one(pool)
    .await
    .unwrap();
    assert_eq!(not_null, "NO");
    f.drop().await;
}

#[tokio::test]
async fn bad_migrations_are_refused_by_name_and_nothing_is_half_applied() {
    let f = Fixture::new().await;
    f.pgbench_init(1).await;
    let pool = &f.target.pool;
    let before = snapshot(pool).await;
    let apply = |text: &str| {
        let migration = yaml(text);
        let migrator = f.migrator.clone();
        let target = f.target.clone();
        async move { migrator.apply(&target, migration, false, &NoProgress).await }
    };

    // Invalid SQL: refused before anything runs, naming the statement
    let invalid = apply("name: bad_sql\noperations: [{sql: {up: 'CREATE TABLE (id int)'}}]")
        .await
        .unwrap_err();
    assert!(
        matches!(invalid, MigrationError::Script { operation: 1, .. }),
        "{invalid}"
    );
    assert!(invalid.to_string().contains("statement 1"), "{invalid}");

    // An unknown table, in a structured operation and in SQL
    let unknown = apply("name: ghost\noperations: [{rename_column: {table: ghosts, from: a, to: b}}]")
        .await
        .unwrap_err();
    assert!(
        unknown
            .to_string()
            .contains("operation 1 (rename_column): there is no table public.ghosts"),
        "{unknown}"
    );
    let unknown_sql =
        apply("name: ghost_sql\noperations: [{sql: {up: 'ALTER TABLE ghosts ADD COLUMN x int'}}]")
            .await
            .unwrap_err();
    assert!(unknown_sql.to_string().contains("ghosts"), "{unknown_sql}");

    // A lock hazard: refused by lint, with the safe alternative
    let hazard = apply(
        "name: hazard\noperations: [{sql: {up: 'CREATE INDEX accounts_bid ON pgbench_accounts (bid)'}}]",
    )
    .await
    .unwrap_err();
    assert!(matches!(hazard, MigrationError::Lint { .. }), "{hazard}");
    assert!(
        hazard.to_string().contains("require-concurrent-index-creation"),
        "{hazard}"
    );
    assert!(hazard.to_string().contains("CONCURRENTLY"), "{hazard}");

    // A failure in the middle of expand: what ran before is undone
    let failing = apply(
        r#"
name: fails_midway
operations:
  - sql: {up: "CREATE TABLE audit (id int)", down: "DROP TABLE audit"}
  - add_column: {table: pgbench_accounts, column: code, type: int, up: "1 / (aid - aid)"}
"#,
    )
    .await
    .unwrap_err();
    let message = failing.to_string();
    assert!(
        matches!(
            failing,
            MigrationError::Failed {
                phase: "backfill",
                ..
            }
        ),
        "{message}"
    );
    assert!(message.contains("division by zero"), "{message}");
    assert!(message.contains("the database is as it was"), "{message}");
    assert_eq!(snapshot(pool).await, before, "nothing half-applied");
    let status = f.migrator.status(&f.target).await.unwrap();
    assert!(status.active.is_none() && status.applied.is_empty(), "{status:?}");
    assert_eq!(status.abandoned, ["fails_midway"]);

    // Two migrations racing: one runs, the other is refused and leaves nothing
    let first =
        "name: race_a\noperations: [{add_column: {table: pgbench_accounts, column: a, type: int, up: '1'}}]";
    let second =
        "name: race_b\noperations: [{add_column: {table: pgbench_tellers, column: b, type: int, up: '2'}}]";
    let (a, b) = tokio::join!(apply(first), apply(second));
    let (won, lost) = match (a, b) {
        (Ok(won), Err(lost)) | (Err(lost), Ok(won)) => (won, lost),
        (a, b) => panic!("exactly one of two racing migrations must run: {a:?} / {b:?}"),
    };
    let lost_message = lost.to_string();
    assert!(
        matches!(lost, MigrationError::Busy { .. })
            || lost_message.contains("is in progress on this database; complete or roll it back"),
        "{lost_message}"
    );
    let loser_table = if won.migration == "race_a" {
        "pgbench_tellers"
    } else {
        "pgbench_accounts"
    };
    let loser_columns = columns(pool, loser_table).await;
    assert!(
        loser_columns
            .iter()
            .all(|(name, _)| !name.starts_with("_dbswarm")),
        "{loser_columns:?}"
    );
    // And while one is in progress, another is refused naming it
    let third = apply("name: race_c\noperations: [{sql: {up: 'CREATE TABLE c (id int)'}}]")
        .await
        .unwrap_err();
    assert!(
        third
            .to_string()
            .contains(&format!("migration '{}' is in progress", won.migration)),
        "{third}"
    );
    // Complete of a migration that is not the one in progress is refused
    let wrong = f.migrator.complete(&f.target, Some("race_c")).await.unwrap_err();
    assert!(wrong.to_string().contains("is in progress"), "{wrong}");
    f.drop().await;
}

/// A `sql` operation that fails on the target names its operation once
/// (not "operation 1 (sql): operation 1 (sql): ..."), in a transaction
/// and outside one (CONCURRENTLY), and is undone.
#[tokio::test]
async fn a_failing_sql_operation_names_its_operation_once() {
    let f = Fixture::new().await;
    let cases = [
        (
            "fails_in_transaction",
            "CREATE TABLE audit (id int CHECK (id > 0)); INSERT INTO audit VALUES (0)",
            "DROP TABLE audit",
            "violates check constraint",
        ),
        (
            "fails_concurrently",
            "CREATE TABLE audit2 (id int); CREATE INDEX CONCURRENTLY IF NOT EXISTS audit2_nope ON audit2 (nope)",
            "DROP TABLE IF EXISTS audit2",
            "column \"nope\" does not exist",
        ),
    ];
    for (name, up, down, cause) in cases {
        let migration = yaml(&format!(
            "name: {name}\noperations: [{{sql: {{up: \"{up}\", down: \"{down}\"}}}}]"
        ));
        let error = f
            .migrator
            .apply(&f.target, migration, false, &NoProgress)
            .await
            .unwrap_err();
        let message = error.to_string();
        assert!(message.contains(cause), "{message}");
        assert_eq!(message.matches("operation 1 (sql)").count(), 1, "{message}");
        assert_eq!(message.matches(name).count(), 1, "{message}");
        assert!(message.contains("the database is as it was"), "{message}");
    }
    f.drop().await;
}

/// Through workflows: plan, apply (compensated by rollback), status and
/// complete as the schema agent's operations, with migrations read from
/// the server's migrations directory; a split column as the example.
#[tokio::test]
async fn the_schema_agent_runs_migrations_in_workflows_and_rolls_back_as_compensation() {
    use api::proto;
    use serde_json::{Value, json};

    let db = TestDb::create().await;
    let target_db = TestDb::create().await;
    let target = target_db.pool().await;
    sqlx::raw_sql(
        "CREATE TABLE users (id bigserial PRIMARY KEY, name text NOT NULL); \
         INSERT INTO users (name) SELECT 'first' || g || ' last' || g FROM generate_series(1, 5000) g; ANALYZE users;",
    )
    .execute(&target)
    .await
    .unwrap();
    let dir = std::env::temp_dir().join(format!("dbswarm-migrations-{}", target_db.name));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("0001_split_name.yaml"),
        r#"
name: 0001_split_name
operations:
  - add_column: {table: users, column: first_name, type: text, up: "split_part(name, ' ', 1)"}
  - add_column: {table: users, column: last_name, type: text, up: "split_part(name, ' ', 2)"}
  - drop_column: {table: users, column: name, down: "first_name || ' ' || last_name"}
"#,
    )
    .unwrap();
    std::fs::write(
        dir.join("0002_roles.sql"),
        "CREATE TABLE roles (id int PRIMARY KEY, name text);\n-- dbswarm:down\nDROP TABLE roles;\n",
    )
    .unwrap();
    let mut settings = with_workflows(settings_for(&db));
    settings.schema_migrations_dir = Some(dir.clone());
    settings.schema_lock_timeout_ms = Some(LOCK_TIMEOUT_MS);
    let server = TestServer::start(settings).await;
    server.register_target("app", &target_db.url).await;
    let mut client = crate::orchestration::workflows_client(&server).await;
    let task = |id: &str, operation: &str, params: Value, dependencies: &[&str]| json!({"id": id, "agent": "schema", "operation": operation, "params": params, "dependencies": dependencies});
    let result = |workflow: &proto::Workflow, id: &str| -> Value {
        let task = workflow.tasks.iter().find(|t| t.task_id == id).unwrap();
        serde_json::from_str(&task.result_json).unwrap()
    };

    // The directory is a versioned list: 0002 does not run before 0001
    let early = json!({"name": "early", "tasks": [task("apply", "apply", json!({"database": "app", "migration": "0002_roles"}), &[])]});
    let workflow = crate::orchestration::execute_and_wait(&mut client, &early).await;
    assert_eq!(workflow.status, "failed");
    assert!(
        workflow.tasks[0].error.contains("comes after '0001_split_name'"),
        "{}",
        workflow.tasks[0].error
    );

    // Given plan -> apply -> status, when the workflow runs
    let mut apply = task(
        "apply",
        "apply",
        json!({"database": "app", "migration": "0001_split_name"}),
        &["plan"],
    );
    apply["compensation"] = json!({"operation": "rollback"});
    let plan = json!({"name": "split", "tasks": [
        task("plan", "plan", json!({"database": "app", "migration": "0001_split_name"}), &[]),
        apply,
        task("status", "status", json!({"database": "app"}), &["apply"]),
    ]});
    let workflow = crate::orchestration::execute_and_wait(&mut client, &plan).await;
    // Then it is planned, expanded, and shown in progress with the next one pending
    assert_eq!(workflow.status, "completed", "{}", workflow.summary);
    let planned = result(&workflow, "plan");
    assert_eq!(planned["verdict"], "apply starts it as version 1");
    assert_eq!(planned["plan"]["backfills"][0]["table"], "public.users");
    assert_eq!(result(&workflow, "apply")["state"], "expanded");
    let status = result(&workflow, "status");
    assert_eq!(status["active"]["migration"]["name"], "0001_split_name");
    assert_eq!(status["active"]["phase"], "expanded");
    assert_eq!(status["pending"], json!(["0002_roles"]));
    // And both versions read the same people
    let (first, last): (String, String) =
        sqlx::query_as("SELECT first_name, last_name FROM \"public_0001_split_name\".users WHERE id = 42")
            .fetch_one(&target)
            .await
            .unwrap();
    assert_eq!((first.as_str(), last.as_str()), ("first42", "last42"));
    // And a new-version insert fills the old column through 'down'
    let mut conn = target.acquire().await.unwrap();
    sqlx::raw_sql(
        "SET search_path TO public_0001_split_name, public; \
         INSERT INTO users (first_name, last_name) VALUES ('Ada', 'Lovelace'); RESET search_path",
    )
    .execute(&mut *conn)
    .await
    .unwrap();
    drop(conn);
    let name: String = sqlx::query_scalar("SELECT name FROM public.users WHERE id = 5001")
        .fetch_one(&target)
        .await
        .unwrap();
    assert_eq!(name, "Ada Lovelace");

    // When complete runs as a task
    let complete =
        json!({"name": "complete", "tasks": [task("complete", "complete", json!({"database": "app"}), &[])]});
    let workflow = crate::orchestration::execute_and_wait(&mut client, &complete).await;
    assert_eq!(workflow.status, "completed", "{}", workflow.summary);
    // Then the table has the new shape
    assert_eq!(
        columns(&target, "users").await,
        [
            ("id".into(), "bigint".into()),
            ("first_name".into(), "text".into()),
            ("last_name".into(), "text".into()),
        ]
    );

    // Given the SQL migration linted and applied, then a task that fails after it
    let params = json!({"database": "app", "migration": "0002_roles"});
    let lint = task("lint", "lint", params.clone(), &[]);
    let mut apply = task("apply", "apply", params, &["lint"]);
    apply["compensation"] = json!({"operation": "rollback"});
    let doomed = crate::orchestration::probe("doomed", "integrity", &["apply"], json!({"fail": true}));
    let workflow = crate::orchestration::execute_and_wait(
        &mut client,
        &json!({"name": "roles", "tasks": [lint, apply, doomed]}),
    )
    .await;
    // Then the SQL passed lint, the workflow fails, and the migration is
    // rolled back as its compensation
    assert_eq!(workflow.status, "failed", "{}", workflow.summary);
    assert_eq!(result(&workflow, "lint")["summary"]["blocking_count"], 0);
    assert_eq!(workflow.tasks_compensated, 1);
    let roles: Option<String> = sqlx::query_scalar("SELECT to_regclass('public.roles')::text")
        .fetch_one(&target)
        .await
        .unwrap();
    assert_eq!(roles, None, "the compensation dropped the table");

    // Bad input in a workflow fails its task with the reason
    let unknown = json!({"name": "bad", "tasks": [task("apply", "apply", json!({"database": "app", "migration": "0009_nope"}), &[])]});
    let workflow = crate::orchestration::execute_and_wait(&mut client, &unknown).await;
    assert_eq!(workflow.status, "failed");
    assert!(
        workflow.tasks[0].error.contains("no migration named '0009_nope'"),
        "{}",
        workflow.tasks[0].error
    );

    target.close().await;
    server.stop().await;
    std::fs::remove_dir_all(dir).unwrap();
    db.drop_database().await;
    target_db.drop_database().await;
}

/// `dbswarm migrate plan|apply|complete|rollback|status` on the command
/// line: the same engine and history as the agent; exit 1 on a blocking
/// lint hazard, 2 when the work cannot be done, with the reason.
#[tokio::test]
async fn the_migrate_commands_plan_apply_roll_back_and_complete_from_the_command_line() {
    let db = TestDb::create().await;
    let target_db = TestDb::create().await;
    let target = target_db.pool().await;
    sqlx::raw_sql(
        "CREATE TABLE users (id bigserial PRIMARY KEY, email text); \
         INSERT INTO users (email) SELECT 'u' || g || '@example.com' FROM generate_series(1, 3000) g;",
    )
    .execute(&target)
    .await
    .unwrap();
    let server = TestServer::start(settings_for(&db)).await;
    server.register_target("app", &target_db.url).await;
    server.stop().await;
    let dir = std::env::temp_dir().join(format!("dbswarm-cli-{}", target_db.name));
    std::fs::create_dir_all(&dir).unwrap();
    let migration = dir.join("0001_email_required.yaml");
    std::fs::write(
        &migration,
        "name: 0001_email_required\noperations:\n  - alter_column: {table: users, column: email, not_null: true, up: \"coalesce(email, 'unknown')\"}\n",
    )
    .unwrap();
    let hazard = dir.join("0002_hazard.sql");
    std::fs::write(&hazard, "CREATE INDEX users_email ON users (email);").unwrap();
    let migrate = |args: &[&str]| {
        let output = std::process::Command::new(dbswarm_binary())
            .arg("migrate")
            .args(args)
            .args(["--database-url", &db.url])
            .output()
            .expect("run dbswarm migrate");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        (output.status.code(), text)
    };
    let file = migration.to_str().unwrap();

    let (code, text) = migrate(&["plan", file, "--database", "app"]);
    assert_eq!(code, Some(0), "{text}");
    assert!(text.contains("apply starts it as version 1"), "{text}");
    assert!(text.contains("VALIDATE CONSTRAINT"), "{text}");
    assert!(
        text.contains("validate that every row has _dbswarm_new_email (no write lock)  [SHARE UPDATE EXCLUSIVE on the table]"),
        "{text}"
    );

    let (code, text) = migrate(&["apply", file, "--database", "app", "--json"]);
    assert_eq!(code, Some(0), "{text}");
    let report: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(report["state"], "expanded");
    assert_eq!(report["rows_backfilled"], 3000);

    let (code, text) = migrate(&["status", "--database", "app"]);
    assert_eq!(code, Some(0), "{text}");
    assert!(text.contains("0001_email_required  expanded"), "{text}");

    let (code, text) = migrate(&["rollback", "--database", "app"]);
    assert_eq!(code, Some(0), "{text}");
    assert!(text.contains("rolled back"), "{text}");

    let (code, text) = migrate(&["apply", file, "--database", "app", "--complete"]);
    assert_eq!(code, Some(0), "{text}");
    assert!(text.contains("completed"), "{text}");
    let nullable: String = sqlx::query_scalar(
        "SELECT is_nullable::text FROM information_schema.columns WHERE table_name = 'users' AND column_name = 'email'",
    )
    .fetch_one(&target)
    .await
    .unwrap();
    assert_eq!(nullable, "NO");

    // Bad input: applied twice, a lock hazard, an unknown database
    let (code, text) = migrate(&["apply", file, "--database", "app"]);
    assert_eq!(code, Some(2), "{text}");
    assert!(text.contains("is already applied (version 1)"), "{text}");
    let (code, text) = migrate(&["apply", hazard.to_str().unwrap(), "--database", "app"]);
    assert_eq!(code, Some(1), "{text}");
    assert!(text.contains("require-concurrent-index-creation"), "{text}");
    let (code, text) = migrate(&["plan", hazard.to_str().unwrap(), "--database", "app"]);
    assert_eq!(code, Some(1), "{text}");
    let (code, text) = migrate(&["status", "--database", "nope"]);
    assert_eq!(code, Some(2), "{text}");
    assert!(text.contains("nope"), "{text}");

    std::fs::remove_dir_all(dir).unwrap();
    target.close().await;
    db.drop_database().await;
    target_db.drop_database().await;
}

/// An apply that dies midway (its task dropped, its connections closed)
/// leaves the migration in progress; applying it again resumes it, and
/// the result is the same as an uninterrupted run.
#[tokio::test]
async fn an_interrupted_apply_resumes_when_applied_again() {
    let f = Fixture::new().await;
    f.pgbench_init(1).await;
    let pool = &f.target.pool;
    let migration = yaml(
        r#"
name: resumable
operations:
  - sql: {up: "CREATE TABLE audit (id int)", down: "DROP TABLE audit"}
  - alter_column: {table: pgbench_accounts, column: abalance, type: bigint, up: "abalance::bigint + 1"}
"#,
    );
    // Given an apply stopped while it works
    let migrator = f.migrator.clone();
    let target = f.target.clone();
    let first = migration.clone();
    let running = tokio::spawn(async move { migrator.apply(&target, first, false, &NoProgress).await });
    tokio::time::sleep(Duration::from_millis(400)).await;
    running.abort();
    let _ = running.await;
    let status = f.migrator.status(&f.target).await.unwrap();
    let active = status.active.expect("in progress");
    assert_eq!(active.migration.name, "resumable");

    // When it is applied again, then it resumes: the SQL operation is not run twice
    let resumed = f
        .migrator
        .apply(&f.target, migration, true, &NoProgress)
        .await
        .unwrap();
    assert_eq!(resumed.state, "completed");
    let wrong: i64 = sqlx::query_scalar("SELECT count(*) FROM pgbench_accounts WHERE abalance <> 1")
        .fetch_one(pool)
        .await
        .unwrap();
    assert_eq!(wrong, 0, "every row's new value computed from its old one");
    let audit: Option<String> = sqlx::query_scalar("SELECT to_regclass('public.audit')::text")
        .fetch_one(pool)
        .await
        .unwrap();
    assert_eq!(audit.as_deref(), Some("audit"));
    f.drop().await;
}

/// A reader's transaction holding pgbench_tellers for `hold_ms` (it has
/// its lock when this returns); the handle ends with the transaction.
async fn hold_table(url: &str, hold_ms: u64) -> tokio::task::JoinHandle<()> {
    let mut reader = sqlx::PgConnection::connect(url).await.unwrap();
    sqlx::raw_sql("BEGIN; SELECT count(*) FROM pgbench_tellers")
        .execute(&mut reader)
        .await
        .unwrap();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(hold_ms)).await;
        sqlx::raw_sql("COMMIT").execute(&mut reader).await.unwrap();
    })
}

/// A long transaction holding a table: the migration's DDL gives up after
/// lock_timeout and tries again (so writers never queue behind it for
/// long); it goes through once the transaction ends, or, past its
/// attempts, fails naming the lock, and rollback later leaves the
/// database as it was.
#[tokio::test]
async fn ddl_waits_for_locks_in_bounded_attempts_with_backoff() {
    let f = Fixture::new().await;
    f.pgbench_init(1).await;
    let pool = &f.target.pool;
    let before = snapshot(pool).await;
    let migration = yaml(
        "name: tellers\noperations: [{rename_column: {table: pgbench_tellers, from: filler, to: note}}]",
    );

    // Given a reader holding pgbench_tellers for a while, when the migration completes
    f.migrator
        .apply(&f.target, migration.clone(), false, &NoProgress)
        .await
        .unwrap();
    let holder = hold_table(&f.target_db.url, 1_500).await;
    let completed = f.migrator.complete(&f.target, None).await.unwrap();
    holder.await.unwrap();
    // Then its rename waited for the lock in short attempts and went through
    assert_eq!(completed.state, "completed");
    assert!(
        columns(pool, "pgbench_tellers")
            .await
            .iter()
            .any(|(c, _)| c == "note")
    );

    // Given a migrator with few attempts and a reader that holds the table throughout
    let impatient = Migrator::new(
        HistoryStore::new(
            Appender::start(f.store_pool.clone(), AppendConfig::default()).0,
            Reader::new(f.store_pool.clone(), ReadConfig::default()),
            Limits::default(),
        ),
        MigrationConfig {
            timeouts: Timeouts {
                attempts_max: 3,
                ..test_config().timeouts
            },
            ..test_config()
        },
    );
    let before_retype = snapshot(pool).await;
    assert_ne!(before_retype, before);
    let holder = hold_table(&f.target_db.url, 4_000).await;
    let retype = yaml(
        "name: tellers_bigint\noperations: [{alter_column: {table: pgbench_tellers, column: tbalance, type: bigint}}]",
    );
    let failed = impatient
        .apply(&f.target, retype, false, &NoProgress)
        .await
        .unwrap_err();
    // Then it fails naming the lock and the attempts; undoing it needed the lock too
    let message = failed.to_string();
    assert!(
        message.contains("the lock was not granted within lock_timeout (200 ms) in 3 attempts"),
        "{message}"
    );
    holder.await.unwrap();
    let status = f.migrator.status(&f.target).await.unwrap();
    if let Some(active) = status.active {
        // The cleanup was blocked as well: rollback once the table is free
        assert!(matches!(
            active.phase,
            schema::migration::history::Phase::NeedsRollback { .. }
        ));
        f.migrator.rollback(&f.target, None).await.unwrap();
    }
    assert_eq!(snapshot(pool).await, before_retype, "nothing half-applied");
    f.drop().await;
}
