//! The backup engine: create, verify, restore, test and prune backups of
//! target databases, with the catalogue kept as events (stream
//! `backups-<target>`). The agent's operations and the CLI both call it.
//!
//! Every backup is written into a locked `.partial` directory of the
//! repository and published by a rename after its signed manifest; its
//! catalogue entry is started before and completed (or failed) after. A
//! backup whose writer died is found by the next one (its lock is free)
//! and marked failed, so it never blocks what comes after it.

use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use agents::sql::quote_ident;
use chrono::{DateTime, Utc};
use domain::target::ConnectionUrl;
use event_store::clock::now_ms;
use event_store::{Aggregate, AggregateError, AggregateStore};
use serde::Serialize;
use serde_json::Value;
use sqlx::{AssertSqlSafe, PgPool};
use tokio::io::AsyncWriteExt;

use crate::catalogue::{
    self, BackupKind, Catalogue, CatalogueCommand, CatalogueError, CatalogueEvent, CheckOutcome,
};
use crate::crypto::{self, BackupKey, CryptoError, StreamDigest};
use crate::facts::{self, SizedTable};
use crate::manifest::{FORMAT_VERSION, Manifest, ManifestFile, TableFacts};
use crate::repository::{Repository, RepositoryError};
use crate::tools::{self, ToolError, Tools};

const SERVER_POSITION: &str = include_str!("sql/server_position.sql");

/// The data file of a logical backup (pg_dump's custom format, encrypted).
pub const LOGICAL_FILE: &str = "database.dump.enc";

/// How often long work reports its progress.
const PROGRESS_INTERVAL_MS: u64 = 1_000;

/// Database names PostgreSQL accepts at most (NAMEDATALEN - 1).
const DATABASE_NAME_BYTES_MAX: usize = 63;

/// How backups are made and kept.
#[derive(Debug, Clone)]
pub struct BackupConfig {
    /// The repository directory.
    pub repository_dir: PathBuf,
    /// The encryption key; without one the agent refuses to write or
    /// read backups (it never writes an unencrypted one).
    pub key: Option<BackupKey>,
    /// The file the key was read from: PostgreSQL's archive_command and
    /// restore_command read it too (a key given as text cannot be handed
    /// to them, so physical backups need a file).
    pub key_file: Option<PathBuf>,
    pub tools: Tools,
    /// gzip level pg_dump / pg_basebackup compress with before
    /// encryption (0: none).
    pub compression_level: u32,
    /// Tables up to this size get a checksum recorded at backup time
    /// (larger ones only a row count, unless named in `checksum_tables`).
    pub checksum_table_bytes_max: i64,
    /// Where scratch instances of restore tests and point-in-time
    /// restores without a named directory go.
    pub scratch_dir: PathBuf,
    /// Targets whose WAL archiving the agent may configure (ALTER SYSTEM).
    pub archive_targets: Vec<String>,
    /// The `dbswarm` executable PostgreSQL runs as archive_command and
    /// restore_command.
    pub executable: PathBuf,
}

impl Default for BackupConfig {
    fn default() -> Self {
        BackupConfig {
            repository_dir: PathBuf::from(".dbswarm/backups"),
            key: None,
            key_file: None,
            tools: Tools::default(),
            compression_level: 0,
            checksum_table_bytes_max: 64 * 1024 * 1024,
            scratch_dir: PathBuf::from(".dbswarm/scratch"),
            archive_targets: Vec::new(),
            executable: std::env::current_exe().unwrap_or_else(|_| PathBuf::from("dbswarm")),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    #[error(
        "no backup encryption key is configured: set backup_key_file (or DBSWARM_BACKUP_KEY_FILE) to a file holding 32 bytes as 64 hex characters (`dbswarm backup generate-key` writes one); backups are never written unencrypted"
    )]
    NoKey,
    /// Bad input or a state that does not allow the request.
    #[error("{0}")]
    Refused(String),
    #[error(transparent)]
    Catalogue(#[from] AggregateError),
    #[error(transparent)]
    Repository(#[from] RepositoryError),
    #[error("{file}: {error}")]
    Crypto { file: String, error: CryptoError },
    #[error(transparent)]
    Tool(#[from] ToolError),
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    #[error("{0}")]
    Io(String),
}

impl BackupError {
    pub fn code(&self) -> domain::Code {
        use domain::Code;
        match self {
            BackupError::NoKey | BackupError::Refused(_) => Code::FailedPrecondition,
            BackupError::Catalogue(e) => e.code(),
            BackupError::Database(e) => agents::database_code(e),
            BackupError::Repository(_)
            | BackupError::Crypto { .. }
            | BackupError::Tool(_)
            | BackupError::Io(_) => Code::Internal,
        }
    }
}

impl From<BackupError> for domain::OperationError {
    fn from(e: BackupError) -> domain::OperationError {
        domain::OperationError::new(e.code(), e.to_string())
    }
}

pub use agents::{NoProgress, ProgressSink, Target};

/// The catalogue as an aggregate of the event store's aggregate store.
pub struct CatalogueAggregate;

impl Aggregate for CatalogueAggregate {
    const KIND: &'static str = "backups";
    type State = Catalogue;
    type Event = CatalogueEvent;
    type Command = CatalogueCommand;
    type Context = ();
    type Error = CatalogueError;
    type Failure = AggregateError;

    fn decide(
        state: &Catalogue,
        command: CatalogueCommand,
        _: (),
    ) -> Result<Vec<CatalogueEvent>, CatalogueError> {
        catalogue::decide(state, command)
    }
    fn evolve(state: Catalogue, event: &CatalogueEvent) -> Catalogue {
        catalogue::evolve(state, event)
    }
    fn event_type(event: &CatalogueEvent) -> &'static str {
        event.event_type()
    }
    fn data(event: &CatalogueEvent) -> Value {
        event.data()
    }
    fn from_stored(event_type: &str, data: Value) -> Result<CatalogueEvent, String> {
        CatalogueEvent::from_stored(event_type, data)
    }
    fn creates(_: &CatalogueCommand) -> bool {
        true
    }
    fn live(_: &Catalogue) -> bool {
        true
    }
}

impl From<CatalogueError> for AggregateError {
    fn from(error: CatalogueError) -> AggregateError {
        AggregateError::Refused(error.to_string())
    }
}

pub type CatalogueStore = AggregateStore<CatalogueAggregate>;

/// What to back up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CreateRequest {
    pub kind: BackupKind,
    /// Logical only: these tables instead of the whole database.
    pub tables: Vec<String>,
    /// Tables to checksum whatever their size.
    pub checksum_tables: Vec<String>,
}

/// The outcome of a verification.
#[derive(Debug, Clone, Serialize)]
pub struct Verification {
    pub backup_id: String,
    pub passed: bool,
    pub files_checked: usize,
    pub bytes_checked: u64,
    pub wal_segments_checked: usize,
    pub problems: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Restored {
    pub backup_id: String,
    pub into_database: String,
    pub bytes: u64,
    pub duration_ms: u64,
}

#[derive(Clone)]
pub struct Backups {
    repository: Repository,
    config: Arc<BackupConfig>,
    catalogue: CatalogueStore,
}

/// A new backup's id: its start time to the millisecond (ids sort by
/// time), its kind and a random suffix.
pub fn new_backup_id(kind: BackupKind, at: DateTime<Utc>) -> String {
    let random = uuid::Uuid::new_v4().simple().to_string();
    format!(
        "{}-{}-{}",
        at.format("%Y%m%dT%H%M%S%3fZ"),
        kind.as_str(),
        &random[..8]
    )
}

/// Bytes, human-readable.
pub fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// "12.0 MiB of ~40.0 MiB (30%), 85.3 MiB/s", and the percent.
fn progress_line(done: u64, total: Option<u64>, started: Instant) -> (f64, String) {
    let seconds = started.elapsed().as_secs_f64().max(0.001);
    let rate = format!("{}/s", human_bytes((done as f64 / seconds) as u64));
    match total.filter(|t| *t > 0) {
        Some(total) => {
            let percent = (done as f64 * 100.0 / total as f64).min(99.0);
            (
                percent,
                format!(
                    "{} of ~{} ({percent:.0}%), {rate}",
                    human_bytes(done),
                    human_bytes(total)
                ),
            )
        }
        None => (0.0, format!("{}, {rate}", human_bytes(done))),
    }
}

/// Runs `work`, reporting the byte counter's progress every second.
pub(crate) async fn with_progress<T>(
    progress: &dyn ProgressSink,
    counter: &AtomicU64,
    total: Option<u64>,
    work: impl Future<Output = T>,
) -> T {
    let started = Instant::now();
    let reporter = async {
        loop {
            tokio::time::sleep(Duration::from_millis(PROGRESS_INTERVAL_MS)).await;
            let (percent, line) = progress_line(counter.load(Ordering::Relaxed), total, started);
            progress.report(percent, line).await;
        }
    };
    tokio::select! {
        result = work => result,
        () = reporter => unreachable!("the reporter never ends"),
    }
}

fn check_database_name(name: &str) -> Result<(), BackupError> {
    if name.is_empty() || name.len() > DATABASE_NAME_BYTES_MAX || name.contains('\0') {
        return Err(BackupError::Refused(format!(
            "'{name}' is not a database name (1 to {DATABASE_NAME_BYTES_MAX} bytes)"
        )));
    }
    Ok(())
}

impl Backups {
    pub fn new(config: BackupConfig, catalogue: CatalogueStore) -> Backups {
        Backups {
            repository: Repository::new(config.repository_dir.clone()),
            config: Arc::new(config),
            catalogue,
        }
    }

    pub fn config(&self) -> &BackupConfig {
        &self.config
    }

    pub fn repository(&self) -> &Repository {
        &self.repository
    }

    pub fn key(&self) -> Result<&BackupKey, BackupError> {
        self.config.key.as_ref().ok_or(BackupError::NoKey)
    }

    /// The catalogue of a target (the `backup.list` read model).
    pub async fn catalogue(&self, target: &str) -> Result<Catalogue, BackupError> {
        Ok(self.catalogue.load(target).await?.0)
    }

    pub(crate) async fn record(&self, target: &str, command: CatalogueCommand) -> Result<(), BackupError> {
        self.catalogue.execute(target, command, || ()).await?;
        Ok(())
    }

    /// A completed backup of the target: the named one, or the latest.
    pub async fn completed_backup(
        &self,
        target: &str,
        backup_id: Option<&str>,
        kind: Option<BackupKind>,
    ) -> Result<catalogue::Entry, BackupError> {
        let catalogue = self.catalogue(target).await?;
        let entry = match backup_id {
            Some(id) => {
                crate::repository::check_backup_id(id)?;
                let entry = catalogue.backups.get(id).ok_or_else(|| {
                    BackupError::Refused(format!("backup {id} of database '{target}' does not exist"))
                })?;
                if entry.completion().is_none() {
                    return Err(BackupError::Refused(format!(
                        "backup {id} of database '{target}' did not complete; only completed backups can be used"
                    )));
                }
                entry
            }
            None => catalogue.latest(kind).ok_or_else(|| {
                let what = kind.map_or(String::new(), |k| format!("{} ", k.as_str()));
                BackupError::Refused(format!("database '{target}' has no completed {what}backup"))
            })?,
        };
        if let Some(kind) = kind
            && entry.kind != kind
        {
            return Err(BackupError::Refused(format!(
                "backup {} is a {} backup; this needs a {} one",
                entry.backup_id,
                entry.kind.as_str(),
                kind.as_str()
            )));
        }
        Ok(entry.clone())
    }

    /// Marks backups whose writer died as failed (removing their files),
    /// and completes those that were published but not recorded.
    pub async fn reconcile(&self, target: &str) -> Result<(), BackupError> {
        for backup_id in self.repository.abandoned(target).await? {
            self.repository.remove_partial(target, &backup_id).await?;
            self.fail_if_running(
                target,
                &backup_id,
                "interrupted: its writer stopped before it finished",
            )
            .await?;
        }
        let catalogue = self.catalogue(target).await?;
        let published = self.repository.backup_ids(target).await?;
        for entry in catalogue.running() {
            if self.repository.writing(target, &entry.backup_id).await {
                continue;
            }
            if published.contains(&entry.backup_id) {
                let manifest = self
                    .repository
                    .manifest(target, &entry.backup_id, self.key()?)
                    .await?;
                self.record(
                    target,
                    CatalogueCommand::Complete {
                        backup_id: entry.backup_id.clone(),
                        completion: manifest.completion(),
                    },
                )
                .await?;
            } else {
                self.fail_if_running(
                    target,
                    &entry.backup_id,
                    "interrupted: its writer stopped before it began",
                )
                .await?;
            }
        }
        Ok(())
    }

    async fn fail_if_running(&self, target: &str, backup_id: &str, reason: &str) -> Result<(), BackupError> {
        let catalogue = self.catalogue(target).await?;
        if catalogue
            .backups
            .get(backup_id)
            .is_some_and(|e| matches!(e.status, catalogue::Status::Running))
        {
            self.record(
                target,
                CatalogueCommand::Fail {
                    backup_id: backup_id.to_owned(),
                    reason: reason.to_owned(),
                    at_ms: now_ms() as i64,
                },
            )
            .await?;
        }
        Ok(())
    }

    /// Takes a backup of the target and records it in the catalogue.
    pub async fn create(
        &self,
        target: &Target,
        request: &CreateRequest,
        progress: &dyn ProgressSink,
    ) -> Result<Manifest, BackupError> {
        let key = self.key()?.clone();
        let tables = requested_tables(target, request).await?;
        // So is a target that does not archive its WAL (and cannot be
        // made to): refused before anything is recorded.
        let wal_segment_bytes = match request.kind {
            BackupKind::Physical => crate::physical::ensure_archiving(self, target).await?,
            BackupKind::Logical => 0,
        };
        self.reconcile(&target.name).await?;
        let started_at = Utc::now();
        let backup_id = new_backup_id(request.kind, started_at);
        let pending = self.repository.begin(&target.name, &backup_id).await?;
        self.record(
            &target.name,
            CatalogueCommand::Start {
                backup_id: backup_id.clone(),
                kind: request.kind,
                tables,
                at_ms: started_at.timestamp_millis(),
            },
        )
        .await?;
        let written = match request.kind {
            BackupKind::Logical => {
                self.write_logical(target, request, &key, &pending, &backup_id, started_at, progress)
                    .await
            }
            BackupKind::Physical => {
                let written = crate::physical::PhysicalBackup {
                    key: &key,
                    pending: &pending,
                    backup_id: &backup_id,
                    started_at,
                    wal_segment_bytes,
                };
                crate::physical::write_physical(self, target, written, progress).await
            }
        };
        let published = match written {
            Ok(manifest) => pending
                .publish(&manifest, &key)
                .await
                .map(|_| manifest)
                .map_err(BackupError::from),
            Err(error) => {
                pending.discard().await;
                Err(error)
            }
        };
        self.record_outcome(target, backup_id, published).await
    }

    /// Records a backup as completed, or as failed (with the error, the
    /// target's password scrubbed from it).
    async fn record_outcome(
        &self,
        target: &Target,
        backup_id: String,
        published: Result<Manifest, BackupError>,
    ) -> Result<Manifest, BackupError> {
        match published {
            Ok(manifest) => {
                self.record(
                    &target.name,
                    CatalogueCommand::Complete {
                        backup_id,
                        completion: manifest.completion(),
                    },
                )
                .await?;
                Ok(manifest)
            }
            Err(error) => {
                let reason = target.url.scrub(&error.to_string());
                let recorded = self
                    .record(
                        &target.name,
                        CatalogueCommand::Fail {
                            backup_id: backup_id.clone(),
                            reason,
                            at_ms: now_ms() as i64,
                        },
                    )
                    .await;
                if let Err(not_recorded) = recorded {
                    tracing::warn!(%backup_id, error = %not_recorded, "cannot record a failed backup; the next backup marks it failed");
                }
                Err(error)
            }
        }
    }

    /// pg_dump in custom format from a snapshot exported by a repeatable-
    /// read transaction, in which the table facts are read meanwhile: the
    /// dump and the recorded counts and checksums see the same data.
    #[allow(clippy::too_many_arguments)]
    async fn write_logical(
        &self,
        target: &Target,
        request: &CreateRequest,
        key: &BackupKey,
        pending: &crate::repository::Pending,
        backup_id: &str,
        started_at: DateTime<Utc>,
        progress: &dyn ProgressSink,
    ) -> Result<Manifest, BackupError> {
        let mut snapshot = target.pool.begin().await?;
        sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            .execute(&mut *snapshot)
            .await?;
        let snapshot_id: String = sqlx::query_scalar("SELECT pg_export_snapshot()")
            .fetch_one(&mut *snapshot)
            .await?;
        let (start_lsn, server_version, dbname): (String, String, String) =
            sqlx::query_as(SERVER_POSITION).fetch_one(&mut *snapshot).await?;
        let tables: Vec<SizedTable> = if request.tables.is_empty() {
            facts::user_tables(&mut snapshot).await?
        } else {
            facts::resolve_tables(&mut snapshot, &request.tables)
                .await
                .map_err(BackupError::Refused)?
        };
        let checksum_tables = facts::resolve_tables(&mut snapshot, &request.checksum_tables)
            .await
            .map_err(BackupError::Refused)?;
        let checksum_names: Vec<String> = checksum_tables.into_iter().map(|t| t.name).collect();
        let estimated_bytes: u64 = tables.iter().map(|t| t.bytes.max(0) as u64).sum();

        let mut command = self.config.tools.client("pg_dump", &target.url);
        command
            .arg("--format=custom")
            .arg(format!("--compress={}", self.config.compression_level))
            .arg(format!("--snapshot={snapshot_id}"))
            .stdout(std::process::Stdio::piped());
        if !request.tables.is_empty() {
            // The resolved, quoted names: pg_dump reads --table as a
            // pattern, in which a quoted name matches only itself.
            command.args(tables.iter().map(|t| format!("--table={}", t.name)));
        }
        let read_facts = facts::table_facts(
            &mut snapshot,
            &tables,
            &checksum_names,
            self.config.checksum_table_bytes_max,
        );
        let into = StreamInto {
            program: "pg_dump",
            file: LOGICAL_FILE,
            estimated_bytes: Some(estimated_bytes),
        };
        let streamed = stream_tool_into(command, into, key, pending, progress, read_facts).await?;
        snapshot.rollback().await?;
        streamed.exit.map_err(|e| scrub_tool(e, &target.url))?;
        let digest = streamed.digest?;
        let table_facts: Vec<TableFacts> = streamed.beside?;
        let (stop_lsn, _, _): (String, String, String) =
            sqlx::query_as(SERVER_POSITION).fetch_one(&target.pool).await?;
        Ok(Manifest {
            format_version: FORMAT_VERSION,
            backup_id: backup_id.to_owned(),
            target: target.name.clone(),
            dbname,
            kind: BackupKind::Logical,
            tables: if request.tables.is_empty() {
                vec![]
            } else {
                tables.iter().map(|t| t.name.clone()).collect()
            },
            started_at,
            stopped_at: Utc::now(),
            start_lsn,
            stop_lsn,
            timeline: 0,
            start_wal_segment: String::new(),
            stop_wal_segment: String::new(),
            wal_segment_bytes: 0,
            server_version,
            key_fingerprint: key.fingerprint().to_owned(),
            compression_level: self.config.compression_level,
            files: vec![ManifestFile {
                name: LOGICAL_FILE.into(),
                digest,
            }],
            table_facts,
        })
    }

    /// Re-reads every file of a backup: the stored bytes against the
    /// manifest's SHA-256, then decrypted (each chunk authenticated) against
    /// the plaintext's; a physical backup's WAL chain must be complete. The
    /// outcome is recorded in the catalogue.
    pub async fn verify(&self, target: &str, backup_id: Option<&str>) -> Result<Verification, BackupError> {
        let key = self.key()?;
        let entry = self.completed_backup(target, backup_id, None).await?;
        let backup_id = entry.backup_id.clone();
        let mut verification = Verification {
            backup_id: backup_id.clone(),
            passed: false,
            files_checked: 0,
            bytes_checked: 0,
            wal_segments_checked: 0,
            problems: Vec::new(),
        };
        match self.repository.manifest(target, &backup_id, key).await {
            Err(error) => verification.problems.push(error.to_string()),
            Ok(manifest) => {
                for file in &manifest.files {
                    verification.files_checked += 1;
                    let checked = match self.repository.open(target, &backup_id, &file.name).await {
                        Ok(mut stored) => check_file(key, &mut stored, &file.digest).await,
                        Err(error) => Err(format!("cannot be read: {error}")),
                    };
                    match checked {
                        Ok(bytes) => verification.bytes_checked += bytes,
                        Err(problem) => verification.problems.push(format!("{}: {problem}", file.name)),
                    }
                }
                if manifest.kind == BackupKind::Physical {
                    let (checked, problems) =
                        crate::physical::check_wal_chain(self, target, &manifest).await?;
                    verification.wal_segments_checked = checked;
                    verification.problems.extend(problems);
                }
            }
        }
        verification.passed = verification.problems.is_empty();
        self.record(
            target,
            CatalogueCommand::RecordVerification {
                backup_id,
                outcome: CheckOutcome {
                    at_ms: now_ms() as i64,
                    passed: verification.passed,
                    problems: verification.problems.clone(),
                },
            },
        )
        .await?;
        Ok(verification)
    }

    /// The verified manifest of a completed backup (a wrong key is named).
    pub async fn usable_manifest(&self, target: &str, backup_id: &str) -> Result<Manifest, BackupError> {
        Ok(self.repository.manifest(target, backup_id, self.key()?).await?)
    }

    /// Restores a logical backup into a new database on the target's
    /// server. All or nothing: pg_restore runs in one transaction, only
    /// authenticated plaintext reaches it, and on any failure the new
    /// database is dropped.
    pub async fn restore(
        &self,
        target: &Target,
        backup_id: Option<&str>,
        into_database: Option<&str>,
        progress: &dyn ProgressSink,
    ) -> Result<Restored, BackupError> {
        let entry = self
            .completed_backup(&target.name, backup_id, Some(BackupKind::Logical))
            .await?;
        let manifest = self.usable_manifest(&target.name, &entry.backup_id).await?;
        let into = match into_database {
            Some(name) => name.to_owned(),
            None => format!(
                "{}_restore_{}",
                manifest.dbname.chars().take(30).collect::<String>(),
                Utc::now().format("%Y%m%d%H%M%S")
            ),
        };
        let restored = self
            .restore_into_new_database(target, &manifest, &into, progress)
            .await?;
        self.record(
            &target.name,
            CatalogueCommand::RecordRestore {
                backup_id: entry.backup_id.clone(),
                into: into.clone(),
                target_time: None,
                at_ms: now_ms() as i64,
            },
        )
        .await?;
        Ok(restored)
    }

    pub(crate) async fn restore_into_new_database(
        &self,
        target: &Target,
        manifest: &Manifest,
        into: &str,
        progress: &dyn ProgressSink,
    ) -> Result<Restored, BackupError> {
        check_database_name(into)?;
        // Without a key nothing is created.
        self.key()?;
        let exists: bool = sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
            .bind(into)
            .fetch_one(&target.pool)
            .await?;
        if exists {
            return Err(BackupError::Refused(format!(
                "database '{into}' already exists; a backup is restored into a new database (name another with 'into_database')"
            )));
        }
        sqlx::raw_sql(AssertSqlSafe(format!(
            "CREATE DATABASE {} TEMPLATE template0",
            quote_ident(into)
        )))
        .execute(&target.pool)
        .await?;
        // Dropped again unless the restore succeeds: before an error is
        // returned, and (in the background) when the task is cancelled
        // mid-restore.
        let undo = UndoOnDrop::new(drop_database(target.pool.clone(), into.to_owned()));
        let started = Instant::now();
        let result = self.pg_restore(target, manifest, into, progress).await;
        undo.disarm();
        match result {
            Ok(bytes) => Ok(Restored {
                backup_id: manifest.backup_id.clone(),
                into_database: into.to_owned(),
                bytes,
                duration_ms: started.elapsed().as_millis() as u64,
            }),
            Err(error) => {
                drop_database(target.pool.clone(), into.to_owned()).await;
                Err(error)
            }
        }
    }

    async fn pg_restore(
        &self,
        target: &Target,
        manifest: &Manifest,
        into: &str,
        progress: &dyn ProgressSink,
    ) -> Result<u64, BackupError> {
        let mut command = self
            .config
            .tools
            .client("pg_restore", &target.url.with_database(into));
        command.args(["--exit-on-error", "--single-transaction"]);
        let feed = ToolFeed {
            program: "pg_restore",
            command,
        };
        self.feed_tool(&target.name, manifest, LOGICAL_FILE, feed, progress)
            .await
            .map_err(|e| scrub_error(e, &target.url))
    }

    /// Decrypts one file of a backup into a tool's stdin (pg_restore,
    /// tar) as it streams: only authenticated chunks reach the tool, a bad
    /// chunk kills it, and the plaintext must hash to the manifest's
    /// SHA-256. Returns the plaintext bytes.
    pub(crate) async fn feed_tool(
        &self,
        target: &str,
        manifest: &Manifest,
        file_name: &str,
        feed: ToolFeed,
        progress: &dyn ProgressSink,
    ) -> Result<u64, BackupError> {
        let key = self.key()?;
        let file = manifest
            .files
            .iter()
            .find(|f| f.name == file_name)
            .ok_or_else(|| {
                BackupError::Refused(format!("backup {} has no {file_name}", manifest.backup_id))
            })?;
        let mut source = self
            .repository
            .open(target, &manifest.backup_id, file_name)
            .await?;
        let ToolFeed { program, mut command } = feed;
        command.stdin(std::process::Stdio::piped());
        let mut child = tools::spawn(&mut command, program)?;
        let stderr = tokio::spawn(tools::collect_stderr(child.stderr.take()));
        let mut stdin = child
            .stdin
            .take()
            .ok_or_else(|| BackupError::Io(format!("{program} has no stdin")))?;
        let counter = AtomicU64::new(0);
        let decrypt = async {
            let mut on_progress = |bytes: u64| counter.store(bytes, Ordering::Relaxed);
            let digest = crypto::decrypt_stream(key, &mut source, &mut stdin, &mut on_progress).await;
            drop(stdin);
            digest
        };
        let digest = with_progress(progress, &counter, Some(file.digest.plain_bytes), decrypt).await;
        match digest {
            Err(CryptoError::Io(io)) if io.kind() == std::io::ErrorKind::BrokenPipe => {
                // The tool stopped reading: its own error says why.
                tools::finish(child, stderr, program).await?;
                Err(BackupError::Io(format!("{program} stopped reading the backup")))
            }
            Err(error) => {
                let _ = child.start_kill();
                let _ = child.wait().await;
                Err(BackupError::Crypto {
                    file: file_name.to_owned(),
                    error,
                })
            }
            Ok(digest) => {
                tools::finish(child, stderr, program).await?;
                if digest.plain_sha256 != file.digest.plain_sha256 {
                    return Err(BackupError::Refused(format!(
                        "{file_name}: the restored bytes' SHA-256 {} is not the manifest's {}",
                        digest.plain_sha256, file.digest.plain_sha256
                    )));
                }
                Ok(digest.plain_bytes)
            }
        }
    }
}

/// A tool a backup file is fed to, and its name for errors.
pub(crate) struct ToolFeed {
    pub program: &'static str,
    pub command: tokio::process::Command,
}

/// Where a dump tool's output goes: one file of a pending backup.
pub(crate) struct StreamInto {
    pub program: &'static str,
    pub file: &'static str,
    /// The plaintext bytes expected, for the progress percent.
    pub estimated_bytes: Option<u64>,
}

/// What streaming a dump tool gave: the file's digest, the work done
/// beside it, and how the tool ended (its stderr on success).
pub(crate) struct Streamed<T> {
    pub digest: Result<StreamDigest, BackupError>,
    pub beside: T,
    pub exit: Result<String, ToolError>,
}

/// Runs a dump tool (pg_dump, pg_basebackup) and encrypts its stdout into
/// a file of the pending backup as it streams, reporting progress, while
/// `beside` runs (the logical backup's table facts).
pub(crate) async fn stream_tool_into<T>(
    mut command: tokio::process::Command,
    into: StreamInto,
    key: &BackupKey,
    pending: &crate::repository::Pending,
    progress: &dyn ProgressSink,
    beside: impl Future<Output = T>,
) -> Result<Streamed<T>, BackupError> {
    command.stdout(std::process::Stdio::piped());
    let mut child = tools::spawn(&mut command, into.program)?;
    let stderr = tokio::spawn(tools::collect_stderr(child.stderr.take()));
    let mut stdout = child
        .stdout
        .take()
        .ok_or_else(|| BackupError::Io(format!("{} has no stdout", into.program)))?;
    tools::widen_pipe(&stdout);
    let mut file = pending.create(into.file).await?;
    let counter = AtomicU64::new(0);
    let encrypt = async {
        let mut on_progress = |bytes: u64| counter.store(bytes, Ordering::Relaxed);
        let digest = crypto::encrypt_stream(key, &mut stdout, &mut file, &mut on_progress)
            .await
            .map_err(|error| BackupError::Crypto {
                file: into.file.into(),
                error,
            })?;
        file.shutdown()
            .await
            .map_err(|e| BackupError::Io(format!("{}: {e}", into.file)))?;
        Ok::<StreamDigest, BackupError>(digest)
    };
    let (digest, beside) = with_progress(progress, &counter, into.estimated_bytes, async {
        tokio::join!(encrypt, beside)
    })
    .await;
    let exit = tools::finish(child, stderr, into.program).await;
    Ok(Streamed { digest, beside, exit })
}

/// Drops a database a restore created (with its sessions).
pub(crate) async fn drop_database(pool: PgPool, name: String) {
    let drop = format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", quote_ident(&name));
    if let Err(error) = sqlx::raw_sql(AssertSqlSafe(drop)).execute(&pool).await {
        tracing::warn!(database = name, %error, "cannot drop a failed restore's database");
    }
}

/// Work that undoes a half-done restore, run when this is dropped without
/// `disarm` — on an error return and when the future doing the restore is
/// dropped (a cancelled task), so neither leaves a half-restored database
/// or directory behind.
pub(crate) struct UndoOnDrop(Option<Pin<Box<dyn Future<Output = ()> + Send>>>);

impl UndoOnDrop {
    pub(crate) fn new(undo: impl Future<Output = ()> + Send + 'static) -> UndoOnDrop {
        UndoOnDrop(Some(Box::pin(undo)))
    }

    pub(crate) fn disarm(mut self) {
        self.0 = None;
    }
}

impl Drop for UndoOnDrop {
    fn drop(&mut self) {
        if let Some(undo) = self.0.take() {
            match tokio::runtime::Handle::try_current() {
                Ok(runtime) => {
                    runtime.spawn(undo);
                }
                Err(_) => tracing::warn!("no runtime to undo a half-done restore on"),
            }
        }
    }
}

/// `error` with `url`'s password masked in a tool's stderr.
fn scrub_error(error: BackupError, url: &ConnectionUrl) -> BackupError {
    match error {
        BackupError::Tool(tool) => scrub_tool(tool, url),
        other => other,
    }
}

pub(crate) fn scrub_tool(error: ToolError, url: &ConnectionUrl) -> BackupError {
    match error {
        ToolError::Failed {
            program,
            status,
            stderr,
        } => BackupError::Tool(ToolError::Failed {
            program,
            status,
            stderr: url.scrub(&stderr),
        }),
        other => BackupError::Tool(other),
    }
}

/// Checks one stored file against its manifest entry; returns its size.
pub async fn check_file<R: tokio::io::AsyncRead + Unpin>(
    key: &BackupKey,
    stored: &mut R,
    expected: &StreamDigest,
) -> Result<u64, String> {
    let mut sink = tokio::io::sink();
    let digest = crypto::decrypt_stream(key, stored, &mut sink, &mut |_| {})
        .await
        .map_err(|e| e.to_string())?;
    if digest.stored_sha256 != expected.stored_sha256 || digest.stored_bytes != expected.stored_bytes {
        return Err(format!(
            "SHA-256 {} ({} bytes) is not the manifest's {} ({} bytes)",
            digest.stored_sha256, digest.stored_bytes, expected.stored_sha256, expected.stored_bytes
        ));
    }
    if digest.plain_sha256 != expected.plain_sha256 {
        return Err(format!(
            "decrypted SHA-256 {} is not the manifest's {}",
            digest.plain_sha256, expected.plain_sha256
        ));
    }
    Ok(digest.stored_bytes)
}

/// The tables a backup names, resolved as the target spells them, and its
/// checksum tables checked too: before anything is recorded, since a typo
/// is bad input, not a failed backup. A physical backup names none.
async fn requested_tables(target: &Target, request: &CreateRequest) -> Result<Vec<String>, BackupError> {
    if request.kind == BackupKind::Physical && !request.tables.is_empty() {
        return Err(BackupError::Refused(
            "a physical backup covers the whole server; 'tables' is for logical backups".into(),
        ));
    }
    let mut tables = Vec::with_capacity(request.tables.len());
    if !request.tables.is_empty() || !request.checksum_tables.is_empty() {
        let mut conn = target.pool.acquire().await?;
        tables = facts::resolve_tables(&mut conn, &request.tables)
            .await
            .map_err(BackupError::Refused)?
            .into_iter()
            .map(|t| t.name)
            .collect();
        facts::resolve_tables(&mut conn, &request.checksum_tables)
            .await
            .map_err(BackupError::Refused)?;
    }
    Ok(tables)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_lines_say_bytes_estimate_percent_and_rate() {
        assert_eq!(human_bytes(512), "512 B");
        assert_eq!(human_bytes(3 * 1024 * 1024 + 512 * 1024), "3.5 MiB");
        let started = Instant::now() - Duration::from_secs(2);
        let (percent, line) = progress_line(50 * 1024 * 1024, Some(200 * 1024 * 1024), started);
        assert!((percent - 25.0).abs() < 0.01);
        assert!(line.starts_with("50.0 MiB of ~200.0 MiB (25%), "), "{line}");
        assert!(line.ends_with("MiB/s"), "{line}");
        // An estimate that was too low never shows 100% before the end
        let (percent, _) = progress_line(300, Some(200), started);
        assert_eq!(percent, 99.0);
        let (percent, line) = progress_line(1024, None, started);
        assert_eq!(percent, 0.0);
        assert!(line.starts_with("1.0 KiB, "), "{line}");
    }

    #[test]
    fn backup_ids_sort_by_time_and_name_their_kind() {
        let early = new_backup_id(BackupKind::Logical, "2026-11-26T14:00:00.001Z".parse().unwrap());
        let late = new_backup_id(BackupKind::Physical, "2026-11-26T14:00:00.002Z".parse().unwrap());
        assert!(early < late);
        assert!(early.starts_with("20261126T140000001Z-logical-"), "{early}");
        assert!(crate::repository::check_backup_id(&late).is_ok());
        assert!(crate::repository::check_backup_id("../x").is_err());
    }

    #[test]
    fn database_names_are_checked_and_quoted() {
        assert!(check_database_name("").is_err());
        assert!(check_database_name(&"x".repeat(64)).is_err());
        assert!(check_database_name("app restore").is_ok());
        assert_eq!(quote_ident("a\"b"), "\"a\"\"b\"");
    }
}
