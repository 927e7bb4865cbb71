//! The stream as an aggregate: which appends it accepts (`decide`), how an
//! accepted append changes it (`evolve`), and how a re-sent append is
//! recognised (`classify_replay`).

use std::collections::HashMap;

use uuid::Uuid;

use crate::types::{AppendRequest, ExpectedVersion, StreamAppend, StreamId};

/// What the store knows about a stream before an append.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StreamState {
    /// Version of the last event; `None` when the stream has no events.
    pub version: Option<u64>,
}

/// The versions an accepted append takes: `first..=last`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VersionedEvent {
    pub first_version: u64,
    pub last_version: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AppendError {
    #[error("stream '{stream_id}' {}, but the append expected {}", describe_actual(*actual), describe_expected(*expected))]
    WrongExpectedVersion {
        stream_id: StreamId,
        expected: ExpectedVersion,
        actual: Option<u64>,
    },
    #[error(
        "event id {event_id} was already written {where_written} with different content; event ids are idempotency keys and must not be reused"
    )]
    EventIdReused { event_id: Uuid, where_written: String },
    #[error(
        "{written} of the request's {total} event ids were already written (e.g. {example}); a retried append must resend exactly the events of the original request"
    )]
    PartialReplay {
        written: usize,
        total: usize,
        example: Uuid,
    },
    #[error(
        "stream '{stream_id}' is at version {version}; one more event would overflow the version counter"
    )]
    VersionOverflow { stream_id: StreamId, version: u64 },
}

impl AppendError {
    pub fn code(&self) -> crate::Code {
        use crate::Code;
        match self {
            // The stream is not in the state the append expects.
            AppendError::WrongExpectedVersion { .. } | AppendError::VersionOverflow { .. } => {
                Code::FailedPrecondition
            }
            AppendError::EventIdReused { .. } | AppendError::PartialReplay { .. } => Code::AlreadyExists,
        }
    }
}

fn describe_actual(actual: Option<u64>) -> String {
    match actual {
        None => "does not exist".to_owned(),
        Some(v) => format!("is at version {v}"),
    }
}

fn describe_expected(expected: ExpectedVersion) -> String {
    match expected {
        ExpectedVersion::Any => "any version".to_owned(),
        ExpectedVersion::NoStream => "no stream".to_owned(),
        ExpectedVersion::StreamExists => "an existing stream".to_owned(),
        ExpectedVersion::Exact(v) => format!("version {v}"),
    }
}

/// Accepts or refuses an append to a stream in `state`.
pub fn decide(state: &StreamState, append: &StreamAppend) -> Result<VersionedEvent, AppendError> {
    let matches = match (append.expected, state.version) {
        (ExpectedVersion::Any, _) => true,
        (ExpectedVersion::NoStream, actual) => actual.is_none(),
        (ExpectedVersion::StreamExists, actual) => actual.is_some(),
        (ExpectedVersion::Exact(expected), actual) => actual == Some(expected),
    };
    if !matches {
        return Err(AppendError::WrongExpectedVersion {
            stream_id: append.stream_id.clone(),
            expected: append.expected,
            actual: state.version,
        });
    }
    let current = state.version.unwrap_or(0);
    let count = append.events.len() as u64;
    let last_version = current
        .checked_add(count)
        .filter(|v| *v <= i64::MAX as u64)
        .ok_or_else(|| AppendError::VersionOverflow {
            stream_id: append.stream_id.clone(),
            version: current,
        })?;
    Ok(VersionedEvent {
        first_version: current + 1,
        last_version,
    })
}

/// The stream after an accepted append.
pub fn evolve(_state: StreamState, appended: &VersionedEvent) -> StreamState {
    StreamState {
        version: Some(appended.last_version),
    }
}

/// An event already in the store whose id a new request reuses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExistingEvent {
    pub event_id: Uuid,
    pub stream_id: String,
    pub event_version: u64,
    pub global_position: u64,
    /// Stream, type, data and metadata all equal the request's event.
    pub same_content: bool,
}

/// How a request relates to what is already stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IdempotencyOutcome {
    /// None of its event ids are stored: append it.
    New,
    /// It was appended before; per stream of the request, in request
    /// order, the stored events to answer with.
    Replay(Vec<Vec<ExistingEvent>>),
}

/// Decides whether `request` is new, an exact replay of an earlier append,
/// or a misuse of event ids. `existing` holds the stored events that share
/// an id with the request.
pub fn classify_replay(
    request: &AppendRequest,
    existing: &[ExistingEvent],
) -> Result<IdempotencyOutcome, AppendError> {
    if existing.is_empty() {
        return Ok(IdempotencyOutcome::New);
    }
    if let Some(reused) = existing.iter().find(|e| !e.same_content) {
        return Err(AppendError::EventIdReused {
            event_id: reused.event_id,
            where_written: format!(
                "to stream '{}' at version {}",
                reused.stream_id, reused.event_version
            ),
        });
    }
    let total = request.event_count();
    let by_id: HashMap<Uuid, &ExistingEvent> = existing.iter().map(|e| (e.event_id, e)).collect();
    let some_missing = request
        .streams()
        .iter()
        .flat_map(|s| &s.events)
        .any(|e| !by_id.contains_key(&e.event_id));
    if some_missing {
        return Err(AppendError::PartialReplay {
            written: by_id.len(),
            total,
            example: existing[0].event_id,
        });
    }
    let mut replay = Vec::with_capacity(request.streams().len());
    for stream in request.streams() {
        let stored: Vec<ExistingEvent> = stream.events.iter().map(|e| by_id[&e.event_id].clone()).collect();
        let in_order = stored
            .windows(2)
            .all(|w| w[1].event_version == w[0].event_version + 1);
        if !in_order {
            return Err(AppendError::EventIdReused {
                event_id: stored[0].event_id,
                where_written: format!(
                    "to stream '{}' in another order or another request",
                    stream.stream_id
                ),
            });
        }
        replay.push(stored);
    }
    Ok(IdempotencyOutcome::Replay(replay))
}

/// A gap or a repeat found in a stream's versions: the store is corrupt.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("stream '{stream_id}': expected version {expected} next but found {found}")]
pub struct ContiguityViolation {
    pub stream_id: String,
    pub expected: u64,
    pub found: u64,
}

/// Checks, while a stream is read, that each version follows the previous
/// one (by +1 forwards, -1 backwards).
pub fn verify_contiguous(
    stream_id: &str,
    previous: Option<u64>,
    found: u64,
    forwards: bool,
) -> Result<(), ContiguityViolation> {
    let Some(previous) = previous else {
        return Ok(());
    };
    let expected = if forwards {
        previous + 1
    } else {
        previous.saturating_sub(1)
    };
    if found == expected {
        Ok(())
    } else {
        Err(ContiguityViolation {
            stream_id: stream_id.to_owned(),
            expected,
            found,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::limits::Limits;
    use crate::types::{EventData, EventType, ProposedEvent};

    fn event(id: Uuid) -> ProposedEvent {
        ProposedEvent {
            event_id: id,
            event_type: EventType::parse("Happened", &Limits::default()).unwrap(),
            data: EventData::Json("{}".into()),
            metadata: "{}".into(),
            schema_version: 1,
            correlation_id: None,
            causation_id: None,
        }
    }

    fn append(expected: ExpectedVersion, ids: &[Uuid]) -> StreamAppend {
        StreamAppend {
            stream_id: StreamId::parse("order-1", &Limits::default()).unwrap(),
            expected,
            events: ids.iter().copied().map(event).collect(),
        }
    }

    fn given(version: Option<u64>) -> StreamState {
        StreamState { version }
    }

    #[test]
    fn new_stream_accepts_no_stream_and_starts_at_one() {
        let when = append(ExpectedVersion::NoStream, &[Uuid::new_v4(), Uuid::new_v4()]);
        let then = decide(&given(None), &when).unwrap();
        assert_eq!(
            then,
            VersionedEvent {
                first_version: 1,
                last_version: 2
            }
        );
        assert_eq!(evolve(given(None), &then), given(Some(2)));
    }

    #[test]
    fn exact_version_must_match() {
        let ids = [Uuid::new_v4()];
        assert!(decide(&given(Some(3)), &append(ExpectedVersion::Exact(3), &ids)).is_ok());
        let err = decide(&given(Some(4)), &append(ExpectedVersion::Exact(3), &ids)).unwrap_err();
        assert_eq!(
            err.to_string(),
            "stream 'order-1' is at version 4, but the append expected version 3"
        );
        let err = decide(&given(None), &append(ExpectedVersion::Exact(3), &ids)).unwrap_err();
        assert!(matches!(
            err,
            AppendError::WrongExpectedVersion { actual: None, .. }
        ));
    }

    #[test]
    fn no_stream_and_stream_exists() {
        let ids = [Uuid::new_v4()];
        assert!(decide(&given(Some(1)), &append(ExpectedVersion::NoStream, &ids)).is_err());
        assert!(decide(&given(None), &append(ExpectedVersion::StreamExists, &ids)).is_err());
        assert!(decide(&given(Some(1)), &append(ExpectedVersion::StreamExists, &ids)).is_ok());
        assert!(decide(&given(Some(9)), &append(ExpectedVersion::Any, &ids)).is_ok());
    }

    fn request(ids: &[Uuid]) -> AppendRequest {
        AppendRequest::new(vec![append(ExpectedVersion::Any, ids)], &Limits::default()).unwrap()
    }

    fn stored(id: Uuid, version: u64, same_content: bool) -> ExistingEvent {
        ExistingEvent {
            event_id: id,
            stream_id: "order-1".into(),
            event_version: version,
            global_position: 100 + version,
            same_content,
        }
    }

    #[test]
    fn replay_of_the_same_events_returns_the_stored_positions() {
        let ids = [Uuid::new_v4(), Uuid::new_v4()];
        let existing = [stored(ids[0], 1, true), stored(ids[1], 2, true)];
        let outcome = classify_replay(&request(&ids), &existing).unwrap();
        assert_eq!(outcome, IdempotencyOutcome::Replay(vec![existing.to_vec()]));
    }

    #[test]
    fn reused_id_with_other_content_is_refused() {
        let ids = [Uuid::new_v4()];
        let err = classify_replay(&request(&ids), &[stored(ids[0], 1, false)]).unwrap_err();
        assert!(matches!(err, AppendError::EventIdReused { .. }));
    }

    #[test]
    fn partial_overlap_is_refused() {
        let ids = [Uuid::new_v4(), Uuid::new_v4()];
        let err = classify_replay(&request(&ids), &[stored(ids[0], 1, true)]).unwrap_err();
        assert!(err.to_string().starts_with("1 of the request's 2 event ids"));
    }

    #[test]
    fn nothing_stored_is_new() {
        assert_eq!(
            classify_replay(&request(&[Uuid::new_v4()]), &[]).unwrap(),
            IdempotencyOutcome::New
        );
    }

    #[test]
    fn contiguity() {
        assert!(verify_contiguous("s", None, 7, true).is_ok());
        assert!(verify_contiguous("s", Some(7), 8, true).is_ok());
        assert!(verify_contiguous("s", Some(7), 9, true).is_err());
        assert!(verify_contiguous("s", Some(7), 6, false).is_ok());
        assert!(verify_contiguous("s", Some(7), 7, false).is_err());
    }
}
