//! Wire types -> validated domain types, and recorded events -> wire types.

use chrono::SecondsFormat;
use domain::{
    AppendRequest, EventData, EventType, ExpectedVersion, Limits, ProposedEvent, StreamAppend, StreamId,
    ValidationError,
};
use event_store::{AllPosition, Direction, ReadAllQuery, ReadStreamQuery, RecordedEvent};
use uuid::Uuid;

use crate::proto;

/// Most event types one `ReadAll` may filter on.
pub const EVENT_TYPE_FILTERS_MAX: usize = 100;

impl TryFrom<Option<proto::ExpectedVersion>> for ExpectedVersionArg {
    type Error = ValidationError;

    fn try_from(wire: Option<proto::ExpectedVersion>) -> Result<Self, ValidationError> {
        use proto::expected_version::Kind;
        let expected = match wire.and_then(|w| w.kind) {
            None | Some(Kind::Any(_)) => ExpectedVersion::Any,
            Some(Kind::NoStream(_)) => ExpectedVersion::NoStream,
            Some(Kind::StreamExists(_)) => ExpectedVersion::StreamExists,
            Some(Kind::Exact(0)) => {
                return Err(ValidationError::new(
                    "expected_version.exact",
                    "0 is not a version (versions start at 1); use no_stream for a new stream",
                ));
            }
            Some(Kind::Exact(v)) if v > i64::MAX as u64 => {
                return Err(ValidationError::new(
                    "expected_version.exact",
                    format!("{v} is out of range"),
                ));
            }
            Some(Kind::Exact(v)) => ExpectedVersion::Exact(v),
        };
        Ok(ExpectedVersionArg(expected))
    }
}

/// Newtype so the conversion can live here (orphan rule).
pub struct ExpectedVersionArg(pub ExpectedVersion);

fn optional_uuid(raw: &str, field: &str) -> Result<Option<Uuid>, ValidationError> {
    if raw.is_empty() {
        return Ok(None);
    }
    Uuid::parse_str(raw)
        .map(Some)
        .map_err(|e| ValidationError::new(field, format!("'{raw}' is not a UUID: {e}")))
}

fn proposed_event(wire: proto::ProposedEvent, limits: &Limits) -> Result<ProposedEvent, ValidationError> {
    let event_id = match optional_uuid(&wire.event_id, "event_id")? {
        Some(id) => id,
        None => {
            return Err(ValidationError::new(
                "event_id",
                "is required: a client-chosen UUID that makes retries idempotent",
            ));
        }
    };
    let event_type = EventType::parse(&wire.event_type, limits)?;
    let data = match proto::ContentType::try_from(wire.content_type) {
        Ok(proto::ContentType::Unspecified | proto::ContentType::Json) => EventData::json(wire.data)?,
        Ok(proto::ContentType::Binary) => EventData::Binary(wire.data),
        Err(_) => {
            return Err(ValidationError::new(
                "content_type",
                format!(
                    "{} is not a known content type (1 = JSON, 2 = BINARY)",
                    wire.content_type
                ),
            ));
        }
    };
    Ok(ProposedEvent {
        event_id,
        event_type,
        data,
        metadata: ProposedEvent::metadata_from(wire.metadata)?,
        schema_version: wire.schema_version.max(1),
        correlation_id: optional_uuid(&wire.correlation_id, "correlation_id")?,
        causation_id: optional_uuid(&wire.causation_id, "causation_id")?,
    })
}

fn stream_append(
    stream_id: &str,
    expected: Option<proto::ExpectedVersion>,
    events: Vec<proto::ProposedEvent>,
    limits: &Limits,
) -> Result<StreamAppend, ValidationError> {
    if events.len() > limits.append_events_max {
        // Checked before converting, so an oversized request costs little.
        return Err(ValidationError::new(
            "events",
            format!(
                "{} events in one request; the limit is {} (append_events_max)",
                events.len(),
                limits.append_events_max
            ),
        ));
    }
    let stream_id = StreamId::parse(stream_id, limits)?;
    let expected = ExpectedVersionArg::try_from(expected)?.0;
    let events = events
        .into_iter()
        .enumerate()
        .map(|(i, e)| proposed_event(e, limits).map_err(|err| err.within(&format!("events[{i}]"))))
        .collect::<Result<_, _>>()?;
    Ok(StreamAppend {
        stream_id,
        expected,
        events,
    })
}

pub fn append_to_stream(
    wire: proto::AppendToStreamRequest,
    limits: &Limits,
) -> Result<AppendRequest, ValidationError> {
    let append = stream_append(&wire.stream_id, wire.expected_version, wire.events, limits)?;
    AppendRequest::new(vec![append], limits).map_err(strip_stream_prefix)
}

/// A single-stream request has no `streams[0]` in the caller's terms.
fn strip_stream_prefix(mut e: ValidationError) -> ValidationError {
    if let Some(rest) = e.field.strip_prefix("streams[0].") {
        e.field = rest.to_owned();
    }
    e
}

pub fn append_multi(
    wire: proto::AppendMultiRequest,
    limits: &Limits,
) -> Result<AppendRequest, ValidationError> {
    if wire.streams.len() > limits.append_streams_max {
        return Err(ValidationError::new(
            "streams",
            format!(
                "{} streams in one request; the limit is {} (append_streams_max)",
                wire.streams.len(),
                limits.append_streams_max
            ),
        ));
    }
    let streams = wire
        .streams
        .into_iter()
        .enumerate()
        .map(|(i, s)| {
            stream_append(&s.stream_id, s.expected_version, s.events, limits)
                .map_err(|err| err.within(&format!("streams[{i}]")))
        })
        .collect::<Result<_, _>>()?;
    AppendRequest::new(streams, limits)
}

fn limit(raw: u64) -> Option<u64> {
    (raw > 0).then_some(raw)
}

pub fn read_stream(
    wire: proto::ReadStreamRequest,
    limits: &Limits,
) -> Result<ReadStreamQuery, ValidationError> {
    let direction = match proto::ReadDirection::try_from(wire.direction) {
        Ok(proto::ReadDirection::Unspecified | proto::ReadDirection::Forwards) => Direction::Forwards,
        Ok(proto::ReadDirection::Backwards) => Direction::Backwards,
        Err(_) => {
            return Err(ValidationError::new(
                "direction",
                format!(
                    "{} is not a direction (1 = FORWARDS, 2 = BACKWARDS)",
                    wire.direction
                ),
            ));
        }
    };
    if wire.from_version > i64::MAX as u64 {
        return Err(ValidationError::new("from_version", "is out of range"));
    }
    Ok(ReadStreamQuery {
        stream_id: StreamId::parse(&wire.stream_id, limits)?,
        from_version: wire.from_version,
        direction,
        limit: limit(wire.limit),
    })
}

pub fn read_all(wire: proto::ReadAllRequest, limits: &Limits) -> Result<ReadAllQuery, ValidationError> {
    if wire.stream_prefix.len() > limits.stream_id_bytes_max {
        return Err(ValidationError::new(
            "stream_prefix",
            format!(
                "is longer than stream_id_bytes_max ({})",
                limits.stream_id_bytes_max
            ),
        ));
    }
    if wire.event_types.len() > EVENT_TYPE_FILTERS_MAX {
        return Err(ValidationError::new(
            "event_types",
            format!(
                "{} types; at most {EVENT_TYPE_FILTERS_MAX} can be filtered on",
                wire.event_types.len()
            ),
        ));
    }
    for (i, t) in wire.event_types.iter().enumerate() {
        EventType::parse(t, limits).map_err(|e| e.within(&format!("event_types[{i}]")))?;
    }
    let after = wire.after.map(|p| AllPosition {
        transaction_id: p.transaction_id,
        global_position: p.global_position,
    });
    if after.is_some_and(|p| p.global_position > i64::MAX as u64) {
        return Err(ValidationError::new("after.global_position", "is out of range"));
    }
    Ok(ReadAllQuery {
        after,
        stream_prefix: wire.stream_prefix,
        event_types: wire.event_types,
        limit: limit(wire.limit),
    })
}

pub fn subscribe(wire: proto::SubscribeRequest, limits: &Limits) -> Result<ReadAllQuery, ValidationError> {
    read_all(
        proto::ReadAllRequest {
            after: wire.after,
            stream_prefix: wire.stream_prefix,
            event_types: wire.event_types,
            limit: 0,
        },
        limits,
    )
}

pub fn subscribe_to_stream(
    wire: proto::SubscribeToStreamRequest,
    limits: &Limits,
) -> Result<(StreamId, u64), ValidationError> {
    if wire.from_version > i64::MAX as u64 {
        return Err(ValidationError::new("from_version", "is out of range"));
    }
    Ok((StreamId::parse(&wire.stream_id, limits)?, wire.from_version))
}

pub fn recorded_event(event: RecordedEvent) -> proto::RecordedEvent {
    let (content_type, data) = match event.data {
        EventData::Json(text) => (proto::ContentType::Json, text.into_bytes()),
        EventData::Binary(bytes) => (proto::ContentType::Binary, bytes),
    };
    let uuid_text = |id: Option<Uuid>| id.map(|u| u.to_string()).unwrap_or_default();
    proto::RecordedEvent {
        event_id: event.event_id.to_string(),
        stream_id: event.stream_id,
        event_version: event.event_version,
        global_position: event.global_position,
        transaction_id: event.transaction_id,
        event_type: event.event_type,
        schema_version: event.schema_version,
        content_type: content_type as i32,
        data,
        metadata: event.metadata.into_bytes(),
        aggregate_type: event.aggregate_type,
        aggregate_id: uuid_text(event.aggregate_id),
        correlation_id: uuid_text(event.correlation_id),
        causation_id: uuid_text(event.causation_id),
        created_at: event.created_at.to_rfc3339_opts(SecondsFormat::Micros, true),
    }
}

pub fn stream_result(outcome: event_store::StreamOutcome) -> proto::StreamAppendResult {
    proto::StreamAppendResult {
        stream_id: outcome.stream_id.to_string(),
        current_version: outcome.current_version,
        positions: outcome
            .positions
            .into_iter()
            .map(|p| proto::EventPosition {
                event_id: p.event_id.to_string(),
                event_version: p.event_version,
                global_position: p.global_position,
            })
            .collect(),
        idempotent_replay: outcome.idempotent_replay,
    }
}
