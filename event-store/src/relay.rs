//! The relay: committed events -> JetStream, gap-free and in order.
//!
//! One relay is active across all servers on a database: the one holding
//! the session advisory lock [`RELAY_LOCK_KEY`] on a connection of its own.
//! When that server dies its connection closes, the lock is released and
//! another server's relay takes over from the stored checkpoint.
//!
//! A step reads events behind the $all horizon (the oldest running
//! transaction of this database, see `migrations/0010_horizon.sql`) from the checkpoint on, publishes each
//! page in global-position order with `Nats-Msg-Id` = event id (so a
//! republish after a crash is dropped by JetStream's duplicate window), and
//! stores the checkpoint only when every event of the page is acknowledged.
//! Steps are woken by LISTEN/NOTIFY (`dbswarm_events`, sent by a trigger on
//! commit) and, as a fallback, by a slow poll.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use async_nats::HeaderMap;
use async_nats::jetstream::context::PublishAckFuture;
use async_nats::jetstream::message::PublishMessage;
use async_nats::jetstream::{self, stream};
use domain::EventData;
use domain::subject::token;
use sqlx::PgPool;
use sqlx::postgres::PgListener;
use tokio::sync::watch;

use crate::leader;
use crate::read::{EventRow, READ_ALL};
use crate::{AllPosition, RecordedEvent};

const CHECKPOINT_LOAD: &str = include_str!("sql/relay_checkpoint_load.sql");
const CHECKPOINT_SAVE: &str = include_str!("sql/relay_checkpoint_save.sql");
const RELAY_LAG: &str = include_str!("sql/relay_lag.sql");
const OLDEST_TRANSACTION: &str = include_str!("sql/oldest_transaction.sql");
const RECONCILE_WINDOW: &str = include_str!("sql/reconcile_window.sql");

/// `pg_try_advisory_lock` key of the relay leadership ("dbswarmR").
pub const RELAY_LOCK_KEY: i64 = 0x6462_7377_6172_6d52;
/// LISTEN channel the events trigger notifies.
pub const EVENTS_CHANNEL: &str = "dbswarm_events";
/// Checkpoint row of the relay.
const RELAY_NAME: &str = "jetstream";
/// Headers every relayed message carries, besides `Nats-Msg-Id`.
pub mod headers {
    pub const EVENT_ID: &str = "Dbswarm-Event-Id";
    pub const STREAM_ID: &str = "Dbswarm-Stream-Id";
    pub const EVENT_VERSION: &str = "Dbswarm-Event-Version";
    pub const GLOBAL_POSITION: &str = "Dbswarm-Global-Position";
    pub const TRANSACTION_ID: &str = "Dbswarm-Transaction-Id";
    pub const EVENT_TYPE: &str = "Dbswarm-Event-Type";
    pub const SCHEMA_VERSION: &str = "Dbswarm-Schema-Version";
    pub const CONTENT_TYPE: &str = "Dbswarm-Content-Type";
    pub const CORRELATION_ID: &str = "Dbswarm-Correlation-Id";
    pub const CAUSATION_ID: &str = "Dbswarm-Causation-Id";
    pub const CREATED_AT: &str = "Dbswarm-Created-At";
    pub const METADATA: &str = "Dbswarm-Metadata";
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelayConfig {
    /// First subject token: events go to `<prefix>.evt.<aggregate>.<type>`.
    pub subject_prefix: String,
    /// JetStream stream that captures `<prefix>.evt.>`.
    pub stream_name: String,
    /// Work-queue stream of commands to agents, `<prefix>.task.>`.
    pub tasks_stream_name: String,
    pub stream_replicas: usize,
    /// 0 = keep messages without an age limit.
    pub stream_max_age_s: u64,
    /// -1 = no size limit.
    pub stream_max_bytes: i64,
    /// How long JetStream remembers message ids for deduplication.
    pub duplicate_window_s: u64,
    /// Publishes awaiting their acknowledgement at once...
    pub acks_in_flight_max: usize,
    /// ...and their payload + metadata bytes at most.
    pub in_flight_bytes_max: usize,
    /// Events read (and published) per step page.
    pub page_events_max: usize,
    /// Fallback wake-up when no notification arrives.
    pub poll_interval_ms: u64,
    /// After a wake-up, wait this long so that one step takes the commits
    /// of several appends (fewer, fuller pages).
    pub step_delay_ms: u64,
    /// Store the checkpoint at most this often (and when stopping): a
    /// checkpoint behind the truth only means republishing, which the
    /// duplicate window drops.
    pub checkpoint_interval_ms: u64,
    /// A transaction holding the horizon longer than this is reported.
    pub horizon_warn_after_s: u64,
    /// How often the leader reconciles JetStream with the store; 0 = never.
    pub reconcile_interval_s: u64,
    /// Events (the most recently released) each reconciliation checks.
    pub reconcile_window_events: usize,
}

impl Default for RelayConfig {
    fn default() -> Self {
        RelayConfig {
            subject_prefix: "dbswarm".into(),
            stream_name: "DBSWARM_EVENTS".into(),
            tasks_stream_name: "DBSWARM_TASKS".into(),
            stream_replicas: 1,
            stream_max_age_s: 0,
            stream_max_bytes: -1,
            duplicate_window_s: 120,
            acks_in_flight_max: 4000,
            in_flight_bytes_max: 64 * 1024 * 1024,
            page_events_max: 2000,
            poll_interval_ms: 1000,
            step_delay_ms: 2,
            checkpoint_interval_ms: 200,
            horizon_warn_after_s: 30,
            reconcile_interval_s: 300,
            reconcile_window_events: 10_000,
        }
    }
}

impl RelayConfig {
    /// The subject an event is published on.
    pub fn subject(&self, aggregate_type: &str, event_type: &str) -> String {
        format!(
            "{}.evt.{}.{}",
            self.subject_prefix,
            token(aggregate_type),
            token(event_type)
        )
    }

    /// The subject of a command to an agent.
    pub fn task_subject(&self, agent: &str, operation: &str) -> String {
        format!(
            "{}.task.{}.{}",
            self.subject_prefix,
            token(agent),
            token(operation)
        )
    }

    /// The subject of a notification (`info`, `warning`, `critical`, ...).
    pub fn notify_subject(&self, severity: &str) -> String {
        format!("{}.notify.{}", self.subject_prefix, token(severity))
    }

    fn stream_config(&self) -> stream::Config {
        stream::Config {
            name: self.stream_name.clone(),
            subjects: vec![format!("{}.evt.>", self.subject_prefix)],
            storage: stream::StorageType::File,
            num_replicas: self.stream_replicas,
            max_age: Duration::from_secs(self.stream_max_age_s),
            max_bytes: self.stream_max_bytes,
            duplicate_window: Duration::from_secs(self.duplicate_window_s),
            ..Default::default()
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    #[error("JetStream: {0}")]
    JetStream(String),
    #[error(
        "JetStream stream {stream} exists with {field} = {actual}, but the configuration asks for {wanted}; change the configuration or the stream"
    )]
    StreamMismatch {
        stream: String,
        field: &'static str,
        actual: String,
        wanted: String,
    },
    #[error("corrupt event: {0}")]
    Corrupt(String),
}

impl RelayError {
    pub fn code(&self) -> domain::Code {
        use domain::Code;
        match self {
            RelayError::Database(e) => crate::database_code(e),
            RelayError::JetStream(_) => Code::Unavailable,
            RelayError::StreamMismatch { .. } => Code::FailedPrecondition,
            RelayError::Corrupt(_) => Code::Internal,
        }
    }
}

fn jetstream_error(e: impl std::fmt::Display) -> RelayError {
    RelayError::JetStream(e.to_string())
}

/// Creates the events stream, or brings an existing one to the configured
/// limits. Refuses what JetStream cannot change in place (storage, subjects).
pub async fn ensure_events_stream(js: &jetstream::Context, config: &RelayConfig) -> Result<(), RelayError> {
    let wanted = config.stream_config();
    let mut stream = js
        .get_or_create_stream(wanted.clone())
        .await
        .map_err(jetstream_error)?;
    let actual = stream.info().await.map_err(jetstream_error)?.config.clone();
    let mismatch = |field: &'static str, actual: String, wanted: String| RelayError::StreamMismatch {
        stream: config.stream_name.clone(),
        field,
        actual,
        wanted,
    };
    if actual.storage != wanted.storage {
        return Err(mismatch(
            "storage",
            format!("{:?}", actual.storage),
            format!("{:?}", wanted.storage),
        ));
    }
    if actual.subjects != wanted.subjects {
        return Err(mismatch(
            "subjects",
            format!("{:?}", actual.subjects),
            format!("{:?}", wanted.subjects),
        ));
    }
    let changed = actual.num_replicas != wanted.num_replicas
        || actual.max_age != wanted.max_age
        || actual.max_bytes != wanted.max_bytes
        || actual.duplicate_window != wanted.duplicate_window;
    if changed {
        tracing::info!(stream = %config.stream_name, "updating JetStream stream limits");
        js.update_stream(wanted).await.map_err(jetstream_error)?;
    }
    Ok(())
}

/// Sends a command to an agent on `<prefix>.task.<agent>.<operation>`,
/// once: `message_id` identifies the command, so a resend within the
/// duplicate window is dropped. Returns false for such a duplicate.
pub async fn publish_task(
    js: &jetstream::Context,
    config: &RelayConfig,
    agent: &str,
    operation: &str,
    message_id: &str,
    payload: bytes::Bytes,
) -> Result<bool, RelayError> {
    let message = PublishMessage::build().payload(payload).message_id(message_id);
    let ack = js
        .send_publish(config.task_subject(agent, operation), message)
        .await
        .map_err(jetstream_error)?
        .await
        .map_err(jetstream_error)?;
    Ok(!ack.duplicate)
}

/// Publishes a notification on `<prefix>.notify.<severity>` (core NATS:
/// whoever listens now gets it).
pub async fn notify(
    client: &async_nats::Client,
    config: &RelayConfig,
    severity: &str,
    payload: bytes::Bytes,
) -> Result<(), RelayError> {
    client
        .publish(config.notify_subject(severity), payload)
        .await
        .map_err(jetstream_error)
}

/// Runs the relay until `stop` turns true: waits for leadership, then
/// relays. Errors are logged and retried with a bounded backoff; the relay
/// never takes the server down.
pub async fn run_relay(
    pool: PgPool,
    js: jetstream::Context,
    config: RelayConfig,
    leading: Arc<AtomicBool>,
    stop: watch::Receiver<bool>,
) {
    let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
    let (pool, js, config, leading_now) = (&pool, &js, &config, &leading);
    leader::run_terms(
        stop,
        move |mut stop| async move { lead(pool, js, config, leading_now, &mut stop).await },
        |led| {
            leading.store(false, Ordering::SeqCst);
            match led {
                Ok(()) => {
                    backoff.reset();
                    Duration::ZERO
                }
                Err(error) => {
                    metrics::counter!("dbswarm_relay_errors_total").increment(1);
                    tracing::warn!(%error, "relay failed; retrying");
                    backoff.next()
                }
            }
        },
    )
    .await;
    metrics::gauge!("dbswarm_relay_leader").set(0.0);
}

/// Becomes leader (waiting as long as another server is), then relays
/// until it stops, loses its lock connection, or fails.
async fn lead(
    pool: &PgPool,
    js: &jetstream::Context,
    config: &RelayConfig,
    leading: &AtomicBool,
    stop: &mut watch::Receiver<bool>,
) -> Result<(), RelayError> {
    let poll = Duration::from_millis(config.poll_interval_ms);
    let waiting = || metrics::gauge!("dbswarm_relay_leader").set(0.0);
    let Some(mut leadership) = leader::acquire(pool, RELAY_LOCK_KEY, poll, stop, waiting).await? else {
        return Ok(());
    };
    metrics::gauge!("dbswarm_relay_leader").set(1.0);
    leading.store(true, Ordering::SeqCst);
    tracing::info!("relay leadership acquired");
    ensure_events_stream(js, config).await?;

    let mut listener = PgListener::connect_with(pool).await?;
    listener.listen(EVENTS_CHANNEL).await?;
    let mut stored = load_checkpoint(pool).await?;
    let mut checkpoint = stored;
    let mut last_store = Instant::now();
    let mut last_report = Instant::now() - Duration::from_secs(3600);
    let mut last_reconcile = Instant::now();
    let checkpoint_interval = Duration::from_millis(config.checkpoint_interval_ms);
    loop {
        checkpoint = relay_released(pool, js, config, checkpoint).await?;
        if checkpoint != stored && last_store.elapsed() >= checkpoint_interval {
            store_checkpoint(pool, checkpoint).await?;
            (stored, last_store) = (checkpoint, Instant::now());
        }
        if config.reconcile_interval_s > 0
            && last_reconcile.elapsed() >= Duration::from_secs(config.reconcile_interval_s)
        {
            reconcile(pool, js, config, config.reconcile_window_events).await?;
            last_reconcile = Instant::now();
        }
        if last_report.elapsed() >= poll {
            report_lag(pool, checkpoint).await?;
            report_horizon(pool, config).await?;
            leadership.check().await?;
            last_report = Instant::now();
        }
        // Sleep until a commit, the checkpoint is due, or the slow poll.
        let wait = if checkpoint != stored {
            checkpoint_interval
        } else {
            poll
        };
        tokio::select! {
            notification = listener.recv() => {
                notification?;
                tokio::time::sleep(Duration::from_millis(config.step_delay_ms)).await;
                while listener.next_buffered().is_some() {}
            }
            _ = tokio::time::sleep(wait) => {}
            _ = leader::stopping(stop) => {
                if checkpoint != stored {
                    store_checkpoint(pool, checkpoint).await?;
                }
                leadership.release().await;
                return Ok(());
            }
        }
    }
}

async fn store_checkpoint(pool: &PgPool, checkpoint: AllPosition) -> Result<(), RelayError> {
    sqlx::query(CHECKPOINT_SAVE)
        .bind(RELAY_NAME)
        .bind(checkpoint.transaction_id.to_string())
        .bind(checkpoint.global_position as i64)
        .execute(pool)
        .await?;
    Ok(())
}

/// The stored checkpoint; `None` before the first one.
async fn stored_checkpoint(pool: &PgPool) -> Result<Option<AllPosition>, RelayError> {
    let row: Option<(i64, i64)> = sqlx::query_as(CHECKPOINT_LOAD)
        .bind(RELAY_NAME)
        .fetch_optional(pool)
        .await?;
    Ok(row.map(|(transaction_id, global_position)| AllPosition {
        transaction_id: transaction_id as u64,
        global_position: global_position as u64,
    }))
}

async fn load_checkpoint(pool: &PgPool) -> Result<AllPosition, RelayError> {
    Ok(stored_checkpoint(pool).await?.unwrap_or_default())
}

/// Events stored after `from`, and the age of the oldest of them, seconds.
async fn lag(pool: &PgPool, from: AllPosition) -> Result<(u64, f64), RelayError> {
    let (events, seconds): (i64, f64) = sqlx::query_as(RELAY_LAG)
        .bind(from.transaction_id.to_string())
        .bind(from.global_position as i64)
        .fetch_one(pool)
        .await?;
    Ok((events as u64, seconds))
}

/// Publishes everything released after `checkpoint`, page by page, and
/// returns how far JetStream has acknowledged (the caller stores it).
/// Acks stay in flight across pages (at most `acks_in_flight_max`): the
/// next page is read while the previous one is being acknowledged, and the
/// checkpoint moves to a page's end once its last message is acknowledged
/// (acks are awaited in publish order).
pub async fn relay_released(
    pool: &PgPool,
    js: &jetstream::Context,
    config: &RelayConfig,
    mut checkpoint: AllPosition,
) -> Result<AllPosition, RelayError> {
    let in_flight_max = config.acks_in_flight_max.max(1);
    let mut in_flight: VecDeque<(PublishAckFuture, Option<AllPosition>, usize)> =
        VecDeque::with_capacity(in_flight_max);
    let mut bytes_in_flight = 0usize;
    let mut subjects = SubjectCache::default();
    let page_max = config.page_events_max;
    let mut rows = fetch_page(pool.clone(), checkpoint, page_max).await?;
    loop {
        let fetched = rows.len();
        let mut next_page = None;
        if fetched > 0 {
            let mut events = rows
                .into_iter()
                .map(RecordedEvent::try_from)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| RelayError::Corrupt(e.to_string()))?;
            // The page's end in $all order is where reading resumes...
            let page_end = events
                .iter()
                .map(RecordedEvent::all_position)
                .max()
                .expect("non-empty");
            // ...but it is published in position order: within a stream,
            // positions follow versions.
            events.sort_by_key(|e| e.global_position);
            if fetched == page_max {
                // Read the next page while this one is published.
                next_page = Some(tokio::spawn(fetch_page(pool.clone(), page_end, page_max)));
            }
            let last = events.len() - 1;
            for (i, event) in events.iter().enumerate() {
                let size = event.data.len() + event.metadata.len();
                while !in_flight.is_empty()
                    && (in_flight.len() >= in_flight_max
                        || bytes_in_flight + size > config.in_flight_bytes_max)
                {
                    let (ack, end, acked_size) = in_flight.pop_front().expect("non-empty");
                    ack.await.map_err(jetstream_error)?;
                    checkpoint = end.unwrap_or(checkpoint);
                    bytes_in_flight -= acked_size;
                }
                bytes_in_flight += size;
                let subject = subjects.subject(config, &event.aggregate_type, &event.event_type);
                let ack = js
                    .send_publish(subject, message(event))
                    .await
                    .map_err(jetstream_error)?;
                in_flight.push_back((ack, (i == last).then_some(page_end), size));
            }
            metrics::counter!("dbswarm_relay_events_total").increment(fetched as u64);
        }
        match next_page {
            Some(next) => rows = next.await.map_err(|e| RelayError::JetStream(e.to_string()))??,
            None => break,
        }
    }
    for (ack, end, _) in in_flight {
        ack.await.map_err(jetstream_error)?;
        checkpoint = end.unwrap_or(checkpoint);
    }
    Ok(checkpoint)
}

/// Encoded subjects by aggregate type and event type: a relay publishes
/// the same few subjects over and over.
#[derive(Default)]
struct SubjectCache {
    by_aggregate: HashMap<String, HashMap<String, async_nats::Subject>>,
    entries: usize,
}

/// Subjects remembered at most; beyond, the cache starts over.
const SUBJECT_CACHE_ENTRIES_MAX: usize = 4096;

impl SubjectCache {
    fn subject(
        &mut self,
        config: &RelayConfig,
        aggregate_type: &str,
        event_type: &str,
    ) -> async_nats::Subject {
        if let Some(subject) = self
            .by_aggregate
            .get(aggregate_type)
            .and_then(|m| m.get(event_type))
        {
            return subject.clone();
        }
        if self.entries >= SUBJECT_CACHE_ENTRIES_MAX {
            self.by_aggregate.clear();
            self.entries = 0;
        }
        let subject = async_nats::Subject::from(config.subject(aggregate_type, event_type));
        self.by_aggregate
            .entry(aggregate_type.to_owned())
            .or_default()
            .insert(event_type.to_owned(), subject.clone());
        self.entries += 1;
        subject
    }
}

async fn fetch_page(pool: PgPool, after: AllPosition, page_max: usize) -> Result<Vec<EventRow>, RelayError> {
    Ok(sqlx::query_as(READ_ALL)
        .bind(after.transaction_id.to_string())
        .bind(after.global_position as i64)
        .bind("")
        .bind(Vec::<String>::new())
        .bind(page_max as i64)
        .fetch_all(&pool)
        .await?)
}

/// The message for an event: its data as the payload, everything else in
/// headers.
pub fn message(event: &RecordedEvent) -> PublishMessage {
    let event_id = event.event_id.to_string();
    let (h, payload) = message_parts(event, &event_id);
    PublishMessage::build()
        .payload(payload)
        .headers(h)
        .message_id(event_id)
}

/// The headers and payload of an event's message, apart from the message
/// id (a `PublishMessage` does not show its parts, these can be tested).
pub(crate) fn message_parts(event: &RecordedEvent, event_id: &str) -> (HeaderMap, bytes::Bytes) {
    let mut h = HeaderMap::new();
    h.insert(headers::EVENT_ID, event_id);
    h.insert(headers::STREAM_ID, event.stream_id.as_str());
    h.insert(headers::EVENT_VERSION, event.event_version.to_string().as_str());
    h.insert(
        headers::GLOBAL_POSITION,
        event.global_position.to_string().as_str(),
    );
    h.insert(headers::TRANSACTION_ID, event.transaction_id.to_string().as_str());
    h.insert(headers::EVENT_TYPE, event.event_type.as_str());
    h.insert(headers::SCHEMA_VERSION, event.schema_version.to_string().as_str());
    h.insert(headers::CREATED_AT, event.created_at.to_rfc3339().as_str());
    h.insert(headers::METADATA, event.metadata.as_str());
    if let Some(id) = event.correlation_id {
        h.insert(headers::CORRELATION_ID, id.to_string().as_str());
    }
    if let Some(id) = event.causation_id {
        h.insert(headers::CAUSATION_ID, id.to_string().as_str());
    }
    let payload = match &event.data {
        EventData::Json(text) => {
            h.insert(headers::CONTENT_TYPE, "application/json");
            bytes::Bytes::copy_from_slice(text.as_bytes())
        }
        EventData::Binary(data) => {
            h.insert(headers::CONTENT_TYPE, "application/octet-stream");
            bytes::Bytes::copy_from_slice(data)
        }
    };
    (h, payload)
}

/// Republishes what JetStream lost: of the last `window_events` events the
/// relay released, those no message in the events stream carries (read
/// with a headers-only consumer from the window's first timestamp on).
/// JetStream can lose messages it acknowledged (a crash before fsync), or
/// a message can be deleted; consumers fill such gaps from the store, and
/// this repairs the stream for everyone else. The republished copy gets
/// the message id `<event id>~reconciled`: the original id may still sit
/// in the duplicate window, and a second reconciliation must not repeat it.
/// Returns how many events were republished.
pub async fn reconcile(
    pool: &PgPool,
    js: &jetstream::Context,
    config: &RelayConfig,
    window_events: usize,
) -> Result<usize, RelayError> {
    use async_nats::jetstream::consumer::{AckPolicy, DeliverPolicy, pull};
    use futures_util::StreamExt;

    let checkpoint = load_checkpoint(pool).await?;
    let rows: Vec<EventRow> = sqlx::query_as(RECONCILE_WINDOW)
        .bind(checkpoint.transaction_id.to_string())
        .bind(checkpoint.global_position as i64)
        .bind(window_events as i64)
        .fetch_all(pool)
        .await?;
    let mut window = rows
        .into_iter()
        .map(RecordedEvent::try_from)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| RelayError::Corrupt(e.to_string()))?;
    let Some(earliest) = window.iter().map(|e| e.created_at).min() else {
        return Ok(0);
    };
    // Messages are stamped when published, after the event's commit.
    let start = time::OffsetDateTime::from_unix_timestamp(earliest.timestamp() - 1)
        .map_err(|e| RelayError::Corrupt(e.to_string()))?;
    let stream = js
        .get_stream(&config.stream_name)
        .await
        .map_err(jetstream_error)?;
    let mut consumer = stream
        .create_consumer(pull::Config {
            deliver_policy: DeliverPolicy::ByStartTime { start_time: start },
            ack_policy: AckPolicy::None,
            headers_only: true,
            inactive_threshold: Duration::from_secs(60),
            ..Default::default()
        })
        .await
        .map_err(jetstream_error)?;
    let mut pending = consumer.info().await.map_err(jetstream_error)?.num_pending;
    let mut held = std::collections::HashSet::new();
    while pending > 0 {
        let mut batch = consumer
            .fetch()
            .max_messages(pending.min(config.page_events_max as u64) as usize)
            .expires(Duration::from_secs(2))
            .messages()
            .await
            .map_err(jetstream_error)?;
        let mut received = 0;
        while let Some(message) = batch.next().await {
            let message = message.map_err(jetstream_error)?;
            if let Some(id) = message.headers.as_ref().and_then(|h| h.get(headers::EVENT_ID)) {
                held.insert(id.as_str().to_owned());
            }
            received += 1;
        }
        if received == 0 {
            break;
        }
        pending = pending.saturating_sub(received);
    }
    window.retain(|e| !held.contains(&e.event_id.to_string()));
    window.sort_by_key(|e| e.global_position);
    for event in &window {
        let message = message(event).message_id(format!("{}~reconciled", event.event_id));
        js.send_publish(config.subject(&event.aggregate_type, &event.event_type), message)
            .await
            .map_err(jetstream_error)?
            .await
            .map_err(jetstream_error)?;
    }
    if !window.is_empty() {
        metrics::counter!("dbswarm_relay_reconciled_total").increment(window.len() as u64);
        tracing::warn!(
            republished = window.len(),
            "reconciliation republished events JetStream did not hold"
        );
    }
    Ok(window.len())
}

/// The running transaction that holds the $all horizon back.
#[derive(Debug, Clone, PartialEq)]
pub struct OldestTransaction {
    pub pid: i32,
    pub database: String,
    pub state: String,
    pub age_seconds: f64,
}

/// Where the relay stands, from the store (any server can answer).
#[derive(Debug, Clone, PartialEq)]
pub struct RelayStatus {
    pub checkpoint: Option<AllPosition>,
    pub lag_events: u64,
    pub lag_seconds: f64,
    pub oldest_transaction: Option<OldestTransaction>,
}

pub async fn relay_status(pool: &PgPool) -> Result<RelayStatus, RelayError> {
    let checkpoint = stored_checkpoint(pool).await?;
    let (lag_events, lag_seconds) = lag(pool, checkpoint.unwrap_or_default()).await?;
    Ok(RelayStatus {
        checkpoint,
        lag_events,
        lag_seconds,
        oldest_transaction: oldest_transaction(pool).await?,
    })
}

async fn oldest_transaction(pool: &PgPool) -> Result<Option<OldestTransaction>, RelayError> {
    let oldest: Option<(i32, String, String, f64)> =
        sqlx::query_as(OLDEST_TRANSACTION).fetch_optional(pool).await?;
    Ok(
        oldest.map(|(pid, database, state, age_seconds)| OldestTransaction {
            pid,
            database,
            state,
            age_seconds,
        }),
    )
}

async fn report_lag(pool: &PgPool, checkpoint: AllPosition) -> Result<(), RelayError> {
    let (events, seconds) = lag(pool, checkpoint).await?;
    metrics::gauge!("dbswarm_relay_lag_events").set(events as f64);
    metrics::gauge!("dbswarm_relay_lag_seconds").set(seconds);
    Ok(())
}

/// Reports the transaction that holds the horizon (and so the relay) back.
async fn report_horizon(pool: &PgPool, config: &RelayConfig) -> Result<(), RelayError> {
    let oldest = oldest_transaction(pool).await?;
    let age_seconds = oldest.as_ref().map_or(0.0, |o| o.age_seconds);
    metrics::gauge!("dbswarm_horizon_oldest_transaction_seconds").set(age_seconds);
    if let Some(oldest) = oldest
        && oldest.age_seconds >= config.horizon_warn_after_s as f64
    {
        tracing::warn!(
            pid = oldest.pid,
            database = %oldest.database,
            state = %oldest.state,
            age_seconds = oldest.age_seconds,
            "a long-running transaction holds the event horizon back: no event committed after it started is relayed until it ends"
        );
    }
    Ok(())
}

struct Backoff {
    initial: Duration,
    max: Duration,
    current: Duration,
}

impl Backoff {
    fn new(initial: Duration, max: Duration) -> Self {
        Backoff {
            initial,
            max,
            current: initial,
        }
    }

    fn next(&mut self) -> Duration {
        let now = self.current;
        self.current = (self.current * 2).min(self.max);
        now
    }

    fn reset(&mut self) {
        self.current = self.initial;
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use chrono::{DateTime, TimeZone, Utc};
    use uuid::Uuid;

    use super::*;

    /// An event with every optional field set, as the relay reads it.
    pub(crate) fn recorded(data: EventData) -> RecordedEvent {
        let order = Uuid::from_u128(7);
        RecordedEvent {
            global_position: 41,
            transaction_id: 9_000_000_001,
            event_id: Uuid::from_u128(1),
            stream_id: format!("order-{order}"),
            aggregate_type: "order".into(),
            aggregate_id: Some(order),
            event_version: 3,
            event_type: "Order.Placed:v2".into(),
            schema_version: 2,
            data,
            metadata: r#"{"user":"zoë"}"#.into(),
            correlation_id: Some(Uuid::from_u128(2)),
            causation_id: Some(Uuid::from_u128(3)),
            created_at: Utc.timestamp_opt(1_700_000_000, 5_000).unwrap(),
        }
    }

    fn header(h: &HeaderMap, name: &str) -> Option<String> {
        h.get(name).map(|v| v.as_str().to_owned())
    }

    #[test]
    fn subjects_are_prefixed_and_encoded() {
        let config = RelayConfig::default();
        assert_eq!(config.subject("order", "Placed"), "dbswarm.evt.order.Placed");
        assert_eq!(
            config.subject("a.b", "Order.Placed:v2"),
            "dbswarm.evt.a~2Eb.Order~2EPlaced~3Av2"
        );
        assert_eq!(config.subject("", "*"), "dbswarm.evt.~.~2A");
        assert_eq!(config.task_subject("schema", "plan"), "dbswarm.task.schema.plan");
        assert_eq!(config.notify_subject("critical"), "dbswarm.notify.critical");
        let custom = RelayConfig {
            subject_prefix: "t1".into(),
            ..RelayConfig::default()
        };
        assert_eq!(custom.task_subject("a>", "b c"), "t1.task.a~3E.b~20c");
    }

    /// Given any aggregate and event type, when published, then the subject
    /// has exactly four tokens and no wildcard.
    #[test]
    fn hostile_names_never_change_the_subject_shape() {
        let config = RelayConfig::default();
        for (aggregate, event_type) in [("a.b.c", "x.y"), ("*", ">"), ("é ü", "🦀"), ("", "")] {
            let subject = config.subject(aggregate, event_type);
            assert_eq!(subject.split('.').count(), 4, "{subject}");
            assert!(!subject.contains(['*', '>', ' ']), "{subject}");
        }
        let long = "x".repeat(10_000);
        let subject = config.subject(&long, &long);
        assert!(subject.len() <= "dbswarm.evt..".len() + 2 * domain::subject::TOKEN_BYTES_MAX);
    }

    #[test]
    fn the_subject_cache_answers_what_the_config_would() {
        let config = RelayConfig::default();
        let mut cache = SubjectCache::default();
        for _ in 0..2 {
            let subject = cache.subject(&config, "order", "Placed");
            assert_eq!(subject.as_str(), config.subject("order", "Placed"));
        }
        assert_eq!(cache.entries, 1, "a repeat is not a new entry");
        let other = cache.subject(&config, "order", "Shipped");
        assert_eq!(other.as_str(), "dbswarm.evt.order.Shipped");
        assert_eq!(cache.entries, 2);
    }

    /// Given a full subject cache, when a new subject is asked for, then
    /// the cache starts over instead of growing.
    #[test]
    fn a_full_subject_cache_starts_over() {
        let config = RelayConfig::default();
        let mut cache = SubjectCache::default();
        for i in 0..SUBJECT_CACHE_ENTRIES_MAX {
            cache.subject(&config, "a", &format!("T{i}"));
        }
        assert_eq!(cache.entries, SUBJECT_CACHE_ENTRIES_MAX);
        let subject = cache.subject(&config, "b", "New");
        assert_eq!(subject.as_str(), "dbswarm.evt.b.New");
        assert_eq!(cache.entries, 1);
    }

    #[test]
    fn a_json_event_travels_in_headers_and_payload() {
        let event = recorded(EventData::Json(r#"{"total":12}"#.into()));
        let (h, payload) = message_parts(&event, &event.event_id.to_string());
        assert_eq!(payload.as_ref(), br#"{"total":12}"#);
        let expected = [
            (headers::EVENT_ID, event.event_id.to_string()),
            (headers::STREAM_ID, event.stream_id.clone()),
            (headers::EVENT_VERSION, "3".into()),
            (headers::GLOBAL_POSITION, "41".into()),
            (headers::TRANSACTION_ID, "9000000001".into()),
            (headers::EVENT_TYPE, "Order.Placed:v2".into()),
            (headers::SCHEMA_VERSION, "2".into()),
            (headers::CONTENT_TYPE, "application/json".into()),
            (headers::CORRELATION_ID, Uuid::from_u128(2).to_string()),
            (headers::CAUSATION_ID, Uuid::from_u128(3).to_string()),
            (headers::CREATED_AT, "2023-11-14T22:13:20.000005+00:00".into()),
            (headers::METADATA, r#"{"user":"zoë"}"#.into()),
        ];
        for (name, value) in expected {
            assert_eq!(header(&h, name).as_deref(), Some(value.as_str()), "{name}");
        }
    }

    #[test]
    fn absent_ids_are_absent_headers_and_binary_is_marked() {
        let event = RecordedEvent {
            correlation_id: None,
            causation_id: None,
            ..recorded(EventData::Binary(vec![0, 255]))
        };
        let (h, payload) = message_parts(&event, "id");
        assert_eq!(payload.as_ref(), [0, 255]);
        assert_eq!(
            header(&h, headers::CONTENT_TYPE).as_deref(),
            Some("application/octet-stream")
        );
        assert_eq!(header(&h, headers::CORRELATION_ID), None);
        assert_eq!(header(&h, headers::CAUSATION_ID), None);
        assert_eq!(header(&h, headers::EVENT_ID).as_deref(), Some("id"));
    }

    #[test]
    fn the_events_stream_config_captures_its_subjects() {
        let config = RelayConfig {
            subject_prefix: "p".into(),
            stream_max_age_s: 60,
            ..RelayConfig::default()
        };
        let events = config.stream_config();
        assert_eq!(
            (events.name.as_str(), events.subjects.as_slice()),
            ("DBSWARM_EVENTS", &["p.evt.>".to_owned()][..])
        );
        assert_eq!(events.max_age, Duration::from_secs(60));
        assert_eq!(events.duplicate_window, Duration::from_secs(120));
    }

    #[test]
    fn backoff_doubles_up_to_its_cap_and_resets() {
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_millis(500));
        let waits: Vec<u128> = (0..5).map(|_| backoff.next().as_millis()).collect();
        assert_eq!(waits, vec![100, 200, 400, 500, 500]);
        backoff.reset();
        assert_eq!(backoff.next(), Duration::from_millis(100));
    }

    #[test]
    fn created_at_survives_its_header_format() {
        let event = recorded(EventData::Json("{}".into()));
        let (h, _) = message_parts(&event, "id");
        let back: DateTime<Utc> = header(&h, headers::CREATED_AT).unwrap().parse().unwrap();
        assert_eq!(back, event.created_at);
    }
}
