//! Schedules: recurring workflows (the maintenance calendar: a daily
//! backup, a weekly performance review, a quarterly restore test). A
//! schedule's state is its events; `decide` turns a command into events,
//! `evolve` folds one event into the state. No IO and no clock: the time
//! comes with each decision (`now_ms`), and the events carry every time
//! they depend on (`next_due_ms`), so replaying them needs no clock and no
//! cron evaluation.
//!
//! Firing: a scheduler at the edge sends `Fire` when `next_due_ms` has
//! come. Within [`ON_TIME_GRACE_MS`] of the due time the run fires. Later
//! than that (no server fired it: they were down across one or more due
//! times), the missed-run policy decides: `Skip` records the latest missed
//! run as `ScheduleRunSkipped` and fires nothing, `CatchUpOnce` fires once
//! for all of them (`caught_up`). If the latest due time is itself within
//! the grace period it fires as usual, after the skip. Either way the next
//! due time becomes the first one after now. `Fire` when nothing is due
//! decides no events: two servers racing to fire produce one firing (the
//! store appends at the version decided against; the loser decides again
//! and gets nothing).
//!
//! A firing names its workflow deterministically ([`workflow_id_for`]), so
//! a firing recorded twice would start the same workflow, which the
//! orchestrator starts once. The firing carries the plan and priority, so
//! the workflow can be started from the event alone.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

use super::aggregate::Priority;
use super::plan::Plan;

pub mod cron;

pub use cron::{Cron, CronError, CronField};

/// How late a run may fire and still count as on time.
pub const ON_TIME_GRACE_MS: u64 = 60_000;
pub const NAME_CHARS_MAX: usize = 100;
pub const SCHEDULE_ID_BYTES_MAX: usize = 100;
/// Missed runs are counted up to this many (after a long outage of a
/// frequent schedule); beyond, messages say "at least".
pub const MISSED_RUNS_COUNTED_MAX: u32 = 10_000;
/// The UUID v5 namespace of the workflow ids of firings. Never change it:
/// stored firings name their workflows with it.
pub const WORKFLOW_ID_NAMESPACE: Uuid = Uuid::from_u128(0x6a1c_2f0e_9b4d_5e83_a7c1_d5e0_3f29_8b64);

/// The id of the workflow that the firing of `schedule_id` due at `due_ms`
/// starts: UUID v5 of `"<schedule_id>/<due_ms>"` in
/// [`WORKFLOW_ID_NAMESPACE`].
pub fn workflow_id_for(schedule_id: &str, due_ms: u64) -> Uuid {
    Uuid::new_v5(
        &WORKFLOW_ID_NAMESPACE,
        format!("{schedule_id}/{due_ms}").as_bytes(),
    )
}

/// What happens to runs that no server fired in time.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MissedRunPolicy {
    /// Record the latest missed run as skipped; wait for the next one.
    #[default]
    Skip,
    /// Fire once for all the missed runs together.
    CatchUpOnce,
}

// ---------------------------------------------------------------- events

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScheduleCreated {
    pub schedule_id: String,
    pub name: String,
    /// Normalised ([`Cron::as_str`]).
    pub cron: String,
    pub plan: Plan,
    pub priority: Priority,
    pub policy: MissedRunPolicy,
    pub created_at_ms: u64,
    pub next_due_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScheduleFired {
    pub schedule_id: String,
    /// The due time this firing is for (the latest one, when caught up).
    pub due_ms: u64,
    pub fired_at_ms: u64,
    /// [`workflow_id_for`]`(schedule_id, due_ms)`.
    pub workflow_id: Uuid,
    /// Fired late, for missed runs (policy `CatchUpOnce`).
    pub caught_up: bool,
    /// How many due times passed their grace period without a firing and
    /// are answered by this one (0 when on time).
    pub missed_runs: u32,
    /// The plan and priority the workflow runs with.
    pub plan: Plan,
    pub priority: Priority,
    pub next_due_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScheduleRunSkipped {
    pub schedule_id: String,
    /// The latest missed due time.
    pub due_ms: u64,
    /// How many due times were missed (at most [`MISSED_RUNS_COUNTED_MAX`]).
    pub missed_runs: u32,
    pub reason: String,
    pub next_due_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SchedulePaused {
    pub schedule_id: String,
    pub paused_at_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScheduleResumed {
    pub schedule_id: String,
    pub resumed_at_ms: u64,
    /// The first fire time after the resumption.
    pub next_due_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScheduleDeleted {
    pub schedule_id: String,
    pub deleted_at_ms: u64,
}

/// The schedule's settings after an update (all of them, changed or not).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScheduleUpdated {
    pub schedule_id: String,
    pub name: String,
    pub cron: String,
    pub plan: Plan,
    pub priority: Priority,
    pub policy: MissedRunPolicy,
    pub updated_at_ms: u64,
    /// Recomputed from the update's time when the cron changed; else the
    /// schedule's previous one.
    pub next_due_ms: u64,
}

/// A schedule's events. Stored with the variant name as the event type
/// and the inner value as the data (see [`ScheduleEvent::event_type`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ScheduleEvent {
    ScheduleCreated(ScheduleCreated),
    ScheduleFired(ScheduleFired),
    ScheduleRunSkipped(ScheduleRunSkipped),
    SchedulePaused(SchedulePaused),
    ScheduleResumed(ScheduleResumed),
    ScheduleDeleted(ScheduleDeleted),
    ScheduleUpdated(ScheduleUpdated),
}

impl ScheduleEvent {
    pub fn event_type(&self) -> &'static str {
        match self {
            ScheduleEvent::ScheduleCreated(_) => "ScheduleCreated",
            ScheduleEvent::ScheduleFired(_) => "ScheduleFired",
            ScheduleEvent::ScheduleRunSkipped(_) => "ScheduleRunSkipped",
            ScheduleEvent::SchedulePaused(_) => "SchedulePaused",
            ScheduleEvent::ScheduleResumed(_) => "ScheduleResumed",
            ScheduleEvent::ScheduleDeleted(_) => "ScheduleDeleted",
            ScheduleEvent::ScheduleUpdated(_) => "ScheduleUpdated",
        }
    }

    /// The event's data, without its type.
    pub fn data(&self) -> Value {
        match serde_json::to_value(self) {
            Ok(Value::Object(mut tagged)) => tagged.remove(self.event_type()).unwrap_or(Value::Null),
            _ => Value::Null,
        }
    }

    /// Back from a stored type and data.
    pub fn from_stored(event_type: &str, data: Value) -> Result<ScheduleEvent, String> {
        let mut tagged = serde_json::Map::new();
        tagged.insert(event_type.to_owned(), data);
        serde_json::from_value(Value::Object(tagged))
            .map_err(|e| format!("not a schedule event {event_type}: {e}"))
    }
}

// ---------------------------------------------------------------- state

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ScheduleState {
    pub schedule_id: String,
    pub created: bool,
    pub name: String,
    /// Normalised cron text; parse with [`Cron::parse`].
    pub cron: String,
    pub plan: Option<Plan>,
    pub priority: Priority,
    pub policy: MissedRunPolicy,
    pub paused: bool,
    pub deleted: bool,
    /// When it fires next (while paused: what it was at the pause; resuming
    /// recomputes it).
    pub next_due_ms: Option<u64>,
    pub last_fired_due_ms: Option<u64>,
    pub last_fired_at_ms: Option<u64>,
    pub last_workflow_id: Option<Uuid>,
    /// Firings, on time or caught up.
    pub fired_count: u64,
    /// Firings that were catch-ups.
    pub caught_up_count: u64,
    /// Due times missed under policy `Skip` (as counted, see
    /// [`MISSED_RUNS_COUNTED_MAX`]).
    pub skipped_runs: u64,
}

impl ScheduleState {
    /// Whether the schedule fires: created, not paused, not deleted.
    pub fn is_active(&self) -> bool {
        self.created && !self.paused && !self.deleted
    }

    /// The next `n` fire times, for display: `next_due_ms` (which may be in
    /// the past when a firing is due but not yet recorded) and the ones
    /// after it. Empty unless active.
    pub fn next_runs(&self, n: usize) -> Vec<u64> {
        let (Some(first), Ok(cron)) = (self.next_due_ms, Cron::parse(&self.cron)) else {
            return vec![];
        };
        if !self.is_active() || n == 0 {
            return vec![];
        }
        let mut runs = vec![first];
        runs.extend(cron.upcoming(first, n - 1));
        runs
    }
}

// ---------------------------------------------------------------- commands

#[derive(Debug, Clone, PartialEq)]
pub enum ScheduleCommand {
    Create {
        schedule_id: String,
        name: String,
        cron: String,
        plan: Plan,
        priority: Priority,
        policy: MissedRunPolicy,
    },
    /// Changes what is given (`None`: unchanged). Nothing changed decides
    /// no events.
    Update {
        name: Option<String>,
        cron: Option<String>,
        plan: Option<Plan>,
        priority: Option<Priority>,
        policy: Option<MissedRunPolicy>,
    },
    Pause,
    Resume,
    Delete,
    /// Fire what is due at `now_ms`, if anything.
    Fire,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScheduleError {
    #[error("schedule {0} already exists; update it instead, or create a schedule with another id")]
    AlreadyExists(String),
    #[error("the schedule does not exist; create it first")]
    NotCreated,
    #[error(
        "schedule {0} is deleted and can no longer be changed or fired; create a new schedule \
         with another id"
    )]
    Deleted(String),
    #[error(
        "schedule id '{0}' is not valid: use 1 to {SCHEDULE_ID_BYTES_MAX} of a-z, A-Z, 0-9, '_', '-' \
         and '.'"
    )]
    InvalidId(String),
    #[error("the schedule name is required: use 1 to {NAME_CHARS_MAX} characters")]
    MissingName,
    #[error("the schedule name {0}; use 1 to {NAME_CHARS_MAX} characters")]
    InvalidName(String),
    #[error("invalid cron expression: {0}")]
    Cron(#[from] CronError),
    #[error("cron '{cron}' has no fire time after {after}; choose an expression that fires again")]
    NoNextRun { cron: String, after: String },
}

impl ScheduleError {
    pub fn code(&self) -> crate::Code {
        use crate::Code;
        match self {
            ScheduleError::AlreadyExists(_) => Code::AlreadyExists,
            ScheduleError::NotCreated | ScheduleError::Deleted(_) => Code::NotFound,
            ScheduleError::InvalidId(_)
            | ScheduleError::MissingName
            | ScheduleError::InvalidName(_)
            | ScheduleError::Cron(_)
            | ScheduleError::NoNextRun { .. } => Code::InvalidArgument,
        }
    }

    /// The request field a refused argument is in, for those that are one.
    pub fn field(&self) -> Option<&'static str> {
        match self {
            ScheduleError::InvalidId(_) => Some("schedule_id"),
            ScheduleError::MissingName | ScheduleError::InvalidName(_) => Some("name"),
            ScheduleError::Cron(_) | ScheduleError::NoNextRun { .. } => Some("cron"),
            _ => None,
        }
    }
}

pub fn decide(
    state: &ScheduleState,
    command: ScheduleCommand,
    now_ms: u64,
) -> Result<Vec<ScheduleEvent>, ScheduleError> {
    if state.deleted {
        return Err(ScheduleError::Deleted(state.schedule_id.clone()));
    }
    if let ScheduleCommand::Create {
        schedule_id,
        name,
        cron,
        plan,
        priority,
        policy,
    } = command
    {
        if state.created {
            return Err(ScheduleError::AlreadyExists(state.schedule_id.clone()));
        }
        validate_id(&schedule_id)?;
        let name = validate_name(&name)?;
        let cron = Cron::parse(&cron)?;
        let next_due_ms = next_due(&cron, now_ms)?;
        return Ok(vec![ScheduleEvent::ScheduleCreated(ScheduleCreated {
            schedule_id,
            name,
            cron: cron.as_str().to_owned(),
            plan,
            priority,
            policy,
            created_at_ms: now_ms,
            next_due_ms,
        })]);
    }
    if !state.created {
        return Err(ScheduleError::NotCreated);
    }
    let schedule_id = state.schedule_id.clone();
    let events = match command {
        ScheduleCommand::Create { .. } => unreachable!("handled above"),
        ScheduleCommand::Update {
            name,
            cron,
            plan,
            priority,
            policy,
        } => update(state, name, cron, plan, priority, policy, now_ms)?,
        ScheduleCommand::Pause if state.paused => vec![],
        ScheduleCommand::Pause => vec![ScheduleEvent::SchedulePaused(SchedulePaused {
            schedule_id,
            paused_at_ms: now_ms,
        })],
        ScheduleCommand::Resume if !state.paused => vec![],
        ScheduleCommand::Resume => vec![ScheduleEvent::ScheduleResumed(ScheduleResumed {
            schedule_id,
            resumed_at_ms: now_ms,
            next_due_ms: next_due(&Cron::parse(&state.cron)?, now_ms)?,
        })],
        ScheduleCommand::Delete => vec![ScheduleEvent::ScheduleDeleted(ScheduleDeleted {
            schedule_id,
            deleted_at_ms: now_ms,
        })],
        ScheduleCommand::Fire => fire(state, now_ms)?,
    };
    Ok(events)
}

fn validate_id(id: &str) -> Result<(), ScheduleError> {
    let valid = !id.is_empty()
        && id.len() <= SCHEDULE_ID_BYTES_MAX
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'));
    if valid {
        Ok(())
    } else {
        Err(ScheduleError::InvalidId(id.to_owned()))
    }
}

/// The name without surrounding whitespace; a name is required (an empty
/// one, or only whitespace, is missing).
pub fn validate_name(name: &str) -> Result<String, ScheduleError> {
    let name = name.trim();
    let chars = name.chars().count();
    if chars == 0 {
        return Err(ScheduleError::MissingName);
    }
    if chars > NAME_CHARS_MAX {
        return Err(ScheduleError::InvalidName(format!("has {chars} characters")));
    }
    if name.chars().any(char::is_control) {
        return Err(ScheduleError::InvalidName("contains a control character".into()));
    }
    Ok(name.to_owned())
}

fn next_due(cron: &Cron, after_ms: u64) -> Result<u64, ScheduleError> {
    cron.next_after(after_ms).ok_or_else(|| ScheduleError::NoNextRun {
        cron: cron.as_str().to_owned(),
        after: cron::format_utc(after_ms),
    })
}

fn update(
    state: &ScheduleState,
    name: Option<String>,
    cron: Option<String>,
    plan: Option<Plan>,
    priority: Option<Priority>,
    policy: Option<MissedRunPolicy>,
    now_ms: u64,
) -> Result<Vec<ScheduleEvent>, ScheduleError> {
    let name = match name {
        Some(name) => validate_name(&name)?,
        None => state.name.clone(),
    };
    let cron = match cron {
        Some(text) => Cron::parse(&text)?.as_str().to_owned(),
        None => state.cron.clone(),
    };
    let plan = plan
        .or_else(|| state.plan.clone())
        .ok_or(ScheduleError::NotCreated)?;
    let priority = priority.unwrap_or(state.priority);
    let policy = policy.unwrap_or(state.policy);
    let cron_changed = cron != state.cron;
    if !cron_changed
        && name == state.name
        && Some(&plan) == state.plan.as_ref()
        && priority == state.priority
        && policy == state.policy
    {
        return Ok(vec![]);
    }
    let next_due_ms = match state.next_due_ms {
        Some(due) if !cron_changed => due,
        _ => next_due(&Cron::parse(&cron)?, now_ms)?,
    };
    Ok(vec![ScheduleEvent::ScheduleUpdated(ScheduleUpdated {
        schedule_id: state.schedule_id.clone(),
        name,
        cron,
        plan,
        priority,
        policy,
        updated_at_ms: now_ms,
        next_due_ms,
    })])
}

fn fire(state: &ScheduleState, now_ms: u64) -> Result<Vec<ScheduleEvent>, ScheduleError> {
    let Some(due) = state.next_due_ms else {
        return Ok(vec![]);
    };
    if state.paused || now_ms < due {
        return Ok(vec![]);
    }
    let cron = Cron::parse(&state.cron)?;
    let plan = state.plan.clone().ok_or(ScheduleError::NotCreated)?;
    let next_due_ms = next_due(&cron, now_ms)?;
    // The due times from `due` to the latest one at or before now.
    let latest = cron
        .latest_at_or_before(now_ms)
        .filter(|&latest| latest >= due)
        .unwrap_or(due);
    let (due_times, more) = count_runs(&cron, due, latest);
    let latest_on_time = now_ms - latest <= ON_TIME_GRACE_MS;
    // When the count stopped at the limit, the latest is not among those
    // counted: all of them were missed.
    let missed = if latest_on_time && !more {
        due_times - 1
    } else {
        due_times
    };
    let fired = |due_ms: u64, missed_runs: u32| {
        ScheduleEvent::ScheduleFired(ScheduleFired {
            schedule_id: state.schedule_id.clone(),
            due_ms,
            fired_at_ms: now_ms,
            workflow_id: workflow_id_for(&state.schedule_id, due_ms),
            caught_up: missed_runs > 0,
            missed_runs,
            plan: plan.clone(),
            priority: state.priority,
            next_due_ms,
        })
    };
    if missed == 0 {
        return Ok(vec![fired(latest, 0)]);
    }
    match state.policy {
        MissedRunPolicy::CatchUpOnce => Ok(vec![fired(latest, missed)]),
        MissedRunPolicy::Skip => {
            let last_missed = if latest_on_time {
                cron.latest_at_or_before(latest - 1)
                    .filter(|&t| t >= due)
                    .unwrap_or(due)
            } else {
                latest
            };
            let count = if more {
                format!("at least {missed} runs were")
            } else if missed == 1 {
                "1 run was".to_owned()
            } else {
                format!("{missed} runs were")
            };
            let span = if missed == 1 {
                format!("due at {}", cron::format_utc(last_missed))
            } else {
                format!(
                    "due from {} to {}",
                    cron::format_utc(due),
                    cron::format_utc(last_missed)
                )
            };
            let reason = format!(
                "{count} missed ({span}): no server fired the schedule within {}s of its due time; \
                 the policy is skip, so they do not run",
                ON_TIME_GRACE_MS / 1000
            );
            let mut events = vec![ScheduleEvent::ScheduleRunSkipped(ScheduleRunSkipped {
                schedule_id: state.schedule_id.clone(),
                due_ms: last_missed,
                missed_runs: missed,
                reason,
                next_due_ms: if latest_on_time { latest } else { next_due_ms },
            })];
            if latest_on_time {
                events.push(fired(latest, 0));
            }
            Ok(events)
        }
    }
}

/// The number of fire times from `from` (one) to `to`, both included, at
/// most [`MISSED_RUNS_COUNTED_MAX`], and whether there are more.
fn count_runs(cron: &Cron, from: u64, to: u64) -> (u32, bool) {
    let mut count = 1;
    let mut t = from;
    while let Some(next) = cron.next_after(t).filter(|&next| next <= to) {
        if count == MISSED_RUNS_COUNTED_MAX {
            return (count, true);
        }
        count += 1;
        t = next;
    }
    (count, false)
}

pub fn evolve(mut state: ScheduleState, event: &ScheduleEvent) -> ScheduleState {
    match event {
        ScheduleEvent::ScheduleCreated(e) => {
            state.schedule_id = e.schedule_id.clone();
            state.created = true;
            state.name = e.name.clone();
            state.cron = e.cron.clone();
            state.plan = Some(e.plan.clone());
            state.priority = e.priority;
            state.policy = e.policy;
            state.next_due_ms = Some(e.next_due_ms);
        }
        ScheduleEvent::ScheduleFired(e) => {
            state.fired_count += 1;
            if e.caught_up {
                state.caught_up_count += 1;
            }
            state.last_fired_due_ms = Some(e.due_ms);
            state.last_fired_at_ms = Some(e.fired_at_ms);
            state.last_workflow_id = Some(e.workflow_id);
            state.next_due_ms = Some(e.next_due_ms);
        }
        ScheduleEvent::ScheduleRunSkipped(e) => {
            state.skipped_runs += u64::from(e.missed_runs);
            state.next_due_ms = Some(e.next_due_ms);
        }
        ScheduleEvent::SchedulePaused(_) => state.paused = true,
        ScheduleEvent::ScheduleResumed(e) => {
            state.paused = false;
            state.next_due_ms = Some(e.next_due_ms);
        }
        ScheduleEvent::ScheduleDeleted(_) => state.deleted = true,
        ScheduleEvent::ScheduleUpdated(e) => {
            state.name = e.name.clone();
            state.cron = e.cron.clone();
            state.plan = Some(e.plan.clone());
            state.priority = e.priority;
            state.policy = e.policy;
            state.next_due_ms = Some(e.next_due_ms);
        }
    }
    state
}

#[cfg(test)]
mod tests;
