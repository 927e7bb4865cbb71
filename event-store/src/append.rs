//! Group commit. Requests queue on a bounded channel; a few committer tasks
//! each take what has queued (up to a bounded batch), decide every request,
//! write all accepted events with one statement and commit once. Each
//! request still gets its own answer: one request's conflict never fails
//! its neighbours.
//!
//! Two paths:
//! - optimistic: decide against cached stream versions and write the batch
//!   with one autocommit statement (one round trip, one fsync). A stale
//!   cache cannot cause a wrong write: the next version of a stream can only
//!   be inserted if it does not exist yet, so a stale view fails the whole
//!   statement (unique violation) and nothing is written.
//! - careful: in a transaction, look up reused event ids (idempotency),
//!   take the streams' advisory locks and read their versions, then decide
//!   and write. Requests the cache
//!   refused (the cache might be behind), batches whose optimistic write
//!   failed, and replays go this way.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use domain::{
    AppendError, AppendRequest, EventData, ExistingEvent, ExpectedVersion, IdempotencyOutcome, StreamId,
    StreamState, VersionedEvent, classify_replay, decide, evolve,
};
use sqlx::{PgConnection, PgPool};
use tokio::sync::{Mutex, mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use uuid::Uuid;

use crate::error::StoreError;

const EXISTING_IDS: &str = include_str!("sql/existing_ids.sql");
const COMPARE_EXISTING: &str = include_str!("sql/compare_existing.sql");
const LOCK_STREAMS: &str = include_str!("sql/lock_streams.sql");
const STREAM_VERSIONS: &str = include_str!("sql/stream_versions.sql");
const WRITE_EVENTS: &str = include_str!("sql/write_events.sql");

/// Bounds of the group-commit pipeline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AppendConfig {
    /// Requests waiting for a committer; beyond it appends are refused
    /// with `Overloaded` instead of growing memory.
    pub queue_max: usize,
    /// A batch stops growing at this many requests...
    pub batch_requests_max: usize,
    /// ...or once it holds this many events.
    pub batch_events_max: usize,
    /// How long a committer waits for more requests after the first one;
    /// 0 = take only what has already queued (batches still form under
    /// load, because requests queue while the previous batch commits).
    pub batch_wait_us: u64,
    /// Committer tasks, i.e. batches in flight at once.
    pub committers: usize,
    /// Attempts of a request on its own after its batch lost a race with
    /// another writer (another server, or a new stream created twice).
    pub race_attempts_max: u32,
    /// Stream versions remembered for the optimistic path; when full the
    /// cache is emptied (a miss costs one indexed lookup).
    pub version_cache_streams_max: usize,
}

impl Default for AppendConfig {
    fn default() -> Self {
        AppendConfig {
            queue_max: 4096,
            batch_requests_max: 256,
            batch_events_max: 2000,
            batch_wait_us: 0,
            committers: 1,
            race_attempts_max: 5,
            version_cache_streams_max: 100_000,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventPosition {
    pub event_id: Uuid,
    pub event_version: u64,
    pub global_position: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamOutcome {
    pub stream_id: StreamId,
    /// The stream's version right after this append.
    pub current_version: u64,
    pub positions: Vec<EventPosition>,
    pub idempotent_replay: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppendOutcome {
    /// One per stream of the request, in request order.
    pub streams: Vec<StreamOutcome>,
}

struct Pending {
    request: AppendRequest,
    reply: oneshot::Sender<Result<AppendOutcome, StoreError>>,
}

/// Handle to the group-commit pipeline. Cheap to clone; when the last clone
/// is dropped the committers finish what is queued and stop.
#[derive(Clone)]
pub struct Appender {
    queue: mpsc::Sender<Pending>,
    queue_max: usize,
}

impl Appender {
    /// Starts `config.committers` committer tasks on `pool`.
    pub fn start(pool: PgPool, config: AppendConfig) -> (Appender, Vec<JoinHandle<()>>) {
        let (queue, receiver) = mpsc::channel(config.queue_max.max(1));
        let receiver = Arc::new(Mutex::new(receiver));
        let cache = Arc::new(VersionCache::new(config.version_cache_streams_max));
        let committers = (0..config.committers.max(1))
            .map(|_| {
                tokio::spawn(run_committer(
                    pool.clone(),
                    receiver.clone(),
                    cache.clone(),
                    config,
                ))
            })
            .collect();
        let appender = Appender {
            queue,
            queue_max: config.queue_max,
        };
        (appender, committers)
    }

    /// Appends atomically and returns where every event was written.
    pub async fn append(&self, request: AppendRequest) -> Result<AppendOutcome, StoreError> {
        let (reply, answer) = oneshot::channel();
        self.queue
            .try_send(Pending { request, reply })
            .map_err(|e| match e {
                mpsc::error::TrySendError::Full(_) => StoreError::Overloaded {
                    queue_max: self.queue_max,
                },
                mpsc::error::TrySendError::Closed(_) => StoreError::ShuttingDown,
            })?;
        answer.await.map_err(|_| StoreError::ShuttingDown)?
    }
}

async fn run_committer(
    pool: PgPool,
    receiver: Arc<Mutex<mpsc::Receiver<Pending>>>,
    cache: Arc<VersionCache>,
    config: AppendConfig,
) {
    loop {
        let batch = {
            let mut receiver = receiver.lock().await;
            match gather_batch(&mut receiver, &config).await {
                Some(batch) => batch,
                None => return,
            }
        };
        commit_batch(&pool, &cache, batch, &config).await;
    }
}

/// Last known committed version per stream. Versions only grow, so an
/// entry is never ahead of the store, and updates keep the maximum.
struct VersionCache {
    versions: std::sync::Mutex<HashMap<StreamId, u64>>,
    streams_max: usize,
}

impl VersionCache {
    fn new(streams_max: usize) -> Self {
        VersionCache {
            versions: std::sync::Mutex::new(HashMap::new()),
            streams_max,
        }
    }

    fn get(&self, stream: &StreamId) -> Option<u64> {
        self.versions.lock().expect("cache lock").get(stream).copied()
    }

    fn remember(&self, stream: &StreamId, version: u64) {
        let mut versions = self.versions.lock().expect("cache lock");
        if versions.len() >= self.streams_max && !versions.contains_key(stream) {
            versions.clear();
        }
        let entry = versions.entry(stream.clone()).or_insert(version);
        *entry = (*entry).max(version);
    }

    fn forget(&self, streams: impl IntoIterator<Item = StreamId>) {
        let mut versions = self.versions.lock().expect("cache lock");
        for stream in streams {
            versions.remove(&stream);
        }
    }

    /// Learns from answers: written versions and refusals' actual versions.
    fn learn(&self, request: &AppendRequest, outcome: &Result<AppendOutcome, AppendError>) {
        match outcome {
            Ok(outcome) => {
                for stream in &outcome.streams {
                    self.remember(&stream.stream_id, stream.current_version);
                }
            }
            Err(AppendError::WrongExpectedVersion {
                stream_id,
                actual: Some(actual),
                ..
            }) => self.remember(stream_id, *actual),
            Err(_) => self.forget(request.streams().iter().map(|s| s.stream_id.clone())),
        }
    }
}

/// Waits for one request, then takes what else is queued, within bounds.
async fn gather_batch(receiver: &mut mpsc::Receiver<Pending>, config: &AppendConfig) -> Option<Vec<Pending>> {
    let first = receiver.recv().await?;
    let mut events = first.request.event_count();
    let mut batch = vec![first];
    let deadline = Instant::now() + Duration::from_micros(config.batch_wait_us);
    while batch.len() < config.batch_requests_max && events < config.batch_events_max {
        let next = match receiver.try_recv() {
            Ok(pending) => pending,
            Err(mpsc::error::TryRecvError::Empty) if config.batch_wait_us > 0 => {
                match tokio::time::timeout_at(deadline, receiver.recv()).await {
                    Ok(Some(pending)) => pending,
                    _ => break,
                }
            }
            Err(_) => break,
        };
        events += next.request.event_count();
        batch.push(next);
    }
    Some(batch)
}

/// Why a whole batch could not be committed as one transaction.
enum BatchFailure {
    /// Lost a race with a concurrent transaction (unique violation,
    /// deadlock, serialization): retry each request on its own.
    Race,
    /// Failed before COMMIT: nothing was written.
    NotWritten(StoreError),
    /// COMMIT itself failed: the outcome is unknown.
    OutcomeUnknown(String),
}

impl From<sqlx::Error> for BatchFailure {
    fn from(e: sqlx::Error) -> Self {
        let code = e.as_database_error().and_then(|d| d.code());
        match code.as_deref() {
            // unique violation, deadlock, serialization failure, and
            // dbswarm_check (the version before a batch's first is missing)
            Some("23505" | "40P01" | "40001" | "DBS01") => BatchFailure::Race,
            _ => BatchFailure::NotWritten(e.into()),
        }
    }
}

async fn commit_batch(pool: &PgPool, cache: &VersionCache, batch: Vec<Pending>, config: &AppendConfig) {
    let events: usize = batch.iter().map(|p| p.request.event_count()).sum();
    metrics::histogram!("dbswarm_append_batch_requests").record(batch.len() as f64);
    metrics::histogram!("dbswarm_append_batch_events").record(events as f64);
    let requests: Vec<&AppendRequest> = batch.iter().map(|p| &p.request).collect();
    let recheck = match commit_optimistic(pool, cache, &requests).await {
        Ok(answers) => {
            let mut recheck = Vec::new();
            for (pending, answer) in batch.into_iter().zip(answers) {
                match answer {
                    Some(outcome) => {
                        let _ = pending.reply.send(Ok(outcome));
                    }
                    None => recheck.push(pending),
                }
            }
            recheck
        }
        Err(BatchFailure::Race) => {
            metrics::counter!("dbswarm_append_optimistic_conflicts_total").increment(1);
            cache.forget(
                requests
                    .iter()
                    .flat_map(|r| r.streams())
                    .map(|s| s.stream_id.clone()),
            );
            batch
        }
        Err(failure) => return fail_all(batch, failure),
    };
    if !recheck.is_empty() {
        commit_carefully(pool, cache, recheck, config).await;
    }
}

fn fail_all(batch: Vec<Pending>, failure: BatchFailure) {
    match failure {
        BatchFailure::Race => unreachable!("races are retried, not failed"),
        BatchFailure::NotWritten(error) => {
            tracing::warn!(%error, requests = batch.len(), "append batch failed before commit");
            for pending in batch {
                let _ = pending.reply.send(Err(error.shared()));
            }
        }
        BatchFailure::OutcomeUnknown(message) => {
            tracing::error!(%message, requests = batch.len(), "append batch commit failed");
            for pending in batch {
                let _ = pending
                    .reply
                    .send(Err(StoreError::CommitOutcomeUnknown(message.clone())));
            }
        }
    }
}

/// The careful path for a batch: one transaction with locks, then, if that
/// loses a race with another writer, each request on its own.
async fn commit_carefully(pool: &PgPool, cache: &VersionCache, batch: Vec<Pending>, config: &AppendConfig) {
    let requests: Vec<&AppendRequest> = batch.iter().map(|p| &p.request).collect();
    match commit_together(pool, &requests).await {
        Ok(outcomes) => {
            for (pending, outcome) in batch.into_iter().zip(outcomes) {
                cache.learn(&pending.request, &outcome);
                let _ = pending.reply.send(outcome.map_err(StoreError::from));
            }
        }
        Err(BatchFailure::Race) => {
            metrics::counter!("dbswarm_append_race_fallbacks_total").increment(1);
            cache.forget(
                requests
                    .iter()
                    .flat_map(|r| r.streams())
                    .map(|s| s.stream_id.clone()),
            );
            for pending in batch {
                let outcome = commit_alone(pool, &pending.request, config.race_attempts_max).await;
                let _ = pending.reply.send(outcome);
            }
        }
        Err(failure) => fail_all(batch, failure),
    }
}

/// Decides the batch against cached versions (looking up the streams the
/// cache lacks) and writes what it accepts in one autocommit statement.
/// `None` for a request the cache refused: the cache may be behind, so the
/// careful path must confirm. Err(Race) when the write found the cache
/// stale or an event id reused: nothing was written.
async fn commit_optimistic(
    pool: &PgPool,
    cache: &VersionCache,
    requests: &[&AppendRequest],
) -> Result<Vec<Option<AppendOutcome>>, BatchFailure> {
    let mut states: HashMap<StreamId, StreamState> = HashMap::new();
    // Streams the cache lacks are looked up, except those only created
    // here (every append to them expects no stream): assuming they are new
    // is checked by the write itself (version 1 must not exist yet).
    let mut missing: BTreeSet<&str> = BTreeSet::new();
    for append in requests.iter().flat_map(|r| r.streams()) {
        let stream = &append.stream_id;
        match cache.get(stream) {
            Some(version) => {
                states.insert(
                    stream.clone(),
                    StreamState {
                        version: Some(version),
                    },
                );
            }
            None => {
                states.entry(stream.clone()).or_default();
                if append.expected != ExpectedVersion::NoStream {
                    missing.insert(stream.as_str());
                }
            }
        }
    }
    if !missing.is_empty() {
        let missing: Vec<&str> = missing.into_iter().collect();
        let found: HashMap<String, i64> = sqlx::query_as(STREAM_VERSIONS)
            .bind(&missing)
            .fetch_all(pool)
            .await?
            .into_iter()
            .collect();
        for (stream, state) in states.iter_mut() {
            if let Some(version) = found.get(stream.as_str()) {
                state.version = Some(*version as u64);
            }
        }
    }

    let mut rows = EventRows::default();
    let mut planned = Vec::with_capacity(requests.len());
    for request in requests {
        let plan = decide_request(&mut states, request)
            .ok()
            .inspect(|versions| rows.push_request(request, versions));
        planned.push(plan);
    }
    if rows.is_empty() {
        return Ok(vec![None; requests.len()]);
    }
    let positions = write_rows(pool, rows, &planned_streams(requests, &planned)).await?;
    let answers: Vec<Option<AppendOutcome>> = requests
        .iter()
        .zip(planned)
        .map(|(request, versions)| versions.map(|v| outcome_of(request, Planned::New(v), &positions)))
        .collect();
    for answer in answers.iter().flatten() {
        for stream in &answer.streams {
            cache.remember(&stream.stream_id, stream.current_version);
        }
    }
    Ok(answers)
}

/// The first version each written stream gets in this batch: the write
/// checks that the version before it is stored (contiguity).
fn planned_streams(
    requests: &[&AppendRequest],
    planned: &[Option<Vec<VersionedEvent>>],
) -> HashMap<String, i64> {
    let mut first: HashMap<String, i64> = HashMap::new();
    for (request, plan) in requests.iter().zip(planned) {
        if let Some(versions) = plan {
            for (stream, appended) in request.streams().iter().zip(versions) {
                let version = appended.first_version as i64;
                first
                    .entry(stream.stream_id.as_str().to_owned())
                    .and_modify(|v| *v = (*v).min(version))
                    .or_insert(version);
            }
        }
    }
    first
}

/// A request in a transaction of its own, retried while it loses races.
async fn commit_alone(
    pool: &PgPool,
    request: &AppendRequest,
    attempts_max: u32,
) -> Result<AppendOutcome, StoreError> {
    for attempt in 1..=attempts_max {
        match commit_together(pool, &[request]).await {
            Ok(mut outcomes) => {
                return outcomes
                    .pop()
                    .expect("one request, one outcome")
                    .map_err(Into::into);
            }
            Err(BatchFailure::Race) => {
                tokio::time::sleep(Duration::from_millis(u64::from(attempt) * 2)).await;
            }
            Err(BatchFailure::NotWritten(error)) => return Err(error),
            Err(BatchFailure::OutcomeUnknown(message)) => {
                return Err(StoreError::CommitOutcomeUnknown(message));
            }
        }
    }
    Err(StoreError::Contention {
        attempts: attempts_max,
    })
}

/// What a request became inside a batch, before positions are known.
enum Planned {
    Replay(Vec<Vec<ExistingEvent>>),
    New(Vec<VersionedEvent>),
}

/// One transaction for all `requests`. Per request: an answer, or the
/// domain's refusal. Err only when the batch as a whole failed.
async fn commit_together(
    pool: &PgPool,
    requests: &[&AppendRequest],
) -> Result<Vec<Result<AppendOutcome, AppendError>>, BatchFailure> {
    let mut tx = pool.begin().await?;
    let existing = load_existing(&mut tx, requests).await?;
    let mut states = lock_streams(&mut tx, requests).await?;

    let mut rows = EventRows::default();
    let mut planned = Vec::with_capacity(requests.len());
    for request in requests {
        let ids: HashSet<Uuid> = event_ids(request).collect();
        let mine: Vec<ExistingEvent> = existing
            .iter()
            .filter(|e| ids.contains(&e.event_id))
            .cloned()
            .collect();
        let plan = match classify_replay(request, &mine) {
            Err(e) => Err(e),
            Ok(IdempotencyOutcome::Replay(stored)) => Ok(Planned::Replay(stored)),
            Ok(IdempotencyOutcome::New) => decide_request(&mut states, request).map(|versions| {
                rows.push_request(request, &versions);
                Planned::New(versions)
            }),
        };
        planned.push(plan);
    }

    let positions = if rows.is_empty() {
        HashMap::new()
    } else {
        let new_versions: Vec<Option<Vec<VersionedEvent>>> = planned
            .iter()
            .map(|p| match p {
                Ok(Planned::New(versions)) => Some(versions.clone()),
                _ => None,
            })
            .collect();
        write_rows(&mut *tx, rows, &planned_streams(requests, &new_versions)).await?
    };
    tx.commit()
        .await
        .map_err(|e| BatchFailure::OutcomeUnknown(e.to_string()))?;

    Ok(requests
        .iter()
        .zip(planned)
        .map(|(request, plan)| plan.map(|plan| outcome_of(request, plan, &positions)))
        .collect())
}

fn event_ids(request: &AppendRequest) -> impl Iterator<Item = Uuid> + '_ {
    request
        .streams()
        .iter()
        .flat_map(|s| &s.events)
        .map(|e| e.event_id)
}

/// Stored events that share an id with any request of the batch. The
/// common case (no reuse) costs one index probe with the ids alone.
async fn load_existing(
    tx: &mut PgConnection,
    requests: &[&AppendRequest],
) -> Result<Vec<ExistingEvent>, sqlx::Error> {
    let all_ids: Vec<Uuid> = requests.iter().flat_map(|r| event_ids(r)).collect();
    let reused: HashSet<Uuid> = sqlx::query_scalar(EXISTING_IDS)
        .bind(&all_ids)
        .fetch_all(&mut *tx)
        .await?
        .into_iter()
        .collect();
    if reused.is_empty() {
        return Ok(Vec::new());
    }
    let mut ids = Vec::new();
    let (mut streams, mut types, mut json, mut binary, mut metadata) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for stream in requests.iter().flat_map(|r| r.streams()) {
        for event in stream.events.iter().filter(|e| reused.contains(&e.event_id)) {
            ids.push(event.event_id);
            streams.push(stream.stream_id.as_str().to_owned());
            types.push(event.event_type.as_str().to_owned());
            let (j, b) = payload_columns(&event.data);
            json.push(j);
            binary.push(b);
            metadata.push(event.stored_metadata().to_owned());
        }
    }
    let rows: Vec<(Uuid, String, i64, i64, bool)> = sqlx::query_as(COMPARE_EXISTING)
        .bind(&ids)
        .bind(&streams)
        .bind(&types)
        .bind(&json)
        .bind(&binary)
        .bind(&metadata)
        .fetch_all(&mut *tx)
        .await?;
    Ok(rows
        .into_iter()
        .map(
            |(event_id, stream_id, version, position, same_content)| ExistingEvent {
                event_id,
                stream_id,
                event_version: version as u64,
                global_position: position as u64,
                same_content,
            },
        )
        .collect())
}

/// Takes the batch's stream locks (transaction-scoped advisory locks, in
/// key order so that two batches cannot deadlock), then reads the streams'
/// versions in a statement of its own: its snapshot is taken after the
/// locks are held, so it sees every earlier writer's commit.
async fn lock_streams(
    tx: &mut PgConnection,
    requests: &[&AppendRequest],
) -> Result<HashMap<StreamId, StreamState>, sqlx::Error> {
    let ids: BTreeSet<&StreamId> = requests
        .iter()
        .flat_map(|r| r.streams())
        .map(|s| &s.stream_id)
        .collect();
    let names: Vec<&str> = ids.iter().map(|s| s.as_str()).collect();
    sqlx::query(LOCK_STREAMS).bind(&names).execute(&mut *tx).await?;
    let locked: HashMap<String, i64> = sqlx::query_as(STREAM_VERSIONS)
        .bind(&names)
        .fetch_all(&mut *tx)
        .await?
        .into_iter()
        .collect();
    Ok(ids
        .into_iter()
        .map(|id| {
            let version = locked.get(id.as_str()).map(|v| *v as u64);
            (id.clone(), StreamState { version })
        })
        .collect())
}

/// Decides every stream of one request; applies the result to `states`
/// only when all of them are accepted (the request is atomic).
fn decide_request(
    states: &mut HashMap<StreamId, StreamState>,
    request: &AppendRequest,
) -> Result<Vec<VersionedEvent>, AppendError> {
    let versions = request
        .streams()
        .iter()
        .map(|s| decide(&states[&s.stream_id], s))
        .collect::<Result<Vec<_>, _>>()?;
    for (stream, appended) in request.streams().iter().zip(&versions) {
        let state = states.get_mut(&stream.stream_id).expect("locked above");
        *state = evolve(*state, appended);
    }
    Ok(versions)
}

fn payload_columns(data: &EventData) -> (Option<String>, Option<Vec<u8>>) {
    match data {
        EventData::Json(text) => (Some(text.clone()), None),
        EventData::Binary(bytes) => (None, Some(bytes.clone())),
    }
}

/// The batch's new events, column by column, for one `unnest` INSERT.
#[derive(Default)]
struct EventRows {
    event_id: Vec<Uuid>,
    stream_id: Vec<String>,
    aggregate_type: Vec<String>,
    aggregate_id: Vec<Option<Uuid>>,
    event_version: Vec<i64>,
    event_type: Vec<String>,
    schema_version: Vec<i32>,
    event_data: Vec<Option<String>>,
    data_binary: Vec<Option<Vec<u8>>>,
    metadata: Vec<String>,
    correlation_id: Vec<Option<Uuid>>,
    causation_id: Vec<Option<Uuid>>,
}

impl EventRows {
    fn push_request(&mut self, request: &AppendRequest, versions: &[VersionedEvent]) {
        for (stream, appended) in request.streams().iter().zip(versions) {
            // Write-side invariant: the versions are exactly the next ones.
            assert_eq!(
                appended.last_version - appended.first_version + 1,
                stream.events.len() as u64,
                "versions assigned to '{}' are not contiguous",
                stream.stream_id
            );
            for (event, version) in stream.events.iter().zip(appended.first_version..) {
                let (json, binary) = payload_columns(&event.data);
                self.event_id.push(event.event_id);
                self.stream_id.push(stream.stream_id.as_str().to_owned());
                self.aggregate_type.push(stream.stream_id.category().to_owned());
                self.aggregate_id.push(stream.stream_id.aggregate_id());
                self.event_version.push(version as i64);
                self.event_type.push(event.event_type.as_str().to_owned());
                self.schema_version.push(event.schema_version as i32);
                self.event_data.push(json);
                self.data_binary.push(binary);
                self.metadata.push(event.stored_metadata().to_owned());
                self.correlation_id.push(event.correlation_id);
                self.causation_id.push(event.causation_id);
            }
        }
    }

    fn is_empty(&self) -> bool {
        self.event_id.is_empty()
    }
}

/// Inserts the rows, checking in the same statement that each stream's
/// first new version follows a stored one. On a pool it commits by itself;
/// inside a transaction it commits with it.
async fn write_rows<'c, E>(
    executor: E,
    rows: EventRows,
    first_versions: &HashMap<String, i64>,
) -> Result<HashMap<Uuid, u64>, BatchFailure>
where
    E: sqlx::PgExecutor<'c>,
{
    let expected = rows.event_id.len();
    let (streams, first_versions): (Vec<&str>, Vec<i64>) =
        first_versions.iter().map(|(s, v)| (s.as_str(), *v)).unzip();
    let written: Vec<(Uuid, i64)> = sqlx::query_as(WRITE_EVENTS)
        .bind(rows.event_id)
        .bind(rows.stream_id)
        .bind(rows.aggregate_type)
        .bind(rows.aggregate_id)
        .bind(rows.event_version)
        .bind(rows.event_type)
        .bind(rows.schema_version)
        .bind(rows.event_data)
        .bind(rows.data_binary)
        .bind(rows.metadata)
        .bind(rows.correlation_id)
        .bind(rows.causation_id)
        .bind(&streams)
        .bind(&first_versions)
        .fetch_all(executor)
        .await?;
    if written.len() != expected {
        return Err(BatchFailure::NotWritten(StoreError::Corrupt(format!(
            "inserted {} events, expected {expected}",
            written.len()
        ))));
    }
    Ok(written.into_iter().map(|(id, pos)| (id, pos as u64)).collect())
}

fn outcome_of(request: &AppendRequest, plan: Planned, positions: &HashMap<Uuid, u64>) -> AppendOutcome {
    let streams = match plan {
        Planned::Replay(stored) => request
            .streams()
            .iter()
            .zip(stored)
            .map(|(stream, events)| StreamOutcome {
                stream_id: stream.stream_id.clone(),
                current_version: events.last().map_or(0, |e| e.event_version),
                positions: events
                    .into_iter()
                    .map(|e| EventPosition {
                        event_id: e.event_id,
                        event_version: e.event_version,
                        global_position: e.global_position,
                    })
                    .collect(),
                idempotent_replay: true,
            })
            .collect(),
        Planned::New(versions) => request
            .streams()
            .iter()
            .zip(versions)
            .map(|(stream, appended)| StreamOutcome {
                stream_id: stream.stream_id.clone(),
                current_version: appended.last_version,
                positions: stream
                    .events
                    .iter()
                    .zip(appended.first_version..)
                    .map(|(event, version)| EventPosition {
                        event_id: event.event_id,
                        event_version: version,
                        global_position: positions[&event.event_id],
                    })
                    .collect(),
                idempotent_replay: false,
            })
            .collect(),
    };
    AppendOutcome { streams }
}
