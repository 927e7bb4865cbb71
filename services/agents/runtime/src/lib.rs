//! The agents' common runtime: every agent of the
//! swarm runs here with the same lifecycle, limits and bookkeeping, and
//! differs only in the operations it serves.
//!
//! Lifecycle: initializing → health check → ready, or recovering (checked
//! again until healthy) → processing tasks → draining on shutdown →
//! stopped. Each change, and a heartbeat every `heartbeat_interval_ms`, is
//! an event in stream `agent-<name>` (the `agents` read model shows them).
//!
//! Tasks: each agent is a durable JetStream consumer of
//! `<prefix>.task.<agent>.>`, shared by the agent's instances on every
//! server. Commands wait in a priority queue (high-priority workflows'
//! tasks are taken first), run at most `concurrency_max` at once and at most
//! `tasks_per_s_max` started per second, each bounded by its deadline and
//! stopped by a cancellation. Before working on a command the agent asks
//! the orchestrator whether its attempt is still current (`begin`), which
//! makes a duplicate delivery a no-op; the outcome goes back through the
//! orchestrator, which matches it by attempt, so it is recorded once.
//! A read-only operation (such as `probe`) starts while its start is being
//! recorded; any other only once recorded, so a stale command never runs.
//! Every command a server holds, queued or running, has its ack extended
//! every third of `agent_ack_wait_ms`: a crashed server's commands are
//! redelivered to another within it, while commands waiting in a busy
//! server's queue never are (each redelivery spends one of `max_deliver`).
//!
//! Operations are typed: each declares its parameters as a `Deserialize`
//! struct (unknown fields refused), read once before it runs (a misfit is
//! an `invalid_argument` failure naming the parameter), and fails with a
//! `domain::OperationError` carrying a closed code. [`catalogue`] derives,
//! from the operations every compiled-in agent serves, the catalogue plans
//! are validated against, so the two cannot disagree.
//!
//! What the agents share besides the runtime has one home each here:
//! [`sql`], identifiers as PostgreSQL reads them; [`pg`], the PostgreSQL
//! toolkit (statements under lock_timeout with retries, lock modes,
//! catalog readers more than one agent needs); [`params`], the
//! operations' parameters; [`Target`]/[`Targets`], the target databases.

mod directory;
pub mod params;
pub mod pg;
mod probe;
mod progress;
mod runtime;
pub mod sql;
mod targets;

pub use directory::{AgentStatus, Directory};
pub use event_store::database_code;
pub use probe::{Probe, ProbeParams};
pub use progress::{NoProgress, ProgressSink};
pub use runtime::{
    AgentSpec, AgentsConfig, AgentsRuntime, Dependencies, OpFuture, Operation, Served, TaskContext,
    catalogue, database_error, target_error,
};
pub use targets::{Target, TargetDatabase, Targets, TargetsConfig, TargetsError};
