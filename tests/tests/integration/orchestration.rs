//! Workflows end to end through `dbswarm.v1.Workflows`: the orchestrator
//! sends task commands over JetStream, the agents' runtime works on them
//! (the `probe` operation, told to simulate slow, flaky or failing work)
//! and the outcomes come back as events.

use std::time::Duration;

use api::proto;
use api::proto::workflows_client::WorkflowsClient;
use chrono::{DateTime, Utc};
use serde_json::{Value, json};
use sqlx::PgPool;
use tests::*;
use tonic::Code;
use tonic::transport::Channel;

use crate::projections::{caught_up, get_row, projections_client, wait_for_status};

pub async fn workflows_client(server: &TestServer) -> WorkflowsClient<Channel> {
    WorkflowsClient::connect(server.channel_url())
        .await
        .expect("connect to the test server")
}

/// A probe task of `agent` after `dependencies`, simulating `simulate`.
pub fn probe(id: &str, agent: &str, dependencies: &[&str], simulate: Value) -> Value {
    json!({"id": id, "agent": agent, "operation": "probe",
           "dependencies": dependencies, "params": {"simulate": simulate}})
}

pub fn execute_request(plan: &Value) -> proto::ExecuteRequest {
    proto::ExecuteRequest {
        request: Some(proto::execute_request::Request::PlanJson(plan.to_string())),
        wait: true,
        wait_timeout_ms: 60_000,
        ..Default::default()
    }
}

pub async fn execute_and_wait(client: &mut WorkflowsClient<Channel>, plan: &Value) -> proto::Workflow {
    client
        .execute(execute_request(plan))
        .await
        .expect("the workflow runs")
        .into_inner()
        .workflow
        .expect("a workflow")
}

/// Watches the workflow until `until` holds for a state; returns it.
pub async fn watch_until(
    client: &mut WorkflowsClient<Channel>,
    workflow_id: &str,
    until: impl Fn(&proto::Workflow) -> bool,
) -> proto::Workflow {
    let request = proto::WorkflowRequest {
        workflow_id: workflow_id.to_owned(),
    };
    let mut states = client.watch(request).await.unwrap().into_inner();
    let watched = tokio::time::timeout(Duration::from_secs(60), async {
        while let Some(state) = states.message().await.unwrap() {
            if until(&state) {
                return state;
            }
        }
        panic!("the watch of {workflow_id} ended before the awaited state");
    });
    watched.await.expect("the awaited state within 60 s")
}

fn finished(state: &proto::Workflow) -> bool {
    ["completed", "failed", "cancelled"].contains(&state.status.as_str())
}

/// A workflow's events as stored: type, data and commit time.
pub async fn workflow_events(pool: &PgPool, workflow_id: &str) -> Vec<(String, Value, DateTime<Utc>)> {
    sqlx::query_as(
        "SELECT event_type, event_data, created_at FROM events WHERE stream_id = $1 ORDER BY event_version",
    )
    .bind(format!("workflow-{workflow_id}"))
    .fetch_all(pool)
    .await
    .expect("read the workflow's events")
}

/// When the first event of `event_type` for `task` was recorded.
fn time_of(events: &[(String, Value, DateTime<Utc>)], event_type: &str, task: &str) -> DateTime<Utc> {
    events
        .iter()
        .find(|(t, data, _)| t == event_type && data["task_id"] == task)
        .map(|(_, _, at)| *at)
        .unwrap_or_else(|| panic!("no {event_type} for {task}"))
}

fn count(events: &[(String, Value, DateTime<Utc>)], event_type: &str, task: &str) -> usize {
    events
        .iter()
        .filter(|(t, data, _)| t == event_type && data["task_id"] == task)
        .count()
}

/// The seed's "Database Migration" shape, with probes standing in for the
/// agents' real operations.
fn migration_shape(branch_ms: u64) -> Value {
    json!({"name": "Database Migration (probes)", "tasks": [
        probe("pre_migration_backup", "backup", &[], json!({"delay_ms": 50})),
        probe("run_migration", "schema", &["pre_migration_backup"], json!({"delay_ms": 50})),
        probe("validate_data", "integrity", &["run_migration"], json!({"delay_ms": branch_ms})),
        probe("invalidate_cache", "cache", &["run_migration"], json!({"delay_ms": branch_ms})),
        probe("rebuild_projections", "eventsourcing", &["validate_data", "invalidate_cache"], json!({})),
    ]})
}

#[tokio::test]
async fn the_migration_workflow_runs_its_branches_in_parallel_after_their_dependencies() {
    let db = TestDb::create().await;
    let server = TestServer::start(with_workflows(settings_for(&db))).await;
    let pool = db.pool().await;
    let mut client = workflows_client(&server).await;

    // When the seed's migration shape runs
    let workflow = execute_and_wait(&mut client, &migration_shape(800)).await;

    // Then it completes with every task's result
    assert_eq!(workflow.status, "completed", "{}", workflow.summary);
    assert_eq!((workflow.tasks_total, workflow.tasks_completed), (5, 5));
    assert_eq!(workflow.summary, "completed: all 5 tasks succeeded");
    for task in &workflow.tasks {
        assert_eq!(task.status, "succeeded");
        let result: Value = serde_json::from_str(&task.result_json).unwrap();
        assert_eq!(result["agent"], task.agent.as_str(), "{}", task.task_id);
        assert!(result["postgres_ms"].as_f64().is_some());
    }
    let events = workflow_events(&pool, &workflow.workflow_id).await;
    // And each task started only after its dependencies succeeded
    let after = |task: &str, dependency: &str| {
        assert!(
            time_of(&events, "TaskStarted", task) >= time_of(&events, "TaskSucceeded", dependency),
            "{task} started before {dependency} succeeded"
        );
    };
    after("run_migration", "pre_migration_backup");
    after("validate_data", "run_migration");
    after("invalidate_cache", "run_migration");
    after("rebuild_projections", "validate_data");
    after("rebuild_projections", "invalidate_cache");
    // And the two branches really overlapped in time
    assert!(
        time_of(&events, "TaskStarted", "validate_data")
            < time_of(&events, "TaskSucceeded", "invalidate_cache")
    );
    assert!(
        time_of(&events, "TaskStarted", "invalidate_cache")
            < time_of(&events, "TaskSucceeded", "validate_data")
    );
    // And long work reported progress
    assert!(count(&events, "TaskProgressed", "validate_data") >= 1);
    // And each outcome is recorded once
    for task in &workflow.tasks {
        assert_eq!(count(&events, "TaskSucceeded", &task.task_id), 1);
    }
    // And Get says the same as the finished Execute
    let got = client
        .get(proto::WorkflowRequest {
            workflow_id: workflow.workflow_id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got, workflow);
    // And the read models show the workflow and the agents that ran it
    let mut projections = projections_client(&server).await;
    wait_for_status(&mut projections, "workflows", "catching up", caught_up).await;
    wait_for_status(&mut projections, "agents", "catching up", caught_up).await;
    let row = get_row(&mut projections, "workflows", &workflow.workflow_id)
        .await
        .expect("a workflows row");
    assert_eq!(row["state"], "completed");
    assert_eq!(row["tasks_succeeded"], 5);
    let listed = client
        .list(proto::ListWorkflowsRequest {
            status: "completed".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.workflows.len(), 1);
    assert_eq!(listed.workflows[0].workflow_id, workflow.workflow_id);
    assert_eq!(listed.workflows[0].name, "Database Migration (probes)");
    for agent in domain::workflow::catalogue::AGENTS {
        let row = get_row(&mut projections, "agents", agent)
            .await
            .expect("an agents row");
        assert_eq!(row["status"], "ready", "{agent}: {row}");
    }
    let backup = get_row(&mut projections, "agents", "backup").await.unwrap();
    assert_eq!(
        (
            backup["tasks_started"].as_i64(),
            backup["tasks_succeeded"].as_i64()
        ),
        (Some(1), Some(1))
    );
    let too_big = client
        .list(proto::ListWorkflowsRequest {
            page_size: 5000,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(too_big.code(), Code::InvalidArgument);

    pool.close().await;
    server.stop().await;
    db.drop_database().await;
}

#[tokio::test]
async fn a_flaky_task_is_retried_a_failing_one_compensates_and_a_slow_one_times_out() {
    let db = TestDb::create().await;
    let server = TestServer::start(with_workflows(settings_for(&db))).await;
    let pool = db.pool().await;
    let mut client = workflows_client(&server).await;

    // Given a task that fails twice, then succeeds, with two retries
    let mut flaky = probe("flaky", "monitoring", &[], json!({"fail_attempts": 2}));
    flaky["retries"] = json!(2);
    let workflow = execute_and_wait(&mut client, &json!({"name": "flaky", "tasks": [flaky]})).await;
    // Then it succeeds on its third attempt
    assert_eq!(workflow.status, "completed", "{}", workflow.summary);
    assert_eq!(workflow.tasks[0].attempt, 3);
    let events = workflow_events(&pool, &workflow.workflow_id).await;
    assert_eq!(count(&events, "TaskFailed", "flaky"), 2);
    assert_eq!(count(&events, "TaskRetried", "flaky"), 2);
    // A simulated failure is a dependency that did not answer: retryable
    assert!(
        events
            .iter()
            .filter(|(t, _, _)| t == "TaskFailed")
            .all(|(_, data, _)| data["code"] == "unavailable"),
        "{events:?}"
    );
    let retried: Vec<u64> = events
        .iter()
        .filter(|(t, _, _)| t == "TaskRetried")
        .map(|(_, data, _)| data["backoff_ms"].as_u64().unwrap())
        .collect();
    assert!(
        retried[0] >= 250 && retried[1] >= 500 && retried[1] <= 1000,
        "exponential backoff with jitter: {retried:?}"
    );

    // Given two tasks that succeed and declare a compensation, then one
    // that always fails
    let mut first = probe("first", "backup", &[], json!({}));
    first["compensation"] = json!({"operation": "probe"});
    let mut second = probe("second", "schema", &["first"], json!({}));
    second["compensation"] = json!({"operation": "probe"});
    let doomed = probe("doomed", "integrity", &["second"], json!({"fail": true}));
    let plan = json!({"name": "doomed", "tasks": [first, second, doomed]});
    let workflow = execute_and_wait(&mut client, &plan).await;
    // Then the workflow fails, the completed tasks undone in reverse order
    assert_eq!(workflow.status, "failed", "{}", workflow.summary);
    assert!(
        workflow.error.contains("doomed") && workflow.error.contains("simulated failure"),
        "{}",
        workflow.error
    );
    assert_eq!(workflow.tasks_compensated, 2);
    let events = workflow_events(&pool, &workflow.workflow_id).await;
    let compensated: Vec<&str> = events
        .iter()
        .filter(|(t, _, _)| t == "CompensationDone")
        .map(|(_, data, _)| data["task_id"].as_str().unwrap())
        .collect();
    assert_eq!(compensated, ["second", "first"]);
    assert_eq!(events.last().unwrap().0, "WorkflowFailed");

    // Given a task slower than its timeout, without retries
    let mut slow = probe("slow", "cache", &[], json!({"delay_ms": 5000}));
    slow["timeout"] = json!("300ms");
    let workflow = execute_and_wait(&mut client, &json!({"name": "slow", "tasks": [slow]})).await;
    // Then it fails as timed out
    assert_eq!(workflow.status, "failed", "{}", workflow.summary);
    assert!(
        workflow.tasks[0].error.contains("timed out") || workflow.tasks[0].error.contains("timeout"),
        "{}",
        workflow.tasks[0].error
    );
    assert_eq!(workflow.tasks[0].error_code, "timeout");

    // Given tasks with retries left whose failures another attempt cannot
    // fix: one refused by the agent, one with a mistyped parameter
    for (id, simulate, code, named) in [
        (
            "refused",
            json!({"fail": true, "code": "invalid_argument"}),
            "invalid_argument",
            "simulated failure",
        ),
        ("typo", json!({"dely_ms": 5}), "invalid_argument", "dely_ms"),
        (
            "missing",
            json!({"fail": true, "code": "not_found"}),
            "not_found",
            "simulated failure",
        ),
    ] {
        let mut task = probe(id, "query", &[], simulate);
        task["retries"] = json!(3);
        let workflow = execute_and_wait(&mut client, &json!({"name": id, "tasks": [task]})).await;
        // Then each fails at once, its code in the event and the answers
        assert_eq!(workflow.status, "failed", "{}", workflow.summary);
        assert_eq!(workflow.tasks[0].attempt, 1, "{id}");
        assert_eq!(workflow.tasks[0].error_code, code, "{id}");
        assert_eq!(workflow.error_code, code, "{id}");
        assert!(
            workflow.tasks[0].error.contains(named),
            "{id}: {}",
            workflow.tasks[0].error
        );
        let events = workflow_events(&pool, &workflow.workflow_id).await;
        assert_eq!(count(&events, "TaskFailed", id), 1, "{id}");
        assert_eq!(count(&events, "TaskRetried", id), 0, "{id}");
        let failed = events.iter().find(|(t, _, _)| t == "TaskFailed").unwrap();
        assert_eq!(failed.1["code"], code, "{id}");
        let got = client
            .get(proto::WorkflowRequest {
                workflow_id: workflow.workflow_id.clone(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(got.tasks[0].error_code, code, "{id}");
    }

    pool.close().await;
    server.stop().await;
    db.drop_database().await;
}

/// The catalogue plans are validated against is derived from the agents'
/// operations: every operation in it is served by this server's agents.
#[tokio::test]
async fn every_operation_in_the_catalogue_is_served() {
    use sagas::{AgentDirectory, Availability};
    let db = TestDb::create().await;
    let server = TestServer::start(with_workflows(settings_for(&db))).await;
    let catalogue = &server.running.catalogue;
    let mut operations = 0;
    for agent in catalogue.agents() {
        for operation in catalogue.operations(agent) {
            let availability = server.running.directory.availability(agent, operation);
            assert!(
                !matches!(availability, Availability::NotServed),
                "{agent}.{operation} is in the catalogue but not served"
            );
            operations += 1;
        }
    }
    assert!(operations > domain::workflow::catalogue::AGENTS.len());
    // and what is not served is not in it
    assert!(catalogue.operation("integrity", "check").is_none());
    assert!(matches!(
        server.running.directory.availability("integrity", "check"),
        Availability::NotServed
    ));

    server.stop().await;
    db.drop_database().await;
}

#[tokio::test]
async fn a_running_workflow_is_cancelled_and_its_running_task_told_to_stop() {
    let db = TestDb::create().await;
    let server = TestServer::start(with_workflows(settings_for(&db))).await;
    let pool = db.pool().await;
    let mut client = workflows_client(&server).await;

    let plan = json!({"name": "long", "tasks": [
        probe("long", "sync", &[], json!({"delay_ms": 30000})),
        probe("never", "sync", &["long"], json!({})),
    ]});
    let mut request = execute_request(&plan);
    request.wait = false;
    let started = client.execute(request).await.unwrap().into_inner();
    let id = started.workflow_id.clone();
    assert!(started.created);
    // Wait until the task is running on the agent
    let mut watcher = client.clone();
    watch_until(&mut client, &id, |state| state.tasks[0].status == "running").await;
    let watched = id.clone();
    let watch = tokio::spawn(async move { watch_until(&mut watcher, &watched, finished).await });
    // When it is cancelled
    let cancelled = client
        .cancel(proto::CancelRequest {
            workflow_id: id.clone(),
            reason: "maintenance window closed".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(cancelled.status, "cancelled");
    assert!(
        cancelled.summary.contains("maintenance window closed"),
        "{}",
        cancelled.summary
    );
    // Then a watch ends with the cancelled state
    assert_eq!(watch.await.unwrap().status, "cancelled");
    // And the agent stopped working on it well before its 30 s
    tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let metrics = crate::server::http_get(server.running.http_addr, "/metrics").await;
            if metrics.contains("dbswarm_agent_tasks_cancelled_total") {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await
    .expect("the running task was stopped");
    // And nothing after the cancellation started
    let events = workflow_events(&pool, &id).await;
    assert_eq!(count(&events, "TaskScheduled", "never"), 0);
    // Cancelling again is refused, named
    let again = client
        .cancel(proto::CancelRequest {
            workflow_id: id.clone(),
            reason: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(again.code(), Code::FailedPrecondition, "{again:?}");
    assert!(again.message().contains("Cancelled"), "{}", again.message());

    pool.close().await;
    server.stop().await;
    db.drop_database().await;
}

#[tokio::test]
async fn bad_plans_and_requests_are_refused_with_the_problem_named() {
    let db = TestDb::create().await;
    let server = TestServer::start(with_workflows(settings_for(&db))).await;
    let mut client = workflows_client(&server).await;

    let refused = |plan: Value| {
        let mut client = client.clone();
        async move {
            let status = client.execute(execute_request(&plan)).await.unwrap_err();
            assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
            status.message().to_owned()
        }
    };
    let cycle = refused(json!({"tasks": [
        {"id": "a", "agent": "backup", "operation": "probe", "dependencies": ["b"]},
        {"id": "b", "agent": "backup", "operation": "probe", "dependencies": ["a"]}
    ]}))
    .await;
    assert!(cycle.contains("cycle"), "{cycle}");
    let unknown_agent =
        refused(json!({"tasks": [{"id": "a", "agent": "janitor", "operation": "probe"}]})).await;
    assert!(
        unknown_agent.contains("unknown agent 'janitor'"),
        "{unknown_agent}"
    );
    let unknown_operation =
        refused(json!({"tasks": [{"id": "a", "agent": "backup", "operation": "teleport"}]})).await;
    assert!(
        unknown_operation.contains("has no operation 'teleport'"),
        "{unknown_operation}"
    );
    let bad_param = refused(json!({"tasks": [
        {"id": "a", "agent": "schema", "operation": "apply", "params": {"migration": 7}}
    ]}))
    .await;
    assert!(bad_param.contains("parameter 'migration'"), "{bad_param}");
    let missing_dependency = refused(json!({"tasks": [
        {"id": "a", "agent": "backup", "operation": "probe", "dependencies": ["ghost"]}
    ]}))
    .await;
    assert!(missing_dependency.contains("ghost"), "{missing_dependency}");
    let not_json = refused(json!("tasks")).await;
    assert!(!not_json.is_empty());

    // A request the planner does not understand: what it can do
    let nonsense = client
        .execute(proto::ExecuteRequest {
            request: Some(proto::execute_request::Request::Operation(
                "make it fast and pretty".into(),
            )),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(nonsense.code(), Code::InvalidArgument);
    assert!(
        nonsense.message().contains("back up the database"),
        "{}",
        nonsense.message()
    );
    // No request at all
    let empty = client
        .execute(proto::ExecuteRequest::default())
        .await
        .unwrap_err();
    assert_eq!(empty.code(), Code::InvalidArgument);
    // A dry run of a plain-English request: the plan, nothing runs
    let dry = client
        .execute(proto::ExecuteRequest {
            request: Some(proto::execute_request::Request::Operation(
                "back up the database then run migration add_user_roles".into(),
            )),
            dry_run: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(dry.workflow_id.is_empty() && dry.workflow.is_none());
    let plan: Value = serde_json::from_str(&dry.plan_json).unwrap();
    assert_eq!(plan["tasks"][0]["agent"], "backup");
    assert_eq!(plan["tasks"][1]["operation"], "apply");
    assert_eq!(plan["tasks"][1]["params"]["migration"], "add_user_roles");
    // An operation no agent implements is refused at validation, naming
    // what the agent has (the catalogue is derived from the operations)
    let unserved = client
        .execute(execute_request(&json!({"name": "check", "tasks": [
            {"id": "check", "agent": "integrity", "operation": "check"}
        ]})))
        .await
        .unwrap_err();
    assert_eq!(unserved.code(), Code::InvalidArgument, "{unserved:?}");
    assert!(
        unserved
            .message()
            .contains("agent 'integrity' has no operation 'check' (it has: probe)"),
        "{}",
        unserved.message()
    );
    // Bad ids, priorities and limits
    let bad_id = client
        .get(proto::WorkflowRequest {
            workflow_id: "nope".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(bad_id.code(), Code::InvalidArgument);
    let missing = client
        .get(proto::WorkflowRequest {
            workflow_id: uuid::Uuid::new_v4().to_string(),
        })
        .await
        .unwrap_err();
    assert_eq!(missing.code(), Code::NotFound);
    let mut bad_priority = execute_request(&json!({"tasks": [probe("a", "backup", &[], json!({}))]}));
    bad_priority.priority = 9;
    let status = client.execute(bad_priority).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(status.message().contains("priority 9"), "{}", status.message());

    server.stop().await;
    db.drop_database().await;
}

#[tokio::test]
async fn an_idempotency_key_names_one_workflow() {
    let db = TestDb::create().await;
    let server = TestServer::start(with_workflows(settings_for(&db))).await;
    let mut client = workflows_client(&server).await;
    let plan = json!({"name": "once", "tasks": [probe("a", "query", &[], json!({}))]});
    let mut request = execute_request(&plan);
    request.idempotency_key = format!("nightly-{}", uuid::Uuid::new_v4());
    let first = client.execute(request.clone()).await.unwrap().into_inner();
    let second = client.execute(request.clone()).await.unwrap().into_inner();
    assert!(first.created && !second.created);
    assert_eq!(first.workflow_id, second.workflow_id);
    // The same key for another plan is refused
    let other = json!({"name": "other", "tasks": [probe("b", "query", &[], json!({}))]});
    let mut reused = execute_request(&other);
    reused.idempotency_key = request.idempotency_key.clone();
    let status = client.execute(reused).await.unwrap_err();
    assert_eq!(status.code(), Code::AlreadyExists);
    assert!(
        status.message().contains(&first.workflow_id),
        "{}",
        status.message()
    );
    server.stop().await;
    db.drop_database().await;
}

#[tokio::test]
async fn a_workflow_survives_kill_9_of_its_server_and_records_each_result_once() {
    let db = TestDb::create().await;
    let pool = db.pool().await;
    // A short ack wait: the command the killed server held comes back fast.
    let env = [
        ("DBSWARM_AGENT_ACK_WAIT_MS", "1500"),
        ("DBSWARM_PROJECTIONS_ENABLED", "false"),
    ];
    let mut first = ServerChild::spawn(&db, &env).await;
    let mut client = WorkflowsClient::connect(first.url()).await.unwrap();
    let plan = json!({"name": "crash", "tasks": [
        probe("before", "backup", &[], json!({"delay_ms": 200})),
        probe("during", "schema", &["before"], json!({"delay_ms": 1500})),
        probe("left", "integrity", &["during"], json!({})),
        probe("right", "cache", &["during"], json!({})),
        probe("after", "eventsourcing", &["left", "right"], json!({})),
    ]});
    let mut request = execute_request(&plan);
    request.wait = false;
    let id = client.execute(request).await.unwrap().into_inner().workflow_id;
    // Given the server is in the middle of the workflow
    watch_until(&mut client, &id, |state| state.tasks[1].status == "running").await;
    // When it is killed with SIGKILL and another one starts
    first.kill_9();
    let second = ServerChild::spawn(&db, &env).await;
    let mut client = WorkflowsClient::connect(second.url()).await.unwrap();
    // Then the new one finishes the workflow
    let last = watch_until(&mut client, &id, finished).await;
    assert_eq!(last.status, "completed", "{}", last.summary);
    // And no task's result is recorded twice
    let events = workflow_events(&pool, &id).await;
    for task in ["before", "during", "left", "right", "after"] {
        assert_eq!(count(&events, "TaskSucceeded", task), 1, "{task}");
        assert_eq!(
            count(&events, "TaskScheduled", task),
            1,
            "{task}: no retry was needed"
        );
    }
    assert_eq!(
        events.iter().filter(|(t, _, _)| t == "WorkflowCompleted").count(),
        1
    );
    // And the run row is gone with the workflow finished
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM workflow_runs")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(rows, 0);
    drop(second);
    pool.close().await;
    db.drop_database().await;
}

/// Polls (bounded) until `ready` holds for the events of workflow `id`.
async fn wait_for_events(
    pool: &PgPool,
    id: &str,
    what: &str,
    ready: impl Fn(&[(String, Value, DateTime<Utc>)]) -> bool,
) -> Vec<(String, Value, DateTime<Utc>)> {
    let waited = tokio::time::timeout(Duration::from_secs(60), async {
        loop {
            let events = workflow_events(pool, id).await;
            if ready(&events) {
                return events;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
    waited.await.unwrap_or_else(|_| panic!("{what} within 60 s"))
}

/// Servers whose `agent` recorded itself ready (`AgentStateChanged`).
async fn ready_servers(pool: &PgPool, agent: &str) -> i64 {
    sqlx::query_scalar(
        "SELECT count(DISTINCT event_data->>'server') FROM events
         WHERE stream_id = $1 AND event_type = 'AgentStateChanged' AND event_data->>'status' = 'ready'",
    )
    .bind(format!("agent-{agent}"))
    .fetch_one(pool)
    .await
    .expect("read the agent's states")
}

#[tokio::test]
async fn another_server_runs_a_killed_servers_task_within_seconds_at_default_settings() {
    let db = TestDb::create().await;
    let pool = db.pool().await;
    // The default agent_ack_wait_ms: the takeover a deployment gets.
    let env = [("DBSWARM_PROJECTIONS_ENABLED", "false")];
    let mut first = ServerChild::spawn(&db, &env).await;
    let mut client = WorkflowsClient::connect(first.url()).await.unwrap();
    // Long enough to be running still when the first server is killed.
    let plan = json!({"name": "takeover", "tasks": [
        probe("long", "schema", &[], json!({"delay_ms": 60_000})),
    ]});
    let mut request = execute_request(&plan);
    request.wait = false;
    let id = client.execute(request).await.unwrap().into_inner().workflow_id;
    // Given the only server is working on the task (its probe reports
    // progress as its simulated work starts)
    let progressed = |events: &[(String, Value, DateTime<Utc>)]| count(events, "TaskProgressed", "long");
    wait_for_events(&pool, &id, "the task running on the first server", |events| {
        progressed(events) >= 1
    })
    .await;
    // And a second server's agent is ready to take it
    let second = ServerChild::spawn(&db, &env).await;
    tokio::time::timeout(Duration::from_secs(60), async {
        while ready_servers(&pool, "schema").await < 2 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("the second server's schema agent ready within 60 s");
    // When the first is killed with SIGKILL
    let killed_at = Utc::now();
    first.kill_9();
    // Then the second runs the task (its start reports progress again)
    // within a few seconds: the ack wait, less the time since the last
    // extension of the killed server
    let events = wait_for_events(&pool, &id, "the task running on the second server", |events| {
        progressed(events) >= 2
    })
    .await;
    assert_eq!(count(&events, "TaskSucceeded", "long"), 0, "killed while running");
    let resumed_at = events
        .iter()
        .filter(|(t, data, _)| t == "TaskProgressed" && data["task_id"] == "long")
        .nth(1)
        .map(|(_, _, at)| *at)
        .expect("a second progress report");
    let takeover_ms = (resumed_at - killed_at).num_milliseconds();
    eprintln!("takeover after kill -9 at default settings: {takeover_ms} ms");
    assert!(
        (0..15_000).contains(&takeover_ms),
        "the task ran elsewhere {takeover_ms} ms after the kill"
    );
    // And the attempt is the same one: taken over, not retried
    assert_eq!(count(&events, "TaskScheduled", "long"), 1);
    let mut client = WorkflowsClient::connect(second.url()).await.unwrap();
    let cancelled = client
        .cancel(proto::CancelRequest {
            workflow_id: id.clone(),
            reason: "measured".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(cancelled.status, "cancelled");
    drop(second);
    pool.close().await;
    db.drop_database().await;
}

#[tokio::test]
async fn commands_waiting_in_the_queue_longer_than_the_ack_wait_are_not_redelivered() {
    let db = TestDb::create().await;
    let mut settings = with_workflows(settings_for(&db));
    // One worker and the shortest ack wait: the queued tasks wait several
    // ack waits for the worker.
    settings.agent_concurrency_max = Some(1);
    settings.agent_ack_wait_ms = Some(1_000);
    let server = TestServer::start(settings).await;
    let pool = db.pool().await;
    let mut client = workflows_client(&server).await;
    let tasks: Vec<Value> = (0..6)
        .map(|i| probe(&format!("q{i}"), "monitoring", &[], json!({"delay_ms": 700})))
        .collect();
    // When six independent tasks of one agent arrive at once
    let workflow = execute_and_wait(&mut client, &json!({"name": "queued", "tasks": tasks})).await;
    // Then they run one after another, each once
    assert_eq!(workflow.status, "completed", "{}", workflow.summary);
    let events = workflow_events(&pool, &workflow.workflow_id).await;
    for i in 0..6 {
        let task = format!("q{i}");
        assert_eq!(count(&events, "TaskStarted", &task), 1, "{task}");
        assert_eq!(count(&events, "TaskSucceeded", &task), 1, "{task}");
    }
    let first = time_of(&events, "TaskStarted", "q0").min(time_of(&events, "TaskStarted", "q5"));
    let last = (0..6)
        .map(|i| time_of(&events, "TaskSucceeded", &format!("q{i}")))
        .max()
        .unwrap();
    assert!(
        (last - first).num_milliseconds() > 3_000,
        "the last task waited several ack waits in the queue"
    );
    // And JetStream delivered each command once: the queued ones' acks
    // were extended while they waited, not only the running one's (every
    // delivery, redeliveries too, takes a consumer sequence number)
    let nats = async_nats::connect(nats_url()).await.unwrap();
    let tasks_stream = async_nats::jetstream::new(nats)
        .get_stream(db.relay_config().tasks_stream_name)
        .await
        .unwrap();
    let consumer = tasks_stream.consumer_info("agent_monitoring").await.unwrap();
    assert_eq!(consumer.delivered.consumer_sequence, 6, "{consumer:?}");
    assert_eq!(consumer.num_ack_pending, 0, "{consumer:?}");

    pool.close().await;
    server.stop().await;
    db.drop_database().await;
}

#[tokio::test]
async fn high_priority_tasks_are_taken_before_waiting_low_priority_ones() {
    let db = TestDb::create().await;
    let mut settings = with_workflows(settings_for(&db));
    // One worker per agent: the others wait in the priority queue.
    settings.agent_concurrency_max = Some(1);
    let server = TestServer::start(settings).await;
    let pool = db.pool().await;
    let mut client = workflows_client(&server).await;
    let run = |name: &str, delay_ms: u64, priority: proto::Priority| {
        let mut request = execute_request(&json!({"name": name, "tasks": [
            probe("work", "monitoring", &[], json!({"delay_ms": delay_ms}))
        ]}));
        request.wait = false;
        request.priority = priority as i32;
        request
    };
    // Given the only worker is busy
    let busy = client
        .execute(run("busy", 1000, proto::Priority::Normal))
        .await
        .unwrap()
        .into_inner();
    watch_until(&mut client, &busy.workflow_id, |state| {
        state.tasks[0].status == "running"
    })
    .await;
    // When low-priority tasks queue up, then a high-priority one
    let mut ids = Vec::new();
    for i in 0..3 {
        let low = client
            .execute(run(&format!("low{i}"), 0, proto::Priority::Low))
            .await
            .unwrap()
            .into_inner();
        ids.push(low.workflow_id);
    }
    let high = client
        .execute(run("high", 0, proto::Priority::High))
        .await
        .unwrap()
        .into_inner();
    ids.push(high.workflow_id.clone());
    // Then the high-priority task starts first once the worker is free
    let mut started = Vec::new();
    for id in &ids {
        watch_until(&mut client, id, finished).await;
        let events = workflow_events(&pool, id).await;
        started.push((time_of(&events, "TaskStarted", "work"), id.clone()));
    }
    started.sort();
    assert_eq!(started[0].1, high.workflow_id, "high priority first: {started:?}");

    pool.close().await;
    server.stop().await;
    db.drop_database().await;
}

#[tokio::test]
async fn a_plan_waits_for_unhealthy_agents_then_fails_naming_one() {
    let mut nats = PrivateNats::start().await;
    let db = TestDb::create().await;
    let mut settings = with_workflows(settings_for(&db));
    settings.nats_url = Some(nats.url());
    settings.agent_heartbeat_interval_ms = Some(200);
    settings.workflow_health_wait_ms = Some(500);
    let server = TestServer::start(settings).await;
    let mut client = workflows_client(&server).await;
    let plan = json!({"name": "gated", "tasks": [probe("a", "backup", &[], json!({}))]});
    // Given healthy agents, a plan runs
    let workflow = execute_and_wait(&mut client, &plan).await;
    assert_eq!(workflow.status, "completed");
    // When NATS goes away, the agents turn unhealthy
    nats.stop().await;
    let mut projections = projections_client(&server).await;
    let refused = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            let mut request = execute_request(&plan);
            request.wait = false;
            match client.execute(request).await {
                Err(status) if status.code() == Code::FailedPrecondition => return status,
                // Accepted: the agents have not noticed yet.
                _ => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        }
    })
    .await
    .expect("the health gate refuses while the agents are unhealthy");
    // Then the plan is refused after the bounded wait, naming the agent
    assert!(
        refused
            .message()
            .contains("agent 'backup' is not healthy after waiting 500 ms"),
        "{}",
        refused.message()
    );
    assert!(refused.message().contains("NATS"), "{}", refused.message());
    // And once NATS is back the agents recover and plans run again
    nats.restart().await;
    let workflow = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            if let Ok(response) = client.execute(execute_request(&plan)).await {
                return response.into_inner().workflow.unwrap();
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
    .await
    .expect("the agents recover");
    assert_eq!(workflow.status, "completed");
    let backup = get_row(&mut projections, "agents", "backup").await;
    assert!(backup.is_some());

    server.stop().await;
    db.drop_database().await;
}

#[tokio::test]
async fn a_plan_written_in_yaml_runs_and_bad_yaml_is_refused_with_its_line() {
    let db = TestDb::create().await;
    let server = TestServer::start(with_workflows(settings_for(&db))).await;
    let mut client = workflows_client(&server).await;
    let yaml = "
name: nightly checks
tasks:
  - id: first
    agent: integrity
    operation: probe
  - id: second
    agent: monitoring
    operation: probe
    dependencies: [first]
    timeout: 10s
    retries: 1
";
    let request = |text: &str| proto::ExecuteRequest {
        request: Some(proto::execute_request::Request::PlanYaml(text.into())),
        wait: true,
        ..Default::default()
    };
    let response = client.execute(request(yaml)).await.unwrap().into_inner();
    assert_eq!(response.planner, "plan");
    let workflow = response.workflow.unwrap();
    assert_eq!(workflow.status, "completed", "{}", workflow.summary);
    assert_eq!(workflow.name, "nightly checks");
    let bad = client
        .execute(request("tasks:\n  - id: [unclosed\n"))
        .await
        .unwrap_err();
    assert_eq!(bad.code(), Code::InvalidArgument);
    assert!(
        bad.message().contains("not a YAML plan") && bad.message().contains("line"),
        "{}",
        bad.message()
    );
    server.stop().await;
    db.drop_database().await;
}

#[tokio::test]
async fn an_agents_rate_limit_spaces_out_the_starts_of_its_tasks() {
    let db = TestDb::create().await;
    let mut settings = with_workflows(settings_for(&db));
    settings.agent_tasks_per_s_max = Some(4);
    let server = TestServer::start(settings).await;
    let pool = db.pool().await;
    let mut client = workflows_client(&server).await;
    // Eight independent tasks of one agent, all ready at once
    let tasks: Vec<Value> = (0..8)
        .map(|i| probe(&format!("t{i}"), "cache", &[], json!({})))
        .collect();
    let workflow = execute_and_wait(&mut client, &json!({"name": "burst", "tasks": tasks})).await;
    assert_eq!(workflow.status, "completed", "{}", workflow.summary);
    // At 4 per second the eighth is due 7 intervals (1.75 s) after the
    // first; the first may start late in its slot, so allow one interval
    let events = workflow_events(&pool, &workflow.workflow_id).await;
    let mut started: Vec<DateTime<Utc>> = events
        .iter()
        .filter(|(t, _, _)| t == "TaskStarted")
        .map(|(_, _, at)| *at)
        .collect();
    started.sort();
    let spread = *started.last().unwrap() - started[0];
    assert!(
        spread.num_milliseconds() >= 6 * 250,
        "starts spread over {spread}"
    );
    pool.close().await;
    server.stop().await;
    db.drop_database().await;
}

/// The plan of a dry run, sent back as a plan, is exactly the same plan:
/// for a JSON plan, a YAML plan and plain-English requests (rules). The
/// answer is in the input shape (dependencies by id, `timeout` as a
/// duration, never the stored form), and it runs as the plan it came from.
#[tokio::test]
async fn a_dry_run_answer_sent_back_is_the_same_plan() {
    use proto::execute_request::Request as Asked;
    let db = TestDb::create().await;
    let server = TestServer::start(with_workflows(settings_for(&db))).await;
    let mut client = workflows_client(&server).await;
    let json_plan = json!({"name": "checks", "tasks": [
        {"id": "last", "agent": "monitoring", "operation": "probe",
         "dependencies": ["first", "second"], "timeout": 90},
        probe("first", "integrity", &[], json!({})),
        {"id": "second", "agent": "backup", "operation": "probe", "dependencies": ["first"],
         "params": {"simulate": {"delay_ms": 10}}, "timeout": "1500ms", "retries": 2,
         "compensation": {"operation": "probe"}}
    ]});
    let yaml_plan = "
name: nightly checks
tasks:
  - {id: second, agent: monitoring, operation: probe, dependencies: [first], timeout: 10s, retries: 1}
  - {id: first, agent: integrity, operation: probe, timeout: 2h}
";
    let asked = [
        Asked::PlanJson(json_plan.to_string()),
        Asked::PlanYaml(yaml_plan.into()),
        Asked::Operation("back up the database then run migration add_user_roles".into()),
        Asked::Operation("Optimize slow queries in the users table and create an index on email".into()),
    ];
    let shared = client.clone();
    let dry = move |request: Asked| {
        let mut client = shared.clone();
        async move {
            client
                .execute(proto::ExecuteRequest {
                    request: Some(request),
                    dry_run: true,
                    ..Default::default()
                })
                .await
                .map(|answer| answer.into_inner())
        }
    };
    let mut answers = Vec::new();
    for request in asked {
        let what = format!("{request:?}");
        let first = dry(request).await.unwrap_or_else(|e| panic!("{what}: {e:?}"));
        let shown: Value = serde_json::from_str(&first.plan_json).unwrap();
        for task in shown["tasks"].as_array().unwrap() {
            assert!(task.get("timeout_ms").is_none(), "{what}: {task}");
            assert!(task["timeout"].is_string(), "{what}: {task}");
            for dependency in task["dependencies"].as_array().into_iter().flatten() {
                assert!(dependency.is_string(), "{what}: {task}");
            }
        }
        for again in [
            Asked::PlanJson(first.plan_json.clone()),
            Asked::PlanYaml(first.plan_json.clone()),
        ] {
            let again = dry(again).await.unwrap_or_else(|e| panic!("{what}: {e:?}"));
            assert_eq!(again.plan_json, first.plan_json, "{what}");
            assert_eq!(again.planner, "plan");
        }
        answers.push(first.plan_json);
    }
    let shown: Value = serde_json::from_str(&answers[0]).unwrap();
    assert_eq!(
        shown["tasks"][2],
        json!({"id": "last", "agent": "monitoring", "operation": "probe",
               "dependencies": ["first", "second"], "timeout": "90s", "retries": 0})
    );
    assert_eq!(
        shown["tasks"][1]["compensation"],
        json!({"operation": "probe", "params": {"simulate": {"delay_ms": 10}}})
    );

    // The answer runs as the plan it came from: under the same idempotency
    // key it is the same workflow (another plan would be ALREADY_EXISTS)
    let mut original = execute_request(&json_plan);
    original.idempotency_key = "dry-run-round-trip".into();
    let ran = client.execute(original.clone()).await.unwrap().into_inner();
    assert_eq!(ran.workflow.unwrap().status, "completed");
    let mut sent_back = original;
    sent_back.request = Some(Asked::PlanJson(answers[0].clone()));
    let again = client.execute(sent_back).await.unwrap().into_inner();
    assert!(!again.created);
    assert_eq!(again.workflow_id, ran.workflow_id);
    // A schedule shows its plan in the same shape
    let schedule = client
        .create_schedule(proto::CreateScheduleRequest {
            name: "checks".into(),
            cron: "@daily".into(),
            request: Some(proto::create_schedule_request::Request::PlanJson(
                answers[0].clone(),
            )),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(schedule.plan_json, answers[0]);

    // What dry runs used to answer (indices, milliseconds) is refused,
    // and so is an answer edited into a bad plan
    let mut stored_shape = shown.clone();
    stored_shape["tasks"][2]["dependencies"] = json!([0, 1]);
    stored_shape["tasks"][2]["timeout_ms"] = json!(90_000);
    let mut cyclic = shown.clone();
    cyclic["tasks"][0]["dependencies"] = json!(["last"]);
    let mut no_unit = shown;
    no_unit["tasks"][0]["timeout"] = json!("90");
    for (bad, expected) in [
        (stored_shape, "expected a string"),
        (cyclic, "cycle"),
        (no_unit, "needs a unit"),
    ] {
        let status = dry(Asked::PlanJson(bad.to_string())).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
        assert!(status.message().contains(expected), "{}", status.message());
    }
    server.stop().await;
    db.drop_database().await;
}
