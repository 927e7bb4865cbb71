//! The backup agent's operations, served by the agents' runtime:
//! `backup.create`, `verify`, `restore`, `restore_pitr`, `test_restore`,
//! `list`, `apply_retention` and `delete`.

use std::path::PathBuf;
use std::sync::Arc;

use agents::params::{optional_text, text};
use agents::{OpFuture, Operation, TaskContext};
use chrono::{DateTime, Utc};
use event_store::clock::now_ms;
use serde::Serialize;
use serde_json::{Map, Value, json};

use crate::catalogue::{BackupKind, CatalogueCommand, Entry};
use crate::engine::{BackupError, Backups, CreateRequest, Target};
use crate::physical::{PitrRequest, restore_pitr};
use crate::restore_test::test_restore;
use crate::retention::{self, Policy};

/// The agent these operations belong to.
pub const AGENT: &str = "backup";

/// Tables one backup names at most.
const TABLES_MAX: usize = 1_000;

/// `(operation, implementation)` of every operation of the backup agent.
pub fn operations(backups: Backups) -> Vec<(&'static str, Arc<dyn Operation>)> {
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

async fn target(task: &TaskContext) -> Result<Target, String> {
    let (name, pool, url) = task.target(AGENT).await?;
    Ok(Target { name, pool, url })
}

fn to_json<T: Serialize>(value: &T) -> Result<Value, String> {
    serde_json::to_value(value).map_err(|e| e.to_string())
}

fn message(error: BackupError) -> String {
    error.to_string()
}

fn names(params: &Map<String, Value>, name: &str) -> Result<Vec<String>, String> {
    match params.get(name) {
        None | Some(Value::Null) => Ok(vec![]),
        Some(Value::Array(items)) if items.len() > TABLES_MAX => Err(format!(
            "parameter '{name}' names {} tables; at most {TABLES_MAX}",
            items.len()
        )),
        Some(Value::Array(items)) => items
            .iter()
            .map(|item| match item {
                Value::String(s) if !s.is_empty() => Ok(s.clone()),
                other => Err(format!("parameter '{name}' must list table names, not {other}")),
            })
            .collect(),
        Some(other) => Err(format!(
            "parameter '{name}' must be an array of table names, not {other}"
        )),
    }
}

fn optional_u32(params: &Map<String, Value>, name: &str) -> Result<Option<u32>, String> {
    match params.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(value) => value
            .as_u64()
            .and_then(|n| u32::try_from(n).ok())
            .map(Some)
            .ok_or_else(|| {
                format!(
                    "parameter '{name}' must be a whole number from 0 to {}, not {value}",
                    u32::MAX
                )
            }),
    }
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
    fn run<'a>(&'a self, task: &'a TaskContext) -> OpFuture<'a> {
        Box::pin(async move {
            let params = &task.command.params;
            let kind = match optional_text(params, "kind")? {
                Some(kind) => BackupKind::parse(kind)?,
                None => BackupKind::Logical,
            };
            let request = CreateRequest {
                kind,
                tables: names(params, "tables")?,
                checksum_tables: names(params, "checksum_tables")?,
            };
            let target = target(task).await?;
            let manifest = self.0.create(&target, &request, task).await.map_err(message)?;
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
    fn run<'a>(&'a self, task: &'a TaskContext) -> OpFuture<'a> {
        Box::pin(async move {
            let backup_id = optional_text(&task.command.params, "backup_id")?;
            let (name, _, _) = task.target(AGENT).await?;
            let verification = self.0.verify(&name, backup_id).await.map_err(message)?;
            if !verification.passed {
                return Err(format!(
                    "backup {} fails verification: {}",
                    verification.backup_id,
                    verification.problems.join("; ")
                ));
            }
            to_json(&verification)
        })
    }
}

struct Restore(Arc<Backups>);

impl Operation for Restore {
    fn run<'a>(&'a self, task: &'a TaskContext) -> OpFuture<'a> {
        Box::pin(async move {
            let params = &task.command.params;
            let backup_id = optional_text(params, "backup_id")?;
            let into = optional_text(params, "into_database")?;
            let target = target(task).await?;
            let restored = self
                .0
                .restore(&target, backup_id, into, task)
                .await
                .map_err(message)?;
            to_json(&restored)
        })
    }
}

struct RestorePitr(Arc<Backups>);

impl Operation for RestorePitr {
    fn run<'a>(&'a self, task: &'a TaskContext) -> OpFuture<'a> {
        Box::pin(async move {
            let params = &task.command.params;
            let target_time = parse_time("target_time", text(params, "target_time")?)?;
            let port = match optional_u32(params, "port")? {
                None => None,
                Some(port) => Some(
                    u16::try_from(port)
                        .ok()
                        .filter(|p| *p >= 1024)
                        .ok_or_else(|| format!("parameter 'port' must be from 1024 to 65535, not {port}"))?,
                ),
            };
            let request = PitrRequest {
                backup_id: optional_text(params, "backup_id")?.map(str::to_owned),
                target_time: Some(target_time),
                data_directory: optional_text(params, "data_directory")?.map(PathBuf::from),
                port,
            };
            let target = target(task).await?;
            let restored = restore_pitr(&self.0, &target, &request, task)
                .await
                .map_err(message)?;
            to_json(&restored)
        })
    }
}

struct TestRestore(Arc<Backups>);

impl Operation for TestRestore {
    fn run<'a>(&'a self, task: &'a TaskContext) -> OpFuture<'a> {
        Box::pin(async move {
            let backup_id = optional_text(&task.command.params, "backup_id")?;
            let target = target(task).await?;
            let test = test_restore(&self.0, &target, backup_id, task)
                .await
                .map_err(message)?;
            if !test.passed {
                return Err(format!(
                    "restore test of backup {} failed: {}",
                    test.backup_id,
                    test.problems.join("; ")
                ));
            }
            to_json(&test)
        })
    }
}

struct List(Arc<Backups>);

impl Operation for List {
    fn run<'a>(&'a self, task: &'a TaskContext) -> OpFuture<'a> {
        Box::pin(async move {
            let (name, _, _) = task.target(AGENT).await?;
            let catalogue = self.0.catalogue(&name).await.map_err(message)?;
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
    fn run<'a>(&'a self, task: &'a TaskContext) -> OpFuture<'a> {
        Box::pin(async move {
            let params = &task.command.params;
            let policy = Policy::new(
                optional_u32(params, "keep_full")?,
                optional_u32(params, "window_days")?,
            )?;
            let (name, _, _) = task.target(AGENT).await?;
            let applied = retention::apply(&self.0, &name, policy).await.map_err(message)?;
            to_json(&applied)
        })
    }
}

struct Delete(Arc<Backups>);

impl Operation for Delete {
    fn run<'a>(&'a self, task: &'a TaskContext) -> OpFuture<'a> {
        Box::pin(async move {
            let backup_id = text(&task.command.params, "backup_id")?;
            let (name, _, _) = task.target(AGENT).await?;
            let entry = self
                .0
                .completed_backup(&name, Some(backup_id), None)
                .await
                .map_err(message)?;
            self.0
                .repository()
                .delete_backup(&name, &entry.backup_id)
                .await
                .map_err(|e| e.to_string())?;
            self.0
                .record(
                    &name,
                    CatalogueCommand::Delete {
                        backup_id: entry.backup_id.clone(),
                        reason: "deleted on request".into(),
                        at_ms: now_ms() as i64,
                    },
                )
                .await
                .map_err(message)?;
            Ok(json!({"deleted": entry.backup_id}))
        })
    }
}
