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
        if is_race(code.as_deref()) {
            BatchFailure::Race
        } else {
            BatchFailure::NotWritten(e.into())
        }
    }
}

/// Whether a failed statement's SQLSTATE means it lost a race with another
/// writer (so the batch is worth retrying) rather than failed for good.
fn is_race(sqlstate: Option<&str>) -> bool {
    // unique violation, deadlock, serialization failure, and dbswarm_check
    // (the version before a batch's first is missing)
    matches!(sqlstate, Some("23505" | "40P01" | "40001" | "DBS01"))
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
    let (mut states, missing) = cached_states(cache, requests);
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

/// The batch's streams as the cache knows them (unknown ones as new), and
/// the streams the cache lacks that must be looked up: all but those only
/// created here (every append to them expects no stream), since assuming
/// they are new is checked by the write itself (version 1 must not exist).
fn cached_states<'r>(
    cache: &VersionCache,
    requests: &[&'r AppendRequest],
) -> (HashMap<StreamId, StreamState>, BTreeSet<&'r str>) {
    let mut states: HashMap<StreamId, StreamState> = HashMap::new();
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
    (states, missing)
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

#[cfg(test)]
mod tests {
    use domain::{EventType, Limits, ProposedEvent, StreamAppend};

    use super::*;

    fn stream(id: &str) -> StreamId {
        StreamId::parse(id, &Limits::default()).unwrap()
    }

    fn event(n: u128) -> ProposedEvent {
        ProposedEvent {
            event_id: Uuid::from_u128(n),
            event_type: EventType::parse("Happened", &Limits::default()).unwrap(),
            data: EventData::Json(format!("{{\"n\":{n}}}")),
            metadata: String::new(),
            schema_version: 1,
            correlation_id: None,
            causation_id: None,
        }
    }

    /// One request; `streams` as (id, expected, event ids).
    fn request(streams: &[(&str, ExpectedVersion, &[u128])]) -> AppendRequest {
        let streams = streams
            .iter()
            .map(|(id, expected, events)| StreamAppend {
                stream_id: stream(id),
                expected: *expected,
                events: events.iter().map(|n| event(*n)).collect(),
            })
            .collect();
        AppendRequest::new(streams, &Limits::default()).unwrap()
    }

    fn states(known: &[(&str, Option<u64>)]) -> HashMap<StreamId, StreamState> {
        known
            .iter()
            .map(|(id, version)| (stream(id), StreamState { version: *version }))
            .collect()
    }

    fn versions(first: u64, last: u64) -> VersionedEvent {
        VersionedEvent {
            first_version: first,
            last_version: last,
        }
    }

    /// Given a at 2 and b new, when a request appends to both as expected,
    /// then each stream gets its next versions and the states move on.
    #[test]
    fn a_request_accepted_on_every_stream_moves_them_all() {
        let mut known = states(&[("a", Some(2)), ("b", None)]);
        let both = request(&[
            ("a", ExpectedVersion::Exact(2), &[1, 2]),
            ("b", ExpectedVersion::NoStream, &[3]),
        ]);
        let decided = decide_request(&mut known, &both).unwrap();
        assert_eq!(decided, vec![versions(3, 4), versions(1, 1)]);
        assert_eq!(known, states(&[("a", Some(4)), ("b", Some(1))]));
    }

    /// Given a at 2 and b new, when a request's second stream is refused,
    /// then the request is refused whole and no state moves (atomicity).
    #[test]
    fn a_request_refused_on_one_stream_moves_none() {
        let mut known = states(&[("a", Some(2)), ("b", None)]);
        let half = request(&[
            ("a", ExpectedVersion::Exact(2), &[1]),
            ("b", ExpectedVersion::StreamExists, &[2]),
        ]);
        let refused = decide_request(&mut known, &half).unwrap_err();
        assert_eq!(
            refused,
            AppendError::WrongExpectedVersion {
                stream_id: stream("b"),
                expected: ExpectedVersion::StreamExists,
                actual: None,
            }
        );
        assert_eq!(known, states(&[("a", Some(2)), ("b", None)]));
    }

    /// Given one batch of three requests to one new stream, when decided in
    /// order, then each sees what the earlier ones appended.
    #[test]
    fn requests_of_a_batch_see_the_earlier_ones() {
        let mut known = states(&[("s", None)]);
        let first = request(&[("s", ExpectedVersion::NoStream, &[1, 2])]);
        let second = request(&[("s", ExpectedVersion::Exact(2), &[3])]);
        let stale = request(&[("s", ExpectedVersion::NoStream, &[4])]);
        assert_eq!(decide_request(&mut known, &first).unwrap(), vec![versions(1, 2)]);
        assert_eq!(decide_request(&mut known, &second).unwrap(), vec![versions(3, 3)]);
        let refused = decide_request(&mut known, &stale).unwrap_err();
        assert!(matches!(
            refused,
            AppendError::WrongExpectedVersion { actual: Some(3), .. }
        ));
    }

    /// Given a stream at the largest version, when one more event comes,
    /// then it is refused and the state stays.
    #[test]
    fn a_stream_at_the_largest_version_takes_no_more() {
        let max = i64::MAX as u64;
        let mut known = states(&[("s", Some(max))]);
        let one = request(&[("s", ExpectedVersion::Any, &[1])]);
        assert!(matches!(
            decide_request(&mut known, &one),
            Err(AppendError::VersionOverflow { version, .. }) if version == max
        ));
        assert_eq!(known, states(&[("s", Some(max))]));
    }

    /// Given accepted and refused requests, when the batch's first versions
    /// are planned, then each written stream has its lowest first version
    /// and refused requests add nothing.
    #[test]
    fn planned_streams_take_each_streams_lowest_first_version() {
        let r1 = request(&[("a", ExpectedVersion::Any, &[1, 2])]);
        let r2 = request(&[("c", ExpectedVersion::Any, &[3])]);
        let r3 = request(&[
            ("a", ExpectedVersion::Any, &[4]),
            ("b", ExpectedVersion::Any, &[5]),
        ]);
        let planned = vec![
            Some(vec![versions(1, 2)]),
            None,
            Some(vec![versions(3, 3), versions(7, 7)]),
        ];
        let first = planned_streams(&[&r1, &r2, &r3], &planned);
        let expected: HashMap<String, i64> = [("a".to_owned(), 1), ("b".to_owned(), 7)].into();
        assert_eq!(first, expected);
        assert!(planned_streams(&[], &[]).is_empty());
    }

    /// Given a cache that knows a, when a batch appends to a, to b (only
    /// ever created) and to c, then only c is looked up, and b and c start
    /// as new streams.
    #[test]
    fn the_optimistic_path_looks_up_only_what_it_must() {
        let cache = VersionCache::new(10);
        cache.remember(&stream("a"), 5);
        let batch = request(&[
            ("a", ExpectedVersion::Any, &[1]),
            ("b", ExpectedVersion::NoStream, &[2]),
            ("c", ExpectedVersion::Any, &[3]),
        ]);
        let (known, missing) = cached_states(&cache, &[&batch]);
        assert_eq!(known, states(&[("a", Some(5)), ("b", None), ("c", None)]));
        assert_eq!(missing.into_iter().collect::<Vec<_>>(), vec!["c"]);
    }

    /// Given a stream created by one request, when another request of the
    /// batch expects it may exist, then it is looked up after all.
    #[test]
    fn a_stream_not_only_created_is_looked_up() {
        let cache = VersionCache::new(10);
        let create = request(&[("b", ExpectedVersion::NoStream, &[1])]);
        let any = request(&[("b", ExpectedVersion::Any, &[2])]);
        let (_, missing) = cached_states(&cache, &[&create, &any]);
        assert_eq!(missing.into_iter().collect::<Vec<_>>(), vec!["b"]);
        let (_, none) = cached_states(&cache, &[]);
        assert!(none.is_empty());
    }

    #[test]
    fn the_version_cache_keeps_the_highest_version() {
        let cache = VersionCache::new(10);
        assert_eq!(cache.get(&stream("s")), None);
        cache.remember(&stream("s"), 4);
        cache.remember(&stream("s"), 2);
        assert_eq!(cache.get(&stream("s")), Some(4), "versions only grow");
        cache.forget([stream("s")]);
        assert_eq!(cache.get(&stream("s")), None);
    }

    /// Given a full cache, when a new stream is remembered, then the cache
    /// starts over; a stream it holds is updated without clearing.
    #[test]
    fn a_full_version_cache_starts_over() {
        let cache = VersionCache::new(2);
        cache.remember(&stream("a"), 1);
        cache.remember(&stream("b"), 1);
        cache.remember(&stream("b"), 2);
        assert_eq!(cache.get(&stream("a")), Some(1));
        cache.remember(&stream("c"), 1);
        assert_eq!(
            (
                cache.get(&stream("a")),
                cache.get(&stream("b")),
                cache.get(&stream("c"))
            ),
            (None, None, Some(1))
        );
    }

    #[test]
    fn the_version_cache_learns_from_answers() {
        let cache = VersionCache::new(10);
        let append = request(&[
            ("a", ExpectedVersion::Any, &[1]),
            ("b", ExpectedVersion::Any, &[2]),
        ]);
        let written = AppendOutcome {
            streams: vec![outcome_stream("a", 3), outcome_stream("b", 9)],
        };
        cache.learn(&append, &Ok(written));
        assert_eq!(
            (cache.get(&stream("a")), cache.get(&stream("b"))),
            (Some(3), Some(9))
        );
        // A refusal tells the stream's actual version...
        let wrong = AppendError::WrongExpectedVersion {
            stream_id: stream("a"),
            expected: ExpectedVersion::Exact(1),
            actual: Some(8),
        };
        cache.learn(&append, &Err(wrong));
        assert_eq!(cache.get(&stream("a")), Some(8));
        // ...any other refusal makes the request's streams unknown.
        let reused = AppendError::EventIdReused {
            event_id: Uuid::from_u128(1),
            where_written: "in a".into(),
        };
        cache.learn(&append, &Err(reused));
        assert_eq!((cache.get(&stream("a")), cache.get(&stream("b"))), (None, None));
    }

    fn outcome_stream(id: &str, version: u64) -> StreamOutcome {
        StreamOutcome {
            stream_id: stream(id),
            current_version: version,
            positions: vec![],
            idempotent_replay: false,
        }
    }

    /// Given a request decided at versions 5..=6 of `order-<uuid>`, when
    /// its rows are built, then each column holds what the store needs.
    #[test]
    fn rows_carry_every_column_of_the_new_events() {
        let id = Uuid::from_u128(42);
        let events = vec![
            event(1),
            ProposedEvent {
                data: EventData::Binary(vec![7]),
                metadata: r#"{"k":1}"#.into(),
                correlation_id: Some(id),
                ..event(2)
            },
        ];
        let order = StreamAppend {
            stream_id: stream(&format!("order-{id}")),
            expected: ExpectedVersion::Any,
            events,
        };
        let append = AppendRequest::new(vec![order], &Limits::default()).unwrap();
        let mut rows = EventRows::default();
        assert!(rows.is_empty());
        rows.push_request(&append, &[versions(5, 6)]);
        assert!(!rows.is_empty());
        assert_eq!(rows.event_id, vec![Uuid::from_u128(1), Uuid::from_u128(2)]);
        assert_eq!(rows.event_version, vec![5, 6]);
        assert_eq!(rows.aggregate_type, vec!["order", "order"]);
        assert_eq!(rows.aggregate_id, vec![Some(id), Some(id)]);
        assert_eq!(rows.event_data, vec![Some("{\"n\":1}".into()), None]);
        assert_eq!(rows.data_binary, vec![None, Some(vec![7])]);
        assert_eq!(rows.metadata, vec!["{}", r#"{"k":1}"#], "none sent = {{}}");
        assert_eq!(rows.correlation_id, vec![None, Some(id)]);
        assert_eq!(rows.schema_version, vec![1, 1]);
    }

    #[test]
    #[should_panic(expected = "not contiguous")]
    fn rows_refuse_versions_that_do_not_fit_the_events() {
        let append = request(&[("s", ExpectedVersion::Any, &[1, 2])]);
        EventRows::default().push_request(&append, &[versions(1, 3)]);
    }

    /// Given new events written at positions, when answered, then each
    /// event has its version and position, in request order.
    #[test]
    fn a_new_append_is_answered_with_its_positions() {
        let append = request(&[
            ("a", ExpectedVersion::Any, &[1, 2]),
            ("b", ExpectedVersion::Any, &[3]),
        ]);
        let positions: HashMap<Uuid, u64> = [(1, 10), (2, 11), (3, 12)]
            .map(|(id, p)| (Uuid::from_u128(id), p))
            .into();
        let outcome = outcome_of(
            &append,
            Planned::New(vec![versions(4, 5), versions(1, 1)]),
            &positions,
        );
        let position = |id: u128, event_version, global_position| EventPosition {
            event_id: Uuid::from_u128(id),
            event_version,
            global_position,
        };
        let a = StreamOutcome {
            positions: vec![position(1, 4, 10), position(2, 5, 11)],
            ..outcome_stream("a", 5)
        };
        let b = StreamOutcome {
            positions: vec![position(3, 1, 12)],
            ..outcome_stream("b", 1)
        };
        assert_eq!(outcome.streams, vec![a, b]);
    }

    /// Given a replayed request, when answered, then it gets the stored
    /// versions and positions, flagged as a replay.
    #[test]
    fn a_replay_is_answered_with_what_was_stored() {
        let append = request(&[("a", ExpectedVersion::Any, &[1])]);
        let stored = ExistingEvent {
            event_id: Uuid::from_u128(1),
            stream_id: "a".into(),
            event_version: 7,
            global_position: 70,
            same_content: true,
        };
        let outcome = outcome_of(&append, Planned::Replay(vec![vec![stored]]), &HashMap::new());
        let a = &outcome.streams[0];
        assert_eq!((a.current_version, a.idempotent_replay), (7, true));
        assert_eq!(
            a.positions,
            vec![EventPosition {
                event_id: Uuid::from_u128(1),
                event_version: 7,
                global_position: 70
            }]
        );
        let empty = outcome_of(&append, Planned::Replay(vec![vec![]]), &HashMap::new());
        assert_eq!(empty.streams[0].current_version, 0);
    }

    #[test]
    fn only_lost_races_are_retried() {
        for race in ["23505", "40P01", "40001", "DBS01"] {
            assert!(is_race(Some(race)), "{race}");
        }
        for failure in [None, Some("23502"), Some("42P01"), Some("")] {
            assert!(!is_race(failure), "{failure:?}");
        }
    }

    #[test]
    fn event_ids_list_every_stream_in_order() {
        let append = request(&[
            ("a", ExpectedVersion::Any, &[3, 1]),
            ("b", ExpectedVersion::Any, &[2]),
        ]);
        let ids: Vec<Uuid> = event_ids(&append).collect();
        assert_eq!(ids, [3, 1, 2].map(Uuid::from_u128));
    }
}
