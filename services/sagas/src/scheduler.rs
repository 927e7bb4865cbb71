//! Schedules: recurring workflows on cron expressions (UTC).
//!
//! A schedule is an aggregate (stream `schedule-<id>`, decided by
//! `domain::workflow::schedule`). One server at a time fires schedules:
//! the holder of the advisory lock [`SCHEDULER_LOCK_KEY`]. It visits the
//! schedules that are due (`schedule_runs`), records `ScheduleFired` (or
//! `ScheduleRunSkipped`, by the missed-run policy) and starts the
//! workflow, whose id is derived from the schedule and the due time. Two
//! schedulers that both think they lead still fire once: the firing is
//! appended at the version read, and the loser decides again and finds
//! nothing due; a workflow started twice under one id is one workflow.

use std::time::Duration;

use domain::workflow::schedule::{MissedRunPolicy, ScheduleCommand, ScheduleEvent, ScheduleState};
use domain::workflow::{Plan, Priority};
use event_store::Executed;
use event_store::clock::now_ms;
use event_store::leader;
use sqlx::PgPool;
use tokio::sync::watch;
use uuid::Uuid;

use crate::orchestrator::{Orchestrator, StartRequest, WorkflowIdentity};
use crate::store::{SagaError, ScheduleStore};

const SCHEDULE_INSERT: &str = include_str!("sql/schedule_insert.sql");
const SCHEDULE_UPDATE: &str = include_str!("sql/schedule_update.sql");
const SCHEDULE_DELETE: &str = include_str!("sql/schedule_delete.sql");
const SCHEDULES_DUE: &str = include_str!("sql/schedules_due.sql");
const SCHEDULES_PAGE: &str = include_str!("sql/schedules_page.sql");

/// `pg_try_advisory_lock` key of the scheduler ("dbswarmS").
pub const SCHEDULER_LOCK_KEY: i64 = 0x6462_7377_6172_6d53;
/// A row whose stream never got its first event is removed after this long.
const ORPHAN_ROW_AGE_S: f64 = 60.0;
pub const SCHEDULES_LISTED_MAX: i64 = 1000;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SchedulerConfig {
    /// How often the scheduler looks for due schedules.
    pub tick_interval_ms: u64,
    /// Due schedules fired per tick at most.
    pub due_batch_max: i64,
    /// How often every schedule's row is re-read from its stream (and a
    /// firing whose workflow did not start is started).
    pub resync_interval_ms: u64,
    /// How often a server that is not the scheduler tries to become it.
    pub leader_poll_ms: u64,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        SchedulerConfig {
            tick_interval_ms: 1000,
            due_batch_max: 100,
            resync_interval_ms: 60_000,
            leader_poll_ms: 1000,
        }
    }
}

/// What a new schedule runs, and when.
#[derive(Debug, Clone)]
pub struct NewSchedule {
    /// Chosen by the caller (idempotent creation) or generated.
    pub schedule_id: Option<String>,
    pub name: String,
    pub cron: String,
    pub plan: Plan,
    pub priority: Priority,
    pub policy: MissedRunPolicy,
}

pub type ScheduleExecuted = Executed<ScheduleEvent, ScheduleState>;

#[derive(Clone)]
pub struct Scheduler {
    store: ScheduleStore,
    pool: PgPool,
    orchestrator: Orchestrator,
    config: SchedulerConfig,
}

impl Scheduler {
    pub fn new(
        store: ScheduleStore,
        pool: PgPool,
        orchestrator: Orchestrator,
        config: SchedulerConfig,
    ) -> Self {
        Scheduler {
            store,
            pool,
            orchestrator,
            config,
        }
    }

    pub async fn create(&self, new: NewSchedule) -> Result<ScheduleExecuted, SagaError> {
        let id = new.schedule_id.unwrap_or_else(|| Uuid::now_v7().to_string());
        let command = ScheduleCommand::Create {
            schedule_id: id.clone(),
            name: new.name,
            cron: new.cron,
            plan: new.plan,
            priority: new.priority,
            policy: new.policy,
        };
        // Checked before the row is written: a bad id never gets one.
        domain::workflow::schedule::decide(&ScheduleState::default(), command.clone(), now_ms())?;
        sqlx::query(SCHEDULE_INSERT).bind(&id).execute(&self.pool).await?;
        self.execute(&id, command).await
    }

    /// Pause, Resume, Update or Delete.
    pub async fn execute(&self, id: &str, command: ScheduleCommand) -> Result<ScheduleExecuted, SagaError> {
        let executed = self.store.execute(id, command, now_ms).await?;
        if !executed.events.is_empty() {
            self.sync_row(id, &executed.state, executed.version).await?;
        }
        Ok(executed)
    }

    pub async fn get(&self, id: &str) -> Result<(ScheduleState, u64), SagaError> {
        let (state, version) = self.store.load(id).await?;
        if version == 0 {
            return Err(SagaError::NotFound {
                kind: "schedule",
                id: id.to_owned(),
            });
        }
        Ok((state, version))
    }

    /// Schedules that are not deleted, by id (at most `SCHEDULES_LISTED_MAX`).
    pub async fn list(&self) -> Result<Vec<(ScheduleState, u64)>, SagaError> {
        let rows: Vec<(String, f64)> = sqlx::query_as(SCHEDULES_PAGE)
            .bind("")
            .bind(SCHEDULES_LISTED_MAX)
            .fetch_all(&self.pool)
            .await?;
        let mut schedules = Vec::with_capacity(rows.len());
        for (id, _) in rows {
            let (state, version) = self.store.load(&id).await?;
            if version > 0 && !state.deleted {
                schedules.push((state, version));
            }
        }
        Ok(schedules)
    }

    async fn sync_row(&self, id: &str, state: &ScheduleState, version: u64) -> Result<(), SagaError> {
        if state.deleted {
            sqlx::query(SCHEDULE_DELETE).bind(id).execute(&self.pool).await?;
            return Ok(());
        }
        let next_due_ms = state.is_active().then_some(state.next_due_ms).flatten();
        sqlx::query(SCHEDULE_UPDATE)
            .bind(id)
            .bind(next_due_ms.map(|d| d as i64))
            .bind(version as i64)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Fires one schedule if it is due and starts the workflow it fired.
    async fn fire(&self, id: &str) -> Result<(), SagaError> {
        let executed = self.store.execute(id, ScheduleCommand::Fire, now_ms).await?;
        for event in &executed.events {
            match event {
                ScheduleEvent::ScheduleFired(fired) => {
                    metrics::counter!("dbswarm_schedule_firings_total").increment(1);
                    tracing::info!(schedule_id = id, workflow_id = %fired.workflow_id, caught_up = fired.caught_up, "schedule fired");
                    self.start(fired.workflow_id, fired.plan.clone(), fired.priority)
                        .await;
                }
                ScheduleEvent::ScheduleRunSkipped(skipped) => {
                    metrics::counter!("dbswarm_schedule_runs_skipped_total").increment(1);
                    tracing::warn!(schedule_id = id, reason = %skipped.reason, "scheduled run skipped");
                }
                _ => {}
            }
        }
        self.sync_row(id, &executed.state, executed.version).await
    }

    /// Starts a fired workflow. One that cannot start (an agent is not
    /// healthy) is logged; the resync starts it later if it can by then.
    async fn start(&self, workflow_id: Uuid, plan: Plan, priority: Priority) {
        let request = StartRequest {
            plan,
            priority,
            identity: WorkflowIdentity::Derived(workflow_id),
        };
        if let Err(error) = self.orchestrator.start(request).await {
            metrics::counter!("dbswarm_schedule_start_failures_total").increment(1);
            tracing::warn!(%error, %workflow_id, "cannot start a scheduled workflow; trying again at the next resync");
        }
    }

    /// Re-reads every schedule: rows follow their streams, orphan rows go,
    /// and the last firing's workflow is started if it never was.
    async fn resync_all(&self) -> Result<(), SagaError> {
        let mut after = String::new();
        loop {
            let page: Vec<(String, f64)> = sqlx::query_as(SCHEDULES_PAGE)
                .bind(&after)
                .bind(SCHEDULES_LISTED_MAX)
                .fetch_all(&self.pool)
                .await?;
            let Some((last, _)) = page.last() else {
                return Ok(());
            };
            after = last.clone();
            for (id, age_s) in page {
                let (state, version) = self.store.load(&id).await?;
                if version == 0 {
                    if age_s > ORPHAN_ROW_AGE_S {
                        sqlx::query(SCHEDULE_DELETE).bind(&id).execute(&self.pool).await?;
                    }
                    continue;
                }
                if let (Some(workflow_id), Some(plan)) = (state.last_workflow_id, state.plan.clone())
                    && self.orchestrator.store().load(&workflow_id.to_string()).await?.1 == 0
                {
                    self.start(workflow_id, plan, state.priority).await;
                }
                self.sync_row(&id, &state, version).await?;
            }
        }
    }

    async fn fire_due(&self) -> Result<(), SagaError> {
        let due: Vec<(String,)> = sqlx::query_as(SCHEDULES_DUE)
            .bind(now_ms() as i64)
            .bind(self.config.due_batch_max)
            .fetch_all(&self.pool)
            .await?;
        for (id,) in due {
            if let Err(error) = self.fire(&id).await {
                tracing::warn!(%error, schedule_id = %id, "cannot fire the schedule; trying again");
            }
        }
        Ok(())
    }

    /// Runs until `stop` turns true: waits to hold the scheduler lock, then
    /// fires what is due.
    pub async fn run(self, stop: watch::Receiver<bool>) {
        let poll = Duration::from_millis(self.config.leader_poll_ms);
        let this = &self;
        leader::run_terms(
            stop,
            move |mut stop| async move { this.lead(&mut stop).await },
            |led| {
                if let Err(error) = led {
                    metrics::gauge!("dbswarm_scheduler_leader").set(0.0);
                    tracing::warn!(%error, "scheduler failed; retrying");
                }
                poll
            },
        )
        .await;
    }

    async fn lead(&self, stop: &mut watch::Receiver<bool>) -> Result<(), SagaError> {
        let poll = Duration::from_millis(self.config.leader_poll_ms);
        let Some(mut leadership) = leader::acquire(&self.pool, SCHEDULER_LOCK_KEY, poll, stop, || {}).await?
        else {
            return Ok(());
        };
        metrics::gauge!("dbswarm_scheduler_leader").set(1.0);
        tracing::info!("scheduler leadership acquired");
        let resync_every = Duration::from_millis(self.config.resync_interval_ms);
        let mut last_resync: Option<tokio::time::Instant> = None;
        loop {
            if last_resync.is_none_or(|t| t.elapsed() >= resync_every) {
                self.resync_all().await?;
                last_resync = Some(tokio::time::Instant::now());
            }
            leadership.check().await?;
            self.fire_due().await?;
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(self.config.tick_interval_ms)) => {}
                _ = leader::stopping(stop) => {
                    leadership.release().await;
                    metrics::gauge!("dbswarm_scheduler_leader").set(0.0);
                    return Ok(());
                }
            }
        }
    }
}
