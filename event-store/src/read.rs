//! Reads, paged from PostgreSQL into a bounded channel: a slow consumer
//! makes the producer wait, so memory stays flat however long the read.

use chrono::{DateTime, Utc};
use domain::{EventData, StreamId, verify_contiguous};
use sqlx::PgPool;
use std::time::Duration;

use sqlx::postgres::PgListener;
use tokio::sync::{mpsc, watch};
use uuid::Uuid;

use crate::error::StoreError;

const STREAM_VERSION: &str = include_str!("sql/stream_version.sql");
const READ_STREAM_FORWARDS: &str = include_str!("sql/read_stream_forwards.sql");
const READ_STREAM_BACKWARDS: &str = include_str!("sql/read_stream_backwards.sql");
const HORIZON: &str = include_str!("sql/horizon.sql");
const READ_ALL_PAGE: &str = include_str!("sql/read_all_page.sql");
pub(crate) const READ_ALL: &str = include_str!("sql/read_all.sql");

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadConfig {
    /// Rows fetched per query.
    pub page_events_max: usize,
    /// Events buffered between the database and a slow client.
    pub buffer_events_max: usize,
}

impl Default for ReadConfig {
    fn default() -> Self {
        ReadConfig {
            page_events_max: 500,
            buffer_events_max: 256,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    Forwards,
    Backwards,
}

#[derive(Debug, Clone)]
pub struct ReadStreamQuery {
    pub stream_id: StreamId,
    /// Forwards: first version returned (0 = 1). Backwards: highest version
    /// returned (0 = the stream's last).
    pub from_version: u64,
    pub direction: Direction,
    pub limit: Option<u64>,
}

/// A point in the $all order (transaction id, then global position).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct AllPosition {
    pub transaction_id: u64,
    pub global_position: u64,
}

#[derive(Debug, Clone, Default)]
pub struct ReadAllQuery {
    /// Exclusive; `None` = from the beginning.
    pub after: Option<AllPosition>,
    pub stream_prefix: String,
    pub event_types: Vec<String>,
    pub limit: Option<u64>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct RecordedEvent {
    pub global_position: u64,
    pub transaction_id: u64,
    pub event_id: Uuid,
    pub stream_id: String,
    pub aggregate_type: String,
    pub aggregate_id: Option<Uuid>,
    pub event_version: u64,
    pub event_type: String,
    pub schema_version: u32,
    pub data: EventData,
    /// JSON object text.
    pub metadata: String,
    pub correlation_id: Option<Uuid>,
    pub causation_id: Option<Uuid>,
    pub created_at: DateTime<Utc>,
}

impl RecordedEvent {
    pub fn all_position(&self) -> AllPosition {
        AllPosition {
            transaction_id: self.transaction_id,
            global_position: self.global_position,
        }
    }
}

#[derive(sqlx::FromRow)]
pub(crate) struct EventRow {
    global_position: i64,
    event_id: Uuid,
    stream_id: String,
    aggregate_type: String,
    aggregate_id: Option<Uuid>,
    event_version: i64,
    event_type: String,
    schema_version: i32,
    event_data: Option<String>,
    data_binary: Option<Vec<u8>>,
    metadata: String,
    correlation_id: Option<Uuid>,
    causation_id: Option<Uuid>,
    transaction_id: i64,
    created_at: DateTime<Utc>,
}

impl TryFrom<EventRow> for RecordedEvent {
    type Error = StoreError;

    fn try_from(row: EventRow) -> Result<Self, StoreError> {
        let data = match (row.event_data, row.data_binary) {
            (Some(json), None) => EventData::Json(json),
            (None, Some(bytes)) => EventData::Binary(bytes),
            _ => {
                return Err(StoreError::Corrupt(format!(
                    "event {} has not exactly one payload column set",
                    row.event_id
                )));
            }
        };
        Ok(RecordedEvent {
            global_position: row.global_position as u64,
            transaction_id: row.transaction_id as u64,
            event_id: row.event_id,
            stream_id: row.stream_id,
            aggregate_type: row.aggregate_type,
            aggregate_id: row.aggregate_id,
            event_version: row.event_version as u64,
            event_type: row.event_type,
            schema_version: row.schema_version as u32,
            data,
            metadata: row.metadata,
            correlation_id: row.correlation_id,
            causation_id: row.causation_id,
            created_at: row.created_at,
        })
    }
}

/// A page of `$all` (see [`Reader::read_all_page`]).
#[derive(Debug)]
pub struct AllPage {
    pub events: Vec<RecordedEvent>,
    pub scanned_to: AllPosition,
}

/// The event of `row`, checked to come after `after` (read-side invariant:
/// `$all` only moves forwards).
fn next_in_all(row: EventRow, after: AllPosition) -> Result<RecordedEvent, StoreError> {
    let event = RecordedEvent::try_from(row)?;
    if event.all_position() <= after {
        return Err(StoreError::Corrupt(format!(
            "$all went backwards: {:?} after {after:?}",
            event.all_position()
        )));
    }
    Ok(event)
}

/// Where a read of a stream at version `current` starts: the first version
/// to fetch, and the version the first event must follow (`None` when
/// nothing is to be read).
fn stream_start(direction: Direction, from_version: u64, current: u64) -> (u64, Option<u64>) {
    let next = match direction {
        Direction::Forwards => from_version.max(1),
        Direction::Backwards if from_version == 0 || from_version > current => current,
        Direction::Backwards => from_version,
    };
    // Read-side invariant: the first event is the one asked for and
    // every later one follows it by exactly one version.
    let previous = match direction {
        Direction::Forwards if next <= current => Some(next - 1),
        Direction::Forwards => None,
        Direction::Backwards => Some(next + 1),
    };
    (next, previous)
}

/// How far a page of `$all` read after `last` lets its reader move on: a
/// full page only to its last event (more may follow), a short one to the
/// horizon too, since nothing of its filter below the horizon is left.
fn scanned_to(full: bool, last: AllPosition, horizon_transaction: u64) -> AllPosition {
    let horizon = AllPosition {
        transaction_id: horizon_transaction,
        global_position: 0,
    };
    if full { last } else { last.max(horizon) }
}

pub type EventReceiver = mpsc::Receiver<Result<RecordedEvent, StoreError>>;

#[derive(Clone)]
pub struct Reader {
    pool: PgPool,
    config: ReadConfig,
}

impl Reader {
    pub fn new(pool: PgPool, config: ReadConfig) -> Reader {
        Reader { pool, config }
    }

    /// The stream's current version, `None` when it does not exist.
    pub async fn stream_version(&self, stream_id: &StreamId) -> Result<Option<u64>, StoreError> {
        let version: Option<i64> = sqlx::query_scalar(STREAM_VERSION)
            .bind(stream_id.as_str())
            .fetch_optional(&self.pool)
            .await?;
        Ok(version.map(|v| v as u64))
    }

    /// Streams the events of one stream. Fails up front with
    /// `StreamNotFound`; errors met later arrive in the channel.
    pub async fn read_stream(&self, query: ReadStreamQuery) -> Result<EventReceiver, StoreError> {
        let current = self
            .stream_version(&query.stream_id)
            .await?
            .ok_or_else(|| StoreError::StreamNotFound(query.stream_id.to_string()))?;
        let (sender, receiver) = mpsc::channel(self.config.buffer_events_max.max(1));
        let reader = self.clone();
        tokio::spawn(async move {
            if let Err(e) = reader.produce_stream(&query, current, &sender).await {
                let _ = sender.send(Err(e)).await;
            }
        });
        Ok(receiver)
    }

    async fn produce_stream(
        &self,
        query: &ReadStreamQuery,
        current: u64,
        sender: &mpsc::Sender<Result<RecordedEvent, StoreError>>,
    ) -> Result<(), StoreError> {
        let forwards = query.direction == Direction::Forwards;
        let stream = query.stream_id.as_str();
        let (mut next, mut previous) = stream_start(query.direction, query.from_version, current);
        let mut remaining = query.limit.unwrap_or(u64::MAX);
        while remaining > 0 && next >= 1 {
            let page = remaining.min(self.config.page_events_max as u64);
            let sql = if forwards {
                READ_STREAM_FORWARDS
            } else {
                READ_STREAM_BACKWARDS
            };
            let rows: Vec<EventRow> = sqlx::query_as(sql)
                .bind(stream)
                .bind(next as i64)
                .bind(page as i64)
                .fetch_all(&self.pool)
                .await?;
            let fetched = rows.len() as u64;
            for row in rows {
                let event = RecordedEvent::try_from(row)?;
                verify_contiguous(stream, previous, event.event_version, forwards)?;
                previous = Some(event.event_version);
                if sender.send(Ok(event)).await.is_err() {
                    return Ok(()); // the client went away
                }
            }
            remaining -= fetched;
            let Some(last) = previous else { break };
            if fetched < page {
                break;
            }
            next = if forwards { last + 1 } else { last - 1 };
        }
        Ok(())
    }

    /// Streams committed events in $all order, up to the horizon of
    /// transactions still running.
    pub fn read_all(&self, query: ReadAllQuery) -> EventReceiver {
        let (sender, receiver) = mpsc::channel(self.config.buffer_events_max.max(1));
        let reader = self.clone();
        tokio::spawn(async move {
            if let Err(e) = reader.produce_all(&query, &sender).await {
                let _ = sender.send(Err(e)).await;
            }
        });
        receiver
    }

    async fn produce_all(
        &self,
        query: &ReadAllQuery,
        sender: &mpsc::Sender<Result<RecordedEvent, StoreError>>,
    ) -> Result<(), StoreError> {
        let mut after = query.after.unwrap_or_default();
        let mut remaining = query.limit.unwrap_or(u64::MAX);
        self.drain_all(query, &mut after, &mut remaining, sender).await?;
        Ok(())
    }

    /// Sends what is released after `after` (moving it), until caught up,
    /// `remaining` is spent, or the client is gone.
    async fn drain_all(
        &self,
        query: &ReadAllQuery,
        after: &mut AllPosition,
        remaining: &mut u64,
        sender: &mpsc::Sender<Result<RecordedEvent, StoreError>>,
    ) -> Result<Drained, StoreError> {
        while *remaining > 0 {
            let page = (*remaining).min(self.config.page_events_max as u64);
            let rows: Vec<EventRow> = sqlx::query_as(READ_ALL)
                .bind(after.transaction_id.to_string())
                .bind(after.global_position as i64)
                .bind(&query.stream_prefix)
                .bind(&query.event_types)
                .bind(page as i64)
                .fetch_all(&self.pool)
                .await?;
            let fetched = rows.len() as u64;
            for row in rows {
                let event = next_in_all(row, *after)?;
                *after = event.all_position();
                if sender.send(Ok(event)).await.is_err() {
                    return Ok(Drained::ClientGone);
                }
            }
            *remaining -= fetched;
            if fetched < page {
                return Ok(Drained::CaughtUp);
            }
        }
        Ok(Drained::CaughtUp)
    }

    /// One page of `$all` after `after` for a batch consumer (projections):
    /// at most `limit` events of `event_types` (all types when empty), and
    /// `scanned_to`, the position up to which nothing else of those types
    /// will ever appear. When the page is not full that is the horizon
    /// itself, so a filter that matches little still moves its reader on.
    pub async fn read_all_page(
        &self,
        after: AllPosition,
        event_types: &[String],
        limit: usize,
    ) -> Result<AllPage, StoreError> {
        let horizon: i64 = sqlx::query_scalar(HORIZON).fetch_one(&self.pool).await?;
        let rows: Vec<EventRow> = sqlx::query_as(READ_ALL_PAGE)
            .bind(after.transaction_id.to_string())
            .bind(after.global_position as i64)
            .bind(horizon.to_string())
            .bind(event_types)
            .bind(limit.max(1) as i64)
            .fetch_all(&self.pool)
            .await?;
        let full = rows.len() >= limit.max(1);
        let mut events = Vec::with_capacity(rows.len());
        let mut last = after;
        for row in rows {
            let event = next_in_all(row, last)?;
            last = event.all_position();
            events.push(event);
        }
        let scanned_to = scanned_to(full, last, horizon as u64);
        Ok(AllPage { events, scanned_to })
    }

    /// A catch-up subscription to $all: history, then each new commit, read
    /// from the store in $all order, so the switch from history to live has
    /// no gap and no duplicate. Ends only when the client goes away.
    pub fn subscribe_all(&self, query: ReadAllQuery, commits: CommitSignal) -> EventReceiver {
        let (sender, receiver) = mpsc::channel(self.config.buffer_events_max.max(1));
        let reader = self.clone();
        tokio::spawn(async move {
            let after = query.after.unwrap_or_default();
            reader.follow(Cursor::All { query, after }, commits, sender).await;
        });
        receiver
    }

    /// A catch-up subscription to one stream from `from_version` (which
    /// need not exist yet), in version order.
    pub fn subscribe_to_stream(
        &self,
        stream_id: StreamId,
        from_version: u64,
        commits: CommitSignal,
    ) -> EventReceiver {
        let (sender, receiver) = mpsc::channel(self.config.buffer_events_max.max(1));
        let reader = self.clone();
        tokio::spawn(async move {
            let next = from_version.max(1);
            reader
                .follow(Cursor::Stream { stream_id, next }, commits, sender)
                .await;
        });
        receiver
    }

    /// Drains, waits for the next commit, drains again, until the client
    /// goes away, the server stops, or a read fails (the error goes to the
    /// client).
    async fn follow(
        &self,
        mut cursor: Cursor,
        mut commits: CommitSignal,
        sender: mpsc::Sender<Result<RecordedEvent, StoreError>>,
    ) {
        loop {
            let drained = match &mut cursor {
                Cursor::All { query, after } => {
                    let mut unlimited = u64::MAX;
                    self.drain_all(query, after, &mut unlimited, &sender).await
                }
                Cursor::Stream { stream_id, next } => self.drain_stream(stream_id, next, &sender).await,
            };
            match drained {
                Ok(Drained::ClientGone) => return,
                Ok(Drained::CaughtUp) => {}
                Err(e) => {
                    let _ = sender.send(Err(e)).await;
                    return;
                }
            }
            if !commits.wait(&sender).await {
                return;
            }
        }
    }

    async fn drain_stream(
        &self,
        stream_id: &StreamId,
        next: &mut u64,
        sender: &mpsc::Sender<Result<RecordedEvent, StoreError>>,
    ) -> Result<Drained, StoreError> {
        let stream = stream_id.as_str();
        loop {
            let page = self.config.page_events_max as u64;
            let rows: Vec<EventRow> = sqlx::query_as(READ_STREAM_FORWARDS)
                .bind(stream)
                .bind(*next as i64)
                .bind(page as i64)
                .fetch_all(&self.pool)
                .await?;
            let fetched = rows.len() as u64;
            for row in rows {
                let event = RecordedEvent::try_from(row)?;
                verify_contiguous(stream, Some(*next - 1), event.event_version, true)?;
                *next = event.event_version + 1;
                if sender.send(Ok(event)).await.is_err() {
                    return Ok(Drained::ClientGone);
                }
            }
            if fetched < page {
                return Ok(Drained::CaughtUp);
            }
        }
    }
}

/// Where a subscription is: what it reads and how far it has sent.
enum Cursor {
    All { query: ReadAllQuery, after: AllPosition },
    Stream { stream_id: StreamId, next: u64 },
}

/// How a drain of the store ended.
enum Drained {
    CaughtUp,
    ClientGone,
}

/// Wakes subscriptions when events commit: a counter bumped on every
/// `NOTIFY dbswarm_events` (see [`watch_commits`]). Subscriptions also wake
/// every `fallback_poll`, so a lost notification delays, never loses.
#[derive(Clone)]
pub struct CommitSignal {
    commits: watch::Receiver<u64>,
    fallback_poll: Duration,
}

impl CommitSignal {
    pub fn new(commits: watch::Receiver<u64>, fallback_poll: Duration) -> Self {
        CommitSignal {
            commits,
            fallback_poll,
        }
    }

    /// Waits for a commit or the fallback poll; false when the commit
    /// listener is gone (the server is stopping).
    pub async fn changed(&mut self) -> bool {
        tokio::select! {
            changed = self.commits.changed() => changed.is_ok(),
            _ = tokio::time::sleep(self.fallback_poll) => true,
        }
    }

    /// Waits for a commit or the fallback poll (true). False when the
    /// client went away, or the server is stopping (the client is told so).
    async fn wait(&mut self, sender: &mpsc::Sender<Result<RecordedEvent, StoreError>>) -> bool {
        tokio::select! {
            changed = self.commits.changed() => {
                if changed.is_err() {
                    // The commit listener is gone: the server is stopping.
                    let _ = sender.send(Err(StoreError::ShuttingDown)).await;
                    return false;
                }
                true
            }
            _ = tokio::time::sleep(self.fallback_poll) => true,
            _ = sender.closed() => false,
        }
    }
}

/// Listens for `NOTIFY dbswarm_events` and bumps `commits` on each, until
/// `stop`; reconnects (with a pause) when the connection is lost.
pub async fn watch_commits(pool: PgPool, commits: watch::Sender<u64>, mut stop: watch::Receiver<bool>) {
    loop {
        let listened = async {
            let mut listener = PgListener::connect_with(&pool).await?;
            listener.listen(crate::relay::EVENTS_CHANNEL).await?;
            loop {
                listener.recv().await?;
                while listener.next_buffered().is_some() {}
                commits.send_modify(|n| *n = n.wrapping_add(1));
            }
            #[allow(unreachable_code)]
            Ok::<(), sqlx::Error>(())
        };
        tokio::select! {
            result = listened => {
                if let Err(error) = result {
                    tracing::warn!(%error, "commit listener lost; reconnecting");
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            _ = async { let _ = stop.wait_for(|s| *s).await; } => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(transaction_id: i64, global_position: i64) -> EventRow {
        EventRow {
            global_position,
            event_id: Uuid::from_u128(global_position as u128),
            stream_id: "order-1".into(),
            aggregate_type: "order".into(),
            aggregate_id: None,
            event_version: 1,
            event_type: "Placed".into(),
            schema_version: 1,
            event_data: Some("{}".into()),
            data_binary: None,
            metadata: "{}".into(),
            correlation_id: None,
            causation_id: None,
            transaction_id,
            created_at: DateTime::<Utc>::UNIX_EPOCH,
        }
    }

    fn at(transaction_id: u64, global_position: u64) -> AllPosition {
        AllPosition {
            transaction_id,
            global_position,
        }
    }

    #[test]
    fn all_positions_order_by_transaction_then_position() {
        assert!(at(1, 9) < at(2, 1), "a later transaction comes later");
        assert!(at(2, 1) < at(2, 2));
        assert_eq!(AllPosition::default(), at(0, 0));
        assert_eq!(
            RecordedEvent::try_from(row(5, 3)).unwrap().all_position(),
            at(5, 3)
        );
    }

    /// Given a cursor, when the next row is after it, then it is the next
    /// event; when it is at or before it, then the store is corrupt.
    #[test]
    fn all_only_moves_forwards() {
        assert_eq!(next_in_all(row(2, 1), at(1, 5)).unwrap().global_position, 1);
        assert_eq!(next_in_all(row(1, 6), at(1, 5)).unwrap().global_position, 6);
        assert!(
            next_in_all(row(0, 1), AllPosition::default()).is_ok(),
            "from the start"
        );
        for (t, p) in [(1, 5), (1, 4), (0, 9)] {
            let error = next_in_all(row(t, p), at(1, 5)).unwrap_err();
            assert!(
                matches!(&error, StoreError::Corrupt(m) if m.contains("went backwards")),
                "{error}"
            );
        }
    }

    #[test]
    fn a_row_has_exactly_one_payload() {
        let json = RecordedEvent::try_from(row(1, 1)).unwrap();
        assert_eq!(json.data, EventData::Json("{}".into()));
        let binary = EventRow {
            event_data: None,
            data_binary: Some(vec![1]),
            ..row(1, 1)
        };
        assert_eq!(
            RecordedEvent::try_from(binary).unwrap().data,
            EventData::Binary(vec![1])
        );
        for (json, binary) in [(None, None), (Some("{}".to_owned()), Some(vec![1]))] {
            let bad = EventRow {
                event_data: json,
                data_binary: binary,
                ..row(1, 1)
            };
            assert!(matches!(
                RecordedEvent::try_from(bad),
                Err(StoreError::Corrupt(_))
            ));
        }
    }

    #[test]
    fn forward_reads_start_at_the_version_asked_for() {
        assert_eq!(stream_start(Direction::Forwards, 0, 5), (1, Some(0)), "0 = 1");
        assert_eq!(stream_start(Direction::Forwards, 3, 5), (3, Some(2)));
        assert_eq!(stream_start(Direction::Forwards, 5, 5), (5, Some(4)));
        assert_eq!(stream_start(Direction::Forwards, 6, 5), (6, None), "past the end");
        assert_eq!(stream_start(Direction::Forwards, u64::MAX, 5), (u64::MAX, None));
    }

    #[test]
    fn backward_reads_start_at_the_end_or_the_version_asked_for() {
        assert_eq!(stream_start(Direction::Backwards, 0, 5), (5, Some(6)), "0 = last");
        assert_eq!(
            stream_start(Direction::Backwards, 9, 5),
            (5, Some(6)),
            "past = last"
        );
        assert_eq!(stream_start(Direction::Backwards, 2, 5), (2, Some(3)));
        assert_eq!(stream_start(Direction::Backwards, 1, 5), (1, Some(2)));
    }

    /// Given a page of $all, when it is full, then its reader moves to its
    /// last event only; when short, then to the horizon if that is further.
    #[test]
    fn short_pages_move_their_reader_to_the_horizon() {
        assert_eq!(scanned_to(true, at(3, 30), 9), at(3, 30));
        assert_eq!(scanned_to(false, at(3, 30), 9), at(9, 0));
        assert_eq!(scanned_to(false, at(9, 30), 9), at(9, 30), "never backwards");
        assert_eq!(scanned_to(false, AllPosition::default(), 0), at(0, 0));
    }
}
