//! The aggregate store: an aggregate's events live in stream
//! `<kind>-<id>`. `execute` loads the stream, asks the pure aggregate to
//! decide, and appends what it decided at exactly the version it loaded;
//! when another writer got there first it loads again and decides again
//! (bounded). So two servers reacting to one workflow (or firing one
//! schedule) never lose a decision or apply one twice: the aggregates
//! decide nothing for a duplicate.

use std::marker::PhantomData;

use domain::workflow::schedule::{self, ScheduleCommand, ScheduleError, ScheduleEvent, ScheduleState};
use domain::workflow::{Clock, WorkflowCommand, WorkflowError, WorkflowEvent, WorkflowState};
use domain::{
    AppendError, AppendRequest, EventData, EventType, ExpectedVersion, Limits, ProposedEvent, StreamAppend,
    StreamId, ValidationError,
};
use event_store::{Appender, Direction, ReadStreamQuery, Reader, StoreError};
use serde_json::Value;
use uuid::Uuid;

/// Decide-and-append rounds lost to concurrent writers before giving up.
pub const CONFLICT_ATTEMPTS_MAX: u32 = 8;

#[derive(Debug, thiserror::Error)]
pub enum SagaError {
    #[error(transparent)]
    Workflow(#[from] WorkflowError),
    #[error(transparent)]
    Schedule(#[from] ScheduleError),
    #[error("{kind} {id} does not exist")]
    NotFound { kind: &'static str, id: String },
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
    pub fn workflow_not_found(workflow_id: Uuid) -> SagaError {
        SagaError::NotFound {
            kind: "workflow",
            id: workflow_id.to_string(),
        }
    }
}

/// An event-sourced aggregate the store can load and execute commands on.
pub trait Aggregate {
    /// Stream ids are `<KIND>-<id>`; also the word errors use.
    const KIND: &'static str;
    type State: Default + Clone;
    type Event;
    type Command: Clone;
    /// What a decision may depend on besides state and command (the time).
    type Context;
    type Error: Into<SagaError>;

    fn decide(
        state: &Self::State,
        command: Self::Command,
        context: Self::Context,
    ) -> Result<Vec<Self::Event>, Self::Error>;
    fn evolve(state: Self::State, event: &Self::Event) -> Self::State;
    fn event_type(event: &Self::Event) -> &'static str;
    fn data(event: &Self::Event) -> Value;
    fn from_stored(event_type: &str, data: Value) -> Result<Self::Event, String>;
    /// Whether `command` creates the aggregate (allowed on an empty stream).
    fn creates(command: &Self::Command) -> bool;
}

pub struct Workflow;

impl Aggregate for Workflow {
    const KIND: &'static str = "workflow";
    type State = WorkflowState;
    type Event = WorkflowEvent;
    type Command = WorkflowCommand;
    type Context = Clock;
    type Error = WorkflowError;

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
}

/// What `execute` recorded, and the aggregate after it.
#[derive(Debug, Clone)]
pub struct Executed<E, S> {
    pub events: Vec<E>,
    pub state: S,
    /// The stream version `state` is at.
    pub version: u64,
}

pub type WorkflowExecuted = Executed<WorkflowEvent, WorkflowState>;
pub type WorkflowStore = AggregateStore<Workflow>;
pub type ScheduleStore = AggregateStore<Schedule>;

pub struct AggregateStore<A> {
    appender: Appender,
    reader: Reader,
    limits: Limits,
    aggregate: PhantomData<fn() -> A>,
}

impl<A> Clone for AggregateStore<A> {
    fn clone(&self) -> Self {
        AggregateStore {
            appender: self.appender.clone(),
            reader: self.reader.clone(),
            limits: self.limits,
            aggregate: PhantomData,
        }
    }
}

/// The stream of a workflow.
pub fn workflow_stream(workflow_id: Uuid) -> String {
    format!("{}-{workflow_id}", Workflow::KIND)
}

impl<A: Aggregate> AggregateStore<A> {
    pub fn new(appender: Appender, reader: Reader, limits: Limits) -> Self {
        AggregateStore {
            appender,
            reader,
            limits,
            aggregate: PhantomData,
        }
    }

    pub fn stream(id: &str) -> String {
        format!("{}-{id}", A::KIND)
    }

    /// The aggregate's state and the version it was read at (0: no events).
    pub async fn load(&self, id: &str) -> Result<(A::State, u64), SagaError> {
        let stream = Self::stream(id);
        let query = ReadStreamQuery {
            stream_id: StreamId::parse(&stream, &self.limits)?,
            from_version: 1,
            direction: Direction::Forwards,
            limit: None,
        };
        let mut events = match self.reader.read_stream(query).await {
            Ok(events) => events,
            Err(StoreError::StreamNotFound(_)) => return Ok((A::State::default(), 0)),
            Err(other) => return Err(other.into()),
        };
        let corrupt = |why: String| SagaError::Corrupt {
            stream: stream.clone(),
            why,
        };
        let mut state = A::State::default();
        let mut version = 0;
        while let Some(event) = events.recv().await {
            let event = event?;
            let data = match &event.data {
                EventData::Json(text) => serde_json::from_str(text).map_err(|e| corrupt(e.to_string()))?,
                EventData::Binary(_) => return Err(corrupt(format!("event {} is binary", event.event_id))),
            };
            let decoded = A::from_stored(&event.event_type, data).map_err(corrupt)?;
            state = A::evolve(state, &decoded);
            version = event.event_version;
        }
        Ok((state, version))
    }

    /// Decides `command` against the current state and records the events
    /// (none when the command changes nothing, e.g. a duplicate outcome).
    pub async fn execute(
        &self,
        id: &str,
        command: A::Command,
        context: impl Fn() -> A::Context,
    ) -> Result<Executed<A::Event, A::State>, SagaError> {
        for _ in 0..CONFLICT_ATTEMPTS_MAX {
            let (state, version) = self.load(id).await?;
            if version == 0 && !A::creates(&command) {
                return Err(SagaError::NotFound {
                    kind: A::KIND,
                    id: id.to_owned(),
                });
            }
            let events = A::decide(&state, command.clone(), context()).map_err(Into::into)?;
            if events.is_empty() {
                return Ok(Executed {
                    events,
                    state,
                    version,
                });
            }
            let expected = if version == 0 {
                ExpectedVersion::NoStream
            } else {
                ExpectedVersion::Exact(version)
            };
            match self.append(id, expected, &events).await {
                Ok(()) => {
                    let version = version + events.len() as u64;
                    let state = events.iter().fold(state, A::evolve);
                    return Ok(Executed {
                        events,
                        state,
                        version,
                    });
                }
                Err(SagaError::Store(StoreError::Append(AppendError::WrongExpectedVersion { .. }))) => {
                    tracing::debug!(kind = A::KIND, id, "changed meanwhile; deciding again");
                }
                Err(other) => return Err(other),
            }
        }
        Err(SagaError::Contention {
            stream: Self::stream(id),
            attempts: CONFLICT_ATTEMPTS_MAX,
        })
    }

    async fn append(
        &self,
        id: &str,
        expected: ExpectedVersion,
        events: &[A::Event],
    ) -> Result<(), SagaError> {
        let stream_id = StreamId::parse(&Self::stream(id), &self.limits)?;
        // Workflows correlate by their id; so does everything they cause.
        let correlation_id = Uuid::parse_str(id).ok();
        let mut proposed = Vec::with_capacity(events.len());
        for event in events {
            proposed.push(ProposedEvent {
                event_id: Uuid::new_v4(),
                event_type: EventType::parse(A::event_type(event), &self.limits)?,
                data: EventData::json(A::data(event).to_string().into_bytes())?,
                metadata: r#"{"actor":"dbswarm"}"#.to_owned(),
                schema_version: 1,
                correlation_id,
                causation_id: None,
            });
        }
        let request = AppendRequest::new(
            vec![StreamAppend {
                stream_id,
                expected,
                events: proposed,
            }],
            &self.limits,
        )?;
        self.appender.append(request).await?;
        Ok(())
    }
}
