//! Group commit. Requests queue on a bounded channel; a few committer tasks
//! each take what has queued (up to a bounded batch), decide every request
//! against the locked stream versions, write all accepted events with one
//! INSERT and commit once. Each request still gets its own answer: one
//! request's conflict never fails its neighbours.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use domain::{
    AppendError, AppendRequest, EventData, ExistingEvent, IdempotencyOutcome, StreamId, StreamState,
    VersionedEvent, classify_replay, decide, evolve,
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
const INSERT_EVENTS: &str = include_str!("sql/insert_events.sql");
const UPSERT_STREAMS: &str = include_str!("sql/upsert_streams.sql");

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
}

impl Default for AppendConfig {
    fn default() -> Self {
        AppendConfig {
            queue_max: 4096,
            batch_requests_max: 256,
            batch_events_max: 2000,
            batch_wait_us: 0,
            committers: 4,
            race_attempts_max: 5,
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
        let committers = (0..config.committers.max(1))
            .map(|_| tokio::spawn(run_committer(pool.clone(), receiver.clone(), config)))
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

async fn run_committer(pool: PgPool, receiver: Arc<Mutex<mpsc::Receiver<Pending>>>, config: AppendConfig) {
    loop {
        let batch = {
            let mut receiver = receiver.lock().await;
            match gather_batch(&mut receiver, &config).await {
                Some(batch) => batch,
                None => return,
            }
        };
        commit_batch(&pool, batch, &config).await;
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
            Some("23505" | "40P01" | "40001") => BatchFailure::Race,
            _ => BatchFailure::NotWritten(e.into()),
        }
    }
}

async fn commit_batch(pool: &PgPool, batch: Vec<Pending>, config: &AppendConfig) {
    let events: usize = batch.iter().map(|p| p.request.event_count()).sum();
    metrics::histogram!("dbswarm_append_batch_requests").record(batch.len() as f64);
    metrics::histogram!("dbswarm_append_batch_events").record(events as f64);
    let requests: Vec<&AppendRequest> = batch.iter().map(|p| &p.request).collect();
    match commit_together(pool, &requests).await {
        Ok(outcomes) => {
            for (pending, outcome) in batch.into_iter().zip(outcomes) {
                let _ = pending.reply.send(outcome.map_err(StoreError::from));
            }
        }
        Err(BatchFailure::Race) => {
            metrics::counter!("dbswarm_append_race_fallbacks_total").increment(1);
            for pending in batch {
                let outcome = commit_alone(pool, &pending.request, config.race_attempts_max).await;
                let _ = pending.reply.send(outcome);
            }
        }
        Err(BatchFailure::NotWritten(error)) => {
            tracing::warn!(%error, requests = batch.len(), "append batch failed before commit");
            for pending in batch {
                let _ = pending.reply.send(Err(error.shared()));
            }
        }
        Err(BatchFailure::OutcomeUnknown(message)) => {
            tracing::error!(%message, requests = batch.len(), "append batch commit failed");
            for pending in batch {
                let _ = pending
                    .reply
                    .send(Err(StoreError::CommitOutcomeUnknown(message.clone())));
            }
        }
    }
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
        let positions = insert_rows(&mut tx, rows).await?;
        upsert_stream_versions(&mut tx, requests, &planned).await?;
        positions
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
            metadata.push(event.metadata.clone());
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

/// Locks the batch's existing streams and returns their states. Streams
/// without a row are new; two batches creating the same stream collide
/// on the unique (stream_id, event_version) key and fall back to retries.
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
    let locked: HashMap<String, i64> = sqlx::query_as(LOCK_STREAMS)
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
                self.metadata.push(event.metadata.clone());
                self.correlation_id.push(event.correlation_id);
                self.causation_id.push(event.causation_id);
            }
        }
    }

    fn is_empty(&self) -> bool {
        self.event_id.is_empty()
    }
}

async fn insert_rows(tx: &mut PgConnection, rows: EventRows) -> Result<HashMap<Uuid, u64>, BatchFailure> {
    let expected = rows.event_id.len();
    let written: Vec<(Uuid, i64)> = sqlx::query_as(INSERT_EVENTS)
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
        .fetch_all(&mut *tx)
        .await?;
    if written.len() != expected {
        return Err(BatchFailure::NotWritten(StoreError::Corrupt(format!(
            "inserted {} events, expected {expected}",
            written.len()
        ))));
    }
    Ok(written.into_iter().map(|(id, pos)| (id, pos as u64)).collect())
}

/// Moves each written stream's version forward; every row must move, or
/// another writer got there first.
async fn upsert_stream_versions(
    tx: &mut PgConnection,
    requests: &[&AppendRequest],
    planned: &[Result<Planned, AppendError>],
) -> Result<(), BatchFailure> {
    let mut last: HashMap<&str, i64> = HashMap::new();
    for (request, plan) in requests.iter().zip(planned) {
        if let Ok(Planned::New(versions)) = plan {
            for (stream, appended) in request.streams().iter().zip(versions) {
                last.insert(stream.stream_id.as_str(), appended.last_version as i64);
            }
        }
    }
    let (ids, versions): (Vec<&str>, Vec<i64>) = last.into_iter().unzip();
    let moved = sqlx::query(UPSERT_STREAMS)
        .bind(&ids)
        .bind(&versions)
        .execute(&mut *tx)
        .await?
        .rows_affected();
    if moved != ids.len() as u64 {
        return Err(BatchFailure::Race);
    }
    Ok(())
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
