//! Workflows as event-sourced sagas: the workflow store (a workflow's
//! events in its stream, decided by the pure aggregate in `domain`) and
//! the orchestrator that runs them (task commands to agents, outcomes
//! back, the driver that times out, retries and resumes after a crash).

mod orchestrator;
mod store;

pub use orchestrator::{
    AgentDirectory, Availability, DRIVER_LOCK_KEY, Orchestrator, OrchestratorConfig, STOP_SUBJECT,
    StartRequest, Started, clock, now_ms,
};
pub use store::{CONFLICT_ATTEMPTS_MAX, Executed, SagaError, WorkflowStore, workflow_stream};
