//! Given a workflow's events, when a command arrives, then these events.

use super::*;
use crate::workflow::plan::{Catalogue, OperationSpec};
use serde_json::json;

fn catalogue() -> Catalogue {
    [
        ("backup", "create"),
        ("backup", "delete"),
        ("schema", "apply"),
        ("schema", "rollback"),
        ("integrity", "check"),
        ("cache", "invalidate"),
        ("eventsourcing", "rebuild_projection"),
    ]
    .into_iter()
    .fold(Catalogue::default(), |c, (agent, op)| {
        c.with(agent, op, OperationSpec::default())
    })
}

/// backup -> migration -> (validate, invalidate) -> rebuild.
fn migration_plan(migration_retries: u32, validate_retries: u32) -> Plan {
    Plan::from_json(
        &json!({"name": "Database Migration", "tasks": [
            {"id": "backup", "agent": "backup", "operation": "create", "timeout": "10s",
             "compensation": {"operation": "delete"}},
            {"id": "migrate", "agent": "schema", "operation": "apply", "dependencies": ["backup"],
             "retries": migration_retries, "timeout": "10s", "compensation": {"operation": "rollback"}},
            {"id": "validate", "agent": "integrity", "operation": "check", "dependencies": ["migrate"],
             "retries": validate_retries, "timeout": "10s"},
            {"id": "invalidate", "agent": "cache", "operation": "invalidate", "dependencies": ["migrate"]},
            {"id": "rebuild", "agent": "eventsourcing", "operation": "rebuild_projection",
             "dependencies": ["validate", "invalidate"]}
        ]})
        .to_string(),
        &catalogue(),
    )
    .unwrap()
}

const T0: u64 = 1_000_000;

fn at(now_ms: u64) -> Clock {
    Clock { now_ms, jitter: 0.5 }
}

/// Given: the state after `history`.
fn given(history: &[WorkflowEvent]) -> WorkflowState {
    history.iter().fold(WorkflowState::default(), evolve)
}

/// When: `command` at `clock`; returns the events and the history after.
fn when(history: &mut Vec<WorkflowEvent>, command: WorkflowCommand, clock: Clock) -> Vec<WorkflowEvent> {
    let events = decide(&given(history), command, clock).expect("decided");
    history.extend(events.clone());
    events
}

fn types(events: &[WorkflowEvent]) -> Vec<String> {
    events
        .iter()
        .map(|e| match e {
            WorkflowEvent::TaskScheduled(s) => format!("TaskScheduled {} #{}", s.task_id, s.attempt),
            WorkflowEvent::TaskSucceeded(s) => format!("TaskSucceeded {}", s.attempt.task_id),
            WorkflowEvent::TaskFailed(s) => {
                format!("TaskFailed {} #{}", s.attempt.task_id, s.attempt.attempt)
            }
            WorkflowEvent::TaskTimedOut(s) => format!("TaskTimedOut {} #{}", s.task_id, s.attempt),
            WorkflowEvent::TaskRetried(s) => format!("TaskRetried {} #{}", s.task_id, s.next_attempt),
            WorkflowEvent::CompensationStarted(s) => format!("CompensationStarted {}", s.task_id),
            WorkflowEvent::CompensationDone(s) => format!("CompensationDone {} ok={}", s.task_id, s.ok),
            other => other.event_type().to_owned(),
        })
        .collect()
}

fn start(plan: Plan) -> Vec<WorkflowEvent> {
    let mut history = Vec::new();
    let events = when(
        &mut history,
        WorkflowCommand::Start {
            workflow_id: "wf-1".into(),
            plan,
            priority: Priority::High,
        },
        at(T0),
    );
    assert_eq!(types(&events), ["WorkflowStarted", "TaskScheduled backup #1"]);
    history
}

fn succeed(task: &str, attempt: u32) -> WorkflowCommand {
    WorkflowCommand::TaskSucceeded {
        task_id: task.into(),
        attempt,
        result: json!({"ok": task}),
    }
}

/// A failure another attempt may get past (a dependency did not answer).
fn fail(task: &str, attempt: u32) -> WorkflowCommand {
    fail_with(task, attempt, Code::Unavailable)
}

fn fail_with(task: &str, attempt: u32, code: Code) -> WorkflowCommand {
    WorkflowCommand::TaskFailed {
        task_id: task.into(),
        attempt,
        error: OperationError::new(code, format!("{task} broke")),
    }
}

#[test]
fn a_task_failing_with_a_code_that_is_not_retryable_fails_at_once_despite_retries_left() {
    for code in [
        Code::InvalidArgument,
        Code::NotFound,
        Code::AlreadyExists,
        Code::FailedPrecondition,
        Code::Internal,
    ] {
        // Given: a migration with 2 retries, its backup done
        let mut history = start(migration_plan(2, 0));
        when(&mut history, succeed("backup", 1), at(T0));
        // When: the migration fails with a code another attempt cannot get past
        let failed = when(&mut history, fail_with("migrate", 1, code), at(T0 + 10));
        // Then: no retry; the task and the workflow carry the code
        assert_eq!(
            types(&failed),
            ["TaskFailed migrate #1", "CompensationStarted backup"],
            "{code}"
        );
        let state = given(&history);
        assert_eq!(state.tasks[1].error_code, Some(code));
        assert_eq!(state.error_code, Some(code));
        let WorkflowEvent::TaskFailed(event) = &failed[0] else {
            panic!()
        };
        assert_eq!(event.code, code);
    }
}

#[test]
fn a_task_failing_with_a_retryable_code_is_retried() {
    for code in [Code::Unavailable, Code::Timeout, Code::Conflict] {
        // Given: a migration with a retry, its backup done
        let mut history = start(migration_plan(1, 0));
        when(&mut history, succeed("backup", 1), at(T0));
        // When: it fails with a retryable code
        let failed = when(&mut history, fail_with("migrate", 1, code), at(T0 + 10));
        // Then: it is retried and the workflow keeps running
        assert_eq!(
            types(&failed),
            ["TaskFailed migrate #1", "TaskRetried migrate #2"]
        );
        assert_eq!(given(&history).status, WorkflowStatus::Running);
        assert_eq!(given(&history).error_code, None);
    }
}

#[test]
fn a_failure_stored_before_codes_existed_reads_as_internal() {
    // Given: a TaskFailed event as stored before it had a code
    let stored = json!({"workflow_id": "w", "task_id": "t", "agent": "a", "attempt": 1, "error": "boom"});
    // When: it is read back
    let event = WorkflowEvent::from_stored("TaskFailed", stored).unwrap();
    // Then: its code is internal (not retryable)
    let WorkflowEvent::TaskFailed(failed) = event else {
        panic!()
    };
    assert_eq!(failed.code, Code::Internal);
    assert_eq!(failed.error, "boom");
}

#[test]
fn tasks_start_when_their_dependencies_succeeded_and_independent_ones_in_parallel() {
    let mut history = start(migration_plan(0, 0));
    assert_eq!(
        types(&when(&mut history, succeed("backup", 1), at(T0 + 1))),
        ["TaskSucceeded backup", "TaskScheduled migrate #1"]
    );
    assert_eq!(
        types(&when(&mut history, succeed("migrate", 1), at(T0 + 2))),
        [
            "TaskSucceeded migrate",
            "TaskScheduled validate #1",
            "TaskScheduled invalidate #1"
        ]
    );
    assert_eq!(
        types(&when(&mut history, succeed("validate", 1), at(T0 + 3))),
        ["TaskSucceeded validate"]
    );
    assert_eq!(
        types(&when(&mut history, succeed("invalidate", 1), at(T0 + 4))),
        ["TaskSucceeded invalidate", "TaskScheduled rebuild #1"]
    );
    let done = when(&mut history, succeed("rebuild", 1), at(T0 + 5));
    assert_eq!(types(&done), ["TaskSucceeded rebuild", "WorkflowCompleted"]);
    let state = given(&history);
    assert_eq!(state.status, WorkflowStatus::Completed);
    assert_eq!(state.tasks[4].result, Some(json!({"ok": "rebuild"})));
    let WorkflowEvent::TaskScheduled(scheduled) = &history[1] else {
        panic!()
    };
    assert_eq!(scheduled.priority, Priority::High);
    assert_eq!(scheduled.deadline_ms, T0 + 10_000);
}

#[test]
fn a_result_delivered_twice_is_recorded_once() {
    let mut history = start(migration_plan(0, 0));
    when(&mut history, succeed("backup", 1), at(T0 + 1));
    assert!(when(&mut history, succeed("backup", 1), at(T0 + 2)).is_empty());
    assert!(when(&mut history, fail("backup", 1), at(T0 + 3)).is_empty());
    let unknown = decide(&given(&history), succeed("nope", 1), at(T0)).unwrap_err();
    assert!(matches!(unknown, WorkflowError::UnknownTask { .. }));
}

#[test]
fn a_task_that_fails_twice_then_succeeds_is_retried_with_growing_backoff() {
    let mut history = start(migration_plan(2, 0));
    when(&mut history, succeed("backup", 1), at(T0));
    let failed = when(&mut history, fail("migrate", 1), at(T0 + 10));
    assert_eq!(
        types(&failed),
        ["TaskFailed migrate #1", "TaskRetried migrate #2"]
    );
    let WorkflowEvent::TaskRetried(first) = &failed[1] else {
        panic!()
    };
    assert_eq!(given(&history).status, WorkflowStatus::Running);
    // Not yet due: nothing.
    assert!(when(&mut history, WorkflowCommand::Tick, at(first.due_ms - 1)).is_empty());
    assert_eq!(
        types(&when(&mut history, WorkflowCommand::Tick, at(first.due_ms))),
        ["TaskScheduled migrate #2"]
    );
    let again = when(&mut history, fail("migrate", 2), at(first.due_ms + 5));
    let WorkflowEvent::TaskRetried(second) = &again[1] else {
        panic!()
    };
    assert!(
        second.backoff_ms > first.backoff_ms,
        "{} then {}",
        first.backoff_ms,
        second.backoff_ms
    );
    when(&mut history, WorkflowCommand::Tick, at(second.due_ms));
    // A late answer of an earlier attempt changes nothing.
    assert!(when(&mut history, succeed("migrate", 1), at(second.due_ms + 1)).is_empty());
    assert_eq!(
        types(&when(&mut history, succeed("migrate", 3), at(second.due_ms + 2))),
        [
            "TaskSucceeded migrate",
            "TaskScheduled validate #1",
            "TaskScheduled invalidate #1"
        ]
    );
}

#[test]
fn a_task_that_always_fails_fails_the_workflow_after_compensating_in_reverse_order() {
    let mut history = start(migration_plan(0, 0));
    when(&mut history, succeed("backup", 1), at(T0));
    when(&mut history, succeed("migrate", 1), at(T0 + 1));
    // validate fails for good while invalidate still runs: wait for it.
    assert_eq!(
        types(&when(&mut history, fail("validate", 1), at(T0 + 2))),
        ["TaskFailed validate #1"]
    );
    assert_eq!(given(&history).status, WorkflowStatus::Failing);
    // invalidate finishes; nothing new starts (rebuild is not scheduled);
    // the migration is undone first, then the backup.
    assert_eq!(
        types(&when(&mut history, succeed("invalidate", 1), at(T0 + 3))),
        ["TaskSucceeded invalidate", "CompensationStarted migrate"]
    );
    let ok = |task: &str| WorkflowCommand::CompensationFinished {
        task_id: task.into(),
        ok: true,
        error: None,
    };
    assert_eq!(
        types(&when(&mut history, ok("migrate"), at(T0 + 4))),
        ["CompensationDone migrate ok=true", "CompensationStarted backup"]
    );
    assert!(
        when(&mut history, ok("migrate"), at(T0 + 5)).is_empty(),
        "a compensation result counts once"
    );
    let end = when(&mut history, ok("backup"), at(T0 + 6));
    assert_eq!(types(&end), ["CompensationDone backup ok=true", "WorkflowFailed"]);
    let WorkflowEvent::WorkflowFailed(failed) = &end[1] else {
        panic!()
    };
    assert_eq!(failed.tasks_compensated, 2);
    assert_eq!(failed.error, "task 'validate' failed: validate broke");
    assert_eq!(given(&history).status, WorkflowStatus::Failed);
}

#[test]
fn an_attempt_past_its_timeout_times_out_and_a_slow_compensation_too() {
    let mut history = start(migration_plan(0, 0));
    when(&mut history, succeed("backup", 1), at(T0));
    // migrate was scheduled at T0 with a 10 s timeout.
    assert!(when(&mut history, WorkflowCommand::Tick, at(T0 + 9_999)).is_empty());
    assert_eq!(
        types(&when(&mut history, WorkflowCommand::Tick, at(T0 + 10_000))),
        ["TaskTimedOut migrate #1", "CompensationStarted backup"]
    );
    assert!(
        when(&mut history, succeed("migrate", 1), at(T0 + 10_001)).is_empty(),
        "too late"
    );
    let end = when(&mut history, WorkflowCommand::Tick, at(T0 + 20_000));
    assert_eq!(
        types(&end),
        ["CompensationDone backup ok=false", "WorkflowFailed"]
    );
    assert_eq!(
        given(&history).error.as_deref(),
        Some("task 'migrate' failed: attempt 1 timed out")
    );
}

#[test]
fn cancel_names_the_running_tasks_and_later_results_are_ignored() {
    let mut history = start(migration_plan(0, 0));
    when(&mut history, succeed("backup", 1), at(T0));
    when(
        &mut history,
        WorkflowCommand::TaskStarted {
            task_id: "migrate".into(),
            attempt: 1,
        },
        at(T0 + 1),
    );
    let cancelled = when(
        &mut history,
        WorkflowCommand::Cancel {
            reason: "operator".into(),
        },
        at(T0 + 2),
    );
    let [WorkflowEvent::WorkflowCancelled(cancel)] = cancelled.as_slice() else {
        panic!("{cancelled:?}")
    };
    assert_eq!(cancel.running_tasks, ["migrate"]);
    assert!(when(&mut history, succeed("migrate", 1), at(T0 + 3)).is_empty());
    let again = decide(
        &given(&history),
        WorkflowCommand::Cancel { reason: "x".into() },
        at(T0 + 4),
    )
    .unwrap_err();
    assert!(matches!(
        again,
        WorkflowError::Finished {
            status: WorkflowStatus::Cancelled,
            ..
        }
    ));
}

#[test]
fn starting_twice_or_commanding_an_unstarted_workflow_is_refused() {
    let history = start(migration_plan(0, 0));
    let again = decide(
        &given(&history),
        WorkflowCommand::Start {
            workflow_id: "wf-1".into(),
            plan: migration_plan(0, 0),
            priority: Priority::Normal,
        },
        at(T0),
    );
    assert_eq!(again.unwrap_err(), WorkflowError::AlreadyStarted("wf-1".into()));
    assert_eq!(
        decide(&WorkflowState::default(), WorkflowCommand::Tick, at(T0)).unwrap_err(),
        WorkflowError::NotStarted
    );
}

#[test]
fn events_are_stored_as_type_and_data_and_read_back() {
    let history = start(migration_plan(0, 0));
    for event in &history {
        let data = event.data();
        assert_eq!(data["workflow_id"], "wf-1", "the read model keys on it");
        assert_eq!(
            WorkflowEvent::from_stored(event.event_type(), data).unwrap(),
            *event
        );
    }
    assert!(WorkflowEvent::from_stored("TaskScheduled", json!({"x": 1})).is_err());
}

#[test]
fn backoff_doubles_up_to_a_cap_and_half_of_it_is_jitter() {
    assert_eq!(retry_backoff_ms(2, 0.0), 250);
    assert_eq!(retry_backoff_ms(2, 1.0), 500);
    assert_eq!(retry_backoff_ms(3, 1.0), 1000);
    assert_eq!(retry_backoff_ms(30, 1.0), RETRY_BACKOFF_MS_MAX);
    assert_eq!(retry_backoff_ms(30, 0.0), RETRY_BACKOFF_MS_MAX / 2);
}

// ---------------------------------------------------------------- what a state waits on

#[test]
fn a_state_waits_on_the_commands_of_its_running_attempts_and_is_due_at_the_earliest_deadline() {
    let mut history = Vec::new();
    when(
        &mut history,
        WorkflowCommand::Start {
            workflow_id: "w".into(),
            plan: migration_plan(1, 0),
            priority: Priority::High,
        },
        at(T0),
    );
    // Given the backup is scheduled
    let state = given(&history);
    let commands = state.outstanding_commands();
    assert_eq!(commands.len(), 1);
    let backup = &commands[0];
    assert_eq!(
        (
            backup.task_id.as_str(),
            backup.kind,
            backup.attempt,
            backup.priority
        ),
        ("backup", crate::workflow::TaskKind::Run, 1, Priority::High)
    );
    assert_eq!(backup.message_id(), "w/backup/1/run");
    assert_eq!(backup.deadline_ms, T0 + 10_000);
    assert_eq!(state.next_due_ms(), Some(T0 + 10_000));
    assert!(
        state
            .outstanding_command("backup", crate::workflow::TaskKind::Run, 2)
            .is_none()
    );
    // When it succeeds and the migration fails once, the retry is what is due
    when(
        &mut history,
        WorkflowCommand::TaskSucceeded {
            task_id: "backup".into(),
            attempt: 1,
            result: json!({}),
        },
        at(T0 + 100),
    );
    when(
        &mut history,
        WorkflowCommand::TaskFailed {
            task_id: "migrate".into(),
            attempt: 1,
            error: OperationError::unavailable("lock timeout"),
        },
        at(T0 + 200),
    );
    let state = given(&history);
    assert!(
        state.outstanding_commands().is_empty(),
        "nothing runs while waiting to retry"
    );
    let due = state.next_due_ms().expect("the retry is due");
    assert_eq!(due, T0 + 200 + retry_backoff_ms(2, 0.5));
    // And a finished workflow waits on nothing
    when(
        &mut history,
        WorkflowCommand::Cancel {
            reason: "stop".into(),
        },
        at(T0 + 300),
    );
    let state = given(&history);
    assert!(state.outstanding_commands().is_empty());
    assert_eq!(state.next_due_ms(), None);
}

#[test]
fn a_result_reads_back_from_its_stored_text_exactly() {
    // Results are stored as JSON text and folded again when a workflow is
    // loaded: a float must come back as the same number (serde_json's
    // float_roundtrip), or a loaded state differs from the one in memory.
    let result = json!({"postgres_ms": 0.392392, "nats_ms": 0.5718500000000001});
    let event = WorkflowEvent::TaskSucceeded(TaskSucceeded {
        attempt: TaskAttempt {
            workflow_id: "w".into(),
            task_id: "t".into(),
            agent: "a".into(),
            attempt: 1,
        },
        result,
    });
    let stored = event.data().to_string();
    let loaded = WorkflowEvent::from_stored("TaskSucceeded", serde_json::from_str(&stored).unwrap()).unwrap();
    assert_eq!(loaded, event);
}
