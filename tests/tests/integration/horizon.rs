//! The `$all` horizon is per database: a transaction elsewhere on the
//! PostgreSQL cluster never holds dbswarm's readers back, and one that can
//! write dbswarm's events always does (migrations/0010_horizon.sql).

use std::time::{Duration, Instant};

use api::proto;
use api::proto::admin_client::AdminClient;
use serde_json::json;
use sqlx::{Connection, PgConnection};
use tests::*;

use crate::projections::{get_row, projections_client};

const EVENTS: usize = 40;

/// Opens a transaction on `url` that holds a transaction id until dropped
/// or committed, as a batch job or data load would.
async fn open_transaction_with_xid(url: &str) -> (PgConnection, i64) {
    let mut conn = PgConnection::connect(url).await.unwrap();
    sqlx::query("BEGIN").execute(&mut conn).await.unwrap();
    let xid: i64 = sqlx::query_scalar("SELECT pg_current_xact_id()::text::int8")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    (conn, xid)
}

/// Given a transaction in another database of the same cluster that holds
/// an xid for the whole test, when events are appended one at a time, then
/// a subscriber gets each of them at once, and ReadAll, the relay and a
/// projection all see them, before that transaction ends.
#[tokio::test]
async fn a_transaction_in_another_database_does_not_hold_readers_back() {
    let db = TestDb::create().await;
    let elsewhere = TestDb::create().await;
    let (mut foreign, _) = open_transaction_with_xid(&elsewhere.url).await;
    let mut server = TestServer::start(settings_for(&db)).await;
    let mut subscription = server
        .client
        .subscribe(proto::SubscribeRequest::default())
        .await
        .unwrap()
        .into_inner();

    let mut slowest = Duration::ZERO;
    for i in 0..EVENTS {
        let sent = Instant::now();
        server
            .client
            .append_to_stream(append_request(
                "order-1",
                None,
                vec![json_event("Placed", json!({"i": i}))],
            ))
            .await
            .unwrap();
        let delivered = tokio::time::timeout(Duration::from_secs(10), subscription.message())
            .await
            .expect("delivered while the other database's transaction is open")
            .unwrap()
            .expect("the subscription does not end");
        assert_eq!(delivered.event.unwrap().event_version, i as u64 + 1);
        slowest = slowest.max(sent.elapsed());
    }
    // Bounded loosely (a loaded CI machine); `make bench` measures the p99.
    assert!(slowest < Duration::from_secs(5), "slowest delivery {slowest:?}");

    let all = collect_stream(
        server
            .client
            .read_all(proto::ReadAllRequest::default())
            .await
            .unwrap()
            .into_inner(),
    )
    .await;
    assert_eq!(all.len(), EVENTS, "ReadAll sees every event");
    relayed_messages(&mut db.events_stream().await, EVENTS as u64).await;
    let mut projections = projections_client(&server).await;
    let mut row = None;
    for _ in 0..200 {
        row = get_row(&mut projections, "stream_catalogue", "order-1").await;
        if row.as_ref().is_some_and(|r| r["version"] == EVENTS) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        row.expect("projected")["version"],
        EVENTS,
        "the projection keeps up"
    );
    assert_foreign_transaction_not_reported(&server, &db.name).await;

    sqlx::query("COMMIT").execute(&mut foreign).await.unwrap();
    foreign.close().await.unwrap();
    server.stop().await;
    elsewhere.drop_database().await;
    db.drop_database().await;
}

/// The relay status names only a transaction of dbswarm's own database as
/// the one holding the horizon.
async fn assert_foreign_transaction_not_reported(server: &TestServer, database: &str) {
    let mut admin = AdminClient::connect(server.channel_url()).await.unwrap();
    let status = admin
        .get_relay_status(proto::GetRelayStatusRequest {})
        .await
        .unwrap()
        .into_inner();
    if let Some(oldest) = status.oldest_transaction {
        assert_eq!(oldest.database, database, "{oldest:?}");
    }
}

/// Inserts one event as `conn`'s statement (in its transaction, if any).
async fn insert_event(conn: &mut PgConnection, stream_id: &str) {
    sqlx::query(
        "INSERT INTO events (event_id, stream_id, aggregate_type, event_version, event_type, event_data) \
         VALUES (gen_random_uuid(), $1, 'raw', 1, 'Raw', '{}')",
    )
    .bind(stream_id)
    .execute(conn)
    .await
    .unwrap();
}

/// Commits one event on its own; its transaction id.
async fn write_event(pool: &sqlx::PgPool, stream_id: &str) -> i64 {
    let mut conn = pool.acquire().await.unwrap();
    insert_event(&mut conn, stream_id).await;
    sqlx::query_scalar("SELECT transaction_id::text::int8 FROM events WHERE stream_id = $1")
        .bind(stream_id)
        .fetch_one(&mut *conn)
        .await
        .unwrap()
}

/// The horizon function itself, on a cluster that allows prepared
/// transactions: backends and prepared transactions of another database
/// are passed over; those of this database hold the horizon until they
/// end, and what they wrote is then below it.
#[tokio::test]
async fn horizon_passes_other_databases_and_waits_for_this_ones_backends_and_prepared_transactions() {
    // No autovacuum: its ANALYZE of the new tables holds an xid in "mine",
    // which rightly holds the horizon and would blur what is measured.
    let mut pg = PrivatePostgres::start(&["max_prepared_transactions = 4", "autovacuum = off"]).await;
    let mut admin = PgConnection::connect(&pg.url("postgres")).await.unwrap();
    for name in ["mine", "other"] {
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&mut admin)
            .await
            .unwrap();
    }
    let pool = sqlx::PgPool::connect(&pg.url("mine")).await.unwrap();
    event_store::MIGRATOR.run(&pool).await.unwrap();
    let horizon = || async {
        sqlx::query_scalar::<_, i64>("SELECT dbswarm_horizon()::text::int8")
            .fetch_one(&pool)
            .await
            .unwrap()
    };

    // Note: a snapshot's xmax is the latest completed xid + 1, so a later
    // commit in "mine" is what shows the horizon passing an older xid.
    // other database: a running transaction and a prepared one
    let (mut other_running, other_xid) = open_transaction_with_xid(&pg.url("other")).await;
    let (mut other_prepare, other_prepared_xid) = open_transaction_with_xid(&pg.url("other")).await;
    sqlx::query("PREPARE TRANSACTION 'other_p'")
        .execute(&mut other_prepare)
        .await
        .unwrap();
    let after_them = write_event(&pool, "a").await;
    let passed = horizon().await;
    assert!(
        passed > after_them && after_them > other_prepared_xid.max(other_xid),
        "other databases pass: horizon {passed}, their xids {other_xid} and {other_prepared_xid}"
    );

    // this database: a running transaction holds the horizon at its xid
    // while later ones commit
    let (mut mine_running, mine_xid) = open_transaction_with_xid(&pg.url("mine")).await;
    let behind = write_event(&pool, "b").await;
    assert!(horizon().await <= mine_xid, "a backend of this database holds it");
    sqlx::query("COMMIT").execute(&mut mine_running).await.unwrap();
    assert!(horizon().await > behind, "released when it ends");

    // this database: a prepared transaction holds it until COMMIT PREPARED
    // (one that wrote events cannot PREPARE: the events trigger NOTIFYs,
    // but counting every prepared transaction of this database is safe)
    let (mut mine_prepare, mine_prepared_xid) = open_transaction_with_xid(&pg.url("mine")).await;
    sqlx::query("PREPARE TRANSACTION 'mine_p'")
        .execute(&mut mine_prepare)
        .await
        .unwrap();
    write_event(&pool, "c").await;
    assert!(
        horizon().await <= mine_prepared_xid,
        "a prepared transaction of this database holds it"
    );
    sqlx::query("COMMIT PREPARED 'mine_p'")
        .execute(&pool)
        .await
        .unwrap();
    let released: bool = sqlx::query_scalar("SELECT max(transaction_id) < dbswarm_horizon() FROM events")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert!(
        released,
        "every event is below the horizon once the prepared transaction ends"
    );

    // a prepared transaction is finished from its own database
    sqlx::query("ROLLBACK PREPARED 'other_p'")
        .execute(&mut other_prepare)
        .await
        .unwrap();
    sqlx::query("COMMIT").execute(&mut other_running).await.unwrap();
    pool.close().await;
    pg.stop().await;
}
