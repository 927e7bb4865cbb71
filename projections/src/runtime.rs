//! The projection runtime: one runner per generation keeps a read-model
//! table in step with `$all`, exactly once; control operations (define,
//! pause, resume, reset, rebuild, skip) change the registry and wake the
//! runners.
//!
//! A runner's batch: read a page of `$all` after its checkpoint (only
//! events below the horizon, only its event types), then in ONE transaction
//! lock its checkpoint row (the fence: a second runner of the same
//! generation, on this server or another, finds the checkpoint moved and
//! re-reads), apply the page, move the checkpoint, commit. A crash before
//! the commit leaves neither rows nor checkpoint; after it, both.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use domain::{
    AppendRequest, EventData, EventType, ExpectedVersion, Limits, ProposedEvent, StreamAppend, StreamId,
};
use event_store::{AllPosition, Appender, CommitSignal, Reader, RecordedEvent, StoreError};
use sqlx::{AssertSqlSafe, PgConnection, PgPool, Postgres, Transaction};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use uuid::Uuid;

use crate::cache::ReadCache;
use crate::definition::{ColumnOp, Definition, DefinitionError, PagePlan, RowOp, Run};
use crate::sqlgen;

const PROJECTION_INSERT: &str = include_str!("sql/projection_insert.sql");
const PROJECTION_LOCK: &str = include_str!("sql/projection_lock.sql");
const GENERATION_INSERT: &str = include_str!("sql/generation_insert.sql");
const GENERATIONS_OF: &str = include_str!("sql/generations_of.sql");
const GENERATIONS_RUNNING: &str = include_str!("sql/generations_running.sql");
const GENERATION_LOCK: &str = include_str!("sql/generation_lock.sql");
const GENERATION_PEEK: &str = include_str!("sql/generation_peek.sql");
const CHECKPOINT_SAVE: &str = include_str!("sql/checkpoint_save.sql");
const CHECKPOINT_ADVANCE: &str = include_str!("sql/checkpoint_advance.sql");
/// How often an idle runner stores how far it has scanned.
const IDLE_CHECKPOINT_INTERVAL: Duration = Duration::from_secs(10);
const GENERATION_FAIL: &str = include_str!("sql/generation_fail.sql");
const GENERATION_SKIP: &str = include_str!("sql/generation_skip.sql");
const FAILURES_CLEAR: &str = include_str!("sql/failures_clear.sql");
const PROJECTION_SET_PAUSED: &str = include_str!("sql/projection_set_paused.sql");
const GENERATION_RESET: &str = include_str!("sql/generation_reset.sql");
const GENERATION_RETIRE: &str = include_str!("sql/generation_retire.sql");
const GENERATION_GO_LIVE: &str = include_str!("sql/generation_go_live.sql");
const PROJECTION_SET_LIVE: &str = include_str!("sql/projection_set_live.sql");
const PROJECTION_STATUS: &str = include_str!("sql/projection_status.sql");
const PROJECTION_LAG: &str = include_str!("sql/projection_lag.sql");
pub(crate) const PROJECTION_DEFINITION_LIVE: &str = include_str!("sql/projection_definition_live.sql");

/// Read models dbswarm defines for itself at start.
pub const BUILTIN_DEFINITIONS: [&str; 5] = [
    include_str!("../builtin/stream_catalogue.json"),
    include_str!("../builtin/audit_log.json"),
    include_str!("../builtin/workflows.json"),
    include_str!("../builtin/agents.json"),
    include_str!("../builtin/backups.json"),
];

/// The stream skip records go to: `projection-<name>`.
pub const SKIP_EVENT_TYPE: &str = "ProjectionEventSkipped";

#[derive(Debug, thiserror::Error)]
pub enum ProjectionError {
    #[error(transparent)]
    Definition(#[from] DefinitionError),
    #[error("projection '{0}' does not exist")]
    NotFound(String),
    /// The operation does not fit the projection's state (e.g. skipping an
    /// event it is not stopped at).
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    InvalidQuery(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("the database is unavailable: {0}")]
    Unavailable(String),
    #[error("database error: {0}")]
    Database(String),
}

impl From<sqlx::Error> for ProjectionError {
    fn from(e: sqlx::Error) -> Self {
        match event_store::database_code(&e) {
            domain::Code::Unavailable => ProjectionError::Unavailable(e.to_string()),
            _ => ProjectionError::Database(e.to_string()),
        }
    }
}

impl ProjectionError {
    pub fn code(&self) -> domain::Code {
        use domain::Code;
        match self {
            ProjectionError::Definition(_) | ProjectionError::InvalidQuery(_) => Code::InvalidArgument,
            ProjectionError::NotFound(_) => Code::NotFound,
            ProjectionError::Conflict(_) => Code::FailedPrecondition,
            ProjectionError::Store(e) => e.code(),
            ProjectionError::Unavailable(_) => Code::Unavailable,
            ProjectionError::Database(_) => Code::Internal,
        }
    }
}

#[derive(Debug, Clone)]
pub struct RuntimeConfig {
    /// Events read and applied per transaction.
    pub batch_events_max: usize,
    /// How often an idle runner looks again without a commit notification,
    /// and how often the supervisor re-reads the registry.
    pub idle_poll_ms: u64,
    /// Lag in events is counted exactly over this many events after the
    /// checkpoint, and estimated from global positions beyond (a count of a
    /// million rows per status request would slow the rebuild it reports on).
    pub lag_events_max: u64,
    /// Longest pause between retries after a database error.
    pub retry_backoff_ms_max: u64,
    /// Rows per query page at most.
    pub page_rows_max: usize,
    /// Key changes a batch invalidates one by one in the cache; beyond
    /// this the whole read model is invalidated.
    pub invalidate_keys_max: usize,
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        RuntimeConfig {
            batch_events_max: 1000,
            idle_poll_ms: 1000,
            lag_events_max: 10_000,
            retry_backoff_ms_max: 5000,
            page_rows_max: 1000,
            invalidate_keys_max: 256,
        }
    }
}

/// Handle to the projections of one database. Cheap to clone.
#[derive(Clone)]
pub struct Projections {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub(crate) pool: PgPool,
    reader: Reader,
    appender: Appender,
    pub(crate) cache: ReadCache,
    pub(crate) config: RuntimeConfig,
    limits: Limits,
    /// Bumped on every control change: wakes runners and the supervisor.
    control: watch::Sender<u64>,
    /// Live definitions, for queries (refreshed on a switch or a miss).
    pub(crate) live: Mutex<HashMap<String, (i32, Arc<Definition>)>>,
}

/// A projection's state as an operator sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProjectionState {
    Running,
    Paused,
    Rebuilding,
    Failed,
}

impl ProjectionState {
    pub fn as_str(self) -> &'static str {
        match self {
            ProjectionState::Running => "running",
            ProjectionState::Paused => "paused",
            ProjectionState::Rebuilding => "rebuilding",
            ProjectionState::Failed => "failed",
        }
    }
}

#[derive(Debug, Clone)]
pub struct GenerationStatus {
    pub generation: i32,
    /// building or live.
    pub status: String,
    pub definition: serde_json::Value,
    pub position: AllPosition,
    pub events_applied: u64,
    pub lag_events: u64,
    pub lag_seconds: f64,
    pub last_event_at: Option<DateTime<Utc>>,
    pub failure: Option<Failure>,
    pub started_at: DateTime<Utc>,
    pub caught_up_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone)]
pub struct Failure {
    pub event_id: Uuid,
    pub global_position: u64,
    pub error: String,
    pub failed_at: DateTime<Utc>,
}

#[derive(Debug, Clone)]
pub struct ProjectionStatus {
    pub name: String,
    pub state: ProjectionState,
    pub paused: bool,
    pub live_generation: Option<i32>,
    /// Newest first: the building generation (if any), then the live one.
    pub generations: Vec<GenerationStatus>,
}

impl ProjectionStatus {
    pub fn live(&self) -> Option<&GenerationStatus> {
        self.generations.iter().find(|g| g.status == "live")
    }
}

#[derive(sqlx::FromRow)]
struct StatusRow {
    name: String,
    paused: bool,
    live_generation: Option<i32>,
    generation: i32,
    status: String,
    definition: String,
    transaction_id: i64,
    global_position: i64,
    events_applied: i64,
    last_event_at: Option<DateTime<Utc>>,
    failed_event_id: Option<Uuid>,
    failed_position: Option<i64>,
    error: Option<String>,
    failed_at: Option<DateTime<Utc>>,
    started_at: DateTime<Utc>,
    caught_up_at: Option<DateTime<Utc>>,
}

/// Tags of the cache entries built from a read model.
pub mod tags {
    /// Everything of the read model: bumped on a switch or reset.
    pub fn model(name: &str) -> String {
        format!("rm:{name}:gen")
    }
    /// Every list page of the read model: bumped by each applied batch.
    pub fn rows(name: &str) -> String {
        format!("rm:{name}:rows")
    }
    /// One row.
    pub fn row(name: &str, key: &str) -> String {
        format!("rm:{name}:row:{key}")
    }
}

impl Projections {
    pub fn new(
        pool: PgPool,
        reader: Reader,
        appender: Appender,
        cache: ReadCache,
        config: RuntimeConfig,
        limits: Limits,
    ) -> Projections {
        let (control, _) = watch::channel(0);
        Projections {
            inner: Arc::new(Inner {
                pool,
                reader,
                appender,
                cache,
                config,
                limits,
                control,
                live: Mutex::new(HashMap::new()),
            }),
        }
    }

    pub fn cache(&self) -> &ReadCache {
        &self.inner.cache
    }

    fn wake(&self) {
        self.inner.control.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// Defines dbswarm's own read models (idempotent).
    pub async fn install_builtins(&self) -> Result<(), ProjectionError> {
        for text in BUILTIN_DEFINITIONS {
            self.define(Definition::from_json(text)?).await?;
        }
        Ok(())
    }

    /// Creates a projection, or gives an existing one a new definition:
    /// the first generation serves at once (it has nothing to replace); a
    /// changed definition is built beside the live one and switched to
    /// when caught up. Defining what is already defined changes nothing.
    pub async fn define(&self, definition: Definition) -> Result<ProjectionStatus, ProjectionError> {
        let name = definition.name().to_owned();
        let json = definition.to_json();
        let mut tx = self.inner.pool.begin().await?;
        sqlx::query(PROJECTION_INSERT)
            .bind(&name)
            .execute(&mut *tx)
            .await?;
        let (live, _paused) = lock_projection(&mut tx, &name).await?;
        let current = self.generations(&mut tx, &name).await?;
        // Generations come in order: the last is the one that will serve.
        if current.last().is_some_and(|(_, _, d)| *d == json) {
            tx.rollback().await?;
            return self.status(&name).await;
        }
        let mut dropped = Vec::new();
        for (generation, status, _) in &current {
            if status == "building" {
                retire(&mut tx, &name, *generation).await?;
                dropped.push(*generation);
            }
        }
        if current
            .iter()
            .any(|(_, status, d)| status == "live" && *d == json)
        {
            // Back to the live definition: the rebuild is called off.
            tx.commit().await?;
            self.drop_tables(&name, &dropped).await;
            self.wake();
            tracing::info!(projection = %name, "projection rebuild called off: the live definition is wanted");
            return self.status(&name).await;
        }
        let status = if live.is_none() { "live" } else { "building" };
        let generation: i32 = sqlx::query_scalar(GENERATION_INSERT)
            .bind(&name)
            .bind(status)
            .bind(json.to_string())
            .fetch_one(&mut *tx)
            .await?;
        create_table(&mut tx, &definition, generation).await?;
        if live.is_none() {
            go_live(&mut tx, &name, generation, false).await?;
        }
        tx.commit().await?;
        self.drop_tables(&name, &dropped).await;
        self.wake();
        tracing::info!(projection = %name, generation, status, "projection defined");
        self.status(&name).await
    }

    /// Non-retired generations: (generation, status, definition).
    async fn generations(
        &self,
        tx: &mut Transaction<'_, Postgres>,
        name: &str,
    ) -> Result<Vec<(i32, String, serde_json::Value)>, ProjectionError> {
        let rows: Vec<(i32, String, serde_json::Value)> = sqlx::query_as(GENERATIONS_OF)
            .bind(name)
            .fetch_all(&mut **tx)
            .await?;
        Ok(rows)
    }

    async fn drop_tables(&self, name: &str, generations: &[i32]) {
        for generation in generations {
            let sql = sqlgen::drop_table(name, *generation);
            if let Err(error) = sqlx::query(AssertSqlSafe(sql)).execute(&self.inner.pool).await {
                tracing::warn!(projection = name, generation, %error, "could not drop a retired read-model table");
            }
        }
    }

    /// Builds the live definition again from the start of `$all`, beside
    /// the live table; queries keep reading the old one until the switch.
    pub async fn rebuild(&self, name: &str) -> Result<ProjectionStatus, ProjectionError> {
        let mut tx = self.inner.pool.begin().await?;
        let (live, _) = lock_projection(&mut tx, name).await?;
        let current = self.generations(&mut tx, name).await?;
        if let Some((generation, _, _)) = current.iter().find(|(_, s, _)| s == "building") {
            return Err(ProjectionError::Conflict(format!(
                "projection '{name}' is already rebuilding (generation {generation}); wait for it to switch"
            )));
        }
        let Some((_, _, definition)) = current.iter().find(|(g, _, _)| Some(*g) == live) else {
            return Err(ProjectionError::Conflict(format!(
                "projection '{name}' has no live generation"
            )));
        };
        let definition = stored_definition(definition)?;
        let generation: i32 = sqlx::query_scalar(GENERATION_INSERT)
            .bind(name)
            .bind("building")
            .bind(definition.to_json().to_string())
            .fetch_one(&mut *tx)
            .await?;
        create_table(&mut tx, &definition, generation).await?;
        tx.commit().await?;
        self.wake();
        tracing::info!(projection = name, generation, "projection rebuild started");
        self.status(name).await
    }

    /// Empties the live read model and applies `$all` again from the start.
    /// Unlike rebuild, readers see the model fill up again.
    pub async fn reset(&self, name: &str) -> Result<ProjectionStatus, ProjectionError> {
        let mut tx = self.inner.pool.begin().await?;
        let (live, _) = lock_projection(&mut tx, name).await?;
        let Some(live) = live else {
            return Err(ProjectionError::Conflict(format!(
                "projection '{name}' has no live generation"
            )));
        };
        // Waits for the runner's batch in flight, if any.
        sqlx::query(GENERATION_LOCK)
            .bind(name)
            .bind(live)
            .fetch_one(&mut *tx)
            .await?;
        sqlx::query(AssertSqlSafe(sqlgen::truncate(name, live)))
            .execute(&mut *tx)
            .await?;
        sqlx::query(GENERATION_RESET)
            .bind(name)
            .bind(live)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        self.inner.cache.invalidate(&[tags::model(name)]).await;
        self.wake();
        tracing::info!(projection = name, generation = live, "projection reset");
        self.status(name).await
    }

    pub async fn pause(&self, name: &str) -> Result<ProjectionStatus, ProjectionError> {
        self.set_paused(name, true).await
    }

    /// Resumes a paused projection, and retries a failed one at the event
    /// it stopped at.
    pub async fn resume(&self, name: &str) -> Result<ProjectionStatus, ProjectionError> {
        let mut tx = self.inner.pool.begin().await?;
        lock_projection(&mut tx, name).await?;
        sqlx::query(FAILURES_CLEAR).bind(name).execute(&mut *tx).await?;
        sqlx::query(PROJECTION_SET_PAUSED)
            .bind(name)
            .bind(false)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        self.wake();
        self.status(name).await
    }

    async fn set_paused(&self, name: &str, paused: bool) -> Result<ProjectionStatus, ProjectionError> {
        let done = sqlx::query(PROJECTION_SET_PAUSED)
            .bind(name)
            .bind(paused)
            .execute(&self.inner.pool)
            .await?;
        if done.rows_affected() == 0 {
            return Err(ProjectionError::NotFound(name.to_owned()));
        }
        self.wake();
        self.status(name).await
    }

    /// Moves a failed projection past exactly the event it stopped at. The
    /// skip is first recorded as a `ProjectionEventSkipped` event on stream
    /// `projection-<name>`, so that the read model's gap is on record.
    pub async fn skip_event(
        &self,
        name: &str,
        event_id: Uuid,
        reason: &str,
    ) -> Result<ProjectionStatus, ProjectionError> {
        let status = self.status(name).await?;
        let Some((generation, failure)) = status
            .generations
            .iter()
            .find_map(|g| g.failure.as_ref().map(|f| (g.generation, f)))
        else {
            return Err(ProjectionError::Conflict(format!(
                "projection '{name}' is not stopped at a failed event; nothing to skip"
            )));
        };
        if failure.event_id != event_id {
            return Err(ProjectionError::Conflict(format!(
                "projection '{name}' is stopped at event {}, not {event_id}; only that event can be skipped",
                failure.event_id
            )));
        }
        self.record_skip(name, generation, failure, reason).await?;
        let done = sqlx::query(GENERATION_SKIP)
            .bind(name)
            .bind(generation)
            .bind(event_id)
            .execute(&self.inner.pool)
            .await?;
        if done.rows_affected() == 0 {
            return Err(ProjectionError::Conflict(format!(
                "projection '{name}' is no longer stopped at event {event_id}"
            )));
        }
        self.wake();
        tracing::warn!(projection = name, generation, %event_id, reason, "projection skipped an event");
        self.status(name).await
    }

    async fn record_skip(
        &self,
        name: &str,
        generation: i32,
        failure: &Failure,
        reason: &str,
    ) -> Result<(), ProjectionError> {
        let invalid = |e: domain::ValidationError| ProjectionError::InvalidQuery(e.to_string());
        let stream = StreamId::parse(&format!("projection-{name}"), &self.inner.limits).map_err(invalid)?;
        let data = serde_json::json!({
            "projection": name,
            "generation": generation,
            "event_id": failure.event_id,
            "global_position": failure.global_position,
            "error": failure.error,
            "reason": reason,
        });
        let event = ProposedEvent {
            event_id: Uuid::new_v4(),
            event_type: EventType::parse(SKIP_EVENT_TYPE, &self.inner.limits).map_err(invalid)?,
            data: EventData::json(data.to_string().into_bytes()).map_err(invalid)?,
            metadata: "{}".to_owned(),
            schema_version: 1,
            correlation_id: None,
            causation_id: Some(failure.event_id),
        };
        let request = AppendRequest::new(
            vec![StreamAppend {
                stream_id: stream,
                expected: ExpectedVersion::Any,
                events: vec![event],
            }],
            &self.inner.limits,
        )
        .map_err(invalid)?;
        self.inner.appender.append(request).await?;
        Ok(())
    }

    pub async fn status(&self, name: &str) -> Result<ProjectionStatus, ProjectionError> {
        let mut all = self.load_status(Some(name)).await?;
        all.pop()
            .ok_or_else(|| ProjectionError::NotFound(name.to_owned()))
    }

    pub async fn list(&self) -> Result<Vec<ProjectionStatus>, ProjectionError> {
        self.load_status(None).await
    }

    async fn load_status(&self, name: Option<&str>) -> Result<Vec<ProjectionStatus>, ProjectionError> {
        let rows: Vec<StatusRow> = sqlx::query_as(PROJECTION_STATUS)
            .bind(name)
            .fetch_all(&self.inner.pool)
            .await?;
        let mut statuses: Vec<ProjectionStatus> = Vec::new();
        for row in rows {
            let definition: serde_json::Value = serde_json::from_str(&row.definition).unwrap_or_default();
            let position = AllPosition {
                transaction_id: row.transaction_id as u64,
                global_position: row.global_position as u64,
            };
            let types = stored_definition(&definition)?.event_types();
            let (scanned, matched, head_position, lag_seconds): (i64, i64, i64, f64) =
                sqlx::query_as(PROJECTION_LAG)
                    .bind(position.transaction_id.to_string())
                    .bind(position.global_position as i64)
                    .bind(&types)
                    .bind(self.inner.config.lag_events_max as i64)
                    .fetch_one(&self.inner.pool)
                    .await?;
            let lag_events = lag_estimate(
                scanned as u64,
                matched as u64,
                self.inner.config.lag_events_max,
                head_position as u64,
                position,
            );
            let failure = match (row.failed_event_id, row.failed_position, row.error, row.failed_at) {
                (Some(event_id), Some(position), Some(error), Some(failed_at)) => Some(Failure {
                    event_id,
                    global_position: position as u64,
                    error,
                    failed_at,
                }),
                _ => None,
            };
            let generation = GenerationStatus {
                generation: row.generation,
                status: row.status,
                definition,
                position,
                events_applied: row.events_applied as u64,
                lag_events,
                lag_seconds,
                last_event_at: row.last_event_at,
                failure,
                started_at: row.started_at,
                caught_up_at: row.caught_up_at,
            };
            match statuses.last_mut() {
                Some(last) if last.name == row.name => last.generations.push(generation),
                _ => statuses.push(ProjectionStatus {
                    name: row.name,
                    state: ProjectionState::Running,
                    paused: row.paused,
                    live_generation: row.live_generation,
                    generations: vec![generation],
                }),
            }
        }
        for status in &mut statuses {
            status.state = if status.generations.iter().any(|g| g.failure.is_some()) {
                ProjectionState::Failed
            } else if status.paused {
                ProjectionState::Paused
            } else if status.generations.iter().any(|g| g.status == "building") {
                ProjectionState::Rebuilding
            } else {
                ProjectionState::Running
            };
        }
        Ok(statuses)
    }

    /// Runs the runners until `stop`: re-reads the registry on every
    /// control change and every `idle_poll_ms`, starts a runner for each
    /// generation that has none, publishes status metrics.
    pub fn start(&self, commits: CommitSignal, stop: watch::Receiver<bool>) -> JoinHandle<()> {
        let projections = self.clone();
        tokio::spawn(async move { projections.supervise(commits, stop).await })
    }

    async fn supervise(&self, commits: CommitSignal, mut stop: watch::Receiver<bool>) {
        let mut runners: HashMap<(String, i32), JoinHandle<()>> = HashMap::new();
        let mut control = self.inner.control.subscribe();
        let poll = Duration::from_millis(self.inner.config.idle_poll_ms.max(10));
        let mut last_metrics = tokio::time::Instant::now() - Duration::from_secs(60);
        loop {
            runners.retain(|_, handle| !handle.is_finished());
            match sqlx::query_as::<_, (String, i32, String, String)>(GENERATIONS_RUNNING)
                .fetch_all(&self.inner.pool)
                .await
            {
                Ok(rows) => {
                    for (name, generation, _status, definition) in rows {
                        if runners.contains_key(&(name.clone(), generation)) {
                            continue;
                        }
                        match Definition::from_json(&definition) {
                            Ok(definition) => {
                                let runner = Runner {
                                    inner: self.inner.clone(),
                                    name: name.clone(),
                                    generation,
                                    definition: Arc::new(definition),
                                };
                                let handle = tokio::spawn(runner.run(
                                    commits.clone(),
                                    self.inner.control.subscribe(),
                                    stop.clone(),
                                ));
                                runners.insert((name, generation), handle);
                            }
                            Err(error) => {
                                tracing::error!(projection = %name, generation, %error, "stored definition is invalid");
                            }
                        }
                    }
                }
                Err(error) => tracing::warn!(%error, "could not read the projection registry"),
            }
            if last_metrics.elapsed() >= Duration::from_secs(5) {
                last_metrics = tokio::time::Instant::now();
                self.publish_metrics().await;
            }
            tokio::select! {
                _ = control.changed() => {}
                _ = tokio::time::sleep(poll) => {}
                _ = stop.wait_for(|s| *s) => break,
            }
        }
        for (_, handle) in runners {
            let _ = tokio::time::timeout(Duration::from_secs(10), handle).await;
        }
    }

    /// Sets every projection's status gauges, and registers its counter and
    /// histogram, so that each is on `/metrics` before anything happens.
    pub async fn publish_metrics(&self) {
        let Ok(statuses) = self.list().await else { return };
        for status in statuses {
            let Some(live) = status.live() else { continue };
            let name = status.name.clone();
            let _ =
                metrics::counter!("dbswarm_projection_events_applied_total", "projection" => name.clone());
            let _ = metrics::histogram!("dbswarm_projection_batch_seconds", "projection" => name.clone());
            metrics::gauge!("dbswarm_projection_lag_events", "projection" => name.clone())
                .set(live.lag_events as f64);
            metrics::gauge!("dbswarm_projection_lag_seconds", "projection" => name.clone())
                .set(live.lag_seconds);
            metrics::gauge!("dbswarm_projection_position", "projection" => name.clone())
                .set(live.position.global_position as f64);
            for state in [
                ProjectionState::Running,
                ProjectionState::Paused,
                ProjectionState::Rebuilding,
                ProjectionState::Failed,
            ] {
                metrics::gauge!("dbswarm_projection_state", "projection" => name.clone(), "state" => state.as_str())
                    .set(if status.state == state { 1.0 } else { 0.0 });
            }
        }
    }
}

/// Lag in events: exact when the window after the checkpoint held every
/// event; else the distance in global positions (dense but for rolled-back
/// appends) scaled by the share of the window that is of the projection's
/// types, and at least what the window counted.
fn lag_estimate(scanned: u64, matched: u64, window: u64, head_position: u64, checkpoint: AllPosition) -> u64 {
    if scanned < window || scanned == 0 {
        return matched;
    }
    let distance = head_position.saturating_sub(checkpoint.global_position);
    let scaled = (distance as u128 * matched as u128 / scanned as u128) as u64;
    scaled.max(matched)
}

/// A definition as the registry stores it (validated again: the rules may
/// have changed since it was stored).
fn stored_definition(json: &serde_json::Value) -> Result<Definition, ProjectionError> {
    let spec: crate::definition::DefinitionSpec = serde_json::from_value(json.clone())
        .map_err(|e| ProjectionError::Database(format!("stored definition does not parse: {e}")))?;
    Ok(Definition::try_from(spec)?)
}

async fn lock_projection(
    tx: &mut Transaction<'_, Postgres>,
    name: &str,
) -> Result<(Option<i32>, bool), ProjectionError> {
    sqlx::query_as(PROJECTION_LOCK)
        .bind(name)
        .fetch_optional(&mut **tx)
        .await?
        .ok_or_else(|| ProjectionError::NotFound(name.to_owned()))
}

async fn create_table(
    tx: &mut Transaction<'_, Postgres>,
    definition: &Definition,
    generation: i32,
) -> Result<(), sqlx::Error> {
    for statement in sqlgen::create_table(definition, generation) {
        sqlx::query(AssertSqlSafe(statement)).execute(&mut **tx).await?;
    }
    Ok(())
}

async fn retire(tx: &mut Transaction<'_, Postgres>, name: &str, generation: i32) -> Result<(), sqlx::Error> {
    sqlx::query(GENERATION_RETIRE)
        .bind(name)
        .bind(generation)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// Makes `generation` the one the view shows (in the caller's transaction).
async fn go_live(
    tx: &mut Transaction<'_, Postgres>,
    name: &str,
    generation: i32,
    replacing: bool,
) -> Result<(), sqlx::Error> {
    sqlx::query(GENERATION_GO_LIVE)
        .bind(name)
        .bind(generation)
        .execute(&mut **tx)
        .await?;
    sqlx::query(PROJECTION_SET_LIVE)
        .bind(name)
        .bind(generation)
        .execute(&mut **tx)
        .await?;
    for statement in sqlgen::replace_view(name, generation, replacing) {
        sqlx::query(AssertSqlSafe(statement)).execute(&mut **tx).await?;
    }
    Ok(())
}

/// A generation as a runner sees it (`generation_peek.sql`,
/// `generation_lock.sql`).
struct GenerationRow {
    status: String,
    position: AllPosition,
    failed: bool,
    paused: bool,
}

impl GenerationRow {
    /// Why the runner must not apply anything now, if it must not.
    fn stop(&self) -> Option<Step> {
        if self.status == "retired" {
            Some(Step::Retired)
        } else if self.failed || self.paused {
            Some(Step::Halted)
        } else {
            None
        }
    }
}

/// What a runner's step ended with.
enum Step {
    /// Applied (or moved past) events: go on at once.
    Progressed,
    /// Nothing new below the horizon: wait for a commit.
    Idle,
    /// Paused or failed: wait for a control change.
    Halted,
    /// The generation was retired: the runner ends.
    Retired,
}

/// How applying a page's events ended.
struct Applied {
    /// Events a handler took, up to the end or the failing event.
    handled: u64,
    touched: Vec<String>,
    failure: Option<(usize, String)>,
}

struct Runner {
    inner: Arc<Inner>,
    name: String,
    generation: i32,
    definition: Arc<Definition>,
}

/// Where a batch got to, and the time of the last event it applied: just
/// before the failing event (`failed`, its index), or the page's end.
fn reached(
    failed: Option<usize>,
    scan_from: AllPosition,
    page: &event_store::AllPage,
) -> (AllPosition, Option<DateTime<Utc>>) {
    match failed {
        Some(0) => (scan_from, None),
        Some(i) => (
            page.events[i - 1].all_position(),
            Some(page.events[i - 1].created_at),
        ),
        None => (page.scanned_to, page.events.last().map(|e| e.created_at)),
    }
}

/// The next page, being read from the position it starts after.
type Prefetched = (
    AllPosition,
    JoinHandle<Result<(event_store::AllPage, PagePlan), StoreError>>,
);

struct Statements {
    generation: i32,
    merge: Arc<str>,
    delete: Arc<str>,
    /// Upserts of uniform runs, by their column modes (few per definition).
    uniform: Mutex<HashMap<Vec<i16>, Arc<str>>>,
}

impl Statements {
    fn uniform(&self, definition: &Definition, modes: &[i16]) -> Arc<str> {
        let mut cache = self.uniform.lock().unwrap_or_else(|p| p.into_inner());
        cache
            .entry(modes.to_vec())
            .or_insert_with(|| sqlgen::upsert_uniform(definition, self.generation, modes).into())
            .clone()
    }
}

impl Runner {
    async fn run(
        self,
        mut commits: CommitSignal,
        mut control: watch::Receiver<u64>,
        mut stop: watch::Receiver<bool>,
    ) {
        let statements = Statements {
            generation: self.generation,
            merge: sqlgen::merge_patches(&self.definition, self.generation).into(),
            delete: sqlgen::delete_rows(&self.definition, self.generation).into(),
            uniform: Mutex::new(HashMap::new()),
        };
        let types = self.definition.event_types();
        let mut checkpoint: Option<AllPosition> = None;
        let mut scan_from = AllPosition::default();
        let mut prefetched: Option<Prefetched> = None;
        let mut idle_saved_at = std::time::Instant::now();
        let mut failures = 0u32;
        tracing::debug!(projection = %self.name, generation = self.generation, "runner started");
        loop {
            if *stop.borrow() {
                return;
            }
            let step = self
                .step(
                    &statements,
                    &types,
                    &mut checkpoint,
                    &mut scan_from,
                    &mut prefetched,
                    &mut idle_saved_at,
                )
                .await;
            let wait_for_commit = match step {
                Ok(Step::Progressed) => {
                    failures = 0;
                    continue;
                }
                Ok(Step::Idle) => true,
                Ok(Step::Halted) => false,
                Ok(Step::Retired) => {
                    tracing::info!(projection = %self.name, generation = self.generation, "runner ends: generation retired");
                    return;
                }
                Err(error) => {
                    failures = failures.saturating_add(1);
                    checkpoint = None;
                    let backoff = (100u64 << failures.min(8)).min(self.inner.config.retry_backoff_ms_max);
                    tracing::warn!(projection = %self.name, generation = self.generation, %error, backoff_ms = backoff, "projection batch failed; retrying");
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_millis(backoff)) => {}
                        _ = stop.wait_for(|s| *s) => return,
                    }
                    continue;
                }
            };
            tokio::select! {
                alive = commits.changed(), if wait_for_commit => if !alive { return },
                _ = control.changed() => {}
                _ = tokio::time::sleep(Duration::from_millis(self.inner.config.idle_poll_ms.max(10))) => {}
                _ = stop.wait_for(|s| *s) => return,
            }
        }
    }

    /// The generation's registry row, read with `sql` (a peek, or the
    /// locking read of the fence); a missing row reads as retired.
    async fn generation_row<'c, E>(
        &self,
        sql: &'static str,
        executor: E,
    ) -> Result<GenerationRow, sqlx::Error>
    where
        E: sqlx::Executor<'c, Database = Postgres>,
    {
        let row: Option<(String, i64, i64, bool, bool)> = sqlx::query_as(sql)
            .bind(&self.name)
            .bind(self.generation)
            .fetch_optional(executor)
            .await?;
        let (status, transaction_id, global_position, failed, paused) =
            row.unwrap_or_else(|| ("retired".to_owned(), 0, 0, false, false));
        Ok(GenerationRow {
            status,
            position: AllPosition {
                transaction_id: transaction_id as u64,
                global_position: global_position as u64,
            },
            failed,
            paused,
        })
    }

    /// Reads the page after `from` (and plans it) in a task of its own.
    fn prefetch(&self, types: &[String], from: AllPosition) -> Prefetched {
        let inner = &self.inner;
        let (reader, types) = (inner.reader.clone(), types.to_vec());
        let (definition, limit) = (self.definition.clone(), inner.config.batch_events_max);
        (
            from,
            tokio::spawn(async move {
                let page = reader.read_all_page(from, &types, limit).await?;
                let plan = definition.plan_page(&page.events);
                Ok((page, plan))
            }),
        )
    }

    /// Moves the stored checkpoint from `from` to `to` without a batch;
    /// false when it was not at `from` any more.
    async fn advance_checkpoint(&self, from: AllPosition, to: AllPosition) -> Result<bool, ProjectionError> {
        let moved = sqlx::query(CHECKPOINT_ADVANCE)
            .bind(&self.name)
            .bind(self.generation)
            .bind(to.transaction_id.to_string())
            .bind(to.global_position as i64)
            .bind(from.transaction_id.to_string())
            .bind(from.global_position as i64)
            .execute(&self.inner.pool)
            .await?;
        Ok(moved.rows_affected() == 1)
    }

    /// The page after `scan_from` and its plan: the one prefetched if it
    /// starts there (else that one is dropped), or read now.
    async fn page(
        &self,
        prefetched: Option<Prefetched>,
        scan_from: AllPosition,
        types: &[String],
    ) -> Result<(event_store::AllPage, PagePlan), ProjectionError> {
        let inner = &self.inner;
        Ok(match prefetched {
            Some((from, next)) if from == scan_from => next
                .await
                .map_err(|e| ProjectionError::Database(format!("page read task failed: {e}")))??,
            other => {
                if let Some((_, stale)) = other {
                    stale.abort();
                }
                let page = inner
                    .reader
                    .read_all_page(scan_from, types, inner.config.batch_events_max)
                    .await?;
                let plan = self.definition.plan_page(&page.events);
                (page, plan)
            }
        })
    }

    /// Stores the checkpoint a batch reached, in its transaction.
    async fn save_checkpoint(
        &self,
        tx: &mut Transaction<'_, Postgres>,
        position: AllPosition,
        handled: u64,
        last_event_at: Option<DateTime<Utc>>,
    ) -> Result<(), ProjectionError> {
        sqlx::query(CHECKPOINT_SAVE)
            .bind(&self.name)
            .bind(self.generation)
            .bind(position.transaction_id.to_string())
            .bind(position.global_position as i64)
            .bind(handled as i64)
            .bind(last_event_at)
            .execute(&mut **tx)
            .await?;
        Ok(())
    }

    /// Records in the transaction that the generation stopped at `event`.
    async fn record_failure(
        &self,
        tx: &mut Transaction<'_, Postgres>,
        event: &RecordedEvent,
        error: &impl std::fmt::Display,
    ) -> Result<(), ProjectionError> {
        sqlx::query(GENERATION_FAIL)
            .bind(&self.name)
            .bind(self.generation)
            .bind(event.event_id)
            .bind(event.global_position as i64)
            .bind(event.transaction_id.to_string())
            .bind(format!(
                "event {} ({}, {} v{}): {error}",
                event.event_id, event.event_type, event.stream_id, event.event_version
            ))
            .execute(&mut **tx)
            .await?;
        Ok(())
    }

    /// One batch. `checkpoint` is the stored checkpoint as last seen (None:
    /// read it); `scan_from` may be ahead of it when pages held nothing of
    /// this projection's types (not worth a write).
    async fn step(
        &self,
        statements: &Statements,
        types: &[String],
        checkpoint: &mut Option<AllPosition>,
        scan_from: &mut AllPosition,
        prefetched: &mut Option<Prefetched>,
        idle_saved_at: &mut std::time::Instant,
    ) -> Result<Step, ProjectionError> {
        let inner = &self.inner;
        // Look first without a lock: an idle or halted runner takes no
        // transaction id, which would hold the database's $all horizon back.
        let peeked = self.generation_row(GENERATION_PEEK, &inner.pool).await?;
        if let Some(stop) = peeked.stop() {
            return Ok(stop);
        }
        let (status, stored) = (peeked.status, peeked.position);
        if *checkpoint != Some(stored) {
            // First step, or another runner moved it: go on from the store.
            *checkpoint = Some(stored);
            *scan_from = stored;
        }
        let (page, plan) = self.page(prefetched.take(), *scan_from, types).await?;
        let full = page.events.len() >= inner.config.batch_events_max;
        if full {
            // Read the next page while this one is written: catching up
            // (a rebuild) then costs about the slower of the two, not both.
            *prefetched = Some(self.prefetch(types, page.scanned_to));
        }
        if page.events.is_empty() {
            *scan_from = page.scanned_to.max(*scan_from);
            if status == "building" {
                self.switch_if_caught_up().await?;
            }
            if Some(*scan_from) != *checkpoint && idle_saved_at.elapsed() >= IDLE_CHECKPOINT_INTERVAL {
                // Store how far nothing of its types came, now and then:
                // else the lag count of a projection whose types are rare
                // scans everything since its last event.
                *idle_saved_at = std::time::Instant::now();
                let (from, to) = (checkpoint.unwrap_or_default(), *scan_from);
                *checkpoint = self.advance_checkpoint(from, to).await?.then_some(to);
            }
            // Moved on without a write: the next page starts further.
            return Ok(Step::Idle);
        }
        // The fence: the checkpoint must still be where the page was read
        // from, and the generation still running, under the row lock.
        let mut tx = inner.pool.begin().await?;
        let locked = self.generation_row(GENERATION_LOCK, &mut *tx).await?;
        if let Some(stop) = locked.stop() {
            return Ok(stop);
        }
        let status = locked.status;
        if Some(locked.position) != *checkpoint {
            *checkpoint = None;
            return Ok(Step::Progressed);
        }
        let started = std::time::Instant::now();
        let applied = match self.apply_plan(&mut tx, statements, &plan).await {
            Ok(applied) => applied,
            Err(error) if is_data_error(&error) => {
                // A statement refused a value: find the event, one by one.
                tx.rollback().await?;
                tx = inner.pool.begin().await?;
                sqlx::query(GENERATION_LOCK)
                    .bind(&self.name)
                    .bind(self.generation)
                    .fetch_one(&mut *tx)
                    .await?;
                self.apply_one_by_one(&mut tx, statements, &page.events).await?
            }
            Err(error) => return Err(error.into()),
        };
        let failed = applied.failure.as_ref().map(|(i, _)| *i);
        let (position, last_event_at) = reached(failed, *scan_from, &page);
        self.save_checkpoint(&mut tx, position, applied.handled, last_event_at)
            .await?;
        if let Some((i, error)) = &applied.failure {
            self.record_failure(&mut tx, &page.events[*i], error).await?;
        }
        tx.commit().await?;
        *checkpoint = Some(position);
        *scan_from = position;
        metrics::counter!("dbswarm_projection_events_applied_total", "projection" => self.name.clone())
            .increment(applied.handled);
        metrics::histogram!("dbswarm_projection_batch_seconds", "projection" => self.name.clone())
            .record(started.elapsed().as_secs_f64());
        if status == "live" {
            self.invalidate(&applied.touched).await;
        }
        if let Some((i, error)) = applied.failure {
            tracing::error!(projection = %self.name, generation = self.generation, event_id = %page.events[i].event_id, %error, "projection stopped at a failing event");
            return Ok(Step::Halted);
        }
        if status == "building" && !full {
            self.switch_if_caught_up().await?;
        }
        Ok(Step::Progressed)
    }

    /// Writes a planned page in the transaction, run by run.
    async fn apply_plan(
        &self,
        tx: &mut Transaction<'_, Postgres>,
        statements: &Statements,
        plan: &PagePlan,
    ) -> Result<Applied, sqlx::Error> {
        for run in &plan.runs {
            flush(tx, statements, &self.definition, run).await?;
        }
        Ok(Applied {
            handled: plan.handled(),
            touched: plan
                .runs
                .iter()
                .flat_map(|run| run.keys().map(str::to_owned))
                .collect(),
            failure: plan.failure.clone(),
        })
    }

    /// Applies `events` one at a time, each in a savepoint, to name the
    /// event whose row PostgreSQL refuses.
    async fn apply_one_by_one(
        &self,
        tx: &mut Transaction<'_, Postgres>,
        statements: &Statements,
        events: &[RecordedEvent],
    ) -> Result<Applied, sqlx::Error> {
        let mut applied = Applied {
            handled: 0,
            touched: Vec::new(),
            failure: None,
        };
        for (i, event) in events.iter().enumerate() {
            let (key, op) = match self.definition.plan(event) {
                Ok(None) => continue,
                Ok(Some(planned)) => planned,
                Err(why) => {
                    applied.failure = Some((i, why));
                    return Ok(applied);
                }
            };
            let mut single = Run::default();
            single.try_push(key, op);
            sqlx::query("SAVEPOINT projection_event")
                .execute(&mut **tx)
                .await?;
            match flush(tx, statements, &self.definition, &single).await {
                Ok(()) => {
                    sqlx::query("RELEASE SAVEPOINT projection_event")
                        .execute(&mut **tx)
                        .await?;
                    applied.handled += 1;
                    applied.touched.extend(single.keys().map(str::to_owned));
                }
                Err(error) if is_data_error(&error) => {
                    sqlx::query("ROLLBACK TO SAVEPOINT projection_event")
                        .execute(&mut **tx)
                        .await?;
                    applied.failure = Some((i, database_message(&error)));
                    return Ok(applied);
                }
                Err(error) => return Err(error),
            }
        }
        Ok(applied)
    }

    async fn invalidate(&self, touched: &[String]) {
        if touched.is_empty() {
            return;
        }
        let mut tags = vec![tags::rows(&self.name)];
        if touched.len() > self.inner.config.invalidate_keys_max {
            tags.push(tags::model(&self.name));
        } else {
            tags.extend(touched.iter().map(|key| tags::row(&self.name, key)));
        }
        self.inner.cache.invalidate(&tags).await;
    }

    /// A building generation that reached the horizon becomes the live one,
    /// atomically for readers: the view is replaced in the same
    /// transaction that retires the old generation. The old table is
    /// dropped after (waiting for queries that still read it).
    async fn switch_if_caught_up(&self) -> Result<(), ProjectionError> {
        let name = &self.name;
        let mut tx = self.inner.pool.begin().await?;
        let (live, _) = lock_projection(&mut tx, name).await?;
        let generation = self.generation_row(GENERATION_LOCK, &mut *tx).await?;
        if generation.status != "building" || generation.failed {
            return Ok(());
        }
        if let Some(old) = live {
            retire(&mut tx, name, old).await?;
        }
        go_live(&mut tx, name, self.generation, live.is_some()).await?;
        tx.commit().await?;
        self.inner
            .live
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(name.clone(), (self.generation, self.definition.clone()));
        self.inner.cache.invalidate(&[tags::model(name)]).await;
        tracing::info!(projection = %name, generation = self.generation, replaced = ?live, "rebuilt projection switched live");
        if let Some(old) = live {
            let projections = Projections {
                inner: self.inner.clone(),
            };
            projections.drop_tables(name, &[old]).await;
        }
        self.inner.control.send_modify(|n| *n = n.wrapping_add(1));
        Ok(())
    }
}

/// Writes a run: its deletes, then its patches in one statement (a plain
/// upsert when every patch touches the same columns the same way, else one
/// MERGE). Keys are distinct within a run, so the order between rows does
/// not matter.
async fn flush(
    tx: &mut PgConnection,
    statements: &Statements,
    definition: &Definition,
    run: &Run,
) -> Result<(), sqlx::Error> {
    if run.is_empty() {
        return Ok(());
    }
    let deleted: Vec<&str> = run
        .ops()
        .iter()
        .filter(|(_, op)| matches!(op, RowOp::Delete))
        .map(|(k, _)| k.as_str())
        .collect();
    if !deleted.is_empty() {
        sqlx::query(AssertSqlSafe(statements.delete.clone()))
            .bind(&deleted)
            .execute(&mut *tx)
            .await?;
    }
    let patches: Vec<(&str, &Vec<Option<ColumnOp>>)> = run
        .ops()
        .iter()
        .filter_map(|(k, op)| match op {
            RowOp::Patch(columns) => Some((k.as_str(), columns)),
            RowOp::Delete => None,
        })
        .collect();
    if patches.is_empty() {
        return Ok(());
    }
    let keys: Vec<&str> = patches.iter().map(|(k, _)| *k).collect();
    let width = definition.columns().len();
    let mode_of = |op: &Option<ColumnOp>| match op {
        None => sqlgen::MODE_KEEP,
        Some(ColumnOp::Set(_)) => sqlgen::MODE_SET,
        Some(ColumnOp::Add { .. }) => sqlgen::MODE_ADD,
        Some(ColumnOp::InsertOnly(_)) => sqlgen::MODE_INSERT_ONLY,
    };
    let first_modes: Vec<i16> = patches[0].1.iter().map(mode_of).collect();
    let uniform = patches
        .iter()
        .all(|(_, ops)| ops.iter().map(mode_of).eq(first_modes.iter().copied()));
    if uniform {
        let sql = statements.uniform(definition, &first_modes);
        let mut query = sqlx::query(AssertSqlSafe(sql)).bind(keys);
        for column in (0..width).filter(|&c| first_modes[c] != sqlgen::MODE_KEEP) {
            let values: Vec<Option<&str>> = patches.iter().map(|(_, ops)| value_of(&ops[column])).collect();
            query = query.bind(values);
        }
        query.execute(&mut *tx).await?;
        return Ok(());
    }
    let mut query = sqlx::query(AssertSqlSafe(statements.merge.clone())).bind(keys);
    for column in 0..width {
        let modes: Vec<i16> = patches.iter().map(|(_, ops)| mode_of(&ops[column])).collect();
        let values: Vec<Option<&str>> = patches.iter().map(|(_, ops)| value_of(&ops[column])).collect();
        query = query.bind(modes).bind(values);
    }
    query.execute(&mut *tx).await?;
    Ok(())
}

/// The text bound for a column operation (NULL = None).
fn value_of(op: &Option<ColumnOp>) -> Option<&str> {
    match op {
        None => None,
        Some(ColumnOp::Set(v)) | Some(ColumnOp::InsertOnly(v)) => v.as_deref(),
        Some(ColumnOp::Add { delta, .. }) => Some(delta),
    }
}

/// Errors that belong to the data of an event (a value PostgreSQL refuses:
/// SQLSTATE classes 22 and 23), as opposed to the database being away.
fn is_data_error(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::Database(db) => db
            .code()
            .is_some_and(|code| code.starts_with("22") || code.starts_with("23")),
        _ => false,
    }
}

fn database_message(error: &sqlx::Error) -> String {
    match error {
        sqlx::Error::Database(db) => format!(
            "PostgreSQL refused the row: {} (SQLSTATE {})",
            db.message(),
            db.code().unwrap_or_default()
        ),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lag_is_exact_within_the_window_and_scaled_beyond_it() {
        let at = |global_position| AllPosition {
            transaction_id: 1,
            global_position,
        };
        // The whole rest fits the window: the count is the lag.
        assert_eq!(lag_estimate(40, 7, 10_000, 1_040, at(1_000)), 7);
        // A full window, every event of its types: the position distance.
        assert_eq!(lag_estimate(10_000, 10_000, 10_000, 1_000_000, at(0)), 1_000_000);
        // A full window, a tenth of its types: a tenth of the distance.
        assert_eq!(lag_estimate(10_000, 1_000, 10_000, 1_000_000, at(0)), 100_000);
        // Never less than what was counted.
        assert_eq!(lag_estimate(10_000, 500, 10_000, 10_000, at(9_990)), 500);
    }
}
