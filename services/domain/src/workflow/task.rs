//! The command an agent receives on `<prefix>.task.<agent>.<operation>`,
//! and the stop request it may receive while working on it. Built from the
//! workflow's state, so a command resent after a crash is the same command.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::aggregate::{CompensationStatus, Priority, TaskStatus, WorkflowState};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TaskKind {
    /// Do the task.
    Run,
    /// Undo a task that succeeded (saga compensation).
    Compensate,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskCommand {
    pub workflow_id: String,
    pub task_id: String,
    pub agent: String,
    pub operation: String,
    pub kind: TaskKind,
    /// 1, 2, ...; compensations carry the attempt that succeeded.
    pub attempt: u32,
    pub priority: Priority,
    pub params: Map<String, Value>,
    /// The attempt times out at this time (ms since the epoch).
    pub deadline_ms: u64,
}

impl TaskCommand {
    /// Identifies this command across redeliveries and resends (the
    /// JetStream message id): one per attempt, one per compensation.
    pub fn message_id(&self) -> String {
        let kind = match self.kind {
            TaskKind::Run => "run",
            TaskKind::Compensate => "compensate",
        };
        format!("{}/{}/{}/{kind}", self.workflow_id, self.task_id, self.attempt)
    }
}

/// Published on `<prefix>.control.stop` when a workflow is cancelled.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StopRequest {
    pub workflow_id: String,
    pub task_ids: Vec<String>,
    pub reason: String,
}

impl WorkflowState {
    /// The commands the state is waiting on: every running attempt and
    /// running compensation. Resent after a crash (or when a send failed).
    pub fn outstanding_commands(&self) -> Vec<TaskCommand> {
        let Some(plan) = &self.plan else { return vec![] };
        if self.status.is_final() {
            return vec![];
        }
        let mut commands = Vec::new();
        for (i, state) in self.tasks.iter().enumerate() {
            let task = &plan.tasks[i];
            let deadline_ms = state.deadline_ms.unwrap_or(0);
            let running = matches!(state.status, TaskStatus::Scheduled | TaskStatus::Running);
            if running {
                commands.push(TaskCommand {
                    workflow_id: self.workflow_id.clone(),
                    task_id: task.id.clone(),
                    agent: task.agent.clone(),
                    operation: task.operation.clone(),
                    kind: TaskKind::Run,
                    attempt: state.attempt,
                    priority: self.priority,
                    params: task.params.clone(),
                    deadline_ms,
                });
            }
            if state.compensation == CompensationStatus::Running
                && let Some(compensation) = &task.compensation
            {
                commands.push(TaskCommand {
                    workflow_id: self.workflow_id.clone(),
                    task_id: task.id.clone(),
                    agent: task.agent.clone(),
                    operation: compensation.operation.clone(),
                    kind: TaskKind::Compensate,
                    attempt: state.attempt,
                    priority: self.priority,
                    params: compensation.params.clone(),
                    deadline_ms,
                });
            }
        }
        commands
    }

    /// The command of one running attempt or compensation, if it is still
    /// what the workflow waits for.
    pub fn outstanding_command(&self, task_id: &str, kind: TaskKind, attempt: u32) -> Option<TaskCommand> {
        self.outstanding_commands()
            .into_iter()
            .find(|c| c.task_id == task_id && c.kind == kind && c.attempt == attempt)
    }

    /// The earliest time something is due: a deadline of a running attempt
    /// or compensation, or a retry. `None`: only outcomes move it on.
    pub fn next_due_ms(&self) -> Option<u64> {
        if self.status.is_final() {
            return None;
        }
        self.tasks
            .iter()
            .filter_map(|t| {
                let running = matches!(t.status, TaskStatus::Scheduled | TaskStatus::Running)
                    || t.compensation == CompensationStatus::Running;
                match t.status {
                    _ if running => t.deadline_ms,
                    TaskStatus::WaitingRetry => t.due_ms,
                    _ => None,
                }
            })
            .min()
    }
}
