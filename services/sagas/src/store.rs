//! The aggregate store: an aggregate's events live in stream
//! `<kind>-<id>`. `execute` loads the stream, asks the pure aggregate to
//! decide, and appends what it decided at exactly the version it loaded;
//! when another writer got there first it loads again and decides again
//! (bounded). So two servers reacting to one workflow (or firing one
//! schedule) never lose a decision or apply one twice: the aggregates
//! decide nothing for a duplicate.

use std::collections::HashMap;
use std::marker::PhantomData;
use std::sync::{Arc, Mutex};

use domain::workflow::schedule::{self, ScheduleCommand, ScheduleError, ScheduleEvent, ScheduleState};
use domain::workflow::{Clock, WorkflowCommand, WorkflowError, WorkflowEvent, WorkflowState};
use domain::{
    AppendError, AppendRequest, Code, EventData, EventType, ExpectedVersion, Limits, ProposedEvent,
    StreamAppend, StreamId, ValidationError,
};
use event_store::{Appender, Direction, ReadStreamQuery, Reader, StoreError};
use serde_json::Value;
use tokio::sync::oneshot;
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

/// The stored data of an event of an enum tagged
/// `#[serde(tag = "event_type", content = "data")]`: its content.
pub fn tagged_event_data<E: serde::Serialize>(event: &E) -> Value {
    let mut tagged = serde_json::to_value(event).unwrap_or_default();
    tagged.get_mut("data").map(Value::take).unwrap_or_default()
}

/// The event of such an enum from its stored type and data.
pub fn tagged_event_from_stored<E: serde::de::DeserializeOwned>(
    event_type: &str,
    data: Value,
) -> Result<E, String> {
    serde_json::from_value(serde_json::json!({"event_type": event_type, "data": data}))
        .map_err(|e| format!("{event_type}: {e}"))
}

/// An event-sourced aggregate the store can load and execute commands on.
pub trait Aggregate: 'static {
    /// Stream ids are `<KIND>-<id>`; also the word errors use.
    const KIND: &'static str;
    type State: Default + Clone + Send + Sync;
    type Event: Send + Sync;
    type Command: Clone + Send + Sync;
    /// What a decision may depend on besides state and command (the time).
    type Context: Copy + Send + Sync;
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
    /// Whether the state is worth keeping in memory (more commands will
    /// come); a finished workflow is not.
    fn live(state: &Self::State) -> bool;
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

/// What one command recorded, or why not.
type Outcome<A> = Result<Executed<<A as Aggregate>::Event, <A as Aggregate>::State>, SagaError>;

/// Commands waiting for their aggregate's batch (see `execute`).
struct Waiting<A: Aggregate> {
    command: A::Command,
    context: A::Context,
    reply: oneshot::Sender<Outcome<A>>,
}

/// Per aggregate with commands in progress on this server: the commands
/// waiting for the next batch. An entry exists while a drain task runs.
type Queues<A> = Mutex<HashMap<String, Vec<Waiting<A>>>>;

/// Commands waiting for one aggregate at most; more are refused (ABORTED).
pub const WAITING_COMMANDS_MAX: usize = 1000;

/// What `execute` recorded, and the aggregate before and after it.
#[derive(Debug, Clone)]
pub struct Executed<E, S> {
    pub events: Vec<E>,
    pub state: S,
    /// The stream version `state` is at.
    pub version: u64,
    /// The state the decision was made on.
    pub previous: S,
}

/// Aggregates kept in memory at most (per store); when full it is emptied.
pub const CACHED_AGGREGATES_MAX: usize = 10_000;

/// The last state this server wrote or read per aggregate, so that a
/// command usually costs one append and no read. Only a hint: a decision
/// on a cached state is appended at the cached version, so a state another
/// server moved on fails the append and is read again; and a cached state
/// that decides nothing (or refuses) is read again before that answer is
/// trusted.
struct StateCache<S> {
    entries: HashMap<String, (S, u64)>,
}

pub type WorkflowExecuted = Executed<WorkflowEvent, WorkflowState>;
pub type WorkflowStore = AggregateStore<Workflow>;
pub type ScheduleStore = AggregateStore<Schedule>;

pub struct AggregateStore<A: Aggregate> {
    appender: Appender,
    reader: Reader,
    limits: Limits,
    cache: Arc<Mutex<StateCache<A::State>>>,
    /// Commands to one aggregate on this server are decided in batches, in
    /// arrival order, each on the state the one before left, and appended
    /// together: they do not race each other to append at one version.
    queues: Arc<Queues<A>>,
    aggregate: PhantomData<fn() -> A>,
}

impl<A: Aggregate> Clone for AggregateStore<A> {
    fn clone(&self) -> Self {
        AggregateStore {
            appender: self.appender.clone(),
            reader: self.reader.clone(),
            limits: self.limits,
            cache: self.cache.clone(),
            queues: self.queues.clone(),
            aggregate: PhantomData,
        }
    }
}

/// The stream of a workflow.
pub fn workflow_stream(workflow_id: Uuid) -> String {
    WorkflowStore::stream(&workflow_id.to_string())
}

impl<A: Aggregate> AggregateStore<A> {
    pub fn new(appender: Appender, reader: Reader, limits: Limits) -> Self {
        AggregateStore {
            appender,
            reader,
            limits,
            cache: Arc::new(Mutex::new(StateCache {
                entries: HashMap::new(),
            })),
            queues: Arc::new(Mutex::new(HashMap::new())),
            aggregate: PhantomData,
        }
    }

    fn cached(&self, id: &str) -> Option<(A::State, u64)> {
        let cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        cache.entries.get(id).cloned()
    }

    fn remember(&self, id: &str, state: &A::State, version: u64) {
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        if !A::live(state) {
            cache.entries.remove(id);
            return;
        }
        if cache.entries.len() >= CACHED_AGGREGATES_MAX && !cache.entries.contains_key(id) {
            cache.entries.clear();
        }
        cache.entries.insert(id.to_owned(), (state.clone(), version));
    }

    /// Tells the store that `id` names an aggregate that has no events
    /// yet, so that its first command need not read the empty stream. (If
    /// it had events after all, the append at version 0 fails and the
    /// stream is read.)
    pub fn assume_new(&self, id: &str) {
        self.remember(id, &A::State::default(), 0);
    }

    fn forget(&self, id: &str) {
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        cache.entries.remove(id);
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
    ///
    /// Commands that arrive for one aggregate while a batch of it is being
    /// appended wait and go together in the next batch: decided one after
    /// the other and appended at once. The batch runs in a task of its
    /// own, so a caller that goes away strands nobody.
    pub async fn execute(
        &self,
        id: &str,
        command: A::Command,
        context: impl Fn() -> A::Context,
    ) -> Result<Executed<A::Event, A::State>, SagaError> {
        let (reply, answer) = oneshot::channel();
        let waiting = Waiting {
            command,
            context: context(),
            reply,
        };
        let start_draining = {
            let mut queues = self.queues.lock().unwrap_or_else(|p| p.into_inner());
            match queues.get_mut(id) {
                Some(queue) if queue.len() >= WAITING_COMMANDS_MAX => {
                    return Err(SagaError::Contention {
                        stream: Self::stream(id),
                        attempts: 0,
                    });
                }
                Some(queue) => {
                    queue.push(waiting);
                    false
                }
                None => {
                    queues.insert(id.to_owned(), vec![waiting]);
                    true
                }
            }
        };
        if start_draining {
            tokio::spawn(self.clone().drain(id.to_owned()));
        }
        answer.await.unwrap_or_else(|_| {
            Err(SagaError::Contention {
                stream: Self::stream(id),
                attempts: 0,
            })
        })
    }

    /// Runs batches of the aggregate's waiting commands until none waits.
    async fn drain(self, id: String) {
        loop {
            let batch = {
                let mut queues = self.queues.lock().unwrap_or_else(|p| p.into_inner());
                let waiting = queues.get_mut(&id).map(std::mem::take).unwrap_or_default();
                if waiting.is_empty() {
                    queues.remove(&id);
                    return;
                }
                waiting
            };
            let commands: Vec<(A::Command, A::Context)> =
                batch.iter().map(|w| (w.command.clone(), w.context)).collect();
            match self.execute_batch(&id, &commands).await {
                Ok(outcomes) => {
                    for (waiting, outcome) in batch.into_iter().zip(outcomes) {
                        let _ = waiting.reply.send(outcome);
                    }
                }
                Err(error) => {
                    // One error for the batch: the first caller gets it, the
                    // others its text (they retry as for any such error).
                    let text = error.to_string();
                    let mut error = Some(error);
                    for waiting in batch {
                        let outcome = error
                            .take()
                            .unwrap_or_else(|| SagaError::Unavailable(text.clone()));
                        let _ = waiting.reply.send(Err(outcome));
                    }
                }
            }
        }
    }

    /// Decides each command on the state the one before left, appends all
    /// their events at the version read, and answers each command with its
    /// own outcome. A batch decided on a cached state that the append finds
    /// moved on, or in which a command decides nothing or is refused, is
    /// decided again on the state read from the store.
    async fn execute_batch(
        &self,
        id: &str,
        commands: &[(A::Command, A::Context)],
    ) -> Result<Vec<Outcome<A>>, SagaError> {
        let mut cached = self.cached(id);
        for _ in 0..CONFLICT_ATTEMPTS_MAX {
            let from_cache = cached.is_some();
            let (state, version) = match cached.take() {
                Some(hit) => hit,
                None => {
                    let (state, version) = self.load(id).await?;
                    self.remember(id, &state, version);
                    (state, version)
                }
            };
            let mut decided = Vec::with_capacity(commands.len());
            let mut events = Vec::new();
            let mut current = state.clone();
            let mut doubtful = false;
            for (command, context) in commands {
                if version == 0 && events.is_empty() && !A::creates(command) {
                    doubtful |= from_cache;
                    decided.push(Err(SagaError::NotFound {
                        kind: A::KIND,
                        id: id.to_owned(),
                    }));
                    continue;
                }
                match A::decide(&current, command.clone(), *context) {
                    Ok(new) => {
                        doubtful |= from_cache && new.is_empty();
                        let previous = current.clone();
                        current = new.iter().fold(current, A::evolve);
                        decided.push(Ok((new.len(), previous, current.clone())));
                        events.extend(new);
                    }
                    Err(error) => {
                        doubtful |= from_cache;
                        decided.push(Err(error.into()));
                    }
                }
            }
            if doubtful {
                continue; // trusted only on a state just read
            }
            if !events.is_empty() {
                let expected = if version == 0 {
                    ExpectedVersion::NoStream
                } else {
                    ExpectedVersion::Exact(version)
                };
                match self.append(id, expected, &events).await {
                    Ok(()) => {}
                    Err(SagaError::Store(StoreError::Append(AppendError::WrongExpectedVersion {
                        ..
                    }))) => {
                        self.forget(id);
                        tracing::debug!(kind = A::KIND, id, "changed meanwhile; deciding again");
                        continue;
                    }
                    Err(other) => {
                        // The append's outcome may be unknown: read it next time.
                        self.forget(id);
                        return Err(other);
                    }
                }
                self.remember(id, &current, version + events.len() as u64);
            }
            // Each command's events, and the version and state after them.
            let mut events = events.into_iter();
            let mut at = version;
            let outcomes = decided
                .into_iter()
                .map(|outcome| {
                    outcome.map(|(count, previous, state)| {
                        at += count as u64;
                        Executed {
                            events: events.by_ref().take(count).collect(),
                            state,
                            version: at,
                            previous,
                        }
                    })
                })
                .collect();
            return Ok(outcomes);
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
