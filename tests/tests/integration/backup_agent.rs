//! The backup agent against real PostgreSQL: logical backups encrypted,
//! verified and restored with equal contents; tampering and a wrong key
//! caught and named; restore tests that pass on a good backup and fail on
//! a corrupted one; retention; a failed and an interrupted backup that do
//! not block the next; and (on an instance of its own with WAL archiving)
//! physical backups with point-in-time recovery.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use api::proto;
use backup::crypto::BackupKey;
use serde_json::{Value, json};
use tests::*;

use crate::orchestration::{execute_and_wait, workflows_client};

/// A repository, scratch directory and key of a test's own, under the
/// test instances directory (traversable by `postgres`, which runs
/// archive_command and restore_command).
struct BackupDirs {
    root: PathBuf,
    key_file: PathBuf,
}

impl BackupDirs {
    fn new() -> BackupDirs {
        let root = PrivatePostgres::new_instance_dir();
        let key_file = root.join("backup.key");
        write_key(&key_file, &BackupKey::generate_text().unwrap());
        BackupDirs { root, key_file }
    }

    fn repository(&self) -> PathBuf {
        self.root.join("repository")
    }

    fn settings(&self, settings: server::Settings) -> server::Settings {
        server::Settings {
            backup_repository_dir: Some(self.repository()),
            backup_scratch_dir: Some(self.root.join("scratch")),
            backup_key_file: Some(self.key_file.clone()),
            backup_executable: Some(dbswarm_binary()),
            ..settings
        }
    }
}

impl Drop for BackupDirs {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

fn write_key(path: &Path, key: &str) {
    std::fs::write(path, format!("{key}\n")).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
    give_to_postgres(path);
}

/// The backup catalogue on `db` (its event store migrated), for tests that
/// drive the engine directly.
fn catalogue_store(config: &server::Config, pool: sqlx::PgPool) -> backup::engine::CatalogueStore {
    backup::engine::CatalogueStore::new(
        event_store::Appender::start(pool.clone(), config.append).0,
        event_store::Reader::new(pool, config.read),
        config.limits,
    )
}

/// The engine with one PostgreSQL tool replaced by a shell script (a
/// pg_dump that fails or is slow, a pg_restore that hangs), in a directory
/// `name` of the test's own.
fn with_tool(
    dirs: &BackupDirs,
    config: &server::Config,
    store: &backup::engine::CatalogueStore,
    (name, program, script): (&str, &str, &str),
) -> backup::engine::Backups {
    let bin = dirs.root.join(name);
    std::fs::create_dir(&bin).unwrap();
    let tool = bin.join(program);
    std::fs::write(&tool, script).unwrap();
    std::fs::set_permissions(&tool, std::fs::Permissions::from_mode(0o755)).unwrap();
    let mut backup = config.backup.clone();
    backup.tools.bin_dir = bin;
    backup::engine::Backups::new(backup, store.clone())
}

fn engine_target(target_db: &TestDb, pool: sqlx::PgPool) -> backup::engine::Target {
    backup::engine::Target {
        name: "app".into(),
        pool,
        url: domain::target::ConnectionUrl::parse(&target_db.url).unwrap(),
    }
}

fn whole_database() -> backup::engine::CreateRequest {
    backup::engine::CreateRequest {
        kind: backup::catalogue::BackupKind::Logical,
        tables: vec![],
        checksum_tables: vec![],
    }
}

fn task(operation: &str, params: Value) -> Value {
    json!({"name": format!("backup {operation}"), "tasks": [
        {"id": "t", "agent": "backup", "operation": operation, "params": params, "timeout": "300s"}
    ]})
}

fn result(workflow: &proto::Workflow) -> Value {
    assert_eq!(
        workflow.status, "completed",
        "{} {:?}",
        workflow.summary, workflow.tasks[0].error
    );
    serde_json::from_str(&workflow.tasks[0].result_json).unwrap()
}

fn error(workflow: &proto::Workflow) -> String {
    assert_eq!(workflow.status, "failed", "{}", workflow.summary);
    workflow.tasks[0].error.clone()
}

const SCHEMA: &str = "
    CREATE TABLE accounts (id bigserial PRIMARY KEY, owner text NOT NULL, balance numeric(12,2) NOT NULL,
                           profile jsonb, opened timestamptz NOT NULL DEFAULT now());
    CREATE INDEX accounts_owner ON accounts (owner);
    CREATE TABLE \"Audit Log\" (id int PRIMARY KEY, note text);
    INSERT INTO accounts (owner, balance, profile)
      SELECT 'owner-' || g, g * 1.25, jsonb_build_object('tier', g % 3, 'marker', 'plaintext-marker-' || g)
      FROM generate_series(1, 20000) g;
    INSERT INTO \"Audit Log\" SELECT g, 'note ' || g FROM generate_series(1, 500) g;
";

/// Per-table checksums of a database, computed by the test itself.
async fn checksums(pool: &sqlx::PgPool) -> Vec<(String, i64, String)> {
    let mut out = Vec::new();
    for table in ["accounts", "\"Audit Log\""] {
        let (rows, sum): (i64, String) = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT count(*), coalesce(md5(string_agg(t::text, ',' ORDER BY t::text)), '') FROM {table} t"
        )))
        .fetch_one(pool)
        .await
        .unwrap();
        out.push((table.to_owned(), rows, sum));
    }
    out
}

async fn serve(dirs: &BackupDirs) -> (TestDb, TestDb, TestServer) {
    let db = TestDb::create().await;
    let target_db = TestDb::create().await;
    sqlx::raw_sql(SCHEMA)
        .execute(&target_db.pool().await)
        .await
        .unwrap();
    let server = TestServer::start(dirs.settings(with_workflows(settings_for(&db)))).await;
    server.register_target("app", &target_db.url).await;
    (db, target_db, server)
}

fn database_name(url: &str) -> String {
    url.rsplit('/').next().unwrap().to_owned()
}

fn backup_file(dirs: &BackupDirs, backup_id: &str, name: &str) -> PathBuf {
    dirs.repository()
        .join("app")
        .join("backups")
        .join(backup_id)
        .join(name)
}

#[tokio::test]
async fn a_logical_backup_is_encrypted_verified_and_restores_into_a_new_database_with_equal_contents() {
    let dirs = BackupDirs::new();
    let (db, target_db, server) = serve(&dirs).await;
    let mut client = workflows_client(&server).await;

    let created = result(&execute_and_wait(&mut client, &task("create", json!({"database": "app"}))).await);
    let backup_id = created["backup_id"].as_str().unwrap().to_owned();
    assert_eq!(created["kind"], "logical");
    assert_eq!(created["tables"], 2, "{created}");

    // Encrypted: the file does not hold the data in the clear
    let stored = std::fs::read(backup_file(&dirs, &backup_id, "database.dump.enc")).unwrap();
    assert!(stored.starts_with(b"DBSWENC1"));
    assert!(!stored.windows(16).any(|w| w == b"plaintext-marker"));
    let manifest: Value =
        serde_json::from_slice(&std::fs::read(backup_file(&dirs, &backup_id, "manifest.json")).unwrap())
            .unwrap();
    assert_eq!(manifest["files"][0]["stored_bytes"], stored.len());
    assert_eq!(
        manifest["server_version"].as_str().unwrap().split('.').next(),
        Some("15")
    );

    let verified = result(&execute_and_wait(&mut client, &task("verify", json!({"database": "app"}))).await);
    assert_eq!(verified["passed"], true, "{verified}");
    assert_eq!(verified["files_checked"], 1);

    let into = format!("{}_restored", database_name(&target_db.url));
    let restored = result(
        &execute_and_wait(
            &mut client,
            &task(
                "restore",
                json!({"database": "app", "backup_id": backup_id, "into_database": into}),
            ),
        )
        .await,
    );
    assert_eq!(restored["into_database"], into.as_str());
    let restored_pool = sqlx::PgPool::connect(&target_db.url.replace(&database_name(&target_db.url), &into))
        .await
        .unwrap();
    assert_eq!(
        checksums(&restored_pool).await,
        checksums(&target_db.pool().await).await
    );
    restored_pool.close().await;

    // The restore test restores into scratch, compares with the backup's snapshot, drops the scratch
    let tested =
        result(&execute_and_wait(&mut client, &task("test_restore", json!({"database": "app"}))).await);
    assert_eq!(tested["passed"], true, "{tested}");
    let checks = tested["checks"].to_string();
    assert!(
        checks.contains("row counts of 2 tables and 2 checksums"),
        "{tested}"
    );
    assert!(checks.contains("amcheck on"), "{tested}");
    let scratch: i64 =
        sqlx::query_scalar("SELECT count(*) FROM pg_database WHERE datname LIKE 'dbswarm_restore_test_%'")
            .fetch_one(&target_db.pool().await)
            .await
            .unwrap();
    assert_eq!(scratch, 0);

    // The catalogue: size, duration, verification, restore test, restores
    let listed = result(&execute_and_wait(&mut client, &task("list", json!({"database": "app"}))).await);
    let entry = &listed["backups"][0];
    assert_eq!(entry["backup_id"], backup_id.as_str());
    assert_eq!(entry["status"], "completed");
    assert_eq!(entry["stored_bytes"], stored.len());
    assert!(entry["duration_ms"].as_i64().unwrap() >= 0);
    assert_eq!(entry["last_verification"]["passed"], true);
    assert_eq!(entry["last_restore_test"]["passed"], true);
    assert_eq!(entry["restores"], 1);

    // The same in the `backups` read model
    let mut projections = crate::projections::projections_client(&server).await;
    let mut row = None;
    for _ in 0..100 {
        row = crate::projections::get_row(&mut projections, "backups", &backup_id).await;
        if row
            .as_ref()
            .is_some_and(|r| r["restores"] == 1 && r["restore_test_passed"] == true)
        {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let row = row.expect("the backup in the read model");
    assert_eq!(row["status"], "completed", "{row}");
    assert_eq!(row["kind"], "logical");
    assert_eq!(row["catalogue"], "backups-app");
    assert_eq!(row["stored_bytes"], stored.len() as i64, "{row}");
    assert_eq!(row["verification_passed"], true, "{row}");
    assert_eq!(row["restore_test_passed"], true, "{row}");
    assert_eq!(row["restores"], 1, "{row}");

    // Bad input, each named; nothing is created
    let bad = [
        (
            json!({"database": "app", "into_database": into}),
            "already exists",
        ),
        (
            json!({"database": "app", "backup_id": "../../etc"}),
            "is not a backup id",
        ),
        (
            json!({"database": "app", "backup_id": "20200101T000000000Z-logical-00000000"}),
            "does not exist",
        ),
        (json!({"database": "nope"}), "nope"),
    ];
    for (params, expected) in bad {
        let failed = error(&execute_and_wait(&mut client, &task("restore", params.clone())).await);
        assert!(failed.contains(expected), "{params}: {failed}");
    }
    let bad_create = [
        (
            json!({"database": "app", "kind": "incremental"}),
            "not one of logical, physical",
        ),
        (
            json!({"database": "app", "tables": ["no_such_table"]}),
            "table 'no_such_table' does not exist",
        ),
        (
            json!({"database": "app", "tables": [""]}),
            "parameter 'tables' of backup.create: must be a non-empty string",
        ),
        (
            json!({"database": "app", "kind": "physical", "tables": ["accounts"]}),
            "covers the whole server",
        ),
    ];
    for (params, expected) in bad_create {
        let failed = error(&execute_and_wait(&mut client, &task("create", params.clone())).await);
        assert!(failed.contains(expected), "{params}: {failed}");
    }
    let policy =
        error(&execute_and_wait(&mut client, &task("apply_retention", json!({"database": "app"}))).await);
    assert!(policy.contains("needs keep_full"), "{policy}");
    let listed = result(&execute_and_wait(&mut client, &task("list", json!({"database": "app"}))).await);
    assert_eq!(listed["backups"].as_array().unwrap().len(), 1, "{listed}");

    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "DROP DATABASE \"{into}\" WITH (FORCE)"
    )))
    .execute(&target_db.pool().await)
    .await
    .unwrap();
    server.stop().await;
    target_db.drop_database().await;
    db.drop_database().await;
}

#[tokio::test]
async fn a_flipped_byte_fails_verify_restore_and_the_restore_test_naming_the_file_and_a_wrong_key_is_named() {
    let dirs = BackupDirs::new();
    let (db, target_db, server) = serve(&dirs).await;
    let mut client = workflows_client(&server).await;
    let created = result(
        &execute_and_wait(
            &mut client,
            &task("create", json!({"database": "app", "tables": ["accounts"]})),
        )
        .await,
    );
    let backup_id = created["backup_id"].as_str().unwrap().to_owned();

    // One byte flipped in the middle of the data file
    let path = backup_file(&dirs, &backup_id, "database.dump.enc");
    let mut bytes = std::fs::read(&path).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x01;
    std::fs::write(&path, &bytes).unwrap();

    let verify = error(&execute_and_wait(&mut client, &task("verify", json!({"database": "app"}))).await);
    assert!(verify.contains("database.dump.enc"), "{verify}");
    assert!(verify.contains("fails authentication"), "{verify}");

    let into = format!("{}_tampered", database_name(&target_db.url));
    let restore = error(
        &execute_and_wait(
            &mut client,
            &task("restore", json!({"database": "app", "into_database": into})),
        )
        .await,
    );
    assert!(restore.contains("database.dump.enc"), "{restore}");
    let left: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pg_database WHERE datname = $1 OR datname LIKE 'dbswarm_restore_test_%'",
    )
    .bind(&into)
    .fetch_one(&target_db.pool().await)
    .await
    .unwrap();
    assert_eq!(left, 0, "a failed restore leaves no database");

    let test = error(&execute_and_wait(&mut client, &task("test_restore", json!({"database": "app"}))).await);
    assert!(
        test.contains("restore test of backup") && test.contains("database.dump.enc"),
        "{test}"
    );
    let listed = result(&execute_and_wait(&mut client, &task("list", json!({"database": "app"}))).await);
    assert_eq!(
        listed["backups"][0]["last_verification"]["passed"], false,
        "{listed}"
    );
    assert_eq!(
        listed["backups"][0]["last_restore_test"]["passed"], false,
        "{listed}"
    );

    // A changed manifest fails its signature
    let manifest_path = backup_file(&dirs, &backup_id, "manifest.json");
    let manifest = std::fs::read_to_string(&manifest_path).unwrap();
    std::fs::write(
        &manifest_path,
        manifest.replace("\"compression_level\": 0", "\"compression_level\": 1"),
    )
    .unwrap();
    let verify = error(&execute_and_wait(&mut client, &task("verify", json!({"database": "app"}))).await);
    assert!(
        verify.contains("manifest.json does not match its signature"),
        "{verify}"
    );
    std::fs::write(&manifest_path, manifest).unwrap();
    server.stop().await;

    // Another key: named as the wrong key, before anything is decrypted
    let other_key = dirs.root.join("other.key");
    write_key(&other_key, &BackupKey::generate_text().unwrap());
    let settings = server::Settings {
        backup_key_file: Some(other_key),
        ..dirs.settings(with_workflows(settings_for(&db)))
    };
    let server = TestServer::start(settings).await;
    let mut client = workflows_client(&server).await;
    let verify = error(&execute_and_wait(&mut client, &task("verify", json!({"database": "app"}))).await);
    assert!(verify.contains("wrong key"), "{verify}");
    let restore = error(&execute_and_wait(&mut client, &task("restore", json!({"database": "app"}))).await);
    assert!(restore.contains("wrong key"), "{restore}");
    server.stop().await;

    // No key at all: refused with what to configure
    let settings = server::Settings {
        backup_key_file: None,
        ..dirs.settings(with_workflows(settings_for(&db)))
    };
    let server = TestServer::start(settings).await;
    let mut client = workflows_client(&server).await;
    let create = error(&execute_and_wait(&mut client, &task("create", json!({"database": "app"}))).await);
    assert!(
        create.contains("no backup encryption key is configured"),
        "{create}"
    );
    server.stop().await;
    target_db.drop_database().await;
    db.drop_database().await;
}

#[tokio::test]
async fn a_failed_or_interrupted_backup_is_marked_failed_leaves_nothing_and_does_not_block_the_next() {
    let dirs = BackupDirs::new();
    let (db, target_db, server) = serve(&dirs).await;
    let config = server::Config::from_settings(dirs.settings(settings_for(&db))).unwrap();
    let store = catalogue_store(&config, db.pool().await);

    // A pg_dump that writes half a dump and fails
    let backups = with_tool(
        &dirs,
        &config,
        &store,
        (
            "bin",
            "pg_dump",
            "#!/bin/sh\nhead -c 100000 /dev/zero\necho 'pg_dump: error: connection lost' >&2\nexit 1\n",
        ),
    );
    let target = engine_target(&target_db, target_db.pool().await);
    let request = whole_database();
    let failed = backups
        .create(&target, &request, &backup::engine::NoProgress)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        failed.contains("pg_dump failed") && failed.contains("connection lost"),
        "{failed}"
    );
    let backups_dir = dirs.repository().join("app").join("backups");
    assert_eq!(
        std::fs::read_dir(&backups_dir).unwrap().count(),
        0,
        "nothing is left of it"
    );

    // An interrupted one: started, its writer gone, its files half there
    let real = backup::engine::Backups::new(config.backup.clone(), store.clone());
    let interrupted = "20260101T000000000Z-logical-deadbeef";
    std::fs::create_dir_all(backups_dir.join(format!("{interrupted}.partial"))).unwrap();
    std::fs::write(
        backups_dir
            .join(format!("{interrupted}.partial"))
            .join("database.dump.enc"),
        b"half",
    )
    .unwrap();
    // Its writer's lock file, no longer locked by anyone
    std::fs::write(
        backups_dir.join(format!("{interrupted}.partial")).join("lock"),
        b"",
    )
    .unwrap();
    store
        .execute(
            "app",
            backup::catalogue::CatalogueCommand::Start {
                backup_id: interrupted.into(),
                kind: backup::catalogue::BackupKind::Logical,
                tables: vec![],
                at_ms: 1,
            },
            || (),
        )
        .await
        .unwrap();

    // The next backup succeeds, and both are recorded as failed with the reason
    let manifest = real
        .create(&target, &request, &backup::engine::NoProgress)
        .await
        .unwrap();
    let catalogue = real.catalogue("app").await.unwrap();
    let statuses: Vec<String> = catalogue
        .backups
        .values()
        .map(|e| {
            serde_json::to_value(e).unwrap()["status"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    assert_eq!(statuses, ["failed", "failed", "completed"], "{catalogue:#?}");
    let reasons = format!("{catalogue:?}");
    assert!(
        reasons.contains("interrupted") && reasons.contains("connection lost"),
        "{reasons}"
    );
    let left: Vec<String> = std::fs::read_dir(&backups_dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(left, [manifest.backup_id.as_str()]);

    // Retention keeps the newest, deletes the others (files and entries)
    let second = real
        .create(&target, &request, &backup::engine::NoProgress)
        .await
        .unwrap();
    let third = real
        .create(&target, &request, &backup::engine::NoProgress)
        .await
        .unwrap();
    let applied = backup::retention::apply(
        &real,
        "app",
        backup::retention::Policy::new(Some(2), None).unwrap(),
    )
    .await
    .unwrap();
    assert_eq!(applied.deleted, [manifest.backup_id.as_str()]);
    let mut left: Vec<String> = std::fs::read_dir(&backups_dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    left.sort();
    assert_eq!(left, [second.backup_id.clone(), third.backup_id.clone()]);
    let catalogue = real.catalogue("app").await.unwrap();
    assert!(!catalogue.backups.contains_key(&manifest.backup_id));

    // A restore cancelled midway (its task's deadline) leaves no database
    let hanging = with_tool(
        &dirs,
        &config,
        &store,
        ("hang", "pg_restore", "#!/bin/sh\nexec sleep 30\n"),
    );
    let into = format!("{}_cancelled", database_name(&target_db.url));
    let cancelled = tokio::time::timeout(
        std::time::Duration::from_secs(2),
        hanging.restore(&target, None, Some(&into), &backup::engine::NoProgress),
    )
    .await;
    assert!(cancelled.is_err(), "the restore was still running");
    let mut exists = true;
    for _ in 0..100 {
        exists = sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
            .bind(&into)
            .fetch_one(&target_db.pool().await)
            .await
            .unwrap();
        if !exists {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(!exists, "the cancelled restore's database is dropped");

    server.stop().await;
    target_db.drop_database().await;
    db.drop_database().await;
}

async fn count(url: &str, sql: &str) -> i64 {
    let pool = sqlx::PgPool::connect(url).await.unwrap();
    let n: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(sql.to_owned()))
        .fetch_one(&pool)
        .await
        .unwrap();
    pool.close().await;
    n
}

/// Waits until the server archived the segment it just switched away from.
async fn switch_and_wait_for_archive(pool: &sqlx::PgPool) {
    let segment: String = sqlx::query_scalar("SELECT pg_walfile_name(pg_switch_wal())")
        .fetch_one(pool)
        .await
        .unwrap();
    for _ in 0..300 {
        let archived: Option<String> = sqlx::query_scalar("SELECT last_archived_wal FROM pg_stat_archiver")
            .fetch_one(pool)
            .await
            .unwrap();
        if archived.is_some_and(|a| a >= segment) {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    panic!("segment {segment} was not archived within 30 s");
}

fn stop_restored(data_directory: &str) {
    let output = run_as_postgres(
        pg_bin("pg_ctl").to_str().unwrap(),
        &["-D", data_directory, "-m", "fast", "-w", "stop"],
    );
    assert!(output.status.success(), "{output:?}");
}

#[tokio::test]
async fn point_in_time_recovery_restores_exactly_the_rows_committed_at_the_target_time_and_the_dropped_table()
{
    let dirs = BackupDirs::new();
    let pg = PrivatePostgres::start(&["archive_mode = on"]).await;
    let db = TestDb::create().await;
    let settings = server::Settings {
        backup_archive_targets: Some(vec!["pitr".into()]),
        ..dirs.settings(with_workflows(settings_for(&db)))
    };
    let server = TestServer::start(settings).await;
    server.register_target("pitr", &pg.url("postgres")).await;
    let mut client = workflows_client(&server).await;
    let source = sqlx::PgPool::connect(&pg.url("postgres")).await.unwrap();
    sqlx::raw_sql(
        "CREATE TABLE orders (id int PRIMARY KEY, item text NOT NULL);
         INSERT INTO orders SELECT g, 'item ' || g FROM generate_series(1, 100) g;
         CREATE TABLE customers (id int PRIMARY KEY, name text);
         INSERT INTO customers SELECT g, 'customer ' || g FROM generate_series(1, 30) g;",
    )
    .execute(&source)
    .await
    .unwrap();

    // A physical backup configures archiving (the agent may) and takes the base backup
    let created = result(
        &execute_and_wait(
            &mut client,
            &task("create", json!({"database": "pitr", "kind": "physical"})),
        )
        .await,
    );
    let first_backup = created["backup_id"].as_str().unwrap().to_owned();
    let command: String = sqlx::query_scalar("SELECT current_setting('archive_command')")
        .fetch_one(&source)
        .await
        .unwrap();
    assert!(
        command.contains("backup wal-push") && command.contains("--target pitr"),
        "{command}"
    );

    // A target the agent may not configure: refused, saying what to set
    server.register_target("other", &pg.url("postgres")).await;
    let refused = error(
        &execute_and_wait(
            &mut client,
            &task("create", json!({"database": "other", "kind": "physical"})),
        )
        .await,
    );
    assert!(
        refused.contains("does not archive its WAL into the backup repository: set archive_command = ")
            && refused.contains("--target other"),
        "{refused}"
    );
    let listed = result(&execute_and_wait(&mut client, &task("list", json!({"database": "other"}))).await);
    assert_eq!(
        listed["backups"],
        json!([]),
        "a refusal records nothing: {listed}"
    );

    // Rows 101..150 committed before T; then 151..200 and the drop after it
    sqlx::raw_sql("INSERT INTO orders SELECT g, 'item ' || g FROM generate_series(101, 150) g")
        .execute(&source)
        .await
        .unwrap();
    let target_time: chrono::DateTime<chrono::Utc> = sqlx::query_scalar("SELECT clock_timestamp()")
        .fetch_one(&source)
        .await
        .unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    sqlx::raw_sql(
        "INSERT INTO orders SELECT g, 'item ' || g FROM generate_series(151, 200) g; DROP TABLE customers;",
    )
    .execute(&source)
    .await
    .unwrap();
    switch_and_wait_for_archive(&source).await;

    let restored = result(
        &execute_and_wait(
            &mut client,
            &task(
                "restore_pitr",
                json!({"database": "pitr", "target_time": target_time.to_rfc3339()}),
            ),
        )
        .await,
    );
    let url = restored["url"].as_str().unwrap().to_owned();
    let data_directory = restored["data_directory"].as_str().unwrap().to_owned();
    assert_eq!(count(&url, "SELECT count(*) FROM orders").await, 150);
    assert_eq!(count(&url, "SELECT max(id)::bigint FROM orders").await, 150);
    assert_eq!(count(&url, "SELECT count(*) FROM customers").await, 30);
    assert_eq!(
        count(&pg.url("postgres"), "SELECT count(*) FROM orders").await,
        200,
        "the source is untouched"
    );
    stop_restored(&data_directory);
    std::fs::remove_dir_all(&data_directory).unwrap();

    // A time before the backup ended, and a malformed time, are refused
    let early = error(
        &execute_and_wait(
            &mut client,
            &task(
                "restore_pitr",
                json!({"database": "pitr", "target_time": "2020-01-01T00:00:00Z"}),
            ),
        )
        .await,
    );
    assert!(
        early.contains("no completed physical backup that finished before"),
        "{early}"
    );
    let malformed = error(
        &execute_and_wait(
            &mut client,
            &task(
                "restore_pitr",
                json!({"database": "pitr", "target_time": "yesterday"}),
            ),
        )
        .await,
    );
    assert!(malformed.contains("RFC 3339"), "{malformed}");
    let relative = error(
        &execute_and_wait(
            &mut client,
            &task(
                "restore_pitr",
                json!({"database": "pitr", "target_time": target_time.to_rfc3339(), "data_directory": "../restored"}),
            ),
        )
        .await,
    );
    assert!(relative.contains("must be an absolute path"), "{relative}");

    // Verify checks the files and the WAL chain; the restore test recovers a scratch instance
    let verified = result(&execute_and_wait(&mut client, &task("verify", json!({"database": "pitr"}))).await);
    assert!(
        verified["wal_segments_checked"].as_u64().unwrap() >= 2,
        "{verified}"
    );
    let tested =
        result(&execute_and_wait(&mut client, &task("test_restore", json!({"database": "pitr"}))).await);
    assert_eq!(tested["passed"], true, "{tested}");

    // A second backup; retention keeps it and deletes the first with the WAL only it needed
    let second = result(
        &execute_and_wait(
            &mut client,
            &task("create", json!({"database": "pitr", "kind": "physical"})),
        )
        .await,
    );
    let second_start = second["start_wal_segment"].as_str().unwrap().to_owned();
    let applied = result(
        &execute_and_wait(
            &mut client,
            &task("apply_retention", json!({"database": "pitr", "keep_full": 1})),
        )
        .await,
    );
    assert_eq!(applied["deleted"], json!([first_backup]), "{applied}");
    assert!(
        applied["wal_segments_deleted"].as_u64().unwrap() >= 1,
        "{applied}"
    );
    let wal_dir = dirs.repository().join("pitr").join("wal");
    let segments: Vec<String> = std::fs::read_dir(&wal_dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.len() == 24)
        .collect();
    assert!(!segments.is_empty());
    assert!(
        segments.iter().all(|s| s[8..] >= second_start[8..]),
        "{segments:?} from {second_start}"
    );

    // A missing segment in the chain fails verification, naming it
    sqlx::raw_sql("INSERT INTO orders VALUES (1000, 'late')")
        .execute(&source)
        .await
        .unwrap();
    switch_and_wait_for_archive(&source).await;
    sqlx::raw_sql("INSERT INTO orders VALUES (1001, 'later')")
        .execute(&source)
        .await
        .unwrap();
    switch_and_wait_for_archive(&source).await;
    let mut names: Vec<String> = std::fs::read_dir(&wal_dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.len() == 24)
        .collect();
    names.sort();
    let removed = names[names.len() - 2].clone();
    std::fs::remove_file(wal_dir.join(&removed)).unwrap();
    let verify = error(&execute_and_wait(&mut client, &task("verify", json!({"database": "pitr"}))).await);
    assert!(
        verify.contains(&format!("WAL segment {removed} is missing")),
        "{verify}"
    );

    source.close().await;
    server.stop().await;
    db.drop_database().await;
    drop(pg);
}

/// Issue 16: a key as `dbswarm backup generate-key` writes it as root
/// (0600, root's) cannot be read by PostgreSQL's OS user, which runs
/// archive_command and restore_command. The agent gives the server a copy
/// only it can read (in its data directory) when it may configure the
/// target, refuses at once with the fix when it may not, and a restored
/// instance keeps no copy.
#[tokio::test]
async fn a_physical_backup_archives_with_a_key_only_root_can_read() {
    use std::os::unix::fs::MetadataExt;
    if !is_root() {
        return; // without root there is no other user for PostgreSQL to run as
    }
    let dirs = BackupDirs::new();
    let key_file = dirs.root.join("root-only.key");
    let key_text = BackupKey::generate_text().unwrap();
    std::fs::write(&key_file, format!("{key_text}\n")).unwrap();
    std::fs::set_permissions(&key_file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let pg = PrivatePostgres::start(&["archive_mode = on"]).await;
    let db = TestDb::create().await;
    let settings = server::Settings {
        backup_archive_targets: Some(vec!["pitr".into()]),
        backup_key_file: Some(key_file.clone()),
        ..dirs.settings(with_workflows(settings_for(&db)))
    };
    let server = TestServer::start(settings).await;
    server.register_target("pitr", &pg.url("postgres")).await;
    server.register_target("other", &pg.url("postgres")).await;
    let mut client = workflows_client(&server).await;
    let source = sqlx::PgPool::connect(&pg.url("postgres")).await.unwrap();
    sqlx::raw_sql("CREATE TABLE kept AS SELECT g AS id FROM generate_series(1, 100) g")
        .execute(&source)
        .await
        .unwrap();

    // A target the agent may not configure: refused at once, with the fix
    let started = std::time::Instant::now();
    let refused = error(
        &execute_and_wait(
            &mut client,
            &task("create", json!({"database": "other", "kind": "physical"})),
        )
        .await,
    );
    assert!(
        started.elapsed() < std::time::Duration::from_secs(20),
        "{:?}",
        started.elapsed()
    );
    assert!(
        refused.contains("set archive_command = ")
            && refused.contains("as OS user 'postgres'")
            && refused.contains("cannot read backup key file")
            && refused.contains(&format!("chgrp postgres '{}' && chmod 0640", key_file.display())),
        "{refused}"
    );

    // One it may: archiving works with a copy of the key only postgres reads
    let created = result(
        &execute_and_wait(
            &mut client,
            &task("create", json!({"database": "pitr", "kind": "physical"})),
        )
        .await,
    );
    assert!(created["backup_id"].is_string(), "{created}");
    let copy = pg.data_dir.join(backup::archive_access::KEY_COPY);
    let command: String = sqlx::query_scalar("SELECT current_setting('archive_command')")
        .fetch_one(&source)
        .await
        .unwrap();
    assert!(
        command.contains(&format!("--key-file '{}'", copy.display())),
        "{command}"
    );
    let copied = std::fs::metadata(&copy).unwrap();
    let postgres_uid = std::fs::metadata(&pg.data_dir).unwrap().uid();
    assert_eq!((copied.mode() & 0o7777, copied.uid()), (0o600, postgres_uid));
    assert_eq!(std::fs::read_to_string(&copy).unwrap(), format!("{key_text}\n"));
    let original = std::fs::metadata(&key_file).unwrap();
    assert_eq!(
        (original.mode() & 0o7777, original.uid()),
        (0o600, 0),
        "the given key is left as it was"
    );
    switch_and_wait_for_archive(&source).await;

    // Restores run restore_command as postgres too
    let tested =
        result(&execute_and_wait(&mut client, &task("test_restore", json!({"database": "pitr"}))).await);
    assert_eq!(tested["passed"], true, "{tested}");
    let now: chrono::DateTime<chrono::Utc> = sqlx::query_scalar("SELECT clock_timestamp()")
        .fetch_one(&source)
        .await
        .unwrap();
    // Recovery stops at the first commit after the target time
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    sqlx::raw_sql("INSERT INTO kept VALUES (101)")
        .execute(&source)
        .await
        .unwrap();
    switch_and_wait_for_archive(&source).await;
    let restored = result(
        &execute_and_wait(
            &mut client,
            &task(
                "restore_pitr",
                json!({"database": "pitr", "target_time": now.to_rfc3339()}),
            ),
        )
        .await,
    );
    let data_directory = restored["data_directory"].as_str().unwrap().to_owned();
    assert_eq!(
        count(restored["url"].as_str().unwrap(), "SELECT count(*) FROM kept").await,
        100
    );
    assert!(
        !Path::new(&data_directory)
            .join(backup::archive_access::KEY_COPY)
            .exists(),
        "a promoted instance keeps no copy of the key"
    );
    stop_restored(&data_directory);
    std::fs::remove_dir_all(&data_directory).unwrap();

    source.close().await;
    server.stop().await;
    db.drop_database().await;
    drop(pg);
}

/// When archive_command fails, the backup fails as soon as PostgreSQL's
/// archiver has given up on a round of attempts, not after the 60 s wait.
#[tokio::test]
async fn a_physical_backup_fails_fast_when_the_archiver_keeps_failing() {
    let dirs = BackupDirs::new();
    let pg = PrivatePostgres::start(&["archive_mode = on"]).await;
    let db = TestDb::create().await;
    event_store::MIGRATOR.run(&db.pool().await).await.unwrap();
    let config = server::Config::from_settings(dirs.settings(settings_for(&db))).unwrap();
    let store = catalogue_store(&config, db.pool().await);
    // A dbswarm whose check passes and whose every archiving fails
    let failing = dirs.root.join("failing-dbswarm");
    std::fs::write(
        &failing,
        "#!/bin/sh\nfor arg in \"$@\"; do [ \"$arg\" = --check ] && exit 0; done\necho 'simulated archive failure' >&2\nexit 3\n",
    )
    .unwrap();
    std::fs::set_permissions(&failing, std::fs::Permissions::from_mode(0o755)).unwrap();
    let mut backup_config = config.backup.clone();
    backup_config.executable = failing;
    backup_config.archive_targets = vec!["failing".into()];
    let backups = backup::engine::Backups::new(backup_config, store);
    let target = backup::engine::Target {
        name: "failing".into(),
        pool: sqlx::PgPool::connect(&pg.url("postgres")).await.unwrap(),
        url: domain::target::ConnectionUrl::parse(&pg.url("postgres")).unwrap(),
    };
    let request = backup::engine::CreateRequest {
        kind: backup::catalogue::BackupKind::Physical,
        tables: vec![],
        checksum_tables: vec![],
    };

    let started = std::time::Instant::now();
    let failed = backups
        .create(&target, &request, &backup::engine::NoProgress)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        started.elapsed() < std::time::Duration::from_secs(30),
        "{:?}: {failed}",
        started.elapsed()
    );
    assert!(
        failed.contains("cannot be archived: archive_command failed"),
        "{failed}"
    );
    let catalogue = backups.catalogue("failing").await.unwrap();
    assert!(
        catalogue
            .backups
            .values()
            .all(|e| matches!(e.status, backup::catalogue::Status::Failed { .. })),
        "recorded as failed"
    );
    target.pool.close().await;
    db.drop_database().await;
    drop(pg);
}

#[tokio::test]
async fn the_cli_creates_lists_verifies_and_tests_backups_with_the_agents_catalogue() {
    let dirs = BackupDirs::new();
    let (db, _target_db, server) = serve(&dirs).await;
    let repository = dirs.repository();
    let key_file = dirs.key_file.clone();
    let backup = |args: &[&str]| {
        let output = std::process::Command::new(dbswarm_binary())
            .arg("backup")
            .args(args)
            .args(["--database-url", &db.url])
            .arg("--backup-repository-dir")
            .arg(&repository)
            .arg("--backup-key-file")
            .arg(&key_file)
            .output()
            .expect("run dbswarm backup");
        (
            output.status.code(),
            String::from_utf8_lossy(&output.stdout).into_owned(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    };

    let (code, out, err) = backup(&["create", "--database", "app", "--table", "accounts"]);
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(
        out.starts_with("backup ") && out.contains("(logical) of app"),
        "{out}"
    );
    let (code, out, err) = backup(&["list", "--database", "app", "--json"]);
    assert_eq!(code, Some(0), "{err}");
    let catalogue: Value = serde_json::from_str(&out).unwrap();
    let backups = catalogue["backups"].as_object().unwrap();
    assert_eq!(backups.len(), 1);
    let (backup_id, entry) = backups.iter().next().unwrap();
    assert_eq!(entry["tables"], json!(["public.accounts"]));
    let (code, out, err) = backup(&["verify", "--database", "app"]);
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.contains("verified: 1 files"), "{out}");
    let (code, out, err) = backup(&["test-restore", "--database", "app"]);
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.contains("passed"), "{out}");

    // The agent sees what the CLI recorded
    let mut client = workflows_client(&server).await;
    let listed = result(&execute_and_wait(&mut client, &task("list", json!({"database": "app"}))).await);
    assert_eq!(listed["backups"][0]["backup_id"], backup_id.as_str());
    assert_eq!(listed["backups"][0]["last_restore_test"]["passed"], true);

    // A flipped byte: verify exits 1 naming the file
    let path = backup_file(&dirs, backup_id, "database.dump.enc");
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[40] ^= 0x80;
    std::fs::write(&path, &bytes).unwrap();
    let (code, out, _) = backup(&["verify", "--database", "app"]);
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains("FAILS verification") && out.contains("database.dump.enc"),
        "{out}"
    );

    // Bad input: exit 2 with the reason
    let (code, _, err) = backup(&["create", "--database", "app", "--kind", "differential"]);
    assert_eq!(code, Some(2));
    assert!(err.contains("not one of logical, physical"), "{err}");
    let (code, _, err) = backup(&["apply-retention", "--database", "app", "--keep-full", "0"]);
    assert_eq!(code, Some(2));
    assert!(err.contains("at least 1"), "{err}");
    let existing = std::process::Command::new(dbswarm_binary())
        .args(["backup", "generate-key"])
        .arg(&key_file)
        .output()
        .unwrap();
    assert_eq!(existing.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&existing.stderr).contains("cannot create"));
    let missing = std::process::Command::new(dbswarm_binary())
        .args(["backup", "wal-fetch", "--repository"])
        .arg(&repository)
        .arg("--key-file")
        .arg(&key_file)
        .args(["--target", "app", "000000010000000000000042"])
        .arg(dirs.root.join("fetched"))
        .output()
        .unwrap();
    assert_eq!(missing.status.code(), Some(1), "{missing:?}");

    server.stop().await;
    db.drop_database().await;
}

/// The seed's "Database Migration" head: `pre_migration_backup` takes a
/// backup, then `run_migration` applies; the backup is in the catalogue
/// before the migration changes anything.
#[tokio::test]
async fn the_seeds_pre_migration_backup_runs_before_the_migration() {
    let dirs = BackupDirs::new();
    let (db, target_db, server) = serve(&dirs).await;
    let mut client = workflows_client(&server).await;
    let plan = json!({"name": "Database Migration", "tasks": [
        {"id": "pre_migration_backup", "agent": "backup", "operation": "create",
         "params": {"database": "app"}, "timeout": "30m"},
        {"id": "run_migration", "agent": "schema", "operation": "apply",
         "params": {"database": "app", "complete": true, "definition": {
             "name": "add_user_roles",
             "operations": [{"add_column": {"table": "accounts", "column": "role", "type": "text"}}]}},
         "dependencies": ["pre_migration_backup"],
         "compensation": {"operation": "rollback"}}
    ]});
    let workflow = execute_and_wait(&mut client, &plan).await;
    assert_eq!(
        workflow.status, "completed",
        "{} {:?}",
        workflow.summary, workflow.tasks
    );
    let backup: Value = serde_json::from_str(
        &workflow
            .tasks
            .iter()
            .find(|t| t.task_id == "pre_migration_backup")
            .unwrap()
            .result_json,
    )
    .unwrap();
    let role_columns: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM information_schema.columns WHERE table_schema = 'public' AND table_name = 'accounts' AND column_name = 'role'",
    )
    .fetch_one(&target_db.pool().await)
    .await
    .unwrap();
    assert_eq!(role_columns, 1);

    // The backup holds the database as it was before the migration
    let tested = result(
        &execute_and_wait(
            &mut client,
            &task(
                "test_restore",
                json!({"database": "app", "backup_id": backup["backup_id"]}),
            ),
        )
        .await,
    );
    assert_eq!(tested["passed"], true, "{tested}");
    server.stop().await;
    target_db.drop_database().await;
    db.drop_database().await;
}

/// Collects progress reports.
#[derive(Default)]
struct Reports(std::sync::Mutex<Vec<(f64, String)>>);

impl backup::engine::ProgressSink for Reports {
    fn report<'a>(
        &'a self,
        percent: f64,
        message: String,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send + 'a>> {
        self.0.lock().unwrap().push((percent, message));
        Box::pin(async {})
    }
}

#[tokio::test]
async fn a_long_backup_reports_bytes_percent_and_rate_as_it_goes() {
    let dirs = BackupDirs::new();
    let db = TestDb::create().await;
    let target_db = TestDb::create().await;
    sqlx::raw_sql(SCHEMA)
        .execute(&target_db.pool().await)
        .await
        .unwrap();
    let config = server::Config::from_settings(dirs.settings(settings_for(&db))).unwrap();
    event_store::MIGRATOR.run(&db.pool().await).await.unwrap();
    let store = catalogue_store(&config, db.pool().await);
    // A pg_dump that takes its time: 3 MiB over about 3 seconds
    let backups = with_tool(
        &dirs,
        &config,
        &store,
        (
            "bin",
            "pg_dump",
            "#!/bin/sh\nfor i in 1 2 3; do head -c 1048576 /dev/zero; sleep 1; done\n",
        ),
    );
    let target = engine_target(&target_db, target_db.pool().await);
    let request = whole_database();
    let reports = Reports::default();
    backups.create(&target, &request, &reports).await.unwrap();
    let reports = reports.0.into_inner().unwrap();
    assert!(reports.len() >= 2, "{reports:?}");
    let (percent, line) = reports.last().unwrap();
    assert!(*percent > 0.0 && *percent <= 99.0, "{reports:?}");
    assert!(
        line.contains(" of ~") && line.contains("%), ") && line.ends_with("/s"),
        "{line}"
    );
    assert!(
        reports.windows(2).all(|w| w[0].0 <= w[1].0),
        "percent only grows: {reports:?}"
    );
    target_db.drop_database().await;
    db.drop_database().await;
}

/// The seed's quarterly DR test: a schedule whose plan is a restore test.
#[tokio::test]
async fn a_restore_test_is_scheduled_quarterly() {
    let db = TestDb::create().await;
    let server = TestServer::start(with_workflows(settings_for(&db))).await;
    let mut client = workflows_client(&server).await;
    let plan = json!({"name": "quarterly DR test", "tasks": [
        {"id": "dr_test", "agent": "backup", "operation": "test_restore",
         "params": {"database": "app"}, "timeout": "2h"}
    ]});
    let created = client
        .create_schedule(proto::CreateScheduleRequest {
            schedule_id: "dr-test".into(),
            name: "quarterly DR test".into(),
            cron: "@quarterly".into(),
            request: Some(proto::create_schedule_request::Request::PlanJson(
                plan.to_string(),
            )),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let runs: Vec<chrono::DateTime<chrono::Utc>> =
        created.next_runs.iter().map(|r| r.parse().unwrap()).collect();
    assert_eq!(runs.len(), 5);
    for run in &runs {
        use chrono::{Datelike, Timelike};
        assert!([1, 4, 7, 10].contains(&run.month()) && run.day() == 1, "{runs:?}");
        assert_eq!((run.hour(), run.minute()), (0, 0));
    }
    // A plan with a parameter the operation does not take is refused
    let bad = json!({"name": "x", "tasks": [
        {"id": "t", "agent": "backup", "operation": "test_restore", "params": {"into": "x"}}
    ]});
    let refused = client
        .create_schedule(proto::CreateScheduleRequest {
            schedule_id: "bad".into(),
            name: "bad".into(),
            cron: "@quarterly".into(),
            request: Some(proto::create_schedule_request::Request::PlanJson(bad.to_string())),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert!(refused.message().contains("into"), "{}", refused.message());
    server.stop().await;
    db.drop_database().await;
}
