//! The schema agent's dependency analysis against a real catalog: what
//! depends on a table and on one of its columns; unknown objects named.

use schema::dependencies::{DependencyError, dependents};
use tests::*;

const FIXTURE: &str = r#"
CREATE SCHEMA app;
CREATE TABLE app.users (id bigserial PRIMARY KEY, email text NOT NULL, name text, CHECK (length(email) > 3));
CREATE UNIQUE INDEX users_email ON app.users (email);
CREATE TABLE app.orders (id bigint PRIMARY KEY, user_id bigint REFERENCES app.users (id), total numeric);
CREATE VIEW app.user_emails AS SELECT id, email FROM app.users;
CREATE VIEW app.user_names AS SELECT id, name FROM app.users;
CREATE FUNCTION app.touch() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RETURN NEW; END $$;
CREATE TRIGGER users_touch BEFORE UPDATE ON app.users FOR EACH ROW EXECUTE FUNCTION app.touch();
CREATE FUNCTION app.email_of(bigint) RETURNS text LANGUAGE sql BEGIN ATOMIC SELECT email FROM app.users WHERE id = $1; END;
ALTER TABLE app.users ENABLE ROW LEVEL SECURITY;
CREATE POLICY own_rows ON app.users USING (email = current_user);
ALTER TABLE app.orders ADD CONSTRAINT total_not_null CHECK (total IS NOT NULL) NOT VALID;
"#;

#[tokio::test]
async fn what_depends_on_a_table_and_on_a_column_is_read_from_the_catalog() {
    let target = TestDb::create().await;
    let pool = target.pool().await;
    sqlx::raw_sql(FIXTURE).execute(&pool).await.unwrap();

    // Given the column email, when its dependents are asked for
    let on_email = dependents(&pool, "app", "users", Some("email")).await.unwrap();
    let found: Vec<(&str, &str)> = on_email
        .iter()
        .map(|d| (d.kind.as_str(), d.name.as_str()))
        .collect();
    // Then the view, index, check, SQL function and policy that use it are named, and nothing that does not
    assert_eq!(
        found,
        [
            ("check constraint", "users_email_check"),
            ("function", "app.email_of(bigint)"),
            ("index", "app.users_email"),
            ("policy", "own_rows"),
            ("view", "app.user_emails"),
        ]
    );
    let view = on_email.iter().find(|d| d.kind == "view").unwrap();
    assert!(view.definition.as_deref().unwrap().contains("email"));

    // And for the whole table, also the foreign key from orders, the
    // primary key, the owned sequence, the trigger and the other view
    let on_users = dependents(&pool, "app", "users", None).await.unwrap();
    let kinds_and_names: Vec<String> = on_users
        .iter()
        .map(|d| format!("{} {}", d.kind, d.name))
        .collect();
    for expected in [
        "foreign key orders_user_id_fkey",
        "primary key users_pkey",
        "sequence app.users_id_seq",
        "trigger users_touch",
        "view app.user_names",
    ] {
        assert!(
            kinds_and_names.iter().any(|k| k == expected),
            "{expected} in {kinds_and_names:?}"
        );
    }
    let fk = on_users.iter().find(|d| d.kind == "foreign key").unwrap();
    assert_eq!(fk.on_table.as_deref(), Some("app.orders"));

    // Unknown objects are named
    let no_table = dependents(&pool, "app", "ghosts", None).await.unwrap_err();
    assert!(matches!(no_table, DependencyError::NoTable { .. }));
    assert_eq!(no_table.to_string(), "there is no table app.ghosts");
    let no_column = dependents(&pool, "app", "users", Some("phone"))
        .await
        .unwrap_err();
    assert_eq!(no_column.to_string(), "table app.users has no column phone");

    pool.close().await;
    target.drop_database().await;
}

/// A server with the agents running and `target` registered as `app`.
async fn serve_with_target(
    db: &TestDb,
    target: &TestDb,
) -> (
    TestServer,
    api::proto::workflows_client::WorkflowsClient<tonic::transport::Channel>,
) {
    let server = TestServer::start(with_workflows(settings_for(db))).await;
    server.register_target("app", &target.url).await;
    let client = crate::orchestration::workflows_client(&server).await;
    (server, client)
}

/// Through a workflow: the schema agent's `dependencies` operation on a
/// registered target; a bad object fails the task, named.
#[tokio::test]
async fn the_schema_agent_answers_dependencies_in_a_workflow() {
    use serde_json::{Value, json};

    let db = TestDb::create().await;
    let target = TestDb::create().await;
    let target_pool = target.pool().await;
    sqlx::raw_sql(FIXTURE).execute(&target_pool).await.unwrap();
    let (server, mut client) = serve_with_target(&db, &target).await;
    let plan = |object: &str| {
        json!({"name": "impact", "tasks": [{"id": "impact", "agent": "schema", "operation": "dependencies",
            "params": {"database": "app", "object": object}}]})
    };
    let workflow = crate::orchestration::execute_and_wait(&mut client, &plan("app.users.email")).await;
    assert_eq!(workflow.status, "completed", "{}", workflow.summary);
    let result: Value = serde_json::from_str(&workflow.tasks[0].result_json).unwrap();
    let names: Vec<&str> = result["dependents"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["name"].as_str().unwrap())
        .collect();
    assert!(
        names.contains(&"app.user_emails") && names.contains(&"app.users_email"),
        "{names:?}"
    );
    let failed = crate::orchestration::execute_and_wait(&mut client, &plan("app.users.phone")).await;
    assert_eq!(failed.status, "failed");
    assert!(
        failed.tasks[0].error.contains("has no column phone"),
        "{}",
        failed.tasks[0].error
    );

    target_pool.close().await;
    server.stop().await;
    db.drop_database().await;
    target.drop_database().await;
}

/// Through a workflow: `schema.lint` reads the target's catalog and
/// refuses a migration with a blocking hazard (naming it and the safe
/// alternative), and passes the safe version with its report.
#[tokio::test]
async fn the_schema_agent_lints_a_migration_against_the_targets_catalog() {
    use serde_json::{Value, json};

    let db = TestDb::create().await;
    let target = TestDb::create().await;
    let target_pool = target.pool().await;
    sqlx::raw_sql(FIXTURE).execute(&target_pool).await.unwrap();
    sqlx::raw_sql("INSERT INTO app.users (email) SELECT 'user' || g || '@example.com' FROM generate_series(1, 1000) g; ANALYZE app.users;")
        .execute(&target_pool)
        .await
        .unwrap();
    let facts = schema::facts::read_facts(&target_pool).await.unwrap();
    let users = &facts.tables["app.users"];
    assert_eq!(users.estimated_rows, 1000);
    assert_eq!(users.columns["email"].type_name, "text");
    assert!(
        users.columns["email"]
            .dependents
            .iter()
            .any(|d| d.contains("user_emails")),
        "{:?}",
        users.columns["email"]
    );
    assert!(
        users.dependents.iter().any(|d| d.contains("orders")),
        "{:?}",
        users.dependents
    );
    assert!(
        facts
            .indexes
            .iter()
            .any(|i| i.name == "app.users_email" && i.unique && i.valid)
    );

    let (server, mut client) = serve_with_target(&db, &target).await;
    let plan = |sql: &str| {
        json!({"name": "lint", "tasks": [{"id": "lint", "agent": "schema", "operation": "lint",
            "params": {"database": "app", "sql": sql}}]})
    };
    // A hazard: an index built without CONCURRENTLY, no lock_timeout
    let hazard = crate::orchestration::execute_and_wait(
        &mut client,
        &plan("CREATE INDEX users_name ON app.users (name);"),
    )
    .await;
    assert_eq!(hazard.status, "failed");
    let error = &hazard.tasks[0].error;
    assert!(
        error.contains("require-concurrent-index-creation") && error.contains("CONCURRENTLY"),
        "{error}"
    );
    // The safe version passes, with its report
    let safe = "SET lock_timeout = '2s';\nCREATE INDEX CONCURRENTLY users_name ON app.users (name);";
    let passed = crate::orchestration::execute_and_wait(&mut client, &plan(safe)).await;
    assert_eq!(passed.status, "completed", "{}", passed.tasks[0].error);
    let report: Value = serde_json::from_str(&passed.tasks[0].result_json).unwrap();
    assert_eq!(report["summary"]["blocking_count"], 0);
    // Invalid SQL is named
    let invalid = crate::orchestration::execute_and_wait(&mut client, &plan("CREATE INDEX ON;")).await;
    assert_eq!(invalid.status, "failed");
    assert!(
        invalid.tasks[0].error.contains("statement 1"),
        "{}",
        invalid.tasks[0].error
    );

    target_pool.close().await;
    server.stop().await;
    db.drop_database().await;
    target.drop_database().await;
}

/// `dbswarm migrate lint FILE --target-url URL` for CI pipelines: a report
/// per statement, exit 1 on a blocking hazard, 0 when safe, 2 when it
/// cannot lint; `--json` for machines.
#[tokio::test]
async fn migrate_lint_on_the_command_line_exits_non_zero_on_a_blocking_hazard() {
    let target = TestDb::create().await;
    let target_pool = target.pool().await;
    sqlx::raw_sql(FIXTURE).execute(&target_pool).await.unwrap();
    let dir = std::env::temp_dir().join(format!("dbswarm-lint-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    let lint = |sql: &str, json: bool| {
        let file = dir.join("migration.sql");
        std::fs::write(&file, sql).unwrap();
        let mut command = std::process::Command::new(dbswarm_binary());
        command
            .args(["migrate", "lint"])
            .arg(&file)
            .arg("--target-url")
            .arg(&target.url);
        if json {
            command.arg("--json");
        }
        command.output().expect("run dbswarm migrate lint")
    };
    let hazard = lint("CREATE INDEX users_name ON app.users (name);", false);
    assert_eq!(hazard.status.code(), Some(1));
    let text = String::from_utf8_lossy(&hazard.stdout);
    assert!(
        text.contains("BLOCKING require-concurrent-index-creation"),
        "{text}"
    );
    assert!(text.contains("SHARE"), "{text}");
    let safe = lint(
        "SET lock_timeout = '2s';\nCREATE INDEX CONCURRENTLY users_name ON app.users (name);",
        true,
    );
    assert_eq!(
        safe.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&safe.stdout)
    );
    let report: serde_json::Value = serde_json::from_slice(&safe.stdout).unwrap();
    assert_eq!(report["summary"]["blocking_count"], 0);
    assert_eq!(report["statements"][1]["lock"], "SHARE_UPDATE_EXCLUSIVE");
    let invalid = lint("CREATE INDEX ON;", false);
    assert_eq!(invalid.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&invalid.stderr).contains("statement 1"));
    std::fs::remove_dir_all(&dir).unwrap();
    target_pool.close().await;
    target.drop_database().await;
}
