//! Validated value types. A value of these types is known to be well formed:
//! constructors are the only way in, and they check every rule.

use std::collections::HashSet;
use std::fmt;

use uuid::Uuid;

use crate::limits::Limits;

/// A rule broken by a request, naming the field so a person can fix it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct ValidationError {
    /// Path of the offending field, e.g. `streams[0].events[3].event_type`.
    pub field: String,
    pub message: String,
}

impl ValidationError {
    /// A value that does not validate is the request's fault.
    pub fn code(&self) -> crate::Code {
        crate::Code::InvalidArgument
    }
}

impl ValidationError {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        ValidationError {
            field: field.into(),
            message: message.into(),
        }
    }

    /// Prefixes the field path, as errors bubble up through nested values.
    pub fn within(mut self, parent: &str) -> Self {
        self.field = if self.field.is_empty() {
            parent.to_owned()
        } else {
            format!("{parent}.{}", self.field)
        };
        self
    }
}

/// Identifies a stream. Any UTF-8 text without control characters, not
/// starting with `$` (reserved for system streams such as `$all`).
///
/// By convention `<category>-<id>`: the category becomes the event's
/// `aggregate_type` and a UUID id its `aggregate_id`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StreamId(String);

impl StreamId {
    pub fn parse(raw: &str, limits: &Limits) -> Result<StreamId, ValidationError> {
        let reject = |message: String| Err(ValidationError::new("stream_id", message));
        if raw.is_empty() {
            return reject("must not be empty".into());
        }
        if raw.len() > limits.stream_id_bytes_max {
            return reject(format!(
                "is {} bytes long; the limit is {} bytes (stream_id_bytes_max)",
                raw.len(),
                limits.stream_id_bytes_max
            ));
        }
        if raw.starts_with('$') {
            return reject(format!(
                "'{raw}' starts with '$', which is reserved for system streams"
            ));
        }
        if let Some(c) = raw.chars().find(|c| c.is_control()) {
            return reject(format!("contains the control character {c:?}"));
        }
        if raw.trim() != raw {
            return reject("must not start or end with whitespace".into());
        }
        Ok(StreamId(raw.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The part before the first `-`, or the whole id when there is none.
    pub fn category(&self) -> &str {
        self.0.split_once('-').map_or(&self.0, |(category, _)| category)
    }

    /// The part after the first `-` when it is a UUID.
    pub fn aggregate_id(&self) -> Option<Uuid> {
        let (_, id) = self.0.split_once('-')?;
        Uuid::parse_str(id).ok()
    }
}

impl fmt::Display for StreamId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// An event's type name: starts with a letter, then letters, digits and
/// `_ . : -`. Kept this narrow because it becomes a NATS subject token.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct EventType(String);

impl EventType {
    pub fn parse(raw: &str, limits: &Limits) -> Result<EventType, ValidationError> {
        let reject = |message: String| Err(ValidationError::new("event_type", message));
        if raw.is_empty() {
            return reject("must not be empty".into());
        }
        if raw.len() > limits.event_type_bytes_max {
            return reject(format!(
                "is {} bytes long; the limit is {} bytes (event_type_bytes_max)",
                raw.len(),
                limits.event_type_bytes_max
            ));
        }
        if !raw.starts_with(|c: char| c.is_ascii_alphabetic()) {
            return reject(format!("'{raw}' must start with an ASCII letter"));
        }
        let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | ':' | '-');
        if let Some(c) = raw.chars().find(|c| !allowed(*c)) {
            return reject(format!(
                "'{raw}' contains {c:?}; allowed are ASCII letters, digits and _ . : -"
            ));
        }
        Ok(EventType(raw.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for EventType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// What the writer believes about the stream's current version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExpectedVersion {
    Any,
    NoStream,
    StreamExists,
    /// The version of the stream's last event (versions start at 1).
    Exact(u64),
}

impl fmt::Display for ExpectedVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ExpectedVersion::Any => f.write_str("any"),
            ExpectedVersion::NoStream => f.write_str("no_stream"),
            ExpectedVersion::StreamExists => f.write_str("stream_exists"),
            ExpectedVersion::Exact(v) => write!(f, "{v}"),
        }
    }
}

/// An event's payload. JSON is kept as the client's text (already checked
/// to parse) so that the store, not this process, decides its canonical form.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EventData {
    Json(String),
    Binary(Vec<u8>),
}

impl EventData {
    /// Checks that `bytes` is UTF-8 JSON.
    pub fn json(bytes: Vec<u8>) -> Result<EventData, ValidationError> {
        let text = String::from_utf8(bytes)
            .map_err(|_| ValidationError::new("data", "content type is JSON but data is not UTF-8"))?;
        serde_json::from_str::<serde::de::IgnoredAny>(&text).map_err(|e| {
            ValidationError::new("data", format!("content type is JSON but data is not JSON: {e}"))
        })?;
        // jsonb cannot store \u0000; reject it here rather than fail in the store.
        if text.contains("\\u0000") {
            return Err(ValidationError::new(
                "data",
                "JSON strings must not contain \\u0000 (PostgreSQL jsonb rejects it)",
            ));
        }
        Ok(EventData::Json(text))
    }

    pub fn len(&self) -> usize {
        match self {
            EventData::Json(text) => text.len(),
            EventData::Binary(bytes) => bytes.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// An event as proposed by a writer, before it has a version or position.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProposedEvent {
    pub event_id: Uuid,
    pub event_type: EventType,
    pub data: EventData,
    /// A JSON object, as the writer sent it; empty when it sent none
    /// (stored as `{}`: [`ProposedEvent::stored_metadata`]). Kept as sent
    /// so that `event_bytes_max` counts the bytes the writer sent.
    pub metadata: String,
    pub schema_version: u32,
    pub correlation_id: Option<Uuid>,
    pub causation_id: Option<Uuid>,
}

impl ProposedEvent {
    /// Checks that metadata is empty or a JSON object; returns its text
    /// (empty when it is).
    pub fn metadata_from(bytes: Vec<u8>) -> Result<String, ValidationError> {
        if bytes.is_empty() {
            return Ok(String::new());
        }
        let reject = |message: String| Err(ValidationError::new("metadata", message));
        let Ok(text) = String::from_utf8(bytes) else {
            return reject("is not UTF-8".into());
        };
        match serde_json::from_str::<serde_json::Value>(&text) {
            Ok(serde_json::Value::Object(_)) if !text.contains("\\u0000") => Ok(text),
            Ok(serde_json::Value::Object(_)) => {
                reject("JSON strings must not contain \\u0000 (PostgreSQL jsonb rejects it)".into())
            }
            Ok(_) => reject("must be a JSON object".into()),
            Err(e) => reject(format!("is not JSON: {e}")),
        }
    }

    /// The metadata as the store keeps it: `{}` when the writer sent none.
    pub fn stored_metadata(&self) -> &str {
        if self.metadata.is_empty() {
            "{}"
        } else {
            &self.metadata
        }
    }

    /// Bytes counted against `event_bytes_max` and `append_bytes_max`: the
    /// data and metadata as the writer sent them (no metadata counts 0,
    /// not the 2 bytes of the `{}` stored for it).
    pub fn size_bytes(&self) -> usize {
        self.data.len() + self.metadata.len()
    }
}

/// Events for one stream, with the writer's expectation of its version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamAppend {
    pub stream_id: StreamId,
    pub expected: ExpectedVersion,
    pub events: Vec<ProposedEvent>,
}

/// One atomic append over one or more streams, checked against [`Limits`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppendRequest {
    streams: Vec<StreamAppend>,
}

impl AppendRequest {
    pub fn new(streams: Vec<StreamAppend>, limits: &Limits) -> Result<Self, ValidationError> {
        if streams.is_empty() {
            return Err(ValidationError::new("streams", "at least one stream is required"));
        }
        if streams.len() > limits.append_streams_max {
            return Err(ValidationError::new(
                "streams",
                format!(
                    "{} streams in one request; the limit is {} (append_streams_max)",
                    streams.len(),
                    limits.append_streams_max
                ),
            ));
        }
        let mut seen_streams = HashSet::new();
        let mut seen_ids = HashSet::new();
        let (mut events_total, mut bytes_total) = (0usize, 0usize);
        for (i, stream) in streams.iter().enumerate() {
            let at = |field: &str| format!("streams[{i}].{field}");
            if !seen_streams.insert(&stream.stream_id) {
                return Err(ValidationError::new(
                    at("stream_id"),
                    format!("stream '{}' appears twice in one request", stream.stream_id),
                ));
            }
            if stream.events.is_empty() {
                return Err(ValidationError::new(
                    at("events"),
                    "at least one event is required",
                ));
            }
            for (j, event) in stream.events.iter().enumerate() {
                if !seen_ids.insert(event.event_id) {
                    return Err(ValidationError::new(
                        at(&format!("events[{j}].event_id")),
                        format!("event id {} appears twice in one request", event.event_id),
                    ));
                }
                if event.size_bytes() > limits.event_bytes_max {
                    return Err(ValidationError::new(
                        at(&format!("events[{j}]")),
                        format!(
                            "data + metadata is {} bytes; the limit is {} bytes (event_bytes_max)",
                            event.size_bytes(),
                            limits.event_bytes_max
                        ),
                    ));
                }
                bytes_total += event.size_bytes();
            }
            events_total += stream.events.len();
        }
        if events_total > limits.append_events_max {
            return Err(ValidationError::new(
                "events",
                format!(
                    "{events_total} events in one request; the limit is {} (append_events_max)",
                    limits.append_events_max
                ),
            ));
        }
        if bytes_total > limits.append_bytes_max {
            return Err(ValidationError::new(
                "events",
                format!(
                    "{bytes_total} bytes of events in one request; the limit is {} bytes (append_bytes_max)",
                    limits.append_bytes_max
                ),
            ));
        }
        Ok(AppendRequest { streams })
    }

    pub fn streams(&self) -> &[StreamAppend] {
        &self.streams
    }

    pub fn event_count(&self) -> usize {
        self.streams.iter().map(|s| s.events.len()).sum()
    }

    pub fn size_bytes(&self) -> usize {
        self.streams
            .iter()
            .flat_map(|s| &s.events)
            .map(ProposedEvent::size_bytes)
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> Limits {
        Limits::default()
    }

    #[test]
    fn stream_id_rules() {
        assert!(StreamId::parse("order-1", &limits()).is_ok());
        assert!(
            StreamId::parse("a.b*c>d", &limits()).is_ok(),
            "dots and wildcards are encoded later, not rejected"
        );
        for bad in ["", "$all", " padded", "tab\there"] {
            let err = StreamId::parse(bad, &limits()).unwrap_err();
            assert_eq!(err.field, "stream_id", "{bad:?}");
        }
        let long = "x".repeat(257);
        assert!(
            StreamId::parse(&long, &limits())
                .unwrap_err()
                .message
                .contains("stream_id_bytes_max")
        );
    }

    #[test]
    fn stream_id_category_and_aggregate_id() {
        let id = Uuid::new_v4();
        let stream = StreamId::parse(&format!("order-{id}"), &limits()).unwrap();
        assert_eq!(stream.category(), "order");
        assert_eq!(stream.aggregate_id(), Some(id));
        let plain = StreamId::parse("inventory", &limits()).unwrap();
        assert_eq!(plain.category(), "inventory");
        assert_eq!(plain.aggregate_id(), None);
    }

    #[test]
    fn event_type_rules() {
        assert!(EventType::parse("UserCreated.v2", &limits()).is_ok());
        for bad in ["", "1Created", "User Created", "a*b", "a>b", "é"] {
            assert!(EventType::parse(bad, &limits()).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn json_data_must_parse() {
        assert!(EventData::json(b"{\"a\":1}".to_vec()).is_ok());
        assert!(
            EventData::json(b"not json".to_vec())
                .unwrap_err()
                .message
                .contains("not JSON")
        );
        assert!(
            EventData::json(vec![0xff, 0xfe])
                .unwrap_err()
                .message
                .contains("UTF-8")
        );
        assert!(EventData::json(b"\"\\u0000\"".to_vec()).is_err());
    }

    #[test]
    fn metadata_must_be_an_object() {
        assert_eq!(ProposedEvent::metadata_from(vec![]).unwrap(), "");
        assert!(ProposedEvent::metadata_from(b"[1]".to_vec()).is_err());
        assert!(ProposedEvent::metadata_from(b"{\"user\":\"x\"}".to_vec()).is_ok());
    }

    fn event(id: Uuid, bytes: usize) -> ProposedEvent {
        ProposedEvent {
            event_id: id,
            event_type: EventType::parse("E", &limits()).unwrap(),
            data: EventData::Binary(vec![0; bytes]),
            metadata: "{}".into(),
            schema_version: 1,
            correlation_id: None,
            causation_id: None,
        }
    }

    fn append(stream: &str, events: Vec<ProposedEvent>) -> StreamAppend {
        StreamAppend {
            stream_id: StreamId::parse(stream, &limits()).unwrap(),
            expected: ExpectedVersion::Any,
            events,
        }
    }

    /// Given event_bytes_max, when an event is exactly that large counting
    /// the metadata its writer sent, then it is accepted, and refused one
    /// byte larger; no metadata counts 0 though it is stored as `{}`.
    #[test]
    fn an_event_counts_the_metadata_its_writer_sent() {
        let l = Limits {
            event_bytes_max: 10,
            ..limits()
        };
        let one = |data: usize, metadata: &str| {
            let mut e = event(Uuid::new_v4(), data);
            e.metadata = metadata.into();
            vec![append("s", vec![e])]
        };
        assert!(AppendRequest::new(one(10, ""), &l).is_ok());
        let over = AppendRequest::new(one(11, ""), &l).unwrap_err();
        assert_eq!(over.field, "streams[0].events[0]");
        assert!(over.message.contains("is 11 bytes"), "{}", over.message);
        assert!(AppendRequest::new(one(8, "{}"), &l).is_ok());
        assert!(AppendRequest::new(one(9, "{}"), &l).is_err());
        assert!(AppendRequest::new(one(2, r#"{"a":"12"}"#), &l).is_err());
        let none = event(Uuid::new_v4(), 1);
        let none = ProposedEvent {
            metadata: ProposedEvent::metadata_from(vec![]).unwrap(),
            ..none
        };
        assert_eq!((none.size_bytes(), none.stored_metadata()), (1, "{}"));
    }

    #[test]
    fn append_request_limits() {
        let l = Limits {
            append_events_max: 2,
            event_bytes_max: 10,
            ..limits()
        };
        let too_many = vec![append("s", (0..3).map(|_| event(Uuid::new_v4(), 1)).collect())];
        assert!(
            AppendRequest::new(too_many, &l)
                .unwrap_err()
                .message
                .contains("append_events_max")
        );
        let too_big = vec![append("s", vec![event(Uuid::new_v4(), 20)])];
        assert!(
            AppendRequest::new(too_big, &l)
                .unwrap_err()
                .message
                .contains("event_bytes_max")
        );
        let id = Uuid::new_v4();
        let dup = vec![append("s", vec![event(id, 1), event(id, 1)])];
        assert!(
            AppendRequest::new(dup, &l)
                .unwrap_err()
                .message
                .contains("appears twice")
        );
        let same_stream = vec![
            append("s", vec![event(Uuid::new_v4(), 1)]),
            append("s", vec![event(Uuid::new_v4(), 1)]),
        ];
        assert!(AppendRequest::new(same_stream, &l).is_err());
        assert!(AppendRequest::new(vec![], &l).is_err());
        assert!(AppendRequest::new(vec![append("s", vec![])], &l).is_err());
    }
}
