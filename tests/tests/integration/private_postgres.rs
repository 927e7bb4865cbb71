use tests::*;

#[tokio::test]
async fn a_private_postgres_starts_answers_stops_and_starts_again_on_its_data() {
    let mut pg = PrivatePostgres::start(&["max_connections = 20"]).await;
    let pool = sqlx::PgPool::connect(&pg.url("postgres"))
        .await
        .expect("connect to the private PostgreSQL");
    let one: i32 = sqlx::query_scalar("SELECT 1").fetch_one(&pool).await.unwrap();
    assert_eq!(one, 1);
    for (setting, expected) in [
        ("wal_level", "replica"),
        ("fsync", "on"),
        ("max_connections", "20"),
    ] {
        let value: String = sqlx::query_scalar(sqlx::AssertSqlSafe(format!("SHOW {setting}")))
            .fetch_one(&pool)
            .await
            .unwrap();
        assert_eq!(value, expected, "{setting}");
    }
    sqlx::raw_sql("CREATE TABLE kept (n int); INSERT INTO kept VALUES (7)")
        .execute(&pool)
        .await
        .unwrap();
    pool.close().await;
    pg.stop().await;
    pg.stop().await; // not running: nothing to do
    assert!(!pg.data_dir.join("postmaster.pid").exists());

    // The same data directory, as a restore would hand it over.
    let again = PrivatePostgres::start_existing(pg.data_dir.clone(), pg.port).await;
    let pool = sqlx::PgPool::connect(&again.url("postgres"))
        .await
        .expect("connect to the restarted PostgreSQL");
    let n: i32 = sqlx::query_scalar("SELECT n FROM kept")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(n, 7);
    pool.close().await;
    drop(again); // stops it and keeps the data: it does not own them
    assert!(pg.data_dir.join("PG_VERSION").exists());

    let instance = pg.owned.clone().expect("start owns its instance directory");
    drop(pg);
    assert!(!instance.exists());
}
