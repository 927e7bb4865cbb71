//! Target databases: registered over gRPC after a connection check, their
//! passwords never shown (answers, events, errors), used by the agents'
//! own pools, removed.

use api::proto;
use api::proto::admin_client::AdminClient;
use serde_json::json;
use sqlx::Connection;
use tests::*;
use tonic::Code;

use crate::orchestration::{execute_and_wait, probe, workflows_client};

#[tokio::test]
async fn a_target_is_registered_masked_probed_by_an_agent_and_removed() {
    let db = TestDb::create().await;
    let target = TestDb::create().await;
    let server = TestServer::start(with_workflows(settings_for(&db))).await;
    let pool = db.pool().await;
    let mut admin = AdminClient::connect(server.channel_url()).await.unwrap();
    // A role with a password (the test instance trusts loopback, so the
    // password only has to stay secret, not to be right).
    let role = format!("agent_{}", uuid::Uuid::new_v4().simple());
    let password = "s3cret-Pa55word";
    let mut conn = sqlx::PgConnection::connect(&admin_url()).await.unwrap();
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "CREATE ROLE \"{role}\" LOGIN PASSWORD '{password}'"
    )))
    .execute(&mut conn)
    .await
    .unwrap();
    let (_, host_and_db) = target.url.split_once('@').unwrap();
    let url = format!("postgres://{role}:{password}@{host_and_db}");

    // When the target is registered
    let registered = admin
        .register_database(proto::RegisterDatabaseRequest {
            name: "app".into(),
            url: url.clone(),
            description: "the application's database".into(),
        })
        .await
        .unwrap()
        .into_inner();
    // Then it is shown with its password masked
    assert_eq!(
        registered.url_masked,
        format!("postgres://{role}:***@{host_and_db}")
    );
    assert!(
        registered.server_version.starts_with("15"),
        "{}",
        registered.server_version
    );
    // Registering it again changes nothing; another URL under the name is refused
    let again = admin
        .register_database(proto::RegisterDatabaseRequest {
            name: "app".into(),
            url: url.clone(),
            description: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(again.registered_at, registered.registered_at);
    let other = admin
        .register_database(proto::RegisterDatabaseRequest {
            name: "app".into(),
            url: db.url.clone(),
            description: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(other.code(), Code::AlreadyExists);
    assert!(!other.message().contains(password));
    let listed = admin
        .list_databases(proto::ListDatabasesRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.databases, vec![registered.clone()]);

    // And an agent reaches it through its own pool
    let mut workflows = workflows_client(&server).await;
    let mut task = probe("ping", "query", &[], json!({}));
    task["params"] = json!({"database": "app"});
    let workflow = execute_and_wait(&mut workflows, &json!({"tasks": [task]})).await;
    assert_eq!(workflow.status, "completed", "{}", workflow.summary);
    let result: serde_json::Value = serde_json::from_str(&workflow.tasks[0].result_json).unwrap();
    assert_eq!(result["target"], "app");
    assert!(result["target_ms"].as_f64().is_some(), "{result}");

    // Bad input is refused, named, and never echoes the password
    let refused = |name: &str, url: &str| {
        let mut admin = admin.clone();
        let request = proto::RegisterDatabaseRequest {
            name: name.into(),
            url: url.into(),
            description: String::new(),
        };
        async move { admin.register_database(request).await.unwrap_err() }
    };
    let bad_name = refused("App-DB", &url).await;
    assert_eq!(bad_name.code(), Code::InvalidArgument);
    assert!(
        bad_name.message().contains("target name 'App-DB'"),
        "{}",
        bad_name.message()
    );
    let bad_url = refused("other", &format!("mysql://{role}:{password}@h/db")).await;
    assert_eq!(bad_url.code(), Code::InvalidArgument);
    assert!(bad_url.message().contains("postgres://"), "{}", bad_url.message());
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let unreachable = refused(
        "other",
        &format!("postgres://{role}:{password}@127.0.0.1:{port}/x"),
    )
    .await;
    assert_eq!(unreachable.code(), Code::Unavailable);
    assert!(
        unreachable
            .message()
            .contains("cannot reach target database 'other'"),
        "{}",
        unreachable.message()
    );
    for status in [&bad_name, &bad_url, &unreachable] {
        assert!(!status.message().contains(password), "{}", status.message());
    }
    // And no event carries the password
    let leaked: i64 =
        sqlx::query_scalar("SELECT count(*) FROM events WHERE event_data::text LIKE '%' || $1 || '%'")
            .bind(password)
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(leaked, 0);
    let registered_events: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM events WHERE stream_id = 'database-app' AND event_type = 'DatabaseRegistered'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(registered_events, 1);

    // When it is removed, plans that use it fail naming the missing target
    admin
        .remove_database(proto::RemoveDatabaseRequest { name: "app".into() })
        .await
        .unwrap();
    let gone = admin
        .remove_database(proto::RemoveDatabaseRequest { name: "app".into() })
        .await
        .unwrap_err();
    assert_eq!(gone.code(), Code::NotFound);
    let mut task = probe("ping", "query", &[], json!({}));
    task["params"] = json!({"database": "app"});
    let workflow = execute_and_wait(&mut workflows, &json!({"tasks": [task]})).await;
    assert_eq!(workflow.status, "failed");
    assert!(
        workflow.tasks[0].error.contains("no target database named 'app'"),
        "{}",
        workflow.tasks[0].error
    );

    pool.close().await;
    server.stop().await;
    db.drop_database().await;
    target.drop_database().await;
    sqlx::query(sqlx::AssertSqlSafe(format!("DROP ROLE \"{role}\"")))
        .execute(&mut conn)
        .await
        .unwrap();
}
