use domain::{
    AppendRequest, EventData, EventType, ExpectedVersion, Limits, ProposedEvent, StreamAppend, StreamId,
};
use event_store::{
    Aggregate, AggregateError, AggregateStore, AppendConfig, Appender, Direction, Loaded, ReadConfig,
    ReadStreamQuery, Reader, RecordedEvent, SnapshotStore, Snapshotted, StoreError,
};
use serde::{Deserialize, Serialize};
use serde_json::json;
use sqlx::PgPool;
use tests::*;
use tokio::task::JoinHandle;
use uuid::Uuid;

const STATE_BYTES_MAX: usize = 64 * 1024;

/// A bank account: enough state that a wrong fold shows, and a checksum
/// over the event ids in order, so a missing, repeated or reordered event
/// changes it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]

struct Account {
    balance: i64,
    events: u64,
    last_event_type: String,
    checksum: u64,
}

/// An account event with what the checksum folds of its record.
struct AccountEvent {
    event_type: String,
    amount: i64,
    event_id: Uuid,
    event_version: u64,
}

/// The account aggregate under snapshot schema version `SCHEMA`. Versions
/// 1 and 2 have the same state, so the same JSON shape: only the schema
/// version keeps a version-1 snapshot from being trusted by version 2.
struct AccountAggregate<const SCHEMA: u32>;

type AccountV1 = AccountAggregate<1>;
type AccountV2 = AccountAggregate<2>;

impl<const SCHEMA: u32> Aggregate for AccountAggregate<SCHEMA> {
    const KIND: &'static str = "account";
    type State = Account;
    type Event = AccountEvent;
    type Command = ();
    type Context = ();
    type Error = AggregateError;
    type Failure = AggregateError;

    fn decide(_: &Account, _: (), _: ()) -> Result<Vec<AccountEvent>, AggregateError> {
        Err(AggregateError::Refused("accounts are only loaded here".into()))
    }
    fn evolve(mut account: Account, event: &AccountEvent) -> Account {
        match event.event_type.as_str() {
            "Deposited" => account.balance += event.amount,
            "Withdrawn" => account.balance -= event.amount,
            other => panic!("unexpected event type {other}"),
        }
        account.events += 1;
        account.last_event_type = event.event_type.clone();
        account.checksum =
            account.checksum.rotate_left(7) ^ (event.event_id.as_u128() as u64) ^ event.event_version;
        account
    }
    fn event_type(_: &AccountEvent) -> &'static str {
        unreachable!("accounts decide nothing")
    }
    fn data(event: &AccountEvent) -> serde_json::Value {
        json!({"amount": event.amount})
    }
    fn from_stored(_: &str, _: serde_json::Value) -> Result<AccountEvent, String> {
        Err("an account event is decoded from its record (see decode)".into())
    }
    fn decode(event: &RecordedEvent) -> Result<AccountEvent, String> {
        let EventData::Json(text) = &event.data else {
            panic!("account events are JSON")
        };
        let data: serde_json::Value = serde_json::from_str(text).unwrap();
        Ok(AccountEvent {
            event_type: event.event_type.clone(),
            amount: data["amount"].as_i64().unwrap(),
            event_id: event.event_id,
            event_version: event.event_version,
        })
    }
    fn creates(_: &()) -> bool {
        false
    }
    fn live(_: &Account) -> bool {
        false
    }
}

impl<const SCHEMA: u32> Snapshotted for AccountAggregate<SCHEMA> {
    const SNAPSHOT_SCHEMA_VERSION: u32 = SCHEMA;
}

/// A database with the migrations applied, an appender and a reader; no
/// server (nothing here goes over the wire).
struct Fixture {
    db: TestDb,
    pool: PgPool,
    appender: Appender,
    committers: Vec<JoinHandle<()>>,
    reader: Reader,
}

impl Fixture {
    async fn start() -> Fixture {
        let db = TestDb::create().await;
        let pool = db.pool().await;
        event_store::MIGRATOR.run(&pool).await.expect("migrations apply");
        let (appender, committers) = Appender::start(pool.clone(), AppendConfig::default());
        let reader = Reader::new(pool.clone(), ReadConfig::default());
        Fixture {
            db,
            pool,
            appender,
            committers,
            reader,
        }
    }

    fn store(&self) -> SnapshotStore {
        SnapshotStore::new(self.pool.clone(), STATE_BYTES_MAX)
    }

    fn loader<A: Snapshotted>(&self, snapshot_every_events: u64) -> AggregateStore<A> {
        self.loader_with::<A>(self.store(), snapshot_every_events)
    }

    fn loader_with<A: Snapshotted>(
        &self,
        snapshots: SnapshotStore,
        snapshot_every_events: u64,
    ) -> AggregateStore<A> {
        AggregateStore::new(self.appender.clone(), self.reader.clone(), Limits::default())
            .with_snapshots(snapshots, snapshot_every_events)
    }

    /// Appends `count` account events to `stream`, which is at `version`,
    /// in requests of at most 500; returns the new version.
    async fn append(&self, stream: &StreamId, version: u64, count: u64) -> u64 {
        let mut version = version;
        let end = version + count;
        while version < end {
            let batch = (end - version).min(500);
            let events = (version + 1..=version + batch)
                .map(|v| ProposedEvent {
                    event_id: Uuid::new_v4(),
                    event_type: EventType::parse(
                        if v % 3 == 0 { "Withdrawn" } else { "Deposited" },
                        &Limits::default(),
                    )
                    .unwrap(),
                    data: EventData::Json(json!({"amount": v % 97 + 1}).to_string()),
                    metadata: "{}".into(),
                    schema_version: 1,
                    correlation_id: None,
                    causation_id: None,
                })
                .collect();
            let expected = if version == 0 {
                ExpectedVersion::NoStream
            } else {
                ExpectedVersion::Exact(version)
            };
            let request = AppendRequest::new(
                vec![StreamAppend {
                    stream_id: stream.clone(),
                    expected,
                    events,
                }],
                &Limits::default(),
            )
            .unwrap();
            let outcome = self.appender.append(request).await.expect("append");
            version = outcome.streams[0].current_version;
        }
        assert_eq!(version, end);
        version
    }

    /// The oracle: every event of the stream folded from the first, with
    /// neither the loader nor snapshots involved.
    async fn fold_everything(&self, stream: &StreamId) -> Account {
        let mut events = self
            .reader
            .read_stream(ReadStreamQuery {
                stream_id: stream.clone(),
                from_version: 1,
                direction: Direction::Forwards,
                limit: None,
            })
            .await
            .unwrap();
        let mut state = Account::default();
        while let Some(event) = events.recv().await {
            state = AccountV1::evolve(state, &AccountV1::decode(&event.unwrap()).unwrap());
        }
        state
    }

    /// (version, schema version) of the stream's stored snapshots, oldest first.
    async fn snapshot_rows(&self, stream: &StreamId) -> Vec<(i64, i32)> {
        sqlx::query_as(
            "SELECT stream_version, schema_version FROM snapshots WHERE stream_id = $1 ORDER BY stream_version",
        )
        .bind(stream.as_str())
        .fetch_all(&self.pool)
        .await
        .unwrap()
    }

    /// Every append was answered before this, so nothing is pending; the
    /// committers are stopped rather than awaited because the tests'
    /// aggregate stores still hold clones of the appender.
    async fn stop(self) {
        drop(self.appender);
        for committer in self.committers {
            committer.abort();
            let _ = committer.await;
        }
        self.pool.close().await;
        self.db.drop_database().await;
    }
}

/// A new account: its id, and its stream `account-<id>`.
fn new_stream() -> (String, StreamId) {
    let id = Uuid::new_v4().to_string();
    let stream = StreamId::parse(&AggregateStore::<AccountV1>::stream(&id), &Limits::default()).unwrap();
    (id, stream)
}

fn assert_loaded<A: std::fmt::Debug>(
    loaded: &Loaded<A>,
    version: u64,
    snapshot_version: Option<u64>,
    events_replayed: u64,
) {
    assert_eq!(
        (loaded.version, loaded.snapshot_version, loaded.events_replayed),
        (version, snapshot_version, events_replayed),
        "(version, snapshot_version, events_replayed) of {loaded:?}"
    );
}

#[tokio::test]
async fn snapshot_plus_tail_equals_a_full_replay_of_10k_events() {
    let fx = Fixture::start().await;
    let (id, stream) = new_stream();
    let on_demand = fx.loader::<AccountV1>(0);

    // given 7,000 events and a snapshot taken on demand at version 7,000
    fx.append(&stream, 0, 7_000).await;
    let at_snapshot = on_demand.snapshot_now(&id).await.unwrap();
    assert_loaded(&at_snapshot, 7_000, None, 7_000);
    let stored = fx
        .store()
        .load_latest(&stream, 1)
        .await
        .unwrap()
        .expect("a snapshot");
    assert_eq!((stored.stream_version, stored.schema_version), (7_000, 1));
    assert_eq!(stored.stream_id, stream.as_str());
    assert_eq!(stored.state, serde_json::to_value(&at_snapshot.state).unwrap());

    // and 3,000 more events after it
    fx.append(&stream, 7_000, 3_000).await;

    // when the aggregate is loaded from the snapshot plus its tail
    let from_snapshot = on_demand.load_detailed(&id).await.unwrap();

    // then only the tail was replayed
    assert_loaded(&from_snapshot, 10_000, Some(7_000), 3_000);

    // and when the snapshot is gone, a full replay gives the same state
    sqlx::query("DELETE FROM snapshots")
        .execute(&fx.pool)
        .await
        .unwrap();
    let replayed = on_demand.load_detailed(&id).await.unwrap();
    assert_loaded(&replayed, 10_000, None, 10_000);
    assert_eq!(from_snapshot.state, replayed.state);

    // and both equal a fold of every event without the loader
    let oracle: Account = fx.fold_everything(&stream).await;
    assert_eq!(from_snapshot.state, oracle);
    assert_eq!(oracle.events, 10_000);
    assert_eq!(oracle.last_event_type, "Deposited"); // 10,000 % 3 != 0

    // and a loader that snapshots only on demand saved nothing by itself
    assert!(fx.snapshot_rows(&stream).await.is_empty());
    fx.stop().await;
}

#[tokio::test]
async fn a_snapshot_is_saved_after_n_replayed_events_and_the_next_load_replays_only_the_tail() {
    let fx = Fixture::start().await;
    let (id, stream) = new_stream();
    let loader = fx.loader::<AccountV1>(1_000);

    // given 1,200 events and no snapshot
    fx.append(&stream, 0, 1_200).await;

    // when loaded, everything is replayed and a snapshot saved at 1,200
    let first = loader.load_detailed(&id).await.unwrap();
    assert_loaded(&first, 1_200, None, 1_200);
    assert_eq!(fx.snapshot_rows(&stream).await, vec![(1_200, 1)]);

    // and after 50 more events the next load replays only those
    fx.append(&stream, 1_200, 50).await;
    let second = loader.load_detailed(&id).await.unwrap();
    assert_loaded(&second, 1_250, Some(1_200), 50);
    assert_eq!(second.state, fx.fold_everything(&stream).await);
    // (50 < 1,000: no new snapshot)
    assert_eq!(fx.snapshot_rows(&stream).await, vec![(1_200, 1)]);

    // and once 1,000 more have followed, the load saves a new snapshot and
    // the older one is deleted: only the newest is kept
    fx.append(&stream, 1_250, 1_000).await;
    let third = loader.load_detailed(&id).await.unwrap();
    assert_loaded(&third, 2_250, Some(1_200), 1_050);
    assert_eq!(fx.snapshot_rows(&stream).await, vec![(2_250, 1)]);
    let fourth = loader.load_detailed(&id).await.unwrap();
    assert_loaded(&fourth, 2_250, Some(2_250), 0);
    assert_eq!(fourth.state, fx.fold_everything(&stream).await);
    fx.stop().await;
}

#[tokio::test]
async fn a_snapshot_of_an_older_schema_version_is_ignored_and_replaced() {
    let fx = Fixture::start().await;
    let (id, stream) = new_stream();
    fx.append(&stream, 0, 300).await;

    // given a schema-1 snapshot at the stream's version whose state is
    // wrong for schema 2 (here: a balance off by a million, in the same
    // JSON shape, so only the schema version tells them apart)
    let mut old_meaning: Account = fx.fold_everything(&stream).await;
    old_meaning.balance += 1_000_000;
    let store = fx.store();
    store
        .save(&stream, 300, 1, &serde_json::to_value(&old_meaning).unwrap())
        .await
        .unwrap();
    // (a schema-1 aggregate would trust it)
    let trusted = fx.loader::<AccountV1>(0).load_detailed(&id).await.unwrap();
    assert_loaded(&trusted, 300, Some(300), 0);

    // when the schema-2 aggregate is loaded
    let loader = fx.loader::<AccountV2>(100);
    let loaded = loader.load_detailed(&id).await.unwrap();

    // then the old snapshot was ignored: a full replay, and a correct state
    assert_loaded(&loaded, 300, None, 300);
    assert_eq!(loaded.state, fx.fold_everything(&stream).await);

    // and it was replaced by a schema-2 snapshot
    assert_eq!(fx.snapshot_rows(&stream).await, vec![(300, 2)]);
    assert!(store.load_latest(&stream, 1).await.unwrap().is_none());
    let newest = store
        .load_latest(&stream, 2)
        .await
        .unwrap()
        .expect("schema-2 snapshot");
    assert_eq!(newest.stream_version, 300);

    // which the next load starts from
    let again = loader.load_detailed(&id).await.unwrap();
    assert_loaded(&again, 300, Some(300), 0);
    assert_eq!(again.state, loaded.state);
    fx.stop().await;
}

#[tokio::test]
async fn a_corrupt_snapshot_is_ignored_and_the_load_is_still_correct() {
    let fx = Fixture::start().await;
    let (id, stream) = new_stream();
    fx.append(&stream, 0, 150).await;
    let oracle: Account = fx.fold_everything(&stream).await;
    let on_demand = fx.loader::<AccountV1>(0);

    // given a snapshot whose state does not deserialize into the aggregate
    fx.store()
        .save(&stream, 100, 1, &json!({"balance": "not a number"}))
        .await
        .unwrap();

    // when loaded, it is ignored and everything replayed
    let loaded = on_demand.load_detailed(&id).await.unwrap();
    assert_loaded(&loaded, 150, None, 150);
    assert_eq!(loaded.state, oracle);

    // given also a snapshot ahead of its stream (only raw SQL can write one)
    // whose state deserializes but is wrong
    let mut wrong = oracle.clone();
    wrong.balance = -1;
    sqlx::query(
        "INSERT INTO snapshots (stream_id, stream_version, schema_version, state) VALUES ($1, $2, 1, $3::text::jsonb)",
    )
    .bind(stream.as_str())
    .bind(1_000_000_i64)
    .bind(serde_json::to_string(&wrong).unwrap())
    .execute(&fx.pool)
    .await
    .unwrap();

    // when loaded, it is ignored too
    let loaded = on_demand.load_detailed(&id).await.unwrap();
    assert_loaded(&loaded, 150, None, 150);
    assert_eq!(loaded.state, oracle);

    // and the next snapshot saved replaces both corrupt ones
    let loaded = fx.loader::<AccountV1>(100).load_detailed(&id).await.unwrap();
    assert_loaded(&loaded, 150, None, 150);
    assert_eq!(fx.snapshot_rows(&stream).await, vec![(150, 1)]);
    let loaded = on_demand.load_detailed(&id).await.unwrap();
    assert_loaded(&loaded, 150, Some(150), 0);
    assert_eq!(loaded.state, oracle);
    fx.stop().await;
}

#[tokio::test]
async fn bad_snapshots_are_refused_with_typed_errors_and_nothing_is_written() {
    let fx = Fixture::start().await;
    let (id, stream) = new_stream();
    fx.append(&stream, 0, 10).await;
    let store = fx.store();
    let state = json!({"balance": 1});

    let refused = |error: StoreError, expected: &str| match error {
        StoreError::InvalidSnapshot(message) => {
            assert!(
                message.contains(expected),
                "'{message}' should mention '{expected}'"
            );
            assert!(
                message.contains(stream.as_str()),
                "'{message}' should name the stream"
            );
        }
        other => panic!("expected InvalidSnapshot mentioning '{expected}', got {other:?}"),
    };

    // version 0
    refused(store.save(&stream, 0, 1, &state).await.unwrap_err(), "version 0");
    // a version the stream does not have yet
    refused(
        store.save(&stream, 11, 1, &state).await.unwrap_err(),
        "stream version 11 is ahead of the stream, which is at version 10",
    );
    // a stream that does not exist
    let (missing_id, missing) = new_stream();
    let error = store.save(&missing, 1, 1, &state).await.unwrap_err();
    assert!(error.to_string().contains("which does not exist"), "{error}");
    // schema version 0
    refused(
        store.save(&stream, 10, 0, &state).await.unwrap_err(),
        "schema_version 0",
    );
    // a state over the byte limit
    let big = json!({"padding": "x".repeat(STATE_BYTES_MAX)});
    refused(
        store.save(&stream, 10, 1, &big).await.unwrap_err(),
        "state_bytes_max",
    );
    // the message is what a client would read
    assert!(
        store
            .save(&stream, 0, 1, &state)
            .await
            .unwrap_err()
            .to_string()
            .starts_with("invalid snapshot: snapshot of stream 'account-")
    );

    // then nothing was written
    let count: i64 = sqlx::query_scalar("SELECT count(*) FROM snapshots")
        .fetch_one(&fx.pool)
        .await
        .unwrap();
    assert_eq!(count, 0);

    // and a loader whose snapshot is refused (too large) still loads
    let tiny = fx.loader_with::<AccountV1>(SnapshotStore::new(fx.pool.clone(), 10), 1);
    let loaded = tiny.load_detailed(&id).await.unwrap();
    assert_loaded(&loaded, 10, None, 10);
    assert!(fx.snapshot_rows(&stream).await.is_empty());
    // but an explicit snapshot reports the refusal
    assert!(matches!(
        tiny.snapshot_now(&id).await.unwrap_err(),
        AggregateError::Store(StoreError::InvalidSnapshot(_))
    ));

    // and a stream that does not exist loads as the default state at version 0
    let loaded = fx
        .loader::<AccountV1>(1)
        .load_detailed(&missing_id)
        .await
        .unwrap();
    assert_loaded(&loaded, 0, None, 0);
    assert_eq!(loaded.state, Account::default());
    assert!(matches!(
        fx.loader::<AccountV1>(1)
            .snapshot_now(&missing_id)
            .await
            .unwrap_err(),
        AggregateError::NotFound { .. }
    ));

    // and a valid snapshot is accepted
    store.save(&stream, 10, 1, &state).await.unwrap();
    assert_eq!(fx.snapshot_rows(&stream).await, vec![(10, 1)]);
    fx.stop().await;
}
