//! Per-stream snapshots of aggregate state, and loading an aggregate from
//! its newest snapshot plus the events after it.
//!
//! A snapshot is a cache, never the truth: the events are. So a snapshot is
//! only used when everything about it checks out, and otherwise ignored
//! (with a warning) and the state replayed from the stream's first event:
//! - its schema version must equal the aggregate's
//!   [`Aggregate::SNAPSHOT_SCHEMA_VERSION`] (an older shape or meaning is
//!   never trusted blindly; the next save replaces it);
//! - its version must not be ahead of its stream (saving refuses that, so
//!   such a row was written by hand or restored from elsewhere: corrupt);
//! - its state must deserialize into the aggregate.
//!
//! Snapshots are taken every `snapshot_every_events` replayed events by
//! [`AggregateLoader::load`], or on demand by
//! [`AggregateLoader::snapshot_now`]. Only the newest snapshot of a stream
//! is kept (see `migrations/0006_snapshots.sql`).

use chrono::{DateTime, Utc};
use domain::StreamId;
use serde::Serialize;
use serde::de::DeserializeOwned;
use sqlx::PgPool;

use crate::error::StoreError;
use crate::read::{Direction, ReadStreamQuery, Reader, RecordedEvent};

const SNAPSHOT_SAVE: &str = include_str!("sql/snapshot_save.sql");
const SNAPSHOT_LOAD_LATEST: &str = include_str!("sql/snapshot_load_latest.sql");

/// A stored snapshot: the state folded from a stream's events 1..=`stream_version`.
#[derive(Debug, Clone, PartialEq)]
pub struct Snapshot {
    pub stream_id: String,
    /// The version of the last event folded into `state` (≥ 1).
    pub stream_version: u64,
    /// The aggregate's [`Aggregate::SNAPSHOT_SCHEMA_VERSION`] when it was saved.
    pub schema_version: u32,
    pub state: serde_json::Value,
    pub created_at: DateTime<Utc>,
}

#[derive(sqlx::FromRow)]
struct SnapshotRow {
    stream_id: String,
    stream_version: i64,
    schema_version: i32,
    /// jsonb as text: the loader deserializes it straight into the aggregate.
    state: String,
    created_at: DateTime<Utc>,
}

/// Reads and writes the `snapshots` table.
#[derive(Clone)]
pub struct SnapshotStore {
    pool: PgPool,
    /// Largest state saved, in bytes of JSON text; a larger one is refused.
    state_bytes_max: usize,
}

impl SnapshotStore {
    pub fn new(pool: PgPool, state_bytes_max: usize) -> Self {
        SnapshotStore {
            pool,
            state_bytes_max,
        }
    }

    /// Saves the state folded from events 1..=`stream_version` of `stream`,
    /// and deletes the stream's older snapshots in the same statement.
    /// Refuses with [`StoreError::InvalidSnapshot`], writing nothing: version
    /// 0, a version the stream does not have yet (a snapshot is never ahead
    /// of its stream), schema version 0, a state over `state_bytes_max`.
    pub async fn save(
        &self,
        stream: &StreamId,
        stream_version: u64,
        schema_version: u32,
        state: &serde_json::Value,
    ) -> Result<(), StoreError> {
        let refuse = |why: String| {
            Err(StoreError::InvalidSnapshot(format!(
                "snapshot of stream '{stream}': {why}"
            )))
        };
        if stream_version == 0 {
            return refuse(
                "stream version 0: a snapshot's version is that of the last event folded into it, from 1"
                    .into(),
            );
        }
        let Ok(version) = i64::try_from(stream_version) else {
            return refuse(format!("stream version {stream_version} is beyond any stream"));
        };
        if schema_version == 0 {
            return refuse("schema_version 0: schema versions start at 1".into());
        }
        let Ok(schema) = i32::try_from(schema_version) else {
            return refuse(format!(
                "schema_version {schema_version} is over the largest stored, {}",
                i32::MAX
            ));
        };
        let text = serde_json::to_string(state).map_err(|e| {
            StoreError::InvalidSnapshot(format!("snapshot of stream '{stream}': state is not JSON: {e}"))
        })?;
        if text.len() > self.state_bytes_max {
            return refuse(format!(
                "state is {} bytes of JSON; the limit is {} bytes (state_bytes_max)",
                text.len(),
                self.state_bytes_max
            ));
        }
        if text.contains("\\u0000") {
            return refuse("state contains \\u0000 in a string, which PostgreSQL jsonb cannot store".into());
        }
        let (current, saved): (i64, bool) = sqlx::query_as(SNAPSHOT_SAVE)
            .bind(stream.as_str())
            .bind(version)
            .bind(schema)
            .bind(&text)
            .fetch_one(&self.pool)
            .await?;
        if !saved {
            return if current == 0 {
                refuse(format!(
                    "stream version {stream_version} is ahead of the stream, which does not exist"
                ))
            } else {
                refuse(format!(
                    "stream version {stream_version} is ahead of the stream, which is at version {current}"
                ))
            };
        }
        metrics::counter!("dbswarm_snapshots_saved_total").increment(1);
        Ok(())
    }

    /// The newest snapshot of the stream whose schema version equals
    /// `schema_version`; `None` when there is none. A snapshot of another
    /// schema version is never returned: it is ignored, not trusted.
    pub async fn load_latest(
        &self,
        stream: &StreamId,
        schema_version: u32,
    ) -> Result<Option<Snapshot>, StoreError> {
        let Some(row) = self.fetch_latest(stream, schema_version).await? else {
            return Ok(None);
        };
        let state = serde_json::from_str(&row.state).map_err(|e| {
            StoreError::Corrupt(format!(
                "snapshot of stream '{stream}' at version {}: state does not parse: {e}",
                row.stream_version
            ))
        })?;
        Ok(Some(Snapshot {
            stream_id: row.stream_id,
            stream_version: row.stream_version as u64,
            schema_version: row.schema_version as u32,
            state,
            created_at: row.created_at,
        }))
    }

    async fn fetch_latest(
        &self,
        stream: &StreamId,
        schema_version: u32,
    ) -> Result<Option<SnapshotRow>, StoreError> {
        // No stored snapshot has a schema version beyond i32 (save refuses it).
        let Ok(schema) = i32::try_from(schema_version) else {
            return Ok(None);
        };
        Ok(sqlx::query_as(SNAPSHOT_LOAD_LATEST)
            .bind(stream.as_str())
            .bind(schema)
            .fetch_optional(&self.pool)
            .await?)
    }
}

/// Aggregate state folded from a stream's events.
pub trait Aggregate: Default + Serialize + DeserializeOwned + Send {
    /// Bump when the state's shape or meaning changes: older snapshots are
    /// then ignored and rebuilt.
    const SNAPSHOT_SCHEMA_VERSION: u32;

    fn apply(&mut self, event: &RecordedEvent);
}

/// An aggregate as loaded.
#[derive(Debug, Clone, PartialEq)]
pub struct Loaded<A> {
    pub state: A,
    /// The version of the last event folded into `state`; 0 when the
    /// stream does not exist (`state` is then `A::default()`).
    pub version: u64,
    /// The snapshot the load started from; `None` = replayed from the
    /// stream's first event.
    pub snapshot_version: Option<u64>,
    /// Events applied on top of the snapshot (or of the default state).
    pub events_replayed: u64,
}

/// Loads aggregates: the newest usable snapshot plus the events after it.
#[derive(Clone)]
pub struct AggregateLoader {
    reader: Reader,
    snapshots: SnapshotStore,
    /// A load that replayed at least this many events saves a snapshot;
    /// 0 = snapshots are only taken on demand.
    snapshot_every_events: u64,
}

impl AggregateLoader {
    pub fn new(reader: Reader, snapshots: SnapshotStore, snapshot_every_events: u64) -> Self {
        AggregateLoader {
            reader,
            snapshots,
            snapshot_every_events,
        }
    }

    /// The aggregate's current state: the newest snapshot of its schema
    /// version (if usable) plus the events after it. When the load
    /// replayed `snapshot_every_events` or more (and that is not 0), a
    /// snapshot is saved at the loaded version; a failure to save is
    /// logged, never fails the load.
    pub async fn load<A: Aggregate>(&self, stream: &StreamId) -> Result<Loaded<A>, StoreError> {
        let loaded = self.fold::<A>(stream).await?;
        if self.snapshot_every_events > 0
            && loaded.events_replayed >= self.snapshot_every_events
            && let Err(error) = self.save(stream, &loaded).await
        {
            tracing::warn!(%error, stream = %stream, version = loaded.version, "snapshot not saved");
        }
        Ok(loaded)
    }

    /// Loads the aggregate and saves a snapshot at the loaded version now
    /// (unless the load started from a snapshot at that very version).
    /// `snapshot_version` of the answer is the snapshot the load started
    /// from, not the one saved (which is at `version`).
    pub async fn snapshot_now<A: Aggregate>(&self, stream: &StreamId) -> Result<Loaded<A>, StoreError> {
        let loaded = self.fold::<A>(stream).await?;
        if loaded.version == 0 {
            return Err(StoreError::StreamNotFound(stream.to_string()));
        }
        if loaded.snapshot_version != Some(loaded.version) {
            self.save(stream, &loaded).await?;
        }
        Ok(loaded)
    }

    async fn save<A: Aggregate>(&self, stream: &StreamId, loaded: &Loaded<A>) -> Result<(), StoreError> {
        let state = serde_json::to_value(&loaded.state).map_err(|e| {
            StoreError::InvalidSnapshot(format!(
                "state of stream '{stream}' does not serialize to JSON: {e}"
            ))
        })?;
        self.snapshots
            .save(stream, loaded.version, A::SNAPSHOT_SCHEMA_VERSION, &state)
            .await
    }

    async fn fold<A: Aggregate>(&self, stream: &StreamId) -> Result<Loaded<A>, StoreError> {
        let row = self
            .snapshots
            .fetch_latest(stream, A::SNAPSHOT_SCHEMA_VERSION)
            .await?;
        // The stream's version is read after the snapshot: a snapshot is
        // checked against its stream when saved and versions only grow, so
        // a sound snapshot is never ahead of a version read after it.
        let current = self.reader.stream_version(stream).await?.unwrap_or(0);
        let start = row.and_then(|row| usable_snapshot::<A>(stream, row, current));
        let snapshot_version = start.as_ref().map(|(_, version)| *version);
        let (state, version) = start.unwrap_or_default();
        let mut loaded = Loaded {
            state,
            version,
            snapshot_version,
            events_replayed: 0,
        };
        if loaded.version < current {
            let mut events = self
                .reader
                .read_stream(ReadStreamQuery {
                    stream_id: stream.clone(),
                    from_version: loaded.version + 1,
                    direction: Direction::Forwards,
                    limit: None,
                })
                .await?;
            while let Some(event) = events.recv().await {
                let event = event?;
                // Read-side invariant (the Reader checks it too): the tail
                // starts right after the snapshot and has no gap.
                if event.event_version != loaded.version + 1 {
                    return Err(StoreError::Corrupt(format!(
                        "stream '{stream}': version {} follows version {} while loading",
                        event.event_version, loaded.version
                    )));
                }
                loaded.state.apply(&event);
                loaded.version = event.event_version;
                loaded.events_replayed += 1;
            }
        }
        if loaded.version < current {
            return Err(StoreError::Corrupt(format!(
                "stream '{stream}' is at version {current} but its events ended at version {}",
                loaded.version
            )));
        }
        let source = if snapshot_version.is_some() {
            "snapshot"
        } else {
            "replay"
        };
        metrics::counter!("dbswarm_snapshot_loads_total", "source" => source).increment(1);
        Ok(loaded)
    }
}

/// The snapshot's state and version when it can be trusted; `None` (with a
/// warning) when it is ahead of its stream or does not deserialize.
fn usable_snapshot<A: Aggregate>(stream: &StreamId, row: SnapshotRow, current: u64) -> Option<(A, u64)> {
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
    match serde_json::from_str::<A>(&row.state) {
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
