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

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;
    use proto::expected_version::Kind;

    fn limits() -> Limits {
        Limits::default()
    }

    fn wire_event() -> proto::ProposedEvent {
        proto::ProposedEvent {
            event_id: Uuid::new_v4().to_string(),
            event_type: "OrderPlaced".into(),
            content_type: proto::ContentType::Json as i32,
            data: br#"{"total":12}"#.to_vec(),
            ..Default::default()
        }
    }

    fn with(f: impl FnOnce(&mut proto::ProposedEvent)) -> proto::ProposedEvent {
        let mut event = wire_event();
        f(&mut event);
        event
    }

    fn to_stream(stream_id: &str, events: Vec<proto::ProposedEvent>) -> proto::AppendToStreamRequest {
        proto::AppendToStreamRequest {
            stream_id: stream_id.into(),
            expected_version: None,
            events,
        }
    }

    /// The field and message of the refusal of `request`.
    fn refusal(request: proto::AppendToStreamRequest) -> (String, String) {
        let e = append_to_stream(request, &limits()).unwrap_err();
        (e.field, e.message)
    }

    fn expected(kind: Option<Kind>) -> Result<ExpectedVersion, ValidationError> {
        ExpectedVersionArg::try_from(Some(proto::ExpectedVersion { kind })).map(|arg| arg.0)
    }

    #[test]
    fn every_expected_version_kind_converts() {
        assert_eq!(
            ExpectedVersionArg::try_from(None).unwrap().0,
            ExpectedVersion::Any
        );
        assert_eq!(expected(None).unwrap(), ExpectedVersion::Any);
        assert_eq!(expected(Some(Kind::Any(true))).unwrap(), ExpectedVersion::Any);
        assert_eq!(
            expected(Some(Kind::NoStream(true))).unwrap(),
            ExpectedVersion::NoStream
        );
        assert_eq!(
            expected(Some(Kind::StreamExists(true))).unwrap(),
            ExpectedVersion::StreamExists
        );
        assert_eq!(expected(Some(Kind::Exact(7))).unwrap(), ExpectedVersion::Exact(7));
        let max = i64::MAX as u64;
        assert_eq!(
            expected(Some(Kind::Exact(max))).unwrap(),
            ExpectedVersion::Exact(max)
        );
    }

    #[test]
    fn exact_zero_and_out_of_range_versions_are_refused() {
        let zero = expected(Some(Kind::Exact(0))).unwrap_err();
        assert_eq!(zero.field, "expected_version.exact");
        assert!(zero.message.contains("use no_stream"), "{}", zero.message);
        let over = expected(Some(Kind::Exact(i64::MAX as u64 + 1))).unwrap_err();
        assert_eq!(over.field, "expected_version.exact");
        assert!(over.message.contains("out of range"), "{}", over.message);
    }

    #[test]
    fn a_good_append_converts_field_by_field() {
        let (correlation, causation) = (Uuid::new_v4(), Uuid::new_v4());
        let event = with(|e| {
            e.metadata = br#"{"user":"ana"}"#.to_vec();
            e.schema_version = 3;
            e.correlation_id = correlation.to_string();
            e.causation_id = causation.to_string();
        });
        let id = Uuid::parse_str(&event.event_id).unwrap();
        let mut wire = to_stream("order-1", vec![event]);
        wire.expected_version = Some(proto::ExpectedVersion {
            kind: Some(Kind::Exact(4)),
        });
        let request = append_to_stream(wire, &limits()).unwrap();
        let [stream] = request.streams() else {
            panic!("one stream")
        };
        assert_eq!(stream.stream_id.as_str(), "order-1");
        assert_eq!(stream.expected, ExpectedVersion::Exact(4));
        let [event] = stream.events.as_slice() else {
            panic!("one event")
        };
        assert_eq!(event.event_id, id);
        assert_eq!(event.event_type.as_str(), "OrderPlaced");
        assert_eq!(event.data, EventData::Json(r#"{"total":12}"#.into()));
        assert_eq!(event.metadata, r#"{"user":"ana"}"#);
        assert_eq!(event.schema_version, 3);
        assert_eq!(event.correlation_id, Some(correlation));
        assert_eq!(event.causation_id, Some(causation));
    }

    #[test]
    fn defaults_fill_what_the_writer_left_out() {
        let event = with(|e| {
            e.content_type = proto::ContentType::Unspecified as i32;
            e.schema_version = 0;
        });
        let request = append_to_stream(to_stream("s", vec![event]), &limits()).unwrap();
        let event = &request.streams()[0].events[0];
        assert!(matches!(event.data, EventData::Json(_)), "unspecified = JSON");
        assert_eq!(event.schema_version, 1, "0 = 1");
        assert_eq!((event.metadata.as_str(), event.stored_metadata()), ("", "{}"));
        assert_eq!((event.correlation_id, event.causation_id), (None, None));
    }

    #[test]
    fn binary_data_is_taken_as_is_and_unicode_names_are_kept() {
        let event = with(|e| {
            e.content_type = proto::ContentType::Binary as i32;
            e.data = vec![0xff, 0x00, 0xfe];
        });
        let request = append_to_stream(to_stream("commande-é✓🦀", vec![event]), &limits()).unwrap();
        let stream = &request.streams()[0];
        assert_eq!(stream.stream_id.as_str(), "commande-é✓🦀");
        assert_eq!(stream.events[0].data, EventData::Binary(vec![0xff, 0x00, 0xfe]));
    }

    #[test]
    fn each_bad_event_field_is_named_precisely() {
        let cases: Vec<(&str, proto::ProposedEvent, &str, &str)> = vec![
            ("no id", with(|e| e.event_id.clear()), "event_id", "is required"),
            (
                "bad id",
                with(|e| e.event_id = "not-a-uuid".into()),
                "event_id",
                "'not-a-uuid' is not a UUID",
            ),
            (
                "bad correlation id",
                with(|e| e.correlation_id = "42".into()),
                "correlation_id",
                "'42' is not a UUID",
            ),
            (
                "bad causation id",
                with(|e| e.causation_id = "zz".into()),
                "causation_id",
                "'zz' is not a UUID",
            ),
            (
                "no type",
                with(|e| e.event_type.clear()),
                "event_type",
                "must not be empty",
            ),
            (
                "unicode type",
                with(|e| e.event_type = "Créé".into()),
                "event_type",
                "contains 'é'",
            ),
            (
                "unknown content type",
                with(|e| e.content_type = 9),
                "content_type",
                "9 is not a known content type",
            ),
            (
                "negative content type",
                with(|e| e.content_type = -1),
                "content_type",
                "-1 is not a known content type",
            ),
            ("not JSON", with(|e| e.data = b"{".to_vec()), "data", "not JSON"),
            ("not UTF-8", with(|e| e.data = vec![0xc3]), "data", "not UTF-8"),
            (
                "metadata not an object",
                with(|e| e.metadata = b"[]".to_vec()),
                "metadata",
                "must be a JSON object",
            ),
        ];
        for (case, event, field, message) in cases {
            let (got_field, got_message) = refusal(to_stream("s", vec![event]));
            assert_eq!(got_field, format!("events[0].{field}"), "{case}");
            assert!(got_message.contains(message), "{case}: {got_message}");
        }
    }

    #[test]
    fn the_index_of_the_bad_event_is_named() {
        let events = vec![wire_event(), wire_event(), with(|e| e.event_id = "x".into())];
        assert_eq!(refusal(to_stream("s", events)).0, "events[2].event_id");
    }

    #[test]
    fn bad_stream_ids_are_refused() {
        for (raw, message) in [
            ("", "must not be empty"),
            ("$all", "reserved for system streams"),
            (" s", "whitespace"),
            ("a\u{0}b", "control character"),
        ] {
            let (field, got) = refusal(to_stream(raw, vec![wire_event()]));
            assert_eq!(field, "stream_id", "{raw:?}");
            assert!(got.contains(message), "{raw:?}: {got}");
        }
    }

    #[test]
    fn single_stream_errors_have_no_streams_prefix() {
        let (field, message) = refusal(to_stream("s", vec![]));
        assert_eq!(
            (field.as_str(), message.as_str()),
            ("events", "at least one event is required")
        );
        let id = Uuid::new_v4().to_string();
        let twice = vec![
            with(|e| e.event_id = id.clone()),
            with(|e| e.event_id = id.clone()),
        ];
        let (field, message) = refusal(to_stream("s", twice));
        assert_eq!(field, "events[1].event_id");
        assert!(message.contains("appears twice"), "{message}");
    }

    #[test]
    fn the_event_count_limit_holds_at_its_edge() {
        let l = Limits {
            append_events_max: 2,
            ..limits()
        };
        let at = to_stream("s", vec![wire_event(), wire_event()]);
        assert!(append_to_stream(at, &l).is_ok());
        let over = to_stream("s", vec![wire_event(), wire_event(), wire_event()]);
        let e = append_to_stream(over, &l).unwrap_err();
        assert_eq!(e.field, "events");
        assert!(
            e.message.contains("3 events in one request; the limit is 2"),
            "{}",
            e.message
        );
    }

    fn multi(streams: Vec<(&str, Vec<proto::ProposedEvent>)>) -> proto::AppendMultiRequest {
        proto::AppendMultiRequest {
            streams: streams
                .into_iter()
                .map(|(id, events)| proto::StreamAppend {
                    stream_id: id.into(),
                    expected_version: None,
                    events,
                })
                .collect(),
        }
    }

    #[test]
    fn append_multi_names_the_stream_of_the_error() {
        let good = append_multi(
            multi(vec![("a", vec![wire_event()]), ("b", vec![wire_event()])]),
            &limits(),
        )
        .unwrap();
        assert_eq!(good.streams().len(), 2);
        let bad = multi(vec![
            ("a", vec![wire_event()]),
            ("b", vec![with(|e| e.event_type = "1x".into())]),
        ]);
        let e = append_multi(bad, &limits()).unwrap_err();
        assert_eq!(e.field, "streams[1].events[0].event_type");
        let twice = multi(vec![("a", vec![wire_event()]), ("a", vec![wire_event()])]);
        assert_eq!(
            append_multi(twice, &limits()).unwrap_err().field,
            "streams[1].stream_id"
        );
        let e = append_multi(multi(vec![]), &limits()).unwrap_err();
        assert_eq!(
            (e.field.as_str(), e.message.as_str()),
            ("streams", "at least one stream is required")
        );
    }

    #[test]
    fn append_multi_refuses_too_many_streams_before_converting() {
        let l = Limits {
            append_streams_max: 1,
            ..limits()
        };
        // The second stream is invalid too: the count is checked first.
        let e = append_multi(multi(vec![("a", vec![wire_event()]), ("", vec![])]), &l).unwrap_err();
        assert_eq!(e.field, "streams");
        assert!(e.message.contains("append_streams_max"), "{}", e.message);
    }

    fn read_stream_request(direction: i32, from_version: u64, limit: u64) -> proto::ReadStreamRequest {
        proto::ReadStreamRequest {
            stream_id: "s".into(),
            from_version,
            direction,
            limit,
        }
    }

    #[test]
    fn read_stream_converts_directions_and_limits() {
        let q = read_stream(read_stream_request(0, 0, 0), &limits()).unwrap();
        assert_eq!(
            (q.direction, q.from_version, q.limit),
            (Direction::Forwards, 0, None)
        );
        let q = read_stream(read_stream_request(2, 9, 5), &limits()).unwrap();
        assert_eq!(
            (q.direction, q.from_version, q.limit),
            (Direction::Backwards, 9, Some(5))
        );
        let q = read_stream(read_stream_request(1, i64::MAX as u64, u64::MAX), &limits()).unwrap();
        assert_eq!(q.limit, Some(u64::MAX));
    }

    #[test]
    fn read_stream_refuses_bad_directions_versions_and_ids() {
        let e = read_stream(read_stream_request(3, 0, 0), &limits()).unwrap_err();
        assert_eq!(e.field, "direction");
        assert!(e.message.starts_with("3 is not a direction"), "{}", e.message);
        let e = read_stream(read_stream_request(1, i64::MAX as u64 + 1, 0), &limits()).unwrap_err();
        assert_eq!(
            (e.field.as_str(), e.message.as_str()),
            ("from_version", "is out of range")
        );
        let mut request = read_stream_request(1, 0, 0);
        request.stream_id = "$all".into();
        assert_eq!(read_stream(request, &limits()).unwrap_err().field, "stream_id");
    }

    fn read_all_request(after: Option<(u64, u64)>, prefix: &str, types: &[&str]) -> proto::ReadAllRequest {
        proto::ReadAllRequest {
            after: after.map(|(transaction_id, global_position)| proto::AllPosition {
                transaction_id,
                global_position,
            }),
            stream_prefix: prefix.into(),
            event_types: types.iter().map(|t| t.to_string()).collect(),
            limit: 0,
        }
    }

    #[test]
    fn read_all_converts_its_cursor_and_filters() {
        let q = read_all(read_all_request(None, "", &[]), &limits()).unwrap();
        assert_eq!((q.after, q.limit), (None, None));
        let q = read_all(
            read_all_request(Some((7, 3)), "order-", &["A", "B.v2"]),
            &limits(),
        )
        .unwrap();
        assert_eq!(
            q.after,
            Some(AllPosition {
                transaction_id: 7,
                global_position: 3
            })
        );
        assert_eq!((q.stream_prefix.as_str(), q.event_types.len()), ("order-", 2));
        let edge = read_all_request(Some((u64::MAX, i64::MAX as u64)), "", &[]);
        assert!(
            read_all(edge, &limits()).is_ok(),
            "transaction ids use all 64 bits"
        );
    }

    #[test]
    fn read_all_refuses_each_bad_filter_precisely() {
        let over = read_all_request(Some((1, i64::MAX as u64 + 1)), "", &[]);
        assert_eq!(
            read_all(over, &limits()).unwrap_err().field,
            "after.global_position"
        );
        let long_prefix = "p".repeat(limits().stream_id_bytes_max + 1);
        let e = read_all(read_all_request(None, &long_prefix, &[]), &limits()).unwrap_err();
        assert_eq!(e.field, "stream_prefix");
        let at_max = "p".repeat(limits().stream_id_bytes_max);
        assert!(read_all(read_all_request(None, &at_max, &[]), &limits()).is_ok());
        let e = read_all(read_all_request(None, "", &["Ok", "not ok"]), &limits()).unwrap_err();
        assert_eq!(e.field, "event_types[1].event_type");
        let many: Vec<String> = (0..=EVENT_TYPE_FILTERS_MAX).map(|i| format!("T{i}")).collect();
        let mut request = read_all_request(None, "", &[]);
        request.event_types = many;
        let e = read_all(request.clone(), &limits()).unwrap_err();
        assert_eq!(e.field, "event_types");
        request.event_types.pop();
        assert!(
            read_all(request, &limits()).is_ok(),
            "exactly the maximum is fine"
        );
    }

    #[test]
    fn subscriptions_validate_like_reads() {
        let q = subscribe(
            proto::SubscribeRequest {
                after: None,
                stream_prefix: "a".into(),
                event_types: vec!["bad type".into()],
            },
            &limits(),
        );
        assert_eq!(q.unwrap_err().field, "event_types[0].event_type");
        let ok = subscribe_to_stream(
            proto::SubscribeToStreamRequest {
                stream_id: "s".into(),
                from_version: 5,
            },
            &limits(),
        )
        .unwrap();
        assert_eq!((ok.0.as_str(), ok.1), ("s", 5));
        let e = subscribe_to_stream(
            proto::SubscribeToStreamRequest {
                stream_id: "s".into(),
                from_version: u64::MAX,
            },
            &limits(),
        )
        .unwrap_err();
        assert_eq!(e.field, "from_version");
    }

    fn recorded(data: EventData) -> RecordedEvent {
        RecordedEvent {
            global_position: 10,
            transaction_id: 20,
            event_id: Uuid::from_u128(1),
            stream_id: format!("order-{}", Uuid::from_u128(2)),
            aggregate_type: "order".into(),
            aggregate_id: Some(Uuid::from_u128(2)),
            event_version: 3,
            event_type: "OrderPlaced".into(),
            schema_version: 2,
            data,
            metadata: "{}".into(),
            correlation_id: Some(Uuid::from_u128(4)),
            causation_id: None,
            created_at: chrono::Utc.timestamp_opt(1_700_000_000, 123_456_000).unwrap(),
        }
    }

    #[test]
    fn recorded_events_go_out_with_every_field() {
        let wire = recorded_event(recorded(EventData::Json("{\"a\":1}".into())));
        assert_eq!(wire.event_id, Uuid::from_u128(1).to_string());
        assert_eq!(
            (
                wire.global_position,
                wire.transaction_id,
                wire.event_version,
                wire.schema_version
            ),
            (10, 20, 3, 2)
        );
        assert_eq!(wire.content_type, proto::ContentType::Json as i32);
        assert_eq!(wire.data, b"{\"a\":1}");
        assert_eq!(wire.metadata, b"{}");
        assert_eq!(wire.aggregate_id, Uuid::from_u128(2).to_string());
        assert_eq!(wire.correlation_id, Uuid::from_u128(4).to_string());
        assert_eq!(wire.causation_id, "", "absent ids are empty strings");
        assert_eq!(wire.created_at, "2023-11-14T22:13:20.123456Z");
        let binary = recorded_event(recorded(EventData::Binary(vec![1, 2])));
        assert_eq!(binary.content_type, proto::ContentType::Binary as i32);
        assert_eq!(binary.data, vec![1, 2]);
    }

    #[test]
    fn append_outcomes_go_out_in_order() {
        let outcome = event_store::StreamOutcome {
            stream_id: StreamId::parse("s", &limits()).unwrap(),
            current_version: 2,
            positions: (1..=2)
                .map(|v| event_store::EventPosition {
                    event_id: Uuid::from_u128(v.into()),
                    event_version: v,
                    global_position: v + 100,
                })
                .collect(),
            idempotent_replay: true,
        };
        let wire = stream_result(outcome);
        assert_eq!((wire.stream_id.as_str(), wire.current_version), ("s", 2));
        assert!(wire.idempotent_replay);
        let versions: Vec<(u64, u64)> = wire
            .positions
            .iter()
            .map(|p| (p.event_version, p.global_position))
            .collect();
        assert_eq!(versions, vec![(1, 101), (2, 102)]);
        assert_eq!(wire.positions[0].event_id, Uuid::from_u128(1).to_string());
    }
}
