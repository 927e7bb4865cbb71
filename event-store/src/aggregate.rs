//! Event-sourced aggregates and their store. An aggregate's events live in
//! stream `<kind>-<id>`. [`AggregateStore::execute`] loads the stream, asks
//! the pure aggregate to decide, and appends what it decided at exactly the
//! version it loaded; when another writer got there first it loads again
//! and decides again (bounded). So two servers reacting to one aggregate
//! (a workflow, a schedule, a catalogue) never lose a decision or apply one
//! twice: the aggregates decide nothing for a duplicate.
//!
//! An aggregate whose state is worth keeping opts in to snapshots
//! ([`Snapshotted`], [`AggregateStore::with_snapshots`]): a load then starts
//! from the newest usable snapshot (see [`crate::snapshot`] for when one is
//! trusted) and replays only the events after it. A snapshot is a cache,
//! never the truth: one that cannot be trusted is ignored (with a warning)
//! and the state replayed from the stream's first event.

use std::collections::HashMap;
use std::marker::PhantomData;
use std::sync::{Arc, Mutex};

use domain::Code;
use domain::{
    AppendError, AppendRequest, EventData, EventType, ExpectedVersion, Limits, ProposedEvent, StreamAppend,
    StreamId, ValidationError,
};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;
use tokio::sync::oneshot;
use uuid::Uuid;

use crate::append::Appender;
use crate::error::StoreError;
use crate::read::{Direction, ReadStreamQuery, Reader, RecordedEvent};
use crate::snapshot::{SnapshotRow, SnapshotStore};

/// Decide-and-append rounds lost to concurrent writers before giving up.
pub const CONFLICT_ATTEMPTS_MAX: u32 = 8;

/// Commands waiting for one aggregate at most; more are refused (ABORTED).
pub const WAITING_COMMANDS_MAX: usize = 1000;

/// Aggregates kept in memory at most (per store); when full it is emptied.
pub const CACHED_AGGREGATES_MAX: usize = 10_000;

/// Why the aggregate store could not load an aggregate or record a command.
#[derive(Debug, thiserror::Error)]
pub enum AggregateError {
    #[error("{kind} {id} does not exist")]
    NotFound { kind: &'static str, id: String },
    /// The aggregate's refusal, as its own error says it.
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
    #[error("could not record: {0}; retry")]
    Unavailable(String),
}

impl AggregateError {
    pub fn code(&self) -> Code {
        match self {
            AggregateError::NotFound { .. } => Code::NotFound,
            AggregateError::Refused(_) => Code::FailedPrecondition,
            AggregateError::Store(e) => e.code(),
            // Lost to concurrent writers: a new attempt decides again.
            AggregateError::Contention { .. } => Code::Conflict,
            AggregateError::Corrupt { .. } => Code::Internal,
            AggregateError::Invalid(_) => Code::InvalidArgument,
            AggregateError::Unavailable(_) => Code::Unavailable,
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
    /// What `decide` refuses a command with.
    type Error: Into<Self::Failure>;
    /// What the store's operations on this aggregate fail with:
    /// [`AggregateError`], or a wider error of the caller's that takes it in.
    type Failure: From<AggregateError> + Send + 'static;

    fn decide(
        state: &Self::State,
        command: Self::Command,
        context: Self::Context,
    ) -> Result<Vec<Self::Event>, Self::Error>;
    fn evolve(state: Self::State, event: &Self::Event) -> Self::State;
    fn event_type(event: &Self::Event) -> &'static str;
    fn data(event: &Self::Event) -> Value;
    fn from_stored(event_type: &str, data: Value) -> Result<Self::Event, String>;
    /// The event of a recorded one: by default [`Aggregate::from_stored`]
    /// of its type and JSON data.
    fn decode(event: &RecordedEvent) -> Result<Self::Event, String> {
        let data = match &event.data {
            EventData::Json(text) => serde_json::from_str(text).map_err(|e| e.to_string())?,
            EventData::Binary(_) => return Err(format!("event {} is binary", event.event_id)),
        };
        Self::from_stored(&event.event_type, data)
    }
    /// Whether `command` creates the aggregate (allowed on an empty stream).
    fn creates(command: &Self::Command) -> bool;
    /// Whether the state is worth keeping in memory (more commands will
    /// come); a finished workflow is not.
    fn live(state: &Self::State) -> bool;
}

/// An aggregate whose state may be snapshotted (see
/// [`AggregateStore::with_snapshots`]).
pub trait Snapshotted: Aggregate<State: Serialize + DeserializeOwned> {
    /// Bump when the state's shape or meaning changes: older snapshots are
    /// then ignored and rebuilt.
    const SNAPSHOT_SCHEMA_VERSION: u32;
}

/// An aggregate as loaded.
#[derive(Debug, Clone, PartialEq)]
pub struct Loaded<S> {
    pub state: S,
    /// The version of the last event folded into `state`; 0 when the
    /// stream does not exist (`state` is then the default).
    pub version: u64,
    /// The snapshot the load started from; `None` = replayed from the
    /// stream's first event.
    pub snapshot_version: Option<u64>,
    /// Events applied on top of the snapshot (or of the default state).
    pub events_replayed: u64,
}

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

/// What one command recorded, or why not.
type Outcome<A> =
    Result<Executed<<A as Aggregate>::Event, <A as Aggregate>::State>, <A as Aggregate>::Failure>;

/// Commands waiting for their aggregate's batch (see `execute`).
struct Waiting<A: Aggregate> {
    command: A::Command,
    context: A::Context,
    reply: oneshot::Sender<Outcome<A>>,
}

/// Per aggregate with commands in progress on this server: the commands
/// waiting for the next batch. An entry exists while a drain task runs.
type Queues<A> = Mutex<HashMap<String, Vec<Waiting<A>>>>;

/// The last state this server wrote or read per aggregate, so that a
/// command usually costs one append and no read. Only a hint: a decision
/// on a cached state is appended at the cached version, so a state another
/// server moved on fails the append and is read again; and a cached state
/// that decides nothing (or refuses) is read again before that answer is
/// trusted.
struct StateCache<S> {
    entries: HashMap<String, (S, u64)>,
}

/// How a snapshotted aggregate's snapshots are kept.
struct Snapshots<S> {
    store: SnapshotStore,
    /// A load that replayed at least this many events saves a snapshot;
    /// 0 = snapshots are only taken on demand.
    every_events: u64,
    schema_version: u32,
    encode: fn(&S) -> serde_json::Result<Value>,
    decode: fn(&str) -> serde_json::Result<S>,
}

pub struct AggregateStore<A: Aggregate> {
    appender: Appender,
    reader: Reader,
    limits: Limits,
    cache: Arc<Mutex<StateCache<A::State>>>,
    /// Commands to one aggregate on this server are decided in batches, in
    /// arrival order, each on the state the one before left, and appended
    /// together: they do not race each other to append at one version.
    queues: Arc<Queues<A>>,
    snapshots: Option<Arc<Snapshots<A::State>>>,
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
            snapshots: self.snapshots.clone(),
            aggregate: PhantomData,
        }
    }
}

impl<A: Snapshotted> AggregateStore<A> {
    /// Loads start from the newest usable snapshot of the aggregate's
    /// [`Snapshotted::SNAPSHOT_SCHEMA_VERSION`] plus the events after it;
    /// a load that replayed `snapshot_every_events` or more (and that is
    /// not 0) saves a snapshot at the loaded version (a failure to save is
    /// logged, never fails the load).
    pub fn with_snapshots(mut self, store: SnapshotStore, snapshot_every_events: u64) -> Self {
        self.snapshots = Some(Arc::new(Snapshots {
            store,
            every_events: snapshot_every_events,
            schema_version: A::SNAPSHOT_SCHEMA_VERSION,
            encode: |state| serde_json::to_value(state),
            decode: |text| serde_json::from_str(text),
        }));
        self
    }
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
            snapshots: None,
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

    fn stream_id(&self, id: &str) -> Result<StreamId, AggregateError> {
        Ok(StreamId::parse(&Self::stream(id), &self.limits)?)
    }

    /// The aggregate's state and the version it was read at (0: no events).
    pub async fn load(&self, id: &str) -> Result<(A::State, u64), A::Failure> {
        let loaded = self.read(id).await?;
        Ok((loaded.state, loaded.version))
    }

    /// The aggregate's state, the version it was read at, and where the
    /// load started from (a snapshot or the first event).
    pub async fn load_detailed(&self, id: &str) -> Result<Loaded<A::State>, A::Failure> {
        Ok(self.read(id).await?)
    }

    /// Loads the aggregate and saves a snapshot at the loaded version now
    /// (unless the load started from a snapshot at that very version).
    /// `snapshot_version` of the answer is the snapshot the load started
    /// from, not the one saved (which is at `version`).
    pub async fn snapshot_now(&self, id: &str) -> Result<Loaded<A::State>, A::Failure> {
        let Some(snapshots) = &self.snapshots else {
            let why = format!("{} aggregates have no snapshot store here", A::KIND);
            return Err(AggregateError::Store(StoreError::InvalidSnapshot(why)).into());
        };
        let stream_id = self.stream_id(id)?;
        let loaded = self.fold(&stream_id).await?;
        if loaded.version == 0 {
            return Err(AggregateError::NotFound {
                kind: A::KIND,
                id: id.to_owned(),
            }
            .into());
        }
        if loaded.snapshot_version != Some(loaded.version) {
            snapshots
                .save(&stream_id, &loaded)
                .await
                .map_err(AggregateError::from)?;
        }
        Ok(loaded)
    }

    /// `fold`, then a snapshot when the load replayed enough events.
    async fn read(&self, id: &str) -> Result<Loaded<A::State>, AggregateError> {
        let stream_id = self.stream_id(id)?;
        let loaded = self.fold(&stream_id).await?;
        if let Some(snapshots) = &self.snapshots
            && snapshots.every_events > 0
            && loaded.events_replayed >= snapshots.every_events
            && let Err(error) = snapshots.save(&stream_id, &loaded).await
        {
            tracing::warn!(%error, stream = %stream_id, version = loaded.version, "snapshot not saved");
        }
        Ok(loaded)
    }

    /// The aggregate's current state: the newest usable snapshot (with
    /// snapshots) plus the events after it.
    async fn fold(&self, stream_id: &StreamId) -> Result<Loaded<A::State>, AggregateError> {
        let mut loaded = Loaded {
            state: A::State::default(),
            version: 0,
            snapshot_version: None,
            events_replayed: 0,
        };
        let current = match &self.snapshots {
            Some(snapshots) => {
                let (start, current) = snapshots.start(&self.reader, stream_id).await?;
                if let Some((state, version)) = start {
                    (loaded.state, loaded.version, loaded.snapshot_version) = (state, version, Some(version));
                }
                Some(current)
            }
            None => None,
        };
        if current.is_none_or(|current| loaded.version < current) {
            self.replay(stream_id, &mut loaded).await?;
        }
        if let Some(current) = current {
            if loaded.version < current {
                return Err(StoreError::Corrupt(format!(
                    "stream '{stream_id}' is at version {current} but its events ended at version {}",
                    loaded.version
                ))
                .into());
            }
            let source = if loaded.snapshot_version.is_some() {
                "snapshot"
            } else {
                "replay"
            };
            metrics::counter!("dbswarm_snapshot_loads_total", "source" => source).increment(1);
        }
        Ok(loaded)
    }

    /// Applies the stream's events after `loaded.version` to `loaded`.
    async fn replay(
        &self,
        stream_id: &StreamId,
        loaded: &mut Loaded<A::State>,
    ) -> Result<(), AggregateError> {
        let query = ReadStreamQuery {
            stream_id: stream_id.clone(),
            from_version: loaded.version + 1,
            direction: Direction::Forwards,
            limit: None,
        };
        let mut events = match self.reader.read_stream(query).await {
            Ok(events) => events,
            Err(StoreError::StreamNotFound(_)) => return Ok(()),
            Err(other) => return Err(other.into()),
        };
        while let Some(event) = events.recv().await {
            let event = event?;
            // Read-side invariant (the Reader checks it too): the events
            // start right after the snapshot and have no gap.
            if event.event_version != loaded.version + 1 {
                return Err(StoreError::Corrupt(format!(
                    "stream '{stream_id}': version {} follows version {} while loading",
                    event.event_version, loaded.version
                ))
                .into());
            }
            let decoded = A::decode(&event).map_err(|why| AggregateError::Corrupt {
                stream: stream_id.to_string(),
                why,
            })?;
            loaded.state = A::evolve(std::mem::take(&mut loaded.state), &decoded);
            loaded.version = event.event_version;
            loaded.events_replayed += 1;
        }
        Ok(())
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
    ) -> Result<Executed<A::Event, A::State>, A::Failure> {
        let (reply, answer) = oneshot::channel();
        let waiting = Waiting {
            command,
            context: context(),
            reply,
        };
        let contention = || {
            AggregateError::Contention {
                stream: Self::stream(id),
                attempts: 0,
            }
            .into()
        };
        let start_draining = {
            let mut queues = self.queues.lock().unwrap_or_else(|p| p.into_inner());
            match queues.get_mut(id) {
                Some(queue) if queue.len() >= WAITING_COMMANDS_MAX => return Err(contention()),
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
        answer.await.unwrap_or_else(|_| Err(contention()))
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
                            .unwrap_or_else(|| AggregateError::Unavailable(text.clone()));
                        let _ = waiting.reply.send(Err(outcome.into()));
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
    ) -> Result<Vec<Outcome<A>>, AggregateError> {
        let mut cached = self.cached(id);
        for _ in 0..CONFLICT_ATTEMPTS_MAX {
            let from_cache = cached.is_some();
            let (state, version) = match cached.take() {
                Some(hit) => hit,
                None => {
                    let loaded = self.read(id).await?;
                    self.remember(id, &loaded.state, loaded.version);
                    (loaded.state, loaded.version)
                }
            };
            let mut decided = Vec::with_capacity(commands.len());
            let mut events = Vec::new();
            let mut current = state.clone();
            let mut doubtful = false;
            for (command, context) in commands {
                if version == 0 && events.is_empty() && !A::creates(command) {
                    doubtful |= from_cache;
                    decided.push(Err(AggregateError::NotFound {
                        kind: A::KIND,
                        id: id.to_owned(),
                    }
                    .into()));
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
                    Err(AggregateError::Store(StoreError::Append(AppendError::WrongExpectedVersion {
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
        Err(AggregateError::Contention {
            stream: Self::stream(id),
            attempts: CONFLICT_ATTEMPTS_MAX,
        })
    }

    async fn append(
        &self,
        id: &str,
        expected: ExpectedVersion,
        events: &[A::Event],
    ) -> Result<(), AggregateError> {
        let stream_id = self.stream_id(id)?;
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

impl<S> Snapshots<S> {
    /// The newest usable snapshot's state and version, and the version the
    /// stream is at.
    async fn start(&self, reader: &Reader, stream: &StreamId) -> Result<(Option<(S, u64)>, u64), StoreError> {
        let row = self.store.fetch_latest(stream, self.schema_version).await?;
        // The stream's version is read after the snapshot: a snapshot is
        // checked against its stream when saved and versions only grow, so
        // a sound snapshot is never ahead of a version read after it.
        let current = reader.stream_version(stream).await?.unwrap_or(0);
        Ok((row.and_then(|row| self.usable(stream, row, current)), current))
    }

    /// The snapshot's state and version when it can be trusted; `None` (with
    /// a warning) when it is ahead of its stream or does not deserialize.
    fn usable(&self, stream: &StreamId, row: SnapshotRow, current: u64) -> Option<(S, u64)> {
        let version = row.stream_version as u64;
        if version > current {
            tracing::warn!(
                stream = %stream,
                snapshot_version = version,
                stream_version = current,
                "snapshot is ahead of its stream (corrupt); ignored, replaying from the start"
            );
            return None;
        }
        match (self.decode)(&row.state) {
            Ok(state) => Some((state, version)),
            Err(error) => {
                tracing::warn!(
                    %error,
                    stream = %stream,
                    snapshot_version = version,
                    schema_version = row.schema_version,
                    "snapshot state does not deserialize into the aggregate; ignored, replaying from the start"
                );
                None
            }
        }
    }

    async fn save(&self, stream: &StreamId, loaded: &Loaded<S>) -> Result<(), StoreError> {
        let state = (self.encode)(&loaded.state).map_err(|e| {
            StoreError::InvalidSnapshot(format!(
                "state of stream '{stream}' does not serialize to JSON: {e}"
            ))
        })?;
        self.store
            .save(stream, loaded.version, self.schema_version, &state)
            .await
    }
}
