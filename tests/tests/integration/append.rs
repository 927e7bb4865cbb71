use api::proto;
use serde_json::json;
use tests::*;
use tonic::Code;
use tonic_types::StatusExt;

#[tokio::test]
async fn append_then_read_back_in_order() {
    let db = TestDb::create().await;
    let mut server = TestServer::start(settings_for(&db)).await;

    // given a new stream, when two events are appended with no_stream
    let events = vec![
        json_event("OrderPlaced", json!({"total": 10})),
        json_event("OrderPaid", json!({"amount": 10})),
    ];
    let stream_id = format!("order-{}", uuid::Uuid::new_v4());
    let result = server
        .client
        .append_to_stream(append_request(&stream_id, no_stream(), events.clone()))
        .await
        .unwrap()
        .into_inner()
        .result
        .unwrap();

    // then they take versions 1 and 2 with increasing positions
    assert_eq!(result.current_version, 2);
    assert!(!result.idempotent_replay);
    let versions: Vec<u64> = result.positions.iter().map(|p| p.event_version).collect();
    assert_eq!(versions, vec![1, 2]);
    assert!(result.positions[0].global_position < result.positions[1].global_position);

    // and read back with every field
    let read = server
        .client
        .read_stream(proto::ReadStreamRequest {
            stream_id: stream_id.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let read: Vec<proto::RecordedEvent> = collect_stream(read)
        .await
        .into_iter()
        .map(|r| r.event.unwrap())
        .collect();
    assert_eq!(read.len(), 2);
    assert_eq!(read[0].event_id, events[0].event_id);
    assert_eq!(read[0].event_type, "OrderPlaced");
    assert_eq!(read[0].aggregate_type, "order");
    assert_eq!(read[0].aggregate_id, stream_id.trim_start_matches("order-"));
    assert_eq!(
        serde_json::from_slice::<serde_json::Value>(&read[0].data).unwrap(),
        json!({"total": 10})
    );
    assert_eq!(read[1].event_version, 2);
    assert!(read[0].created_at.ends_with('Z'));

    // and an exact expected version continues the stream
    let next = server
        .client
        .append_to_stream(append_request(
            &stream_id,
            exact(2),
            vec![json_event("OrderShipped", json!({}))],
        ))
        .await
        .unwrap()
        .into_inner()
        .result
        .unwrap();
    assert_eq!(next.current_version, 3);
    server.stop().await;
    db.drop_database().await;
}

#[tokio::test]
async fn wrong_expected_version_reports_the_actual_version() {
    let db = TestDb::create().await;
    let mut server = TestServer::start(settings_for(&db)).await;
    server
        .client
        .append_to_stream(append_request(
            "account-1",
            no_stream(),
            vec![json_event("Opened", json!({}))],
        ))
        .await
        .unwrap();

    for (expected, actual_text) in [(exact(5), "1"), (no_stream(), "1")] {
        let status = server
            .client
            .append_to_stream(append_request(
                "account-1",
                expected,
                vec![json_event("Deposited", json!({}))],
            ))
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::FailedPrecondition);
        assert!(
            status.message().contains("is at version 1"),
            "{}",
            status.message()
        );
        let info = status.get_details_error_info().expect("ErrorInfo detail");
        assert_eq!(info.reason, "WRONG_EXPECTED_VERSION");
        assert_eq!(info.metadata["actual_version"], actual_text);
        assert_eq!(info.metadata["stream_id"], "account-1");
    }

    let status = server
        .client
        .append_to_stream(append_request(
            "account-2",
            stream_exists(),
            vec![json_event("Deposited", json!({}))],
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition);
    assert_eq!(
        status.get_details_error_info().unwrap().metadata["actual_version"],
        "none"
    );
    assert_eq!(
        event_count(&server.running.pool).await,
        1,
        "refused appends write nothing"
    );
    server.stop().await;
    db.drop_database().await;
}

#[tokio::test]
async fn append_multi_is_atomic() {
    let db = TestDb::create().await;
    let mut server = TestServer::start(settings_for(&db)).await;
    let multi = |second_expected| proto::AppendMultiRequest {
        streams: vec![
            proto::StreamAppend {
                stream_id: "transfer-a".into(),
                expected_version: None,
                events: vec![json_event("Debited", json!({"amount": 5}))],
            },
            proto::StreamAppend {
                stream_id: "transfer-b".into(),
                expected_version: second_expected,
                events: vec![json_event("Credited", json!({"amount": 5}))],
            },
        ],
    };

    // when one stream's expectation fails, neither stream is written
    let status = server.client.append_multi(multi(exact(7))).await.unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition);
    assert_eq!(event_count(&server.running.pool).await, 0);

    // when both hold, both are written in one transaction
    let results = server
        .client
        .append_multi(multi(no_stream()))
        .await
        .unwrap()
        .into_inner()
        .results;
    assert_eq!(results.len(), 2);
    assert_eq!(results[0].stream_id, "transfer-a");
    assert_eq!(results[1].current_version, 1);
    let transactions: Vec<String> = sqlx::query_scalar("SELECT DISTINCT transaction_id::text FROM events")
        .fetch_all(&server.running.pool)
        .await
        .unwrap();
    assert_eq!(transactions.len(), 1);
    server.stop().await;
    db.drop_database().await;
}

#[tokio::test]
async fn retried_append_returns_the_original_positions_even_after_a_restart() {
    let db = TestDb::create().await;
    let mut server = TestServer::start(settings_for(&db)).await;
    let mut first = json_event("ItemAdded", json!({"sku": "a", "qty": 1}));
    first.metadata = br#"{"user": "ada", "tags": [1, 2]}"#.to_vec();
    let events = vec![first, json_event("ItemAdded", json!({"sku": "b"}))];
    let request = append_request("cart-1", no_stream(), events.clone());
    let original = server
        .client
        .append_to_stream(request.clone())
        .await
        .unwrap()
        .into_inner()
        .result
        .unwrap();

    // given the response was lost, when the client retries (the expected
    // version no longer holds, which a replay must not care about)
    let replay = server
        .client
        .append_to_stream(request.clone())
        .await
        .unwrap()
        .into_inner()
        .result
        .unwrap();
    assert!(replay.idempotent_replay);
    assert_eq!(replay.positions, original.positions);

    // JSON that differs only in key order and spacing is the same content
    let mut reordered = request.clone();
    reordered.events[0].data = br#"{ "qty": 1,   "sku": "a" }"#.to_vec();
    reordered.events[0].metadata = br#"{"tags":[1,2],"user":"ada"}"#.to_vec();
    let replay = server
        .client
        .append_to_stream(reordered)
        .await
        .unwrap()
        .into_inner()
        .result
        .unwrap();
    assert_eq!(replay.positions, original.positions);

    // and after a server restart (no cache can answer) it is still a replay
    server.stop().await;
    let mut server = TestServer::start(settings_for(&db)).await;
    let replay = server
        .client
        .append_to_stream(request.clone())
        .await
        .unwrap()
        .into_inner()
        .result
        .unwrap();
    assert!(replay.idempotent_replay);
    assert_eq!(replay.positions, original.positions);
    assert_eq!(event_count(&server.running.pool).await, 2);

    // the same id with other content is ALREADY_EXISTS
    let mut changed = request.clone();
    changed.events[1].data = br#"{"sku": "c"}"#.to_vec();
    let status = server.client.append_to_stream(changed).await.unwrap_err();
    assert_eq!(status.code(), Code::AlreadyExists);
    assert_eq!(status.get_details_error_info().unwrap().reason, "EVENT_ID_REUSED");
    assert!(
        status.message().contains(&events[1].event_id),
        "{}",
        status.message()
    );

    // the same id in another stream is ALREADY_EXISTS too
    let elsewhere = append_request("cart-2", None, events.clone());
    let status = server.client.append_to_stream(elsewhere).await.unwrap_err();
    assert_eq!(status.code(), Code::AlreadyExists);

    // a partial overlap is refused whole
    let partial = append_request(
        "cart-1",
        None,
        vec![events[0].clone(), json_event("ItemAdded", json!({}))],
    );
    let status = server.client.append_to_stream(partial).await.unwrap_err();
    assert_eq!(status.code(), Code::AlreadyExists);
    assert_eq!(status.get_details_error_info().unwrap().reason, "PARTIAL_REPLAY");
    assert!(
        status.message().starts_with("1 of the request's 2 event ids"),
        "{}",
        status.message()
    );
    assert_eq!(
        event_count(&server.running.pool).await,
        2,
        "nothing new was written"
    );
    server.stop().await;
    db.drop_database().await;
}

#[tokio::test]
async fn binary_events_round_trip() {
    let db = TestDb::create().await;
    let mut server = TestServer::start(settings_for(&db)).await;
    let event = proto::ProposedEvent {
        event_id: uuid::Uuid::new_v4().to_string(),
        event_type: "BlobStored".into(),
        content_type: proto::ContentType::Binary as i32,
        data: vec![0, 159, 146, 150, 255],
        ..Default::default()
    };
    server
        .client
        .append_to_stream(append_request("blob-1", None, vec![event.clone()]))
        .await
        .unwrap();
    // replaying the binary event is recognised as the same content
    let replay = server
        .client
        .append_to_stream(append_request("blob-1", None, vec![event.clone()]))
        .await
        .unwrap();
    assert!(replay.into_inner().result.unwrap().idempotent_replay);
    let read = server
        .client
        .read_stream(proto::ReadStreamRequest {
            stream_id: "blob-1".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let read = collect_stream(read).await;
    let recorded = read[0].event.as_ref().unwrap();
    assert_eq!(recorded.data, event.data);
    assert_eq!(recorded.content_type, proto::ContentType::Binary as i32);
    server.stop().await;
    db.drop_database().await;
}
