//! Read models under stress: a blue/green rebuild of 200k events under
//! continuous queries, runner crashes in the middle of batches, and a Redis
//! that goes away and comes back.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use api::proto;
use api::proto::projections_client::ProjectionsClient;
use serde_json::{Value, json};
use server::{Config, Settings};
use tests::*;
use tonic::transport::Channel;

use crate::projections::{
    append, caught_up, define, get_row, projections_client, user_list_definition, wait_until,
};

const ACCOUNTS: u64 = 100;

fn balances_definition() -> Value {
    json!({
        "name": "balances",
        "key": {"column": "account", "type": "text", "path": "$.account"},
        "columns": {"total": "integer", "deposits": "integer", "last_amount": "integer"},
        "indexes": ["total"],
        "handlers": {
            "Deposited": {"op": "upsert", "set": {"last_amount": "$.amount"},
                          "increment": {"total": "$.amount", "deposits": {"const": 1}}}
        }
    })
}

fn deposit(seq: u64) -> (String, u64, proto::ProposedEvent) {
    let account = format!("acct{}", seq % ACCOUNTS);
    let amount = 1 + seq % 7;
    let event = json_event("Deposited", json!({"account": account, "amount": amount}));
    (account, amount, event)
}

/// Appends `count` deposits from `first` in requests of 1,000; returns the
/// expected (total, deposits) per account.
async fn deposit_many(
    server: &mut TestServer,
    first: u64,
    count: u64,
    totals: &mut BTreeMap<String, (u64, u64)>,
) {
    let mut seq = first;
    while seq < first + count {
        let end = (seq + 1000).min(first + count);
        let mut events = Vec::new();
        for s in seq..end {
            let (account, amount, event) = deposit(s);
            let entry = totals.entry(account).or_default();
            entry.0 += amount;
            entry.1 += 1;
            events.push(event);
        }
        append(server, &format!("deposits-{seq}"), events).await;
        seq = end;
    }
}

/// Every row of the read model, by key.
async fn all_rows(client: &mut ProjectionsClient<Channel>, model: &str) -> BTreeMap<String, Value> {
    let mut rows = BTreeMap::new();
    let mut cursor = String::new();
    loop {
        let page = client
            .list_rows(proto::ListRowsRequest {
                read_model: model.into(),
                page_size: 1000,
                cursor: cursor.clone(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        for row in page.rows {
            let value: Value = serde_json::from_str(&row.json).unwrap();
            rows.insert(value["account"].as_str().unwrap_or_default().to_owned(), value);
        }
        if page.next_cursor.is_empty() {
            return rows;
        }
        cursor = page.next_cursor;
    }
}

fn assert_totals(rows: &BTreeMap<String, Value>, expected: &BTreeMap<String, (u64, u64)>) {
    assert_eq!(rows.len(), expected.len(), "accounts");
    for (account, (total, deposits)) in expected {
        let row = &rows[account];
        assert_eq!(
            row["total"], *total,
            "total of {account}: each deposit applied exactly once"
        );
        assert_eq!(row["deposits"], *deposits, "deposits of {account}");
    }
}

#[tokio::test]
async fn rebuilding_200k_events_under_continuous_queries_switches_atomically() {
    let db = TestDb::create().await;
    let mut server = TestServer::start(settings_for(&db)).await;
    let mut client = projections_client(&server).await;
    // Given a read model over 200k events, caught up
    define(&mut client, &balances_definition()).await;
    let mut expected = BTreeMap::new();
    deposit_many(&mut server, 0, 200_000, &mut expected).await;
    wait_until(
        &mut client,
        "balances",
        "first build",
        Duration::from_secs(240),
        caught_up,
    )
    .await;
    let grand_total: u64 = expected.values().map(|(t, _)| t).sum();
    assert_totals(&all_rows(&mut client, "balances").await, &expected);

    // While a client queries it without pause
    let stop = Arc::new(AtomicBool::new(false));
    let queries = Arc::new(AtomicU64::new(0));
    let reader = {
        let (stop, queries) = (stop.clone(), queries.clone());
        let mut client = client.clone();
        tokio::spawn(async move {
            while !stop.load(Ordering::SeqCst) {
                let page = client
                    .list_rows(proto::ListRowsRequest {
                        read_model: "balances".into(),
                        page_size: 1000,
                        ..Default::default()
                    })
                    .await
                    .expect("no query fails during the rebuild")
                    .into_inner();
                let sum: u64 = page
                    .rows
                    .iter()
                    .map(|r| {
                        serde_json::from_str::<Value>(&r.json).unwrap()["total"]
                            .as_u64()
                            .unwrap()
                    })
                    .sum();
                assert_eq!(
                    page.rows.len() as u64,
                    ACCOUNTS,
                    "no query sees a half-built model"
                );
                assert_eq!(sum, grand_total, "no query sees a half-built model");
                let row = get_row(&mut client, "balances", "acct7")
                    .await
                    .expect("acct7 is always there");
                assert!(row["total"].as_u64().unwrap() > 0);
                queries.fetch_add(1, Ordering::SeqCst);
            }
        })
    };
    // When it is rebuilt
    let started = client
        .rebuild(proto::ProjectionRequest {
            name: "balances".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(started.state, proto::ProjectionState::Rebuilding as i32);
    let again = client
        .rebuild(proto::ProjectionRequest {
            name: "balances".into(),
        })
        .await
        .expect_err("one rebuild at a time");
    assert_eq!(again.code(), tonic::Code::FailedPrecondition);
    // Then appends are not blocked by it
    for i in 0..5 {
        tokio::time::timeout(
            Duration::from_secs(10),
            append(&mut server, "noise", vec![json_event("Noise", json!({"i": i}))]),
        )
        .await
        .expect("appends go on during a rebuild");
    }
    // And it switches once caught up
    let done = wait_until(&mut client, "balances", "switch", Duration::from_secs(240), |s| {
        s.live_generation == 2 && s.generations.len() == 1 && caught_up(s)
    })
    .await;
    assert_eq!(done.state, proto::ProjectionState::Running as i32);
    tokio::time::sleep(Duration::from_millis(200)).await;
    stop.store(true, Ordering::SeqCst);
    reader.await.expect("the querying client saw no failure");
    assert!(queries.load(Ordering::SeqCst) >= 5, "the client kept querying");
    assert_totals(&all_rows(&mut client, "balances").await, &expected);
    // And the old generation's table is gone
    let pool = db.pool().await;
    let old: Option<String> = sqlx::query_scalar("SELECT to_regclass('read_models.balances__g1')::text")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(old, None);
    pool.close().await;
    server.stop().await;
    db.drop_database().await;
}

/// A server in a runtime of its own, so that it can be killed: its tasks
/// are dropped wherever they are, and its PostgreSQL sessions terminated,
/// as a killed process would leave them.
struct CrashableServer {
    crash: std::sync::mpsc::Sender<()>,
    thread: std::thread::JoinHandle<()>,
}

impl CrashableServer {
    async fn start(settings: Settings) -> CrashableServer {
        let (started_tx, started_rx) = std::sync::mpsc::channel();
        let (crash, crash_rx) = std::sync::mpsc::channel::<()>();
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap();
            let running = runtime
                .block_on(server::start(Config::from_settings(settings).unwrap()))
                .expect("crashable server starts");
            started_tx.send(()).unwrap();
            let _ = crash_rx.recv();
            // No graceful shutdown: every task is dropped at its await point.
            runtime.block_on(async move { drop(running) });
            runtime.shutdown_timeout(Duration::from_secs(5));
        });
        tokio::task::spawn_blocking(move || started_rx.recv().expect("crashable server started"))
            .await
            .unwrap();
        CrashableServer { crash, thread }
    }

    async fn crash(self, db: &TestDb, application_name: &str) {
        let _ = self.crash.send(());
        tokio::task::spawn_blocking(move || self.thread.join().unwrap())
            .await
            .unwrap();
        let pool = db.pool().await;
        sqlx::query("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = $1")
            .bind(application_name)
            .execute(&pool)
            .await
            .unwrap();
        pool.close().await;
    }
}

#[tokio::test]
async fn runners_killed_mid_batch_leave_read_models_equal_to_a_rebuild() {
    let db = TestDb::create().await;
    // A writer that does not crash (and runs no projections).
    let mut writer_settings = settings_for(&db);
    writer_settings.projections_enabled = Some(false);
    writer_settings.relay_enabled = Some(false);
    let writer = TestServer::start(writer_settings).await;
    let mut client = projections_client(&writer).await;
    define(&mut client, &balances_definition()).await;
    let writing = Arc::new(AtomicBool::new(true));
    let appends = {
        let writing = writing.clone();
        let mut writer_client = writer.client.clone();
        tokio::spawn(async move {
            let mut expected = BTreeMap::new();
            let mut seq = 0u64;
            while writing.load(Ordering::SeqCst) {
                let mut events = Vec::new();
                for s in seq..seq + 250 {
                    let (account, amount, event) = deposit(s);
                    let entry: &mut (u64, u64) = expected.entry(account).or_default();
                    entry.0 += amount;
                    entry.1 += 1;
                    events.push(event);
                }
                writer_client
                    .append_to_stream(append_request(&format!("crash-{seq}"), None, events))
                    .await
                    .expect("append");
                seq += 250;
            }
            expected
        })
    };
    // Servers that run the projection, killed at random points.
    let application_name = format!("crashy_{}", db.name);
    for round in 0..6u64 {
        let mut settings = settings_for(&db);
        settings.database_url = Some(format!("{}?application_name={application_name}", db.url));
        settings.relay_enabled = Some(false);
        settings.projection_batch_events_max = Some(300);
        let crashable = CrashableServer::start(settings).await;
        tokio::time::sleep(Duration::from_millis(150 + (round * 97) % 400)).await;
        crashable.crash(&db, &application_name).await;
    }
    writing.store(false, Ordering::SeqCst);
    let expected = appends.await.unwrap();
    // A server that survives finishes the job.
    let survivor = TestServer::start(settings_for(&db)).await;
    let mut client = projections_client(&survivor).await;
    wait_until(
        &mut client,
        "balances",
        "catching up",
        Duration::from_secs(120),
        caught_up,
    )
    .await;
    let after_crashes = all_rows(&mut client, "balances").await;
    assert_totals(&after_crashes, &expected);
    // And a from-scratch rebuild gives the same rows.
    client
        .rebuild(proto::ProjectionRequest {
            name: "balances".into(),
        })
        .await
        .unwrap();
    let status = wait_until(
        &mut client,
        "balances",
        "rebuild",
        Duration::from_secs(120),
        |s| s.generations.len() == 1 && s.live_generation > 1 && caught_up(s),
    )
    .await;
    assert!(status.live_generation > 1);
    assert_eq!(all_rows(&mut client, "balances").await, after_crashes);
    survivor.stop().await;
    writer.stop().await;
    db.drop_database().await;
}

#[tokio::test]
async fn queries_answer_while_redis_is_down_and_serve_nothing_stale_after() {
    let db = TestDb::create().await;
    let mut redis = PrivateRedis::start().await;
    let mut settings = settings_for(&db);
    settings.redis_url = Some(redis.url());
    let mut server = TestServer::start(settings).await;
    let mut client = projections_client(&server).await;
    define(&mut client, &user_list_definition()).await;
    let id = uuid::Uuid::new_v4();
    let key = id.to_string();
    let stream = format!("user-{id}");
    append(
        &mut server,
        &stream,
        vec![json_event("UserCreated", json!({"user_id": id, "name": "v1"}))],
    )
    .await;
    let name_is = |row: Option<Value>, name: &str| row.is_some_and(|r| r["name"] == name);

    async fn rename_and_see(
        server: &mut TestServer,
        client: &mut ProjectionsClient<Channel>,
        stream: &str,
        id: uuid::Uuid,
        name: &str,
    ) {
        append(
            server,
            stream,
            vec![json_event("UserRenamed", json!({"user_id": id, "name": name}))],
        )
        .await;
        let key = id.to_string();
        for _ in 0..200 {
            if get_row(client, "user_list", &key)
                .await
                .is_some_and(|r| r["name"] == name)
            {
                // Once seen, never an older value again.
                for _ in 0..20 {
                    let row = get_row(client, "user_list", &key).await.unwrap();
                    assert_eq!(
                        row["name"], name,
                        "a stale value was served after the invalidation"
                    );
                }
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("the read model never showed name {name}");
    }

    // Given a warm cache
    for _ in 0..200 {
        if name_is(get_row(&mut client, "user_list", &key).await, "v1") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(name_is(get_row(&mut client, "user_list", &key).await, "v1"));
    rename_and_see(&mut server, &mut client, &stream, id, "v2").await;
    // And a client that queries all the time
    let stop = Arc::new(AtomicBool::new(false));
    let answered = Arc::new(AtomicU64::new(0));
    let querying = {
        let (stop, answered, key) = (stop.clone(), answered.clone(), key.clone());
        let mut client = client.clone();
        tokio::spawn(async move {
            while !stop.load(Ordering::SeqCst) {
                assert!(
                    get_row(&mut client, "user_list", &key).await.is_some(),
                    "every query answers"
                );
                answered.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
    };
    // When Redis stops, queries still answer, with fresh values
    redis.stop().await;
    rename_and_see(&mut server, &mut client, &stream, id, "v3").await;
    // When it comes back (empty), and after it is back
    redis.restart().await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    rename_and_see(&mut server, &mut client, &stream, id, "v4").await;
    stop.store(true, Ordering::SeqCst);
    querying.await.expect("no query failed while Redis was away");
    assert!(answered.load(Ordering::SeqCst) > 10);
    server.stop().await;
    db.drop_database().await;
}
