use api::proto;
use serde_json::json;
use tests::*;
use tonic::Code;
use tonic_types::StatusExt;

fn event_with(f: impl FnOnce(&mut proto::ProposedEvent)) -> proto::ProposedEvent {
    let mut event = json_event("Valid", json!({"ok": true}));
    f(&mut event);
    event
}

#[tokio::test]
async fn each_kind_of_bad_append_is_refused_precisely_and_writes_nothing() {
    let db = TestDb::create().await;
    let mut settings = settings_for(&db);
    settings.event_bytes_max = Some(1024);
    settings.append_events_max = Some(10);
    let mut server = TestServer::start(settings).await;

    let one = |f: fn(&mut proto::ProposedEvent)| vec![event_with(f)];
    let cases: Vec<(&str, proto::AppendToStreamRequest, &str, &str)> = vec![
        (
            "empty stream id",
            append_request("", None, one(|_| {})),
            "stream_id",
            "must not be empty",
        ),
        (
            "long stream id",
            append_request(&"s".repeat(300), None, one(|_| {})),
            "stream_id",
            "stream_id_bytes_max",
        ),
        (
            "system stream",
            append_request("$all", None, one(|_| {})),
            "stream_id",
            "reserved",
        ),
        (
            "no events",
            append_request("s", None, vec![]),
            "events",
            "at least one event",
        ),
        (
            "empty type",
            append_request("s", None, one(|e| e.event_type.clear())),
            "events[0].event_type",
            "must not be empty",
        ),
        (
            "type with a wildcard",
            append_request("s", None, one(|e| e.event_type = "Order.*".into())),
            "events[0].event_type",
            "contains '*'",
        ),
        (
            "long type",
            append_request("s", None, one(|e| e.event_type = "T".repeat(200))),
            "events[0].event_type",
            "event_type_bytes_max",
        ),
        (
            "non-JSON data declared JSON",
            append_request("s", None, one(|e| e.data = b"{not json".to_vec())),
            "events[0].data",
            "not JSON",
        ),
        (
            "metadata not an object",
            append_request("s", None, one(|e| e.metadata = b"[1,2]".to_vec())),
            "events[0].metadata",
            "JSON object",
        ),
        (
            "missing event id",
            append_request("s", None, one(|e| e.event_id.clear())),
            "events[0].event_id",
            "is required",
        ),
        (
            "bad event id",
            append_request("s", None, one(|e| e.event_id = "42".into())),
            "events[0].event_id",
            "not a UUID",
        ),
        (
            "bad correlation id",
            append_request("s", None, one(|e| e.correlation_id = "x".into())),
            "events[0].correlation_id",
            "not a UUID",
        ),
        (
            "unknown content type",
            append_request("s", None, one(|e| e.content_type = 9)),
            "events[0].content_type",
            "not a known content type",
        ),
        (
            "event over event_bytes_max",
            append_request(
                "s",
                None,
                one(|e| e.data = serde_json::to_vec(&"x".repeat(2000)).unwrap()),
            ),
            "events[0]",
            "event_bytes_max",
        ),
        (
            "too many events",
            append_request("s", None, (0..11).map(|_| json_event("E", json!({}))).collect()),
            "events",
            "append_events_max",
        ),
        (
            "exact version 0",
            append_request("s", exact(0), one(|_| {})),
            "expected_version.exact",
            "versions start at 1",
        ),
    ];
    for (what, request, field, message) in cases {
        let status = server.client.append_to_stream(request).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{what}: {status:?}");
        assert!(status.message().contains(message), "{what}: {}", status.message());
        let bad_request = status.get_details_bad_request().expect("BadRequest detail");
        assert_eq!(bad_request.field_violations[0].field, field, "{what}");
    }

    let id = uuid::Uuid::new_v4().to_string();
    let duplicate_ids = vec![
        event_with(|e| e.event_id = id.clone()),
        event_with(|e| e.event_id = id.clone()),
    ];
    let status = server
        .client
        .append_to_stream(append_request("s", None, duplicate_ids))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(status.message().contains("appears twice"));

    let same_stream_twice = proto::AppendMultiRequest {
        streams: (0..2)
            .map(|_| proto::StreamAppend {
                stream_id: "s".into(),
                expected_version: None,
                events: one(|_| {}),
            })
            .collect(),
    };
    let status = server.client.append_multi(same_stream_twice).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(
        status.message().contains("streams[1].stream_id"),
        "{}",
        status.message()
    );

    let status = server
        .client
        .append_multi(proto::AppendMultiRequest { streams: vec![] })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);

    assert_eq!(event_count(&server.running.pool).await, 0, "nothing was written");
    server.stop().await;
    db.drop_database().await;
}

#[tokio::test]
async fn oversized_request_is_refused_before_decoding() {
    let db = TestDb::create().await;
    let mut settings = settings_for(&db);
    settings.append_bytes_max = Some(64 * 1024);
    settings.event_bytes_max = Some(64 * 1024);
    let mut server = TestServer::start(settings).await;
    let big = event_with(|e| e.data = serde_json::to_vec(&"x".repeat(512 * 1024)).unwrap());
    let status = server
        .client
        .append_to_stream(append_request("s", None, vec![big]))
        .await
        .unwrap_err();
    // tonic refuses it while decoding, before any of it is buffered whole
    assert_eq!(status.code(), Code::OutOfRange, "{status:?}");
    assert!(status.message().contains("too large"), "{}", status.message());
    assert_eq!(event_count(&server.running.pool).await, 0);
    server.stop().await;
    db.drop_database().await;
}

#[tokio::test]
async fn bad_reads_are_refused() {
    let db = TestDb::create().await;
    let mut server = TestServer::start(settings_for(&db)).await;
    let status = server
        .client
        .read_stream(proto::ReadStreamRequest {
            stream_id: "missing".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
    assert!(status.message().contains("'missing' does not exist"));

    let status = server
        .client
        .read_stream(proto::ReadStreamRequest {
            stream_id: "s".into(),
            direction: 7,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(status.message().starts_with("direction:"));

    let status = server
        .client
        .read_all(proto::ReadAllRequest {
            event_types: vec!["bad type".into()],
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(
        status.message().starts_with("event_types[0].event_type"),
        "{}",
        status.message()
    );
    server.stop().await;
    db.drop_database().await;
}

/// `event_bytes_max` counts the data and the metadata bytes the client
/// sent: no metadata counts 0 (though `{}` is stored for it), `{}` sent
/// counts 2.
#[tokio::test]
async fn an_event_of_exactly_event_bytes_max_is_accepted_and_one_byte_more_refused() {
    const LIMIT: usize = 1024;
    let db = TestDb::create().await;
    let mut settings = settings_for(&db);
    settings.event_bytes_max = Some(LIMIT);
    let mut server = TestServer::start(settings).await;
    // A JSON string of `bytes` bytes, quotes included, with `metadata`.
    let sized = |bytes: usize, metadata: &[u8]| {
        event_with(|e| {
            e.data = serde_json::to_vec(&"x".repeat(bytes - 2)).unwrap();
            e.metadata = metadata.to_vec();
        })
    };
    let metadata = br#"{"user":"ada"}"#;
    let cases: [(&str, proto::ProposedEvent, Option<usize>); 6] = [
        ("no metadata", sized(LIMIT, b""), None),
        ("no metadata", sized(LIMIT + 1, b""), Some(LIMIT + 1)),
        ("metadata", sized(LIMIT - metadata.len(), metadata), None),
        (
            "metadata",
            sized(LIMIT - metadata.len() + 1, metadata),
            Some(LIMIT + 1),
        ),
        ("{} sent", sized(LIMIT - 2, b"{}"), None),
        ("{} sent", sized(LIMIT - 1, b"{}"), Some(LIMIT + 1)),
    ];
    let mut accepted = Vec::new();
    for (what, event, refused_at) in cases {
        let answer = server
            .client
            .append_to_stream(append_request("sized", None, vec![event.clone()]))
            .await;
        match refused_at {
            None => {
                answer.unwrap_or_else(|e| panic!("{what}: {e:?}"));
                accepted.push(event);
            }
            Some(bytes) => {
                let status = answer.unwrap_err();
                assert_eq!(status.code(), Code::InvalidArgument, "{what}: {status:?}");
                let expected = format!("data + metadata is {bytes} bytes; the limit is {LIMIT} bytes");
                assert!(
                    status.message().contains(&expected),
                    "{what}: {}",
                    status.message()
                );
                let bad_request = status.get_details_bad_request().expect("BadRequest detail");
                assert_eq!(bad_request.field_violations[0].field, "events[0]", "{what}");
            }
        }
    }
    // The same rule in AppendMulti
    let status = server
        .client
        .append_multi(proto::AppendMultiRequest {
            streams: vec![proto::StreamAppend {
                stream_id: "sized".into(),
                expected_version: None,
                events: vec![sized(LIMIT + 1, b"")],
            }],
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert_eq!(event_count(&server.running.pool).await, accepted.len() as i64);
    // No metadata is stored and read back as `{}`; so a retry is the same
    // event whether it sends no metadata or `{}`
    let read = server
        .client
        .read_stream(proto::ReadStreamRequest {
            stream_id: "sized".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let read = collect_stream(read).await;
    assert_eq!(read[0].event.as_ref().unwrap().metadata, b"{}");
    let stored: serde_json::Value =
        serde_json::from_slice(&read[1].event.as_ref().unwrap().metadata).unwrap();
    assert_eq!(stored, json!({"user": "ada"}));
    let mut without_braces = accepted[2].clone();
    without_braces.metadata.clear();
    for retry in [accepted[0].clone(), accepted[2].clone(), without_braces] {
        let replay = server
            .client
            .append_to_stream(append_request("sized", None, vec![retry]))
            .await
            .unwrap()
            .into_inner();
        assert!(replay.result.unwrap().idempotent_replay);
    }
    assert_eq!(event_count(&server.running.pool).await, accepted.len() as i64);
    server.stop().await;
    db.drop_database().await;
}
