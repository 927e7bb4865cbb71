//! Durable consumers of the relayed events, for projections, agents and
//! sagas.
//!
//! A consumer is a durable JetStream pull consumer with explicit acks, a
//! bounded `max_ack_pending`, bounded fetches, an ack wait and redelivery
//! with backoff. After `max_deliver` failed deliveries an event becomes a
//! dead letter: stored with the handler's error in `dead_letters`, listed
//! and replayed over gRPC (`Admin`); the consumer carries out requested
//! replays itself, loading the event from the store.
//!
//! NATS is a copy and PostgreSQL the truth: JetStream can lose messages it
//! acknowledged (a crash before fsync), or a message can be deleted from the
//! stream. When a consumer sees a stream's version jump (v5 applied, v7
//! arrives), it reads the missing versions from the store and applies them
//! first. Versions already applied are acknowledged and skipped. This
//! per-stream memory lives for the consumer's run (bounded by
//! `versions_tracked_max`); a handler that must survive restarts without
//! re-applying keeps its own checkpoint, as projections do.

use std::collections::HashMap;
use std::future::Future;
use std::time::Duration;

use async_nats::jetstream::AckKind;
use async_nats::jetstream::consumer::{AckPolicy, DeliverPolicy, pull};
use async_nats::jetstream::{self};
use chrono::{DateTime, Utc};
use domain::EventData;
use futures_util::StreamExt;
use sqlx::PgPool;
use tokio::sync::watch;
use uuid::Uuid;

use crate::read::EventRow;
use crate::relay::headers;
use crate::{Direction, ReadStreamQuery, Reader, RecordedEvent, StoreError};

const DEAD_LETTER_INSERT: &str = include_str!("sql/dead_letter_insert.sql");
const DEAD_LETTERS_TO_REPLAY: &str = include_str!("sql/dead_letters_to_replay.sql");
const DEAD_LETTER_REPLAYED: &str = include_str!("sql/dead_letter_replayed.sql");
const DEAD_LETTER_REPLAY_FAILED: &str = include_str!("sql/dead_letter_replay_failed.sql");
const DEAD_LETTERS_LIST: &str = include_str!("sql/dead_letters_list.sql");
const DEAD_LETTER_REQUEST_REPLAY: &str = include_str!("sql/dead_letter_request_replay.sql");
const READ_EVENT: &str = include_str!("sql/read_event.sql");

/// Dead-letter replays carried out per fetch cycle.
const REPLAYS_PER_CYCLE_MAX: i64 = 100;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsumerConfig {
    /// Durable name (letters, digits, `_`, `-`).
    pub name: String,
    /// Subject filter within the events stream, e.g. `dbswarm.evt.order.>`.
    pub filter_subject: String,
    /// Delivered but unacknowledged messages at most.
    pub max_ack_pending: i64,
    /// Messages per fetch.
    pub batch_max: usize,
    /// How long a fetch waits for messages.
    pub fetch_expires_ms: u64,
    /// Redelivery when a message is neither acked nor nacked in time.
    pub ack_wait_ms: u64,
    /// Deliveries before an event becomes a dead letter.
    pub max_deliver: i64,
    /// Delay before the n-th redelivery after a failure (last one repeats).
    pub backoff_ms: Vec<u64>,
    /// Streams whose last applied version is remembered.
    pub versions_tracked_max: usize,
}

impl ConsumerConfig {
    pub fn new(name: impl Into<String>, filter_subject: impl Into<String>) -> Self {
        ConsumerConfig {
            name: name.into(),
            filter_subject: filter_subject.into(),
            max_ack_pending: 1000,
            batch_max: 100,
            fetch_expires_ms: 1000,
            ack_wait_ms: 30_000,
            max_deliver: 5,
            backoff_ms: vec![100, 1000, 5000],
            versions_tracked_max: 100_000,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConsumerError {
    #[error("JetStream: {0}")]
    JetStream(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
}

fn jetstream_error(e: impl std::fmt::Display) -> ConsumerError {
    ConsumerError::JetStream(e.to_string())
}

/// What a consumer does with each event. An `Err` is a failed delivery:
/// the event is redelivered with backoff, then dead-lettered.
pub trait EventHandler: Send {
    fn handle(&mut self, event: &RecordedEvent) -> impl Future<Output = Result<(), String>> + Send;
}

pub struct EventConsumer<H> {
    pool: PgPool,
    reader: Reader,
    consumer: jetstream::consumer::Consumer<pull::Config>,
    config: ConsumerConfig,
    handler: H,
    applied: HashMap<String, u64>,
}

impl<H: EventHandler> EventConsumer<H> {
    /// Creates the durable consumer on `stream_name`, or brings an existing
    /// one to `config` (JetStream applies the changeable fields).
    pub async fn create(
        pool: PgPool,
        reader: Reader,
        js: &jetstream::Context,
        stream_name: &str,
        config: ConsumerConfig,
        handler: H,
    ) -> Result<Self, ConsumerError> {
        let stream = js.get_stream(stream_name).await.map_err(jetstream_error)?;
        let wanted = pull::Config {
            durable_name: Some(config.name.clone()),
            filter_subject: config.filter_subject.clone(),
            deliver_policy: DeliverPolicy::All,
            ack_policy: AckPolicy::Explicit,
            ack_wait: Duration::from_millis(config.ack_wait_ms),
            max_deliver: config.max_deliver,
            max_ack_pending: config.max_ack_pending,
            ..Default::default()
        };
        let consumer = match stream.get_or_create_consumer(&config.name, wanted.clone()).await {
            Ok(consumer) => consumer,
            Err(e) => return Err(jetstream_error(e)),
        };
        let existing = consumer.cached_info().config.clone();
        let consumer = if existing.max_ack_pending != wanted.max_ack_pending
            || existing.ack_wait != wanted.ack_wait
            || existing.max_deliver != wanted.max_deliver
        {
            // JetStream applies changed limits to an existing durable
            // consumer on create; what it cannot change it refuses, named.
            stream.create_consumer(wanted).await.map_err(|e| {
                ConsumerError::JetStream(format!(
                    "consumer {} exists with another configuration that JetStream cannot change: {e}",
                    config.name
                ))
            })?
        } else {
            consumer
        };
        Ok(EventConsumer {
            pool,
            reader,
            consumer,
            config,
            handler,
            applied: HashMap::new(),
        })
    }

    /// Consumes until `stop` turns true.
    pub async fn run(mut self, mut stop: watch::Receiver<bool>) -> Result<(), ConsumerError> {
        loop {
            if *stop.borrow() {
                return Ok(());
            }
            self.replay_requested().await?;
            let batch = self
                .consumer
                .fetch()
                .max_messages(self.config.batch_max)
                .expires(Duration::from_millis(self.config.fetch_expires_ms))
                .messages();
            let mut messages = tokio::select! {
                batch = batch => batch.map_err(jetstream_error)?,
                _ = async { let _ = stop.wait_for(|s| *s).await; } => return Ok(()),
            };
            while let Some(message) = messages.next().await {
                let message = message.map_err(jetstream_error)?;
                self.process(message).await?;
            }
        }
    }

    async fn process(&mut self, message: jetstream::Message) -> Result<(), ConsumerError> {
        let Some(event) = event_from_message(&message) else {
            tracing::warn!(subject = %message.subject, "not a dbswarm event; terminated");
            message.ack_with(AckKind::Term).await.map_err(jetstream_error)?;
            return Ok(());
        };
        let last = self.applied.get(&event.stream_id).copied();
        let arrival = arrival(last, event.event_version);
        if arrival == Arrival::AlreadyApplied {
            // A redelivery or a republish: skip it.
            message.ack().await.map_err(jetstream_error)?;
            return Ok(());
        }
        if let Arrival::AfterGap { last } = arrival {
            metrics::counter!("dbswarm_consumer_gaps_filled_total").increment(1);
            if let Err(error) = self.fill_gap(&event.stream_id, last, event.event_version).await {
                tracing::warn!(%error, stream = %event.stream_id, "filling a gap from the store failed; retrying");
                message
                    .ack_with(AckKind::Nak(Some(self.backoff(1))))
                    .await
                    .map_err(jetstream_error)?;
                return Ok(());
            }
        }
        match self.handler.handle(&event).await {
            Ok(()) => {
                self.remember(&event);
                message.ack().await.map_err(jetstream_error)?;
            }
            Err(error) => {
                let delivered = message.info().map(|i| i.delivered).unwrap_or(1);
                if delivered >= self.config.max_deliver {
                    self.dead_letter(&event, &error, delivered).await?;
                    // Skipped until replayed: later versions are not a gap.
                    self.remember(&event);
                    message.ack_with(AckKind::Term).await.map_err(jetstream_error)?;
                } else {
                    message
                        .ack_with(AckKind::Nak(Some(self.backoff(delivered))))
                        .await
                        .map_err(jetstream_error)?;
                }
            }
        }
        Ok(())
    }

    fn backoff(&self, delivered: i64) -> Duration {
        redelivery_delay(&self.config.backoff_ms, delivered)
    }

    fn remember(&mut self, event: &RecordedEvent) {
        if self.applied.len() >= self.config.versions_tracked_max
            && !self.applied.contains_key(&event.stream_id)
        {
            self.applied.clear();
        }
        self.applied.insert(event.stream_id.clone(), event.event_version);
    }

    /// Applies versions `last + 1 .. next` of a stream from the store.
    async fn fill_gap(&mut self, stream_id: &str, last: u64, next: u64) -> Result<(), String> {
        let stream =
            stored_stream_id(stream_id).ok_or_else(|| format!("'{stream_id}' is not a stream id"))?;
        let mut missing = self
            .reader
            .read_stream(ReadStreamQuery {
                stream_id: stream,
                from_version: last + 1,
                direction: Direction::Forwards,
                limit: Some(next - last - 1),
            })
            .await
            .map_err(|e| e.to_string())?;
        while let Some(event) = missing.recv().await {
            let event = event.map_err(|e| e.to_string())?;
            self.handler.handle(&event).await?;
            self.remember(&event);
        }
        Ok(())
    }

    async fn dead_letter(
        &self,
        event: &RecordedEvent,
        error: &str,
        deliveries: i64,
    ) -> Result<(), ConsumerError> {
        metrics::counter!("dbswarm_consumer_dead_letters_total", "consumer" => self.config.name.clone())
            .increment(1);
        tracing::warn!(consumer = %self.config.name, event_id = %event.event_id, %error, "event dead-lettered");
        sqlx::query(DEAD_LETTER_INSERT)
            .bind(&self.config.name)
            .bind(event.event_id)
            .bind(&event.stream_id)
            .bind(event.event_version as i64)
            .bind(error)
            .bind(deliveries as i32)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Carries out the replays requested over gRPC.
    async fn replay_requested(&mut self) -> Result<(), ConsumerError> {
        let requested: Vec<(i64, Uuid)> = sqlx::query_as(DEAD_LETTERS_TO_REPLAY)
            .bind(&self.config.name)
            .bind(REPLAYS_PER_CYCLE_MAX)
            .fetch_all(&self.pool)
            .await?;
        for (id, event_id) in requested {
            let row: Option<EventRow> = sqlx::query_as(READ_EVENT)
                .bind(event_id)
                .fetch_optional(&self.pool)
                .await?;
            let outcome = match row.map(RecordedEvent::try_from) {
                Some(Ok(event)) => self.handler.handle(&event).await,
                Some(Err(e)) => Err(e.to_string()),
                None => Err(format!("event {event_id} is no longer in the store")),
            };
            match outcome {
                Ok(()) => {
                    sqlx::query(DEAD_LETTER_REPLAYED)
                        .bind(id)
                        .execute(&self.pool)
                        .await?;
                }
                Err(error) => {
                    sqlx::query(DEAD_LETTER_REPLAY_FAILED)
                        .bind(id)
                        .bind(error)
                        .execute(&self.pool)
                        .await?;
                }
            }
        }
        Ok(())
    }
}

/// How a delivered event relates to what was applied of its stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Arrival {
    /// The next version, or the first seen of the stream: apply it.
    Next,
    /// At or before the last applied version: skip it.
    AlreadyApplied,
    /// Versions between `last` and it are missing: read them first.
    AfterGap { last: u64 },
}

fn arrival(last_applied: Option<u64>, version: u64) -> Arrival {
    match last_applied {
        Some(last) if version <= last => Arrival::AlreadyApplied,
        Some(last) if version > last + 1 => Arrival::AfterGap { last },
        _ => Arrival::Next,
    }
}

/// The delay before redelivering after the `delivered`-th delivery failed:
/// the n-th entry of `backoff_ms`, the last one repeating; 1 s when empty.
fn redelivery_delay(backoff_ms: &[u64], delivered: i64) -> Duration {
    let index = (delivered.max(1) as usize - 1).min(backoff_ms.len().saturating_sub(1));
    Duration::from_millis(backoff_ms.get(index).copied().unwrap_or(1000))
}

/// A stream id that was valid when stored: only its form is checked again,
/// not today's length limit (which may have been lowered since).
fn stored_stream_id(raw: &str) -> Option<domain::StreamId> {
    let any_length = domain::Limits {
        stream_id_bytes_max: usize::MAX,
        ..domain::Limits::default()
    };
    domain::StreamId::parse(raw, &any_length).ok()
}

/// The event a relayed message carries (see `relay::message`).
pub fn event_from_message(message: &async_nats::Message) -> Option<RecordedEvent> {
    let h = message.headers.as_ref()?;
    let text = |name: &str| h.get(name).map(|v| v.as_str().to_owned());
    let number = |name: &str| text(name)?.parse::<u64>().ok();
    let uuid = |name: &str| text(name).and_then(|v| Uuid::parse_str(&v).ok());
    let stream_id = text(headers::STREAM_ID)?;
    let stream = stored_stream_id(&stream_id)?;
    let data = match text(headers::CONTENT_TYPE).as_deref() {
        Some("application/octet-stream") => EventData::Binary(message.payload.to_vec()),
        _ => EventData::Json(String::from_utf8(message.payload.to_vec()).ok()?),
    };
    Some(RecordedEvent {
        global_position: number(headers::GLOBAL_POSITION)?,
        transaction_id: number(headers::TRANSACTION_ID)?,
        event_id: uuid(headers::EVENT_ID)?,
        aggregate_type: stream.category().to_owned(),
        aggregate_id: stream.aggregate_id(),
        stream_id,
        event_version: number(headers::EVENT_VERSION)?,
        event_type: text(headers::EVENT_TYPE)?,
        schema_version: number(headers::SCHEMA_VERSION)? as u32,
        data,
        metadata: text(headers::METADATA).unwrap_or_else(|| "{}".into()),
        correlation_id: uuid(headers::CORRELATION_ID),
        causation_id: uuid(headers::CAUSATION_ID),
        created_at: text(headers::CREATED_AT)?.parse::<DateTime<Utc>>().ok()?,
    })
}

/// A dead letter, as listed over gRPC.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct DeadLetter {
    pub id: i64,
    pub consumer: String,
    pub event_id: Uuid,
    pub stream_id: String,
    pub event_version: i64,
    pub error: String,
    pub deliveries: i32,
    pub created_at: DateTime<Utc>,
    pub replay_requested_at: Option<DateTime<Utc>>,
    pub replayed_at: Option<DateTime<Utc>>,
}

/// Dead letters after `after_id`, of one consumer ("" = all), at most `limit`.
pub async fn list_dead_letters(
    pool: &PgPool,
    consumer: &str,
    after_id: i64,
    limit: i64,
) -> Result<Vec<DeadLetter>, sqlx::Error> {
    sqlx::query_as(DEAD_LETTERS_LIST)
        .bind(consumer)
        .bind(after_id)
        .bind(limit)
        .fetch_all(pool)
        .await
}

/// Asks the consumer to replay a dead letter. False when there is no such
/// dead letter or it was already replayed.
pub async fn request_replay(pool: &PgPool, id: i64) -> Result<bool, sqlx::Error> {
    let updated: Option<i64> = sqlx::query_scalar(DEAD_LETTER_REQUEST_REPLAY)
        .bind(id)
        .fetch_optional(pool)
        .await?;
    Ok(updated.is_some())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::relay::message_parts;
    use crate::relay::tests::recorded;

    fn delivered(event: &RecordedEvent) -> async_nats::Message {
        let (headers, payload) = message_parts(event, &event.event_id.to_string());
        received(Some(headers), payload)
    }

    fn received(headers: Option<async_nats::HeaderMap>, payload: bytes::Bytes) -> async_nats::Message {
        async_nats::Message {
            subject: "dbswarm.evt.order.Placed".into(),
            reply: None,
            length: payload.len(),
            payload,
            headers,
            status: None,
            description: None,
        }
    }

    /// Given an event, when the relay's message for it is received, then
    /// the consumer sees the same event (JSON and binary alike).
    #[test]
    fn a_relayed_event_arrives_unchanged() {
        for data in [
            EventData::Json(r#"{"ü":"🦀"}"#.into()),
            EventData::Binary(vec![0, 0xff]),
        ] {
            let event = recorded(data);
            assert_eq!(event_from_message(&delivered(&event)), Some(event));
        }
        let bare = RecordedEvent {
            stream_id: "inventory".into(),
            aggregate_type: "inventory".into(),
            aggregate_id: None,
            correlation_id: None,
            causation_id: None,
            ..recorded(EventData::Json("{}".into()))
        };
        assert_eq!(event_from_message(&delivered(&bare)), Some(bare));
    }

    /// Given a relayed message, when one required header is missing or
    /// garbled, then it is not taken for an event.
    #[test]
    fn a_message_missing_what_an_event_needs_is_refused() {
        let event = recorded(EventData::Json("{}".into()));
        let parts = || message_parts(&event, &event.event_id.to_string());
        let required = [
            headers::STREAM_ID,
            headers::GLOBAL_POSITION,
            headers::TRANSACTION_ID,
            headers::EVENT_ID,
            headers::EVENT_VERSION,
            headers::EVENT_TYPE,
            headers::SCHEMA_VERSION,
            headers::CREATED_AT,
        ];
        for name in required {
            let (h, payload) = parts();
            let missing = received(Some(without(h, name)), payload);
            assert_eq!(event_from_message(&missing), None, "without {name}");
        }
        let parsed = [
            headers::GLOBAL_POSITION,
            headers::TRANSACTION_ID,
            headers::EVENT_ID,
            headers::EVENT_VERSION,
            headers::SCHEMA_VERSION,
            headers::CREATED_AT,
        ];
        for name in parsed {
            for garbage in ["", "-1", "x✗", "18446744073709551616"] {
                let (mut h, payload) = parts();
                h.insert(name, garbage);
                let garbled = received(Some(h), payload);
                assert_eq!(event_from_message(&garbled), None, "{name} = {garbage:?}");
            }
        }
        assert_eq!(
            event_from_message(&received(None, "{}".into())),
            None,
            "no headers"
        );
    }

    fn without(h: async_nats::HeaderMap, name: &str) -> async_nats::HeaderMap {
        let mut kept = async_nats::HeaderMap::new();
        for (key, values) in h.iter() {
            if key.as_ref() as &str != name {
                for value in values {
                    kept.append(key.clone(), value.clone());
                }
            }
        }
        kept
    }

    #[test]
    fn odd_but_possible_headers() {
        let event = recorded(EventData::Json("{}".into()));
        // No metadata header: the stored default.
        let (h, payload) = message_parts(&event, &event.event_id.to_string());
        let bare = event_from_message(&received(Some(without(h, headers::METADATA)), payload)).unwrap();
        assert_eq!(bare.metadata, "{}");
        // A stream id the writer could not append ($...) is not an event.
        let (mut h, payload) = message_parts(&event, &event.event_id.to_string());
        h.insert(headers::STREAM_ID, "$all");
        assert_eq!(event_from_message(&received(Some(h), payload)), None);
        // A JSON payload that is not UTF-8 is not an event.
        let (h, _) = message_parts(&event, &event.event_id.to_string());
        assert_eq!(event_from_message(&received(Some(h), vec![0xc3].into())), None);
        // An unparsable correlation id is dropped, not fatal.
        let (mut h, payload) = message_parts(&event, &event.event_id.to_string());
        h.insert(headers::CORRELATION_ID, "nope");
        let event = event_from_message(&received(Some(h), payload)).unwrap();
        assert_eq!(event.correlation_id, None);
    }

    #[test]
    fn stored_stream_ids_are_not_held_to_todays_length_limit() {
        let long = "s".repeat(domain::Limits::default().stream_id_bytes_max * 4);
        assert_eq!(stored_stream_id(&long).map(|s| s.to_string()), Some(long));
        assert!(stored_stream_id("").is_none());
        assert!(stored_stream_id("$all").is_none());
    }

    /// Given the last applied version of a stream, when a version arrives,
    /// then it is applied, skipped, or applied after the gap is filled.
    #[test]
    fn arrivals_are_applied_skipped_or_preceded_by_the_gap() {
        assert_eq!(arrival(None, 1), Arrival::Next);
        assert_eq!(arrival(None, 9), Arrival::Next, "first seen: no memory, no gap");
        assert_eq!(arrival(Some(5), 6), Arrival::Next);
        assert_eq!(arrival(Some(5), 5), Arrival::AlreadyApplied);
        assert_eq!(arrival(Some(5), 1), Arrival::AlreadyApplied);
        assert_eq!(arrival(Some(5), 7), Arrival::AfterGap { last: 5 });
        assert_eq!(arrival(Some(0), u64::MAX), Arrival::AfterGap { last: 0 });
    }

    #[test]
    fn redelivery_waits_follow_the_backoff_list() {
        let backoff = [100, 1000, 5000];
        let waits: Vec<u128> = [0, 1, 2, 3, 4, 50]
            .map(|d| redelivery_delay(&backoff, d).as_millis())
            .into();
        assert_eq!(waits, vec![100, 100, 1000, 5000, 5000, 5000]);
        assert_eq!(redelivery_delay(&[], 3), Duration::from_secs(1), "empty list");
        assert_eq!(redelivery_delay(&backoff, -7), Duration::from_millis(100));
    }

    #[test]
    fn consumer_defaults() {
        let config = ConsumerConfig::new("c", "dbswarm.evt.>");
        assert_eq!(
            (config.name.as_str(), config.filter_subject.as_str()),
            ("c", "dbswarm.evt.>")
        );
        assert_eq!(config.backoff_ms, vec![100, 1000, 5000]);
        assert!(config.max_deliver > 0 && config.batch_max > 0);
    }
}
