use std::collections::{HashMap, HashSet};
use std::time::Duration;

use api::proto;
use serde_json::json;
use tests::*;
use tonic::Code;

/// History, then live, while eight writers append: every event exactly
/// once, in $all order, each stream's versions contiguous.
#[tokio::test]
async fn catch_up_subscription_sees_every_event_once_across_the_switch_to_live() {
    const BEFORE: usize = 300;
    const WRITERS: usize = 8;
    const REQUESTS_PER_WRITER: usize = 100;
    const EVENTS_PER_REQUEST: usize = 3;
    let total = BEFORE + WRITERS * REQUESTS_PER_WRITER * EVENTS_PER_REQUEST;
    let db = TestDb::create().await;
    let mut server = TestServer::start(settings_for(&db)).await;
    let history = (0..BEFORE)
        .map(|i| json_event("Before", json!({"i": i})))
        .collect();
    server
        .client
        .append_to_stream(append_request("history", None, history))
        .await
        .unwrap();

    let mut subscription = server
        .client
        .subscribe(proto::SubscribeRequest::default())
        .await
        .unwrap()
        .into_inner();
    let mut writers = Vec::new();
    for w in 0..WRITERS {
        let mut client = server.client.clone();
        writers.push(tokio::spawn(async move {
            for _ in 0..REQUESTS_PER_WRITER {
                let events = (0..EVENTS_PER_REQUEST)
                    .map(|_| json_event("Live", json!({"w": w})))
                    .collect();
                client
                    .append_to_stream(append_request(&format!("live-{w}"), None, events))
                    .await
                    .unwrap();
            }
        }));
    }

    let mut seen = HashSet::new();
    let mut last_position = (0u64, 0u64);
    let mut versions: HashMap<String, u64> = HashMap::new();
    while seen.len() < total {
        let item = tokio::time::timeout(Duration::from_secs(30), subscription.message())
            .await
            .expect("the subscription keeps delivering")
            .unwrap()
            .expect("the subscription does not end");
        let event = item.event.unwrap();
        assert!(
            seen.insert(event.event_id.clone()),
            "event {} delivered twice",
            event.event_id
        );
        let position = (event.transaction_id, event.global_position);
        assert!(position > last_position, "{position:?} after {last_position:?}");
        last_position = position;
        let previous = versions
            .insert(event.stream_id.clone(), event.event_version)
            .unwrap_or(0);
        assert_eq!(
            event.event_version,
            previous + 1,
            "stream {} out of order",
            event.stream_id
        );
    }
    for writer in writers {
        writer.await.unwrap();
    }
    // nothing more arrives than was written
    let extra = tokio::time::timeout(Duration::from_millis(500), subscription.message()).await;
    assert!(extra.is_err(), "an extra event arrived: {extra:?}");
    drop(subscription);
    server.stop().await;
    db.drop_database().await;
}

#[tokio::test]
async fn stream_subscription_waits_for_a_stream_that_does_not_exist_yet() {
    let db = TestDb::create().await;
    let mut server = TestServer::start(settings_for(&db)).await;
    let mut subscription = server
        .client
        .subscribe_to_stream(proto::SubscribeToStreamRequest {
            stream_id: "later-1".into(),
            from_version: 2,
        })
        .await
        .unwrap()
        .into_inner();
    for round in 0..2 {
        let events = (0..3).map(|i| json_event("Step", json!({"i": i}))).collect();
        server
            .client
            .append_to_stream(append_request("later-1", None, events))
            .await
            .unwrap();
        server
            .client
            .append_to_stream(append_request(
                "other",
                None,
                vec![json_event("Noise", json!({}))],
            ))
            .await
            .unwrap();
        let expected: Vec<u64> = if round == 0 { vec![2, 3] } else { vec![4, 5, 6] };
        for version in expected {
            let item = tokio::time::timeout(Duration::from_secs(10), subscription.message())
                .await
                .expect("delivered")
                .unwrap()
                .unwrap();
            let event = item.event.unwrap();
            assert_eq!(
                (event.stream_id.as_str(), event.event_version),
                ("later-1", version)
            );
        }
    }
    drop(subscription);
    server.stop().await;
    db.drop_database().await;
}

#[tokio::test]
async fn bad_subscriptions_are_refused() {
    let db = TestDb::create().await;
    let mut server = TestServer::start(settings_for(&db)).await;
    let status = server
        .client
        .subscribe(proto::SubscribeRequest {
            event_types: vec!["no spaces".into()],
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(
        status.message().starts_with("event_types[0]"),
        "{}",
        status.message()
    );
    let status = server
        .client
        .subscribe_to_stream(proto::SubscribeToStreamRequest {
            stream_id: "$all".into(),
            from_version: 0,
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(status.message().contains("reserved"), "{}", status.message());
    server.stop().await;
    db.drop_database().await;
}

/// A subscription does not keep a stopping server alive: it ends with
/// UNAVAILABLE so the client reconnects elsewhere.
#[tokio::test]
async fn stopping_the_server_ends_subscriptions_with_unavailable() {
    let db = TestDb::create().await;
    let mut server = TestServer::start(settings_for(&db)).await;
    let mut subscription = server
        .client
        .subscribe(proto::SubscribeRequest::default())
        .await
        .unwrap()
        .into_inner();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let stopping = tokio::spawn(server.stop());
    let status = tokio::time::timeout(Duration::from_secs(10), subscription.message())
        .await
        .expect("the subscription ends")
        .unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    tokio::time::timeout(Duration::from_secs(30), stopping)
        .await
        .unwrap()
        .unwrap();
    db.drop_database().await;
}
