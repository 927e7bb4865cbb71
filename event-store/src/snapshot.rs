//! Per-stream snapshots of aggregate state: the `snapshots` table. An
//! aggregate is loaded from its newest snapshot plus the events after it
//! by [`crate::aggregate::AggregateStore`] (see `with_snapshots`).
//!
//! A snapshot is a cache, never the truth: the events are. So a snapshot is
//! only used when everything about it checks out, and otherwise ignored
//! (with a warning) and the state replayed from the stream's first event:
//! - its schema version must equal the aggregate's
//!   [`crate::aggregate::Snapshotted::SNAPSHOT_SCHEMA_VERSION`] (an older shape or meaning is
//!   never trusted blindly; the next save replaces it);
//! - its version must not be ahead of its stream (saving refuses that, so
//!   such a row was written by hand or restored from elsewhere: corrupt);
//! - its state must deserialize into the aggregate.
//!
//! Snapshots are taken every `snapshot_every_events` replayed events by a
//! load, or on demand by `AggregateStore::snapshot_now`. Only the newest snapshot of a stream
//! is kept (see `migrations/0006_snapshots.sql`).

use chrono::{DateTime, Utc};
use domain::StreamId;
use sqlx::PgPool;

use crate::error::StoreError;

const SNAPSHOT_SAVE: &str = include_str!("sql/snapshot_save.sql");
const SNAPSHOT_LOAD_LATEST: &str = include_str!("sql/snapshot_load_latest.sql");

/// A stored snapshot: the state folded from a stream's events 1..=`stream_version`.
#[derive(Debug, Clone, PartialEq)]
pub struct Snapshot {
    pub stream_id: String,
    /// The version of the last event folded into `state` (≥ 1).
    pub stream_version: u64,
    /// The aggregate's [`crate::aggregate::Snapshotted::SNAPSHOT_SCHEMA_VERSION`] when it was saved.
    pub schema_version: u32,
    pub state: serde_json::Value,
    pub created_at: DateTime<Utc>,
}

#[derive(sqlx::FromRow)]
pub(crate) struct SnapshotRow {
    stream_id: String,
    pub(crate) stream_version: i64,
    pub(crate) schema_version: i32,
    /// jsonb as text: the loader deserializes it straight into the aggregate.
    pub(crate) state: String,
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

    pub(crate) async fn fetch_latest(
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
