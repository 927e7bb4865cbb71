//! The workflow store against the real event store: a workflow's events
//! are recorded in its stream under optimistic concurrency, concurrent
//! outcomes are all recorded once, and the built-in `workflows` read model
//! follows.

use domain::Limits;
use domain::workflow::{
    Catalogue, Clock, OperationSpec, Plan, Priority, WorkflowCommand, WorkflowEvent, WorkflowStatus,
};
use event_store::{AppendConfig, Appender, ReadConfig, Reader};
use sagas::{SagaError, WorkflowStore};
use serde_json::json;
use tests::*;
use uuid::Uuid;

use crate::projections::{caught_up, get_row, projections_client, wait_for_status};

fn plan() -> Plan {
    let catalogue = ["create", "apply", "check", "invalidate", "rebuild"]
        .into_iter()
        .fold(Catalogue::default(), |c, op| {
            c.with("probe", op, OperationSpec::default())
        });
    Plan::from_json(
        &json!({"name": "Database Migration", "tasks": [
            {"id": "backup", "agent": "probe", "operation": "create"},
            {"id": "migrate", "agent": "probe", "operation": "apply", "dependencies": ["backup"]},
            {"id": "validate", "agent": "probe", "operation": "check", "dependencies": ["migrate"]},
            {"id": "invalidate", "agent": "probe", "operation": "invalidate", "dependencies": ["migrate"]},
            {"id": "rebuild", "agent": "probe", "operation": "rebuild", "dependencies": ["validate", "invalidate"]}
        ]})
        .to_string(),
        &catalogue,
    )
    .unwrap()
}

fn now() -> Clock {
    Clock {
        now_ms: event_store::clock::now_ms(),
        jitter: 0.5,
    }
}

fn start(id: Uuid) -> WorkflowCommand {
    WorkflowCommand::Start {
        workflow_id: id.to_string(),
        plan: plan(),
        priority: Priority::Normal,
    }
}

fn succeeded(task: &str) -> WorkflowCommand {
    WorkflowCommand::TaskSucceeded {
        task_id: task.into(),
        attempt: 1,
        result: json!({"task": task}),
    }
}

#[tokio::test]
async fn a_workflow_is_recorded_in_its_stream_and_concurrent_outcomes_count_once() {
    let db = TestDb::create().await;
    let server = TestServer::start(settings_for(&db)).await;
    let pool = db.pool().await;
    let (appender, committers) = Appender::start(pool.clone(), AppendConfig::default());
    let store = WorkflowStore::new(
        appender,
        Reader::new(pool.clone(), ReadConfig::default()),
        Limits::default(),
    );
    let uuid = Uuid::new_v4();
    let id = &uuid.to_string();
    // Given a started workflow
    let started = store.execute(id, start(uuid), now).await.unwrap();
    assert_eq!(started.events.len(), 2, "started and its first task scheduled");
    // Starting it again is refused
    let again = store.execute(id, start(uuid), now).await.unwrap_err();
    assert!(matches!(again, SagaError::Workflow(_)), "{again}");
    store
        .execute(&id.to_string(), succeeded("backup"), now)
        .await
        .unwrap();
    store
        .execute(&id.to_string(), succeeded("migrate"), now)
        .await
        .unwrap();
    // When two outcomes arrive at once (and one of them twice)
    let (a, b, c) = tokio::join!(
        store.execute(id, succeeded("validate"), now),
        store.execute(id, succeeded("invalidate"), now),
        store.execute(id, succeeded("invalidate"), now),
    );
    let recorded = [a.unwrap().events, b.unwrap().events, c.unwrap().events];
    // Then each is recorded once, and the task after both is scheduled once
    let scheduled_rebuild = recorded
        .iter()
        .flatten()
        .filter(|e| matches!(e, WorkflowEvent::TaskScheduled(s) if s.task_id == "rebuild"))
        .count();
    assert_eq!(scheduled_rebuild, 1);
    assert_eq!(
        recorded.iter().filter(|events| events.is_empty()).count(),
        1,
        "the duplicate decided nothing"
    );
    store
        .execute(&id.to_string(), succeeded("rebuild"), now)
        .await
        .unwrap();
    let (state, version) = store.load(id).await.unwrap();
    assert_eq!(state.status, WorkflowStatus::Completed);
    assert_eq!(
        version, 12,
        "started, 5 x (scheduled, succeeded), completed: nothing twice"
    );
    // And the built-in read model shows it
    let mut client = projections_client(&server).await;
    wait_for_status(&mut client, "workflows", "catching up", caught_up).await;
    let row = get_row(&mut client, "workflows", id).await.expect("row");
    assert_eq!(row["state"], "completed");
    assert_eq!(row["tasks_scheduled"], 5);
    assert_eq!(row["tasks_succeeded"], 5);
    assert_eq!(row["name"], "Database Migration");
    // Commands for a workflow that does not exist are refused
    let missing = store
        .execute(&Uuid::new_v4().to_string(), succeeded("backup"), now)
        .await
        .unwrap_err();
    assert!(matches!(missing, SagaError::NotFound { .. }), "{missing}");
    drop(store);
    for committer in committers {
        committer.await.unwrap();
    }
    pool.close().await;
    server.stop().await;
    db.drop_database().await;
}
