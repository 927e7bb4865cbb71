//! Workflows as event-sourced sagas: the workflow and schedule stores (the
//! pure aggregates of `domain::workflow`, on the event store's aggregate
//! store), the orchestrator that runs them, the driver, the scheduler, and
//! the JetStream work queue of task commands.
//!
//! A **plan** is validated against the catalogue derived from the agents'
//! operations, then `Execute` passes the health gate (this server's agent
//! directory serves each operation and the agent is ready, waited for up to
//! `workflow_health_wait_ms`). A **workflow** lives on stream
//! `workflow-<id>` (UUIDv7, or UUIDv5 of an idempotency key, or of a
//! schedule and due time). Whoever records its events dispatches their
//! effects at once: a command per `TaskScheduled`/`CompensationStarted` on
//! the tasks stream (subject `<prefix>.task.<agent>.<operation>`, message
//! id `<workflow>/<task>/<attempt>/<run|compensate>`, so a resend within
//! the duplicate window is dropped), a stop request on
//! `<prefix>.control.stop` for a cancellation. An outcome is recorded only
//! for the attempt the workflow waits on; a failure is retried only when
//! its code is retryable and the plan allows another attempt.
//!
//! The store keeps each live aggregate's last state in memory (bounded), so
//! a command usually costs one append and no read; commands to one
//! aggregate on one server are decided in arrival order in batches and
//! appended together. `workflow_runs` indexes unfinished workflows with the
//! version each row was written from and when it is next due; the
//! **driver** (one leader per database) ticks due workflows every
//! `workflow_tick_interval_ms` (timeouts, due retries), resends the
//! commands of a workflow whose row is behind its stream, and on taking
//! over visits every unfinished workflow. **Schedules** (stream
//! `schedule-<id>`, index `schedule_runs`) are fired by the scheduler (one
//! leader per database): cron in UTC; a run missed by more than a minute is
//! skipped (recorded) or caught up once, by policy; the firing's workflow
//! id is derived from the schedule and due time, so a firing recorded or
//! started twice is one workflow.

mod orchestrator;
mod scheduler;
mod store;
mod tasks;

pub use orchestrator::{
    AgentDirectory, Availability, DRIVER_LOCK_KEY, Orchestrator, OrchestratorConfig, STOP_SUBJECT,
    StartRequest, Started, WorkflowIdentity,
};
pub use scheduler::{NewSchedule, SCHEDULER_LOCK_KEY, ScheduleExecuted, Scheduler, SchedulerConfig};
pub use store::{
    SagaError, Schedule, ScheduleStore, Workflow, WorkflowExecuted, WorkflowStore, workflow_stream,
};
pub use tasks::ensure_tasks_stream;
