//! Workflows (issue 5): plans validated against the agents' catalogue, and
//! the workflow aggregate. Pure: the orchestrator that sends task commands
//! and records results lives at the edge.

pub mod aggregate;
pub mod plan;
pub mod planner;

pub use aggregate::{
    Clock, Priority, WorkflowCommand, WorkflowError, WorkflowEvent, WorkflowState, WorkflowStatus, decide,
    evolve,
};
pub use plan::{Catalogue, OperationSpec, ParamSpec, ParamType, Plan, PlanError, PlanSpec, Task, TaskSpec};
pub use planner::{PlannerError, plan_request};
