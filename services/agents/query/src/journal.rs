//! The query agent's events, per target database in stream
//! `workload-<database>`: `WorkloadSnapshotTaken` (pg_stat_statements'
//! counters and the plans of the heaviest statements at that moment) and
//! `QueryRegressed` (a statement slower between snapshots, with its plan
//! before and after).

use std::collections::BTreeMap;

use domain::{
    AppendRequest, EventData, EventType, ExpectedVersion, Limits, ProposedEvent, StreamAppend, StreamId,
};
use event_store::{Appender, Direction, ReadStreamQuery, Reader, StoreError};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::workload::{Regression, WorkloadSnapshot};

pub const SNAPSHOT_TAKEN: &str = "WorkloadSnapshotTaken";
pub const QUERY_REGRESSED: &str = "QueryRegressed";
pub const INDEX_CREATED: &str = "IndexCreated";
pub const INDEX_DROPPED: &str = "IndexDropped";

/// Events read back when looking for earlier snapshots, at most.
pub const EVENTS_READ_MAX: u64 = 200;

/// A snapshot as recorded: the counters and, for the heaviest statements,
/// the shape of their plan at that moment (keyed by queryid).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RecordedSnapshot {
    pub snapshot: WorkloadSnapshot,
    #[serde(default)]
    pub plans: BTreeMap<i64, String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RecordedRegression {
    pub regression: Regression,
    pub plan_before: Option<String>,
    pub plan_after: Option<String>,
    /// The period compared: baseline from, recent from, recent to (ms since the epoch).
    pub baseline_from_ms: u64,
    pub recent_from_ms: u64,
    pub recent_to_ms: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("invalid event: {0}")]
    Invalid(#[from] domain::ValidationError),
    #[error("cannot encode or decode an event: {0}")]
    Json(#[from] serde_json::Error),
}

impl From<JournalError> for domain::OperationError {
    fn from(e: JournalError) -> domain::OperationError {
        let code = match &e {
            JournalError::Store(e) => e.code(),
            JournalError::Invalid(_) | JournalError::Json(_) => domain::Code::Internal,
        };
        domain::OperationError::new(code, e.to_string())
    }
}

#[derive(Clone)]
pub struct Journal {
    appender: Appender,
    reader: Reader,
    limits: Limits,
}

impl Journal {
    pub fn new(appender: Appender, reader: Reader, limits: Limits) -> Journal {
        Journal {
            appender,
            reader,
            limits,
        }
    }

    fn stream(&self, database: &str) -> Result<StreamId, JournalError> {
        Ok(StreamId::parse(&format!("workload-{database}"), &self.limits)?)
    }

    async fn append(&self, database: &str, event_type: &str, data: Value) -> Result<(), JournalError> {
        let event = ProposedEvent {
            event_id: uuid::Uuid::new_v4(),
            event_type: EventType::parse(event_type, &self.limits)?,
            data: EventData::json(data.to_string().into_bytes())?,
            metadata: r#"{"actor":"query-agent"}"#.to_owned(),
            schema_version: 1,
            correlation_id: None,
            causation_id: None,
        };
        let request = AppendRequest::new(
            vec![StreamAppend {
                stream_id: self.stream(database)?,
                expected: ExpectedVersion::Any,
                events: vec![event],
            }],
            &self.limits,
        )?;
        self.appender.append(request).await?;
        Ok(())
    }

    pub async fn record_snapshot(
        &self,
        database: &str,
        snapshot: &RecordedSnapshot,
    ) -> Result<(), JournalError> {
        self.append(database, SNAPSHOT_TAKEN, serde_json::to_value(snapshot)?)
            .await
    }

    pub async fn record_regression(
        &self,
        database: &str,
        regression: &RecordedRegression,
    ) -> Result<(), JournalError> {
        self.append(database, QUERY_REGRESSED, serde_json::to_value(regression)?)
            .await
    }

    /// An index built by the agent and kept (`IndexCreated`) or dropped
    /// again (`IndexDropped`), with its measurements and the reason.
    pub async fn record_index_outcome(
        &self,
        database: &str,
        kept: bool,
        data: Value,
    ) -> Result<(), JournalError> {
        let event_type = if kept { INDEX_CREATED } else { INDEX_DROPPED };
        self.append(database, event_type, data).await
    }

    /// The last `count` snapshots of the database, oldest first.
    pub async fn recent_snapshots(
        &self,
        database: &str,
        count: usize,
    ) -> Result<Vec<RecordedSnapshot>, JournalError> {
        let query = ReadStreamQuery {
            stream_id: self.stream(database)?,
            from_version: 0,
            direction: Direction::Backwards,
            limit: Some(EVENTS_READ_MAX),
        };
        let mut events = match self.reader.read_stream(query).await {
            Ok(events) => events,
            Err(StoreError::StreamNotFound(_)) => return Ok(Vec::new()),
            Err(other) => return Err(other.into()),
        };
        let mut found = Vec::new();
        while let Some(event) = events.recv().await {
            let event = event?;
            if event.event_type != SNAPSHOT_TAKEN || found.len() >= count {
                continue;
            }
            if let EventData::Json(text) = &event.data {
                found.push(serde_json::from_str(text)?);
            }
        }
        found.reverse();
        Ok(found)
    }
}
