//! The workflow aggregate: its state is its events. `decide` turns a command
//! (start, a task's outcome, a clock tick, cancel) into events, including
//! what follows from them (tasks that became ready, retries, compensation,
//! completion); `evolve` folds one event into the state. No IO: the
//! orchestrator executes what the events ask for (send a task command on
//! `TaskScheduled`, a compensation on `CompensationStarted`, stop requests
//! on `WorkflowCancelled`) and feeds the outcomes back as commands.
//!
//! Outcomes are matched by task and attempt: a duplicate or late outcome
//! (a command delivered twice, an attempt that already timed out) decides
//! no events, so a task's effect is recorded once.
//!
//! A saga on failure: when a task fails for good, nothing new is scheduled;
//! once no task is running any more, the tasks that succeeded are
//! compensated in the reverse order of their completion (those that
//! declare a compensation), one at a time, and then the workflow fails.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::plan::Plan;
use crate::error::{Code, OperationError};

/// First retry delay; doubled per attempt, at most [`RETRY_BACKOFF_MS_MAX`].
pub const RETRY_BACKOFF_MS_BASE: u64 = 500;
pub const RETRY_BACKOFF_MS_MAX: u64 = 60_000;
/// Bounds the follow-up rounds of one decision (a plan has at most
/// `TASKS_MAX` tasks, each settles in a few rounds).
const FOLLOW_UP_ROUNDS_MAX: usize = 1000;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Priority {
    Low,
    #[default]
    Normal,
    High,
}

// ---------------------------------------------------------------- events

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkflowStarted {
    pub workflow_id: String,
    pub name: String,
    pub priority: Priority,
    pub plan: Plan,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskScheduled {
    pub workflow_id: String,
    pub task_id: String,
    pub agent: String,
    pub operation: String,
    pub attempt: u32,
    pub priority: Priority,
    /// When the attempt times out (ms since the epoch).
    pub deadline_ms: u64,
}

/// The identity of one attempt of one task, shared by its outcome events.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskAttempt {
    pub workflow_id: String,
    pub task_id: String,
    pub agent: String,
    pub attempt: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskProgressed {
    #[serde(flatten)]
    pub attempt: TaskAttempt,
    pub percent: f64,
    pub message: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskSucceeded {
    #[serde(flatten)]
    pub attempt: TaskAttempt,
    pub result: Value,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskFailed {
    #[serde(flatten)]
    pub attempt: TaskAttempt,
    pub error: String,
    /// What kind of failure (it decides whether the task is retried). An
    /// event stored before codes existed reads as `internal`.
    #[serde(default)]
    pub code: Code,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskRetried {
    pub workflow_id: String,
    pub task_id: String,
    pub agent: String,
    pub next_attempt: u32,
    pub backoff_ms: u64,
    /// When the next attempt is scheduled (ms since the epoch).
    pub due_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CompensationStarted {
    pub workflow_id: String,
    pub task_id: String,
    pub agent: String,
    pub operation: String,
    pub deadline_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CompensationDone {
    pub workflow_id: String,
    pub task_id: String,
    pub agent: String,
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkflowCompleted {
    pub workflow_id: String,
    pub tasks_completed: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkflowFailed {
    pub workflow_id: String,
    pub error: String,
    pub tasks_compensated: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkflowCancelled {
    pub workflow_id: String,
    pub reason: String,
    /// Tasks that were running: the orchestrator tells them to stop.
    pub running_tasks: Vec<String>,
}

/// A workflow's events. Stored with the variant name as the event type
/// and the inner value as the data (see [`WorkflowEvent::event_type`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum WorkflowEvent {
    WorkflowStarted(WorkflowStarted),
    TaskScheduled(TaskScheduled),
    TaskStarted(TaskAttempt),
    TaskProgressed(TaskProgressed),
    TaskSucceeded(TaskSucceeded),
    TaskFailed(TaskFailed),
    TaskTimedOut(TaskAttempt),
    TaskRetried(TaskRetried),
    CompensationStarted(CompensationStarted),
    CompensationDone(CompensationDone),
    WorkflowCompleted(WorkflowCompleted),
    WorkflowFailed(WorkflowFailed),
    WorkflowCancelled(WorkflowCancelled),
}

impl WorkflowEvent {
    pub fn event_type(&self) -> &'static str {
        match self {
            WorkflowEvent::WorkflowStarted(_) => "WorkflowStarted",
            WorkflowEvent::TaskScheduled(_) => "TaskScheduled",
            WorkflowEvent::TaskStarted(_) => "TaskStarted",
            WorkflowEvent::TaskProgressed(_) => "TaskProgressed",
            WorkflowEvent::TaskSucceeded(_) => "TaskSucceeded",
            WorkflowEvent::TaskFailed(_) => "TaskFailed",
            WorkflowEvent::TaskTimedOut(_) => "TaskTimedOut",
            WorkflowEvent::TaskRetried(_) => "TaskRetried",
            WorkflowEvent::CompensationStarted(_) => "CompensationStarted",
            WorkflowEvent::CompensationDone(_) => "CompensationDone",
            WorkflowEvent::WorkflowCompleted(_) => "WorkflowCompleted",
            WorkflowEvent::WorkflowFailed(_) => "WorkflowFailed",
            WorkflowEvent::WorkflowCancelled(_) => "WorkflowCancelled",
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
    pub fn from_stored(event_type: &str, data: Value) -> Result<WorkflowEvent, String> {
        let mut tagged = serde_json::Map::new();
        tagged.insert(event_type.to_owned(), data);
        serde_json::from_value(Value::Object(tagged))
            .map_err(|e| format!("not a workflow event {event_type}: {e}"))
    }
}

// ---------------------------------------------------------------- state

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WorkflowStatus {
    #[default]
    NotStarted,
    Running,
    /// A task failed for good: nothing new starts; running tasks finish.
    Failing,
    Compensating,
    Completed,
    Failed,
    Cancelled,
}

impl WorkflowStatus {
    pub fn is_final(self) -> bool {
        matches!(
            self,
            WorkflowStatus::Completed | WorkflowStatus::Failed | WorkflowStatus::Cancelled
        )
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TaskStatus {
    #[default]
    Pending,
    Scheduled,
    Running,
    WaitingRetry,
    Succeeded,
    Failed,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CompensationStatus {
    #[default]
    NotNeeded,
    Running,
    Done,
    Failed,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TaskState {
    pub status: TaskStatus,
    pub attempt: u32,
    pub deadline_ms: Option<u64>,
    pub due_ms: Option<u64>,
    pub result: Option<Value>,
    pub error: Option<String>,
    /// The code of the last failure, with `error`.
    #[serde(default)]
    pub error_code: Option<Code>,
    pub compensation: CompensationStatus,
}

impl TaskState {
    fn is_active(&self) -> bool {
        matches!(self.status, TaskStatus::Scheduled | TaskStatus::Running)
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct WorkflowState {
    pub workflow_id: String,
    pub status: WorkflowStatus,
    pub priority: Priority,
    pub plan: Option<Plan>,
    pub tasks: Vec<TaskState>,
    /// Indices of succeeded tasks, in the order they succeeded.
    pub completed_order: Vec<usize>,
    pub error: Option<String>,
    /// The code of the failure that made the workflow fail (none when it
    /// was cancelled or has not failed).
    #[serde(default)]
    pub error_code: Option<Code>,
    /// The task whose failure turned the workflow Failing.
    pub failing_task: Option<String>,
    pub tasks_compensated: u32,
}

// ---------------------------------------------------------------- commands

#[derive(Debug, Clone, PartialEq)]
pub enum WorkflowCommand {
    Start {
        workflow_id: String,
        plan: Plan,
        priority: Priority,
    },
    TaskStarted {
        task_id: String,
        attempt: u32,
    },
    TaskProgressed {
        task_id: String,
        attempt: u32,
        percent: f64,
        message: String,
    },
    TaskSucceeded {
        task_id: String,
        attempt: u32,
        result: Value,
    },
    /// An attempt failed; it is retried (retries left) only when the
    /// error's code is retryable.
    TaskFailed {
        task_id: String,
        attempt: u32,
        error: OperationError,
    },
    CompensationFinished {
        task_id: String,
        ok: bool,
        error: Option<String>,
    },
    /// Time passed: attempts past their deadline time out, retries that
    /// are due are scheduled.
    Tick,
    Cancel {
        reason: String,
    },
}

/// What a decision may depend on besides state and command: the time, and
/// a random number in [0, 1) for retry jitter (so decisions stay pure).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Clock {
    pub now_ms: u64,
    pub jitter: f64,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WorkflowError {
    #[error("workflow {0} is already started")]
    AlreadyStarted(String),
    #[error("the workflow is not started")]
    NotStarted,
    #[error("workflow {workflow_id} has no task '{task_id}'")]
    UnknownTask { workflow_id: String, task_id: String },
    #[error("workflow {workflow_id} is already {status:?}")]
    Finished {
        workflow_id: String,
        status: WorkflowStatus,
    },
}

impl WorkflowError {
    pub fn code(&self) -> Code {
        match self {
            WorkflowError::AlreadyStarted(_) => Code::AlreadyExists,
            WorkflowError::NotStarted => Code::NotFound,
            WorkflowError::UnknownTask { .. } => Code::InvalidArgument,
            WorkflowError::Finished { .. } => Code::FailedPrecondition,
        }
    }
}

/// The retry delay before `next_attempt` (2, 3, ...): exponential, capped,
/// with half of it jittered so that retries of many tasks spread out.
pub fn retry_backoff_ms(next_attempt: u32, jitter: f64) -> u64 {
    let exponent = next_attempt.saturating_sub(2).min(20);
    let full = RETRY_BACKOFF_MS_BASE
        .saturating_mul(1 << exponent)
        .min(RETRY_BACKOFF_MS_MAX);
    let half = full / 2;
    half + (half as f64 * jitter.clamp(0.0, 1.0)) as u64
}

pub fn decide(
    state: &WorkflowState,
    command: WorkflowCommand,
    clock: Clock,
) -> Result<Vec<WorkflowEvent>, WorkflowError> {
    // A tick may make retries due without any primary event.
    let is_tick = command == WorkflowCommand::Tick;
    let primary = primary_events(state, command, clock)?;
    if primary.is_empty() && !is_tick {
        return Ok(primary);
    }
    // Fold what was decided, then add what follows from it, until settled.
    let mut events = primary;
    let mut current = events.iter().fold(state.clone(), evolve);
    for _ in 0..FOLLOW_UP_ROUNDS_MAX {
        let more = follow_ups(&current, clock);
        if more.is_empty() {
            break;
        }
        current = more.iter().fold(current, evolve);
        events.extend(more);
    }
    Ok(events)
}

fn primary_events(
    state: &WorkflowState,
    command: WorkflowCommand,
    clock: Clock,
) -> Result<Vec<WorkflowEvent>, WorkflowError> {
    if let WorkflowCommand::Start {
        workflow_id,
        plan,
        priority,
    } = command
    {
        if state.status != WorkflowStatus::NotStarted {
            return Err(WorkflowError::AlreadyStarted(state.workflow_id.clone()));
        }
        return Ok(vec![WorkflowEvent::WorkflowStarted(WorkflowStarted {
            workflow_id,
            name: plan.name.clone(),
            priority,
            plan,
        })]);
    }
    let Some(plan) = &state.plan else {
        return Err(WorkflowError::NotStarted);
    };
    match command {
        WorkflowCommand::Tick => Ok(tick(state, plan, clock)),
        WorkflowCommand::Cancel { reason } => {
            if state.status.is_final() {
                return Err(WorkflowError::Finished {
                    workflow_id: state.workflow_id.clone(),
                    status: state.status,
                });
            }
            let running_tasks = state
                .tasks
                .iter()
                .enumerate()
                .filter(|(_, t)| t.is_active())
                .map(|(i, _)| plan.tasks[i].id.clone())
                .collect();
            Ok(vec![WorkflowEvent::WorkflowCancelled(WorkflowCancelled {
                workflow_id: state.workflow_id.clone(),
                reason,
                running_tasks,
            })])
        }
        WorkflowCommand::CompensationFinished { task_id, ok, error } => {
            let Some((i, _)) = plan.task(&task_id) else {
                return Err(WorkflowError::UnknownTask {
                    workflow_id: state.workflow_id.clone(),
                    task_id,
                });
            };
            if state.tasks[i].compensation != CompensationStatus::Running {
                return Ok(vec![]);
            }
            Ok(vec![WorkflowEvent::CompensationDone(CompensationDone {
                workflow_id: state.workflow_id.clone(),
                task_id,
                agent: plan.tasks[i].agent.clone(),
                ok,
                error: if ok {
                    None
                } else {
                    error.or(Some("compensation failed".into()))
                },
            })])
        }
        command => outcome_events(state, plan, command, clock),
    }
}

/// The events of what an agent reported about a task's attempt: its
/// start, progress, outcome.
fn outcome_events(
    state: &WorkflowState,
    plan: &Plan,
    command: WorkflowCommand,
    clock: Clock,
) -> Result<Vec<WorkflowEvent>, WorkflowError> {
    let task_index = |task_id: &str| {
        plan.task(task_id)
            .map(|(i, _)| i)
            .ok_or_else(|| WorkflowError::UnknownTask {
                workflow_id: state.workflow_id.clone(),
                task_id: task_id.to_owned(),
            })
    };
    let attempt_of = |i: usize, attempt: u32| TaskAttempt {
        workflow_id: state.workflow_id.clone(),
        task_id: plan.tasks[i].id.clone(),
        agent: plan.tasks[i].agent.clone(),
        attempt,
    };
    // The outcome of the current, still active attempt; anything else is a
    // duplicate or too late and decides nothing.
    let current = |i: usize, attempt: u32| {
        let task = &state.tasks[i];
        task.attempt == attempt && task.is_active() && !state.status.is_final()
    };
    let events = match command {
        WorkflowCommand::Start { .. }
        | WorkflowCommand::Tick
        | WorkflowCommand::Cancel { .. }
        | WorkflowCommand::CompensationFinished { .. } => unreachable!("decided by primary_events"),
        WorkflowCommand::TaskStarted { task_id, attempt } => {
            let i = task_index(&task_id)?;
            if current(i, attempt) && state.tasks[i].status == TaskStatus::Scheduled {
                vec![WorkflowEvent::TaskStarted(attempt_of(i, attempt))]
            } else {
                vec![]
            }
        }
        WorkflowCommand::TaskProgressed {
            task_id,
            attempt,
            percent,
            message,
        } => {
            let i = task_index(&task_id)?;
            if current(i, attempt) {
                vec![WorkflowEvent::TaskProgressed(TaskProgressed {
                    attempt: attempt_of(i, attempt),
                    percent: percent.clamp(0.0, 100.0),
                    message,
                })]
            } else {
                vec![]
            }
        }
        WorkflowCommand::TaskSucceeded {
            task_id,
            attempt,
            result,
        } => {
            let i = task_index(&task_id)?;
            if current(i, attempt) {
                vec![WorkflowEvent::TaskSucceeded(TaskSucceeded {
                    attempt: attempt_of(i, attempt),
                    result,
                })]
            } else {
                vec![]
            }
        }
        WorkflowCommand::TaskFailed {
            task_id,
            attempt,
            error,
        } => {
            let i = task_index(&task_id)?;
            if current(i, attempt) {
                let code = error.code;
                let mut events = vec![WorkflowEvent::TaskFailed(TaskFailed {
                    attempt: attempt_of(i, attempt),
                    error: error.message,
                    code,
                })];
                events.extend(retry(state, plan, i, attempt, code, clock));
                events
            } else {
                vec![]
            }
        }
    };
    Ok(events)
}

/// After a failed or timed-out attempt: another attempt when the failure's
/// code is retryable ([`Code::retryable`]: another attempt may succeed),
/// retries are left and the workflow is still running. A failure that is
/// not retryable (a bad parameter, a missing object) fails the task at once.
fn retry(
    state: &WorkflowState,
    plan: &Plan,
    i: usize,
    attempt: u32,
    code: Code,
    clock: Clock,
) -> Option<WorkflowEvent> {
    let task = &plan.tasks[i];
    if !code.retryable() || state.status != WorkflowStatus::Running || attempt > task.retries {
        return None;
    }
    let next_attempt = attempt + 1;
    let backoff_ms = retry_backoff_ms(next_attempt, clock.jitter);
    Some(WorkflowEvent::TaskRetried(TaskRetried {
        workflow_id: state.workflow_id.clone(),
        task_id: task.id.clone(),
        agent: task.agent.clone(),
        next_attempt,
        backoff_ms,
        due_ms: clock.now_ms.saturating_add(backoff_ms),
    }))
}

fn tick(state: &WorkflowState, plan: &Plan, clock: Clock) -> Vec<WorkflowEvent> {
    if state.status.is_final() {
        return vec![];
    }
    let mut events = Vec::new();
    for (i, task) in state.tasks.iter().enumerate() {
        if task.is_active() && task.deadline_ms.is_some_and(|d| d <= clock.now_ms) {
            let attempt = TaskAttempt {
                workflow_id: state.workflow_id.clone(),
                task_id: plan.tasks[i].id.clone(),
                agent: plan.tasks[i].agent.clone(),
                attempt: task.attempt,
            };
            events.push(WorkflowEvent::TaskTimedOut(attempt));
            events.extend(retry(state, plan, i, task.attempt, Code::Timeout, clock));
        }
        if task.compensation == CompensationStatus::Running
            && task.deadline_ms.is_some_and(|d| d <= clock.now_ms)
        {
            events.push(WorkflowEvent::CompensationDone(CompensationDone {
                workflow_id: state.workflow_id.clone(),
                task_id: plan.tasks[i].id.clone(),
                agent: plan.tasks[i].agent.clone(),
                ok: false,
                error: Some("compensation timed out".into()),
            }));
        }
    }
    events
}

/// What follows from the state: ready tasks scheduled, due retries
/// scheduled, a failure's compensation, completion.
fn follow_ups(state: &WorkflowState, clock: Clock) -> Vec<WorkflowEvent> {
    let Some(plan) = &state.plan else { return vec![] };
    let schedule = |i: usize, attempt: u32| {
        let task = &plan.tasks[i];
        WorkflowEvent::TaskScheduled(TaskScheduled {
            workflow_id: state.workflow_id.clone(),
            task_id: task.id.clone(),
            agent: task.agent.clone(),
            operation: task.operation.clone(),
            attempt,
            priority: state.priority,
            deadline_ms: clock.now_ms.saturating_add(task.timeout_ms),
        })
    };
    match state.status {
        WorkflowStatus::Running => {
            let mut events = Vec::new();
            for (i, task) in state.tasks.iter().enumerate() {
                let ready = task.status == TaskStatus::Pending
                    && plan.tasks[i]
                        .dependencies
                        .iter()
                        .all(|&d| state.tasks[d].status == TaskStatus::Succeeded);
                let due =
                    task.status == TaskStatus::WaitingRetry && task.due_ms.is_some_and(|d| d <= clock.now_ms);
                if ready {
                    events.push(schedule(i, 1));
                } else if due {
                    events.push(schedule(i, task.attempt));
                }
            }
            if events.is_empty() && state.tasks.iter().all(|t| t.status == TaskStatus::Succeeded) {
                events.push(WorkflowEvent::WorkflowCompleted(WorkflowCompleted {
                    workflow_id: state.workflow_id.clone(),
                    tasks_completed: state.tasks.len() as u32,
                }));
            }
            events
        }
        WorkflowStatus::Failing | WorkflowStatus::Compensating => {
            if state.tasks.iter().any(TaskState::is_active)
                || state
                    .tasks
                    .iter()
                    .any(|t| t.compensation == CompensationStatus::Running)
            {
                return vec![];
            }
            // The next one to undo: the latest completed with a compensation.
            let next = state.completed_order.iter().rev().copied().find(|&i| {
                plan.tasks[i].compensation.is_some()
                    && state.tasks[i].compensation == CompensationStatus::NotNeeded
            });
            match next {
                Some(i) => {
                    let task = &plan.tasks[i];
                    let operation = task
                        .compensation
                        .as_ref()
                        .map(|c| c.operation.clone())
                        .unwrap_or_default();
                    vec![WorkflowEvent::CompensationStarted(CompensationStarted {
                        workflow_id: state.workflow_id.clone(),
                        task_id: task.id.clone(),
                        agent: task.agent.clone(),
                        operation,
                        deadline_ms: clock.now_ms.saturating_add(task.timeout_ms),
                    })]
                }
                None => vec![WorkflowEvent::WorkflowFailed(WorkflowFailed {
                    workflow_id: state.workflow_id.clone(),
                    error: state.error.clone().unwrap_or_else(|| "a task failed".into()),
                    tasks_compensated: state.tasks_compensated,
                })],
            }
        }
        _ => vec![],
    }
}

pub fn evolve(mut state: WorkflowState, event: &WorkflowEvent) -> WorkflowState {
    let index = |state: &WorkflowState, task_id: &str| {
        state.plan.as_ref().and_then(|p| p.task(task_id)).map(|(i, _)| i)
    };
    match event {
        WorkflowEvent::WorkflowStarted(e) => {
            state.workflow_id = e.workflow_id.clone();
            state.status = WorkflowStatus::Running;
            state.priority = e.priority;
            state.tasks = vec![TaskState::default(); e.plan.tasks.len()];
            state.plan = Some(e.plan.clone());
        }
        WorkflowEvent::TaskScheduled(e) => {
            if let Some(i) = index(&state, &e.task_id) {
                let task = &mut state.tasks[i];
                task.status = TaskStatus::Scheduled;
                task.attempt = e.attempt;
                task.deadline_ms = Some(e.deadline_ms);
                task.due_ms = None;
            }
        }
        WorkflowEvent::TaskStarted(e) => {
            if let Some(i) = index(&state, &e.task_id) {
                state.tasks[i].status = TaskStatus::Running;
            }
        }
        WorkflowEvent::TaskProgressed(_) => {}
        WorkflowEvent::TaskSucceeded(e) => {
            if let Some(i) = index(&state, &e.attempt.task_id) {
                let task = &mut state.tasks[i];
                task.status = TaskStatus::Succeeded;
                task.result = Some(e.result.clone());
                task.deadline_ms = None;
                state.completed_order.push(i);
            }
        }
        WorkflowEvent::TaskFailed(e) => {
            state = attempt_failed(state, &e.attempt.task_id, e.error.clone(), e.code);
        }
        WorkflowEvent::TaskTimedOut(e) => {
            let error = format!("attempt {} timed out", e.attempt);
            state = attempt_failed(state, &e.task_id, error, Code::Timeout);
        }
        WorkflowEvent::TaskRetried(e) => {
            if let Some(i) = index(&state, &e.task_id) {
                let task = &mut state.tasks[i];
                task.status = TaskStatus::WaitingRetry;
                task.attempt = e.next_attempt;
                task.due_ms = Some(e.due_ms);
            }
            // A retry means the failure was not final.
            if state.status == WorkflowStatus::Failing && state.error_task_retried(&e.task_id) {
                state.status = WorkflowStatus::Running;
                state.error = None;
                state.error_code = None;
                state.failing_task = None;
            }
        }
        WorkflowEvent::CompensationStarted(e) => {
            state.status = WorkflowStatus::Compensating;
            if let Some(i) = index(&state, &e.task_id) {
                state.tasks[i].compensation = CompensationStatus::Running;
                state.tasks[i].deadline_ms = Some(e.deadline_ms);
            }
        }
        WorkflowEvent::CompensationDone(e) => {
            if let Some(i) = index(&state, &e.task_id) {
                state.tasks[i].compensation = if e.ok {
                    state.tasks_compensated += 1;
                    CompensationStatus::Done
                } else {
                    CompensationStatus::Failed
                };
                state.tasks[i].deadline_ms = None;
            }
        }
        WorkflowEvent::WorkflowCompleted(_) => state.status = WorkflowStatus::Completed,
        WorkflowEvent::WorkflowFailed(e) => {
            state.status = WorkflowStatus::Failed;
            state.error = Some(e.error.clone());
        }
        WorkflowEvent::WorkflowCancelled(e) => {
            state.status = WorkflowStatus::Cancelled;
            state.error = Some(format!("cancelled: {}", e.reason));
            state.error_code = None;
        }
    }
    state
}

/// An attempt failed or timed out. Whether it is final is known only from
/// the next event (a `TaskRetried` follows at once when it is not), so the
/// workflow turns Failing here and back to Running on the retry.
fn attempt_failed(mut state: WorkflowState, task_id: &str, error: String, code: Code) -> WorkflowState {
    let Some(i) = state.plan.as_ref().and_then(|p| p.task(task_id)).map(|(i, _)| i) else {
        return state;
    };
    let task = &mut state.tasks[i];
    task.status = TaskStatus::Failed;
    task.deadline_ms = None;
    task.error = Some(error.clone());
    task.error_code = Some(code);
    if state.status == WorkflowStatus::Running {
        state.status = WorkflowStatus::Failing;
        state.error = Some(format!("task '{task_id}' failed: {error}"));
        state.error_code = Some(code);
        state.failing_task = Some(task_id.to_owned());
    }
    state
}

impl WorkflowState {
    /// Whether the retried task is the one whose failure made the
    /// workflow fail.
    fn error_task_retried(&self, task_id: &str) -> bool {
        self.failing_task.as_deref() == Some(task_id)
    }
}

#[cfg(test)]
mod tests;
