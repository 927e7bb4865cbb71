use event_store::relay::headers;
use serde_json::json;
use tests::*;

#[tokio::test]
async fn relayed_events_carry_their_identity_in_order_on_encoded_subjects() {
    let db = TestDb::create().await;
    let mut server = TestServer::start(settings_for(&db)).await;
    let hostile_stream = "we.ird *>-1";
    let first = json_event("Weird.Type", json!({"n": 1}));
    let mut second = json_event("Plain", json!({"n": 2}));
    second.metadata = br#"{"user":"ada"}"#.to_vec();
    second.correlation_id = uuid::Uuid::new_v4().to_string();
    server
        .client
        .append_to_stream(append_request(
            hostile_stream,
            None,
            vec![first.clone(), second.clone()],
        ))
        .await
        .unwrap();
    server
        .client
        .append_to_stream(append_request(
            "order-1",
            None,
            vec![json_event("Placed", json!({}))],
        ))
        .await
        .unwrap();

    let mut stream = db.events_stream().await;
    let messages = relayed_messages(&mut stream, 3).await;
    let prefix = db.relay_config().subject_prefix;
    // the category of "we.ird *>-1" is "we.ird *>": dots, space and
    // wildcards are escaped, never extra tokens or wildcards
    assert_eq!(
        messages[0].subject.as_str(),
        format!("{prefix}.evt.we~2Eird~20~2A~3E.Weird~2EType")
    );
    assert_eq!(messages[2].subject.as_str(), format!("{prefix}.evt.order.Placed"));
    assert_eq!(header(&messages[0], "Nats-Msg-Id"), first.event_id);
    assert_eq!(header(&messages[0], headers::EVENT_ID), first.event_id);
    assert_eq!(header(&messages[0], headers::STREAM_ID), hostile_stream);
    assert_eq!(header(&messages[0], headers::EVENT_TYPE), "Weird.Type");
    assert_eq!(header(&messages[1], headers::EVENT_VERSION), "2");
    assert_eq!(header(&messages[1], headers::METADATA), r#"{"user": "ada"}"#);
    assert_eq!(
        header(&messages[1], headers::CORRELATION_ID),
        second.correlation_id
    );
    assert_eq!(header(&messages[1], headers::CONTENT_TYPE), "application/json");
    assert_eq!(
        serde_json::from_slice::<serde_json::Value>(&messages[1].payload).unwrap(),
        json!({"n": 2})
    );
    let positions: Vec<u64> = messages
        .iter()
        .map(|m| header(m, headers::GLOBAL_POSITION).parse().unwrap())
        .collect();
    assert!(positions.windows(2).all(|w| w[0] < w[1]), "{positions:?}");
    server.stop().await;
    db.drop_database().await;
}

/// Inserts one event row directly, as another writer would, inside `tx`.
async fn insert_raw(tx: &mut sqlx::PgConnection, stream_id: &str, version: i64) {
    sqlx::query(
        "INSERT INTO events (event_id, stream_id, aggregate_type, event_version, event_type, event_data) \
         VALUES ($1, $2, 'raw', $3, 'Raw', '{}')",
    )
    .bind(uuid::Uuid::new_v4())
    .bind(stream_id)
    .bind(version)
    .execute(tx)
    .await
    .unwrap();
}

/// Positions become visible at commit, not at insert: commits in reverse
/// order must neither be skipped nor published twice, and a transaction
/// that started first but writes a later version of a stream must not
/// overtake the earlier version.
#[tokio::test]
async fn out_of_order_commits_are_relayed_once_each_in_stream_order() {
    let db = TestDb::create().await;
    let server = TestServer::start(settings_for(&db)).await;
    let pool = db.pool().await;

    // positions 1..=3 taken by three transactions, committed 3, 2, 1
    let mut txs = Vec::new();
    for i in 1..=3 {
        let mut tx = pool.begin().await.unwrap();
        insert_raw(&mut tx, &format!("reverse-{i}"), 1).await;
        txs.push(tx);
    }
    while let Some(tx) = txs.pop() {
        tx.commit().await.unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(300)).await; // let the relay step
    }

    // the first transaction takes its id first, the second writes version
    // 1 of "crossed" and commits; only then the first writes version 2
    let mut first = pool.begin().await.unwrap();
    sqlx::query("SELECT pg_current_xact_id()")
        .execute(&mut *first)
        .await
        .unwrap();
    let mut second = pool.begin().await.unwrap();
    insert_raw(&mut second, "crossed", 1).await;
    second.commit().await.unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    insert_raw(&mut first, "crossed", 2).await;
    first.commit().await.unwrap();

    let mut stream = db.events_stream().await;
    let messages = relayed_messages(&mut stream, 5).await;
    let mut streams: Vec<String> = messages.iter().map(|m| header(m, headers::STREAM_ID)).collect();
    let crossed: Vec<String> = messages
        .iter()
        .filter(|m| header(m, headers::STREAM_ID) == "crossed")
        .map(|m| header(m, headers::EVENT_VERSION))
        .collect();
    assert_eq!(crossed, vec!["1", "2"], "version 1 goes out before version 2");
    streams.sort();
    assert_eq!(
        streams,
        vec!["crossed", "crossed", "reverse-1", "reverse-2", "reverse-3"]
    );
    pool.close().await;
    server.stop().await;
    db.drop_database().await;
}

/// A relay that published but died before storing its checkpoint
/// republishes on restart; JetStream drops the duplicates by Nats-Msg-Id.
#[tokio::test]
async fn republishing_after_a_lost_checkpoint_creates_no_duplicates() {
    let db = TestDb::create().await;
    let mut server = TestServer::start(settings_for(&db)).await;
    let events = (0..20).map(|i| json_event("Counted", json!({"i": i}))).collect();
    server
        .client
        .append_to_stream(append_request("counter", None, events))
        .await
        .unwrap();
    let mut stream = db.events_stream().await;
    relayed_messages(&mut stream, 20).await;
    server.stop().await;

    // the checkpoint is lost (as if the crash came before it was stored)
    sqlx::query("UPDATE relay_checkpoints SET transaction_id = '0', global_position = 0")
        .execute(&db.pool().await)
        .await
        .unwrap();
    let mut server = TestServer::start(settings_for(&db)).await;
    server
        .client
        .append_to_stream(append_request(
            "counter",
            None,
            vec![json_event("Counted", json!({"i": 20}))],
        ))
        .await
        .unwrap();
    let messages = relayed_messages(&mut stream, 21).await;
    let versions: Vec<String> = messages
        .iter()
        .map(|m| header(m, headers::EVENT_VERSION))
        .collect();
    assert_eq!(versions, (1..=21).map(|v| v.to_string()).collect::<Vec<_>>());
    server.stop().await;
    db.drop_database().await;
}

/// application_name of each holder of the relay lock in this database.
async fn relay_leaders(pool: &sqlx::PgPool) -> Vec<String> {
    sqlx::query_scalar(
        "SELECT a.application_name FROM pg_locks l \
         JOIN pg_database d ON d.oid = l.database \
         JOIN pg_stat_activity a ON a.pid = l.pid \
         WHERE l.locktype = 'advisory' AND l.granted AND d.datname = current_database() \
           AND ((l.classid::int8 << 32) | l.objid::int8) = $1",
    )
    .bind(event_store::relay::RELAY_LOCK_KEY)
    .fetch_all(pool)
    .await
    .unwrap()
}

fn named(db: &TestDb, name: &str) -> server::Settings {
    let mut settings = settings_for(db);
    settings.database_url = Some(format!("{}?application_name={name}", db.url));
    settings
}

#[tokio::test]
async fn one_relay_across_two_servers_and_the_other_takes_over() {
    let db = TestDb::create().await;
    let pool = db.pool().await;
    let a = TestServer::start(named(&db, "server-a")).await;
    let b = TestServer::start(named(&db, "server-b")).await;
    let mut servers = vec![("server-a", a), ("server-b", b)];
    let five = || (0..5).map(|_| json_event("E", json!({}))).collect::<Vec<_>>();
    for (_, server) in servers.iter_mut() {
        server
            .client
            .append_to_stream(append_request("s", None, five()))
            .await
            .unwrap();
    }
    let mut stream = db.events_stream().await;
    relayed_messages(&mut stream, 10).await;
    let leaders = relay_leaders(&pool).await;
    assert_eq!(leaders.len(), 1, "exactly one relay leads: {leaders:?}");

    // stop the leader: the other takes over and relays what comes next
    let leader = servers.iter().position(|(name, _)| *name == leaders[0]).unwrap();
    let (_, stopped) = servers.remove(leader);
    stopped.stop().await;
    let (follower_name, mut follower) = servers.pop().unwrap();
    follower
        .client
        .append_to_stream(append_request("s", None, five()))
        .await
        .unwrap();
    let messages = relayed_messages(&mut stream, 15).await;
    assert_eq!(relay_leaders(&pool).await, vec![follower_name.to_owned()]);
    let versions: Vec<String> = messages
        .iter()
        .map(|m| header(m, headers::EVENT_VERSION))
        .collect();
    assert_eq!(versions, (1..=15).map(|v| v.to_string()).collect::<Vec<_>>());
    pool.close().await;
    follower.stop().await;
    db.drop_database().await;
}

/// NATS goes away while events are appended: appends keep working (the
/// store is the truth) and once NATS is back every event arrives, once.
#[tokio::test]
async fn events_appended_while_nats_is_down_arrive_when_it_returns() {
    let mut nats = PrivateNats::start().await;
    let db = TestDb::create().await;
    let mut settings = settings_for(&db);
    settings.nats_url = Some(nats.url());
    let mut server = TestServer::start(settings).await;
    let ten = || (0..10).map(|_| json_event("E", json!({}))).collect::<Vec<_>>();
    server
        .client
        .append_to_stream(append_request("s", None, ten()))
        .await
        .unwrap();

    let stream_name = db.relay_config().stream_name;
    let mut stream = wait_for_stream(&nats.url(), &stream_name).await;
    relayed_messages(&mut stream, 10).await;

    nats.stop().await;
    for _ in 0..3 {
        server
            .client
            .append_to_stream(append_request("s", None, ten()))
            .await
            .unwrap();
    }
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    nats.restart().await;

    let mut stream = wait_for_stream(&nats.url(), &stream_name).await;
    let messages = relayed_messages(&mut stream, 40).await;
    let versions: Vec<String> = messages
        .iter()
        .map(|m| header(m, headers::EVENT_VERSION))
        .collect();
    assert_eq!(versions, (1..=40).map(|v| v.to_string()).collect::<Vec<_>>());
    server.stop().await;
    db.drop_database().await;
    nats.stop().await;
}

#[tokio::test]
async fn relay_status_shows_leadership_lag_and_the_transaction_holding_the_horizon() {
    use api::proto::admin_client::AdminClient;
    let db = TestDb::create().await;
    let mut server = TestServer::start(settings_for(&db)).await;
    let mut admin = AdminClient::connect(server.channel_url()).await.unwrap();
    server
        .client
        .append_to_stream(append_request("s", None, vec![json_event("E", json!({}))]))
        .await
        .unwrap();
    let mut stream = db.events_stream().await;
    relayed_messages(&mut stream, 1).await;

    // caught up: this server leads, the checkpoint is stored, no lag
    let mut status = admin
        .get_relay_status(api::proto::GetRelayStatusRequest {})
        .await
        .unwrap()
        .into_inner();
    for _ in 0..50 {
        if status.this_server_leads && status.checkpoint.is_some() && status.lag_events == 0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        status = admin
            .get_relay_status(api::proto::GetRelayStatusRequest {})
            .await
            .unwrap()
            .into_inner();
    }
    assert!(status.this_server_leads);
    assert!(status.checkpoint.is_some());
    assert_eq!(status.lag_events, 0);

    // a transaction that has written (has an id) and stays open
    let pool = db.pool().await;
    let mut slow = pool.begin().await.unwrap();
    sqlx::query("SELECT pg_current_xact_id()")
        .execute(&mut *slow)
        .await
        .unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(1200)).await;
    server
        .client
        .append_to_stream(append_request("s", None, vec![json_event("E", json!({}))]))
        .await
        .unwrap();
    let status = admin
        .get_relay_status(api::proto::GetRelayStatusRequest {})
        .await
        .unwrap()
        .into_inner();
    let oldest = status
        .oldest_transaction
        .expect("the open transaction is reported");
    assert!(oldest.age_seconds >= 1.0, "{oldest:?}");
    assert!(
        status.lag_events >= 1,
        "the new event waits behind the open transaction"
    );
    slow.rollback().await.unwrap();
    pool.close().await;
    server.stop().await;
    db.drop_database().await;
}

/// 1 KB names with every kind of separator: one token each, bounded.
#[tokio::test]
async fn kilobyte_hostile_names_stay_single_bounded_tokens() {
    let db = TestDb::create().await;
    let mut settings = settings_for(&db);
    settings.stream_id_bytes_max = Some(2048);
    settings.event_type_bytes_max = Some(1024);
    let mut server = TestServer::start(settings).await;
    let stream_id = format!("{}-x", "a.b *>".repeat(171));
    let event_type = format!("T{}", ".:-_".repeat(255));
    assert!(stream_id.len() > 1000 && event_type.len() > 1000);
    server
        .client
        .append_to_stream(append_request(
            &stream_id,
            None,
            vec![json_event(&event_type, json!({}))],
        ))
        .await
        .unwrap();
    let mut stream = db.events_stream().await;
    let message = relayed_messages(&mut stream, 1).await.remove(0);
    let tokens: Vec<&str> = message.subject.as_str().split('.').collect();
    assert_eq!(tokens.len(), 4, "{}", message.subject);
    assert!(
        tokens[2].len() <= 64 && tokens[3].len() <= 64,
        "{}",
        message.subject
    );
    assert!(!message.subject.contains(['*', '>', ' ']));
    assert_eq!(header(&message, headers::STREAM_ID), stream_id);
    assert_eq!(header(&message, headers::EVENT_TYPE), event_type);
    server.stop().await;
    db.drop_database().await;
}

/// Commands to agents go through a work-queue stream: once each (the task
/// id is the message id) and gone once acknowledged.
#[tokio::test]
async fn tasks_are_queued_once_and_removed_when_done() {
    use async_nats::jetstream::consumer::pull;
    use futures_util::StreamExt;
    let db = TestDb::create().await;
    let server = TestServer::start(settings_for(&db)).await;
    let config = db.relay_config();
    let js = async_nats::jetstream::new(async_nats::connect(nats_url()).await.unwrap());
    // The workflow side owns the stream (the orchestrator's setup creates
    // it); workflows are off here, so it is made as the orchestrator does.
    sagas::ensure_tasks_stream(&js, &config).await.unwrap();
    let mut tasks = wait_for_stream(&nats_url(), &config.tasks_stream_name).await;

    let task_id = uuid::Uuid::new_v4();
    let payload = bytes_of(r#"{"table":"users"}"#);
    let first = event_store::relay::publish_task(
        &js,
        &config,
        "schema",
        "plan.v1",
        &task_id.to_string(),
        payload.clone(),
    )
    .await
    .unwrap();
    let again =
        event_store::relay::publish_task(&js, &config, "schema", "plan.v1", &task_id.to_string(), payload)
            .await
            .unwrap();
    assert!(first && !again, "the resend is dropped");
    assert_eq!(tasks.info().await.unwrap().state.messages, 1);

    let consumer = tasks
        .create_consumer(pull::Config {
            durable_name: Some("schema-agent".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    let mut batch = consumer
        .fetch()
        .max_messages(10)
        .expires(std::time::Duration::from_millis(500))
        .messages()
        .await
        .unwrap();
    let message = batch.next().await.unwrap().unwrap();
    assert_eq!(
        message.subject.as_str(),
        format!("{}.task.schema.plan~2Ev1", config.subject_prefix)
    );
    message.ack().await.unwrap();
    // acks are asynchronous on the server: give it a moment
    for _ in 0..50 {
        if tasks.info().await.unwrap().state.messages == 0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(
        tasks.info().await.unwrap().state.messages,
        0,
        "done tasks leave the queue"
    );
    server.stop().await;
    db.drop_database().await;
}

fn bytes_of(text: &str) -> bytes::Bytes {
    bytes::Bytes::copy_from_slice(text.as_bytes())
}

/// JetStream lost a message (here deleted behind everyone's back): the
/// reconciliation finds the event missing and republishes it, once.
#[tokio::test]
async fn reconciliation_republishes_what_jetstream_lost_once() {
    let db = TestDb::create().await;
    let mut server = TestServer::start(settings_for(&db)).await;
    let events: Vec<_> = (0..5).map(|i| json_event("Step", json!({"i": i}))).collect();
    let lost_id = events[1].event_id.clone();
    server
        .client
        .append_to_stream(append_request("lossy", None, events))
        .await
        .unwrap();
    let mut stream = db.events_stream().await;
    relayed_messages(&mut stream, 5).await;
    assert!(stream.delete_message(2).await.unwrap());

    // wait until the relay stored its checkpoint past the five events
    let pool = db.pool().await;
    for _ in 0..100 {
        let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM relay_checkpoints")
            .fetch_one(&pool)
            .await
            .unwrap();
        if stored == 1 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let config = db.relay_config();
    let js = async_nats::jetstream::new(async_nats::connect(nats_url()).await.unwrap());
    let republished = event_store::relay::reconcile(&pool, &js, &config, 100)
        .await
        .unwrap();
    assert_eq!(republished, 1);
    let again = event_store::relay::reconcile(&pool, &js, &config, 100)
        .await
        .unwrap();
    assert_eq!(again, 0, "a second reconciliation finds nothing missing");
    let last = stream.info().await.unwrap().state.last_sequence;
    let copy = stream.get_raw_message(last).await.unwrap();
    assert_eq!(header(&copy, headers::EVENT_ID), lost_id);
    assert_eq!(header(&copy, headers::EVENT_VERSION), "2");
    pool.close().await;
    server.stop().await;
    db.drop_database().await;
}
