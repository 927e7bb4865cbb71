use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use api::proto;
use api::proto::admin_client::AdminClient;
use event_store::consumer::{ConsumerConfig, EventConsumer, EventHandler};
use event_store::{ReadConfig, Reader, RecordedEvent};
use serde_json::json;
use tests::*;
use tonic::Code;

/// Records what it applied; fails one event while `broken` is set.
#[derive(Clone, Default)]
struct Recorder {
    applied: Arc<Mutex<Vec<(String, u64)>>>,
    failing_event: Arc<Mutex<Option<String>>>,
    broken: Arc<AtomicBool>,
}

impl EventHandler for Recorder {
    async fn handle(&mut self, event: &RecordedEvent) -> Result<(), String> {
        let failing = self.failing_event.lock().unwrap().clone();
        if self.broken.load(Ordering::SeqCst) && failing.as_deref() == Some(&event.event_id.to_string()) {
            return Err(format!("cannot apply {}: handler is broken", event.event_type));
        }
        self.applied
            .lock()
            .unwrap()
            .push((event.stream_id.clone(), event.event_version));
        Ok(())
    }
}

impl Recorder {
    async fn wait_for(&self, count: usize) -> Vec<(String, u64)> {
        for _ in 0..300 {
            let applied = self.applied.lock().unwrap().clone();
            if applied.len() >= count {
                return applied;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!(
            "the consumer applied {:?}, expected {count} events",
            self.applied.lock().unwrap()
        );
    }
}

async fn start_consumer(
    db: &TestDb,
    name: &str,
    recorder: Recorder,
) -> (tokio::sync::watch::Sender<bool>, tokio::task::JoinHandle<()>) {
    let pool = db.pool().await;
    let reader = Reader::new(pool.clone(), ReadConfig::default());
    let js = async_nats::jetstream::new(async_nats::connect(nats_url()).await.unwrap());
    let stream = db.events_stream().await;
    let stream_name = stream.cached_info().config.name.clone();
    let prefix = db.relay_config().subject_prefix;
    let mut config = ConsumerConfig::new(name, format!("{prefix}.evt.>"));
    config.max_deliver = 3;
    config.backoff_ms = vec![50];
    config.fetch_expires_ms = 200;
    let consumer = EventConsumer::create(pool, reader, &js, &stream_name, config, recorder)
        .await
        .unwrap();
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let task = tokio::spawn(async move { consumer.run(stopped).await.unwrap() });
    (stop, task)
}

#[tokio::test]
async fn an_event_that_always_fails_is_dead_lettered_and_replayed_once_after_a_fix() {
    let db = TestDb::create().await;
    let mut server = TestServer::start(settings_for(&db)).await;
    let events: Vec<_> = (0..5).map(|i| json_event("Step", json!({"i": i}))).collect();
    let poison = events[2].event_id.clone();
    server
        .client
        .append_to_stream(append_request("dl", None, events))
        .await
        .unwrap();

    let recorder = Recorder::default();
    *recorder.failing_event.lock().unwrap() = Some(poison.clone());
    recorder.broken.store(true, Ordering::SeqCst);
    let (stop, task) = start_consumer(&db, "recorder", recorder.clone()).await;
    let applied = recorder.wait_for(4).await;
    assert_eq!(
        applied.iter().map(|(_, v)| *v).collect::<Vec<_>>(),
        vec![1, 2, 4, 5]
    );

    let mut admin = AdminClient::connect(server.channel_url()).await.unwrap();
    let mut dead = Vec::new();
    for _ in 0..100 {
        dead = admin
            .list_dead_letters(proto::ListDeadLettersRequest {
                consumer: "recorder".into(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .dead_letters;
        if !dead.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].event_id, poison);
    assert_eq!(dead[0].deliveries, 3);
    assert!(dead[0].error.contains("handler is broken"), "{}", dead[0].error);

    // after the fix, a replay applies it once
    recorder.broken.store(false, Ordering::SeqCst);
    admin
        .replay_dead_letter(proto::ReplayDeadLetterRequest { id: dead[0].id })
        .await
        .unwrap();
    let applied = recorder.wait_for(5).await;
    assert_eq!(applied[4], ("dl".to_owned(), 3));
    let mut replayed = String::new();
    for _ in 0..100 {
        replayed = admin
            .list_dead_letters(proto::ListDeadLettersRequest::default())
            .await
            .unwrap()
            .into_inner()
            .dead_letters[0]
            .replayed_at
            .clone();
        if !replayed.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(!replayed.is_empty());
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(recorder.applied.lock().unwrap().len(), 5, "replayed exactly once");

    // a second replay is refused, an unknown id is not found
    let status = admin
        .replay_dead_letter(proto::ReplayDeadLetterRequest { id: dead[0].id })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition);
    let status = admin
        .replay_dead_letter(proto::ReplayDeadLetterRequest { id: 999_999 })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
    let status = admin
        .list_dead_letters(proto::ListDeadLettersRequest {
            limit: 5000,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);

    stop.send(true).unwrap();
    task.await.unwrap();
    server.stop().await;
    db.drop_database().await;
}

/// A message deleted from JetStream behind the consumers' backs: the
/// consumer sees the version jump and takes the missing event from the store.
#[tokio::test]
async fn a_message_missing_from_jetstream_is_taken_from_the_store() {
    let db = TestDb::create().await;
    let mut server = TestServer::start(settings_for(&db)).await;
    let events = (0..3).map(|i| json_event("Step", json!({"i": i}))).collect();
    server
        .client
        .append_to_stream(append_request("gap", None, events))
        .await
        .unwrap();
    let mut stream = db.events_stream().await;
    relayed_messages(&mut stream, 3).await;
    assert!(stream.delete_message(2).await.unwrap());

    let recorder = Recorder::default();
    let (stop, task) = start_consumer(&db, "gapless", recorder.clone()).await;
    let applied = recorder.wait_for(3).await;
    assert_eq!(
        applied,
        vec![
            ("gap".to_owned(), 1),
            ("gap".to_owned(), 2),
            ("gap".to_owned(), 3)
        ]
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(recorder.applied.lock().unwrap().len(), 3, "nothing applied twice");
    stop.send(true).unwrap();
    task.await.unwrap();
    server.stop().await;
    db.drop_database().await;
}
