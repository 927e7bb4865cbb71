//! The migration engine: plan, apply (expand + backfill + validate),
//! complete (contract), rollback and status of migrations on a target
//! database, with the history kept as events (stream `schema-<target>`).
//!
//! One schema change runs per target at a time: the runner holds a
//! session advisory lock on the target (on a connection that is closed,
//! never pooled again, when the runner stops, so a crash frees it), and
//! the history allows one migration in progress. Every step is idempotent
//! and SQL operations record their progress in the target in the same
//! transaction, so an apply or rollback that died can simply run again.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use agents::pg::{ExecError, Timeouts, describe, run_outside_transaction, run_step, run_transaction};
use domain::target::ConnectionUrl;
use event_store::{Aggregate, AggregateError, AggregateStore};
use serde::Serialize;
use serde_json::Value;
use sqlx::pool::PoolConnection;

use super::backfill::Backfiller;
use super::definition::{DefinitionError, Format, Migration, Operation, version_schema};
use super::history::{self, Active, Applied, History, HistoryCommand, HistoryError, HistoryEvent, Phase};
use super::steps::{
    ColumnShape, ExpandItem, MigrationPlan, PlanError, Progress, Script, TableShape, completed_comment, plan,
    progress_comment, read_progress,
};
use crate::dependencies::dependents;
use crate::facts::read_facts;
use crate::lint::{self, MigrationReport, Severity, rules, split_script};

const COLUMNS: &str = include_str!("../sql/migration_columns.sql");
const VERSION_SCHEMA_COMMENT: &str = include_str!("../sql/version_schema_comment.sql");
const TRY_LOCK: &str = include_str!("../sql/try_lock.sql");
const UNLOCK: &str = include_str!("../sql/unlock.sql");

/// The advisory lock key of schema changes on a target ("dbswSCHM").
const LOCK_KEY: i64 = 0x6462_7377_5343_484d;
/// How long a schema change waits for another one's lock before it is refused as busy.
const LOCK_WAIT_MS: u64 = 2_000;

/// Lint rules that do not apply to a SQL operation run by the engine: it
/// sets lock_timeout itself and runs each operation in a transaction.
const RULES_THE_ENGINE_SATISFIES: [&str; 2] = [
    rules::REQUIRE_TIMEOUT_SETTINGS,
    rules::SET_LOCAL_OUTSIDE_TRANSACTION,
];

/// Migration files in a directory at most.
pub const MIGRATION_FILES_MAX: usize = 10_000;

/// How migrations run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MigrationConfig {
    pub timeouts: Timeouts,
    /// Rows one backfill transaction touches at most.
    pub backfill_batch_rows: u32,
    /// Pause between backfill batches, so writers always get their turn.
    pub backfill_pause_ms: u64,
    /// Backfill progress is recorded at most this often.
    pub progress_interval_ms: u64,
    /// Where named migrations are read from (`<name>.yaml|yml|json|sql`).
    pub migrations_dir: Option<PathBuf>,
}

impl Default for MigrationConfig {
    fn default() -> Self {
        MigrationConfig {
            timeouts: Timeouts::default(),
            backfill_batch_rows: 1_000,
            backfill_pause_ms: 10,
            progress_interval_ms: 1_000,
            migrations_dir: None,
        }
    }
}

/// The aggregate of a target's migration history.
pub struct SchemaHistory;

impl Aggregate for SchemaHistory {
    const KIND: &'static str = "schema";
    type State = History;
    type Event = HistoryEvent;
    type Command = HistoryCommand;
    type Context = ();
    type Error = HistoryError;
    type Failure = AggregateError;

    fn decide(state: &History, command: HistoryCommand, _: ()) -> Result<Vec<HistoryEvent>, HistoryError> {
        history::decide(state, command)
    }
    fn evolve(state: History, event: &HistoryEvent) -> History {
        history::evolve(state, event)
    }
    fn event_type(event: &HistoryEvent) -> &'static str {
        event.event_type()
    }
    fn data(event: &HistoryEvent) -> Value {
        event.data()
    }
    fn from_stored(event_type: &str, data: Value) -> Result<HistoryEvent, String> {
        HistoryEvent::from_stored(event_type, data)
    }
    fn creates(command: &HistoryCommand) -> bool {
        matches!(command, HistoryCommand::Start { .. })
    }
    fn live(_: &History) -> bool {
        true
    }
}

impl From<HistoryError> for AggregateError {
    fn from(error: HistoryError) -> AggregateError {
        AggregateError::Refused(error.to_string())
    }
}

pub type HistoryStore = AggregateStore<SchemaHistory>;

pub use agents::{NoProgress, ProgressSink, Target};

#[derive(Debug, thiserror::Error)]
pub enum MigrationError {
    #[error(transparent)]
    Definition(#[from] DefinitionError),
    #[error("migration '{name}' cannot run on database '{target}': {error}")]
    Plan {
        name: String,
        target: String,
        error: PlanError,
    },
    #[error("migration '{name}': lint found {count} blocking hazard(s): {hazards}")]
    Lint {
        name: String,
        count: usize,
        hazards: String,
        report: Box<MigrationReport>,
    },
    #[error("migration '{name}', operation {operation} (sql): {message}")]
    Script {
        name: String,
        operation: usize,
        message: String,
    },
    #[error("{0}")]
    Refused(String),
    #[error(
        "another schema change is running on database '{target}' right now; try again when it has finished"
    )]
    Busy { target: String },
    #[error("migration '{name}' failed during {phase}: {error}; {cleanup}")]
    Failed {
        name: String,
        phase: &'static str,
        error: String,
        cleanup: String,
    },
    #[error("migration '{name}': {error}")]
    Exec { name: String, error: ExecError },
    #[error("database '{target}': {error}")]
    Target { target: String, error: String },
    #[error("cannot record the migration history: {0}")]
    History(AggregateError),
    #[error("no migration named '{name}' in {dir} (looked for {name}.yaml, .yml, .json and .sql)")]
    NotFound { name: String, dir: String },
    #[error(
        "migrations are read from a directory, and none is configured (schema_migrations_dir); give the definition itself"
    )]
    NoDirectory,
    #[error("cannot read migration {path}: {error}")]
    Io { path: String, error: String },
    #[error("no migration is in progress on database '{target}'")]
    NothingInProgress { target: String },
}

impl MigrationError {
    pub fn code(&self) -> domain::Code {
        use domain::Code;
        match self {
            MigrationError::Definition(_) | MigrationError::Script { .. } => Code::InvalidArgument,
            MigrationError::Plan { .. }
            | MigrationError::Lint { .. }
            | MigrationError::Refused(_)
            | MigrationError::NoDirectory
            | MigrationError::NothingInProgress { .. } => Code::FailedPrecondition,
            // Another change holds the target: a later attempt may get it.
            MigrationError::Busy { .. } => Code::Conflict,
            MigrationError::Exec { error, .. } => match error {
                ExecError::LockNotGranted { .. } => Code::Conflict,
                ExecError::Failed { .. } => Code::Internal,
            },
            MigrationError::Target { .. } => Code::Unavailable,
            MigrationError::History(e) => e.code(),
            MigrationError::NotFound { .. } => Code::NotFound,
            MigrationError::Failed { .. } | MigrationError::Io { .. } => Code::Internal,
        }
    }
}

impl From<MigrationError> for domain::OperationError {
    fn from(e: MigrationError) -> domain::OperationError {
        domain::OperationError::new(e.code(), e.to_string())
    }
}

impl From<AggregateError> for MigrationError {
    fn from(error: AggregateError) -> MigrationError {
        match error {
            AggregateError::Refused(message) => MigrationError::Refused(message),
            other => MigrationError::History(other),
        }
    }
}

/// What `plan` shows before anything runs.
#[derive(Debug, Clone, Serialize)]
pub struct PlanReport {
    pub database: String,
    pub migration: Migration,
    /// Whether apply would start it, resume it, or refuse it (and why).
    pub verdict: String,
    pub lint: Vec<ScriptLint>,
    /// What uses each existing object the migration changes.
    pub dependents: Vec<ObjectDependents>,
    pub plan: MigrationPlan,
}

#[derive(Debug, Clone, Serialize)]
pub struct ScriptLint {
    pub operation: usize,
    pub report: MigrationReport,
}

#[derive(Debug, Clone, Serialize)]
pub struct ObjectDependents {
    pub object: String,
    pub dependents: Vec<crate::dependencies::Dependent>,
}

/// What apply, complete and rollback did.
#[derive(Debug, Clone, Serialize)]
pub struct RunReport {
    pub database: String,
    pub migration: String,
    /// `expanded`, `completed` or `rolled_back`.
    pub state: &'static str,
    pub version: u32,
    /// Set when a new-version client should use it: `SET search_path TO <it>, <schema>`.
    pub version_schema: Option<String>,
    pub rows_backfilled: u64,
    pub duration_ms: u64,
    /// True when apply found the migration already expanded, complete
    /// found it completed in the target (only the event was missing)...
    pub already: bool,
}

/// What `status` shows.
#[derive(Debug, Clone, Serialize)]
pub struct StatusReport {
    pub database: String,
    pub applied: Vec<AppliedSummary>,
    pub active: Option<Active>,
    /// Migrations in the directory not applied, in order.
    pub pending: Vec<String>,
    pub abandoned: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct AppliedSummary {
    pub version: u32,
    pub name: String,
    pub operations: usize,
}

impl From<&Applied> for AppliedSummary {
    fn from(applied: &Applied) -> Self {
        AppliedSummary {
            version: applied.version,
            name: applied.migration.name.clone(),
            operations: applied.migration.operations.len(),
        }
    }
}

#[derive(Clone)]
pub struct Migrator {
    history: HistoryStore,
    config: MigrationConfig,
}

impl Migrator {
    pub fn new(history: HistoryStore, config: MigrationConfig) -> Migrator {
        Migrator { history, config }
    }

    pub fn config(&self) -> &MigrationConfig {
        &self.config
    }

    /// A migration by name from the configured directory.
    pub fn named(&self, name: &str) -> Result<Migration, MigrationError> {
        let dir = self
            .config
            .migrations_dir
            .as_deref()
            .ok_or(MigrationError::NoDirectory)?;
        load_named(dir, name)
    }

    /// The migration a task's parameters name: `definition` (an object,
    /// or JSON/YAML text) or `migration` (a name in the directory).
    /// The migration named `name` (from the directory), or given as
    /// `definition` (an object, or JSON/YAML text; named `name` if both).
    pub fn resolve(
        &self,
        name: Option<&str>,
        definition: Option<&Value>,
    ) -> Result<Migration, MigrationError> {
        let migration = match definition {
            Some(Value::String(text)) => Migration::parse(text, Format::Yaml, name)?,
            Some(value @ Value::Object(_)) => Migration::from_value(value.clone())?,
            Some(other) => {
                return Err(MigrationError::Refused(format!(
                    "parameter 'definition' must be a migration (object, or JSON/YAML text), not {other}"
                )));
            }
            None => match name {
                Some(name) => self.named(name)?,
                None => {
                    return Err(MigrationError::Refused(
                        "needs parameter 'migration' (a name) or 'definition'".into(),
                    ));
                }
            },
        };
        if let Some(name) = name
            && migration.name != name
        {
            return Err(MigrationError::Refused(format!(
                "parameter 'migration' is '{name}' but the definition is named '{}'",
                migration.name
            )));
        }
        Ok(migration)
    }

    pub async fn history(&self, target: &str) -> Result<History, MigrationError> {
        Ok(self.history.load(target).await?.0)
    }

    pub async fn status(&self, target: &Target) -> Result<StatusReport, MigrationError> {
        let history = self.history(&target.name).await?;
        let pending = match &self.config.migrations_dir {
            Some(dir) => list_names(dir)?
                .into_iter()
                .filter(|name| history.applied(name).is_none())
                .filter(|name| history.active.as_ref().is_none_or(|a| &a.migration.name != name))
                .collect(),
            None => Vec::new(),
        };
        Ok(StatusReport {
            database: target.name.clone(),
            applied: history.applied.iter().map(AppliedSummary::from).collect(),
            active: history.active,
            pending,
            abandoned: history.abandoned,
        })
    }

    /// Everything apply would do, linted, with what depends on what it changes.
    pub async fn plan(&self, target: &Target, migration: Migration) -> Result<PlanReport, MigrationError> {
        let history = self.history(&target.name).await?;
        let verdict = match history::decide(
            &history,
            HistoryCommand::Start {
                migration: migration.clone(),
            },
        ) {
            Ok(events) if events.is_empty() => "apply resumes it (it is in progress)".to_owned(),
            Ok(_) => format!("apply starts it as version {}", history.applied.len() + 1),
            Err(refusal) => format!("apply refuses it: {refusal}"),
        };
        let plan = self.plan_against(target, &migration, &history).await?;
        let lint = self.lint_scripts(target, &migration, 0, false).await?;
        let mut found = Vec::new();
        for op in &migration.operations {
            let (Some(table), Some(column)) = (op.table(), op.existing_column()) else {
                continue;
            };
            let deps = dependents(&target.pool, &migration.schema, table, Some(column))
                .await
                .map_err(|e| self.target_error(target, e.to_string()))?;
            found.push(ObjectDependents {
                object: format!("{}.{table}.{column}", migration.schema),
                dependents: deps,
            });
        }
        Ok(PlanReport {
            database: target.name.clone(),
            migration,
            verdict,
            lint,
            dependents: found,
            plan,
        })
    }

    /// Expand, backfill and validate; with `complete`, contract as well.
    pub async fn apply(
        &self,
        target: &Target,
        migration: Migration,
        complete: bool,
        progress: &dyn ProgressSink,
    ) -> Result<RunReport, MigrationError> {
        let lock = self.lock(target).await?;
        let outcome = self.apply_locked(target, migration, complete, progress).await;
        lock.release().await;
        outcome
    }

    async fn apply_locked(
        &self,
        target: &Target,
        migration: Migration,
        complete: bool,
        progress: &dyn ProgressSink,
    ) -> Result<RunReport, MigrationError> {
        let started = Instant::now();
        let history = self.history(&target.name).await?;
        let resuming = matches!(&history.active, Some(a) if a.migration == migration);
        if let Some(active) = &history.active
            && resuming
            && active.phase == Phase::Expanded
        {
            return if complete {
                self.complete_locked(target, &migration.name).await
            } else {
                Ok(self.report(target, &migration, "expanded", active.version, 0, started, true))
            };
        }
        self.check_order(&history, &migration)?;
        // Refusals (applied, another in progress) before touching the target.
        history::decide(
            &history,
            HistoryCommand::Start {
                migration: migration.clone(),
            },
        )
        .map_err(|e| MigrationError::Refused(e.to_string()))?;
        let plan = self.plan_against(target, &migration, &history).await?;
        let done = self.operations_done(target, &plan.version_schema).await?;
        self.lint_scripts(target, &migration, done, true).await?;
        let executed = self
            .history
            .execute(
                &target.name,
                HistoryCommand::Start {
                    migration: migration.clone(),
                },
                || (),
            )
            .await?;
        let version = executed.state.active.as_ref().map_or(0, |a| a.version);
        tracing::info!(database = %target.name, migration = %migration.name, version, resuming, "expanding");
        let expanded = self.expand(target, &migration, &plan, progress).await;
        let rows = match expanded {
            Ok(rows) => rows,
            Err((phase, error)) => return Err(self.fail(target, &migration, &plan, phase, error).await),
        };
        let duration_ms = started.elapsed().as_millis() as u64;
        self.history
            .execute(
                &target.name,
                HistoryCommand::MarkExpanded {
                    name: migration.name.clone(),
                    rows_backfilled: rows,
                    duration_ms,
                },
                || (),
            )
            .await?;
        if complete {
            let mut report = self.complete_locked(target, &migration.name).await?;
            report.rows_backfilled = rows;
            report.duration_ms = started.elapsed().as_millis() as u64;
            return Ok(report);
        }
        Ok(self.report(target, &migration, "expanded", version, rows, started, false))
    }

    #[allow(clippy::too_many_arguments)]
    fn report(
        &self,
        target: &Target,
        migration: &Migration,
        state: &'static str,
        version: u32,
        rows_backfilled: u64,
        started: Instant,
        already: bool,
    ) -> RunReport {
        RunReport {
            database: target.name.clone(),
            migration: migration.name.clone(),
            state,
            version,
            version_schema: (state != "rolled_back").then(|| migration.version_schema()),
            rows_backfilled,
            duration_ms: started.elapsed().as_millis() as u64,
            already,
        }
    }

    /// A migration of the directory runs after those before it (in file
    /// name order) are applied: the directory is a versioned list.
    fn check_order(&self, history: &History, migration: &Migration) -> Result<(), MigrationError> {
        let Some(dir) = &self.config.migrations_dir else {
            return Ok(());
        };
        let names = list_names(dir)?;
        let Some(position) = names.iter().position(|n| n == &migration.name) else {
            return Ok(());
        };
        match names[..position].iter().find(|n| history.applied(n).is_none()) {
            Some(missing) => Err(MigrationError::Refused(format!(
                "migration '{}' comes after '{missing}' in {}, which is not applied yet; apply '{missing}' first",
                migration.name,
                dir.display()
            ))),
            None => Ok(()),
        }
    }

    /// The expand phase; on error, the phase it failed in.
    async fn expand(
        &self,
        target: &Target,
        migration: &Migration,
        plan: &MigrationPlan,
        progress: &dyn ProgressSink,
    ) -> Result<u64, (&'static str, String)> {
        let fail = |phase: &'static str| move |e: ExecError| (phase, target.url.scrub(&e.to_string()));
        let timeouts = &self.config.timeouts;
        run_step(&target.pool, timeouts, &plan.create_version_schema)
            .await
            .map_err(fail("expand"))?;
        let done = self
            .operations_done(target, &plan.version_schema)
            .await
            .map_err(|e| ("expand", e.to_string()))?;
        for item in &plan.expand {
            match item {
                ExpandItem::Step(step) => run_step(&target.pool, timeouts, step)
                    .await
                    .map_err(fail("expand"))?,
                ExpandItem::Script(script) if script.operation <= done => {}
                ExpandItem::Script(script) => self
                    .run_script(target, migration, plan, script, &script.up, script.operation)
                    .await
                    .map_err(|e| ("expand", without_name(e)))?,
            }
        }
        let mut rows = 0;
        let tables = plan.backfills.len().max(1) as f64;
        for (index, backfill) in plan.backfills.iter().enumerate() {
            let what = format!("backfill of {}", backfill.table);
            let mut filler =
                Backfiller::start(&target.pool, timeouts, backfill, self.config.backfill_batch_rows)
                    .await
                    .map_err(fail("backfill"))?;
            let mut last_report = Instant::now();
            let total = backfill.estimated_rows.max(1);
            while filler.next_batch(&what).await.map_err(fail("backfill"))? {
                if last_report.elapsed() >= Duration::from_millis(self.config.progress_interval_ms) {
                    last_report = Instant::now();
                    let share = (filler.rows_done as f64 / total as f64).min(1.0);
                    let percent = 100.0 * (index as f64 + share) / tables;
                    self.record_progress(
                        target,
                        migration,
                        &backfill.table,
                        filler.rows_done,
                        backfill.estimated_rows,
                    )
                    .await;
                    progress
                        .report(
                            percent,
                            format!(
                                "{what}: {} of ~{} rows",
                                filler.rows_done, backfill.estimated_rows
                            ),
                        )
                        .await;
                }
                tokio::time::sleep(Duration::from_millis(self.config.backfill_pause_ms)).await;
            }
            self.record_progress(
                target,
                migration,
                &backfill.table,
                filler.rows_done,
                filler.rows_done,
            )
            .await;
            rows += filler.rows_done;
        }
        for step in &plan.validate {
            let statement = std::slice::from_ref(&step.sql);
            run_transaction(
                &target.pool,
                timeouts,
                &step.description,
                statement,
                timeouts.build_timeout_ms,
            )
            .await
            .map_err(fail("validate"))?;
        }
        Ok(rows)
    }

    /// Progress is worth an event but not a failed migration.
    async fn record_progress(
        &self,
        target: &Target,
        migration: &Migration,
        table: &str,
        done: u64,
        total: u64,
    ) {
        let command = HistoryCommand::RecordProgress {
            name: migration.name.clone(),
            table: table.to_owned(),
            rows_done: done,
            rows_total: total,
        };
        if let Err(error) = self.history.execute(&target.name, command, || ()).await {
            tracing::warn!(%error, "cannot record backfill progress");
        }
    }

    /// Runs `sql` (an operation's up, or its down when `done_after` is
    /// one less) and records the progress in the same transaction when
    /// the statements allow one.
    async fn run_script(
        &self,
        target: &Target,
        migration: &Migration,
        plan: &MigrationPlan,
        script: &Script,
        sql: &str,
        done_after: usize,
    ) -> Result<(), MigrationError> {
        let statements = split_script(sql).map_err(|e| MigrationError::Script {
            name: migration.name.clone(),
            operation: script.operation,
            message: e.to_string(),
        })?;
        let comment = progress_comment(&plan.version_schema, &migration.name, done_after);
        let what = format!("operation {} (sql)", script.operation);
        let timeouts = &self.config.timeouts;
        // The runner's error already names `what`: only scrubbed here.
        let exec = |error: ExecError| MigrationError::Exec {
            name: migration.name.clone(),
            error: scrubbed(error, &target.url),
        };
        if statements.iter().any(|s| s.outside_transaction) {
            for statement in &statements {
                if statement.outside_transaction {
                    run_outside_transaction(
                        &target.pool,
                        timeouts,
                        &what,
                        &statement.sql,
                        timeouts.build_timeout_ms,
                    )
                    .await
                    .map_err(exec)?;
                } else {
                    let one = [statement.sql.clone()];
                    run_transaction(&target.pool, timeouts, &what, &one, timeouts.statement_timeout_ms)
                        .await
                        .map_err(exec)?;
                }
            }
            run_transaction(
                &target.pool,
                timeouts,
                &what,
                &[comment],
                timeouts.statement_timeout_ms,
            )
            .await
            .map_err(exec)?;
        } else {
            let mut all: Vec<String> = statements.into_iter().map(|s| s.sql).collect();
            all.push(comment);
            run_transaction(&target.pool, timeouts, &what, &all, timeouts.statement_timeout_ms)
                .await
                .map_err(exec)?;
        }
        Ok(())
    }

    /// Undoes the expand after a failure and records the failure.
    async fn fail(
        &self,
        target: &Target,
        migration: &Migration,
        plan: &MigrationPlan,
        phase: &'static str,
        error: String,
    ) -> MigrationError {
        tracing::warn!(database = %target.name, migration = %migration.name, phase, %error, "migration failed; undoing the expand");
        let cleanup = self.undo(target, migration, plan).await;
        let cleaned_up = cleanup.is_ok();
        let cleanup = match cleanup {
            Ok(()) => "everything it did was undone; the database is as it was".to_owned(),
            Err(e) => format!("undoing it failed too ({e}); roll it back once the cause is fixed"),
        };
        let command = HistoryCommand::RecordFailure {
            name: migration.name.clone(),
            phase: phase.to_owned(),
            error: error.clone(),
            cleaned_up,
        };
        if let Err(e) = self.history.execute(&target.name, command, || ()).await {
            tracing::error!(error = %e, "cannot record the migration's failure");
        }
        MigrationError::Failed {
            name: migration.name.clone(),
            phase,
            error,
            cleanup,
        }
    }

    /// Contract: the old shape goes, the new one stays, in one transaction.
    pub async fn complete(&self, target: &Target, name: Option<&str>) -> Result<RunReport, MigrationError> {
        let lock = self.lock(target).await?;
        let outcome = async {
            let name = self.active_name(target, name).await?;
            self.complete_locked(target, &name).await
        }
        .await;
        lock.release().await;
        outcome
    }

    async fn complete_locked(&self, target: &Target, name: &str) -> Result<RunReport, MigrationError> {
        let started = Instant::now();
        let history = self.history(&target.name).await?;
        history::decide(
            &history,
            HistoryCommand::Complete {
                name: name.to_owned(),
            },
        )
        .map_err(|e| MigrationError::Refused(e.to_string()))?;
        let active = history.active.clone().expect("decide checked it");
        let migration = active.migration;
        let version_schema = migration.version_schema();
        let already = self.progress(target, &version_schema).await? == Some(Progress::Completed);
        if !already {
            let plan = self.plan_against(target, &migration, &history).await?;
            let mut statements: Vec<String> = plan.complete.iter().map(|s| s.sql.clone()).collect();
            statements.push(completed_comment(&version_schema, &migration.name));
            let timeouts = &self.config.timeouts;
            run_transaction(
                &target.pool,
                timeouts,
                "complete",
                &statements,
                timeouts.statement_timeout_ms,
            )
            .await
            .map_err(|error| MigrationError::Exec {
                name: migration.name.clone(),
                error: ExecError::Failed {
                    what: "complete".into(),
                    error: target.url.scrub(&error.to_string()),
                },
            })?;
        }
        self.history
            .execute(
                &target.name,
                HistoryCommand::Complete {
                    name: name.to_owned(),
                },
                || (),
            )
            .await?;
        Ok(self.report(
            target,
            &migration,
            "completed",
            active.version,
            0,
            started,
            already,
        ))
    }

    /// Undoes a migration in progress (before complete): the database is
    /// left as it was before apply.
    pub async fn rollback(&self, target: &Target, name: Option<&str>) -> Result<RunReport, MigrationError> {
        let lock = self.lock(target).await?;
        let outcome = async {
            let started = Instant::now();
            let name = self.active_name(target, name).await?;
            let history = self.history(&target.name).await?;
            let command = HistoryCommand::RecordRollback {
                name: name.clone(),
                reason: "requested".into(),
            };
            history::decide(&history, command.clone()).map_err(|e| MigrationError::Refused(e.to_string()))?;
            let active = history.active.clone().expect("decide checked it");
            let plan = self.plan_against(target, &active.migration, &history).await?;
            self.undo(target, &active.migration, &plan).await?;
            self.history.execute(&target.name, command, || ()).await?;
            Ok(self.report(
                target,
                &active.migration,
                "rolled_back",
                active.version,
                0,
                started,
                false,
            ))
        }
        .await;
        lock.release().await;
        outcome
    }

    /// Rollback's work: views, triggers, twins, indexes, then the SQL
    /// operations' `down`s newest first, then the version schema.
    async fn undo(
        &self,
        target: &Target,
        migration: &Migration,
        plan: &MigrationPlan,
    ) -> Result<(), MigrationError> {
        let timeouts = &self.config.timeouts;
        let exec = |error: ExecError| MigrationError::Exec {
            name: migration.name.clone(),
            error: ExecError::Failed {
                what: "rollback".into(),
                error: target.url.scrub(&error.to_string()),
            },
        };
        let catalog: Vec<String> = plan.rollback.iter().map(|s| s.sql.clone()).collect();
        if !catalog.is_empty() {
            run_transaction(
                &target.pool,
                timeouts,
                "rollback",
                &catalog,
                timeouts.statement_timeout_ms,
            )
            .await
            .map_err(|error| MigrationError::Exec {
                name: migration.name.clone(),
                error: scrubbed(error, &target.url),
            })?;
        }
        for step in &plan.rollback_indexes {
            run_step(&target.pool, timeouts, step).await.map_err(exec)?;
        }
        let done = self.operations_done(target, &plan.version_schema).await?;
        for script in plan.rollback_scripts.iter().filter(|s| s.operation <= done) {
            let Some(down) = &script.down else {
                return Err(MigrationError::Script {
                    name: migration.name.clone(),
                    operation: script.operation,
                    message: "ran but has no 'down', so rollback cannot undo it; undo it by hand".into(),
                });
            };
            self.run_script(target, migration, plan, script, down, script.operation - 1)
                .await?;
        }
        run_step(&target.pool, timeouts, &plan.drop_version_schema)
            .await
            .map_err(exec)?;
        Ok(())
    }

    async fn active_name(&self, target: &Target, name: Option<&str>) -> Result<String, MigrationError> {
        if let Some(name) = name {
            return Ok(name.to_owned());
        }
        match self.history(&target.name).await?.active {
            Some(active) => Ok(active.migration.name),
            None => Err(MigrationError::NothingInProgress {
                target: target.name.clone(),
            }),
        }
    }

    /// Plans against the target's catalog as it is now (the engine's own
    /// twin columns left out, so a resumed apply plans the same steps).
    async fn plan_against(
        &self,
        target: &Target,
        migration: &Migration,
        history: &History,
    ) -> Result<MigrationPlan, MigrationError> {
        let older: Vec<String> = history
            .applied
            .iter()
            .filter(|a| a.migration.schema == migration.schema)
            .map(|a| version_schema(&a.migration.schema, &a.migration.name))
            .collect();
        // The views of version schemas are the engine's: this migration's
        // go with rollback, older ones with complete.
        let mut own_schemas = older.clone();
        own_schemas.push(migration.version_schema());
        let mut tables = BTreeMap::new();
        for table in migration.operations.iter().filter_map(Operation::table) {
            if tables.contains_key(table) {
                continue;
            }
            if let Some(shape) = self
                .table_shape(target, &migration.schema, table, &own_schemas)
                .await?
            {
                tables.insert(table.to_owned(), shape);
            }
        }
        plan(migration, &tables, &older).map_err(|error| MigrationError::Plan {
            name: migration.name.clone(),
            target: target.name.clone(),
            error,
        })
    }

    async fn table_shape(
        &self,
        target: &Target,
        schema: &str,
        table: &str,
        own_schemas: &[String],
    ) -> Result<Option<TableShape>, MigrationError> {
        type Row = (i64, String, String, bool, Option<String>, Option<i32>, i64);
        let rows: Vec<Row> = sqlx::query_as(COLUMNS)
            .bind(schema)
            .bind(table)
            .fetch_all(&target.pool)
            .await
            .map_err(|e| self.target_error(target, describe(&e)))?;
        let Some(first) = rows.first() else {
            return Ok(None);
        };
        let (oid, estimated_rows) = (first.0 as u32, first.6.max(0) as u64);
        let mut keyed: Vec<(i32, String)> = Vec::new();
        let mut columns = Vec::new();
        for (_, name, type_name, not_null, default, key_position, _) in rows {
            if name.starts_with(super::definition::RESERVED_PREFIX) {
                continue;
            }
            if let Some(position) = key_position {
                keyed.push((position, name.clone()));
            }
            let found = dependents(&target.pool, schema, table, Some(&name))
                .await
                .map_err(|e| self.target_error(target, e.to_string()))?;
            columns.push(ColumnShape {
                name,
                type_name,
                not_null,
                default,
                dependents: found
                    .into_iter()
                    .filter(|d| !d.name.contains(super::definition::RESERVED_PREFIX))
                    .filter(|d| !own_schemas.iter().any(|s| d.name.starts_with(&format!("{s}."))))
                    .map(|d| (d.kind, d.name))
                    .collect(),
            });
        }
        keyed.sort();
        Ok(Some(TableShape {
            oid,
            schema: schema.to_owned(),
            name: table.to_owned(),
            columns,
            primary_key: keyed.into_iter().map(|(_, name)| name).collect(),
            estimated_rows,
        }))
    }

    /// Lints the SQL operations after `done` against the target's catalog;
    /// with `enforce`, blocking findings (not `allow`ed) refuse the migration.
    async fn lint_scripts(
        &self,
        target: &Target,
        migration: &Migration,
        done: usize,
        enforce: bool,
    ) -> Result<Vec<ScriptLint>, MigrationError> {
        let scripts: Vec<(usize, &str, &[String])> = migration
            .operations
            .iter()
            .enumerate()
            .filter_map(|(i, op)| match op {
                Operation::Sql { up, allow, .. } if i + 1 > done => {
                    Some((i + 1, up.as_str(), allow.as_slice()))
                }
                _ => None,
            })
            .collect();
        if scripts.is_empty() {
            return Ok(Vec::new());
        }
        let mut facts = read_facts(&target.pool)
            .await
            .map_err(|e| self.target_error(target, e.to_string()))?;
        facts.default_schema = Some(migration.schema.clone());
        let mut reports = Vec::new();
        let mut hazards = Vec::new();
        for (operation, up, allow) in scripts {
            let script_error = |message: String| MigrationError::Script {
                name: migration.name.clone(),
                operation,
                message,
            };
            let report = lint::lint(up, &facts).map_err(|e| script_error(e.to_string()))?;
            let statements = split_script(up).map_err(|e| script_error(e.to_string()))?;
            if let Some(control) = statements.iter().find(|s| s.transaction_control) {
                return Err(script_error(format!(
                    "'{}': the engine runs each sql operation in a transaction of its own; leave out transaction control",
                    control.sql
                )));
            }
            for (statement, finding) in report.findings() {
                let ignored = RULES_THE_ENGINE_SATISFIES.contains(&finding.rule)
                    || allow.iter().any(|rule| rule == finding.rule);
                if finding.severity == Severity::Blocking && !ignored {
                    hazards.push(format!(
                        "operation {operation} statement {statement}: {} ({}; allow it with allow: [{}]); instead: {}",
                        finding.message, finding.rule, finding.rule, finding.safe_alternative
                    ));
                }
            }
            reports.push(ScriptLint { operation, report });
        }
        if enforce && !hazards.is_empty() {
            let count = hazards.len();
            return Err(MigrationError::Lint {
                name: migration.name.clone(),
                count,
                hazards: hazards.into_iter().take(10).collect::<Vec<_>>().join("; "),
                report: Box::new(reports.swap_remove(0).report),
            });
        }
        Ok(reports)
    }

    async fn progress(
        &self,
        target: &Target,
        version_schema: &str,
    ) -> Result<Option<Progress>, MigrationError> {
        let comment: Option<String> = sqlx::query_scalar(VERSION_SCHEMA_COMMENT)
            .bind(version_schema)
            .fetch_optional(&target.pool)
            .await
            .map_err(|e| self.target_error(target, describe(&e)))?;
        Ok(comment.as_deref().and_then(read_progress))
    }

    async fn operations_done(&self, target: &Target, version_schema: &str) -> Result<usize, MigrationError> {
        Ok(match self.progress(target, version_schema).await? {
            Some(Progress::OperationsDone(done)) => done,
            Some(Progress::Completed) => usize::MAX,
            None => 0,
        })
    }

    async fn lock(&self, target: &Target) -> Result<TargetLock, MigrationError> {
        let mut conn = target
            .pool
            .acquire()
            .await
            .map_err(|e| self.target_error(target, describe(&e)))?;
        // Closed, not pooled, when dropped: the session lock never
        // outlives the runner, whatever way it stops.
        conn.close_on_drop();
        // A runner that just died may hold it for a moment more (its
        // connection is being closed): wait a little before refusing.
        let waited = Instant::now();
        loop {
            let granted: bool = sqlx::query_scalar(TRY_LOCK)
                .bind(LOCK_KEY)
                .fetch_one(&mut *conn)
                .await
                .map_err(|e| self.target_error(target, describe(&e)))?;
            if granted {
                return Ok(TargetLock { conn });
            }
            if waited.elapsed() >= Duration::from_millis(LOCK_WAIT_MS) {
                return Err(MigrationError::Busy {
                    target: target.name.clone(),
                });
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn target_error(&self, target: &Target, error: String) -> MigrationError {
        MigrationError::Target {
            target: target.name.clone(),
            error: target.url.scrub(&error),
        }
    }
}

/// The error's text without the migration's name (for a message that
/// names it already).
/// A runner error with the target's password scrubbed from the
/// database's text, its prefix (`what`) kept once.
fn scrubbed(error: ExecError, url: &ConnectionUrl) -> ExecError {
    match error {
        ExecError::Failed { what, error } => ExecError::Failed {
            what,
            error: url.scrub(&error),
        },
        other => other,
    }
}

fn without_name(error: MigrationError) -> String {
    match error {
        MigrationError::Exec { error, .. } => error.to_string(),
        MigrationError::Script {
            operation, message, ..
        } => format!("operation {operation} (sql): {message}"),
        other => other.to_string(),
    }
}

/// The session advisory lock of a schema change on a target.
struct TargetLock {
    conn: PoolConnection<sqlx::Postgres>,
}

impl TargetLock {
    /// Unlocks now (closing the connection would too, but a moment later:
    /// the next change on the target should not find it still held).
    async fn release(mut self) {
        if let Err(error) = sqlx::query(UNLOCK).bind(LOCK_KEY).execute(&mut *self.conn).await {
            tracing::warn!(%error, "cannot unlock; the connection is closed instead");
        }
    }
}

/// A migration file `<dir>/<name>.{yaml,yml,json,sql}`.
pub fn load_named(dir: &Path, name: &str) -> Result<Migration, MigrationError> {
    if name.is_empty() || name.contains(['/', '\\']) || name.starts_with('.') {
        return Err(MigrationError::Refused(format!(
            "'{name}' is not a migration name (no paths: the name of a file in the migrations directory, without extension)"
        )));
    }
    for extension in ["yaml", "yml", "json", "sql"] {
        let path = dir.join(format!("{name}.{extension}"));
        match std::fs::read_to_string(&path) {
            Ok(text) => {
                let format = Format::from_extension(extension).expect("listed extensions have a format");
                return Ok(Migration::parse(&text, format, Some(name))?);
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => {
                return Err(MigrationError::Io {
                    path: path.display().to_string(),
                    error: e.to_string(),
                });
            }
        }
    }
    Err(MigrationError::NotFound {
        name: name.to_owned(),
        dir: dir.display().to_string(),
    })
}

/// A migration file given by its path (the CLI's argument).
pub fn load_file(path: &Path) -> Result<Migration, MigrationError> {
    let io = |error: String| MigrationError::Io {
        path: path.display().to_string(),
        error,
    };
    let extension = path.extension().and_then(|e| e.to_str()).unwrap_or_default();
    let format = Format::from_extension(extension)
        .ok_or_else(|| io("the file name must end in .yaml, .yml, .json or .sql".into()))?;
    let name = path.file_stem().and_then(|s| s.to_str()).unwrap_or_default();
    let text = std::fs::read_to_string(path).map_err(|e| io(e.to_string()))?;
    Ok(Migration::parse(&text, format, Some(name))?)
}

/// Names of the migrations in a directory, in file-name order.
pub fn list_names(dir: &Path) -> Result<Vec<String>, MigrationError> {
    let io = |error: std::io::Error| MigrationError::Io {
        path: dir.display().to_string(),
        error: error.to_string(),
    };
    let mut names = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io)? {
        let path = entry.map_err(io)?.path();
        let known = path
            .extension()
            .and_then(|e| e.to_str())
            .and_then(Format::from_extension)
            .is_some();
        if let (true, Some(stem)) = (known, path.file_stem().and_then(|s| s.to_str())) {
            names.push(stem.to_owned());
        }
        if names.len() > MIGRATION_FILES_MAX {
            return Err(MigrationError::Io {
                path: dir.display().to_string(),
                error: format!("more than {MIGRATION_FILES_MAX} migration files"),
            });
        }
    }
    names.sort();
    names.dedup();
    Ok(names)
}
