//! The harness itself: what a test leaves behind.

use sqlx::{Connection, PgConnection};
use tests::*;

async fn database_exists(name: &str) -> bool {
    let mut conn = PgConnection::connect(&admin_url()).await.unwrap();
    sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
        .bind(name)
        .fetch_one(&mut conn)
        .await
        .unwrap()
}

/// Given a test holding a `TestDb` and its events stream, when it panics
/// before `drop_database`, then its database and stream are gone anyway.
/// (The deliberate panic's message appears in the test output.)
#[tokio::test]
async fn a_panicking_tests_database_and_stream_are_dropped() {
    let (created, names) = tokio::sync::oneshot::channel();
    let test = tokio::spawn(async move {
        let db = TestDb::create().await;
        let js = async_nats::jetstream::new(async_nats::connect(nats_url()).await.unwrap());
        event_store::relay::ensure_events_stream(&js, &db.relay_config())
            .await
            .unwrap();
        created
            .send((db.name.clone(), db.relay_config().stream_name))
            .unwrap();
        panic!("deliberate panic: the harness must clean up after it");
    });
    assert!(test.await.unwrap_err().is_panic());
    let (database, stream) = names.await.unwrap();
    assert!(!database_exists(&database).await, "{database} is left behind");
    let js = async_nats::jetstream::new(async_nats::connect(nats_url()).await.unwrap());
    assert!(js.get_stream(&stream).await.is_err(), "{stream} is left behind");
}

/// Given a test that drops its database itself, when the value is gone,
/// then the database is gone and nothing was done twice (no error).
#[tokio::test]
async fn drop_database_still_drops_explicitly() {
    let db = TestDb::create().await;
    let name = db.name.clone();
    assert!(database_exists(&name).await);
    db.drop_database().await;
    assert!(!database_exists(&name).await);
}
