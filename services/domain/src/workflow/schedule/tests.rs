//! Given a schedule's events, when a command arrives at a time, then these
//! events.

use super::cron::utc_ms;
use super::*;
use crate::workflow::plan::{Catalogue, OperationSpec};
use serde_json::json;

fn catalogue() -> Catalogue {
    [("backup", "create"), ("backup", "verify")]
        .into_iter()
        .fold(Catalogue::default(), |c, (agent, op)| {
            c.with(agent, op, OperationSpec::default())
        })
}

fn backup_plan() -> Plan {
    Plan::from_json(
        &json!({"name": "Daily backup", "tasks": [
            {"id": "backup", "agent": "backup", "operation": "create"},
            {"id": "verify", "agent": "backup", "operation": "verify", "dependencies": ["backup"]}
        ]})
        .to_string(),
        &catalogue(),
    )
    .unwrap()
}

/// A UTC minute as ms since the epoch.
fn at(y: i64, m: u32, d: u32, h: u32, mi: u32) -> u64 {
    utc_ms(y, m, d, h, mi).expect("a valid date")
}

const ID: &str = "nightly-backup";

fn create(cron: &str, policy: MissedRunPolicy) -> ScheduleCommand {
    ScheduleCommand::Create {
        schedule_id: ID.into(),
        name: "Nightly backup".into(),
        cron: cron.into(),
        plan: backup_plan(),
        priority: Priority::High,
        policy,
    }
}

/// Given: the state after `history`.
fn given(history: &[ScheduleEvent]) -> ScheduleState {
    history.iter().fold(ScheduleState::default(), evolve)
}

/// When: `command` at `now_ms`; returns the events and extends the history.
fn when(history: &mut Vec<ScheduleEvent>, command: ScheduleCommand, now_ms: u64) -> Vec<ScheduleEvent> {
    let events = decide(&given(history), command, now_ms).expect("decided");
    history.extend(events.clone());
    events
}

fn refused(history: &[ScheduleEvent], command: ScheduleCommand, now_ms: u64) -> ScheduleError {
    decide(&given(history), command, now_ms).expect_err("refused")
}

/// A daily 02:00 schedule created on 2025-03-01 at 01:00.
fn daily(policy: MissedRunPolicy) -> Vec<ScheduleEvent> {
    let mut history = Vec::new();
    when(&mut history, create("0 2 * * *", policy), at(2025, 3, 1, 1, 0));
    history
}

fn fired(events: &[ScheduleEvent]) -> Vec<&ScheduleFired> {
    events
        .iter()
        .filter_map(|e| match e {
            ScheduleEvent::ScheduleFired(f) => Some(f),
            _ => None,
        })
        .collect()
}

fn types(events: &[ScheduleEvent]) -> Vec<&'static str> {
    events.iter().map(ScheduleEvent::event_type).collect()
}

// ---------------------------------------------------------------- create

#[test]
fn create_sets_the_first_due_time_after_now() {
    let history = daily(MissedRunPolicy::Skip);
    let ScheduleEvent::ScheduleCreated(created) = &history[0] else {
        panic!("{history:?}")
    };
    assert_eq!(created.cron, "0 2 * * *");
    assert_eq!(created.next_due_ms, at(2025, 3, 1, 2, 0));
    let state = given(&history);
    assert!(state.created && state.is_active());
    assert_eq!(state.name, "Nightly backup");
    assert_eq!(state.priority, Priority::High);
    assert_eq!(state.plan, Some(backup_plan()));
    assert_eq!(state.next_due_ms, Some(at(2025, 3, 1, 2, 0)));
    // created exactly at a fire time: the next one
    let mut history = Vec::new();
    when(
        &mut history,
        create("0 2 * * *", MissedRunPolicy::Skip),
        at(2025, 3, 1, 2, 0),
    );
    assert_eq!(given(&history).next_due_ms, Some(at(2025, 3, 2, 2, 0)));
}

#[test]
fn create_refuses_a_bad_id_name_or_cron_and_an_existing_schedule() {
    let now = at(2025, 3, 1, 1, 0);
    let with = |schedule_id: &str, name: &str, cron: &str| ScheduleCommand::Create {
        schedule_id: schedule_id.into(),
        name: name.into(),
        cron: cron.into(),
        plan: backup_plan(),
        priority: Priority::Normal,
        policy: MissedRunPolicy::Skip,
    };
    assert!(matches!(
        refused(&[], with("", "n", "@daily"), now),
        ScheduleError::InvalidId(_)
    ));
    assert!(matches!(
        refused(&[], with("a b", "n", "@daily"), now),
        ScheduleError::InvalidId(_)
    ));
    assert_eq!(
        refused(&[], with(ID, "  ", "@daily"), now).to_string(),
        "the schedule name is required: use 1 to 100 characters"
    );
    assert_eq!(
        refused(&[], with(ID, &"x".repeat(101), "@daily"), now).to_string(),
        "the schedule name has 101 characters; use 1 to 100 characters"
    );
    assert!(decide(&given(&[]), with(ID, &"é".repeat(100), "@daily"), now).is_ok());
    assert_eq!(
        refused(&[], with(ID, "n", "61 * * * *"), now),
        ScheduleError::Cron(CronError::Field {
            field: CronField::Minute,
            token: "61".into(),
            problem: "is outside 0-59".into()
        })
    );
    assert_eq!(
        refused(&[], with(ID, "n", "61 * * * *"), now).to_string(),
        "invalid cron expression: minute field: '61' is outside 0-59"
    );
    assert!(matches!(
        refused(&[], with(ID, "n", "0 0 30 2 *"), now),
        ScheduleError::Cron(CronError::NeverFires { .. })
    ));
    assert!(matches!(
        refused(&[], with(ID, "n", "0 0 * *"), now),
        ScheduleError::Cron(CronError::FieldCount { count: 4, .. })
    ));
    let history = daily(MissedRunPolicy::Skip);
    assert_eq!(
        refused(&history, create("@daily", MissedRunPolicy::Skip), now),
        ScheduleError::AlreadyExists(ID.into())
    );
}

#[test]
fn commands_before_create_are_refused() {
    for command in [
        ScheduleCommand::Fire,
        ScheduleCommand::Pause,
        ScheduleCommand::Resume,
        ScheduleCommand::Delete,
    ] {
        assert_eq!(refused(&[], command, 0), ScheduleError::NotCreated);
    }
}

// ---------------------------------------------------------------- firing

#[test]
fn a_due_run_fires_on_time_and_names_its_workflow_deterministically() {
    let mut history = daily(MissedRunPolicy::Skip);
    let due = at(2025, 3, 1, 2, 0);
    // not yet due: nothing
    assert!(when(&mut history, ScheduleCommand::Fire, due - 1).is_empty());
    // 30 s late is on time
    let events = when(&mut history, ScheduleCommand::Fire, due + 30_000);
    assert_eq!(types(&events), ["ScheduleFired"]);
    let firing = fired(&events)[0];
    assert_eq!(firing.due_ms, due);
    assert_eq!(firing.fired_at_ms, due + 30_000);
    assert!(!firing.caught_up);
    assert_eq!(firing.missed_runs, 0);
    assert_eq!(firing.workflow_id, workflow_id_for(ID, due));
    assert_eq!(firing.plan, backup_plan());
    assert_eq!(firing.priority, Priority::High);
    assert_eq!(firing.next_due_ms, at(2025, 3, 2, 2, 0));
    let state = given(&history);
    assert_eq!(state.next_due_ms, Some(at(2025, 3, 2, 2, 0)));
    assert_eq!(state.last_fired_due_ms, Some(due));
    assert_eq!(state.last_workflow_id, Some(workflow_id_for(ID, due)));
    assert_eq!(state.fired_count, 1);
    // exactly at the end of the grace period is still on time
    let events = when(
        &mut history,
        ScheduleCommand::Fire,
        at(2025, 3, 2, 2, 0) + ON_TIME_GRACE_MS,
    );
    assert!(!fired(&events)[0].caught_up);
}

#[test]
fn two_servers_firing_at_once_produce_one_firing() {
    let history = daily(MissedRunPolicy::Skip);
    let due = at(2025, 3, 1, 2, 0);
    // Both decide against the same version; the store takes the first.
    let state = given(&history);
    let first = decide(&state, ScheduleCommand::Fire, due + 1_000).unwrap();
    let second = decide(&state, ScheduleCommand::Fire, due + 2_000).unwrap();
    assert_eq!(fired(&first)[0].workflow_id, fired(&second)[0].workflow_id);
    let mut history = history;
    history.extend(first);
    // The loser decides again against the new state: nothing to fire.
    assert!(
        decide(&given(&history), ScheduleCommand::Fire, due + 2_000)
            .unwrap()
            .is_empty()
    );
    assert_eq!(given(&history).fired_count, 1);
}

#[test]
fn workflow_ids_are_deterministic_per_schedule_and_due_time() {
    let due = at(2025, 3, 1, 2, 0);
    let id = workflow_id_for(ID, due);
    assert_eq!(id, workflow_id_for(ID, due));
    assert_eq!(id.get_version_num(), 5);
    assert_ne!(id, workflow_id_for(ID, due + 60_000));
    assert_ne!(id, workflow_id_for("other", due));
    // Pinned (checked with Python's uuid.uuid5): stored firings name their
    // workflows with this namespace.
    assert_eq!(
        workflow_id_for("nightly-backup", 1_740_794_400_000).to_string(),
        "18a26068-c513-5359-8f1b-843564614b3c"
    );
}

#[test]
fn missed_runs_under_skip_record_the_latest_and_fire_nothing() {
    // Fired on the 1st; the servers are down from the 1st 03:00 to the 4th
    // 10:00: the runs of the 2nd, 3rd and 4th were missed.
    let mut history = daily(MissedRunPolicy::Skip);
    when(&mut history, ScheduleCommand::Fire, at(2025, 3, 1, 2, 0));
    let events = when(&mut history, ScheduleCommand::Fire, at(2025, 3, 4, 10, 0));
    assert_eq!(types(&events), ["ScheduleRunSkipped"]);
    let ScheduleEvent::ScheduleRunSkipped(skipped) = &events[0] else {
        unreachable!()
    };
    assert_eq!(skipped.due_ms, at(2025, 3, 4, 2, 0));
    assert_eq!(skipped.missed_runs, 3);
    assert_eq!(
        skipped.reason,
        "3 runs were missed (due from 2025-03-02T02:00Z to 2025-03-04T02:00Z): no server fired the \
         schedule within 60s of its due time; the policy is skip, so they do not run"
    );
    assert_eq!(skipped.next_due_ms, at(2025, 3, 5, 2, 0));
    let state = given(&history);
    assert_eq!(state.next_due_ms, Some(at(2025, 3, 5, 2, 0)));
    assert_eq!(state.skipped_runs, 3);
    assert_eq!(state.fired_count, 1);
    // nothing more until the next due time, which fires as usual
    assert!(when(&mut history, ScheduleCommand::Fire, at(2025, 3, 4, 10, 1)).is_empty());
    let events = when(&mut history, ScheduleCommand::Fire, at(2025, 3, 5, 2, 0));
    assert_eq!(fired(&events)[0].due_ms, at(2025, 3, 5, 2, 0));
}

#[test]
fn missed_runs_under_catch_up_once_fire_once_for_all() {
    let mut history = daily(MissedRunPolicy::CatchUpOnce);
    when(&mut history, ScheduleCommand::Fire, at(2025, 3, 1, 2, 0));
    let events = when(&mut history, ScheduleCommand::Fire, at(2025, 3, 4, 10, 0));
    assert_eq!(types(&events), ["ScheduleFired"]);
    let firing = fired(&events)[0];
    assert!(firing.caught_up);
    assert_eq!(firing.missed_runs, 3);
    assert_eq!(firing.due_ms, at(2025, 3, 4, 2, 0));
    assert_eq!(firing.fired_at_ms, at(2025, 3, 4, 10, 0));
    assert_eq!(firing.workflow_id, workflow_id_for(ID, at(2025, 3, 4, 2, 0)));
    assert_eq!(firing.next_due_ms, at(2025, 3, 5, 2, 0));
    let state = given(&history);
    assert_eq!(
        (state.fired_count, state.caught_up_count, state.skipped_runs),
        (2, 1, 0)
    );
    // caught up: the same instant decides nothing more
    assert!(when(&mut history, ScheduleCommand::Fire, at(2025, 3, 4, 10, 0)).is_empty());
}

#[test]
fn one_run_missed_by_more_than_the_grace_period() {
    let due = at(2025, 3, 1, 2, 0);
    let late = due + ON_TIME_GRACE_MS + 1;
    let mut history = daily(MissedRunPolicy::Skip);
    let events = when(&mut history, ScheduleCommand::Fire, late);
    let ScheduleEvent::ScheduleRunSkipped(skipped) = &events[0] else {
        panic!("{events:?}")
    };
    assert_eq!((skipped.due_ms, skipped.missed_runs), (due, 1));
    assert!(
        skipped
            .reason
            .starts_with("1 run was missed (due at 2025-03-01T02:00Z)"),
        "{}",
        skipped.reason
    );

    let mut history = daily(MissedRunPolicy::CatchUpOnce);
    let events = when(&mut history, ScheduleCommand::Fire, late);
    let firing = fired(&events)[0];
    assert!(firing.caught_up);
    assert_eq!((firing.due_ms, firing.missed_runs), (due, 1));
}

#[test]
fn after_an_outage_a_run_due_just_now_still_fires() {
    // Hourly; down from 10:30 to 14:00:20: 11:00, 12:00 and 13:00 were
    // missed, 14:00 is on time.
    let mut skip = Vec::new();
    when(
        &mut skip,
        create("@hourly", MissedRunPolicy::Skip),
        at(2025, 3, 1, 10, 30),
    );
    let now = at(2025, 3, 1, 14, 0) + 20_000;
    let events = when(&mut skip, ScheduleCommand::Fire, now);
    assert_eq!(types(&events), ["ScheduleRunSkipped", "ScheduleFired"]);
    let ScheduleEvent::ScheduleRunSkipped(skipped) = &events[0] else {
        unreachable!()
    };
    assert_eq!((skipped.due_ms, skipped.missed_runs), (at(2025, 3, 1, 13, 0), 3));
    assert_eq!(skipped.next_due_ms, at(2025, 3, 1, 14, 0));
    let firing = fired(&events)[0];
    assert_eq!(
        (firing.due_ms, firing.caught_up, firing.missed_runs),
        (at(2025, 3, 1, 14, 0), false, 0)
    );
    assert_eq!(given(&skip).next_due_ms, Some(at(2025, 3, 1, 15, 0)));

    let mut catch_up = Vec::new();
    when(
        &mut catch_up,
        create("@hourly", MissedRunPolicy::CatchUpOnce),
        at(2025, 3, 1, 10, 30),
    );
    let events = when(&mut catch_up, ScheduleCommand::Fire, now);
    assert_eq!(types(&events), ["ScheduleFired"]);
    let firing = fired(&events)[0];
    assert_eq!(
        (firing.due_ms, firing.caught_up, firing.missed_runs),
        (at(2025, 3, 1, 14, 0), true, 3)
    );
}

#[test]
fn a_long_outage_of_a_frequent_schedule_counts_missed_runs_up_to_a_limit() {
    let mut history = Vec::new();
    when(
        &mut history,
        create("* * * * *", MissedRunPolicy::Skip),
        at(2025, 1, 1, 0, 0),
    );
    let events = when(&mut history, ScheduleCommand::Fire, at(2025, 3, 1, 0, 0) + 5_000);
    let ScheduleEvent::ScheduleRunSkipped(skipped) = &events[0] else {
        panic!("{events:?}")
    };
    assert_eq!(skipped.missed_runs, MISSED_RUNS_COUNTED_MAX);
    assert!(
        skipped
            .reason
            .starts_with("at least 10000 runs were missed (due from 2025-01-01T00:01Z to 2025-02-28T23:59Z)"),
        "{}",
        skipped.reason
    );
    assert_eq!(skipped.due_ms, at(2025, 2, 28, 23, 59));
    assert_eq!(fired(&events)[0].due_ms, at(2025, 3, 1, 0, 0));
}

// ---------------------------------------------------------------- pause, resume

#[test]
fn a_paused_schedule_does_not_fire_and_resumes_without_catching_up() {
    let mut history = daily(MissedRunPolicy::CatchUpOnce);
    let events = when(&mut history, ScheduleCommand::Pause, at(2025, 3, 1, 1, 30));
    assert_eq!(types(&events), ["SchedulePaused"]);
    assert!(given(&history).paused);
    assert!(given(&history).next_runs(3).is_empty());
    // pausing again changes nothing; due times pass without firing
    assert!(when(&mut history, ScheduleCommand::Pause, at(2025, 3, 1, 1, 31)).is_empty());
    assert!(when(&mut history, ScheduleCommand::Fire, at(2025, 3, 1, 2, 0)).is_empty());
    assert!(when(&mut history, ScheduleCommand::Fire, at(2025, 3, 3, 2, 0)).is_empty());
    // resumed on the 3rd at 12:00: next the 4th at 02:00, nothing caught up
    let events = when(&mut history, ScheduleCommand::Resume, at(2025, 3, 3, 12, 0));
    let ScheduleEvent::ScheduleResumed(resumed) = &events[0] else {
        panic!("{events:?}")
    };
    assert_eq!(resumed.next_due_ms, at(2025, 3, 4, 2, 0));
    assert!(when(&mut history, ScheduleCommand::Fire, at(2025, 3, 3, 12, 0)).is_empty());
    assert!(when(&mut history, ScheduleCommand::Resume, at(2025, 3, 3, 12, 1)).is_empty());
    let events = when(&mut history, ScheduleCommand::Fire, at(2025, 3, 4, 2, 0));
    assert!(!fired(&events)[0].caught_up);
    assert_eq!(given(&history).fired_count, 1);
}

// ---------------------------------------------------------------- delete

#[test]
fn a_deleted_schedule_refuses_every_command() {
    let mut history = daily(MissedRunPolicy::Skip);
    let events = when(&mut history, ScheduleCommand::Delete, at(2025, 3, 1, 1, 30));
    assert_eq!(types(&events), ["ScheduleDeleted"]);
    let state = given(&history);
    assert!(state.deleted && !state.is_active());
    assert!(state.next_runs(3).is_empty());
    let update = ScheduleCommand::Update {
        name: Some("x".into()),
        cron: None,
        plan: None,
        priority: None,
        policy: None,
    };
    for command in [
        ScheduleCommand::Fire,
        ScheduleCommand::Pause,
        ScheduleCommand::Resume,
        ScheduleCommand::Delete,
        update,
        create("@daily", MissedRunPolicy::Skip),
    ] {
        assert_eq!(
            refused(&history, command, at(2025, 3, 1, 2, 0)),
            ScheduleError::Deleted(ID.into())
        );
    }
    assert_eq!(
        ScheduleError::Deleted(ID.into()).to_string(),
        "schedule nightly-backup is deleted and can no longer be changed or fired; create a new \
         schedule with another id"
    );
}

// ---------------------------------------------------------------- update

#[test]
fn update_changes_what_is_given_and_a_new_cron_recomputes_the_due_time() {
    let mut history = daily(MissedRunPolicy::Skip);
    let nothing = ScheduleCommand::Update {
        name: None,
        cron: None,
        plan: None,
        priority: None,
        policy: None,
    };
    assert!(when(&mut history, nothing, at(2025, 3, 1, 1, 10)).is_empty());
    // the same cron written differently is no change
    let same = ScheduleCommand::Update {
        name: Some(" Nightly backup ".into()),
        cron: Some("0  2 * * *".into()),
        plan: Some(backup_plan()),
        priority: Some(Priority::High),
        policy: Some(MissedRunPolicy::Skip),
    };
    assert!(when(&mut history, same, at(2025, 3, 1, 1, 10)).is_empty());
    // policy only: the due time stays
    let policy = ScheduleCommand::Update {
        name: None,
        cron: None,
        plan: None,
        priority: None,
        policy: Some(MissedRunPolicy::CatchUpOnce),
    };
    let events = when(&mut history, policy, at(2025, 3, 1, 1, 20));
    let ScheduleEvent::ScheduleUpdated(updated) = &events[0] else {
        panic!("{events:?}")
    };
    assert_eq!(updated.next_due_ms, at(2025, 3, 1, 2, 0));
    assert_eq!(given(&history).policy, MissedRunPolicy::CatchUpOnce);
    // a new cron: the first fire time after the update
    let cron = ScheduleCommand::Update {
        name: None,
        cron: Some("30 4 * * SAT".into()),
        plan: None,
        priority: Some(Priority::Low),
        policy: None,
    };
    let events = when(&mut history, cron, at(2025, 3, 1, 1, 30));
    let ScheduleEvent::ScheduleUpdated(updated) = &events[0] else {
        panic!("{events:?}")
    };
    assert_eq!(updated.cron, "30 4 * * SAT");
    assert_eq!(updated.next_due_ms, at(2025, 3, 1, 4, 30));
    let state = given(&history);
    assert_eq!(
        (state.priority, state.name.as_str()),
        (Priority::Low, "Nightly backup")
    );
    assert_eq!(state.next_due_ms, Some(at(2025, 3, 1, 4, 30)));
    // a bad cron is refused with its parse error
    let bad = ScheduleCommand::Update {
        name: None,
        cron: Some("0 0 31 FEB *".into()),
        plan: None,
        priority: None,
        policy: None,
    };
    assert!(matches!(
        refused(&history, bad, at(2025, 3, 1, 1, 40)),
        ScheduleError::Cron(CronError::NeverFires { .. })
    ));
}

// ---------------------------------------------------------------- display, storage

#[test]
fn next_runs_lists_the_due_time_and_the_ones_after() {
    let mut history = Vec::new();
    when(
        &mut history,
        create("@quarterly", MissedRunPolicy::Skip),
        at(2025, 2, 10, 8, 0),
    );
    let state = given(&history);
    assert_eq!(
        state.next_runs(3),
        [at(2025, 4, 1, 0, 0), at(2025, 7, 1, 0, 0), at(2025, 10, 1, 0, 0)]
    );
    assert!(state.next_runs(0).is_empty());
    assert!(ScheduleState::default().next_runs(3).is_empty());
}

#[test]
fn events_are_stored_as_type_and_data_and_read_back() {
    let mut history = daily(MissedRunPolicy::CatchUpOnce);
    when(&mut history, ScheduleCommand::Fire, at(2025, 3, 1, 2, 0));
    when(&mut history, ScheduleCommand::Fire, at(2025, 3, 4, 10, 0));
    when(&mut history, ScheduleCommand::Pause, at(2025, 3, 4, 11, 0));
    when(&mut history, ScheduleCommand::Resume, at(2025, 3, 4, 12, 0));
    when(&mut history, ScheduleCommand::Delete, at(2025, 3, 4, 13, 0));
    for event in &history {
        let data = event.data();
        assert!(data.is_object(), "{data}");
        assert_eq!(
            &ScheduleEvent::from_stored(event.event_type(), data).unwrap(),
            event
        );
    }
    let fired_data = history[1].data();
    assert_eq!(fired_data["caught_up"], json!(false));
    assert_eq!(
        fired_data["workflow_id"],
        json!(workflow_id_for(ID, at(2025, 3, 1, 2, 0)).to_string())
    );
    assert_eq!(history[0].data()["policy"], json!("catch_up_once"));
    assert!(ScheduleEvent::from_stored("ScheduleExploded", json!({})).is_err());
}
