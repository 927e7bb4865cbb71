//! The orchestrator: runs workflows by executing what their events ask for.
//!
//! Whoever records workflow events (a gRPC request, an agent reporting an
//! outcome, the driver's tick) dispatches their effects right away: a task
//! command on `<prefix>.task.<agent>.<operation>` for every
//! `TaskScheduled` and `CompensationStarted`, a stop request on
//! `<prefix>.control.stop` for `WorkflowCancelled`. So a workflow moves at
//! the speed of appends and JetStream, with no polling in its path.
//!
//! What a crash can lose is the dispatch after an append. The table
//! `workflow_runs` lists every unfinished workflow with the stream version
//! it was last updated from and when it is next due; the driver (one per
//! database, the holder of the advisory lock [`DRIVER_LOCK_KEY`]) visits
//! due workflows: it times out attempts, schedules retries and resends the
//! outstanding commands of any workflow whose row is behind its stream.
//! When it becomes the driver (a server restarted, or took over from a
//! dead one) it visits every unfinished workflow and resends. A resent
//! command carries the same message id (JetStream drops it within the
//! duplicate window) and agents check that its attempt is still the
//! current one, and outcomes are matched by attempt: a task's effect is
//! recorded once.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream;
use domain::OperationError;
use domain::workflow::{
    Plan, Priority, StopRequest, TaskCommand, TaskKind, WorkflowCommand, WorkflowEvent, WorkflowState,
};
use event_store::clock::{now_ms, workflow_clock};
use event_store::leader;
use event_store::relay::{self, RelayConfig};
use futures_util::StreamExt;
use serde_json::Value;
use sqlx::PgPool;
use tokio::sync::{oneshot, watch};
use uuid::Uuid;

use crate::store::{SagaError, WorkflowExecuted as Executed, WorkflowStore};
use crate::tasks::ensure_tasks_stream;

const RUN_INSERT: &str = include_str!("sql/run_insert.sql");
const RUN_UPDATE: &str = include_str!("sql/run_update.sql");
const RUN_DELETE: &str = include_str!("sql/run_delete.sql");
const RUNS_DUE: &str = include_str!("sql/runs_due.sql");
const RUNS_PAGE: &str = include_str!("sql/runs_page.sql");
const RUN_POSTPONE: &str = include_str!("sql/run_postpone.sql");

/// `pg_try_advisory_lock` key of the workflow driver ("dbswarmO").
pub const DRIVER_LOCK_KEY: i64 = 0x6462_7377_6172_6d4f;
/// Namespace of workflow ids derived from idempotency keys.
const IDEMPOTENCY_NAMESPACE: Uuid = Uuid::from_u128(0x6462_7377_6172_6d00_0000_0000_0000_0001);
/// A run row whose stream never got its first event (the server died
/// between the two) is removed after this long.
const ORPHAN_ROW_AGE_S: f64 = 60.0;
/// Subject suffix of stop requests.
pub const STOP_SUBJECT: &str = "control.stop";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrchestratorConfig {
    /// How often the driver looks for due workflows.
    pub tick_interval_ms: u64,
    /// Due workflows visited per tick at most...
    pub due_batch_max: i64,
    /// ...and at once.
    pub visits_concurrent_max: usize,
    /// Unfinished workflows read per page when resuming.
    pub resume_page_rows: i64,
    /// How often a server that is not the driver tries to become it.
    pub leader_poll_ms: u64,
    /// When a command could not be sent, try again after this long; also
    /// how long after an error a workflow is visited again.
    pub resend_after_ms: u64,
    /// How long `start` waits for the agents a plan needs to be healthy.
    pub health_wait_ms: u64,
}

impl Default for OrchestratorConfig {
    fn default() -> Self {
        OrchestratorConfig {
            tick_interval_ms: 100,
            due_batch_max: 100,
            visits_concurrent_max: 16,
            resume_page_rows: 1000,
            leader_poll_ms: 1000,
            resend_after_ms: 1000,
            health_wait_ms: 5000,
        }
    }
}

/// When `update_run` writes the run row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RowWrite {
    Always,
    Lazily,
}

/// Whether an agent can take an operation now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Availability {
    Ready,
    /// Running but not healthy (yet): worth waiting for.
    Unhealthy(String),
    /// No agent here serves it: waiting does not help.
    NotServed,
}

/// The health gate's view of the agents (the agent runtime implements it).
pub trait AgentDirectory: Send + Sync {
    fn availability(&self, agent: &str, operation: &str) -> Availability;
}

/// What `start` asks for.
#[derive(Debug, Clone)]
pub struct StartRequest {
    pub plan: Plan,
    pub priority: Priority,
    pub identity: WorkflowIdentity,
}

/// How a new workflow is named.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WorkflowIdentity {
    /// A fresh id (UUIDv7) the caller made: nothing can have it yet.
    New(Uuid),
    /// An idempotency key: the same key always names the same workflow, so
    /// a retried request returns the workflow the first one started.
    Key(String),
    /// An id the caller derives (a schedule's firing); like a key,
    /// starting it again returns the workflow already started.
    Derived(Uuid),
}

impl WorkflowIdentity {
    pub fn new_workflow() -> WorkflowIdentity {
        WorkflowIdentity::New(Uuid::now_v7())
    }

    pub fn workflow_id(&self) -> Uuid {
        match self {
            WorkflowIdentity::New(id) | WorkflowIdentity::Derived(id) => *id,
            WorkflowIdentity::Key(key) => Uuid::new_v5(&IDEMPOTENCY_NAMESPACE, key.as_bytes()),
        }
    }

    /// What names it in an idempotency conflict; none for a new one.
    fn key(&self) -> Option<String> {
        match self {
            WorkflowIdentity::New(_) => None,
            WorkflowIdentity::Key(key) => Some(key.clone()),
            WorkflowIdentity::Derived(id) => Some(id.to_string()),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Started {
    pub workflow_id: Uuid,
    /// False when the idempotency key named a workflow already started.
    pub created: bool,
    pub state: WorkflowState,
    /// The stream version `state` is at.
    pub version: u64,
}

#[derive(Clone)]
pub struct Orchestrator {
    inner: Arc<Inner>,
}

struct Inner {
    store: WorkflowStore,
    pool: PgPool,
    nats: async_nats::Client,
    js: jetstream::Context,
    subjects: RelayConfig,
    agents: Arc<dyn AgentDirectory>,
    config: OrchestratorConfig,
    /// Requests waiting for a workflow to finish on this server.
    waiters: std::sync::Mutex<Waiters>,
}

type Waiters = HashMap<Uuid, Vec<oneshot::Sender<(WorkflowState, u64)>>>;

fn priority_rank(priority: Priority) -> i16 {
    match priority {
        Priority::Low => 0,
        Priority::Normal => 1,
        Priority::High => 2,
    }
}

impl Orchestrator {
    pub fn new(
        store: WorkflowStore,
        pool: PgPool,
        nats: async_nats::Client,
        subjects: RelayConfig,
        agents: Arc<dyn AgentDirectory>,
        config: OrchestratorConfig,
    ) -> Orchestrator {
        let js = jetstream::new(nats.clone());
        Orchestrator {
            inner: Arc::new(Inner {
                store,
                pool,
                nats,
                js,
                subjects,
                agents,
                config,
                waiters: std::sync::Mutex::new(HashMap::new()),
            }),
        }
    }

    pub fn store(&self) -> &WorkflowStore {
        &self.inner.store
    }

    /// Starts a workflow once its agents are ready (the health gate), and
    /// sends its first task commands.
    pub async fn start(&self, request: StartRequest) -> Result<Started, SagaError> {
        let workflow_id = request.identity.workflow_id();
        let key = request.identity.key();
        if let Some(key) = &key
            && let Some(started) = self.already_started(workflow_id, key, &request.plan).await?
        {
            return Ok(started);
        }
        self.wait_for_agents(&request.plan).await?;
        sqlx::query(RUN_INSERT)
            .bind(workflow_id)
            .bind(priority_rank(request.priority))
            .execute(&self.inner.pool)
            .await?;
        let command = WorkflowCommand::Start {
            workflow_id: workflow_id.to_string(),
            plan: request.plan.clone(),
            priority: request.priority,
        };
        if key.is_none() {
            // A fresh id: no need to read a stream that cannot exist.
            self.inner.store.assume_new(&workflow_id.to_string());
        }
        match self.record(workflow_id, command).await {
            Ok(executed) => Ok(Started {
                workflow_id,
                created: true,
                state: executed.state,
                version: executed.version,
            }),
            // Two requests with one key at once: the other one started it.
            Err(SagaError::Workflow(domain::workflow::WorkflowError::AlreadyStarted(_))) if key.is_some() => {
                let key = key.as_deref().unwrap_or_default();
                self.already_started(workflow_id, key, &request.plan)
                    .await?
                    .ok_or_else(|| SagaError::workflow_not_found(workflow_id))
            }
            Err(other) => Err(other),
        }
    }

    /// The workflow `key` already started, when it did; refused when it was
    /// started with another plan (the key was reused for another request).
    async fn already_started(
        &self,
        workflow_id: Uuid,
        key: &str,
        plan: &Plan,
    ) -> Result<Option<Started>, SagaError> {
        let (state, version) = self.inner.store.load(&workflow_id.to_string()).await?;
        if version == 0 {
            return Ok(None);
        }
        if state.plan.as_ref() != Some(plan) {
            return Err(SagaError::IdempotencyConflict {
                key: key.to_owned(),
                workflow_id,
            });
        }
        Ok(Some(Started {
            workflow_id,
            created: false,
            state,
            version,
        }))
    }

    /// The health gate: every agent the plan needs (for its tasks and their
    /// compensations) must be ready; waits for unhealthy ones (bounded).
    async fn wait_for_agents(&self, plan: &Plan) -> Result<(), SagaError> {
        let mut needed = BTreeSet::new();
        for task in &plan.tasks {
            needed.insert((task.agent.as_str(), task.operation.as_str()));
            if let Some(compensation) = &task.compensation {
                needed.insert((task.agent.as_str(), compensation.operation.as_str()));
            }
        }
        let wait_until =
            tokio::time::Instant::now() + Duration::from_millis(self.inner.config.health_wait_ms);
        loop {
            let mut unhealthy = None;
            for &(agent, operation) in &needed {
                match self.inner.agents.availability(agent, operation) {
                    Availability::Ready => {}
                    Availability::NotServed => {
                        return Err(SagaError::NotServed {
                            agent: agent.to_owned(),
                            operation: operation.to_owned(),
                        });
                    }
                    Availability::Unhealthy(why) => {
                        unhealthy = Some((agent, why));
                        break;
                    }
                }
            }
            let Some((agent, why)) = unhealthy else {
                return Ok(());
            };
            if tokio::time::Instant::now() >= wait_until {
                return Err(SagaError::Unhealthy {
                    agent: agent.to_owned(),
                    why,
                    waited_ms: self.inner.config.health_wait_ms,
                });
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Records `command` for the workflow and dispatches what follows.
    pub async fn record(&self, workflow_id: Uuid, command: WorkflowCommand) -> Result<Executed, SagaError> {
        let executed = self
            .inner
            .store
            .execute(&workflow_id.to_string(), command, workflow_clock)
            .await?;
        if !executed.events.is_empty() {
            let sent = self.dispatch(&executed).await;
            if executed.state.status.is_final() {
                self.announce_finished(workflow_id, &executed);
            }
            self.update_run(workflow_id, &executed, !sent, RowWrite::Lazily)
                .await?;
        }
        Ok(executed)
    }

    /// Resolves with the workflow's final state if this server records it
    /// (a waiting `Execute` also follows the stream, for workflows that
    /// another server finishes). Call `stop_waiting` when done waiting.
    pub fn when_finished_here(&self, workflow_id: Uuid) -> oneshot::Receiver<(WorkflowState, u64)> {
        let (sender, receiver) = oneshot::channel();
        self.waiters().entry(workflow_id).or_default().push(sender);
        receiver
    }

    /// Drops the waiters of `workflow_id` whose receiver is gone.
    pub fn stop_waiting(&self, workflow_id: Uuid) {
        let mut waiters = self.waiters();
        if let Some(senders) = waiters.get_mut(&workflow_id) {
            senders.retain(|s| !s.is_closed());
            if senders.is_empty() {
                waiters.remove(&workflow_id);
            }
        }
    }

    fn announce_finished(&self, workflow_id: Uuid, executed: &Executed) {
        let Some(senders) = self.waiters().remove(&workflow_id) else {
            return;
        };
        for sender in senders {
            let _ = sender.send((executed.state.clone(), executed.version));
        }
    }

    fn waiters(&self) -> std::sync::MutexGuard<'_, Waiters> {
        self.inner.waiters.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub async fn cancel(&self, workflow_id: Uuid, reason: String) -> Result<Executed, SagaError> {
        self.record(workflow_id, WorkflowCommand::Cancel { reason }).await
    }

    /// Sends the commands and stop requests the new events ask for.
    /// Returns false when something could not be sent (the driver resends).
    async fn dispatch(&self, executed: &Executed) -> bool {
        let mut commands = Vec::new();
        let mut sent = true;
        for event in &executed.events {
            let state = &executed.state;
            match event {
                WorkflowEvent::TaskScheduled(e) => {
                    commands.extend(state.outstanding_command(&e.task_id, TaskKind::Run, e.attempt));
                }
                WorkflowEvent::CompensationStarted(e) => {
                    let attempt = state
                        .plan
                        .as_ref()
                        .and_then(|p| p.task(&e.task_id))
                        .map(|(i, _)| state.tasks[i].attempt)
                        .unwrap_or(1);
                    commands.extend(state.outstanding_command(&e.task_id, TaskKind::Compensate, attempt));
                }
                WorkflowEvent::WorkflowCancelled(e) if !e.running_tasks.is_empty() => {
                    let stop = StopRequest {
                        workflow_id: e.workflow_id.clone(),
                        task_ids: e.running_tasks.clone(),
                        reason: e.reason.clone(),
                    };
                    if let Err(error) = self.send_stop(stop).await {
                        tracing::warn!(%error, workflow_id = %state.workflow_id, "cannot send a stop request");
                        sent = false;
                    }
                }
                _ => {}
            }
        }
        self.send_all(&commands).await && sent
    }

    /// Sends commands all at once (parallel tasks start together) and
    /// reports whether every one was acknowledged.
    async fn send_all(&self, commands: &[TaskCommand]) -> bool {
        let outcomes = futures_util::future::join_all(commands.iter().map(|c| self.send(c))).await;
        let mut sent = true;
        for (command, outcome) in commands.iter().zip(outcomes) {
            if let Err(error) = outcome {
                tracing::warn!(%error, workflow_id = %command.workflow_id, task = %command.task_id, "cannot send a task command; the driver resends");
                sent = false;
            }
        }
        sent
    }

    async fn send(&self, command: &TaskCommand) -> Result<(), SagaError> {
        let payload = serde_json::to_vec(command).map_err(|e| SagaError::Nats(e.to_string()))?;
        relay::publish_task(
            &self.inner.js,
            &self.inner.subjects,
            &command.agent,
            &command.operation,
            &command.message_id(),
            payload.into(),
        )
        .await
        .map_err(|e| SagaError::Nats(e.to_string()))?;
        metrics::counter!("dbswarm_workflow_commands_sent_total").increment(1);
        Ok(())
    }

    async fn send_stop(&self, stop: StopRequest) -> Result<(), SagaError> {
        let payload = serde_json::to_vec(&stop).map_err(|e| SagaError::Nats(e.to_string()))?;
        let subject = format!("{}.{STOP_SUBJECT}", self.inner.subjects.subject_prefix);
        self.inner
            .nats
            .publish(subject, payload.into())
            .await
            .map_err(|e| SagaError::Nats(e.to_string()))
    }

    /// Brings the workflow's run row to the recorded state: removed once
    /// the workflow is final, else its next due time. After an ordinary
    /// decision (`Lazily`) the row is written only when something became
    /// due earlier than before: a row due too early only costs a visit
    /// (which brings it up to date), one due too late would miss a
    /// timeout. So the row's due time is never later than the workflow's.
    async fn update_run(
        &self,
        workflow_id: Uuid,
        executed: &Executed,
        resend: bool,
        write: RowWrite,
    ) -> Result<(), SagaError> {
        if executed.state.status.is_final() {
            sqlx::query(RUN_DELETE)
                .bind(workflow_id)
                .execute(&self.inner.pool)
                .await?;
            return Ok(());
        }
        let mut next_due_ms = executed.state.next_due_ms();
        let earlier = match (next_due_ms, executed.previous.next_due_ms()) {
            (Some(next), Some(before)) => next < before,
            (next, before) => next != before,
        };
        if write == RowWrite::Lazily && !resend && !earlier {
            return Ok(());
        }
        if resend {
            let soon = now_ms() + self.inner.config.resend_after_ms;
            next_due_ms = Some(next_due_ms.map_or(soon, |d| d.min(soon)));
        }
        sqlx::query(RUN_UPDATE)
            .bind(workflow_id)
            .bind(next_due_ms.map(|d| d as i64))
            .bind(executed.version as i64)
            .bind(resend)
            .execute(&self.inner.pool)
            .await?;
        Ok(())
    }

    /// Visits one workflow: times out and retries what is due, and resends
    /// the outstanding commands when asked to or when the run row is behind
    /// the stream (a crash between an append and its dispatch).
    async fn visit(
        &self,
        workflow_id: Uuid,
        row_version: u64,
        resend: bool,
        row_age_s: f64,
    ) -> Result<(), SagaError> {
        let executed = self
            .inner
            .store
            .execute(&workflow_id.to_string(), WorkflowCommand::Tick, workflow_clock)
            .await;
        let executed = match executed {
            Err(SagaError::NotFound { .. }) => {
                if row_age_s > ORPHAN_ROW_AGE_S {
                    sqlx::query(RUN_DELETE)
                        .bind(workflow_id)
                        .execute(&self.inner.pool)
                        .await?;
                }
                return Ok(());
            }
            other => other?,
        };
        let version_before = executed.version - executed.events.len() as u64;
        let mut sent = self.dispatch(&executed).await;
        if resend || row_version < version_before {
            sent &= self.send_all(&executed.state.outstanding_commands()).await;
        }
        self.update_run(workflow_id, &executed, !sent, RowWrite::Always)
            .await
    }

    /// Runs the driver until `stop` turns true: waits to hold the driver
    /// lock, resumes every unfinished workflow, then visits due ones.
    pub async fn run_driver(self, stop: watch::Receiver<bool>) {
        if let Err(error) = ensure_tasks_stream(&self.inner.js, &self.inner.subjects).await {
            tracing::warn!(%error, "cannot check the tasks stream; the driver tries again as it runs");
        }
        let poll = Duration::from_millis(self.inner.config.leader_poll_ms);
        let this = &self;
        leader::run_terms(
            stop,
            move |mut stop| async move { this.drive(&mut stop).await },
            |driven| {
                if let Err(error) = driven {
                    metrics::gauge!("dbswarm_workflow_driver").set(0.0);
                    tracing::warn!(%error, "workflow driver failed; retrying");
                }
                poll
            },
        )
        .await;
    }

    async fn drive(&self, stop: &mut watch::Receiver<bool>) -> Result<(), SagaError> {
        let config = &self.inner.config;
        let poll = Duration::from_millis(config.leader_poll_ms);
        let Some(mut leadership) =
            leader::acquire(&self.inner.pool, DRIVER_LOCK_KEY, poll, stop, || {}).await?
        else {
            return Ok(());
        };
        metrics::gauge!("dbswarm_workflow_driver").set(1.0);
        // The leader makes sure of the tasks stream again (as the relay's
        // leader did while it created it): the check at start may have failed.
        if let Err(error) = ensure_tasks_stream(&self.inner.js, &self.inner.subjects).await {
            tracing::warn!(%error, "cannot check the tasks stream; commands are sent anyway");
        }
        tracing::info!("workflow driver: resuming unfinished workflows");
        let resumed = self.resume_all().await?;
        tracing::info!(resumed, "workflow driver: resumed");
        let mut last_lock_check = tokio::time::Instant::now();
        loop {
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(config.tick_interval_ms)) => {}
                _ = leader::stopping(stop) => {
                    leadership.release().await;
                    metrics::gauge!("dbswarm_workflow_driver").set(0.0);
                    return Ok(());
                }
            }
            self.visit_due().await?;
            if last_lock_check.elapsed() >= poll {
                leadership.check().await?;
                last_lock_check = tokio::time::Instant::now();
            }
        }
    }

    /// Visits every unfinished workflow, resending its outstanding commands.
    async fn resume_all(&self) -> Result<usize, SagaError> {
        let mut after = Uuid::nil();
        let mut resumed = 0;
        loop {
            let page: Vec<(Uuid, f64)> = sqlx::query_as(RUNS_PAGE)
                .bind(after)
                .bind(self.inner.config.resume_page_rows)
                .fetch_all(&self.inner.pool)
                .await?;
            let Some(&(last, _)) = page.last() else {
                return Ok(resumed);
            };
            after = last;
            resumed += page.len();
            self.visit_all(page.into_iter().map(|(id, age_s)| (id, 0, true, age_s)))
                .await;
        }
    }

    async fn visit_due(&self) -> Result<(), SagaError> {
        let due: Vec<(Uuid, i64, bool, f64)> = sqlx::query_as(RUNS_DUE)
            .bind(now_ms() as i64)
            .bind(self.inner.config.due_batch_max)
            .fetch_all(&self.inner.pool)
            .await?;
        self.visit_all(
            due.into_iter()
                .map(|(id, version, resend, age_s)| (id, version.max(0) as u64, resend, age_s)),
        )
        .await;
        Ok(())
    }

    async fn visit_all(&self, visits: impl Iterator<Item = (Uuid, u64, bool, f64)>) {
        futures_util::stream::iter(visits)
            .for_each_concurrent(self.inner.config.visits_concurrent_max, |(id, version, resend, age_s)| async move {
                if let Err(error) = self.visit(id, version, resend, age_s).await {
                    tracing::warn!(%error, workflow_id = %id, "cannot move the workflow on; trying again later");
                    self.postpone(id).await;
                }
            })
            .await;
    }

    /// After a failed visit: not again before `resend_after_ms`.
    async fn postpone(&self, workflow_id: Uuid) {
        let due = (now_ms() + self.inner.config.resend_after_ms) as i64;
        let postponed = sqlx::query(RUN_POSTPONE)
            .bind(workflow_id)
            .bind(due)
            .execute(&self.inner.pool)
            .await;
        if let Err(error) = postponed {
            tracing::warn!(%error, %workflow_id, "cannot postpone the workflow");
        }
    }

    /// Called by an agent before it works on `command`: records that the
    /// attempt started and says whether it is still what the workflow waits
    /// for. False for a stale command (a duplicate, an attempt that timed
    /// out, a cancelled workflow): the agent drops it without working.
    ///
    /// An attempt that already started is worked on again only when its
    /// command is `redelivered` (JetStream delivers it again because the
    /// agent that started it died); a fresh message for it is a resend by
    /// the driver while it runs elsewhere, and is dropped.
    pub async fn begin(&self, command: &TaskCommand, redelivered: bool) -> Result<bool, SagaError> {
        let workflow_id = parse_workflow_id(&command.workflow_id)?;
        match command.kind {
            TaskKind::Run => {
                let started = WorkflowCommand::TaskStarted {
                    task_id: command.task_id.clone(),
                    attempt: command.attempt,
                };
                let executed = self.record(workflow_id, started).await?;
                if !executed.events.is_empty() {
                    return Ok(true);
                }
                let running = executed
                    .state
                    .outstanding_command(&command.task_id, command.kind, command.attempt)
                    .is_some();
                Ok(running && redelivered)
            }
            TaskKind::Compensate => {
                let (state, _) = self.inner.store.load(&workflow_id.to_string()).await?;
                Ok(state
                    .outstanding_command(&command.task_id, command.kind, command.attempt)
                    .is_some())
            }
        }
    }

    /// Called by an agent when it finished `command`.
    pub async fn finish(
        &self,
        command: &TaskCommand,
        outcome: Result<Value, OperationError>,
    ) -> Result<Executed, SagaError> {
        let workflow_id = parse_workflow_id(&command.workflow_id)?;
        let (task_id, attempt) = (command.task_id.clone(), command.attempt);
        let recorded = match (command.kind, outcome) {
            (TaskKind::Run, Ok(result)) => WorkflowCommand::TaskSucceeded {
                task_id,
                attempt,
                result,
            },
            (TaskKind::Run, Err(error)) => WorkflowCommand::TaskFailed {
                task_id,
                attempt,
                error,
            },
            (TaskKind::Compensate, outcome) => WorkflowCommand::CompensationFinished {
                task_id,
                ok: outcome.is_ok(),
                error: outcome.err().map(|e| e.message),
            },
        };
        self.record(workflow_id, recorded).await
    }

    /// Called by an agent to report progress on long work.
    pub async fn progress(
        &self,
        command: &TaskCommand,
        percent: f64,
        message: String,
    ) -> Result<(), SagaError> {
        if command.kind != TaskKind::Run {
            return Ok(());
        }
        let workflow_id = parse_workflow_id(&command.workflow_id)?;
        let progressed = WorkflowCommand::TaskProgressed {
            task_id: command.task_id.clone(),
            attempt: command.attempt,
            percent,
            message,
        };
        self.record(workflow_id, progressed).await.map(|_| ())
    }
}

fn parse_workflow_id(text: &str) -> Result<Uuid, SagaError> {
    Uuid::parse_str(text).map_err(|e| SagaError::Corrupt {
        stream: format!("task command for workflow {text}"),
        why: format!("the workflow id is not a UUID: {e}"),
    })
}
