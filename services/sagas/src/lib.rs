//! Workflows as event-sourced sagas: the workflow store (a workflow's
//! events in its stream, decided by the pure aggregate in `domain`) and
//! the orchestrator that runs them (task commands to agents, outcomes
//! back, the driver that times out, retries and resumes after a crash).

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
