//! Schedules through `dbswarm.v1.Workflows`: created with a cron
//! expression, shown with their next runs, fired once per period with two
//! servers running, paused, resumed and deleted; bad input refused.

use std::time::Duration;

use api::proto;
use serde_json::{Value, json};
use tests::*;
use tonic::Code;

use crate::orchestration::{probe, workflows_client};

fn every_minute(id: &str) -> proto::CreateScheduleRequest {
    let plan = json!({"name": "minutely probe", "tasks": [probe("ping", "monitoring", &[], json!({}))]});
    proto::CreateScheduleRequest {
        schedule_id: id.into(),
        name: "minutely probe".into(),
        cron: "* * * * *".into(),
        request: Some(proto::create_schedule_request::Request::PlanJson(
            plan.to_string(),
        )),
        ..Default::default()
    }
}

#[tokio::test]
async fn a_schedule_fires_once_per_period_with_two_servers_running() {
    let db = TestDb::create().await;
    let first = TestServer::start(with_workflows(settings_for(&db))).await;
    let second = TestServer::start(with_workflows(settings_for(&db))).await;
    let pool = db.pool().await;
    let mut client = workflows_client(&first).await;
    let mut other = workflows_client(&second).await;

    // Given a schedule that fires every minute
    let created = client
        .create_schedule(every_minute("minutely"))
        .await
        .unwrap()
        .into_inner();
    // Then its next runs are visible, a minute apart
    assert_eq!(created.next_runs.len(), 5);
    let runs: Vec<chrono::DateTime<chrono::Utc>> =
        created.next_runs.iter().map(|r| r.parse().unwrap()).collect();
    assert!(
        runs.windows(2).all(|w| (w[1] - w[0]).num_seconds() == 60),
        "{runs:?}"
    );
    assert_eq!(created.cron, "* * * * *");
    // When its first period passes, with both servers up
    let fired = tokio::time::timeout(Duration::from_secs(90), async {
        loop {
            let schedule = other
                .get_schedule(proto::ScheduleRequest {
                    schedule_id: "minutely".into(),
                })
                .await
                .unwrap()
                .into_inner();
            if schedule.fired_count >= 1 {
                return schedule;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    })
    .await
    .expect("the schedule fires within its period");
    // Then it fired once, and started one workflow, which completes
    tokio::time::sleep(Duration::from_secs(3)).await;
    let firings: Vec<Value> = sqlx::query_scalar(
        "SELECT event_data FROM events WHERE stream_id = 'schedule-minutely' AND event_type = 'ScheduleFired'",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    let due: Vec<u64> = firings.iter().map(|f| f["due_ms"].as_u64().unwrap()).collect();
    let mut distinct = due.clone();
    distinct.dedup();
    assert_eq!(due, distinct, "one firing per period");
    let started: i64 = sqlx::query_scalar("SELECT count(*) FROM events WHERE event_type = 'WorkflowStarted'")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(started as usize, firings.len(), "one workflow per firing");
    let workflow = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            let workflow = client
                .get(proto::WorkflowRequest {
                    workflow_id: fired.last_workflow_id.clone(),
                })
                .await
                .unwrap()
                .into_inner();
            if workflow.status == "completed" {
                return workflow;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await
    .expect("the scheduled workflow completes");
    assert_eq!(workflow.name, "minutely probe");

    // Pause: no next runs; resume: next runs again; delete: gone from the list
    let paused = client
        .pause_schedule(proto::ScheduleRequest {
            schedule_id: "minutely".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(paused.paused && paused.next_runs.is_empty());
    let resumed = client
        .resume_schedule(proto::ScheduleRequest {
            schedule_id: "minutely".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!resumed.paused && resumed.next_runs.len() == 5);
    let listed = client
        .list_schedules(proto::ListSchedulesRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.schedules.len(), 1);
    client
        .delete_schedule(proto::ScheduleRequest {
            schedule_id: "minutely".into(),
        })
        .await
        .unwrap();
    let listed = client
        .list_schedules(proto::ListSchedulesRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(listed.schedules.is_empty());
    let deleted = client
        .pause_schedule(proto::ScheduleRequest {
            schedule_id: "minutely".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(deleted.code(), Code::NotFound, "{deleted:?}");

    pool.close().await;
    first.stop().await;
    second.stop().await;
    db.drop_database().await;
}

#[tokio::test]
async fn bad_schedules_are_refused_with_the_problem_named() {
    let db = TestDb::create().await;
    let server = TestServer::start(with_workflows(settings_for(&db))).await;
    let mut client = workflows_client(&server).await;
    let shared = client.clone();
    let refused = |request: proto::CreateScheduleRequest| {
        let mut client = shared.clone();
        async move { client.create_schedule(request).await.unwrap_err() }
    };
    let mut bad_cron = every_minute("a");
    bad_cron.cron = "61 * * * *".into();
    let status = refused(bad_cron).await;
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(
        status.message().contains("minute field: '61' is outside 0-59"),
        "{}",
        status.message()
    );
    let mut never = every_minute("b");
    never.cron = "0 0 30 2 *".into();
    let status = refused(never).await;
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    let mut bad_id = every_minute("not an id!");
    bad_id.schedule_id = "not an id!".into();
    let status = refused(bad_id).await;
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(status.message().contains("schedule id"), "{}", status.message());
    let mut bad_policy = every_minute("c");
    bad_policy.missed_run_policy = 7;
    assert_eq!(refused(bad_policy).await.code(), Code::InvalidArgument);
    let mut bad_plan = every_minute("d");
    bad_plan.request = Some(proto::create_schedule_request::Request::PlanJson("{}".into()));
    assert_eq!(refused(bad_plan).await.code(), Code::InvalidArgument);
    // The daily backup, in plain English, is accepted and shown
    let mut nightly = every_minute("nightly");
    nightly.cron = "@daily".into();
    nightly.missed_run_policy = proto::MissedRunPolicy::MissedRunCatchUpOnce as i32;
    nightly.request = Some(proto::create_schedule_request::Request::Operation(
        "back up the database".into(),
    ));
    let created = client
        .create_schedule(nightly.clone())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(created.cron, "@daily");
    assert!(
        created.next_runs[0].ends_with("T00:00:00Z"),
        "{:?}",
        created.next_runs
    );
    let again = refused(nightly).await;
    assert_eq!(again.code(), Code::AlreadyExists);
    let missing = client
        .get_schedule(proto::ScheduleRequest {
            schedule_id: "ghost".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(missing.code(), Code::NotFound);

    server.stop().await;
    db.drop_database().await;
}

/// `name` is required: a schedule without one (or with only whitespace)
/// is refused with INVALID_ARGUMENT naming the field, before its plan is
/// made, and nothing is created.
#[tokio::test]
async fn a_schedule_without_a_name_is_refused_naming_the_field() {
    use tonic_types::StatusExt;
    let db = TestDb::create().await;
    let server = TestServer::start(settings_for(&db)).await;
    let mut client = workflows_client(&server).await;
    let mut bad_plan = every_minute("bad-plan");
    bad_plan.request = Some(proto::create_schedule_request::Request::PlanJson("{}".into()));
    let mut english = every_minute("english");
    english.request = Some(proto::create_schedule_request::Request::Operation(
        "check integrity of orders".into(),
    ));
    for (id, mut request) in [
        ("plain", every_minute("plain")),
        ("whitespace", every_minute("whitespace")),
        ("bad-plan", bad_plan),
        ("english", english),
    ] {
        request.name = if id == "whitespace" {
            " \t ".into()
        } else {
            String::new()
        };
        let status = client.create_schedule(request).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{id}: {status:?}");
        assert_eq!(
            status.message(),
            "name: the schedule name is required: use 1 to 100 characters",
            "{id}"
        );
        let bad_request = status.get_details_bad_request().expect("BadRequest detail");
        assert_eq!(bad_request.field_violations[0].field, "name", "{id}");
        let missing = client
            .get_schedule(proto::ScheduleRequest {
                schedule_id: id.into(),
            })
            .await
            .unwrap_err();
        assert_eq!(missing.code(), Code::NotFound, "{id}");
    }
    // The other fields are named too
    let mut bad_cron = every_minute("cron");
    bad_cron.cron = "61 * * * *".into();
    let status = client.create_schedule(bad_cron).await.unwrap_err();
    assert_eq!(
        status.get_details_bad_request().unwrap().field_violations[0].field,
        "cron"
    );
    let status = client
        .create_schedule(every_minute("not an id!"))
        .await
        .unwrap_err();
    assert_eq!(
        status.get_details_bad_request().unwrap().field_violations[0].field,
        "schedule_id"
    );
    assert!(
        client
            .list_schedules(proto::ListSchedulesRequest {})
            .await
            .unwrap()
            .into_inner()
            .schedules
            .is_empty()
    );
    server.stop().await;
    db.drop_database().await;
}
