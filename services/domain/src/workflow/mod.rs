//! Workflows: plans validated against the agents' catalogue, the
//! workflow aggregate, the task commands agents receive, and the
//! rule-based planner. Pure: the orchestrator that sends task commands and
//! records results lives at the edge (crate `sagas`).

pub mod aggregate;
pub mod catalogue;
pub mod derive;
pub mod plan;
pub mod planner;
pub mod schedule;
pub mod task;

pub use aggregate::{
    Clock, CompensationStatus, Priority, TaskStatus, WorkflowCommand, WorkflowError, WorkflowEvent,
    WorkflowState, WorkflowStatus, decide, evolve,
};
pub use plan::{Catalogue, OperationSpec, ParamSpec, ParamType, Plan, PlanError, PlanSpec, Task, TaskSpec};
pub use planner::{PlannerError, plan_request, plan_served};
pub use task::{StopRequest, TaskCommand, TaskKind};
