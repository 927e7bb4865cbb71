//! Restore tests: a backup that was never restored is a hope, not a
//! backup. The latest (or a named) backup is restored into scratch — a
//! scratch database on the target's server for a logical backup, a scratch
//! instance on a free port for a physical one — checked, recorded in the
//! catalogue, and the scratch is dropped.
//!
//! Checks: every table's row count and the recorded checksums against the
//! values read in the backup's own snapshot (logical), and amcheck (B-tree
//! structure and heap) where the extension is available.

use std::path::PathBuf;
use std::time::Instant;

use event_store::clock::now_ms;
use serde::Serialize;
use sqlx::{Connection, PgConnection};

use crate::catalogue::{BackupKind, CatalogueCommand, CheckOutcome};
use crate::engine::{BackupError, Backups, ProgressSink, Target, UndoOnDrop, drop_database};
use crate::facts;
use crate::physical::{PitrRequest, remove_instance, restore_pitr};

const BTREE_INDEXES: &str = include_str!("sql/btree_indexes.sql");
const BT_INDEX_CHECK: &str = include_str!("sql/bt_index_check.sql");
const VERIFY_HEAPAM: &str = include_str!("sql/verify_heapam.sql");

/// Indexes and tables amcheck looks at, at most.
const AMCHECK_RELATIONS_MAX: i64 = 1_000;

#[derive(Debug, Clone, Serialize)]
pub struct RestoreTest {
    pub backup_id: String,
    pub kind: BackupKind,
    pub passed: bool,
    /// What was checked, one line each.
    pub checks: Vec<String>,
    pub problems: Vec<String>,
    pub duration_ms: u64,
}

/// Restores, checks and drops; the outcome is recorded either way.
pub async fn test_restore(
    backups: &Backups,
    target: &Target,
    backup_id: Option<&str>,
    progress: &dyn ProgressSink,
) -> Result<RestoreTest, BackupError> {
    let entry = backups.completed_backup(&target.name, backup_id, None).await?;
    let started = Instant::now();
    let mut test = RestoreTest {
        backup_id: entry.backup_id.clone(),
        kind: entry.kind,
        passed: false,
        checks: Vec::new(),
        problems: Vec::new(),
        duration_ms: 0,
    };
    let outcome = match entry.kind {
        BackupKind::Logical => logical(backups, target, &entry.backup_id, &mut test, progress).await,
        BackupKind::Physical => physical(backups, target, &entry.backup_id, &mut test, progress).await,
    };
    if let Err(error) = outcome {
        test.problems.push(format!("the restore failed: {error}"));
    }
    test.passed = test.problems.is_empty();
    test.duration_ms = started.elapsed().as_millis() as u64;
    backups
        .record(
            &target.name,
            CatalogueCommand::RecordRestoreTest {
                backup_id: entry.backup_id.clone(),
                outcome: CheckOutcome {
                    at_ms: now_ms() as i64,
                    passed: test.passed,
                    problems: test.problems.clone(),
                },
            },
        )
        .await?;
    Ok(test)
}

async fn logical(
    backups: &Backups,
    target: &Target,
    backup_id: &str,
    test: &mut RestoreTest,
    progress: &dyn ProgressSink,
) -> Result<(), BackupError> {
    let manifest = backups.usable_manifest(&target.name, backup_id).await?;
    let random = uuid::Uuid::new_v4().simple().to_string();
    let scratch = format!("dbswarm_restore_test_{}", &random[..12]);
    backups
        .restore_into_new_database(target, &manifest, &scratch, progress)
        .await?;
    test.checks
        .push(format!("restored into scratch database {scratch}"));
    // Dropped below, or in the background if the task is cancelled first.
    let undo = UndoOnDrop::new(drop_database(target.pool.clone(), scratch.clone()));
    let checked = async {
        let mut conn = PgConnection::connect(target.url.with_database(&scratch).expose()).await?;
        let problems = facts::compare(&mut conn, &manifest.table_facts).await?;
        test.checks.push(format!(
            "row counts of {} tables and {} checksums against the backup's snapshot",
            manifest.table_facts.len(),
            manifest
                .table_facts
                .iter()
                .filter(|f| f.checksum.is_some())
                .count()
        ));
        test.problems.extend(problems);
        amcheck(&mut conn, test).await?;
        let _ = conn.close().await;
        Ok::<(), BackupError>(())
    }
    .await;
    undo.disarm();
    drop_database(target.pool.clone(), scratch).await;
    checked
}

async fn physical(
    backups: &Backups,
    target: &Target,
    backup_id: &str,
    test: &mut RestoreTest,
    progress: &dyn ProgressSink,
) -> Result<(), BackupError> {
    let random = uuid::Uuid::new_v4().simple().to_string();
    let data_directory: PathBuf =
        backups
            .config()
            .scratch_dir
            .join(format!("{}-restore-test-{}", target.name, &random[..12]));
    let request = PitrRequest {
        backup_id: Some(backup_id.to_owned()),
        target_time: None,
        data_directory: Some(data_directory.clone()),
        port: None,
    };
    let restored = restore_pitr(backups, target, &request, progress).await?;
    test.checks.push(format!(
        "restored into a scratch instance on port {} and recovered to the backup's end",
        restored.port
    ));
    let undo = UndoOnDrop::new(remove_instance(
        backups.config().tools.clone(),
        data_directory.clone(),
    ));
    let checked = async {
        let mut conn = PgConnection::connect(&restored.url).await?;
        let tables = facts::user_tables(&mut conn).await?;
        let mut rows = 0i64;
        for table in &tables {
            rows += facts::row_count(&mut conn, &table.name).await?;
        }
        test.checks
            .push(format!("{} tables readable, {rows} rows in all", tables.len()));
        amcheck(&mut conn, test).await?;
        let _ = conn.close().await;
        Ok::<(), BackupError>(())
    }
    .await;
    undo.disarm();
    remove_instance(backups.config().tools.clone(), data_directory).await;
    checked
}

/// amcheck on every B-tree index (with heapallindexed) and every table's
/// heap, when the extension can be created; otherwise says it was skipped.
async fn amcheck(conn: &mut PgConnection, test: &mut RestoreTest) -> Result<(), BackupError> {
    if sqlx::raw_sql("CREATE EXTENSION IF NOT EXISTS amcheck")
        .execute(&mut *conn)
        .await
        .is_err()
    {
        test.checks
            .push("amcheck skipped: the extension is not available".into());
        return Ok(());
    }
    let indexes: Vec<String> = sqlx::query_scalar(BTREE_INDEXES)
        .bind(AMCHECK_RELATIONS_MAX)
        .fetch_all(&mut *conn)
        .await?;
    for index in &indexes {
        if let Err(error) = sqlx::query(BT_INDEX_CHECK).bind(index).execute(&mut *conn).await {
            test.problems.push(format!("amcheck: index {index}: {error}"));
        }
    }
    let tables = facts::user_tables(conn).await?;
    for table in &tables {
        let corrupt: Vec<(i64, Option<i32>, String)> = sqlx::query_as(VERIFY_HEAPAM)
            .bind(&table.name)
            .fetch_all(&mut *conn)
            .await?;
        for (block, offset, message) in corrupt {
            test.problems.push(format!(
                "amcheck: table {} block {block} item {}: {message}",
                table.name,
                offset.map_or("-".into(), |o| o.to_string())
            ));
        }
    }
    test.checks.push(format!(
        "amcheck on {} B-tree indexes and {} table heaps",
        indexes.len(),
        tables.len()
    ));
    Ok(())
}
