//! The query agent against a real PostgreSQL with pg_stat_statements:
//! workload analysis with plan findings, EXPLAIN with rewrite hints,
//! unused and duplicate indexes, and a regression (an index dropped)
//! detected between snapshots, with the plans before and after.

use api::proto;
use serde_json::{Value, json};
use tests::*;

use crate::orchestration::{execute_and_wait, workflows_client};

async fn serve_with_users(rows: i64) -> (TestDb, TestDb, sqlx::PgPool, TestServer) {
    serve_with_users_and(rows, |settings| settings).await
}

async fn serve_with_users_and(
    rows: i64,
    settings: impl FnOnce(server::Settings) -> server::Settings,
) -> (TestDb, TestDb, sqlx::PgPool, TestServer) {
    let db = TestDb::create().await;
    let target_db = TestDb::create().await;
    let target = target_db.pool().await;
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "CREATE TABLE users (id bigserial PRIMARY KEY, tenant_id int NOT NULL, email text NOT NULL, created_at timestamptz NOT NULL); \
         INSERT INTO users (tenant_id, email, created_at) \
           SELECT g % 100, 'user' || g || '@example.com', now() - g * interval '1 minute' FROM generate_series(1, {rows}) g; \
         ANALYZE users;"
    )))
    .execute(&target)
    .await
    .unwrap();
    let server = TestServer::start(settings(with_workflows(settings_for(&db)))).await;
    server.register_target("app", &target_db.url).await;
    (db, target_db, target, server)
}

fn task(operation: &str, params: Value) -> Value {
    json!({"name": operation, "tasks": [{"id": "t", "agent": "query", "operation": operation, "params": params}]})
}

fn result(workflow: &proto::Workflow) -> Value {
    assert_eq!(
        workflow.status, "completed",
        "{} {:?}",
        workflow.summary, workflow.tasks[0].error
    );
    serde_json::from_str(&workflow.tasks[0].result_json).unwrap()
}

async fn look_up_emails(target: &sqlx::PgPool, count: i64) {
    for i in 0..count {
        let _: Option<(i64,)> = sqlx::query_as("SELECT id FROM users WHERE email = $1")
            .bind(format!("user{}@example.com", i * 7 + 1))
            .fetch_optional(target)
            .await
            .unwrap();
    }
}

#[tokio::test]
async fn analyze_explain_and_unused_indexes_name_what_is_slow_and_what_is_wasted() {
    let (db, target_db, target, server) = serve_with_users(50_000).await;
    let mut client = workflows_client(&server).await;
    look_up_emails(&target, 30).await;

    // The workload: the email lookup is the heaviest statement, a selective sequential scan
    let analyzed = result(
        &execute_and_wait(
            &mut client,
            &task("analyze", json!({"database": "app", "table": "users"})),
        )
        .await,
    );
    let statements = analyzed["statements"].as_array().unwrap();
    let lookup = statements
        .iter()
        .find(|s| s["query"].as_str().unwrap().contains("WHERE email = $1"))
        .unwrap_or_else(|| panic!("the email lookup in {statements:#?}"));
    assert!(lookup["calls"].as_i64().unwrap() >= 30, "{lookup}");
    assert!(
        lookup["plan"].as_str().unwrap().contains("Seq Scan on"),
        "{lookup}"
    );
    let kinds: Vec<&str> = lookup["findings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["kind"].as_str().unwrap())
        .collect();
    assert!(kinds.contains(&"selective_seq_scan"), "{lookup}");

    // EXPLAIN with hints; bad SQL and unknown tables are named
    let explained = result(
        &execute_and_wait(
            &mut client,
            &task(
                "explain",
                json!({"database": "app", "sql": "SELECT id FROM users WHERE email LIKE '%@example.com'"}),
            ),
        )
        .await,
    );
    let hints: Vec<&str> = explained["hints"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["kind"].as_str().unwrap())
        .collect();
    assert!(hints.contains(&"leading_wildcard_like"), "{explained}");
    assert!(
        explained["plan"][0]["Plan"]["Node Type"].is_string(),
        "{explained}"
    );
    let syntax = execute_and_wait(
        &mut client,
        &task(
            "explain",
            json!({"database": "app", "sql": "SELEC id FROM users"}),
        ),
    )
    .await;
    assert_eq!(syntax.status, "failed");
    assert!(
        syntax.tasks[0].error.contains("syntax error"),
        "{}",
        syntax.tasks[0].error
    );
    let unknown = execute_and_wait(
        &mut client,
        &task(
            "explain",
            json!({"database": "app", "sql": "SELECT * FROM ghosts WHERE id = $1"}),
        ),
    )
    .await;
    assert_eq!(unknown.status, "failed");
    assert!(
        unknown.tasks[0].error.contains("\"ghosts\" does not exist"),
        "{}",
        unknown.tasks[0].error
    );
    let analyze_params = execute_and_wait(
        &mut client,
        &task(
            "explain",
            json!({"database": "app", "sql": "SELECT * FROM users WHERE id = $1", "analyze": true}),
        ),
    )
    .await;
    assert!(
        analyze_params.tasks[0]
            .error
            .contains("only be explained without ANALYZE"),
        "{}",
        analyze_params.tasks[0].error
    );

    // Unused and duplicate indexes, with their size
    sqlx::raw_sql(
        "CREATE INDEX users_tenant ON users (tenant_id); CREATE INDEX users_tenant_created ON users (tenant_id, created_at);",
    )
    .execute(&target)
    .await
    .unwrap();
    let indexes =
        result(&execute_and_wait(&mut client, &task("unused_indexes", json!({"database": "app"}))).await);
    let unused: Vec<&str> = indexes["unused"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["name"].as_str().unwrap())
        .collect();
    assert!(unused.contains(&"public.users_tenant"), "{indexes}");
    assert!(
        !unused.contains(&"public.users_pkey"),
        "a primary key is never unused: {indexes}"
    );
    let duplicate = &indexes["duplicates"][0];
    assert_eq!(duplicate["redundant"], "public.users_tenant", "{indexes}");
    assert_eq!(
        duplicate["covered_by"], "public.users_tenant_created",
        "{indexes}"
    );
    assert!(indexes["reclaimable_bytes"].as_i64().unwrap() > 0);

    target.close().await;
    server.stop().await;
    db.drop_database().await;
    target_db.drop_database().await;
}

#[tokio::test]
async fn a_statement_made_slower_by_a_dropped_index_is_flagged_with_its_plans() {
    let (db, target_db, target, server) = serve_with_users(50_000).await;
    sqlx::raw_sql("CREATE INDEX users_email ON users (email)")
        .execute(&target)
        .await
        .unwrap();
    let mut client = workflows_client(&server).await;
    let detect = || task("detect_regressions", json!({"database": "app"}));

    // Given two snapshots around a period of fast lookups
    let first = result(&execute_and_wait(&mut client, &detect()).await);
    assert!(
        first["note"].as_str().unwrap().contains("first snapshot"),
        "{first}"
    );
    look_up_emails(&target, 80).await;
    let second = result(&execute_and_wait(&mut client, &detect()).await);
    assert_eq!(second["regressions"], json!([]), "{second}");
    // When the index goes and the lookups go on
    sqlx::raw_sql("DROP INDEX users_email")
        .execute(&target)
        .await
        .unwrap();
    look_up_emails(&target, 80).await;
    let third = result(&execute_and_wait(&mut client, &detect()).await);

    // Then the lookup is flagged, with the plan before and after
    let regressions = third["regressions"].as_array().unwrap();
    let lookup = regressions
        .iter()
        .find(|r| {
            r["regression"]["query"]
                .as_str()
                .unwrap()
                .contains("WHERE email = $1")
        })
        .unwrap_or_else(|| panic!("the email lookup in {third:#}"));
    assert!(lookup["regression"]["ratio"].as_f64().unwrap() > 2.0, "{lookup}");
    assert!(
        lookup["plan_before"].as_str().unwrap().contains("users_email"),
        "{lookup}"
    );
    assert!(
        lookup["plan_after"].as_str().unwrap().contains("Seq Scan"),
        "{lookup}"
    );
    // And the regression is an event of the database's workload stream
    let pool = db.pool().await;
    let types: Vec<String> = sqlx::query_scalar(
        "SELECT event_type FROM events WHERE stream_id = 'workload-app' ORDER BY event_version",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(types.iter().filter(|t| *t == "WorkloadSnapshotTaken").count(), 3);
    assert!(types.iter().any(|t| t == "QueryRegressed"), "{types:?}");

    pool.close().await;
    target.close().await;
    server.stop().await;
    db.drop_database().await;
    target_db.drop_database().await;
}

/// Index advice over the workload with HypoPG: nothing for a workload no
/// index helps; exactly the email and (tenant_id, created_at) indexes for
/// lookups by email and by tenant and time, each with the statements it
/// helps, their cost before and after, and its size.
#[tokio::test]
async fn index_advice_recommends_exactly_the_indexes_the_workload_needs() {
    let (db, target_db, target, server) = serve_with_users(200_000).await;
    let mut client = workflows_client(&server).await;
    let recommend = || task("recommend_indexes", json!({"database": "app", "table": "users"}));

    // Given a workload no index helps: every row, a third of the rows
    // spread over the whole table, a function of a column
    for i in 0..20 {
        let _: (i64,) = sqlx::query_as("SELECT count(*) FROM users")
            .fetch_one(&target)
            .await
            .unwrap();
        let _: Vec<(i64, String)> = sqlx::query_as("SELECT id, email FROM users WHERE tenant_id > $1")
            .bind(66 + i % 3)
            .fetch_all(&target)
            .await
            .unwrap();
        let _: Option<(i64,)> = sqlx::query_as("SELECT id FROM users WHERE lower(email) = $1")
            .bind(format!("user{i}@example.com"))
            .fetch_optional(&target)
            .await
            .unwrap();
    }
    let advice = result(&execute_and_wait(&mut client, &recommend()).await);
    assert_eq!(advice["hypopg"], true, "{advice}");
    // (Only the set-up INSERT, whose `interval $4` cannot be prepared, is not explained)
    let not_explained = advice["not_explained"].as_array().unwrap();
    assert!(
        not_explained
            .iter()
            .all(|q| q.as_str().unwrap().starts_with("INSERT")),
        "{advice:#}"
    );
    assert_eq!(advice["recommendations"], json!([]), "{advice:#}");

    // Given lookups by email and by tenant over time
    look_up_emails(&target, 50).await;
    for i in 0..50 {
        let _: Vec<(i64,)> = sqlx::query_as(
            "SELECT id FROM users WHERE tenant_id = $1 AND created_at > $2 ORDER BY created_at DESC LIMIT 20",
        )
        .bind(i % 100)
        .bind(chrono::Utc::now() - chrono::Duration::days(30))
        .fetch_all(&target)
        .await
        .unwrap();
    }
    let advice = result(&execute_and_wait(&mut client, &recommend()).await);
    let recommended: Vec<Vec<&str>> = advice["recommendations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            r["columns"]
                .as_array()
                .unwrap()
                .iter()
                .map(|c| c.as_str().unwrap())
                .collect()
        })
        .collect();
    assert_eq!(recommended.len(), 2, "{advice:#}");
    assert!(recommended.contains(&vec!["email"]), "{advice:#}");
    assert!(
        recommended.contains(&vec!["tenant_id", "created_at"]),
        "{advice:#}"
    );
    for recommendation in advice["recommendations"].as_array().unwrap() {
        assert!(
            recommendation["create_sql"]
                .as_str()
                .unwrap()
                .starts_with("CREATE INDEX CONCURRENTLY")
        );
        assert!(
            recommendation["estimated_size_bytes"].as_i64().unwrap() > 0,
            "{recommendation}"
        );
        let gain = &recommendation["queries"][0];
        assert!(
            gain["cost_after"].as_f64().unwrap() < gain["cost_before"].as_f64().unwrap(),
            "{gain}"
        );
    }

    // Given the email index exists, it is not recommended again
    sqlx::raw_sql("CREATE INDEX users_email ON users (email)")
        .execute(&target)
        .await
        .unwrap();
    let advice = result(&execute_and_wait(&mut client, &recommend()).await);
    let recommended: Vec<&Value> = advice["recommendations"].as_array().unwrap().iter().collect();
    assert_eq!(recommended.len(), 1, "{advice:#}");
    assert!(
        advice["rejected"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["reason"].as_str().unwrap().contains("public.users_email")),
        "{advice:#}"
    );

    target.close().await;
    server.stop().await;
    db.drop_database().await;
    target_db.drop_database().await;
}

/// The seed's request in plain English, end to end: analyse, recommend,
/// and create the email index while lookups and inserts go on; the index
/// is kept with its measured speed-up. An index the planner does not use
/// is created, measured and dropped again, with the reason as an event;
/// unknown tables and columns are named.
#[tokio::test]
async fn the_seed_request_creates_the_email_index_and_measures_the_gain() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    let (db, target_db, target, server) = serve_with_users_and(200_000, |mut settings| {
        settings.query_measure_window_ms = Some(2_000);
        settings
    })
    .await;
    let mut client = workflows_client(&server).await;

    // Given lookups by email and inserts, running throughout
    let stop = Arc::new(AtomicBool::new(false));
    let load = {
        let (pool, stop) = (target.clone(), stop.clone());
        tokio::spawn(async move {
            let mut i = 0_i64;
            while !stop.load(Ordering::SeqCst) {
                i += 1;
                let _: Option<(i64,)> = sqlx::query_as("SELECT id FROM users WHERE email = $1")
                    .bind(format!("user{}@example.com", i * 13 % 200_000))
                    .fetch_optional(&pool)
                    .await
                    .unwrap();
                sqlx::query("INSERT INTO users (tenant_id, email, created_at) VALUES ($1, $2, now())")
                    .bind((i % 100) as i32)
                    .bind(format!("new{i}@example.com"))
                    .execute(&pool)
                    .await
                    .unwrap();
            }
            i
        })
    };
    tokio::time::sleep(std::time::Duration::from_millis(1_500)).await;

    // When the seed's request runs
    let request = proto::ExecuteRequest {
        request: Some(proto::execute_request::Request::Operation(
            "Optimize slow queries in the users table and create an index on email".into(),
        )),
        wait: true,
        wait_timeout_ms: 120_000,
        ..Default::default()
    };
    let workflow = client
        .execute(request)
        .await
        .unwrap()
        .into_inner()
        .workflow
        .unwrap();
    stop.store(true, Ordering::SeqCst);
    let iterations = load.await.unwrap();
    assert!(iterations > 10, "the load ran {iterations} times");

    // Then it analysed, recommended the email index, created it and kept it, faster
    assert_eq!(
        workflow.status, "completed",
        "{} {:?}",
        workflow.summary, workflow.tasks
    );
    let by_id = |id: &str| -> Value {
        let task = workflow.tasks.iter().find(|t| t.task_id == id).unwrap();
        serde_json::from_str(&task.result_json).unwrap()
    };
    let recommended = by_id("query_recommend_indexes");
    assert_eq!(
        recommended["recommendations"][0]["columns"],
        json!(["email"]),
        "{recommended:#}"
    );
    let created = by_id("query_create_index");
    assert_eq!(created["kept"], true, "{created:#}");
    assert!(created["speedup"].as_f64().unwrap() > 2.0, "{created:#}");
    assert!(
        created["reason"].as_str().unwrap().contains("faster"),
        "{created:#}"
    );
    let valid: bool =
        sqlx::query_scalar("SELECT indisvalid FROM pg_index WHERE indexrelid = 'users_email_idx'::regclass")
            .fetch_one(&target)
            .await
            .unwrap();
    assert!(valid);

    // Given lookups in a table of five rows, an index on its scope column
    // is built, found unused by the planner (one page: a scan is cheaper),
    // and dropped
    sqlx::raw_sql(
        "CREATE TABLE settings (key text PRIMARY KEY, value text, scope int); \
         INSERT INTO settings SELECT 'k' || g, 'v' || g, g FROM generate_series(1, 5) g; ANALYZE settings;",
    )
    .execute(&target)
    .await
    .unwrap();
    for scope in 0..20 {
        let _: Vec<(String,)> = sqlx::query_as("SELECT value FROM settings WHERE scope = $1")
            .bind(scope % 5)
            .fetch_all(&target)
            .await
            .unwrap();
    }
    let unused = result(
        &execute_and_wait(
            &mut client,
            &task(
                "create_index",
                json!({"database": "app", "table": "settings", "columns": ["scope"], "measure_ms": 200}),
            ),
        )
        .await,
    );
    assert_eq!(unused["kept"], false, "{unused:#}");
    assert!(
        unused["reason"]
            .as_str()
            .unwrap()
            .contains("planner does not use it"),
        "{unused:#}"
    );
    let gone: Option<String> = sqlx::query_scalar("SELECT to_regclass('public.settings_scope_idx')::text")
        .fetch_one(&target)
        .await
        .unwrap();
    assert_eq!(gone, None);
    let pool = db.pool().await;
    let outcomes: Vec<String> = sqlx::query_scalar(
        "SELECT event_type FROM events WHERE stream_id = 'workload-app' AND event_type LIKE 'Index%' ORDER BY event_version",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(outcomes, ["IndexCreated", "IndexDropped"]);

    // Bad input: an unknown table, an unknown column
    for (params, expected) in [
        (
            json!({"database": "app", "table": "ghosts", "columns": ["id"]}),
            "there is no table public.ghosts",
        ),
        (
            json!({"database": "app", "table": "users", "columns": ["phone"]}),
            "table public.users has no column phone",
        ),
    ] {
        let failed = execute_and_wait(&mut client, &task("create_index", params)).await;
        assert_eq!(failed.status, "failed");
        assert!(
            failed.tasks[0].error.contains(expected),
            "{}",
            failed.tasks[0].error
        );
    }

    pool.close().await;
    target.close().await;
    server.stop().await;
    db.drop_database().await;
    target_db.drop_database().await;
}

/// A target without HypoPG (its role may not create the extension): the
/// advice says why no index was costed and still gives what the plans show.
#[tokio::test]
async fn without_hypopg_the_advice_says_so_and_comes_from_the_plans() {
    let db = TestDb::create().await;
    let target_db = TestDb::create().await;
    let owner = target_db.pool().await;
    let role = format!("noext_{}", &target_db.name[13..]);
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "CREATE ROLE \"{role}\" LOGIN; GRANT pg_read_all_stats TO \"{role}\"; \
         CREATE EXTENSION pg_stat_statements; \
         CREATE TABLE users (id bigserial PRIMARY KEY, email text NOT NULL); \
         INSERT INTO users (email) SELECT 'user' || g || '@example.com' FROM generate_series(1, 50000) g; ANALYZE users; \
         GRANT SELECT ON users TO \"{role}\";"
    )))
    .execute(&owner)
    .await
    .unwrap();
    let (base, _) = target_db.url.rsplit_once('/').unwrap();
    let (scheme, rest) = base.split_once("://").unwrap();
    let host = rest.rsplit_once('@').map_or(rest, |(_, host)| host);
    let role_url = format!("{scheme}://{role}@{host}/{}", target_db.name);
    let limited = sqlx::PgPool::connect(&role_url).await.unwrap();
    look_up_emails(&limited, 20).await;

    let server = TestServer::start(with_workflows(settings_for(&db))).await;
    server.register_target("app", &role_url).await;
    let mut client = workflows_client(&server).await;
    let advice = result(
        &execute_and_wait(
            &mut client,
            &task("recommend_indexes", json!({"database": "app"})),
        )
        .await,
    );
    assert_eq!(advice["hypopg"], false, "{advice:#}");
    assert!(
        advice["error"]
            .as_str()
            .unwrap()
            .contains("HypoPG is not available"),
        "{advice:#}"
    );
    let from_plans = advice["plan_advice"].as_array().unwrap();
    assert!(
        from_plans
            .iter()
            .any(|a| a["kind"] == "selective_seq_scan" && a["advice"].as_str().unwrap().contains("(email)")),
        "{advice:#}"
    );

    limited.close().await;
    owner.close().await;
    server.stop().await;
    db.drop_database().await;
    target_db.drop_database().await;
    let mut admin_conn = <sqlx::PgConnection as sqlx::Connection>::connect(&admin_url())
        .await
        .unwrap();
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("DROP ROLE IF EXISTS \"{role}\"")))
        .execute(&mut admin_conn)
        .await
        .unwrap();
}

/// An invalid index left by a failed concurrent build is found and dropped
/// before the index is built again; the agent's own failed build leaves
/// nothing behind.
#[tokio::test]
async fn an_invalid_index_left_by_a_failed_build_is_dropped_and_built_again() {
    let (db, target_db, target, server) = serve_with_users(20_000).await;
    let mut client = workflows_client(&server).await;
    // Given an invalid index: a unique build over duplicate tenants fails and leaves it
    let failed = sqlx::raw_sql("CREATE UNIQUE INDEX CONCURRENTLY users_tenant_id_idx ON users (tenant_id)")
        .execute(&target)
        .await;
    assert!(failed.is_err());
    let valid: bool = sqlx::query_scalar(
        "SELECT indisvalid FROM pg_index WHERE indexrelid = 'users_tenant_id_idx'::regclass",
    )
    .fetch_one(&target)
    .await
    .unwrap();
    assert!(!valid, "the failed build left an invalid index");
    for tenant in 0..20 {
        let _: Vec<(i64,)> = sqlx::query_as("SELECT id FROM users WHERE tenant_id = $1")
            .bind(tenant)
            .fetch_all(&target)
            .await
            .unwrap();
    }
    // When the agent creates the index under that name
    let created = result(
        &execute_and_wait(
            &mut client,
            &task(
                "create_index",
                json!({"database": "app", "table": "users", "columns": ["tenant_id"], "measure_ms": 100}),
            ),
        )
        .await,
    );
    // Then the invalid one was replaced by a valid one (kept: the planner uses it)
    assert_eq!(created["kept"], true, "{created:#}");
    let valid: bool = sqlx::query_scalar(
        "SELECT indisvalid FROM pg_index WHERE indexrelid = 'users_tenant_id_idx'::regclass",
    )
    .fetch_one(&target)
    .await
    .unwrap();
    assert!(valid);
    // And creating it again is refused, naming it
    let again = execute_and_wait(
        &mut client,
        &task(
            "create_index",
            json!({"database": "app", "table": "users", "columns": ["tenant_id"]}),
        ),
    )
    .await;
    assert_eq!(again.status, "failed");
    assert!(
        again.tasks[0].error.contains("already exists"),
        "{}",
        again.tasks[0].error
    );

    target.close().await;
    server.stop().await;
    db.drop_database().await;
    target_db.drop_database().await;
}
