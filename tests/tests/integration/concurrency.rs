use std::collections::HashSet;

use api::proto::event_store_client::EventStoreClient;
use serde_json::json;
use tests::*;
use tonic::Code;
use tonic_types::StatusExt;

/// Writers race on one stream, each appending at the version it last saw.
#[tokio::test]
async fn concurrent_writers_with_exact_versions_write_every_version_once() {
    const WRITERS: usize = 16;
    const TARGET_VERSION: u64 = 300;
    let db = TestDb::create().await;
    let server = TestServer::start(settings_for(&db)).await;
    let url = server.channel_url();

    let mut tasks = Vec::new();
    for writer in 0..WRITERS {
        let url = url.clone();
        tasks.push(tokio::spawn(async move {
            let mut client = EventStoreClient::connect(url).await.unwrap();
            let mut believed = 0u64;
            let (mut won, mut lost) = (Vec::new(), 0u32);
            while believed < TARGET_VERSION {
                let expected = if believed == 0 {
                    no_stream()
                } else {
                    exact(believed)
                };
                let event = json_event("Incremented", json!({"writer": writer}));
                let event_id = event.event_id.clone();
                match client
                    .append_to_stream(append_request("counter-1", expected, vec![event]))
                    .await
                {
                    Ok(response) => {
                        let result = response.into_inner().result.unwrap();
                        assert_eq!(result.current_version, believed + 1);
                        won.push((event_id, result.current_version));
                        believed = result.current_version;
                    }
                    Err(status) => {
                        assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
                        let info = status.get_details_error_info().unwrap();
                        believed = info.metadata["actual_version"].parse().unwrap();
                        lost += 1;
                    }
                }
            }
            (won, lost)
        }));
    }
    let mut won_versions = Vec::new();
    let mut losses = 0;
    for task in tasks {
        let (won, lost) = task.await.unwrap();
        won_versions.extend(won);
        losses += lost;
    }
    assert!(losses > 0, "the writers should have raced");
    // every acknowledged version is distinct and they cover 1..=N exactly
    let versions: HashSet<u64> = won_versions.iter().map(|(_, v)| *v).collect();
    assert_eq!(
        versions.len(),
        won_versions.len(),
        "a version was acknowledged twice"
    );
    let stored: Vec<(i64, String)> = sqlx::query_as(
        "SELECT event_version, event_id::text FROM events WHERE stream_id = 'counter-1' ORDER BY event_version",
    )
    .fetch_all(&server.running.pool)
    .await
    .unwrap();
    let stored_versions: Vec<u64> = stored.iter().map(|(v, _)| *v as u64).collect();
    let expected: Vec<u64> = (1..=stored_versions.len() as u64).collect();
    assert_eq!(stored_versions, expected, "no gaps, no duplicates");
    assert!(stored_versions.len() as u64 >= TARGET_VERSION);
    // exactly the acknowledged events were stored, at the acknowledged versions
    let stored_set: HashSet<(String, u64)> = stored.into_iter().map(|(v, id)| (id, v as u64)).collect();
    let acked_set: HashSet<(String, u64)> = won_versions.into_iter().collect();
    assert_eq!(stored_set, acked_set);
    server.stop().await;
    db.drop_database().await;
}

/// One request of a group-commit batch conflicts; its neighbours commit.
#[tokio::test]
async fn a_conflict_in_a_batch_does_not_fail_its_neighbours() {
    let db = TestDb::create().await;
    let mut settings = settings_for(&db);
    // one committer that waits 300 ms to gather: all requests share a batch
    settings.append_committers = Some(1);
    settings.append_batch_wait_us = Some(300_000);
    let mut server = TestServer::start(settings).await;
    server
        .client
        .append_to_stream(append_request(
            "shared",
            no_stream(),
            vec![json_event("Created", json!({}))],
        ))
        .await
        .unwrap();

    let mut requests = Vec::new();
    for i in 0..20 {
        let mut client = server.client.clone();
        let request = if i == 7 {
            append_request("shared", exact(5), vec![json_event("Conflicting", json!({}))])
        } else {
            append_request(
                &format!("neighbour-{i}"),
                no_stream(),
                vec![json_event("Created", json!({"i": i}))],
            )
        };
        requests.push(tokio::spawn(
            async move { client.append_to_stream(request).await },
        ));
    }
    let mut ok = 0;
    for (i, request) in requests.into_iter().enumerate() {
        match request.await.unwrap() {
            Ok(_) => ok += 1,
            Err(status) => {
                assert_eq!(i, 7);
                assert_eq!(status.code(), Code::FailedPrecondition);
            }
        }
    }
    assert_eq!(ok, 19);
    // and they really shared one transaction
    let transactions: i64 = sqlx::query_scalar(
        "SELECT count(DISTINCT transaction_id::text) FROM events WHERE stream_id LIKE 'neighbour-%'",
    )
    .fetch_one(&server.running.pool)
    .await
    .unwrap();
    assert_eq!(transactions, 1, "the 19 neighbours were committed together");
    server.stop().await;
    db.drop_database().await;
}

/// A batch that collides with another writer on a new stream falls back
/// to per-request transactions; every request still gets a right answer.
#[tokio::test]
async fn racing_creators_of_new_streams_get_one_winner_each() {
    let db = TestDb::create().await;
    let server = TestServer::start(settings_for(&db)).await;
    let mut tasks = Vec::new();
    for i in 0..40 {
        let mut client = server.client.clone();
        tasks.push(tokio::spawn(async move {
            let stream = format!("new-{}", i % 10);
            client
                .append_to_stream(append_request(
                    &stream,
                    no_stream(),
                    vec![json_event("Created", json!({}))],
                ))
                .await
                .map(|_| stream)
        }));
    }
    let mut winners = HashSet::new();
    for task in tasks {
        match task.await.unwrap() {
            Ok(stream) => assert!(winners.insert(stream), "two creators won the same stream"),
            Err(status) => assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}"),
        }
    }
    assert_eq!(winners.len(), 10);
    assert_eq!(event_count(&server.running.pool).await, 10);
    server.stop().await;
    db.drop_database().await;
}

#[tokio::test]
async fn full_append_queue_answers_resource_exhausted() {
    let db = TestDb::create().await;
    let mut settings = settings_for(&db);
    settings.append_queue_max = Some(1);
    settings.append_committers = Some(1);
    settings.append_batch_requests_max = Some(1);
    let server = TestServer::start(settings).await;
    let mut tasks = Vec::new();
    for i in 0..64 {
        let mut client = server.client.clone();
        tasks.push(tokio::spawn(async move {
            client
                .append_to_stream(append_request(
                    &format!("q-{i}"),
                    None,
                    vec![json_event("E", json!({}))],
                ))
                .await
        }));
    }
    let mut exhausted = 0;
    let mut ok = 0;
    for task in tasks {
        match task.await.unwrap() {
            Ok(_) => ok += 1,
            Err(status) => {
                assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
                assert!(status.message().contains("append_queue_max"));
                exhausted += 1;
            }
        }
    }
    assert!(
        exhausted > 0,
        "64 concurrent requests should overflow a queue of 1"
    );
    assert_eq!(event_count(&server.running.pool).await, ok);
    server.stop().await;
    db.drop_database().await;
}

/// Two servers on one database: each caches stream versions, and each
/// cache goes stale when the other writes. A stale cache must neither
/// refuse a right expectation nor let a write leave a gap.
#[tokio::test]
async fn two_servers_on_one_database_keep_versions_exact() {
    let db = TestDb::create().await;
    let mut a = TestServer::start(settings_for(&db)).await;
    let mut b = TestServer::start(settings_for(&db)).await;
    let event = || vec![json_event("Moved", json!({}))];
    // a learns version 1
    a.client
        .append_to_stream(append_request("shared-1", no_stream(), event()))
        .await
        .unwrap();
    // b moves the stream to 2 behind a's back
    b.client
        .append_to_stream(append_request("shared-1", exact(1), event()))
        .await
        .unwrap();
    // a, whose cache says 1, must accept an expectation of 2...
    let result = a
        .client
        .append_to_stream(append_request("shared-1", exact(2), event()))
        .await
        .unwrap();
    assert_eq!(result.into_inner().result.unwrap().current_version, 3);
    // ...and refuse 1 with the true actual version
    let status = a
        .client
        .append_to_stream(append_request("shared-1", exact(1), event()))
        .await
        .unwrap_err();
    assert_eq!(
        status.get_details_error_info().unwrap().metadata["actual_version"],
        "3"
    );
    // b, whose cache says 2, appends with `any`: version 4, not a second 3
    let result = b
        .client
        .append_to_stream(append_request("shared-1", None, event()))
        .await
        .unwrap();
    assert_eq!(result.into_inner().result.unwrap().current_version, 4);
    let versions: Vec<i64> =
        sqlx::query_scalar("SELECT event_version FROM events WHERE stream_id = 'shared-1' ORDER BY 1")
            .fetch_all(&a.running.pool)
            .await
            .unwrap();
    assert_eq!(versions, vec![1, 2, 3, 4]);
    a.stop().await;
    b.stop().await;
    db.drop_database().await;
}

/// Write-side contiguity: when the store lost its last events behind the
/// server's back (here deleted by hand), a write decided from the stale
/// cached version would leave a gap; the statement refuses it, and the
/// careful path writes the version that really comes next.
#[tokio::test]
async fn a_write_never_leaves_a_gap_even_from_a_stale_cache() {
    let db = TestDb::create().await;
    let mut server = TestServer::start(settings_for(&db)).await;
    let events = (0..3).map(|_| json_event("E", json!({}))).collect();
    server
        .client
        .append_to_stream(append_request("healed", None, events))
        .await
        .unwrap();
    sqlx::query("DELETE FROM events WHERE stream_id = 'healed' AND event_version = 3")
        .execute(&server.running.pool)
        .await
        .unwrap();
    let result = server
        .client
        .append_to_stream(append_request("healed", None, vec![json_event("E", json!({}))]))
        .await
        .unwrap();
    assert_eq!(result.into_inner().result.unwrap().current_version, 3);
    let versions: Vec<i64> =
        sqlx::query_scalar("SELECT event_version FROM events WHERE stream_id = 'healed' ORDER BY 1")
            .fetch_all(&server.running.pool)
            .await
            .unwrap();
    assert_eq!(versions, vec![1, 2, 3]);
    server.stop().await;
    db.drop_database().await;
}
