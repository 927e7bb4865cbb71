//! Workflows as event-sourced sagas (issue 5). Today: the workflow store,
//! which loads a workflow from its stream and records what the pure
//! aggregate (`domain::workflow`) decides, under optimistic concurrency.
//! The orchestrator, the agent runtime and the Workflows service build on it.

mod store;

pub use store::{SagaError, WorkflowStore, workflow_stream};
