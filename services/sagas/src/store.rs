//! The workflow side's aggregates, kept by the event store's
//! [`AggregateStore`]: workflows (stream `workflow-<id>`) and schedules
//! (stream `schedule-<id>`), decided by the pure aggregates in `domain`.

use domain::Code;
use domain::ValidationError;
use domain::workflow::schedule::{self, ScheduleCommand, ScheduleError, ScheduleEvent, ScheduleState};
use domain::workflow::{Clock, WorkflowCommand, WorkflowError, WorkflowEvent, WorkflowState};
use event_store::{Aggregate, AggregateError, AggregateStore, Executed, StoreError};
use serde_json::Value;
use uuid::Uuid;

#[derive(Debug, thiserror::Error)]
pub enum SagaError {
    #[error(transparent)]
    Workflow(#[from] WorkflowError),
    #[error(transparent)]
    Schedule(#[from] ScheduleError),
    #[error("{kind} {id} does not exist")]
    NotFound { kind: &'static str, id: String },
    /// Another aggregate's refusal, as its own error says it.
    #[error("{0}")]
    Refused(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{stream}: {attempts} attempts lost to concurrent writers; retry")]
    Contention { stream: String, attempts: u32 },
    #[error("{stream} has an event that is not one of its events: {why}")]
    Corrupt { stream: String, why: String },
    #[error("invalid event: {0}")]
    Invalid(#[from] ValidationError),
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    #[error("NATS: {0}")]
    Nats(String),
    #[error("could not record: {0}; retry")]
    Unavailable(String),
    #[error("agent '{agent}' is not healthy after waiting {waited_ms} ms: {why}")]
    Unhealthy {
        agent: String,
        why: String,
        waited_ms: u64,
    },
    #[error("no agent on this server serves {agent}.{operation} yet")]
    NotServed { agent: String, operation: String },
    #[error(
        "idempotency key '{key}' already started workflow {workflow_id} with another plan; use a new key for a new request"
    )]
    IdempotencyConflict { key: String, workflow_id: Uuid },
}

impl SagaError {
    pub fn code(&self) -> Code {
        match self {
            SagaError::Workflow(e) => e.code(),
            SagaError::Schedule(e) => e.code(),
            SagaError::NotFound { .. } => Code::NotFound,
            SagaError::IdempotencyConflict { .. } => Code::AlreadyExists,
            SagaError::Unhealthy { .. } | SagaError::Refused(_) => Code::FailedPrecondition,
            SagaError::NotServed { .. } => Code::Unimplemented,
            SagaError::Contention { .. } => Code::Conflict,
            SagaError::Invalid(_) => Code::InvalidArgument,
            SagaError::Store(e) => e.code(),
            SagaError::Database(e) => event_store::database_code(e),
            SagaError::Nats(_) | SagaError::Unavailable(_) => Code::Unavailable,
            SagaError::Corrupt { .. } => Code::Internal,
        }
    }

    pub fn workflow_not_found(workflow_id: Uuid) -> SagaError {
        SagaError::NotFound {
            kind: "workflow",
            id: workflow_id.to_string(),
        }
    }
}

/// The aggregate store's errors, each as the `SagaError` that says the same.
impl From<AggregateError> for SagaError {
    fn from(error: AggregateError) -> SagaError {
        match error {
            AggregateError::NotFound { kind, id } => SagaError::NotFound { kind, id },
            AggregateError::Refused(why) => SagaError::Refused(why),
            AggregateError::Store(error) => SagaError::Store(error),
            AggregateError::Contention { stream, attempts } => SagaError::Contention { stream, attempts },
            AggregateError::Corrupt { stream, why } => SagaError::Corrupt { stream, why },
            AggregateError::Invalid(error) => SagaError::Invalid(error),
            AggregateError::Unavailable(why) => SagaError::Unavailable(why),
        }
    }
}

pub struct Workflow;

impl Aggregate for Workflow {
    const KIND: &'static str = "workflow";
    type State = WorkflowState;
    type Event = WorkflowEvent;
    type Command = WorkflowCommand;
    type Context = Clock;
    type Error = WorkflowError;
    type Failure = SagaError;

    fn decide(
        state: &WorkflowState,
        command: WorkflowCommand,
        clock: Clock,
    ) -> Result<Vec<WorkflowEvent>, WorkflowError> {
        domain::workflow::decide(state, command, clock)
    }
    fn evolve(state: WorkflowState, event: &WorkflowEvent) -> WorkflowState {
        domain::workflow::evolve(state, event)
    }
    fn event_type(event: &WorkflowEvent) -> &'static str {
        event.event_type()
    }
    fn data(event: &WorkflowEvent) -> Value {
        event.data()
    }
    fn from_stored(event_type: &str, data: Value) -> Result<WorkflowEvent, String> {
        WorkflowEvent::from_stored(event_type, data)
    }
    fn creates(command: &WorkflowCommand) -> bool {
        matches!(command, WorkflowCommand::Start { .. })
    }
    fn live(state: &WorkflowState) -> bool {
        !state.status.is_final()
    }
}

pub struct Schedule;

impl Aggregate for Schedule {
    const KIND: &'static str = "schedule";
    type State = ScheduleState;
    type Event = ScheduleEvent;
    type Command = ScheduleCommand;
    /// Now, ms since the epoch.
    type Context = u64;
    type Error = ScheduleError;
    type Failure = SagaError;

    fn decide(
        state: &ScheduleState,
        command: ScheduleCommand,
        now_ms: u64,
    ) -> Result<Vec<ScheduleEvent>, ScheduleError> {
        schedule::decide(state, command, now_ms)
    }
    fn evolve(state: ScheduleState, event: &ScheduleEvent) -> ScheduleState {
        schedule::evolve(state, event)
    }
    fn event_type(event: &ScheduleEvent) -> &'static str {
        event.event_type()
    }
    fn data(event: &ScheduleEvent) -> Value {
        event.data()
    }
    fn from_stored(event_type: &str, data: Value) -> Result<ScheduleEvent, String> {
        ScheduleEvent::from_stored(event_type, data)
    }
    fn creates(command: &ScheduleCommand) -> bool {
        matches!(command, ScheduleCommand::Create { .. })
    }
    fn live(state: &ScheduleState) -> bool {
        !state.deleted
    }
}

pub type WorkflowExecuted = Executed<WorkflowEvent, WorkflowState>;
pub type WorkflowStore = AggregateStore<Workflow>;
pub type ScheduleStore = AggregateStore<Schedule>;

/// The stream of a workflow.
pub fn workflow_stream(workflow_id: Uuid) -> String {
    WorkflowStore::stream(&workflow_id.to_string())
}
