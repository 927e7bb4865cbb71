//! The backup agent's operations, served by the agents' runtime:
//! `backup.create`, `verify`, `restore`, `restore_pitr`, `test_restore`,
//! `list`, `apply_retention` and `delete`.

use std::path::PathBuf;
use std::sync::Arc;

use agents::params::{TargetParams, Text, to_json};
use agents::{OpFuture, Operation, Served, TaskContext};
use chrono::{DateTime, Utc};
use domain::{Code, OperationError};
use event_store::clock::now_ms;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::catalogue::{BackupKind, CatalogueCommand, Entry};
use crate::engine::{Backups, CreateRequest, Target};
use crate::physical::{PitrRequest, restore_pitr};
use crate::restore_test::test_restore;
use crate::retention::{self, Policy};

/// The agent these operations belong to.
pub const AGENT: &str = "backup";

/// Tables one backup names at most.
const TABLES_MAX: usize = 1_000;

/// `(operation, implementation)` of every operation of the backup agent.
pub fn operations(backups: Backups) -> Vec<(&'static str, Arc<dyn Served>)> {
    let backups = Arc::new(backups);
    vec![
        ("create", Arc::new(Create(backups.clone()))),
        ("verify", Arc::new(Verify(backups.clone()))),
        ("restore", Arc::new(Restore(backups.clone()))),
        ("restore_pitr", Arc::new(RestorePitr(backups.clone()))),
        ("test_restore", Arc::new(TestRestore(backups.clone()))),
        ("list", Arc::new(List(backups.clone()))),
        ("apply_retention", Arc::new(ApplyRetention(backups.clone()))),
        ("delete", Arc::new(Delete(backups))),
    ]
}

async fn target(task: &TaskContext, database: &Option<Text>) -> Result<Target, OperationError> {
    let (name, pool, url) = task.target(AGENT, database.as_deref()).await?;
    Ok(Target { name, pool, url })
}

/// Table names of a parameter, at most [`TABLES_MAX`].
fn names(name: &str, tables: Option<Vec<Text>>) -> Result<Vec<String>, OperationError> {
    let tables = tables.unwrap_or_default();
    if tables.len() > TABLES_MAX {
        return Err(OperationError::invalid_argument(format!(
            "parameter '{name}' names {} tables; at most {TABLES_MAX}",
            tables.len()
        )));
    }
    Ok(tables.into_iter().map(String::from).collect())
}

/// `backup.create`'s.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateParams {
    pub database: Option<Text>,
    /// `logical` (default) or `physical`.
    pub kind: Option<Text>,
    pub tables: Option<Vec<Text>>,
    pub checksum_tables: Option<Vec<Text>>,
}

/// The target and, optionally, one backup (default: the latest).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackupParams {
    pub database: Option<Text>,
    pub backup_id: Option<Text>,
}

/// `backup.restore`'s.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RestoreParams {
    pub database: Option<Text>,
    pub backup_id: Option<Text>,
    pub into_database: Option<Text>,
}

/// `backup.restore_pitr`'s.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RestorePitrParams {
    pub database: Option<Text>,
    /// RFC 3339.
    pub target_time: Text,
    pub backup_id: Option<Text>,
    pub data_directory: Option<Text>,
    pub port: Option<u32>,
}

/// `backup.apply_retention`'s.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetentionParams {
    pub database: Option<Text>,
    pub keep_full: Option<u32>,
    pub window_days: Option<u32>,
}

/// `backup.delete`'s.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeleteParams {
    pub database: Option<Text>,
    pub backup_id: Text,
}

/// An RFC 3339 time (`2026-11-26T14:30:00Z`, or with an offset).
pub fn parse_time(name: &str, text: &str) -> Result<DateTime<Utc>, String> {
    DateTime::parse_from_rfc3339(text)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| {
            format!("parameter '{name}' must be an RFC 3339 time like 2026-11-26T14:30:00Z: '{text}' {e}")
        })
}

/// One backup as `list` shows it.
fn listed(entry: &Entry) -> Value {
    let mut value = serde_json::to_value(entry).unwrap_or_default();
    if let Some(object) = value.as_object_mut() {
        object.insert("duration_ms".into(), json!(entry.duration_ms()));
    }
    value
}

struct Create(Arc<Backups>);

impl Operation for Create {
    type Params = CreateParams;

    fn run<'a>(&'a self, task: &'a TaskContext, params: CreateParams) -> OpFuture<'a> {
        Box::pin(async move {
            let kind = match params.kind.as_deref() {
                Some(kind) => BackupKind::parse(kind).map_err(OperationError::invalid_argument)?,
                None => BackupKind::Logical,
            };
            let request = CreateRequest {
                kind,
                tables: names("tables", params.tables)?,
                checksum_tables: names("checksum_tables", params.checksum_tables)?,
            };
            let target = target(task, &params.database).await?;
            let manifest = self.0.create(&target, &request, task).await?;
            Ok(json!({
                "backup_id": manifest.backup_id,
                "kind": manifest.kind,
                "database": target.name,
                "stored_bytes": manifest.stored_bytes(),
                "plain_bytes": manifest.plain_bytes(),
                "duration_ms": (manifest.stopped_at - manifest.started_at).num_milliseconds(),
                "start_lsn": manifest.start_lsn,
                "stop_lsn": manifest.stop_lsn,
                "start_wal_segment": manifest.start_wal_segment,
                "tables": manifest.table_facts.len(),
                "key_fingerprint": manifest.key_fingerprint,
            }))
        })
    }
}

struct Verify(Arc<Backups>);

impl Operation for Verify {
    type Params = BackupParams;

    fn run<'a>(&'a self, task: &'a TaskContext, params: BackupParams) -> OpFuture<'a> {
        Box::pin(async move {
            let (name, _, _) = task.target(AGENT, params.database.as_deref()).await?;
            let verification = self.0.verify(&name, params.backup_id.as_deref()).await?;
            if !verification.passed {
                return Err(OperationError::internal(format!(
                    "backup {} fails verification: {}",
                    verification.backup_id,
                    verification.problems.join("; ")
                )));
            }
            to_json(&verification)
        })
    }
}

struct Restore(Arc<Backups>);

impl Operation for Restore {
    type Params = RestoreParams;

    fn run<'a>(&'a self, task: &'a TaskContext, params: RestoreParams) -> OpFuture<'a> {
        Box::pin(async move {
            let target = target(task, &params.database).await?;
            let restored = self
                .0
                .restore(
                    &target,
                    params.backup_id.as_deref(),
                    params.into_database.as_deref(),
                    task,
                )
                .await?;
            to_json(&restored)
        })
    }
}

struct RestorePitr(Arc<Backups>);

impl Operation for RestorePitr {
    type Params = RestorePitrParams;

    fn run<'a>(&'a self, task: &'a TaskContext, params: RestorePitrParams) -> OpFuture<'a> {
        Box::pin(async move {
            let target_time =
                parse_time("target_time", &params.target_time).map_err(OperationError::invalid_argument)?;
            let port = match params.port {
                None => None,
                Some(port) => Some(u16::try_from(port).ok().filter(|p| *p >= 1024).ok_or_else(|| {
                    OperationError::invalid_argument(format!(
                        "parameter 'port' must be from 1024 to 65535, not {port}"
                    ))
                })?),
            };
            let request = PitrRequest {
                backup_id: params.backup_id.map(String::from),
                target_time: Some(target_time),
                data_directory: params.data_directory.map(|d| PathBuf::from(String::from(d))),
                port,
            };
            let target = target(task, &params.database).await?;
            let restored = restore_pitr(&self.0, &target, &request, task).await?;
            to_json(&restored)
        })
    }
}

struct TestRestore(Arc<Backups>);

impl Operation for TestRestore {
    type Params = BackupParams;

    fn run<'a>(&'a self, task: &'a TaskContext, params: BackupParams) -> OpFuture<'a> {
        Box::pin(async move {
            let target = target(task, &params.database).await?;
            let test = test_restore(&self.0, &target, params.backup_id.as_deref(), task).await?;
            if !test.passed {
                return Err(OperationError::internal(format!(
                    "restore test of backup {} failed: {}",
                    test.backup_id,
                    test.problems.join("; ")
                )));
            }
            to_json(&test)
        })
    }
}

struct List(Arc<Backups>);

impl Operation for List {
    type Params = TargetParams;

    fn run<'a>(&'a self, task: &'a TaskContext, params: TargetParams) -> OpFuture<'a> {
        Box::pin(async move {
            let (name, _, _) = task.target(AGENT, params.database.as_deref()).await?;
            let catalogue = self.0.catalogue(&name).await?;
            let backups: Vec<Value> = catalogue.backups.values().map(listed).collect();
            Ok(json!({
                "database": name,
                "backups": backups,
                "wal_pruned_before": catalogue.wal_pruned_before,
            }))
        })
    }
}

struct ApplyRetention(Arc<Backups>);

impl Operation for ApplyRetention {
    type Params = RetentionParams;

    fn run<'a>(&'a self, task: &'a TaskContext, params: RetentionParams) -> OpFuture<'a> {
        Box::pin(async move {
            let policy = Policy::new(params.keep_full, params.window_days)
                .map_err(OperationError::invalid_argument)?;
            let (name, _, _) = task.target(AGENT, params.database.as_deref()).await?;
            let applied = retention::apply(&self.0, &name, policy).await?;
            to_json(&applied)
        })
    }
}

struct Delete(Arc<Backups>);

impl Operation for Delete {
    type Params = DeleteParams;

    fn run<'a>(&'a self, task: &'a TaskContext, params: DeleteParams) -> OpFuture<'a> {
        Box::pin(async move {
            let (name, _, _) = task.target(AGENT, params.database.as_deref()).await?;
            let entry = self
                .0
                .completed_backup(&name, Some(&*params.backup_id), None)
                .await?;
            self.0
                .repository()
                .delete_backup(&name, &entry.backup_id)
                .await
                .map_err(|e| OperationError::new(Code::Internal, e.to_string()))?;
            self.0
                .record(
                    &name,
                    CatalogueCommand::Delete {
                        backup_id: entry.backup_id.clone(),
                        reason: "deleted on request".into(),
                        at_ms: now_ms() as i64,
                    },
                )
                .await?;
            Ok(json!({"deleted": entry.backup_id}))
        })
    }
}
