use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use api::proto;
use serde_json::json;
use tests::*;

fn read_request(stream_id: &str, from_version: u64, backwards: bool, limit: u64) -> proto::ReadStreamRequest {
    proto::ReadStreamRequest {
        stream_id: stream_id.into(),
        from_version,
        direction: if backwards {
            proto::ReadDirection::Backwards
        } else {
            proto::ReadDirection::Forwards
        } as i32,
        limit,
    }
}

#[tokio::test]
async fn read_stream_directions_and_limits() {
    let db = TestDb::create().await;
    let mut settings = settings_for(&db);
    settings.read_page_events_max = Some(3); // force several pages
    let mut server = TestServer::start(settings).await;
    let events = (0..10).map(|i| json_event("Step", json!({"i": i}))).collect();
    server
        .client
        .append_to_stream(append_request("steps", no_stream(), events))
        .await
        .unwrap();

    let versions = |events: Vec<proto::ReadStreamResponse>| -> Vec<u64> {
        events
            .into_iter()
            .map(|e| e.event.unwrap().event_version)
            .collect()
    };
    let mut read = async |request| {
        versions(collect_stream(server.client.read_stream(request).await.unwrap().into_inner()).await)
    };
    assert_eq!(
        read(read_request("steps", 0, false, 0)).await,
        (1..=10).collect::<Vec<_>>()
    );
    assert_eq!(read(read_request("steps", 4, false, 3)).await, vec![4, 5, 6]);
    assert_eq!(
        read(read_request("steps", 0, true, 0)).await,
        (1..=10).rev().collect::<Vec<_>>()
    );
    assert_eq!(read(read_request("steps", 5, true, 2)).await, vec![5, 4]);
    assert_eq!(read(read_request("steps", 11, false, 0)).await, Vec::<u64>::new());
    assert_eq!(read(read_request("steps", 99, true, 1)).await, vec![10]);
    server.stop().await;
    db.drop_database().await;
}

#[tokio::test]
async fn read_all_filters_and_resumes_from_a_position() {
    let db = TestDb::create().await;
    let mut server = TestServer::start(settings_for(&db)).await;
    for stream in ["user-1", "user-2", "order-1"] {
        let events = vec![json_event("Created", json!({})), json_event("Renamed", json!({}))];
        server
            .client
            .append_to_stream(append_request(stream, None, events))
            .await
            .unwrap();
    }
    wait_for_horizon(&server.running.pool).await;
    let mut read_all = async |request: proto::ReadAllRequest| -> Vec<proto::RecordedEvent> {
        collect_stream(server.client.read_all(request).await.unwrap().into_inner())
            .await
            .into_iter()
            .map(|r| r.event.unwrap())
            .collect()
    };
    let all = read_all(proto::ReadAllRequest::default()).await;
    assert_eq!(all.len(), 6);
    let keys: Vec<(u64, u64)> = all
        .iter()
        .map(|e| (e.transaction_id, e.global_position))
        .collect();
    let mut sorted = keys.clone();
    sorted.sort();
    assert_eq!(keys, sorted, "$all is in (transaction, position) order");

    let users = read_all(proto::ReadAllRequest {
        stream_prefix: "user-".into(),
        ..Default::default()
    })
    .await;
    assert!(users.iter().all(|e| e.stream_id.starts_with("user-")));
    assert_eq!(users.len(), 4);

    let renames = read_all(proto::ReadAllRequest {
        event_types: vec!["Renamed".into()],
        ..Default::default()
    })
    .await;
    assert_eq!(renames.len(), 3);

    let after = proto::AllPosition {
        transaction_id: all[2].transaction_id,
        global_position: all[2].global_position,
    };
    let rest = read_all(proto::ReadAllRequest {
        after: Some(after),
        ..Default::default()
    })
    .await;
    assert_eq!(
        rest.iter().map(|e| &e.event_id).collect::<Vec<_>>(),
        all[3..].iter().map(|e| &e.event_id).collect::<Vec<_>>()
    );

    let limited = read_all(proto::ReadAllRequest {
        limit: 2,
        ..Default::default()
    })
    .await;
    assert_eq!(limited.len(), 2);
    server.stop().await;
    db.drop_database().await;
}

/// An open transaction that has written holds back $all: nothing it
/// precedes is released until it ends, so no reader skips its events.
#[tokio::test]
async fn read_all_does_not_pass_a_running_transaction() {
    let db = TestDb::create().await;
    let mut server = TestServer::start(settings_for(&db)).await;
    server
        .client
        .append_to_stream(append_request("before", None, vec![json_event("E", json!({}))]))
        .await
        .unwrap();
    wait_for_horizon(&server.running.pool).await;

    // a transaction takes an xid and stays open (as a slow writer would)
    let pool = db.pool().await;
    let mut slow = pool.begin().await.unwrap();
    sqlx::query("SELECT pg_current_xact_id()")
        .execute(&mut *slow)
        .await
        .unwrap();

    server
        .client
        .append_to_stream(append_request("after", None, vec![json_event("E", json!({}))]))
        .await
        .unwrap();
    let visible = collect_stream(
        server
            .client
            .read_all(proto::ReadAllRequest::default())
            .await
            .unwrap()
            .into_inner(),
    )
    .await;
    let streams: Vec<String> = visible.into_iter().map(|r| r.event.unwrap().stream_id).collect();
    assert_eq!(
        streams,
        vec!["before"],
        "an event committed after the open transaction began is held back"
    );

    slow.rollback().await.unwrap();
    wait_for_horizon(&server.running.pool).await;
    let visible = collect_stream(
        server
            .client
            .read_all(proto::ReadAllRequest::default())
            .await
            .unwrap()
            .into_inner(),
    )
    .await;
    assert_eq!(visible.len(), 2);
    pool.close().await;
    server.stop().await;
    db.drop_database().await;
}

/// 100k events (about 60 MB with framing) read through ReadStream and
/// ReadAll by a client that starts slow: the server buffers a bounded
/// number of events, so this process's memory grows far less than the data.
#[tokio::test]
async fn reading_100k_events_keeps_memory_flat() {
    const EVENTS: usize = 100_000;
    const PER_REQUEST: usize = 1_000;
    let db = TestDb::create().await;
    let mut server = TestServer::start(settings_for(&db)).await;
    let padding = "p".repeat(500);
    for chunk in 0..EVENTS / PER_REQUEST {
        let events = (0..PER_REQUEST)
            .map(|i| json_event("Filled", json!({"i": chunk * PER_REQUEST + i, "pad": padding})))
            .collect();
        server
            .client
            .append_to_stream(append_request("big", None, events))
            .await
            .unwrap();
    }
    let data_bytes = (EVENTS * 520) as u64;
    wait_for_horizon(&server.running.pool).await;

    for read_all in [false, true] {
        let baseline = rss_bytes();
        let peak = Arc::new(AtomicU64::new(baseline));
        let sampler = {
            let peak = peak.clone();
            tokio::spawn(async move {
                loop {
                    peak.fetch_max(rss_bytes(), Ordering::Relaxed);
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            })
        };
        let count = if read_all {
            let stream = server
                .client
                .read_all(proto::ReadAllRequest::default())
                .await
                .unwrap();
            consume_slowly(stream.into_inner(), |r: proto::ReadAllResponse| r.event.unwrap()).await
        } else {
            let stream = server
                .client
                .read_stream(read_request("big", 0, false, 0))
                .await
                .unwrap();
            consume_slowly(stream.into_inner(), |r: proto::ReadStreamResponse| {
                r.event.unwrap()
            })
            .await
        };
        sampler.abort();
        assert_eq!(count, EVENTS as u64);
        let growth = peak.load(Ordering::Relaxed).saturating_sub(baseline);
        assert!(
            growth < data_bytes / 2,
            "read_all={read_all}: memory grew {growth} bytes while reading {data_bytes} bytes of events"
        );
    }
    server.stop().await;
    db.drop_database().await;
}

/// The read side re-checks contiguity: a gap (here made by hand, as
/// corruption would) is reported as INTERNAL, never passed on silently.
#[tokio::test]
async fn a_gap_in_a_stream_is_reported_on_read() {
    let db = TestDb::create().await;
    let mut server = TestServer::start(settings_for(&db)).await;
    let events = (0..3).map(|_| json_event("E", json!({}))).collect();
    server
        .client
        .append_to_stream(append_request("gappy", None, events))
        .await
        .unwrap();
    sqlx::query("DELETE FROM events WHERE stream_id = 'gappy' AND event_version = 2")
        .execute(&server.running.pool)
        .await
        .unwrap();
    let mut stream = server
        .client
        .read_stream(read_request("gappy", 0, false, 0))
        .await
        .unwrap()
        .into_inner();
    let first = stream.message().await.unwrap().unwrap();
    assert_eq!(first.event.unwrap().event_version, 1);
    let status = stream.message().await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::Internal);
    assert!(
        status.message().contains("expected version 2 next but found 3"),
        "{}",
        status.message()
    );
    server.stop().await;
    db.drop_database().await;
}

/// Reads every event, pausing after the first (a slow client) and checking
/// that versions follow each other; returns how many were read.
async fn consume_slowly<T>(
    mut stream: tonic::Streaming<T>,
    event_of: impl Fn(T) -> proto::RecordedEvent,
) -> u64 {
    let (mut count, mut previous_version) = (0u64, 0u64);
    while let Some(item) = stream.message().await.unwrap() {
        let event = event_of(item);
        assert_eq!(event.event_version, previous_version + 1);
        previous_version = event.event_version;
        count += 1;
        if count == 1 {
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
    count
}
