//! The workflow store: a workflow's events live in stream
//! `workflow-<uuid>`. `execute` loads the stream, asks the aggregate to
//! decide, and appends what it decided at exactly the version it loaded;
//! when another writer got there first it loads again and decides again
//! (bounded). So two servers reacting to outcomes of one workflow never
//! lose one or apply one twice: the aggregate ignores a duplicate outcome.

use domain::workflow::{Clock, WorkflowCommand, WorkflowError, WorkflowEvent, WorkflowState, decide, evolve};
use domain::{
    AppendError, AppendRequest, EventData, EventType, ExpectedVersion, Limits, ProposedEvent, StreamAppend,
    StreamId, ValidationError,
};
use event_store::{Appender, Direction, ReadStreamQuery, Reader, StoreError};
use uuid::Uuid;

/// Decide-and-append rounds lost to concurrent writers before giving up.
pub const CONFLICT_ATTEMPTS_MAX: u32 = 8;

#[derive(Debug, thiserror::Error)]
pub enum SagaError {
    #[error(transparent)]
    Workflow(#[from] WorkflowError),
    #[error("workflow {0} does not exist")]
    NotFound(Uuid),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("workflow {workflow_id}: {attempts} attempts lost to concurrent writers; retry")]
    Contention { workflow_id: Uuid, attempts: u32 },
    #[error("workflow {workflow_id} has an event that is not a workflow event: {why}")]
    Corrupt { workflow_id: Uuid, why: String },
    #[error("invalid workflow event: {0}")]
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

pub fn workflow_stream(workflow_id: Uuid) -> String {
    format!("workflow-{workflow_id}")
}

/// What `execute` recorded, and the workflow after it.
#[derive(Debug, Clone)]
pub struct Executed {
    pub events: Vec<WorkflowEvent>,
    pub state: WorkflowState,
    /// The stream version `state` is at.
    pub version: u64,
}

#[derive(Clone)]
pub struct WorkflowStore {
    appender: Appender,
    reader: Reader,
    limits: Limits,
}

impl WorkflowStore {
    pub fn new(appender: Appender, reader: Reader, limits: Limits) -> WorkflowStore {
        WorkflowStore {
            appender,
            reader,
            limits,
        }
    }

    /// The workflow's state and the version it was read at (0: no events).
    pub async fn load(&self, workflow_id: Uuid) -> Result<(WorkflowState, u64), SagaError> {
        let stream = StreamId::parse(&workflow_stream(workflow_id), &self.limits)?;
        let query = ReadStreamQuery {
            stream_id: stream,
            from_version: 1,
            direction: Direction::Forwards,
            limit: None,
        };
        let mut events = match self.reader.read_stream(query).await {
            Ok(events) => events,
            Err(StoreError::StreamNotFound(_)) => return Ok((WorkflowState::default(), 0)),
            Err(other) => return Err(other.into()),
        };
        let mut state = WorkflowState::default();
        let mut version = 0;
        while let Some(event) = events.recv().await {
            let event = event?;
            let data = match &event.data {
                EventData::Json(text) => serde_json::from_str(text).map_err(|e| SagaError::Corrupt {
                    workflow_id,
                    why: e.to_string(),
                })?,
                EventData::Binary(_) => {
                    return Err(SagaError::Corrupt {
                        workflow_id,
                        why: format!("event {} is binary", event.event_id),
                    });
                }
            };
            let decoded = WorkflowEvent::from_stored(&event.event_type, data)
                .map_err(|why| SagaError::Corrupt { workflow_id, why })?;
            state = evolve(state, &decoded);
            version = event.event_version;
        }
        Ok((state, version))
    }

    /// Decides `command` against the current state and records the events
    /// (none when the command changes nothing, e.g. a duplicate outcome).
    pub async fn execute(
        &self,
        workflow_id: Uuid,
        command: WorkflowCommand,
        clock: impl Fn() -> Clock,
    ) -> Result<Executed, SagaError> {
        for _ in 0..CONFLICT_ATTEMPTS_MAX {
            let (state, version) = self.load(workflow_id).await?;
            let is_start = matches!(command, WorkflowCommand::Start { .. });
            if version == 0 && !is_start {
                return Err(SagaError::NotFound(workflow_id));
            }
            let events = decide(&state, command.clone(), clock())?;
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
            match self.append(workflow_id, expected, &events).await {
                Ok(()) => {
                    let version = version + events.len() as u64;
                    let state = events.iter().fold(state, evolve);
                    return Ok(Executed {
                        events,
                        state,
                        version,
                    });
                }
                Err(SagaError::Store(StoreError::Append(AppendError::WrongExpectedVersion { .. }))) => {
                    tracing::debug!(%workflow_id, "workflow changed meanwhile; deciding again");
                }
                Err(other) => return Err(other),
            }
        }
        Err(SagaError::Contention {
            workflow_id,
            attempts: CONFLICT_ATTEMPTS_MAX,
        })
    }

    async fn append(
        &self,
        workflow_id: Uuid,
        expected: ExpectedVersion,
        events: &[WorkflowEvent],
    ) -> Result<(), SagaError> {
        let stream_id = StreamId::parse(&workflow_stream(workflow_id), &self.limits)?;
        let mut proposed = Vec::with_capacity(events.len());
        for event in events {
            proposed.push(ProposedEvent {
                event_id: Uuid::new_v4(),
                event_type: EventType::parse(event.event_type(), &self.limits)?,
                data: EventData::json(event.data().to_string().into_bytes())?,
                metadata: r#"{"actor":"dbswarm"}"#.to_owned(),
                schema_version: 1,
                correlation_id: Some(workflow_id),
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
